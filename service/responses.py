"""Response helpers shared by the routers."""

from __future__ import annotations

from fastapi import Response
from pydantic import BaseModel

from service.models import ErrorResponse

ERRORS: dict[int | str, dict[str, object]] = {
    409: {
        "model": ErrorResponse,
        "description": "Cancelled (or, for /program, stopped) by an emergency stop.",
    },
    422: {"model": ErrorResponse, "description": "Invalid request: detail names the field."},
    502: {"model": ErrorResponse, "description": "The backend failed (it is in its safe state)."},
    503: {"model": ErrorResponse, "description": "The backend is unreachable (retries spent)."},
}
"""Error answers of every route that touches the backend."""


def json_response(model: BaseModel) -> Response:
    """Serialise ``model`` once, in pydantic-core (a 256×256 read has 65 536 readings)."""
    return Response(content=model.model_dump_json(), media_type="application/json")

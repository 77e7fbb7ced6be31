"""POST /read: read cells (or the whole array) without changing them."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Response

from drivers.base import Backend, Limits, ReadResult
from service.deps import StateDep
from service.models import Reading, ReadRequest, ReadResponse
from service.responses import ERRORS, json_response
from service.state import ServiceState
from service.storage import Storage
from service.validation import cell_arrays, checked_v_read

router = APIRouter(tags=["cells"])


def readings(result: ReadResult) -> list[Reading]:
    """API readings of a backend read (validated in pydantic-core, not per object in Python)."""
    n = len(result.rows)
    return ReadResponse.model_validate(
        {
            "readings": [
                {"row": r, "col": c, "conductance": g, "current": i, "v_read": v, "compliance": t}
                for r, c, g, i, v, t in zip(
                    result.rows.tolist(),
                    result.cols.tolist(),
                    np.asarray(result.conductance, float).tolist(),
                    np.asarray(result.current, float).tolist(),
                    [result.v_read] * n,
                    np.asarray(result.compliance, bool).tolist(),
                    strict=True,
                )
            ]
        }
    ).readings


def request_v_read(state: ServiceState, limits: Limits, v_read: float | None) -> float:
    chosen = state.settings.programming.v_read if v_read is None else v_read
    return checked_v_read(limits, chosen)


@router.post("/read", response_model=ReadResponse, responses=ERRORS, summary="Read cells")
async def read(request: ReadRequest, state: StateDep) -> Response:
    """Reads the cells at v_read; every reading is recorded before the answer."""
    info, limits = await state.backend()
    if request.all:
        rows, cols = (a.ravel() for a in np.indices((info.rows, info.cols)))
    else:
        rows, cols = cell_arrays(request.cells or [], info)
    v_read = request_v_read(state, limits, request.v_read)

    def job(backend: Backend, storage: Storage) -> ReadResult:
        result = backend.read(rows, cols, v_read)
        storage.record_read(result)
        return result  # the owner commits (durably) before the answer

    result = await state.owner.run(job)
    return json_response(ReadResponse(readings=readings(result)))

"""Domain errors → HTTP answers: the one table (:data:`ERRORS`), installed on the app by
:func:`install`.

Code below the HTTP layer raises what went wrong in its own terms (a limit broken, a backend
that failed, a log that cannot take a pulse); this table alone says which status and body each
gets. Adding an error is one row: the exception type, the status, and how its ``detail`` is
made. Starlette picks the row of the nearest type in the exception's MRO.

The programming core's own errors are in ``programming/errors.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from drivers.base import BackendError, BackendUnavailable, LimitError
from predictor.runtime import OutOfRangeError
from predictor.strategy import PredictorUnavailable
from programming.errors import InvalidRequest, StrategyFailure
from service.owner import EmergencyStopped
from service.store import LogUnavailable, db
from service.validation import limit_problem, problem_detail


def _finite(value: object) -> object:
    """``value`` with every non-finite float replaced by its text ("nan", "inf"): JSON cannot
    carry them, and Python's JSON parser accepts them in a request (was a 500)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


Detail = Callable[[Any], object]

ERRORS: tuple[tuple[type[Exception], int, Detail], ...] = (
    # FastAPI's own 422, with non-finite numbers of the echoed input given back as text
    (RequestValidationError, 422, lambda e: _finite(jsonable_encoder(e.errors()))),
    # a request a strategy cannot carry out, found before anything is queued
    (InvalidRequest, 422, lambda e: problem_detail(e.loc, e.msg, e.kind, e.limit)),
    # normally caught before queueing; this catches a backend's own, stricter check
    (LimitError, 422, lambda e: limit_problem(e).detail),
    # the predictor refuses targets outside the range it was trained on (no extrapolation)
    (OutOfRangeError, 422, lambda e: f"predictor: {e}"),
    (StrategyFailure, 500, lambda e: f"{e}; the run is recorded as failed with every operation "
                                     "it made (GET /api/v1/runs)"),
    (EmergencyStopped, 409, str),
    (BackendError, 502, lambda e: f"backend error: {e}"),
    (PredictorUnavailable, 503, str),
    (LogUnavailable, 503, str),
    # a read of the history while the database is gone or locked: no answer to give
    *((unavailable, 503, lambda e: f"database unavailable: {type(e).__name__}: {e}")
      for unavailable in db.Unavailable),
    (BackendUnavailable, 503, lambda e: f"backend unavailable: {e}"),
)


def install(app: FastAPI) -> None:
    """Answer every exception type of :data:`ERRORS` with its status and ``{"detail": ...}``."""
    for exc_type, status, detail in ERRORS:
        app.add_exception_handler(exc_type, _handler(status, detail))


def _handler(status: int, detail: Detail) -> Callable:
    async def answer(request: Request, exc: Any) -> JSONResponse:
        return JSONResponse(status_code=status, content={"detail": detail(exc)})

    return answer

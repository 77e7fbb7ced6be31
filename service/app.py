"""The FastAPI application: routers under ``/api/v1``, one backend owner, error answers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from drivers.base import Backend, BackendError, BackendUnavailable, LimitError
from drivers.factory import make_backend
from predictor import strategy as predictor_strategy
from predictor.runtime import OutOfRangeError
from service.config import Settings, load_settings
from service.owner import BackendOwner
from service.routers import array, array_map, dashboard, health, program, pulses, reads, runs
from service.routers import predictor as predictor_router
from service.state import ServiceState
from service.storage import Storage
from service.validation import limit_problem

API_PREFIX = "/api/v1"

DESCRIPTION = """
Programs memristor conductances on a simulated crossbar or a real bench.

SI units everywhere: volts, seconds, siemens, amperes. **SET (conductance rises) at negative
voltage, RESET at positive.** Every pulse and read is recorded in SQLite and committed before
the answer; hardware operations of concurrent requests never interleave (they queue).
"""


def create_app(
    settings: Settings | None = None,
    backend_factory: Callable[[Settings], Backend] = make_backend,
) -> FastAPI:
    """The service for ``settings`` (default: from the environment).

    ``backend_factory`` builds the backend (on the owner's thread); tests pass one to inject
    a failing backend, everything else uses :func:`drivers.factory.make_backend`.
    """
    settings = settings if settings is not None else load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owner = BackendOwner(
            lambda: backend_factory(settings), lambda: Storage(settings.database)
        )
        app.state.memprog = ServiceState(settings=settings, owner=owner)
        # The pulse predictor: a model that cannot be loaded is reported by /health, and
        # /program's default strategy falls back to ispp; the service starts regardless.
        app.state.memprog.predictor = predictor_strategy.startup(settings.predictor.path)
        try:
            yield
        finally:
            owner.shutdown()

    app = FastAPI(
        title="memprog",
        summary="Memristor conductance programming service",
        description=DESCRIPTION,
        version="1",
        lifespan=lifespan,
    )
    for module in (health, array, reads, pulses, program, runs, predictor_router):
        app.include_router(module.router, prefix=API_PREFIX)
    app.include_router(array_map.router, prefix=API_PREFIX)
    dashboard.install(app)  # the page at / and its files at /static

    @app.exception_handler(OutOfRangeError)
    async def _out_of_range(request: Request, exc: OutOfRangeError) -> JSONResponse:
        # The predictor refuses targets outside the range it was trained on (no extrapolation).
        return JSONResponse(status_code=422, content={"detail": f"predictor: {exc}"})

    @app.exception_handler(predictor_strategy.PredictorUnavailable)
    async def _no_predictor(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": str(exc)})

    @app.exception_handler(LimitError)
    async def _limit(request: Request, exc: LimitError) -> JSONResponse:
        # Normally caught before queueing; this catches a backend's own, stricter check.
        problem = limit_problem(exc)
        return JSONResponse(status_code=problem.status_code, content={"detail": problem.detail})

    @app.exception_handler(BackendUnavailable)
    async def _unavailable(request: Request, exc: BackendUnavailable) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": f"backend unavailable: {exc}"})

    @app.exception_handler(BackendError)
    async def _failed(request: Request, exc: BackendError) -> JSONResponse:
        return JSONResponse(status_code=502, content={"detail": f"backend error: {exc}"})

    return app

"""The FastAPI application: routers under ``/api/v1``, one backend owner, error answers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from drivers.base import Backend, BackendError, BackendUnavailable, LimitError
from drivers.factory import make_backend
from predictor import strategy as predictor_strategy
from predictor.runtime import OutOfRangeError
from service import metrics as metrics_module
from service.auth import AuthMiddleware, AuthState, KeyStore, require, require_by_method
from service.body_limit import BodyLimitMiddleware, default_max_body_bytes
from service.config import Settings, load_settings
from service.jobs import JobManager
from service.metrics import LatencyMiddleware, MeteredStorage, Metrics
from service.owner import BackendOwner, EmergencyStopped
from service.programming import StrategyFailure
from service.routers import (
    array,
    array_map,
    dashboard,
    emergency,
    health,
    jobs,
    program,
    pulses,
    reads,
    runs,
)
from service.routers import predictor as predictor_router
from service.state import ServiceState
from service.storage import LogUnavailable
from service.validation import limit_problem

API_PREFIX = "/api/v1"

LOG_WATCH_S = 1.0
"""s between checks of the operation log (a database file moved away fails it at once; a
failed log is retried, and replays its side journal, as soon as the database takes writes)."""

log = logging.getLogger("memprog.app")

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
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The storage marks runs and jobs left running by a crash 'interrupted' (never re-run).
        owner = BackendOwner(
            lambda: backend_factory(settings),
            lambda: MeteredStorage(settings.database, metrics),
        )
        app.state.memprog = ServiceState(settings=settings, owner=owner)
        app.state.jobs = JobManager(owner, asyncio.get_running_loop())
        metrics.watch(
            queue_depth=lambda: owner.queued,
            jobs=owner.storage.count_jobs,
            backend_up=lambda: owner.info is not None and owner.unavailable is None,
            log_up=lambda: owner.storage.check() is None,
            journal_records=lambda: owner.storage.journal_records,
        )
        cache = app.state.auth.cache
        await asyncio.get_running_loop().run_in_executor(None, cache.load)
        tasks = [asyncio.create_task(cache.keep_fresh()),
                 asyncio.create_task(_watch_log(owner))]
        # The pulse predictor: a model that cannot be loaded is reported by /health, and
        # /program's default strategy falls back to ispp; the service starts regardless.
        app.state.memprog.predictor = predictor_strategy.startup(settings.predictor.path)
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            cache.close()
            try:
                app.state.jobs.shutdown()  # jobs end 'interrupted', the running one between pulses
            finally:
                owner.shutdown()  # safe state and a durable database, whatever happened above

    app = FastAPI(
        title="memprog",
        summary="Memristor conductance programming service",
        description=DESCRIPTION,
        version="1",
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    app.state.auth = AuthState(enabled=settings.auth.enabled, keys=KeyStore(settings.database))
    # Outermost last: the latency of every answer, then the key (from the headers, before any
    # body is read), then the body's size.
    app.add_middleware(BodyLimitMiddleware, max_bytes=lambda: _max_body_bytes(app, settings),
                       body_timeout=settings.server.body_timeout_s)
    app.add_middleware(AuthMiddleware, auth=app.state.auth)
    app.add_middleware(LatencyMiddleware, metrics=metrics)
    # Who may call what (service.auth; with authentication off everything is open). Health
    # stays open (liveness probes); jobs, emergency stop and metrics check per route.
    read = [Depends(require("read"))]
    scopes = {
        health: [],
        array: read,
        array_map: read,
        reads: read,
        runs: read,
        pulses: [Depends(require("program"))],
        program: [Depends(require("program"))],
        predictor_router: [Depends(require_by_method({"GET": "read", "POST": "admin"}))],
        jobs: [],
        emergency: [],
    }
    for module, dependencies in scopes.items():
        app.include_router(module.router, prefix=API_PREFIX, dependencies=dependencies)
    app.include_router(metrics_module.router)
    dashboard.install(app)  # the page at / and its files at /static

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler, except that a NaN or infinity in the echoed input (Python's
        # JSON parser accepts them) is given back as text: JSON cannot carry it (was a 500).
        return JSONResponse(status_code=422,
                            content={"detail": _finite(jsonable_encoder(exc.errors()))})

    @app.exception_handler(StrategyFailure)
    async def _strategy_failed(request: Request, exc: StrategyFailure) -> JSONResponse:
        return JSONResponse(status_code=500, content={
            "detail": f"{exc}; the run is recorded as failed with every operation it made "
                      "(GET /api/v1/runs)"})

    @app.exception_handler(OutOfRangeError)
    async def _out_of_range(request: Request, exc: OutOfRangeError) -> JSONResponse:
        # The predictor refuses targets outside the range it was trained on (no extrapolation).
        return JSONResponse(status_code=422, content={"detail": f"predictor: {exc}"})

    @app.exception_handler(predictor_strategy.PredictorUnavailable)
    async def _no_predictor(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": str(exc)})

    @app.exception_handler(EmergencyStopped)
    async def _estopped(request: Request, exc: EmergencyStopped) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": str(exc)})

    @app.exception_handler(LimitError)
    async def _limit(request: Request, exc: LimitError) -> JSONResponse:
        # Normally caught before queueing; this catches a backend's own, stricter check.
        problem = limit_problem(exc)
        return JSONResponse(status_code=problem.status_code, content={"detail": problem.detail})

    @app.exception_handler(LogUnavailable)
    async def _log_unavailable(request: Request, exc: LogUnavailable) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": str(exc)})

    @app.exception_handler(sqlite3.OperationalError)
    async def _database(request: Request, exc: sqlite3.OperationalError) -> JSONResponse:
        # A read of the history while the database is gone or locked: no answer to give.
        return JSONResponse(status_code=503, content={
            "detail": f"database unavailable: {type(exc).__name__}: {exc}"})

    @app.exception_handler(BackendUnavailable)
    async def _unavailable(request: Request, exc: BackendUnavailable) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": f"backend unavailable: {exc}"})

    @app.exception_handler(BackendError)
    async def _failed(request: Request, exc: BackendError) -> JSONResponse:
        return JSONResponse(status_code=502, content={"detail": f"backend error: {exc}"})

    return app


def _max_body_bytes(app: FastAPI, settings: Settings) -> int:
    """The configured cap, or one that a request naming every cell of the array fits in."""
    if settings.server.max_body_bytes is not None:
        return settings.server.max_body_bytes
    state = getattr(app.state, "memprog", None)
    info = state.owner.info if state is not None else None
    if info is not None:
        return default_max_body_bytes(info.rows * info.cols)
    if settings.backend == "sim":
        return default_max_body_bytes(settings.sim.rows * settings.sim.cols)
    return default_max_body_bytes(256 * 256)  # a bench not described yet


async def _watch_log(owner: BackendOwner) -> None:
    """Check the operation log every :data:`LOG_WATCH_S` s; bring a failed one back."""
    while True:
        await asyncio.sleep(LOG_WATCH_S)
        try:
            if owner.storage.check() is not None and not owner.closing:
                await owner.recover_log()
        except Exception:  # keep watching whatever happened
            log.exception("checking the operation log failed")


def _finite(value: object) -> object:
    """``value`` with every non-finite float replaced by its text ("nan", "inf")."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value

"""The FastAPI application: routers under ``/api/v1``, one backend owner, error answers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from drivers.base import Backend
from drivers.factory import make_backend
from predictor import strategy as predictor_strategy
from service import errors
from service import metrics as metrics_module
from service.auth import AuthMiddleware, AuthState, require, require_by_method
from service.body_limit import BodyLimitMiddleware, default_max_body_bytes
from service.calibrations import CalibrationManager
from service.config import Settings, load_settings
from service.jobs import JobManager
from service.layers import LayerManager
from service.metrics import LatencyMiddleware, MeteredStorage, Metrics
from service.owner import BackendOwner
from service.predictor_models import ModelRegistry
from service.routers import (
    array,
    array_map,
    calibrations,
    dashboard,
    emergency,
    health,
    jobs,
    layers,
    program,
    pulses,
    reads,
    runs,
    stations,
)
from service.routers import predictor as predictor_router
from service.state import ServiceState
from service.stations import beat_forever
from service.store.keys import KeyStore

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
    # The strategies /program and jobs offer: the classic ones (programming.classic) and the
    # pulse predictor's, registered here and made the default.
    predictor_strategy.register_predictor_strategy()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The storage marks runs and jobs left running by a crash 'interrupted' (never re-run).
        owner = BackendOwner(
            lambda: backend_factory(settings),
            lambda: MeteredStorage(settings.database, metrics, station=settings.station,
                                   state_dir=settings.state_dir),
        )
        app.state.memprog = ServiceState(settings=settings, owner=owner)
        app.state.jobs = JobManager(owner, asyncio.get_running_loop())
        app.state.calibrations = CalibrationManager(app.state.jobs, models, app.state.memprog)
        app.state.layers = LayerManager(app.state.jobs, app.state.memprog)
        metrics.watch(
            queue_depth=lambda: owner.queued,
            jobs=owner.storage.count_jobs,
            backend_up=lambda: owner.info is not None and owner.unavailable is None,
            log_up=lambda: owner.storage.check() is None,
            journal_records=lambda: owner.storage.journal_records,
            predictor_fit=lambda: predictor_strategy.status().get("fit"),
        )
        cache = app.state.auth.cache
        await asyncio.get_running_loop().run_in_executor(None, cache.load)
        tasks = [asyncio.create_task(cache.keep_fresh()),
                 asyncio.create_task(_watch_log(owner))]
        # Model activations are recorded in the log, with the station (model_activations).
        models.on_activate = lambda model, fingerprint, reason: owner.storage.record_activation(
            model, fingerprint, reason)
        # The pulse predictor: the station's active model (service.predictor_models), else the
        # configured one. A model that cannot be loaded is reported by /health, and /program's
        # default strategy falls back to ispp; the service starts regardless.
        app.state.memprog.predictor = await asyncio.to_thread(models.startup)
        # The heartbeat: this station in GET /stations (and a database gone away noticed).
        tasks.append(asyncio.create_task(
            beat_forever(app.state.memprog, app.state.jobs.running_id)))
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
    models = ModelRegistry(
        settings.predictor.models_dir or settings.local_dir / "models",
        settings.predictor.path,
    )
    app.state.models = models
    app.state.auth = AuthState(enabled=settings.auth.enabled, keys=KeyStore(settings.database,
                                                                       station=settings.station))
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
        stations: read,
        pulses: [Depends(require("program"))],
        program: [Depends(require("program"))],
        predictor_router: [Depends(require_by_method({"GET": "read", "POST": "admin"}))],
        jobs: [],
        layers: [],
        calibrations: [],
        emergency: [],
    }
    for module, dependencies in scopes.items():
        app.include_router(module.router, prefix=API_PREFIX, dependencies=dependencies)
    app.include_router(metrics_module.router)
    dashboard.install(app)  # the page at / and its files at /static

    errors.install(app)  # domain errors → HTTP: the one table in service/errors.py
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

"""Prometheus metrics: ``GET /metrics`` (text exposition format; ``read`` scope with auth on).

Counted where operations are recorded (:class:`MeteredStorage`), so every pulse and read the
service fired is counted once, whichever route fired it:

* ``memprog_pulses_total``, ``memprog_reads_total`` — cells pulsed / read;
* ``memprog_runs_total{strategy, outcome}`` — programming runs (``/program`` and jobs) that
  ended: ``done``, ``aborted`` or ``failed``;
* ``memprog_cells_programmed_total{strategy}``, ``memprog_cells_converged_total{strategy}`` —
  cells of finished write-and-verify runs, and those within tolerance (their ratio is the
  convergence rate);
* ``memprog_pulses_per_cell{strategy}`` — histogram of the pulses each cell of a finished run
  took;
* ``memprog_emergency_stops_total``;
* ``memprog_http_request_duration_seconds{method, route, status}`` — histogram of request
  latency, by route template (``/api/v1/runs/{run_id}``; ``unmatched`` for unknown paths);

and read at scrape time: ``memprog_queue_depth`` (backend operations waiting or running),
``memprog_jobs{status}`` (stored jobs per status), ``memprog_backend_up`` (1 while the backend
is described and reachable), ``memprog_log_up`` (1 while the database takes records; 0: nothing
is fired) and ``memprog_log_journal_records`` (records waiting in the side journal).

Each app has its own registry (several apps may live in one process, as in the tests).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from programming.loop import RunParams
from service.auth import require
from service.store import Storage, db

JOB_STATUSES = ("queued", "running", "completed", "failed", "aborted", "interrupted")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
"""s"""

PULSE_BUCKETS = (1, 2, 5, 10, 20, 30, 50, 100, 200, 500, 1000)

_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})


class Metrics:
    """The metrics of one service instance, in their own registry."""

    def __init__(self) -> None:
        disable_created_metrics()  # no *_created series: they double the exposition for nothing
        self.registry = CollectorRegistry()
        r = self.registry
        self.pulses = Counter("memprog_pulses", "Pulses fired (one per cell).", registry=r)
        self.reads = Counter("memprog_reads", "Cell reads made.", registry=r)
        self.pulse_energy = Counter(
            "memprog_pulse_energy_joules",
            "Energy the pulses delivered to the devices, J (simulated: integrated; a bench: "
            "estimated from the reads around each pulse).",
            registry=r,
        )
        self.runs = Counter(
            "memprog_runs",
            "Programming runs ended, by strategy and outcome (done|aborted|failed).",
            ["strategy", "outcome"],
            registry=r,
        )
        self.cells_programmed = Counter(
            "memprog_cells_programmed",
            "Cells of finished write-and-verify runs.",
            ["strategy"],
            registry=r,
        )
        self.cells_converged = Counter(
            "memprog_cells_converged",
            "Cells of finished write-and-verify runs that ended within tolerance.",
            ["strategy"],
            registry=r,
        )
        self.pulses_per_cell = Histogram(
            "memprog_pulses_per_cell",
            "Pulses each cell of a finished run took.",
            ["strategy"],
            buckets=PULSE_BUCKETS,
            registry=r,
        )
        self.emergency_stops = Counter(
            "memprog_emergency_stops", "Emergency stops requested.", registry=r
        )
        self.request_latency = Histogram(
            "memprog_http_request_duration_seconds",
            "HTTP request latency by method, route template and status, s.",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self._state = _StateCollector()
        r.register(self._state)

    def watch(
        self, queue_depth: Callable[[], int], jobs: Callable[[], dict[str, int]],
        backend_up: Callable[[], bool], log_up: Callable[[], bool] = lambda: True,
        journal_records: Callable[[], int] = lambda: 0,
        predictor_fit: Callable[[], dict | None] = lambda: None,
    ) -> None:
        """What the scrape-time gauges read (set once the service has started)."""
        self._state.sources = (queue_depth, jobs, backend_up, log_up, journal_records,
                               predictor_fit)

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _StateCollector(Collector):
    def __init__(self) -> None:
        self.sources: tuple[Callable, ...] | None = None

    def collect(self) -> Iterator[Metric]:
        if self.sources is None:
            return
        queue_depth, jobs, backend_up, log_up, journal_records, predictor_fit = self.sources
        yield GaugeMetricFamily(
            "memprog_queue_depth", "Backend operations waiting or running.", value=queue_depth()
        )
        by_status = GaugeMetricFamily(
            "memprog_jobs", "Stored programming jobs per status.", labels=["status"]
        )
        try:
            counts = jobs()
        except db.Error:  # the database is gone: memprog_log_up says so
            counts = None
        if counts is not None:
            for status in JOB_STATUSES:
                by_status.add_metric([status], counts.get(status, 0))
            yield by_status
        yield GaugeMetricFamily(
            "memprog_backend_up",
            "1 while the backend is described and reachable, else 0.",
            value=1.0 if backend_up() else 0.0,
        )
        yield GaugeMetricFamily(
            "memprog_log_up",
            "1 while the operation log (the database) takes records, else 0: nothing is fired.",
            value=1.0 if log_up() else 0.0,
        )
        yield GaugeMetricFamily(
            "memprog_log_journal_records",
            "Records kept in the side journal, waiting for the database to take them.",
            value=journal_records(),
        )
        fit = predictor_fit()
        if fit is not None and fit.get("window"):
            yield GaugeMetricFamily(
                "memprog_predictor_share_unexplained",
                "Share of the active model's recent pulses that no device latent explains "
                "within a factor 2 of the width (a model that does not fit these devices).",
                value=fit["share_unexplained"],
            )
            yield GaugeMetricFamily(
                "memprog_predictor_share_latent_at_bound",
                "Share of the active model's recent pulses whose device latent is at the end of "
                "its range.",
                value=fit["share_latent_at_bound"],
            )
            yield GaugeMetricFamily(
                "memprog_predictor_calibration_advised",
                "1 when the active model does not fit these devices: calibrate "
                "(POST /api/v1/calibrations), else 0.",
                value=1.0 if fit["calibration_advised"] else 0.0,
            )


class MeteredStorage(Storage):
    """The storage, counting what it records (on the backend owner's thread)."""

    def __init__(self, target: str | Path, metrics: Metrics, backend_kind: str | None = None,
                 *, station: str | None = None, state_dir: str | Path | None = None):
        super().__init__(target, backend_kind, station=station, state_dir=state_dir)
        self.metrics = metrics
        self._strategy: dict[int, str] = {}

    def record_read(self, result, *args, **kwargs) -> None:
        super().record_read(result, *args, **kwargs)
        self.metrics.reads.inc(len(result.rows))

    def record_pulse(self, rows, *args, **kwargs) -> None:
        super().record_pulse(rows, *args, **kwargs)
        self.metrics.pulses.inc(len(np.asarray(rows)))

    def settle_pulses(self, first_id: int, n: int, fired: int, uncertain: bool = False,
                      energy: np.ndarray | None = None) -> None:
        super().settle_pulses(first_id, n, fired, uncertain, energy)
        done = max(0, min(int(fired), n))
        self.metrics.pulses.inc(done)
        if energy is not None and done:
            joules = np.asarray(energy, dtype=float)[:done]
            self.metrics.pulse_energy.inc(float(joules[np.isfinite(joules)].sum()))

    def start_run(self, params: RunParams) -> int:
        run_id = super().start_run(params)
        self._strategy[run_id] = params.strategy
        return run_id

    def finish_run(self, run_id: int, **kwargs) -> None:
        super().finish_run(run_id, **kwargs)
        strategy = self._strategy.pop(run_id, "unknown")
        status = kwargs.get("status", "done")
        self.metrics.runs.labels(strategy, status).inc()
        converged = kwargs.get("converged")
        if status == "done" and converged is not None:
            self.metrics.cells_programmed.labels(strategy).inc(len(converged))
            self.metrics.cells_converged.labels(strategy).inc(int(np.count_nonzero(converged)))
        if status == "done":
            histogram = self.metrics.pulses_per_cell.labels(strategy)
            for count in np.asarray(kwargs["pulses"]).tolist():
                histogram.observe(count)

    def fail_run(self, run_id: int, error: str) -> int:
        fired = super().fail_run(run_id, error)
        self.metrics.runs.labels(self._strategy.pop(run_id, "unknown"), "failed").inc()
        return fired


class LatencyMiddleware:
    """ASGI middleware timing every HTTP request (to the end of its body, streams included)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def timed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, timed_send)
        finally:
            route = _template(scope)
            method = scope.get("method", "")
            self.metrics.request_latency.labels(
                method if method in _METHODS else "other", route, str(status)
            ).observe(time.perf_counter() - started)


def _template(scope: Scope) -> str:
    """The matched route's full path template (``/api/v1/runs/{run_id}``), ``unmatched`` if
    none: the route knows its path below the router prefix, the request the prefix."""
    path = getattr(scope.get("route"), "path", None)
    if not isinstance(path, str) or not path.startswith("/"):
        return "unmatched"
    depth = path.rstrip("/").count("/")
    if depth == 0:
        return path
    return "/".join(scope["path"].split("/")[:-depth]) + path.rstrip("/")


router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}},
                     "description": "Prometheus text exposition format."}},
    dependencies=[Depends(require("read"))],
    summary="Prometheus metrics",
)
def metrics(request: Request) -> Response:
    """Counters of pulses, reads, runs (by strategy and outcome) and converged cells, request
    latency histograms per route, queue depth and jobs per status. Needs a ``read`` key when
    authentication is on (Prometheus: ``authorization: {type: Bearer, credentials: KEY}``)."""
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

"""A small client for lab scripts (httpx). SI units: S, V, s, A.

    from service.client import MemprogClient

    with MemprogClient("http://127.0.0.1:8000") as lab:
        print(lab.health().backend)
        g = lab.read([(0, 0), (0, 1)]).readings[0].conductance
        lab.pulse([(0, 0)], voltage=-0.45, width=100e-9)
        run = lab.program([(0, 0, 300e-6), (0, 1, 150e-6)], tolerance=0.02, max_pulses=100)
        print(run.converged, [r.final for r in run.results])

Answers are the service's own pydantic models (``service.models``). A 4xx/5xx raises
:class:`MemprogError` carrying the status and the service's ``detail`` (which names the field).

Background jobs, the emergency stop and API keys (a service with authentication on)::

    with MemprogClient("http://lab-pc:8000", api_key="mp_...") as lab:
        job = lab.submit_job([(r, c, 250e-6) for r in range(64) for c in range(64)])
        for progress in lab.job_events(job.id):          # live, until it ends
            print(progress.status, progress.cells_done, "/", progress.total_cells)
        lab.emergency_stop()                              # outputs off now, jobs aborted
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import httpx

from service.models import (
    JOB_TERMINAL,
    ArrayResponse,
    EmergencyStopResponse,
    HealthResponse,
    JobList,
    JobRecord,
    ProgramResponse,
    PulseResponse,
    ReadResponse,
    RunDetail,
    RunList,
)
from service.models_calibration import CALIBRATION_TERMINAL, CalibrationRecord, ModelList
from service.models_layers import LayerDetail, LayerList, LayerRecord, MultiplyResponse

API = "/api/v1"


class MemprogError(RuntimeError):
    """The service refused or failed a request."""

    def __init__(self, status_code: int, detail: object):
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


TargetLike = Sequence[float] | Mapping[str, float]
"""A target as (row, col, conductance in S) or {"row", "col", "conductance"}."""


class MemprogClient:
    """Synchronous client of one memprog service."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        timeout: float = 600.0,
        transport: httpx.BaseTransport | None = None,
        api_key: str | None = None,
    ):
        # Programming a large array on hardware can take minutes: the default timeout is long.
        headers = {"Authorization": f"ApiKey {api_key}"} if api_key else None
        self._http = httpx.Client(
            base_url=base_url, timeout=timeout, transport=transport, headers=headers
        )

    def __enter__(self) -> MemprogClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # --- the array --------------------------------------------------------------------------

    def health(self) -> HealthResponse:
        return HealthResponse.model_validate(self._get("/health"))

    def array(self) -> ArrayResponse:
        return ArrayResponse.model_validate(self._get("/array"))

    def read(
        self, cells: Iterable[Sequence[int]] | None = None, *, v_read: float | None = None
    ) -> ReadResponse:
        """Read ``cells`` ([(row, col), ...]); ``cells=None`` reads the whole array."""
        body: dict[str, object] = (
            {"all": True} if cells is None else {"cells": [list(c) for c in cells]}
        )
        if v_read is not None:
            body["v_read"] = v_read
        return ReadResponse.model_validate(self._post("/read", body))

    def pulse(
        self,
        cells: Iterable[Sequence[int]],
        voltage: float | Sequence[float],
        width: float | Sequence[float],
        *,
        read_after: bool = False,
        v_read: float | None = None,
    ) -> PulseResponse:
        """One pulse per cell: ``voltage`` in V (negative SETs), ``width`` in s."""
        body: dict[str, object] = {
            "cells": [list(c) for c in cells],
            "voltage": voltage if isinstance(voltage, int | float) else list(voltage),
            "width": width if isinstance(width, int | float) else list(width),
            "read_after": read_after,
        }
        if v_read is not None:
            body["v_read"] = v_read
        return PulseResponse.model_validate(self._post("/pulse", body))

    def program(
        self,
        targets: Iterable[TargetLike],
        *,
        tolerance: float = 0.02,
        max_pulses: int = 20,
        strategy: str | None = None,
        verify: bool = True,
        trace: bool = False,
        v_read: float | None = None,
    ) -> ProgramResponse:
        """Program each (row, col, conductance in S) to within ``tolerance`` of its target."""
        body = _program_body(targets, tolerance, max_pulses, strategy, verify, v_read)
        body["trace"] = trace
        return ProgramResponse.model_validate(self._post("/program", body))

    # --- background jobs --------------------------------------------------------------------

    def submit_job(
        self,
        targets: Iterable[TargetLike],
        *,
        tolerance: float = 0.02,
        max_pulses: int = 20,
        strategy: str | None = None,
        verify: bool = True,
        v_read: float | None = None,
    ) -> JobRecord:
        """Queue a background programming job (answered at once, status ``queued``)."""
        body = _program_body(targets, tolerance, max_pulses, strategy, verify, v_read)
        return JobRecord.model_validate(self._post("/jobs", body))

    def job(self, job_id: int) -> JobRecord:
        return JobRecord.model_validate(self._get(f"/jobs/{job_id}"))

    def jobs(self, limit: int = 100, offset: int = 0) -> JobList:
        return JobList.model_validate(self._get("/jobs", limit=limit, offset=offset))

    def abort_job(self, job_id: int) -> JobRecord:
        """Abort a job (a running one stops before its next pulse)."""
        return JobRecord.model_validate(self._post(f"/jobs/{job_id}/abort", None))

    def job_events(self, job_id: int, *, timeout: float | None = None) -> Iterator[JobRecord]:
        """The job's progress as it happens (Server-Sent Events), ending with its final state;
        ``timeout`` (s) bounds the whole stream (TimeoutError)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._http.stream("GET", f"{API}/jobs/{job_id}/events") as response:
            if not response.is_success:
                response.read()
                _raise_for(response)
            event = "progress"
            for line in response.iter_lines():
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} still running after {timeout} s")
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event == "error":
                    # the service ended the stream, e.g. its key was revoked
                    raise MemprogError(401, json.loads(line[5:]))
                elif line.startswith("data:"):
                    record = JobRecord.model_validate(json.loads(line[5:]))
                    yield record
                    if record.status in JOB_TERMINAL:
                        return

    def wait_job(self, job_id: int, *, timeout: float | None = None) -> JobRecord:
        """Follow the job until it ends; its final record."""
        final = None
        for record in self.job_events(job_id, timeout=timeout):
            final = record
        return final if final is not None else self.job(job_id)

    # --- layers: weight matrices held in the array -------------------------------------------

    def program_layer(
        self,
        name: str,
        weights: Sequence[Sequence[float]],
        *,
        origin: tuple[int, int] = (0, 0),
        g_min: float = 110e-6,
        g_max: float = 500e-6,
        low_power: bool = False,
        tolerance: float = 0.02,
        max_pulses: int = 20,
        strategy: str | None = None,
        wait: bool = True,
        timeout: float | None = None,
    ) -> LayerDetail:
        """Hold ``weights`` (rows × outputs, any units) in the array from ``origin`` (a pair of
        devices per weight, G⁺ − G⁻ ∝ w within [g_min, g_max] S) and, with ``wait``, follow its
        programming job to the end; the layer (targets, programmed conductances, errors)."""
        body: dict[str, object] = {
            "name": name,
            "weights": [[float(v) for v in row] for row in weights],
            "origin": {"row": int(origin[0]), "col": int(origin[1])},
            "mapping": {"kind": "differential", "g_min": g_min, "g_max": g_max,
                        "low_power": low_power},
            "tolerance": tolerance,
            "max_pulses": max_pulses,
        }
        if strategy is not None:
            body["strategy"] = strategy
        record = LayerRecord.model_validate(self._post("/layers", body))
        if wait and record.job is not None:
            self.wait_job(record.job.id, timeout=timeout)
        return self.layer(name)

    def layer(self, name: str) -> LayerDetail:
        return LayerDetail.model_validate(self._get(f"/layers/{name}"))

    def layers(self) -> LayerList:
        return LayerList.model_validate(self._get("/layers"))

    def multiply(self, name: str, inputs: Sequence[Sequence[float]], *,
                 v_in: float | None = None, t_read: float = 1e-8) -> MultiplyResponse:
        """The products of input vectors (|x| ≤ 1, one value per layer row; ≤ 1,024 a call)
        with the layer, read from the array: outputs in weight units, the ideal W·x, currents,
        read power, energy per product and TOPS/W."""
        body: dict[str, object] = {"inputs": [[float(v) for v in row] for row in inputs],
                                   "t_read": t_read}
        if v_in is not None:
            body["v_in"] = v_in
        return MultiplyResponse.model_validate(self._post(f"/layers/{name}/multiply", body))

    # --- safety -----------------------------------------------------------------------------

    def emergency_stop(self) -> EmergencyStopResponse:
        """Outputs off and safe state now; every job aborted. Raises :class:`MemprogError`
        (502, detail: the answer) if the backend could not confirm its safe state."""
        response = self._http.post(f"{API}/emergency-stop")
        if response.status_code == 502:
            raise MemprogError(502, response.json())
        _raise_for(response)
        return EmergencyStopResponse.model_validate(response.json())

    # --- the predictor: calibration and models ----------------------------------------------

    def calibrate(self, cells: int | Sequence[Sequence[int]], *, pulses_per_cell: int = 20,
                  activate: str = "if_better") -> CalibrationRecord:
        """Start a calibration of the pulse predictor to this station's devices (answered at
        once, status ``pulsing``): ``cells`` a count or [(row, col), ...]; ``activate``
        ``if_better`` | ``always`` | ``never``."""
        body = {"cells": cells if isinstance(cells, int) else [list(c) for c in cells],
                "pulses_per_cell": pulses_per_cell, "activate": activate}
        return CalibrationRecord.model_validate(self._post("/calibrations", body))

    def calibration(self, calibration_id: int) -> CalibrationRecord:
        return CalibrationRecord.model_validate(self._get(f"/calibrations/{calibration_id}"))

    def abort_calibration(self, calibration_id: int) -> CalibrationRecord:
        return CalibrationRecord.model_validate(
            self._post(f"/calibrations/{calibration_id}/abort", None))

    def wait_calibration(self, calibration_id: int, *, timeout: float | None = None,
                         poll: float = 0.5) -> CalibrationRecord:
        """Poll until the calibration has ended; its final record (TimeoutError after
        ``timeout`` s)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            record = self.calibration(calibration_id)
            if record.status in CALIBRATION_TERMINAL:
                return record
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"calibration {calibration_id} still {record.status} "
                                   f"after {timeout} s")
            time.sleep(poll)

    def models(self) -> ModelList:
        return ModelList.model_validate(self._get("/predictor/models"))

    def activate_model(self, model_id: str) -> dict:
        """Make the model ``model_id`` (see :meth:`models`) the active one."""
        return dict(self._post("/predictor/activate", {"model": model_id}))  # type: ignore[call-overload]

    # --- history ----------------------------------------------------------------------------

    def runs(self, limit: int = 100, offset: int = 0) -> RunList:
        return RunList.model_validate(self._get("/runs", limit=limit, offset=offset))

    def run(self, run_id: int, *, trace: bool = False) -> RunDetail:
        return RunDetail.model_validate(self._get(f"/runs/{run_id}", trace=trace))

    def export_csv(self, run_id: int | None = None) -> str:
        """Every recorded operation (or one run's) as CSV text."""
        params: dict[str, str | int] = {"format": "csv"}
        if run_id is not None:
            params["run_id"] = run_id
        response = self._http.get(f"{API}/export", params=params)
        _raise_for(response)
        return response.text

    # --- plumbing ---------------------------------------------------------------------------

    def _get(self, path: str, **params: Any) -> object:
        response = self._http.get(API + path, params=params or None)
        _raise_for(response)
        return response.json()

    def _post(self, path: str, body: Mapping[str, object] | None) -> object:
        response = self._http.post(API + path, json=body)
        _raise_for(response)
        return response.json()


def _target(target: TargetLike) -> dict[str, float]:
    if isinstance(target, Mapping):
        return {"row": target["row"], "col": target["col"], "conductance": target["conductance"]}
    row, col, conductance = target
    return {"row": int(row), "col": int(col), "conductance": float(conductance)}


def _program_body(
    targets: Iterable[TargetLike],
    tolerance: float,
    max_pulses: int,
    strategy: str | None,
    verify: bool,
    v_read: float | None,
) -> dict[str, object]:
    """The fields POST /program and POST /jobs share; None means the service's default."""
    body: dict[str, object] = {
        "targets": [_target(t) for t in targets],
        "tolerance": tolerance,
        "max_pulses": max_pulses,
        "verify": verify,
    }
    if strategy is not None:
        body["strategy"] = strategy
    if v_read is not None:
        body["v_read"] = v_read
    return body


def _raise_for(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = response.text
    raise MemprogError(response.status_code, detail)

"""Calibrations of the pulse predictor to this station's devices, in the service, without torch.

A calibration is two steps:

1. **Pulses**: a background job (:mod:`service.jobs`: queued like any job, progress, abort,
   emergency stop) runs the one programming loop on the chosen cells with the calibration's
   pulse chooser (:class:`predictor.calibration.ExplorationPlanner`): every pulse aimed at a
   random conductance, at one of the model's amplitudes, with a read before and after, all
   recorded in the operation log like any pulse.
2. **Fit**, off the backend's thread: pulse records from the whole log of this station (the
   calibration's and every usable earlier one, read at the model's read voltage), cleaned and
   fitted (:func:`predictor.calibration.fit`) into an adapted model file with its lineage, in
   the models directory (:mod:`service.predictor_models`). It becomes the active model if it
   predicts held-out devices better than its parent (``activate: if_better``) or when asked
   (``always``).

Safe: an aborted or failing calibration writes no model; one killed leaves at worst a model file
that was never activated (the active model is switched only after the file is complete and
loads) and its record ``interrupted`` at the next start; the database is the operation log's,
whole as ever. Its HTTP side: ``service/routers/calibrations.py``.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from predictor import strategy
from predictor.adapted import write_adapted
from predictor.calibration import CalibrationConfig, ExplorationPlanner, fit, improves
from predictor.dataset import Records
from predictor.log_records import load_export
from predictor.runtime import PulsePredictor
from programming import InvalidRequest, ProgramJob
from service.jobs import JobManager
from service.models_calibration import CALIBRATION_TERMINAL, CalibrationRecord, CalibrationRequest
from service.predictor_models import ModelRegistry
from service.request_helpers import request_v_read
from service.state import ServiceState
from service.store.database import SqliteDatabase
from service.validation import RequestProblem, cell_arrays

log = logging.getLogger("memprog.calibrations")

CELLS_SEED = 20261203
"""Seed of the choice of cells when a calibration names only how many."""


def _utc(t: float | None) -> datetime | None:
    return None if t is None else datetime.fromtimestamp(t, UTC)


class CalibrationManager:
    """Starts calibrations, follows their jobs, fits and activates (see the module)."""

    def __init__(self, jobs: JobManager, registry: ModelRegistry, state: ServiceState):
        self.jobs = jobs
        self.registry = registry
        self.state = state
        self.storage = jobs.storage
        self._tasks: set[asyncio.Task] = set()
        self._aborted: set[int] = set()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------------- requests
    async def submit(self, request: CalibrationRequest, submitted_by: str | None
                     ) -> CalibrationRecord:
        """Check the request (422 naming the field, nothing started), start its job; 202."""
        parent = strategy.current()  # PredictorUnavailable: 503 (service/errors.py)
        info, limits = await self.state.backend()
        if isinstance(request.cells, int):
            n = request.cells
            if not 1 <= n <= info.rows * info.cols:
                raise RequestProblem(["cells"], f"{n} cells: the array has "
                                     f"{info.rows * info.cols}", "limit",
                                     limit=info.rows * info.cols)
            flat = np.sort(np.random.default_rng(CELLS_SEED).choice(info.rows * info.cols, n,
                                                                    replace=False))
            rows, cols = flat // info.cols, flat % info.cols
        else:
            rows, cols = cell_arrays(request.cells, info, "cells")
        cap = self.state.settings.programming.max_pulses_cap
        if request.pulses_per_cell > cap:
            raise RequestProblem(["pulses_per_cell"], f"above max_pulses_cap = {cap}", "limit",
                                 limit=cap)
        v_read = request_v_read(self.state, limits, parent.v_read)
        set_v, reset_v = parent.allowed_voltages(limits.v_set_max, limits.v_reset_max)
        if set_v.size == 0 or reset_v.size == 0:
            raise InvalidRequest(["cells"], "the service's limits allow none of the predictor's "
                                 f"{'SET' if set_v.size == 0 else 'RESET'} amplitudes: no "
                                 "calibration is possible", "limit")
        lo, hi = parent.target_range
        job = ProgramJob(
            rows=rows, cols=cols, target=np.full(rows.size, float(np.sqrt(lo * hi))),
            tolerance=0.0,  # never converged: every cell gets its whole budget
            max_pulses=request.pulses_per_cell, strategy="calibration", verify=True,
            trace=False, v_read=v_read, limits=limits,
            read_current_floor=self.state.settings.programming.read_current_floor,
        )
        cal_id = await asyncio.to_thread(
            self.storage.create_calibration, cells=int(rows.size),
            pulses_per_cell=request.pulses_per_cell, activate=request.activate,
            parent=parent.fingerprint, submitted_by=submitted_by)

        def planner() -> ExplorationPlanner:
            return ExplorationPlanner(parent, int(rows.size), v_set_max=limits.v_set_max,
                                      v_reset_max=limits.v_reset_max,
                                      width_min=limits.width_min, width_max=limits.width_max,
                                      seed=cal_id)

        try:
            record = await self.jobs.submit(job, submitted_by, planner=planner)
        except BaseException as exc:
            await asyncio.to_thread(self.storage.update_calibration, cal_id, status="failed",
                                    finished=time.time(), error=f"{type(exc).__name__}: {exc}")
            raise
        await asyncio.to_thread(self.storage.update_calibration, cal_id, job_id=record.id)
        task = asyncio.get_running_loop().create_task(
            self._follow(cal_id, record.id, parent, request.activate, int(rows.size)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        out = await self.get(cal_id)
        assert out is not None
        return out

    async def get(self, cal_id: int) -> CalibrationRecord | None:
        row = await asyncio.to_thread(self.storage.get_calibration, cal_id)
        return None if row is None else await self._record(row)

    async def list(self, limit: int, offset: int) -> list[CalibrationRecord]:
        rows = await asyncio.to_thread(self.storage.list_calibrations, limit, offset)
        return [await self._record(row) for row in rows]

    async def abort(self, cal_id: int) -> CalibrationRecord | None:
        """Abort: its job stops before its next pulse; a fit under way writes no model. None if
        there is no such calibration."""
        row = await asyncio.to_thread(self.storage.get_calibration, cal_id)
        if row is None:
            return None
        if row["status"] not in CALIBRATION_TERMINAL:
            with self._lock:
                self._aborted.add(cal_id)
            if row["job_id"] is not None:
                await self.jobs.abort(row["job_id"])
        return await self.get(cal_id)

    async def _record(self, row: dict) -> CalibrationRecord:
        job = await self.jobs.get(row["job_id"]) if row["job_id"] is not None else None
        return CalibrationRecord(
            id=row["id"], status=row["status"], created_at=_utc(row["created"]),
            finished_at=_utc(row["finished"]), job_id=row["job_id"], job=job,
            cells=row["cells"], pulses_per_cell=row["pulses_per_cell"],
            activate=row["activate"], parent=row["parent"],
            model=Path(row["model_path"]).name if row["model_path"] else None,
            activated=row["activated"], report=row["report"], error=row["error"],
            submitted_by=row["submitted_by"],
        )

    # ----------------------------------------------------------------------- the follow-up
    def _end(self, cal_id: int, status: str, **fields: object) -> None:
        self.storage.update_calibration(cal_id, status=status, finished=time.time(), **fields)

    async def _follow(self, cal_id: int, job_id: int, parent: PulsePredictor, activate: str,
                      cells: int) -> None:
        try:
            job = await self.jobs.wait(job_id)
            if job is None or job.status != "completed" or self._was_aborted(cal_id):
                status = "aborted" if job is None or job.status == "aborted" \
                    or self._was_aborted(cal_id) else job.status
                error = f"its job ended {job.status}: {job.error}" if job is not None \
                    else "its job is gone"
                await asyncio.to_thread(self._end, cal_id, status, error=error)
                return
            await asyncio.to_thread(self.storage.update_calibration, cal_id, status="fitting")
            await asyncio.to_thread(self._fit, cal_id, parent, activate, cells)
        except Exception as exc:  # recorded with the calibration, which says why
            log.warning("calibration %d failed: %s: %s", cal_id, type(exc).__name__, exc)
            await asyncio.to_thread(self._end, cal_id, "failed",
                                    error=f"{type(exc).__name__}: {exc}")

    def _was_aborted(self, cal_id: int) -> bool:
        with self._lock:
            return cal_id in self._aborted

    def _station_records(self, v_read: float) -> Records:
        """This station's pulse records from the log: read in place from an SQLite file, else
        from a snapshot of the shared database in a private temporary file."""
        storage, station = self.storage, self.storage.station
        if isinstance(storage.db, SqliteDatabase):
            return load_export(storage.db.path, v_read=v_read, station=station)
        with tempfile.TemporaryDirectory(prefix="memprog-calibration-") as work:
            copy = Path(work) / "log.db"
            storage.snapshot(copy)
            return load_export(copy, v_read=v_read, station=station)

    def _fit(self, cal_id: int, parent: PulsePredictor, activate: str, cells: int) -> None:
        """Worker thread: fit, write the model, activate if asked (see the module)."""
        started = time.monotonic()
        records = self._station_records(parent.v_read)
        result = fit(parent, records, CalibrationConfig(seed=cal_id))
        lineage = {
            "parent_fingerprint": parent.fingerprint,
            "records_used": result.records_used,
            "records_dropped": result.records_dropped,
            "records_in_log": len(records),
            "cells": {"calibrated": cells, "devices_in_fit": result.devices},
            "time_span": records.info.get("time_span"),
            "held_out": result.held_out,
            "calibration_id": cal_id,
            "station": self.storage.station,
            "station_database": self.storage.db.describe(),
        }
        base = parent.name.removesuffix("-calibrated")
        path = write_adapted(
            self.registry.dir / f"calibration-{cal_id}.json",
            name=f"{base}-calibrated", version=f"{parent.version}+c{cal_id}",
            network=parent.network_path, correction=result.correction,
            one_shot_prior=result.one_shot_prior, lineage=lineage, created=time.time(),
        )
        better = improves(result)
        wanted = activate == "always" or (activate == "if_better" and better)
        why = ("asked to activate always" if activate == "always"
               else "it fits the held-out devices better than its parent" if wanted
               else "asked never to activate" if activate == "never"
               else "it does not fit the held-out devices better than its parent")
        report = {
            "records_used": result.records_used,
            "records_dropped": result.records_dropped,
            "devices": result.devices,
            "held_out": result.held_out,
            "correction_decades": {p: vars(getattr(result.correction, p))
                                   for p in ("set", "reset")},
            "one_shot_prior": result.one_shot_prior,
            "iterations": result.iterations,
            "improves": better,
            "activation": why,
            "fit_seconds": round(time.monotonic() - started, 3),
        }
        activated = False
        if wanted and not self._was_aborted(cal_id):
            self.registry.activate(path.name, f"calibration {cal_id}: {why}")
            self.state.predictor = strategy.status()
            activated = True
        status = "aborted" if self._was_aborted(cal_id) else "completed"
        self._end(cal_id, status, model_path=str(path), activated=int(activated),
                  report=report, error="aborted during the fit: not activated"
                  if status == "aborted" else None)

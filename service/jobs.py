"""Background programming jobs: many cells (up to the whole array) programmed without holding a
request open, with progress, abort and a live progress stream.

A job is one queued unit of work on the :class:`~service.owner.BackendOwner` (so jobs run one at a
time, in the order they were submitted, interleaved with no other operation): it runs the same
write-and-verify loop as ``/program`` (:func:`programming.loop.program_cells`), asked before
every batched pulse whether to stop. Its record lives in SQLite (table ``jobs``):

* its progress (cells done, cells converged, pulses) is written in the same transaction as each
  iteration's operations, so after a crash the record and the operation log agree exactly;
* a job still ``queued`` or ``running`` when the service starts again is marked ``interrupted``
  by :class:`~service.store.Storage` and never re-run (its operations are kept);
* a graceful shutdown stops a running job between pulses and marks it ``interrupted`` too.

Status: ``queued`` → ``running`` → ``completed`` | ``failed`` | ``aborted`` | ``interrupted``
(``queued`` → ``aborted`` when aborted before it ran); an end is final (the database and the
in-memory record both keep it). An abort (``POST /jobs/{id}/abort``, or
an emergency stop for every job) takes effect before the job's next pulse.

Its HTTP side is ``service/routers/jobs.py`` (the same concept: jobs, as a resource).
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from drivers.base import Backend
from programming import Planner, ProgramJob, Progress, program_cells
from service.job_progress import Subscriber
from service.models import JOB_TERMINAL, JobRecord, JobStatus
from service.owner import BackendOwner, EmergencyStopped
from service.recording import LogRecorder
from service.store import Storage

log = logging.getLogger("memprog.jobs")

TERMINAL = JOB_TERMINAL
__all__ = ["TERMINAL", "JobManager", "JobRecord", "JobStatus", "job_record"]

ESTOP_MESSAGE = "stopped by an emergency stop"


def _utc(t: float | None) -> datetime | None:
    return None if t is None else datetime.fromtimestamp(t, UTC)


def job_record(row: dict, abort_requested: bool = False) -> JobRecord:
    """The API record of a stored job row (:data:`service.store.schema.JOB_COLUMNS`)."""
    return JobRecord(
        id=row["id"],
        status=row["status"],
        created_at=_utc(row["created"]),
        started_at=_utc(row["started"]),
        finished_at=_utc(row["finished"]),
        total_cells=row["total_cells"],
        cells_done=row["cells_done"],
        cells_converged=row["cells_converged"],
        pulses=row["pulses"],
        run_id=row["run_id"],
        strategy=row["strategy"],
        tolerance=row["tolerance"],
        max_pulses=row["max_pulses"],
        verify=bool(row["verify"]),
        v_read=row["v_read"],
        submitted_by=row["submitted_by"],
        abort_requested=abort_requested and row["status"] not in TERMINAL,
        error=row["error"],
        station=row["station"],
        energy=row.get("energy"),
    )


# ----------------------------------------------------------------------------------- manager


@dataclass
class _Job:
    id: int
    row: dict  # the stored row, kept in step with the database
    abort: str | None = None  # None, or the status an abort ends it in (aborted|interrupted)
    abort_message: str | None = None
    subscribers: list[Subscriber] = field(default_factory=list)


class JobManager:
    """Submits jobs to the backend owner, tracks the active ones, publishes their progress."""

    def __init__(self, owner: BackendOwner, loop: asyncio.AbstractEventLoop):
        self.owner = owner
        self.storage: Storage = owner.storage
        self._loop = loop
        self._active: dict[int, _Job] = {}  # queued or running
        self._lock = threading.Lock()  # guards _active and each _Job (loop and owner threads)
        self._submit = asyncio.Lock()  # database ids in submission (= FIFO) order
        self._tasks: set[asyncio.Task] = set()
        # Rows of jobs whose latest state went to the side journal (the log failed): what
        # /jobs shows for them until the database has taken it.
        self._unstored: dict[int, dict] = {}

    # --- requests (event loop) ---------------------------------------------------------------

    async def submit(self, job: ProgramJob, submitted_by: str | None = None, *,
                     planner: Callable[[], Planner] | None = None) -> JobRecord:
        """Store a ``queued`` job and queue it for the backend; its record. ``planner``: builds
        the pulse chooser when the job starts, instead of ``job.strategy``'s (a calibration's
        exploration; the job is still recorded under ``job.strategy``)."""
        stops = self.owner.stops

        def store() -> tuple[_Job, builtins.list[_Job]]:
            # Stored and registered in one step: no moment when the job is in the database
            # but unknown to abort, the emergency stop and the progress stream.
            job_id = self.storage.create_job(
                strategy=job.strategy,
                tolerance=job.tolerance,
                max_pulses=job.max_pulses,
                verify=job.verify,
                v_read=job.v_read,
                total_cells=int(job.target.size),
                submitted_by=submitted_by,
            )
            row = self.storage.get_job(job_id)
            assert row is not None
            handle = _Job(job_id, row)
            with self._lock:
                self._active[job_id] = handle
                # An emergency stop while it was being stored did not see it: it applies.
                stopped = self._flag([handle], "aborted", ESTOP_MESSAGE) \
                    if self.owner.stops != stops else []
            return handle, stopped

        async with self._submit:
            handle, stopped = await asyncio.to_thread(store)
            for queued in stopped:
                await asyncio.to_thread(self._end_queued, queued)
            # Tasks start in creation order, and each queues its work on the owner before its
            # first await: the owner's FIFO order is the submission order.
            task = self._loop.create_task(self._run(handle, job, planner))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        with self._lock:
            return job_record(dict(handle.row))

    def _unstored_row(self, job_id: int) -> dict | None:
        with self._lock:
            if self.storage.failure is None and self.storage.journal_records == 0:
                self._unstored.clear()  # the database has it all again
            return self._unstored.get(job_id)

    def running_id(self) -> int | None:
        """The id of the job running now on this station, None if none is."""
        with self._lock:
            for job_id, handle in self._active.items():
                if handle.row["status"] == "running":
                    return job_id
        return None

    async def get(self, job_id: int) -> JobRecord | None:
        # An active job's row is kept in step with the stored one: no query (nor a failing
        # one while the database is gone).
        with self._lock:
            handle = self._active.get(job_id)
            row = dict(handle.row) if handle is not None else None
            requested = handle is not None and handle.abort is not None
        row = row or self._unstored_row(job_id)
        if row is None:
            row = await asyncio.to_thread(self.storage.get_job, job_id)
        if row is None:
            return None
        return job_record(row, requested)

    async def list(self, limit: int, offset: int, station: str | None = None
                   ) -> list[JobRecord]:
        """Jobs, newest first; of ``station`` only if given (None: every station's)."""
        rows = await asyncio.to_thread(self.storage.list_jobs, limit, offset, station)
        rows = [self._unstored_row(row["id"]) or row for row in rows]
        with self._lock:
            requested = {i for i, h in self._active.items() if h.abort is not None}
        return [job_record(row, row["id"] in requested) for row in rows]

    async def abort(self, job_id: int, *, wait: float = 2.0) -> JobRecord | None:
        """Abort a job: a queued one at once (it never runs), a running one before its next
        pulse (waiting up to ``wait`` s for it to end). None if the job is not active."""
        with self._lock:
            handle = self._active.get(job_id)
            if handle is None:
                return None
        await self._abort([handle], "aborted", "aborted on request")
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with self._lock:
                if job_id not in self._active:
                    break
            await asyncio.sleep(0.02)
        return await self.get(job_id)

    def stop_all(self, message: str = ESTOP_MESSAGE
                 ) -> tuple[builtins.list[int], builtins.list[_Job]]:
        """Emergency stop, at once (no I/O): ask every queued and running job to stop. Their
        ids, and the queued ones, whose end :meth:`end_queued` records."""
        with self._lock:
            handles = list(self._active.values())
            queued = self._flag(handles, "aborted", message)
        return sorted(h.id for h in handles), queued

    async def end_queued(self, handles: builtins.list[_Job]) -> None:
        for handle in handles:
            await asyncio.to_thread(self._end_queued, handle)

    def shutdown(self) -> None:
        """Graceful stop of the service: queued jobs and the running one end ``interrupted``
        (the running one before its next pulse; the owner then finishes its queue)."""
        with self._lock:
            handles = list(self._active.values())
            queued = self._flag(handles, "interrupted", "the service was shut down")
        for handle in queued:
            self._end_queued(handle)

    async def _abort(self, handles: builtins.list[_Job], status: str, message: str) -> None:
        with self._lock:
            queued = self._flag(handles, status, message)
        for handle in queued:
            await asyncio.to_thread(self._end_queued, handle)

    def _flag(self, handles: builtins.list[_Job], status: str, message: str) -> builtins.list[_Job]:
        """Under the lock: ask ``handles`` to stop; the ones still queued (ended here)."""
        queued = []
        for handle in handles:
            if handle.abort is None:
                handle.abort, handle.abort_message = status, message
                if handle.row["status"] == "queued":
                    queued.append(handle)
        return queued

    def _end_queued(self, handle: _Job) -> None:
        """A job aborted before it started: recorded as such (the owner will skip it)."""
        fields = {"status": handle.abort, "finished": time.time(), "error": handle.abort_message}
        if self.storage.update_job_if(handle.id, ("queued",), **fields):
            self._update(handle, fields)

    # --- the job (backend owner thread) ------------------------------------------------------

    async def _run(self, handle: _Job, job: ProgramJob,
                   planner: Callable[[], Planner] | None = None) -> None:
        try:
            await self.owner.run(
                lambda backend, storage: self._execute(handle, job, backend, planner))
        except EmergencyStopped:
            await self._fail(handle, "aborted", handle.abort_message or ESTOP_MESSAGE)
        except Exception as exc:
            log.warning("job %d failed: %s: %s", handle.id, type(exc).__name__, exc)
            await self._fail(handle, "failed", f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                # A job aborted while queued stays active until its end is stored (_end_queued).
                if handle.row["status"] in TERMINAL:
                    self._active.pop(handle.id, None)

    async def _fail(self, handle: _Job, status: str, message: str) -> None:
        """A job that ended outside the loop (never started, or an error before its run):
        record its end unless it already has one."""
        with self._lock:
            if handle.row["status"] in TERMINAL:
                return
        fields = {"status": status, "finished": time.time(), "error": message}
        if await asyncio.to_thread(
            self.storage.update_job_if, handle.id, ("queued", "running"), **fields
        ):
            self._update(handle, fields)

    def _execute(self, handle: _Job, job: ProgramJob, backend: Backend,
                 planner: Callable[[], Planner] | None = None) -> None:
        storage = self.storage
        with self._lock:
            aborted = handle.abort is not None
            if not aborted:
                handle.row["status"] = "running"  # from here an abort waits for the loop
        if aborted:
            # Aborted while queued, nothing fired; its end is normally recorded already by
            # _end_queued — recorded here if that failed (a job must never stay 'queued').
            self._end_queued(handle)
            return
        self._write(handle, status="running", started=time.time())

        def should_stop() -> bool:
            return handle.abort is not None or self.owner.stop_requested()

        def on_progress(progress: Progress) -> None:
            # Written with the iteration's operations, committed with them, then published.
            self._write(
                handle,
                run_id=progress.run_id,
                cells_done=progress.cells_done,
                cells_converged=progress.cells_converged,
                pulses=progress.pulses,
            )

        error: str | None
        try:
            outcome = program_cells(
                backend, LogRecorder(storage), job, should_stop=should_stop,
                on_progress=on_progress, planner=planner() if planner is not None else None,
            )
        except BaseException as exc:
            failure = f"{type(exc).__name__}: {exc}"
            if should_stop():  # e.g. a bench that broke its batch off for the emergency stop
                status = handle.abort or "aborted"
                error = f"{handle.abort_message or ESTOP_MESSAGE} (during a pulse batch: {failure})"
            else:
                status, error = "failed", failure
            self._write(handle, status=status, finished=time.time(), error=error)
            raise
        status, error = "completed", None
        if outcome.aborted:
            if handle.abort is not None:
                status, error = handle.abort, handle.abort_message
            else:
                status, error = "aborted", ESTOP_MESSAGE
            if self.owner.stop_requested():
                backend.safe_state()  # again, after the last pulse of this job
        self._write(
            handle,
            status=status,
            finished=time.time(),
            error=error,
            pulses=outcome.pulses_fired,
            cells_converged=0 if outcome.converged is None else int(outcome.converged.sum()),
        )

    def _write(self, handle: _Job, **fields: object) -> None:
        """Owner thread: store ``fields`` (committing the current transaction), publish (at the
        end, with the energy its pulses delivered, as the stored record gives it)."""
        self.storage.update_job(handle.id, **fields)
        self.storage.commit()
        if fields.get("status") in TERMINAL:
            fields = {**fields, "energy": self._energy(handle)}
        self._update(handle, fields)

    def _energy(self, handle: _Job) -> float | None:
        run_id = handle.row.get("run_id")
        if run_id is None or self.storage.failure is not None:
            return None
        try:
            return self.storage.run_energy(int(run_id))
        except Exception:  # the record says null; the log keeps every pulse's energy
            return None

    def _update(self, handle: _Job, fields: dict) -> None:
        """Any thread, after the database: keep the in-memory row in step with the stored one,
        publish it; a job that ended is no longer active (its record is the stored one)."""
        with self._lock:
            if handle.row["status"] in TERMINAL:
                # An end is final, here as in the database (its trigger skips the write too):
                # nothing after it is applied or published.
                return
            handle.row.update(fields)
            if self.storage.failure is not None:
                self._unstored[handle.id] = dict(handle.row)
            record = job_record(handle.row, handle.abort is not None)
            subscribers = list(handle.subscribers)
            if record.status in TERMINAL:
                self._active.pop(handle.id, None)
        for subscriber in subscribers:
            try:
                self._loop.call_soon_threadsafe(subscriber.push, record)
            except RuntimeError:  # the event loop is closed (the service is stopping)
                pass

    # --- progress stream ---------------------------------------------------------------------

    async def subscribe(self, job_id: int) -> tuple[JobRecord, Subscriber | None] | None:
        """The job's record now, and a subscriber to what follows (None for a job that
        ended). None if there is no such job."""
        with self._lock:
            handle = self._active.get(job_id)
            if handle is not None:
                subscriber = Subscriber()
                handle.subscribers.append(subscriber)
                return job_record(handle.row, handle.abort is not None), subscriber
        record = await self.get(job_id)
        return None if record is None else (record, None)

    async def wait(self, job_id: int) -> JobRecord | None:
        """The job's record once it has ended (None if there is no such job)."""
        subscription = await self.subscribe(job_id)
        if subscription is None:
            return None
        record, subscriber = subscription
        if subscriber is None:
            return record
        try:
            while record.status not in TERMINAL:
                nxt = await subscriber.next(1.0)
                if nxt is None:  # nothing published for a while: ask (it may have ended)
                    nxt = await self.get(job_id)
                    if nxt is None:
                        return None
                record = nxt
            return record
        finally:
            self.unsubscribe(job_id, subscriber)

    def unsubscribe(self, job_id: int, subscriber: Subscriber) -> None:
        with self._lock:
            handle = self._active.get(job_id)
            if handle is not None and subscriber in handle.subscribers:
                handle.subscribers.remove(subscriber)

"""The single owner of the backend: one worker thread, a FIFO queue of jobs.

Every hardware operation runs as a job on this one thread, so operations of concurrent requests
never interleave, and a job that spans many operations (a whole ``/program`` run) holds the
backend until it ends. Requests queue instead of failing. A job keeps running if the client that
asked for it goes away — a half-run programming loop would leave cells in an unknown state and
the log would miss what was fired.

After every job, whether it succeeded or failed, the owner commits the storage durably
(fsync), so everything a request recorded is on disk before the request is answered.

A bench may be unreachable when the service starts (or drop later): the backend's description
(geometry, limits, identities) is then unknown, the service still starts, and every request
that needs the backend asks for the description again (answering 503 while it stays
unreachable).

An emergency stop (:meth:`BackendOwner.emergency_stop`) bypasses the queue: it puts the backend
into its safe state from another thread at once, every operation still queued is cancelled
(:class:`EmergencyStopped`, nothing of it is fired) and the running one is told to stop
(:meth:`BackendOwner.stop_requested`, which the programming loop asks before every pulse).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from drivers.base import Backend, BackendError, BackendInfo, BackendUnavailable
from service.store import LogUnavailable, Storage

T = TypeVar("T")


class EmergencyStopped(RuntimeError):
    """An operation queued before an emergency stop, cancelled before it began: nothing fired."""


SAFE_STATE_WAIT_S = 120.0
"""s an operation waits at most for a running emergency stop's safe state (a bench that does not
answer makes that fail within its own timeouts and retries, long before)."""


class BackendOwner:
    """Runs jobs ``job(backend, storage)`` one at a time on a dedicated thread.

    The backend is opened, used and closed on that thread, and so is the storage's write
    connection: instrument sessions with thread affinity are safe.
    """

    def __init__(self, open_backend: Callable[[], Backend], open_storage: Callable[[], Storage]):
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backend-owner")
        # The emergency stop's own thread: never waits behind other work in a shared pool.
        self._estop_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="estop")
        self._closing = False
        self._safe = threading.Event()  # clear while an emergency stop makes the backend safe
        self._safe.set()
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._info: BackendInfo | None = None
        self._stops = 0  # emergency stops so far
        self._job_stops = 0  # ... when the running job was queued
        self.unavailable: str | None = None
        """Why the backend could not be described, while it cannot."""
        self.backend, self.storage = self._executor.submit(
            self._open, open_backend, open_storage
        ).result()

    def _open(
        self, open_backend: Callable[[], Backend], open_storage: Callable[[], Storage]
    ) -> tuple[Backend, Storage]:
        backend = open_backend()
        try:
            storage = open_storage()
        except BaseException:
            backend.close()
            raise
        self.backend, self.storage = backend, storage
        try:
            self._describe()
        except BackendUnavailable:
            pass  # start anyway; requests retry and answer 503 meanwhile
        return backend, storage

    # --- the description ---------------------------------------------------------------------

    @property
    def info(self) -> BackendInfo | None:
        """The backend's description, None while it has never been reachable."""
        return self._info

    async def describe(self) -> BackendInfo:
        """The description, asking the backend (through the queue) if it is not known yet.

        Raises :class:`BackendUnavailable` while the backend cannot be reached.
        """
        if self._info is not None and self.unavailable is None:
            return self._info
        return await self.run(lambda backend, storage: self._describe())

    def _describe(self) -> BackendInfo:
        """On the owner thread: describe once, and tell the storage what kind it records; again
        after the bench failed (a reconnect: the probe that says it is back)."""
        if self._info is None or self.unavailable is not None:
            try:
                info = self.backend.describe()
            except BackendUnavailable as exc:
                self.unavailable = str(exc) or type(exc).__name__
                raise
            self.storage.backend_kind = info.kind
            self._info, self.unavailable = info, None
        return self._info

    # --- jobs ------------------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Jobs waiting or running."""
        return self._pending

    async def run(self, job: Callable[[Backend, Storage], T]) -> T:
        """Queue ``job`` and wait for its result (its exceptions propagate)."""
        with self._pending_lock:
            self._pending += 1
        future = self._executor.submit(self._guarded, job, self._stops)
        # shield: a cancelled request must not cancel a queued job's bookkeeping
        return await asyncio.shield(asyncio.wrap_future(future))

    @property
    def stops(self) -> int:
        """Emergency stops so far (a counter: compare two readings to see if one came)."""
        return self._stops

    @property
    def closing(self) -> bool:
        """The service is shutting down: the running operation stops before its next pulse."""
        return self._closing

    def stop_requested(self) -> bool:
        """During a job, on the owner thread: has an emergency stop come since it was queued?"""
        return self._closing or self._stops != self._job_stops

    async def emergency_stop(self) -> None:
        """Safe state now, bypassing the queue and the owner thread (the backend's
        ``emergency_stop`` runs on a separate thread, concurrently with a running operation);
        cancels the queued operations and tells the running one to stop before its next pulse.
        Raises the backend's error if it could not confirm its safe state."""
        self._safe.clear()  # the next operation starts once the backend is safe, not during
        self._stops += 1  # first: nothing queued before this moment fires from now on
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._estop_executor, self.backend.emergency_stop)
        finally:
            self._safe.set()

    def _guarded(self, job: Callable[[Backend, Storage], T], stops: int) -> T:
        try:
            # Not while an emergency stop is still making the backend safe (a route or a pulse
            # of this operation could land between its safe-state commands).
            self._safe.wait(timeout=SAFE_STATE_WAIT_S)
            if self._closing:
                raise BackendUnavailable("the service is shutting down; this operation was "
                                         "not started, nothing was fired")
            self._job_stops = stops
            if self._stops != stops:
                raise EmergencyStopped(
                    "cancelled by an emergency stop before it began; nothing was fired"
                )
            self._describe()  # no operation on a backend that was never described
            # Nothing runs unrecorded: a log that cannot take records refuses the operation
            # before it touches the backend (503, nothing fired).
            self.storage.ensure_writable("nothing fired")
            result = job(self.backend, self.storage)
            self.unavailable = None
            self.storage.commit_durable()
            if self.storage.failure is not None:  # it broke during this operation
                raise LogUnavailable(
                    "log unavailable: the operation ran, and what it recorded is kept in the "
                    "side journal until the database takes writes again: "
                    f"{self.storage.failure}"
                )
            return result
        except BackendError as exc:
            if isinstance(exc, BackendUnavailable):  # /health and memprog_backend_up say so
                self.unavailable = str(exc) or type(exc).__name__
            # The contract says the backend is already safe; make sure, then report the
            # original error (a bench that is unreachable cannot confirm it, and says so).
            try:
                self.backend.safe_state()
            except BackendError:
                pass
            raise
        finally:
            try:
                # Before any answer, success or failure: what was recorded is on disk.
                self.storage.commit_durable()
            finally:
                with self._pending_lock:
                    self._pending -= 1

    async def recover_log(self) -> bool:
        """Through the queue: if the log is failed, try to bring it back (replaying the side
        journal). True when it is healthy."""
        if self.storage.check() is None:
            return True

        def recover() -> bool:
            try:
                return self.storage.recover()
            finally:
                with self._pending_lock:
                    self._pending -= 1

        with self._pending_lock:
            self._pending += 1
        return await asyncio.wrap_future(self._executor.submit(recover))

    def shutdown(self) -> None:
        """Stop the running operation before its next pulse, refuse the queued ones (503,
        nothing fired), then release the backend (safe state) and the database."""
        self._closing = True
        try:
            self._executor.submit(self._close).result()
        finally:
            self._executor.shutdown(wait=True)
            self._estop_executor.shutdown(wait=True)

    def _close(self) -> None:
        try:
            self.backend.close()
        finally:
            self.storage.close()

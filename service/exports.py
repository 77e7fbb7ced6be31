"""Exports (``GET /export``) on their own threads, a bounded number at a time, from snapshots.

A whole-log export reads the entire database and, for HDF5, writes a file as large: seconds to
minutes of work, and a client may take as long again to download it. Run on AnyIO's shared
worker threads, fifty of them took every thread the rest of the service needed (the emergency
stop answered after 50 s); reading through one SQLite cursor while a client stalled kept the
WAL from being checkpointed (84 MB in 50 s, never truncated).

Invariants (one :class:`ExportPool` per application, made and shut down by :func:`lifespan`):

- An export's database and file work runs on the pool's ``exports.workers`` threads, never on
  AnyIO's shared ones; the endpoint itself is ``async``.
- At most ``exports.max_in_progress`` exports are in progress, each from its request to the
  last byte sent (or the response's end, however it ends). One more is refused at once — 429
  with Retry-After, naming the limit — and never queues.
- An export is a snapshot of the log at its start and never holds the database while a client
  reads: CSV reads pages of ``exports.page_rows`` operations (each its own short read) up to the
  last operation id at the start; HDF5 is written from a copy made by one short read
  (:meth:`service.store.Storage.snapshot`). Both name that id in ``X-Memprog-Last-Operation-Id``.
- A send that takes no data for ``exports.send_timeout_s`` s ends the response: the connection is
  closed without the response's end (the client sees a truncated transfer, never a complete-
  looking one) and the export's slot is freed.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, MutableMapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from service import export_hdf5
from service.config import ExportSettings
from service.store import OPERATION_COLUMNS, Snapshot, Storage

log = logging.getLogger("memprog.exports")

RETRY_AFTER_S = 5
"""s a refused export is told to wait (Retry-After)."""

FILE_CHUNK = 1 << 20
"""bytes of an HDF5 file read (on the pool) and sent at a time."""

LAST_ID_HEADER = "X-Memprog-Last-Operation-Id"
"""Response header: the id of the last operation in the export's snapshot."""


class ExportsBusy(Exception):
    """``max_in_progress`` exports are in progress: this one is refused (429)."""

    def __init__(self, limit: int):
        super().__init__(
            f"{limit} exports in progress, the most allowed (exports.max_in_progress = {limit}, "
            f"MEMPROG_EXPORTS__MAX_IN_PROGRESS); retry in {RETRY_AFTER_S} s"
        )


class ExportsClosed(Exception):
    """The service is shutting down (or its exports never started): no export (503)."""


class _SendStalled(Exception):
    pass


class Slot:
    """One export in progress; :meth:`release` (once, whoever calls it first) frees it."""

    def __init__(self, pool: ExportPool):
        self._pool = pool
        self._held = True

    def release(self) -> None:
        with self._pool._lock:
            if self._held:
                self._held = False
                self._pool._in_progress -= 1


class ExportPool:
    """The exports' threads and their admission (see the module docstring)."""

    def __init__(self, settings: ExportSettings):
        self.settings = settings
        self._executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="memprog-export")
        self._lock = threading.Lock()
        self._in_progress = 0
        self._closed = False

    @property
    def in_progress(self) -> int:
        return self._in_progress

    def acquire(self) -> Slot:
        """A slot for one export, at once; raises :class:`ExportsBusy` at the limit."""
        with self._lock:
            if self._closed:
                raise ExportsClosed("the service is shutting down: no new export")
            if self._in_progress >= self.settings.max_in_progress:
                raise ExportsBusy(self.settings.max_in_progress)
            self._in_progress += 1
        return Slot(self)

    async def run(self, fn: Callable[..., Any], *args: Any,
                  abandoned: Callable[[Any], None] | None = None) -> Any:
        """``fn(*args)`` on the pool. If the caller is cancelled meanwhile, the call still ends
        on its thread, and ``abandoned`` gets its result (to free what it made)."""
        try:
            future = self._executor.submit(fn, *args)
        except RuntimeError as exc:  # shut down
            raise ExportsClosed("the service is shutting down: export ended") from exc
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            if abandoned is not None:
                future.add_done_callback(lambda f: _abandon(f, abandoned))
            raise

    def shutdown(self) -> None:
        """No new export; queued work is dropped. A call running on a thread ends by itself
        (a page read, or one HDF5 file: the process's exit waits for it)."""
        with self._lock:
            self._closed = True
        self._executor.shutdown(wait=False, cancel_futures=True)

    # --- the two formats ----------------------------------------------------------------------

    async def csv(self, storage: Storage, slot: Slot, run_id: int | None,
                  station: str | None = None) -> ExportResponse:
        """Every operation (or a run's; of ``station`` if given) up to the last one now, in
        execution order."""
        upto = await self.run(storage.last_operation_id)
        return ExportResponse(
            self._csv_chunks(storage, run_id, upto, station),
            slot=slot,
            send_timeout=self.settings.send_timeout_s,
            media_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="memprog-operations.csv"',
                     LAST_ID_HEADER: str(upto)},
        )

    async def _csv_chunks(self, storage: Storage, run_id: int | None,
                          upto: int, station: str | None) -> AsyncIterator[bytes]:
        yield (",".join(OPERATION_COLUMNS) + "\n").encode()
        after = 0
        while True:
            text, last = await self.run(_csv_page, storage, after, upto, run_id,
                                        self.settings.page_rows, station)
            if last is None:
                return
            after = last
            yield text

    async def hdf5(self, storage: Storage, slot: Slot, *, rows: int, cols: int, backend: str,
                   run_id: int | None, station: str) -> ExportResponse:
        """The log (or a run) as an HDF5 file (:mod:`service.export_hdf5`), written on the pool
        from a snapshot, then sent from the pool."""
        fd, size, upto = await self.run(
            _write_hdf5, storage, self.settings.temp_dir, rows, cols, backend, run_id, station,
            abandoned=lambda made: os.close(made[0]),
        )
        name = "memprog-operations.h5" if run_id is None else f"memprog-run-{run_id}.h5"
        return ExportResponse(
            self._file_chunks(fd, size),
            slot=slot,
            send_timeout=self.settings.send_timeout_s,
            media_type=export_hdf5.MEDIA_TYPE,
            headers={"Content-Disposition": f'attachment; filename="{name}"',
                     "Content-Length": str(size), LAST_ID_HEADER: str(upto)},
            cleanup=lambda: os.close(fd),
        )

    async def _file_chunks(self, fd: int, size: int) -> AsyncIterator[bytes]:
        offset = 0
        while offset < size:
            chunk = await self.run(os.pread, fd, min(FILE_CHUNK, size - offset), offset)
            if not chunk:
                raise OSError(f"export file ended at {offset} of {size} bytes")
            offset += len(chunk)
            yield chunk


class ExportResponse(StreamingResponse):
    """A streamed export that frees its slot (and runs ``cleanup``) however it ends, and ends
    when the client takes no data for ``send_timeout`` s."""

    def __init__(self, content: AsyncIterator[bytes], *, slot: Slot, send_timeout: float,
                 cleanup: Callable[[], None] | None = None, **kwargs: Any):
        super().__init__(content, **kwargs)
        self.slot = slot
        self.send_timeout = send_timeout
        self.cleanup = cleanup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sent = 0

        async def timed_send(message: MutableMapping[str, Any]) -> None:
            nonlocal sent
            try:
                # uvicorn's send waits while the connection's buffer is full: the client
                # has taken nothing meanwhile
                await asyncio.wait_for(send(message), self.send_timeout)
            except TimeoutError:
                raise _SendStalled from None
            sent += len(message.get("body", b""))

        try:
            await super().__call__(scope, receive, timed_send)
        except _SendStalled:
            # Returning without the response's end: the server closes the connection.
            client = scope.get("client")
            log.warning(
                "export to %s stalled: no data taken for %s s (exports.send_timeout_s), "
                "response ended after %d bytes", f"{client[0]}:{client[1]}" if client else "?",
                self.send_timeout, sent,
            )
        finally:
            self.slot.release()
            if self.cleanup is not None:
                self.cleanup()
            with contextlib.suppress(Exception):
                await self.body_iterator.aclose()  # type: ignore[attr-defined]


def _csv_page(storage: Storage, after: int, upto: int, run_id: int | None,
              rows: int, station: str | None) -> tuple[bytes, int | None]:
    """One page of the CSV export (on the pool): its text and its last id (None: no more)."""
    page = storage.operations_page(after, upto, run_id, rows, station)
    if not page:
        return b"", None
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(page)
    return buffer.getvalue().encode(), page[-1][0]


def _write_hdf5(storage: Storage, temp_dir: Path | None, rows: int, cols: int, backend: str,
                run_id: int | None, station: str) -> tuple[int, int, int]:
    """On the pool: the HDF5 file of a snapshot of the log, open for reading — its descriptor,
    its size in bytes — and the snapshot's last operation id. The files are removed before
    it returns (the descriptor keeps the HDF5 file's data until it is closed)."""
    work = tempfile.mkdtemp(prefix="memprog-export-", dir=temp_dir)  # 0700: the copy is private
    try:
        copy = Path(work) / "snapshot.db"
        upto = storage.snapshot(copy)
        path = Path(work) / "export.h5"
        export_hdf5.write_hdf5(Snapshot(copy), path, rows=rows, cols=cols, backend=backend,
                               run_id=run_id, station=station)
        fd = os.open(path, os.O_RDONLY)
        return fd, os.fstat(fd).st_size, upto
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _abandon(future: Future, free: Callable[[Any], None]) -> None:
    if not future.cancelled() and future.exception() is None:
        with contextlib.suppress(Exception):
            free(future.result())


@asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    """The application's :class:`ExportPool` (``app.state.exports``), shut down with it."""
    pool = ExportPool(app.state.memprog.settings.exports)
    app.state.exports = pool
    try:
        yield
    finally:
        pool.shutdown()


def pool_of(app: Any) -> ExportPool:
    pool = getattr(app.state, "exports", None)
    if pool is None:
        raise ExportsClosed("exports are not running (the application's lifespan did not run)")
    return pool

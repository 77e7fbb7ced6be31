"""The operation log: every pulse and read, and the runs, jobs and device memory recorded with
them, in one database (:class:`Storage`, a thin facade made of the table classes of this
package, which share its one writer connection and its log state).

One writer — the backend owner's thread — records each pulse and each read (one row per cell).
The database runs in WAL mode, so readers (``/runs``, ``/export``) never block the writer.
Two kinds of commit:

* :meth:`Storage.commit` (``synchronous=NORMAL``): in the WAL, safe from a crash of the
  process; used after every iteration of a programming run, so a crash mid-run keeps what
  was fired;
* :meth:`Storage.commit_durable` (``synchronous=FULL``): fsyncs the WAL, which holds every
  earlier commit too, so nothing is lost even to a power cut. The backend owner calls it after
  every job, before the request is answered. One fsync per request instead of one per
  iteration: under disk contention an fsync costs milliseconds, more than a simulated pulse.

Invariants: one service per database — a :class:`Storage` holds the database's lock
(:mod:`service.store.dblock`) from before it creates or changes anything until
:meth:`Storage.close`; a second one is refused, naming the holder. A new database is created
0600. Opening brings the schema up to date (:mod:`service.store.schema`), replays the side
journal, then recovers from a crash (:mod:`service.store.recovery`), all before the first write.
"""

from __future__ import annotations

import threading
from pathlib import Path

from service.store import db, dblock
from service.store.base import LogUnavailable
from service.store.calibrations import CalibrationStore
from service.store.database import Database, open_database
from service.store.device_memory import DeviceMemory
from service.store.jobs import JobStore
from service.store.journal import DEFAULT_SIZE as JOURNAL_SIZE
from service.store.journal import SideJournal, journal_path
from service.store.layers import LayerStore
from service.store.operations import OperationLog
from service.store.reader import LogReader
from service.store.recovery import LogHealth
from service.store.runs import RunStore
from service.store.stations import StationStore


class Storage(LogHealth, OperationLog, RunStore, DeviceMemory, JobStore, CalibrationStore,
              StationStore, LayerStore, LogReader):
    """The operation log. Write methods belong to one thread (the backend owner's)."""

    def __init__(
        self,
        target: str | Path | Database,
        backend_kind: str | None = None,
        journal_size: int = JOURNAL_SIZE,
        *,
        station: str | None = None,
        state_dir: str | Path | None = None,
    ):
        self.db: Database = (open_database(target, station, state_dir)
                             if isinstance(target, str | Path) else target)
        self.station = self.db.station
        """This service's station: written on every row it makes, and the scope of its jobs'
        recovery, aborts and default reads."""
        self.path = self.db.anchor
        """The local path the database lock and the side journal sit beside."""
        self.backend_kind = backend_kind
        """simulated | hardware: recorded with every operation (set once the backend is known)."""
        self.failure: str | None = None
        """Why the log cannot take records (nothing new is fired meanwhile), None while it can."""
        self._lock = threading.RLock()  # the owner serialises writes; this guards misuse
        self._pending: list[tuple] = []  # write calls since the last commit (journaled if lost)
        self._unjournaled: list[tuple] = []  # records the journal had no room for
        self._replaying = False
        self._now: float | None = None  # a replayed record's original time
        self.db.create()
        # One service per database: locked before anything in it is created or changed, so a
        # second service is refused here, naming the holder, having changed nothing.
        self._dblock = dblock.hold(self.path)
        try:
            self._start(journal_size)
        except BaseException:
            self._dblock.release()
            raise

    def _start(self, journal_size: int) -> None:
        """Open the database (a new one 0600, whatever the umask) and bring it up to date;
        under the database lock."""
        self._conn = self.db.open_writer()
        self.db.migrate(self._conn)
        # What a failed log kept aside goes in first; then what a crash left half done.
        self._journal = SideJournal(journal_path(self.path), journal_size)
        if not self.recover():
            raise LogUnavailable(f"the operation log cannot take writes: {self.failure}")
        self.recover_from_crash()

    def close(self) -> None:
        try:
            self.commit_durable()
            with self._lock:
                if self.failure is not None:
                    self.recover()  # a last chance to move the side journal in
                self._conn.close()
                self._journal.close()
        finally:
            self._dblock.release()  # after the last write: another service may start now

    def commit(self) -> None:
        """Commit: survives a crash of the process (SQLite: in the WAL; PostgreSQL: on the server,
        flushed within a fraction of a second), not necessarily a power cut or a crash of the
        database server. A commit that fails (a full disk, a server gone) fails the log: what it
        held goes to the side journal."""
        with self._lock:
            if self.failure is not None:
                self._divert()
                return
            try:
                self.db.commit(self._conn)
            except db.Error as exc:
                self._broke(exc)
                return
            self._pending.clear()

    def commit_durable(self) -> None:
        """Commit and wait for the disk: everything recorded so far survives a power cut (and
        a crash of the database server). While the log is failed the side journal is already
        durable (each append is synced)."""
        with self._lock:
            if self.failure is not None:
                self._divert()
                return
            try:
                self.db.durable_commit(self._conn)
            except db.Error as exc:
                self._broke(exc)
                return
            self._pending.clear()

    def rollback(self) -> None:
        with self._lock:
            try:
                self._conn.rollback()
            except db.Error as exc:
                if not db.is_fault(exc):
                    raise
            self._pending.clear()

    def snapshot(self, dest: str | Path) -> int:
        """Copies the database to ``dest`` (a new SQLite file: SQLite's online backup, in one
        step: one short read, at disk speed, which writers do not wait for; from PostgreSQL, one
        repeatable-read transaction) and returns the id of the
        last operation in the copy (0: none). Read the copy with :class:`Snapshot`; it holds
        everything the database does (API key hashes too): keep it private, delete it after."""
        dst = self.db.copy_to(dest)
        try:
            return int(dst.execute("SELECT COALESCE(MAX(id), 0) FROM operations").fetchone()[0])
        finally:
            dst.close()

"""The operation log's health and recovery (:class:`LogHealth`, a part of
:class:`service.store.Storage`): whether it can take records (a full disk, a database file moved
away or made read-only fail it), the side journal that keeps what it could not take, the replay
of it as soon as the database takes writes again, and the recovery from a crash at start-up.

Invariants:

- a write is in the database or in the side journal, never in both and never in neither (the
  transaction that held a diverted write is rolled back);
- a replay is idempotent: each journal record is applied once, its uid kept in
  ``journal_applied`` in the same transaction as its writes;
- at start-up, after the replay: a pulse reserved but never settled is kept as uncertain
  (:data:`~service.store.base.CRASHED_PENDING`), and a run or job left running or queued is
  marked ``interrupted`` (never resumed), its pulse count being what the log holds.
"""

from __future__ import annotations

import time
from typing import Any

from service.store import db, dblock
from service.store.base import (
    CRASHED_PENDING,
    JOB_INTERRUPTED,
    LOST_PENDING,
    PENDING,
    LogParts,
    LogUnavailable,
    log,
)

_RECOVERY_FAILS: tuple[type[BaseException], ...] = (*db.Error, OSError, dblock.DatabaseInUse)
"""What a recovery attempt meets while the database is still away (or taken)."""


class LogHealth(LogParts):
    """Failure, side journal, recovery: mixed into :class:`~service.store.Storage`."""

    # provided by Storage
    _journal: Any
    _unjournaled: list
    db: Any

    @property
    def journal_records(self) -> int:
        """Records waiting in the side journal to be replayed into the database."""
        return self._journal.count + len(self._unjournaled)

    def check(self) -> str | None:
        """Any thread, cheap (a stat): why the log cannot take records now, None if it can.
        A database file that was moved, deleted or replaced under the service fails it."""
        if self.failure is None:
            problem = self._file_problem()
            if problem is not None:
                with self._lock:
                    if self.failure is None:
                        self.failure = problem
                        log.error("operation log failed: %s", problem)
        return self.failure

    def ensure_writable(self, consequence: str) -> None:
        """Raise :class:`LogUnavailable` ("log unavailable, <consequence>: why") unless the log
        can take records."""
        problem = self.check()
        if problem is not None:
            raise LogUnavailable(f"log unavailable, {consequence}: {problem}")

    def recover(self) -> bool:
        """Owner thread: once the database file is back in place and takes writes, replay the
        side journal into it and clear the failure. True if the log is healthy afterwards."""
        with self._lock:
            problem = self._file_problem()
            if problem is not None:
                self.failure = self.failure or problem
                return False
            try:
                reconnected = False
                if self.failure is not None and self.db.kind == "postgresql":
                    # a server that went away: a new connection
                    self._conn = self.db.reconnect(self._conn)
                    reconnected = True
                self._replay()
                if reconnected:
                    self._mark_lost_pending()
            except _RECOVERY_FAILS as exc:
                try:
                    self._conn.rollback()
                except db.Error:
                    pass
                self.failure = f"database write failed: {exc}"
                return False
            if self.failure is not None:
                log.warning("operation log recovered (was: %s)", self.failure)
            self.failure = None
            return True

    def _clock(self) -> float:
        """Now, or the original time of a write being replayed from the side journal."""
        return time.time() if self._now is None else self._now

    def _file_problem(self) -> str | None:
        return self.db.problem()

    def _broke(self, exc: BaseException) -> None:
        """Under the lock, after a failed write: the log is failed, the open transaction is
        rolled back and what it held goes to the side journal."""
        if self.failure is None:
            self.failure = f"database write failed: {exc}"
            log.error("operation log failed: %s", self.failure)
        try:
            self._conn.rollback()
        except db.Error:
            pass
        self._divert(rolled_back=True)

    def _divert(self, rolled_back: bool = False) -> None:
        """Under the lock, with the log failed: the writes since the last commit go to the side
        journal, and the transaction that held them is rolled back (never in both places)."""
        if not self._pending:
            return
        if not rolled_back:
            try:
                self._conn.rollback()
            except db.Error:
                pass
        pending, self._pending = self._pending, []
        for name, args, kwargs, at in pending:
            self._to_journal(name, args, kwargs, at)

    def _to_journal(self, name: str, args: tuple, kwargs: dict, at: float) -> None:
        try:
            self._journal.append(name, args, kwargs, at)
        except OSError as exc:
            # The journal itself failed (full): keep the record in memory, replayed with the
            # journal; it survives everything but a crash of the process.
            log.critical("side journal failed (%s): %s kept in memory only", exc, name)
            self._unjournaled.append((name, args, kwargs, at))

    def _replay(self) -> None:
        """Apply the side journal's records (each once: their uids are kept) in one
        transaction, then empty the journal. Also a probe: it writes even with nothing to
        replay."""
        conn = self._conn
        records = self._journal.records()
        held = [("", at, name, args, kwargs) for name, args, kwargs, at in self._unjournaled]
        self._replaying = True
        try:
            for uid, at, name, args, kwargs in [*records, *held]:
                if uid and conn.execute(
                    "SELECT 1 FROM journal_applied WHERE uid = ?", (uid,)
                ).fetchone():
                    continue
                self._now = at
                getattr(type(self), name)(self, *args, **kwargs)
                if uid:
                    conn.execute("INSERT INTO journal_applied (uid, applied) VALUES (?, ?)",
                                 (uid, time.time()))
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                # one probe row per station on a shared database (each writes its own)
                ("log_probe" if self.db.kind == "sqlite" else f"log_probe {self.station}",
                 time.time()),
            )
            conn.commit()
        finally:
            self._replaying = False
            self._now = None
        if records or held:
            log.warning("replayed %d side-journal records into the database",
                        len(records) + len(held))
        self._unjournaled.clear()
        self._journal.reset()

    def _mark_lost_pending(self) -> None:
        """After the server came back and the side journal was replayed: a pulse of this
        station still pending lost its settlement with the server (a crash of the server
        drops its last asynchronous commits); it is kept as uncertain."""
        self._conn.execute(
            "UPDATE operations SET note = ? WHERE kind = 'pulse' AND note = ? AND station = ?",
            (LOST_PENDING, PENDING, self.station),
        )
        self._conn.commit()

    def recover_from_crash(self) -> None:
        """At start, after the replay, committed: what a crash left half done is marked, never
        resumed (every operation it recorded is kept). This station's only: another station's
        running job is its own business."""
        me = self.station
        # Pulses reserved but never settled may have been fired.
        self._conn.execute(
            "UPDATE operations SET note = ? WHERE kind = 'pulse' AND note = ? AND station = ?",
            (CRASHED_PENDING, PENDING, me),
        )
        # A run still 'running' was cut short; its pulse count is what the log holds (pulses
        # are committed as they are fired, ahead of the iteration's verify read and progress).
        fired = ("(SELECT COUNT(*) FROM operations o WHERE o.run_id = {}.{} "
                 "AND o.kind = 'pulse')")
        self._conn.execute(
            "UPDATE runs SET status = 'interrupted', finished = ?, total_pulses = "
            f"{fired.format('runs', 'id')} WHERE status = 'running' AND station = ?",
            (time.time(), me),
        )
        # Likewise a job queued or running.
        self._conn.execute(
            "UPDATE jobs SET status = 'interrupted', finished = ?, error = ?, pulses = "
            f"COALESCE({fired.format('jobs', 'run_id')}, 0) "
            "WHERE status IN ('queued', 'running') AND station = ?",
            (time.time(), JOB_INTERRUPTED, me),
        )
        # A calibration cut short: its model, if written, was never activated.
        self._conn.execute(
            "UPDATE calibrations SET status = 'interrupted', finished = ?, error = ? "
            "WHERE status IN ('pulsing', 'fitting') AND station = ?",
            (time.time(), "the service stopped before the calibration ended", me),
        )
        self._conn.commit()

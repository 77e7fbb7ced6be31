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

import os
import time
from typing import Any

from service.store import db
from service.store.base import (
    CRASHED_PENDING,
    JOB_INTERRUPTED,
    PENDING,
    LogParts,
    LogUnavailable,
    log,
)


class LogHealth(LogParts):
    """Failure, side journal, recovery: mixed into :class:`~service.store.Storage`."""

    # provided by Storage
    _journal: Any
    _unjournaled: list
    _file_id: Any

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
                self._replay()
            except (db.Error, OSError) as exc:
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
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return f"the database file {self.path} is gone (moved or deleted while in use)"
        except OSError as exc:
            return f"the database file {self.path} cannot be checked: {exc}"
        if (st.st_dev, st.st_ino) != self._file_id:
            return f"the database file {self.path} was replaced while in use"
        return None

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
                "INSERT INTO meta (key, value) VALUES ('log_probe', ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (time.time(),),
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

    def recover_from_crash(self) -> None:
        """At start, after the replay, committed: what a crash left half done is marked, never
        resumed (every operation it recorded is kept)."""
        # Pulses reserved but never settled may have been fired.
        self._conn.execute(
            "UPDATE operations SET note = ? WHERE kind = 'pulse' AND note = ?",
            (CRASHED_PENDING, PENDING),
        )
        # A run still 'running' was cut short; its pulse count is what the log holds (pulses
        # are committed as they are fired, ahead of the iteration's verify read and progress).
        fired = ("(SELECT COUNT(*) FROM operations o WHERE o.run_id = {}.{} "
                 "AND o.kind = 'pulse')")
        self._conn.execute(
            "UPDATE runs SET status = 'interrupted', finished = ?, total_pulses = "
            f"{fired.format('runs', 'id')} WHERE status = 'running'",
            (time.time(),),
        )
        # Likewise a job queued or running.
        self._conn.execute(
            "UPDATE jobs SET status = 'interrupted', finished = ?, error = ?, pulses = "
            f"COALESCE({fired.format('jobs', 'run_id')}, 0) "
            "WHERE status IN ('queued', 'running')",
            (time.time(), JOB_INTERRUPTED),
        )
        # A calibration cut short: its model, if written, was never activated.
        self._conn.execute(
            "UPDATE calibrations SET status = 'interrupted', finished = ?, error = ? "
            "WHERE status IN ('pulsing', 'fitting')",
            (time.time(), "the service stopped before the calibration ended"),
        )
        self._conn.commit()

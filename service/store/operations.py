"""The ``operations`` table: every pulse and read, one row per cell, in execution order
(:class:`OperationLog`, a part of :class:`service.store.Storage`).

Invariants:

- a pulse is in the log before it is fired: :meth:`~OperationLog.reserve_pulses` writes it as
  :data:`~service.store.base.PENDING` and commits (the commit is the proof the log can take it),
  and :meth:`~OperationLog.settle_pulses` records what was fired: fired, uncertain, or removed;
- reserved ids are consecutive, so a settlement names them by range;
- the writes belong to the backend owner's thread and join its open transaction (the caller
  commits); those that must survive a failed database are :func:`~service.store.base.journaled`.
"""

from __future__ import annotations

import time
from itertools import repeat

import numpy as np

from drivers.base import ReadResult
from service.store import db
from service.store.base import PENDING, UNCERTAIN_FIRE, LogParts, LogUnavailable, journaled


class OperationLog(LogParts):
    """Record reads and pulses. Mixed into :class:`~service.store.Storage`, whose writer
    connection and log state it shares."""

    @journaled
    def record_read(self, result: ReadResult, run_id: int | None = None) -> None:
        n = len(result.rows)
        with self._lock:
            self._conn.executemany(
                "INSERT INTO operations (time, kind, row, col, voltage, width, conductance, "
                "current, compliance, run_id, backend) "
                "VALUES (?, 'read', ?, ?, ?, NULL, ?, ?, ?, ?, ?)",
                zip(
                    repeat(self._clock(), n),
                    result.rows.tolist(),
                    result.cols.tolist(),
                    repeat(float(result.v_read), n),
                    np.asarray(result.conductance, dtype=float).tolist(),
                    np.asarray(result.current, dtype=float).tolist(),
                    np.asarray(result.compliance, dtype=bool).astype(int).tolist(),
                    repeat(run_id, n),
                    repeat(self.backend_kind, n),
                    strict=True,
                ),
            )

    @journaled
    def record_pulse(
        self,
        rows: np.ndarray,
        cols: np.ndarray,
        voltage: np.ndarray,
        width: np.ndarray,
        run_id: int | None = None,
        note: str | None = None,
    ) -> None:
        """Record pulses that were fired (tools and tests; the service reserves its pulses
        before firing them: :meth:`reserve_pulses`)."""
        with self._lock:
            self._insert_pulses(None, rows, cols, voltage, width, run_id, note)

    def _insert_pulses(
        self,
        first_id: int | None,
        rows: np.ndarray,
        cols: np.ndarray,
        voltage: np.ndarray,
        width: np.ndarray,
        run_id: int | None,
        note: str | None,
    ) -> None:
        rows = np.asarray(rows)
        n = len(rows)
        ids = repeat(None, n) if first_id is None else range(first_id, first_id + n)
        self._conn.executemany(
            "INSERT INTO operations (id, time, kind, row, col, voltage, width, conductance, "
            "current, compliance, run_id, backend, note) "
            "VALUES (?, ?, 'pulse', ?, ?, ?, ?, NULL, NULL, NULL, ?, ?, ?)",
            zip(
                ids,
                repeat(self._clock(), n),
                rows.tolist(),
                np.asarray(cols).tolist(),
                np.broadcast_to(np.asarray(voltage, dtype=float), rows.shape).tolist(),
                np.broadcast_to(np.asarray(width, dtype=float), rows.shape).tolist(),
                repeat(run_id, n),
                repeat(self.backend_kind, n),
                repeat(note, n),
                strict=True,
            ),
        )

    def reserve_pulses(
        self,
        rows: np.ndarray,
        cols: np.ndarray,
        voltage: np.ndarray,
        width: np.ndarray,
        run_id: int | None = None,
    ) -> int:
        """Before firing: record the pulses as :data:`PENDING` and commit, so that the log has
        taken them before anything reaches a device. The id of the first (they are
        consecutive); :meth:`settle_pulses` records what was fired.

        Raises :class:`LogUnavailable` — nothing may be fired — when the log cannot take them
        (the commit is the proof that it can: a full disk fails it)."""
        with self._lock:
            self.ensure_writable("nothing fired")
            try:
                (last,) = self._conn.execute("SELECT COALESCE(MAX(id), 0) FROM operations"
                                             ).fetchone()
                self._now = time.time()
                self._insert_pulses(last + 1, rows, cols, voltage, width, run_id, PENDING)
                self._conn.commit()
            except db.Error as exc:
                if not db.is_fault(exc):  # a bug (a constraint), not the log failing
                    raise
                self._broke(exc)
                raise LogUnavailable(
                    f"log unavailable, nothing fired: {self.failure}"
                ) from exc
            finally:
                self._now = None
            self._pending.clear()
            return int(last) + 1

    @journaled
    def settle_pulses(self, first_id: int, n: int, fired: int, uncertain: bool = False) -> None:
        """After firing the pulses reserved from ``first_id``: the first ``fired`` were fired
        (their time is now), the next one perhaps (``uncertain``, kept with a note), the rest
        were not (removed)."""
        fired = max(0, min(int(fired), n))
        maybe = 1 if uncertain and fired < n else 0
        with self._lock:
            self._conn.execute(
                "UPDATE operations SET note = NULL, time = ? WHERE id >= ? AND id < ?",
                (self._clock(), first_id, first_id + fired),
            )
            if maybe:
                self._conn.execute(
                    "UPDATE operations SET note = ?, time = ? WHERE id = ?",
                    (UNCERTAIN_FIRE, self._clock(), first_id + fired),
                )
            self._conn.execute(
                "DELETE FROM operations WHERE id >= ? AND id < ?",
                (first_id + fired + maybe, first_id + n),
            )

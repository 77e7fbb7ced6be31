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
from collections.abc import Iterable
from itertools import repeat

import numpy as np

from drivers.base import ReadResult
from service.store import db
from service.store.base import PENDING, UNCERTAIN_FIRE, LogParts, LogUnavailable, journaled

PULSE_COLUMNS = "time, kind, row, col, voltage, width, run_id, backend, note, station"
PULSE_MARKS = "?, 'pulse', ?, ?, ?, ?, ?, ?, ?, ?"
"""A pulse row as it is inserted (:meth:`OperationLog._pulse_rows` gives the values)."""

ENERGY_CHUNK = 10_000
"""Pulses whose energy one statement sets (two parameters each: within SQLite's 32,766)."""


class OperationLog(LogParts):
    """Record reads and pulses. Mixed into :class:`~service.store.Storage`, whose writer
    connection and log state it shares."""

    @journaled
    def record_read(self, result: ReadResult, run_id: int | None = None) -> None:
        n = len(result.rows)
        with self._lock:
            self.db.write_many(
                self._conn,
                "INSERT INTO operations (time, kind, row, col, voltage, width, conductance, "
                "current, compliance, run_id, backend, station) "
                "VALUES (?, 'read', ?, ?, ?, NULL, ?, ?, ?, ?, ?, ?)",
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
                    repeat(self.station, n),
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
        columns, marks = PULSE_COLUMNS, PULSE_MARKS
        values = self._pulse_rows(rows, cols, voltage, width, run_id, note)
        if first_id is not None:  # ids given (SQLite: one writer; see reserve_pulses)
            columns, marks = f"id, {columns}", f"?, {marks}"
            values = ((i, *v) for i, v in enumerate(values, first_id))
        self._conn.executemany(f"INSERT INTO operations ({columns}) VALUES ({marks})", values)

    def _pulse_rows(self, rows: np.ndarray, cols: np.ndarray, voltage: np.ndarray,
                    width: np.ndarray, run_id: int | None, note: str | None
                    ) -> Iterable[tuple]:
        """The values of :data:`PULSE_COLUMNS` for each pulse (voltage and width broadcast)."""
        rows = np.asarray(rows)
        n = len(rows)
        return zip(
            repeat(self._clock(), n),
            rows.tolist(),
            np.asarray(cols).tolist(),
            np.broadcast_to(np.asarray(voltage, dtype=float), rows.shape).tolist(),
            np.broadcast_to(np.asarray(width, dtype=float), rows.shape).tolist(),
            repeat(run_id, n),
            repeat(self.backend_kind, n),
            repeat(note, n),
            repeat(self.station, n),
            strict=True,
        )

    def _insert_pending(self, rows: np.ndarray, cols: np.ndarray, voltage: np.ndarray,
                        width: np.ndarray, run_id: int | None) -> int:
        """A shared database (PostgreSQL): insert the pulses as pending, with the ids the
        server gives them, and commit synchronously (one message); the first (smallest) id."""
        return int(self.db.reserve(
            self._conn,
            f"INSERT INTO operations ({PULSE_COLUMNS}) VALUES ({PULSE_MARKS}) RETURNING id",
            self._pulse_rows(rows, cols, voltage, width, run_id, PENDING),
        ))

    def _set_energy(self, first_id: int, energy: np.ndarray) -> None:
        """The energies (J) of this station's pending pulses from ``first_id`` on, in id order
        (the k-th pending pulse gets ``energy[k]``; non-finite values stay NULL), by rank: ids
        of a shared database are not consecutive."""
        if self.db.kind == "sqlite":  # one writer: the reservation's ids are consecutive
            self._conn.executemany(
                "UPDATE operations SET energy = ? WHERE id = ?",
                ((e if np.isfinite(e) else None, first_id + k)
                 for k, e in enumerate(energy.tolist())))
            return
        step = ENERGY_CHUNK
        for start in range(0, energy.size, step):
            chunk = energy[start:start + step]
            values = ", ".join(["(?, ?)"] * chunk.size)
            self.db.write(
                self._conn,
                "UPDATE operations SET energy = v.e FROM "
                f"(SELECT column1 AS k, column2 AS e FROM (VALUES {values}) AS x) AS v, "
                "(SELECT id, ROW_NUMBER() OVER (ORDER BY id) AS k FROM operations "
                "WHERE station = ? AND note = ? AND id >= ? AND kind = 'pulse') AS r "
                "WHERE operations.id = r.id AND r.k = v.k",
                (*(x for k, e in enumerate(chunk.tolist(), start + 1)
                   for x in (k, e if np.isfinite(e) else None)),
                 self.station, PENDING, first_id),
            )

    @journaled
    def estimate_energy(self, rows: np.ndarray, cols: np.ndarray, energy: np.ndarray,
                        run_id: int | None = None) -> None:
        """The estimated energy (J) of this station's last pulse at each cell (of ``run_id``),
        where none is recorded (:func:`programming.loop.estimated_energy`)."""
        energy = np.asarray(energy, dtype=float)
        rows, cols = np.asarray(rows).ravel(), np.asarray(cols).ravel()
        ok = np.isfinite(energy)
        in_run = "run_id = ?" if run_id is not None else "run_id IS NULL"
        for start in range(0, int(ok.sum()), ENERGY_CHUNK // 2):
            pick = np.flatnonzero(ok)[start:start + ENERGY_CHUNK // 2]
            values = ", ".join(["(?, ?, ?)"] * pick.size)
            params: list = [x for i in pick.tolist()
                            for x in (int(rows[i]), int(cols[i]), float(energy[i]))]
            self.db.write(
                self._conn,
                "UPDATE operations SET energy = v.e FROM "
                f"(SELECT column1 AS r, column2 AS c, column3 AS e FROM (VALUES {values}) AS x)"
                " AS v WHERE operations.id = (SELECT MAX(o.id) FROM operations o WHERE "
                f"o.station = ? AND o.kind = 'pulse' AND o.{in_run} AND o.row = v.r "
                "AND o.col = v.c) AND operations.energy IS NULL",
                (*params, self.station, *(() if run_id is None else (run_id,))),
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
                self._now = time.time()
                if self.db.kind == "sqlite":
                    # One writer per file: the next ids are free, and consecutive.
                    (last,) = self._conn.execute("SELECT COALESCE(MAX(id), 0) FROM operations"
                                                 ).fetchone()
                    first = int(last) + 1
                    self._insert_pulses(first, rows, cols, voltage, width, run_id, PENDING)
                    self._conn.commit()
                else:
                    # Stations share the id sequence: ours interleave with theirs. A
                    # settlement names this station's pending pulses from the first id on.
                    first = self._insert_pending(rows, cols, voltage, width, run_id)
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
            return int(first)

    @journaled
    def settle_pulses(self, first_id: int, n: int, fired: int, uncertain: bool = False,
                      energy: np.ndarray | None = None) -> None:
        """After firing the ``n`` pulses reserved from ``first_id``: the first ``fired`` were
        fired (their time is now), the next one perhaps (``uncertain``, kept with a note), the
        rest were not (removed). The reservation is this station's pending pulses from
        ``first_id`` on, in id order (on a shared database, other stations' ids interleave)."""
        fired = max(0, min(int(fired), n))
        maybe = 1 if uncertain and fired < n else 0
        if energy is not None and fired == n == 1:
            # The common one-pulse batch: its note, time and energy in one statement.
            e = float(np.asarray(energy, dtype=float).ravel()[0])
            with self._lock:
                self.db.write(
                    self._conn,
                    "UPDATE operations SET note = NULL, time = ?, energy = ? WHERE station = ? "
                    "AND note = ? AND id >= ? AND kind = 'pulse'",
                    (self._clock(), e if np.isfinite(e) else None, self.station, PENDING,
                     first_id),
                )
            return
        if energy is not None and fired:
            self._set_energy(first_id, np.asarray(energy, dtype=float)[:fired])
        reserved = ("SELECT id FROM operations WHERE station = ? AND note = ? AND id >= ? "
                    "AND kind = 'pulse' ORDER BY id LIMIT ?")
        with self._lock:
            if fired == n:  # the common case: the whole reservation
                self.db.write(
                    self._conn,
                    "UPDATE operations SET note = NULL, time = ? WHERE station = ? AND note = ? "
                    "AND id >= ? AND kind = 'pulse'",
                    (self._clock(), self.station, PENDING, first_id),
                )
            elif fired:
                self.db.write(
                    self._conn,
                    f"UPDATE operations SET note = NULL, time = ? WHERE id IN ({reserved})",
                    (self._clock(), self.station, PENDING, first_id, fired),
                )
            if maybe:
                self.db.write(
                    self._conn,
                    f"UPDATE operations SET note = ?, time = ? WHERE id IN ({reserved})",
                    (UNCERTAIN_FIRE, self._clock(), self.station, PENDING, first_id, 1),
                )
            if fired + maybe < n:  # the rest was never fired
                self.db.write(
                    self._conn,
                    "DELETE FROM operations WHERE station = ? AND note = ? AND id >= ? "
                    "AND kind = 'pulse'",
                    (self.station, PENDING, first_id),
                )

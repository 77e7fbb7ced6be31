"""The ``device_memory`` table: what a strategy learned per device, across runs, under a key
naming what it is (e.g. ``predictor/<model>/<version>/<sha256>``): :class:`DeviceMemory`, a part
of :class:`service.store.Storage`.

Invariants: one value per (key, row, col), the newest; a NaN never overwrites a value (the old
one is kept); keys never mix (a value is read back only under the key it was saved with).
"""

from __future__ import annotations

from itertools import repeat

import numpy as np

from service.store.base import LogParts, journaled
from service.store.database import Database


class DeviceMemory(LogParts):
    """Read and save per-device values. Mixed into :class:`~service.store.Storage`: saving
    joins the owner's open transaction (journaled, like the run it belongs to)."""

    def device_memory(self, key: str, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """The values remembered under ``key`` for the cells (rows[i], cols[i]); NaN where none."""
        rows = np.asarray(rows, dtype=np.int64).ravel()
        cols = np.asarray(cols, dtype=np.int64).ravel()
        with self._lock:
            idle = not self._conn.in_transaction
            found = self._conn.execute(
                "SELECT row, col, value FROM device_memory WHERE station = ? AND key = ?",
                (self.station, key),
            ).fetchall()
            if idle and self._conn.in_transaction:
                # PostgreSQL opens a transaction for a read too: end it, so that the owner
                # holds none while the backend works (it had no writes to lose).
                self._conn.rollback()
        out = np.full(rows.size, np.nan)
        if not found or rows.size == 0:
            return out
        table = np.asarray(found, dtype=float)
        width = int(max(table[:, 1].max(), cols.max())) + 1
        known = table[:, 0].astype(np.int64) * width + table[:, 1].astype(np.int64)
        order = np.argsort(known)
        known, values = known[order], table[order, 2]
        wanted = rows * width + cols
        at = np.minimum(np.searchsorted(known, wanted), known.size - 1)
        hit = known[at] == wanted
        out[hit] = values[at[hit]]
        return out

    @journaled
    def save_device_memory(
        self, key: str, rows: np.ndarray, cols: np.ndarray, values: np.ndarray, run_id: int | None
    ) -> None:
        """Remember ``values`` under ``key`` for the cells (the finite ones; NaN keeps the old)."""
        values = np.asarray(values, dtype=float).ravel()
        keep = np.isfinite(values)
        now = self._clock()
        with self._lock:
            self.db.write_many(
                self._conn,
                "INSERT INTO device_memory (station, key, row, col, value, updated, run_id) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (station, key, row, col) DO UPDATE SET "
                "value = excluded.value, updated = excluded.updated, run_id = excluded.run_id",
                zip(
                    repeat(self.station),
                    repeat(key),
                    np.asarray(rows, dtype=np.int64).ravel()[keep].tolist(),
                    np.asarray(cols, dtype=np.int64).ravel()[keep].tolist(),
                    values[keep].tolist(),
                    repeat(now),
                    repeat(run_id),
                ),
            )


def forget_all(database: Database) -> int:
    """Delete every value ``database``'s station remembers, from a connection of its own (the
    memory benchmark's runs without memory); the number of values deleted."""
    conn = database.side_writer()
    try:
        with conn:
            return int(conn.execute("DELETE FROM device_memory WHERE station = ?",
                                    (database.station,)).rowcount)
    finally:
        conn.close()

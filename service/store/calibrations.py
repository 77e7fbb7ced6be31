"""The ``calibrations`` table: the stored side of predictor calibrations
(:class:`CalibrationStore`, a part of :class:`service.store.Storage`; the calibration manager,
:mod:`service.calibrations`, is the other side of the same concept).

Invariants: a calibration is created and updated from any thread through short connections of
its own (a :func:`~service.store.db.side_writer`), never inside the owner's transactions (its
pulses are recorded by its job, like any job's); one left ``pulsing`` or ``fitting`` by a crash
is marked ``interrupted`` at start (:mod:`service.store.recovery`) — its model, if it wrote one,
was never activated.
"""

from __future__ import annotations

import json
import time

from service.store import db
from service.store.base import LogParts
from service.store.schema import CALIBRATION_COLUMNS

UNFINISHED = ("pulsing", "fitting")


class CalibrationStore(LogParts):
    """Calibrations: create, update, read. Mixed into :class:`~service.store.Storage`."""

    def create_calibration(self, *, cells: int, pulses_per_cell: int, activate: str,
                           parent: str, submitted_by: str | None = None) -> int:
        """A new ``pulsing`` calibration, committed; :class:`LogUnavailable` if the log
        cannot take it (nothing is started)."""
        return self._insert_now(
            "INSERT INTO calibrations (created, status, cells, pulses_per_cell, activate, "
            "parent, submitted_by, station) VALUES (?, 'pulsing', ?, ?, ?, ?, ?, ?)",
            (time.time(), cells, pulses_per_cell, activate, parent, submitted_by,
             self.station),
            "the calibration was not started",
        )

    def update_calibration(self, calibration_id: int, **fields: object) -> None:
        """Set columns (``report`` as a dict: stored as JSON), committed. An ended calibration
        (not pulsing/fitting) never changes again."""
        unknown = set(fields) - set(CALIBRATION_COLUMNS[1:])
        if unknown:
            raise KeyError(f"not calibration columns: {sorted(unknown)}")
        if isinstance(fields.get("report"), dict):
            fields["report"] = json.dumps(fields["report"])
        names = list(fields)
        conn = self.db.side_writer()
        try:
            conn.execute(
                f"UPDATE calibrations SET {', '.join(f'{n} = ?' for n in names)} "
                f"WHERE id = ? AND status IN ({', '.join('?' * len(UNFINISHED))})",
                (*(fields[n] for n in names), calibration_id, *UNFINISHED),
            )
            conn.commit()
        finally:
            conn.close()

    def get_calibration(self, calibration_id: int) -> dict | None:
        with self.db.reading() as conn:
            row = conn.execute(
                f"SELECT {', '.join(CALIBRATION_COLUMNS)} FROM calibrations WHERE id = ?",
                (calibration_id,),
            ).fetchone()
        return None if row is None else _calibration_dict(row)

    def list_calibrations(self, limit: int = 100, offset: int = 0) -> list[dict]:
        """This station's calibrations, newest first."""
        with self.db.reading() as conn:
            rows = conn.execute(
                f"SELECT {', '.join(CALIBRATION_COLUMNS)} FROM calibrations WHERE station = ? "
                "ORDER BY id DESC LIMIT ? OFFSET ?",
                (self.station, limit, offset),
            ).fetchall()
        return [_calibration_dict(row) for row in rows]


def _calibration_dict(row: db.Row) -> dict:
    out = {name: row[name] for name in CALIBRATION_COLUMNS}
    out["report"] = json.loads(out["report"]) if out["report"] else None
    out["activated"] = None if out["activated"] is None else bool(out["activated"])
    return out

"""The ``layers`` table: weight matrices held in a station's array (:class:`LayerStore`, a part of
:class:`service.store.Storage`; the layers' service is :mod:`service.layers`).

Invariants: a layer's name is unique per station; its tile never overlaps another layer's of the
same station (checked and inserted in one transaction of a connection of its own, under the
manager's lock); a layer is stored before its programming job is queued, and names that job.
"""

from __future__ import annotations

import json
import time

from service.store.base import LogParts

LAYER_COLUMNS = ("name", "created", "rows", "outputs", "origin_row", "origin_col", "mapping",
                 "weights", "job_id", "station")


class LayerExists(ValueError):
    """A layer of that name exists, or the tile overlaps one; the message names it."""


class LayerStore(LogParts):
    """Create, read and link layers. Mixed into :class:`~service.store.Storage`."""

    def create_layer(self, name: str, rows: int, outputs: int, origin_row: int,
                     origin_col: int, mapping: dict, weights: list[list[float]]) -> None:
        """Store a new layer, committed; :class:`LayerExists` (nothing stored) if the name is
        taken or its tile (rows × 2·outputs cells from the origin) overlaps another's."""
        self.ensure_writable("nothing stored")
        conn = self.db.side_writer()
        try:
            existing = conn.execute(
                "SELECT name, rows, outputs, origin_row, origin_col FROM layers "
                "WHERE station = ?", (self.station,)).fetchall()
            for other, r, o, r0, c0 in existing:
                if other == name:
                    raise LayerExists(f"name: a layer named {name!r} exists on this station")
                if (origin_row < r0 + r and r0 < origin_row + rows
                        and origin_col < c0 + 2 * o and c0 < origin_col + 2 * outputs):
                    raise LayerExists(
                        f"origin: the tile rows {origin_row}-{origin_row + rows - 1}, cols "
                        f"{origin_col}-{origin_col + 2 * outputs - 1} overlaps layer {other!r} "
                        f"(rows {r0}-{r0 + r - 1}, cols {c0}-{c0 + 2 * o - 1})")
            conn.execute(
                "INSERT INTO layers (station, name, created, rows, outputs, origin_row, "
                "origin_col, mapping, weights) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (self.station, name, time.time(), rows, outputs, origin_row, origin_col,
                 json.dumps(mapping), json.dumps(weights)),
            )
            conn.commit()
        finally:
            conn.close()

    def set_layer_job(self, name: str, job_id: int) -> None:
        conn = self.db.side_writer()
        try:
            conn.execute("UPDATE layers SET job_id = ? WHERE station = ? AND name = ?",
                         (job_id, self.station, name))
            conn.commit()
        finally:
            conn.close()

    def delete_layer(self, name: str) -> None:
        """Forget a layer (its job could not be queued)."""
        conn = self.db.side_writer()
        try:
            conn.execute("DELETE FROM layers WHERE station = ? AND name = ?",
                         (self.station, name))
            conn.commit()
        finally:
            conn.close()

    def get_layer(self, name: str) -> dict | None:
        with self.db.reading() as conn:
            row = conn.execute(
                f"SELECT {', '.join(LAYER_COLUMNS)} FROM layers WHERE station = ? AND name = ?",
                (self.station, name)).fetchone()
        return None if row is None else _layer_dict(row)

    def list_layers(self) -> list[dict]:
        with self.db.reading() as conn:
            rows = conn.execute(
                f"SELECT {', '.join(LAYER_COLUMNS)} FROM layers WHERE station = ? ORDER BY name",
                (self.station,)).fetchall()
        return [_layer_dict(row) for row in rows]


def _layer_dict(row: tuple) -> dict:
    out = dict(zip(LAYER_COLUMNS, tuple(row), strict=True))
    out["mapping"] = json.loads(out["mapping"])
    out["weights"] = json.loads(out["weights"])
    return out

"""Pulse records from the service's operation log: its ``/export`` (CSV or JSON lines of
operations) or the SQLite database itself. Every pulse with a read of the same cell just before
and just after it becomes a :class:`predictor.dataset.Records` entry — how calibration
(:mod:`predictor.calibration`), the offline fine-tune and ``memprog train --export-data`` learn
from measured devices. No torch here.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from datetime import datetime
from pathlib import Path

import numpy as np

from predictor.dataset import Records

EXPORT_COLUMNS = ("id", "time", "kind", "row", "col", "voltage", "width", "conductance")


def load_export(source: str | Path | bytes, *, device_offset: int = 0,
                v_read: float | None = None, station: str | None = None) -> Records:
    """Pulse records from the service's operation log.

    ``source`` is a path to the SQLite database, to an export in CSV (a header naming at least
    ``kind,row,col,voltage,width,conductance``; ``id`` or ``time`` order it if present) or JSON
    lines (one object per operation, same keys), or the export's bytes. A pulse becomes a record
    when the same cell was read before it (after any earlier pulse) and read again right after
    it; pulses without both reads are skipped, and so are reads whose current compliance
    tripped (``compliance`` = 1: the reading was clipped). ``latent`` is NaN (unknown) and
    ``saturated`` False: measured devices say nothing about either. Device ids are
    ``row * 65536 + col + device_offset``. ``station``: of a database shared by stations (a
    ``station`` column), only that station's operations (another station's devices are others).
    """
    return records_from_operations(_read_operations(source, station), device_offset=device_offset,
                                   v_read=v_read)


def records_from_operations(ops: dict[str, np.ndarray], *, device_offset: int = 0,
                            v_read: float | None = None) -> Records:
    """Pulse records from operations in execution order (parallel arrays ``order``, ``kind``
    ("read"/"pulse"), ``row``, ``col``, ``voltage``, ``width``, ``conductance`` (NaN for a read
    not to trust), optionally ``time``): each pulse with the reads of its cell just before and
    just after it (see :func:`load_export`); with ``v_read`` (V), only pulses whose two reads
    were made at that voltage (a model's conductances are at its read voltage).
    ``info["time_span"]``: the first and last pulse time used (s), when the operations have
    times.
    """
    if not ops or ops["kind"].size == 0:
        return _empty_records()
    order = np.lexsort((ops["order"],))
    kind = ops["kind"][order]
    row = ops["row"][order]
    col = ops["col"][order]
    voltage = ops["voltage"][order]
    width = ops["width"][order]
    g = ops["conductance"][order]
    cell = row.astype(np.int64) * 65536 + col.astype(np.int64)
    # Stable sort by cell keeps the execution order within each cell.
    by_cell = np.argsort(cell, kind="stable")
    cell, kind, voltage, width, g = cell[by_cell], kind[by_cell], voltage[by_cell], \
        width[by_cell], g[by_cell]
    times = ops["time"][order][by_cell] if "time" in ops else None
    is_pulse = kind == "pulse"
    # A pulse at position i is usable when i-1 and i+1 are reads of the same cell.
    i = np.flatnonzero(is_pulse)
    i = i[(i > 0) & (i < kind.size - 1)]
    ok = (
        (kind[i - 1] == "read") & (kind[i + 1] == "read")
        & (cell[i - 1] == cell[i]) & (cell[i + 1] == cell[i])
        & np.isfinite(g[i - 1]) & np.isfinite(g[i + 1]) & (width[i] > 0)
    )
    if v_read is not None:
        ok &= (np.abs(voltage[i - 1] - v_read) < 1e-9) & (np.abs(voltage[i + 1] - v_read) < 1e-9)
    i = i[ok]
    info: dict = {"source": "export", "pulses_in_log": int(is_pulse.sum())}
    if times is not None and i.size and np.any(np.isfinite(times[i])):
        info["time_span"] = [float(np.nanmin(times[i])), float(np.nanmax(times[i]))]
    return Records(
        g_before=g[i - 1].astype(float),
        voltage=voltage[i].astype(float),
        width=width[i].astype(float),
        g_after=g[i + 1].astype(float),
        latent=np.full(i.size, np.nan),
        device=cell[i] + device_offset,
        saturated=np.zeros(i.size, dtype=bool),
        info=info,
    )


def _empty_records() -> Records:
    e = np.zeros(0)
    return Records(e, e, e, e, e, np.zeros(0, np.int64), np.zeros(0, bool),
                   info={"source": "export", "pulses_in_log": 0})


def _read_operations(source: str | Path | bytes, station: str | None = None
                     ) -> dict[str, np.ndarray]:
    if isinstance(source, (str, Path)) and Path(source).is_file():
        path = Path(source)
        with open(path, "rb") as fh:
            head = fh.read(16)
        if head.startswith(b"SQLite format 3"):
            return _from_sqlite(path, station)
        text = path.read_text()
    elif isinstance(source, bytes):
        text = source.decode()
    else:
        raise FileNotFoundError(f"export {source!s} does not exist")
    stripped = text.lstrip()
    if stripped.startswith("{") or stripped.startswith("["):
        if stripped.startswith("["):
            rows = json.loads(stripped)
        else:
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    else:
        rows = list(csv.DictReader(io.StringIO(text)))
    return _columns(rows)


def _from_sqlite(path: Path, station: str | None = None) -> dict[str, np.ndarray]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        names = {r[1] for r in conn.execute("PRAGMA table_info(operations)")}
        compliance = "compliance" if "compliance" in names else "NULL"
        when = "time" if "time" in names else "NULL"
        where, args = ("WHERE station = ? ", (station,)) if (
            station is not None and "station" in names) else ("", ())
        cur = conn.execute(
            "SELECT id, kind, row, col, voltage, width, conductance, "
            f"{compliance}, {when} FROM operations {where}ORDER BY id", args
        )
        rows = [
            {"id": r[0], "kind": r[1], "row": r[2], "col": r[3], "voltage": r[4], "width": r[5],
             "conductance": r[6], "compliance": r[7], "time": r[8]}
            for r in cur
        ]
    finally:
        conn.close()
    return _columns(rows)


def _num(value) -> float:
    if value is None or value == "":
        return np.nan
    return float(value)


def _columns(rows: list[dict]) -> dict[str, np.ndarray]:
    missing = {"kind", "row", "col", "voltage", "width", "conductance"} - set(rows[0]) if rows \
        else set()
    if missing:
        raise ValueError(f"export: missing columns {sorted(missing)}")
    order_key = "id" if rows and "id" in rows[0] else ("time" if rows and "time" in rows[0]
                                                       else None)
    conductance = np.array([_num(r["conductance"]) for r in rows], dtype=float)
    # A read whose current compliance tripped was clipped: not a measurement to learn from.
    tripped = np.array([str(r.get("compliance") or "").strip().lower() in ("1", "true")
                        for r in rows], dtype=bool)
    conductance[tripped] = np.nan
    out = {
        "order": np.array([_num(r[order_key]) if order_key else k for k, r in enumerate(rows)],
                          dtype=float),
        "kind": np.array([str(r["kind"]) for r in rows], dtype=object),
        "row": np.array([int(r["row"]) for r in rows], dtype=np.int64),
        "col": np.array([int(r["col"]) for r in rows], dtype=np.int64),
        "voltage": np.array([_num(r["voltage"]) for r in rows], dtype=float),
        "width": np.array([_num(r["width"]) for r in rows], dtype=float),
        "conductance": conductance,
    }
    if rows and "time" in rows[0]:
        out["time"] = np.array([_time(r["time"]) for r in rows], dtype=float)
    return out


def _time(value) -> float:
    """Unix time (s) of a number or an ISO 8601 string; NaN if it is neither."""
    try:
        return _num(value)
    except (TypeError, ValueError):
        try:
            return datetime.fromisoformat(str(value)).timestamp()
        except ValueError:
            return np.nan

"""The operation log as an HDF5 file: per-cell time series, like ArC TWO's data store.

Layout (G: group, D: dataset; SI units, each dataset saying its own)::

    [G] /                          attrs: format, format_version, memprog_version, created
     │                                    (Unix s), created_iso, backend, rows, cols
     │                                    (and ArC TWO's words, bits), run_id (-1: all
     │                                    runs), operations, last_operation_id (the log's
     │                                    last id when it was copied), sign_convention
     ├── [G] crosspoints
     │    │                       attrs: fields, units, descriptions (of every timeseries,
     │    │                       once: per-dataset copies cost ~40 % of a large export)
     │    └── [G] W{row:02d}B{col:02d}  attrs: row, col
     │         └── [D] timeseries     every pulse and read of the cell in execution order;
     │                                compound rows, chunked, maxshape (None,): appendable,
     │                                attr NROWS (rows in use)
     ├── [G] crossbar                 the whole array, last value per cell (NaN: never read)
     │    ├── [D] conductance         (rows, cols), S
     │    ├── [D] current             (rows, cols), A
     │    ├── [D] v_read              (rows, cols), V
     │    └── [D] read_at             (rows, cols), Unix time, s
     ├── [D] notes                    op_id, row, col, note: the operations that carry a note
     │                                (e.g. "uncertain: ..." for a pulse a failing bench may
     │                                have fired); most carry none
     └── [D] runs                     the programming runs (compound table)

Fields of ``timeseries`` (``/crosspoints``' ``fields``/``units`` attributes list them; NaN
marks a value that does not apply to the operation type, e.g. ``width`` of a read):

==============  =======  =================================================================
field           unit     meaning
==============  =======  =================================================================
op_id           —        the operation's id in the service's log (global execution order)
time            s        Unix time of the operation
op_type         —        HDF5 enum: read = 1, pulse = 2 (ArC TWO's OpType values)
voltage         V        pulse amplitude (NaN for reads); SET at negative voltage
width           s        pulse width (NaN for reads)
v_read          V        read voltage (NaN for pulses)
conductance     S        I / v_read (NaN for pulses)
current         A        read current (NaN for pulses)
compliance      —        1 if the read's current compliance tripped, 0 if not, -1 for pulses
run_id          —        the programming run it belongs to, -1 outside any run
backend         —        HDF5 enum: simulated = 0, hardware = 1
==============  =======  =================================================================

The file is written to a real (seekable) file — HDF5 cannot be produced as a byte stream — one
cell at a time from SQLite ordered by cell, so memory stays bounded by one cell's history. That
read is one query over the whole log (there is no index to page by cell): the service writes
from a copy (:class:`service.store.Snapshot`, :mod:`service.exports`), never holding the live
database for the minutes a large export takes. The
time series hold fixed-size fields only (the rare notes are in ``/notes``): a variable-length
field would give every cell's dataset its own global-heap collection (≥ 4 KiB each), which made
a 256×256 export hundreds of MB and minutes long.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from service.store import OPERATION_COLUMNS, Snapshot, Storage

FORMAT = "memprog-hdf5"
FORMAT_VERSION = 2
"""2: the timeseries' ``energy`` field (J)."""
MEDIA_TYPE = "application/x-hdf5"

OP_TYPE = h5py.enum_dtype({"read": 1, "pulse": 2}, basetype="u1")
BACKEND = h5py.enum_dtype({"simulated": 0, "hardware": 1}, basetype="u1")

# (name, dtype, unit, description)
TIMESERIES_FIELDS: tuple[tuple[str, object, str, str], ...] = (
    ("op_id", "<i8", "", "operation id in the service's log (global execution order)"),
    ("time", "<f8", "s", "Unix time"),
    ("op_type", OP_TYPE, "", "read = 1, pulse = 2"),
    ("voltage", "<f8", "V", "pulse amplitude; NaN for reads; SET at negative voltage"),
    ("width", "<f8", "s", "pulse width; NaN for reads"),
    ("v_read", "<f8", "V", "read voltage; NaN for pulses"),
    ("conductance", "<f8", "S", "I / v_read; NaN for pulses"),
    ("current", "<f8", "A", "read current; NaN for pulses"),
    ("compliance", "i1", "", "1 compliance tripped, 0 not, -1 for pulses"),
    ("run_id", "<i8", "", "programming run, -1 outside any run"),
    ("backend", BACKEND, "", "simulated = 0, hardware = 1"),
    ("energy", "<f8", "J", "energy the pulse delivered to the device (simulated: integrated; "
     "a bench: estimated from the reads around it); NaN for reads and unknown"),
)
TIMESERIES_DTYPE = np.dtype([(name, dtype) for name, dtype, _, _ in TIMESERIES_FIELDS])
_FIELD_NAMES = np.array([name for name, _, _, _ in TIMESERIES_FIELDS], dtype=object)
_FIELD_UNITS = np.array([unit for _, _, unit, _ in TIMESERIES_FIELDS], dtype=object)
NOTES_DTYPE = np.dtype([("op_id", "<i8"), ("row", "<i8"), ("col", "<i8"),
                        ("note", h5py.string_dtype())])

RUN_FIELDS: tuple[tuple[str, object, str], ...] = (
    ("id", "<i8", ""),
    ("started", "<f8", "s"),
    ("finished", "<f8", "s"),
    ("status", h5py.string_dtype(), ""),
    ("strategy", h5py.string_dtype(), ""),
    ("tolerance", "<f8", ""),
    ("max_pulses", "<i8", ""),
    ("verify", "u1", ""),
    ("v_read", "<f8", "V"),
    ("backend", BACKEND, ""),
    ("n_targets", "<i8", ""),
    ("n_converged", "<i8", ""),
    ("total_pulses", "<i8", ""),
    ("error", h5py.string_dtype(), ""),
)
RUNS_DTYPE = np.dtype([(name, dtype) for name, dtype, _ in RUN_FIELDS])

CROSSBAR_UNITS = {"conductance": "S", "current": "A", "v_read": "V", "read_at": "s"}

_BACKEND_CODE = {"simulated": 0, "hardware": 1}
_FLUSH_ROWS = 50_000
"""Rows of one cell buffered before they are appended to its dataset."""


def cell_group_name(row: int, col: int) -> str:
    """ArC TWO's crosspoint naming: W (word line = row), B (bit line = col)."""
    return f"W{row:02d}B{col:02d}"


def _memprog_version() -> str:
    try:
        return version("memprog")
    except PackageNotFoundError:
        return "unknown"


_COL = {name: i for i, name in enumerate(OPERATION_COLUMNS)}
_ID, _TIME, _KIND, _ROW, _COL_INDEX, _VOLTAGE, _WIDTH, _G, _CURRENT, _COMPLIANCE, _RUN = (
    _COL[name] for name in ("id", "time", "kind", "row", "col", "voltage", "width",
                            "conductance", "current", "compliance", "run_id")
)
_BACKEND = _COL["backend"]
_NOTE = _COL.get("note")
_ENERGY = _COL.get("energy")


def _timeseries_rows(ops: list[tuple]) -> np.ndarray:
    """Operation tuples (OPERATION_COLUMNS order) as timeseries records (vectorised)."""
    cols = list(zip(*ops, strict=True))

    def floats(i: int) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in cols[i]], dtype=float)

    is_read = np.array([k == "read" for k in cols[_KIND]])
    voltage = floats(_VOLTAGE)
    out = np.empty(len(ops), dtype=TIMESERIES_DTYPE)
    out["op_id"] = cols[_ID]
    out["time"] = cols[_TIME]
    out["op_type"] = np.where(is_read, 1, 2)
    out["voltage"] = np.where(is_read, np.nan, voltage)
    out["width"] = floats(_WIDTH)
    out["v_read"] = np.where(is_read, voltage, np.nan)
    out["conductance"] = floats(_G)
    out["current"] = floats(_CURRENT)
    out["compliance"] = [-1 if v is None else int(v) for v in cols[_COMPLIANCE]]
    out["run_id"] = [-1 if v is None else v for v in cols[_RUN]]
    out["backend"] = [_BACKEND_CODE.get(v, 0) for v in cols[_BACKEND]]
    out["energy"] = floats(_ENERGY) if _ENERGY is not None else np.nan
    return out


class _CellWriter:
    """Writes one cell's operations to its ``timeseries`` dataset (appending past the first
    batch of a cell with a very long history).

    Through h5py's low-level API with the type, creation properties and attribute space made
    once per file: a whole-array export creates tens of thousands of these, and the high-level
    calls cost about twice as much per cell.
    """

    def __init__(self, root: h5py.Group, ctx: _Lowlevel, row: int, col: int):
        gid = h5py.h5g.create(root.id, cell_group_name(row, col).encode())
        ctx.scalar_attr(gid, b"row", row)
        ctx.scalar_attr(gid, b"col", col)
        self.ctx = ctx
        self.gid = gid
        self.dataset: h5py.Dataset | None = None
        self.rows = 0

    def append(self, records: np.ndarray) -> None:
        if self.dataset is None:
            space = h5py.h5s.create_simple((len(records),), (h5py.h5s.UNLIMITED,))
            # One chunk holds the first batch exactly: no padding for the many short histories.
            did = h5py.h5d.create(self.gid, b"timeseries", self.ctx.tid, space,
                                  dcpl=self.ctx.chunked(len(records)))
            did.write(h5py.h5s.ALL, h5py.h5s.ALL, records)
            self.dataset = h5py.Dataset(did)
            self.rows = len(records)
            self.ctx.scalar_attr(did, b"NROWS", self.rows)
            return
        start = self.rows
        self.rows += len(records)
        self.dataset.resize((self.rows,))
        self.dataset[start:self.rows] = records
        self.dataset.attrs["NROWS"] = self.rows


class _Lowlevel:
    """What every cell's objects share: the record type and a scalar space for integer
    attributes."""

    def __init__(self) -> None:
        self.tid = h5py.h5t.py_create(TIMESERIES_DTYPE, logical=True)
        self.scalar = h5py.h5s.create(h5py.h5s.SCALAR)

        self._dcpl: dict[int, h5py.h5p.PropDCID] = {}

    def chunked(self, rows: int) -> h5py.h5p.PropDCID:
        """Creation properties with chunks of ``rows`` records (made once per size)."""
        rows = max(rows, 1)
        if rows not in self._dcpl:
            dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
            dcpl.set_chunk((rows,))
            self._dcpl[rows] = dcpl
        return self._dcpl[rows]

    def scalar_attr(self, obj, name: bytes, value: int) -> None:
        if h5py.h5a.exists(obj, name):
            h5py.h5a.delete(obj, name)
        aid = h5py.h5a.create(obj, name, h5py.h5t.STD_I64LE, self.scalar)
        aid.write(np.array(value, dtype="<i8"))


def write_hdf5(
    storage: Storage | Snapshot,
    path: str | Path,
    *,
    rows: int,
    cols: int,
    backend: str,
    run_id: int | None = None,
    station: str | None = None,
) -> int:
    """Writes the log (or one run's operations) to ``path``; returns the operations written.

    ``rows``/``cols`` are the array's geometry (the crossbar maps grow if the log holds a cell
    beyond it); ``backend`` (simulated | hardware) is what the service drives now. ``storage``
    is read in one long read: pass a :class:`~service.store.Snapshot` of a live log.
    ``station``: only that station's operations and runs (a shared database holds several
    stations' arrays; one file maps one array).
    """
    created = time.time()
    with h5py.File(path, "w", libver=("v110", "latest")) as h5:
        attrs = h5.attrs
        attrs["format"] = FORMAT
        attrs["format_version"] = FORMAT_VERSION
        attrs["memprog_version"] = _memprog_version()
        attrs["created"] = created
        attrs["created_units"] = "s"
        attrs["created_iso"] = datetime.fromtimestamp(created, UTC).isoformat()
        attrs["backend"] = backend
        attrs["run_id"] = -1 if run_id is None else run_id
        attrs["station"] = station if station is not None else ""
        attrs["last_operation_id"] = storage.last_operation_id()
        attrs["sign_convention"] = "SET (conductance rises) at negative voltage, RESET at positive"
        attrs["units"] = "SI: V, s, S, A; times are Unix time in s"
        crosspoints = h5.create_group("crosspoints")
        crosspoints.attrs["fields"] = _FIELD_NAMES
        crosspoints.attrs["units"] = _FIELD_UNITS
        crosspoints.attrs["descriptions"] = [text for _, _, _, text in TIMESERIES_FIELDS]

        last: dict[str, dict[tuple[int, int], float]] = {k: {} for k in CROSSBAR_UNITS}
        notes: list[tuple] = []
        n_ops = _write_cells(storage.iter_operations_by_cell(run_id, station=station),
                             crosspoints, last, notes)
        notes_table = h5.create_dataset("notes", data=np.array(notes, dtype=NOTES_DTYPE))
        notes_table.attrs["description"] = (
            "operations that carry a note, e.g. 'uncertain: ...' for a pulse a failing bench "
            "may have fired; op_id as in the cells' timeseries"
        )

        cells = last["conductance"].keys()
        rows = max([rows, *(r + 1 for r, _ in cells)])
        cols = max([cols, *(c + 1 for _, c in cells)])
        attrs["rows"] = attrs["words"] = rows
        attrs["cols"] = attrs["bits"] = cols
        attrs["operations"] = n_ops
        crossbar = h5.create_group("crossbar")
        crossbar.attrs["rows"] = crossbar.attrs["words"] = rows
        crossbar.attrs["cols"] = crossbar.attrs["bits"] = cols
        crossbar.attrs["description"] = (
            "last recorded read of each cell (NaN: never read); [row, col]"
        )
        for name, unit in CROSSBAR_UNITS.items():
            grid = np.full((rows, cols), np.nan)
            for (r, c), value in last[name].items():
                grid[r, c] = value
            dataset = crossbar.create_dataset(name, data=grid)
            dataset.attrs["units"] = unit

        runs = ([storage.get_run(run_id)] if run_id is not None
                else storage.list_all_runs(station))
        _write_runs(h5, [run for run in runs if run is not None])
    return n_ops


def _write_cells(
    ops: Iterable[tuple],
    crosspoints: h5py.Group,
    last: dict[str, dict[tuple[int, int], float]],
    notes: list[tuple],
) -> int:
    n_ops = 0
    cell: tuple[int, int] | None = None
    writer: _CellWriter | None = None
    pending: list[tuple] = []
    ctx = _Lowlevel()

    def flush() -> None:
        if pending and writer is not None:
            writer.append(_timeseries_rows(pending))
            pending.clear()

    for op in ops:
        here = (op[_ROW], op[_COL_INDEX])
        if here != cell:
            flush()
            cell = here
            writer = _CellWriter(crosspoints, ctx, *here)
        pending.append(op)
        n_ops += 1
        if _NOTE is not None and op[_NOTE]:
            notes.append((op[_ID], here[0], here[1], str(op[_NOTE])))
        if op[_KIND] == "read":
            last["conductance"][here] = op[_G]
            last["current"][here] = op[_CURRENT]
            last["v_read"][here] = op[_VOLTAGE]
            last["read_at"][here] = op[_TIME]
        if len(pending) >= _FLUSH_ROWS:
            flush()
    flush()
    return n_ops


def _write_runs(h5: h5py.File, runs: list[dict]) -> None:
    table = np.empty(len(runs), dtype=RUNS_DTYPE)
    for i, run in enumerate(runs):
        table[i] = tuple(_run_value(name, run.get(name)) for name, _, _ in RUN_FIELDS)
    dataset = h5.create_dataset("runs", data=table)
    dataset.attrs["fields"] = [name for name, _, _ in RUN_FIELDS]
    dataset.attrs["units"] = [unit for _, _, unit in RUN_FIELDS]
    dataset.attrs["description"] = (
        "programming runs; started/finished Unix time (NaN: unfinished); -1: not known"
    )


def _run_value(name: str, value: Any) -> object:
    if name == "backend":
        return _BACKEND_CODE.get(str(value), 0)
    if name in ("status", "strategy", "error"):
        return "" if value is None else str(value)
    if name in ("started", "finished", "tolerance", "v_read"):
        return float("nan") if value is None else float(value)
    if value is None:
        return -1
    return int(value)

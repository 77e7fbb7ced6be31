"""The operation log as an HDF5 file: per-cell time series, like ArC TWO's data store.

Layout (G: group, D: dataset; SI units, each dataset saying its own)::

    [G] /                          attrs: format, format_version, memprog_version, created
     │                                    (Unix s), created_iso, backend, rows, cols
     │                                    (and ArC TWO's words, bits), run_id (-1: all
     │                                    runs), operations, sign_convention
     ├── [G] crosspoints
     │    └── [G] W{row:02d}B{col:02d}  attrs: row, col
     │         └── [D] timeseries     every pulse and read of the cell in execution order;
     │                                compound rows, chunked, maxshape (None,): appendable,
     │                                attrs NROWS (rows in use), fields, units, descriptions
     ├── [G] crossbar                 the whole array, last value per cell (NaN: never read)
     │    ├── [D] conductance         (rows, cols), S
     │    ├── [D] current             (rows, cols), A
     │    ├── [D] v_read              (rows, cols), V
     │    └── [D] read_at             (rows, cols), Unix time, s
     └── [D] runs                     the programming runs (compound table)

Fields of ``timeseries`` (the ``fields``/``units`` attributes list them; NaN marks a value
that does not apply to the operation type, e.g. ``width`` of a read):

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
note            —        text, e.g. "uncertain: ..." for a pulse a failing bench may have
                         fired; empty if none
==============  =======  =================================================================

The file is written to a real (seekable) file — HDF5 cannot be produced as a byte stream — one
cell at a time from SQLite ordered by cell, so memory stays bounded by one cell's history.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import h5py
import numpy as np

from service.storage import OPERATION_COLUMNS, Storage

FORMAT = "memprog-hdf5"
FORMAT_VERSION = 1
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
    ("note", h5py.string_dtype(), "", "e.g. 'uncertain: ...'; empty if none"),
)
TIMESERIES_DTYPE = np.dtype([(name, dtype) for name, dtype, _, _ in TIMESERIES_FIELDS])

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


def _timeseries_rows(ops: list[tuple]) -> np.ndarray:
    """Operation tuples (OPERATION_COLUMNS order) as timeseries records."""
    out = np.empty(len(ops), dtype=TIMESERIES_DTYPE)
    nan = float("nan")
    for i, op in enumerate(ops):
        is_read = op[_KIND] == "read"
        width, g, current = op[_WIDTH], op[_G], op[_CURRENT]
        compliance, run_id = op[_COMPLIANCE], op[_RUN]
        note = op[_NOTE] if _NOTE is not None else None
        out[i] = (
            op[_ID],
            op[_TIME],
            1 if is_read else 2,
            nan if is_read else op[_VOLTAGE],
            nan if width is None else width,
            op[_VOLTAGE] if is_read else nan,
            nan if g is None else g,
            nan if current is None else current,
            -1 if compliance is None else int(compliance),
            -1 if run_id is None else run_id,
            _BACKEND_CODE.get(op[_BACKEND], 0),
            "" if note is None else str(note),
        )
    return out


class _CellWriter:
    """Appends one cell's operations to its ``timeseries`` dataset, in batches."""

    def __init__(self, root: h5py.Group, row: int, col: int):
        self.group = root.create_group(cell_group_name(row, col))
        self.group.attrs["row"] = row
        self.group.attrs["col"] = col
        self.dataset: h5py.Dataset | None = None
        self.rows = 0

    def append(self, records: np.ndarray) -> None:
        if self.dataset is None:
            chunk = int(np.clip(len(records), 64, 16384))
            self.dataset = self.group.create_dataset(
                "timeseries", shape=(0,), maxshape=(None,), chunks=(chunk,),
                dtype=TIMESERIES_DTYPE,
            )
            attrs = self.dataset.attrs
            attrs["fields"] = [name for name, _, _, _ in TIMESERIES_FIELDS]
            attrs["units"] = [unit for _, _, unit, _ in TIMESERIES_FIELDS]
            attrs["descriptions"] = [text for _, _, _, text in TIMESERIES_FIELDS]
            attrs["CLASS"] = "TABLE"
            attrs["TITLE"] = self.group.name.rsplit("/", 1)[-1]
        start = self.rows
        self.rows += len(records)
        self.dataset.resize((self.rows,))
        self.dataset[start:self.rows] = records
        self.dataset.attrs["NROWS"] = self.rows


def write_hdf5(
    storage: Storage,
    path: str | Path,
    *,
    rows: int,
    cols: int,
    backend: str,
    run_id: int | None = None,
) -> int:
    """Writes the log (or one run's operations) to ``path``; returns the operations written.

    ``rows``/``cols`` are the array's geometry (the crossbar maps grow if the log holds a cell
    beyond it); ``backend`` (simulated | hardware) is what the service drives now.
    """
    created = time.time()
    with h5py.File(path, "w") as h5:
        attrs = h5.attrs
        attrs["format"] = FORMAT
        attrs["format_version"] = FORMAT_VERSION
        attrs["memprog_version"] = _memprog_version()
        attrs["created"] = created
        attrs["created_units"] = "s"
        attrs["created_iso"] = datetime.fromtimestamp(created, UTC).isoformat()
        attrs["backend"] = backend
        attrs["run_id"] = -1 if run_id is None else run_id
        attrs["sign_convention"] = "SET (conductance rises) at negative voltage, RESET at positive"
        attrs["units"] = "SI: V, s, S, A; times are Unix time in s"
        crosspoints = h5.create_group("crosspoints")

        last: dict[str, dict[tuple[int, int], float]] = {k: {} for k in CROSSBAR_UNITS}
        n_ops = _write_cells(storage.iter_operations_by_cell(run_id), crosspoints, last)

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

        runs = [storage.get_run(run_id)] if run_id is not None else storage.list_all_runs()
        _write_runs(h5, [run for run in runs if run is not None])
    return n_ops


def _write_cells(
    ops: Iterable[tuple],
    crosspoints: h5py.Group,
    last: dict[str, dict[tuple[int, int], float]],
) -> int:
    n_ops = 0
    cell: tuple[int, int] | None = None
    writer: _CellWriter | None = None
    pending: list[tuple] = []

    def flush() -> None:
        if pending and writer is not None:
            writer.append(_timeseries_rows(pending))
            pending.clear()

    for op in ops:
        here = (op[_ROW], op[_COL_INDEX])
        if here != cell:
            flush()
            cell = here
            writer = _CellWriter(crosspoints, *here)
        pending.append(op)
        n_ops += 1
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


def _run_value(name: str, value: object) -> object:
    if name == "backend":
        return _BACKEND_CODE.get(str(value), 0)
    if name in ("status", "strategy", "error"):
        return "" if value is None else str(value)
    if name in ("started", "finished", "tolerance", "v_read"):
        return float("nan") if value is None else float(value)
    if value is None:
        return -1
    return int(value)

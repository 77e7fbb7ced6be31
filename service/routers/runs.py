"""GET /runs, /runs/{id}: programming history; GET /export: every operation as CSV or HDF5."""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Iterator
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query
from fastapi.responses import FileResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

from service import export_hdf5
from service.deps import StateDep, StorageDep
from service.models import CellResult, ErrorResponse, RunDetail, RunList, RunSummary
from service.storage import OPERATION_COLUMNS, Storage

router = APIRouter(tags=["history"])

SQL_INT_MAX = 2**63 - 1
"""Largest SQLite integer: a larger id or offset is a 422, not an overflow."""


@router.get("/runs", response_model=RunList, summary="Programming runs, newest first")
def list_runs(
    storage: StorageDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="Runs per page.")] = 100,
    offset: Annotated[int, Query(ge=0, le=SQL_INT_MAX, description="Runs to skip.")] = 0,
) -> RunList:
    return RunList(runs=[RunSummary(**run) for run in storage.list_runs(limit, offset)])


@router.get(
    "/runs/{run_id}",
    response_model=RunDetail,
    responses={404: {"model": ErrorResponse, "description": "No such run."}},
    summary="One run with its per-cell results",
)
def get_run(
    run_id: Annotated[int, Path(ge=1, le=SQL_INT_MAX, description="Run identifier.")],
    storage: StorageDep,
    trace: Annotated[
        bool, Query(description="Include every pulse of every cell with its result.")
    ] = False,
) -> RunDetail:
    run = storage.get_run(run_id)
    if run is None:
        raise HTTPException(status_code=404, detail=f"run {run_id} not found")
    traces = storage.run_traces(run_id) if trace else {}
    results = [
        CellResult(**cell, trace=traces.get((cell["row"], cell["col"]), []) if trace else None)
        for cell in run.pop("results")
    ]
    return RunDetail(**run, results=results)


@router.get(
    "/export",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/csv": {}, export_hdf5.MEDIA_TYPE: {}},
            "description": "csv: one line per operation; hdf5: per-cell time series.",
        }
    },
    summary="Every recorded operation",
)
def export(
    storage: StorageDep,
    state: StateDep,
    format: Annotated[
        Literal["csv", "hdf5"],
        Query(description="csv: one line per operation; hdf5: per-cell time series."),
    ] = "csv",
    run_id: Annotated[
        int | None, Query(ge=1, le=SQL_INT_MAX, description="Only the operations of this run.")
    ] = None,
) -> Response:
    """Every pulse and read.

    **csv**, in execution order. Columns: id, time (Unix, s), kind (read|pulse), row, col,
    voltage (V; the read voltage for reads), width (s; empty for reads), conductance (S; empty
    for pulses), current (A; empty for pulses), compliance (1 if tripped; empty for pulses),
    run_id (empty outside /program), backend (simulated|hardware), note (e.g. ``uncertain:
    ...`` for a pulse whose trigger went out on a bench that then failed to confirm it).

    **hdf5** (``memprog-operations.h5``), laid out like ArC TWO's data store: one group per
    cell, ``/crosspoints/W{row:02d}B{col:02d}``, holding an appendable ``timeseries`` of the
    cell's operations in execution order (op_id, time s, op_type read|pulse, voltage V, width
    s, v_read V, conductance S, current A, compliance, run_id, backend; NaN where a field does
    not apply); ``/crossbar/conductance`` (S), ``current`` (A), ``v_read`` (V) and ``read_at``
    (Unix s): each cell's last read, NaN if never read; ``/runs``: the runs. Every dataset
    carries its units as attributes; the root carries the backend kind and creation time."""
    if format == "hdf5":
        return _hdf5_file(storage, state, run_id)
    return StreamingResponse(
        _csv_lines(storage, run_id),
        media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="memprog-operations.csv"'},
    )


def _hdf5_file(storage: Storage, state, run_id: int | None) -> FileResponse:
    # HDF5 needs a seekable file: write a temporary one (in this worker thread), send it,
    # delete it once sent.
    info = state.owner.info
    rows, cols = (info.rows, info.cols) if info is not None else (0, 0)
    fd, path = tempfile.mkstemp(prefix="memprog-export-", suffix=".h5")
    os.close(fd)
    try:
        export_hdf5.write_hdf5(
            storage,
            path,
            rows=rows,
            cols=cols,
            backend=info.kind if info is not None else state.configured_kind,
            run_id=run_id,
        )
    except BaseException:
        os.unlink(path)
        raise
    name = "memprog-operations.h5" if run_id is None else f"memprog-run-{run_id}.h5"
    return FileResponse(
        path,
        media_type=export_hdf5.MEDIA_TYPE,
        filename=name,
        background=BackgroundTask(os.unlink, path),
    )


def _csv_lines(storage: Storage, run_id: int | None) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(OPERATION_COLUMNS)
    count = 0
    for row in storage.iter_operations(run_id):
        writer.writerow(row)
        count += 1
        if count % 2000 == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()

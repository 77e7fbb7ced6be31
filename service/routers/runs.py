"""GET /runs, /runs/{id}: programming history; GET /export: every operation as CSV."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import StreamingResponse

from service.deps import StorageDep
from service.models import CellResult, ErrorResponse, RunDetail, RunList, RunSummary
from service.storage import OPERATION_COLUMNS, Storage

router = APIRouter(tags=["history"])


@router.get("/runs", response_model=RunList, summary="Programming runs, newest first")
def list_runs(
    storage: StorageDep,
    limit: Annotated[int, Query(ge=1, le=1000, description="Runs per page.")] = 100,
    offset: Annotated[int, Query(ge=0, description="Runs to skip.")] = 0,
) -> RunList:
    return RunList(runs=[RunSummary(**run) for run in storage.list_runs(limit, offset)])


@router.get(
    "/runs/{run_id}",
    response_model=RunDetail,
    responses={404: {"model": ErrorResponse, "description": "No such run."}},
    summary="One run with its per-cell results",
)
def get_run(
    run_id: int,
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
    responses={200: {"content": {"text/csv": {}}, "description": "One line per operation."}},
    summary="Every recorded operation",
)
def export(
    storage: StorageDep,
    format: Annotated[Literal["csv"], Query(description="Export format.")] = "csv",
    run_id: Annotated[
        int | None, Query(description="Only the operations of this run.")
    ] = None,
) -> StreamingResponse:
    """Every pulse and read, in execution order. Columns: id, time (Unix, s), kind
    (read|pulse), row, col, voltage (V; the read voltage for reads), width (s; empty for
    reads), conductance (S; empty for pulses), current (A; empty for pulses), compliance
    (1 if tripped; empty for pulses), run_id (empty outside /program), backend
    (simulated|hardware)."""
    return StreamingResponse(
        _csv_lines(storage, run_id),
        media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="memprog-operations.csv"'},
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

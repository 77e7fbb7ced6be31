"""GET /runs, /runs/{id}: programming history; GET /export: every operation as CSV or HDF5.

The export runs on its own threads, a bounded number at a time, from a snapshot of the log
(:mod:`service.exports`)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import Response, StreamingResponse

from service import export_hdf5, exports
from service.deps import StateDep, StationFilter, StorageDep
from service.models import CellResult, ErrorResponse, RunDetail, RunList, RunSummary

# The export pool lives and dies with the application (this lifespan runs inside the app's).
router = APIRouter(tags=["history"], lifespan=exports.lifespan)

SQL_INT_MAX = 2**63 - 1
"""Largest SQLite integer: a larger id or offset is a 422, not an overflow."""


@router.get("/runs", response_model=RunList, summary="Programming runs, newest first")
def list_runs(
    storage: StorageDep,
    station: StationFilter,
    limit: Annotated[int, Query(ge=1, le=1000, description="Runs per page.")] = 100,
    offset: Annotated[int, Query(ge=0, le=SQL_INT_MAX, description="Runs to skip.")] = 0,
) -> RunList:
    return RunList(runs=[RunSummary(**run) for run in storage.list_runs(limit, offset, station)])


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
            "headers": {exports.LAST_ID_HEADER: {
                "description": "Id of the last operation in the export's snapshot.",
                "schema": {"type": "integer"}}},
        },
        429: {"model": ErrorResponse,
              "description": "exports.max_in_progress exports are in progress; see Retry-After."},
        503: {"model": ErrorResponse, "description": "The service is shutting down."},
    },
    summary="Every recorded operation",
)
async def export(
    request: Request,
    storage: StorageDep,
    state: StateDep,
    station: StationFilter,
    format: Annotated[
        Literal["csv", "hdf5"],
        Query(description="csv: one line per operation; hdf5: per-cell time series."),
    ] = "csv",
    run_id: Annotated[
        int | None, Query(ge=1, le=SQL_INT_MAX, description="Only the operations of this run.")
    ] = None,
) -> Response:
    """Every pulse and read, as the log stood when the request came: the id of the last
    operation then is in the ``X-Memprog-Last-Operation-Id`` header (and the HDF5 file's
    ``last_operation_id`` attribute); what is recorded meanwhile is not in it. This station's
    operations by default; ``station=NAME`` another's, ``station=*`` every station's (csv only:
    an HDF5 file maps one station's array).

    At most ``exports.max_in_progress`` exports at once (``MEMPROG_EXPORTS__MAX_IN_PROGRESS``,
    default 4), each until its last byte is sent: one more is answered 429 with Retry-After.
    A client that takes no data for ``exports.send_timeout_s`` (default 30 s) is cut off:
    the transfer ends incomplete.

    **csv**, in execution order. Columns: id, time (Unix, s), kind (read|pulse), row, col,
    voltage (V; the read voltage for reads), width (s; empty for reads), conductance (S; empty
    for pulses), current (A; empty for pulses), compliance (1 if tripped; empty for pulses),
    run_id (empty outside /program), backend (simulated|hardware), note (e.g. ``uncertain:
    ...`` for a pulse whose trigger went out on a bench that then failed to confirm it),
    station (the station whose bench did it).

    **hdf5** (``memprog-operations.h5``), laid out like ArC TWO's data store: one group per
    cell, ``/crosspoints/W{row:02d}B{col:02d}``, holding an appendable ``timeseries`` of the
    cell's operations in execution order (op_id, time s, op_type read|pulse, voltage V, width
    s, v_read V, conductance S, current A, compliance, run_id, backend; NaN where a field does
    not apply); ``/crossbar/conductance`` (S), ``current`` (A), ``v_read`` (V) and ``read_at``
    (Unix s): each cell's last read, NaN if never read; ``/runs``: the runs. Every dataset
    carries its units as attributes; the root carries the backend kind and creation time."""
    if format == "hdf5" and station is None:
        raise HTTPException(status_code=422, detail=[{
            "loc": ["query", "station"], "type": "value_error",
            "msg": "an HDF5 export maps one station's array: name a station, not '*' "
                   "(format=csv exports every station's operations)"}])
    try:
        pool = exports.pool_of(request.app)
        slot = pool.acquire()
    except exports.ExportsBusy as exc:
        raise HTTPException(status_code=429, detail=str(exc),
                            headers={"Retry-After": str(exports.RETRY_AFTER_S)}) from None
    except exports.ExportsClosed as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from None
    try:
        if format == "csv":
            return await pool.csv(storage, slot, run_id, station)
        info = state.owner.info
        return await pool.hdf5(
            storage,
            slot,
            rows=info.rows if info is not None else 0,
            cols=info.cols if info is not None else 0,
            backend=info.kind if info is not None else state.configured_kind,
            run_id=run_id,
            station=station or state.settings.station,  # never None: refused above
        )
    except exports.ExportsClosed as exc:
        slot.release()
        raise HTTPException(status_code=503, detail=str(exc)) from None
    except BaseException:
        slot.release()  # the response that would have freed it was never made
        raise

"""GET /array/map: the last known conductance of every cell, from the log — never from the array.

A dashboard (or anyone) may poll this as often as it likes: it reads SQLite only, never queues
a backend job and never fires a read. The answer is kept up to date incrementally: the service
remembers the id of the last operation it has folded into the map and, on each request, scans
only the reads recorded since (a primary-key range scan), so a poll costs the same on a log of
ten million operations as on an empty one.
"""

from __future__ import annotations

import asyncio
import math

import numpy as np
from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from service.deps import StateDep, StationFilter
from service.state import ServiceState
from service.store import Storage

router = APIRouter(tags=["array"])


class ConductanceMap(BaseModel):
    rows: int = Field(description="Number of rows (word lines) of the array.")
    cols: int = Field(description="Number of columns (bit lines) of the array.")
    backend: str = Field(
        description="simulated | hardware: the kind of backend the service drives."
    )
    conductance: list[list[float | None]] = Field(
        description="conductance[row][col]: the cell's conductance at its last recorded read "
        "(I / V_read), S; null for a cell never read."
    )
    read_at: list[list[float | None]] = Field(
        description="read_at[row][col]: when that read happened, Unix time, s; null if never."
    )
    cells_read: int = Field(description="Cells with a recorded read (non-null entries).")
    updated_at: float | None = Field(
        description="Time of the newest read in the map, Unix time, s; null when no cell was "
        "ever read."
    )
    station: str = Field(description="The station whose array this is (station=, default: "
                         "this service's).")
    last_operation_id: int = Field(
        description="Id of the newest operation (pulse or read) in the log when the map was "
        "made; a client can compare it between polls to see whether anything happened."
    )


class LastReads:
    """The last read of every cell, folded in incrementally from the operation log."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self._reset()

    def _reset(self) -> None:
        self.last_id = 0
        self.conductance = np.full((0, 0), np.nan)
        self.read_at = np.full((0, 0), np.nan)

    def _grow(self, rows: int, cols: int) -> None:
        old_rows, old_cols = self.conductance.shape
        if rows <= old_rows and cols <= old_cols:
            return
        shape = (max(rows, old_rows), max(cols, old_cols))
        for name in ("conductance", "read_at"):
            grown = np.full(shape, np.nan)
            old = getattr(self, name)
            grown[:old_rows, :old_cols] = old
            setattr(self, name, grown)

    def update(self, storage: Storage, station: str) -> int:
        """Fold in every read of ``station`` recorded since the last call; returns the newest
        operation id."""
        newest = storage.last_operation_id()
        if newest < self.last_id:  # the database was replaced (restored from a backup)
            self._reset()
        while True:
            batch = storage.reads_after(self.last_id, station=station)
            if not batch:
                break
            ops = np.array([(r, c, g, t) for _, r, c, g, t in batch], dtype=float)
            rows, cols = ops[:, 0].astype(np.intp), ops[:, 1].astype(np.intp)
            self._grow(int(rows.max()) + 1, int(cols.max()) + 1)
            # In execution order, later reads overwrite earlier ones (fancy assignment keeps
            # the last of repeated indices).
            self.conductance[rows, cols] = ops[:, 2]
            self.read_at[rows, cols] = ops[:, 3]
            self.last_id = int(batch[-1][0])
        return max(newest, self.last_id)

    def snapshot(self, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
        """The map cut or padded (with NaN) to the array's geometry."""
        self._grow(rows, cols)
        return self.conductance[:rows, :cols].copy(), self.read_at[:rows, :cols].copy()


def _nullable(matrix: np.ndarray) -> list[list[float | None]]:
    return [[None if math.isnan(v) else v for v in row] for row in matrix.tolist()]


def _last_reads(request: Request, station: str) -> LastReads:
    caches = getattr(request.app.state, "memprog_last_reads", None)
    if caches is None:
        caches = request.app.state.memprog_last_reads = {}
    if station not in caches:
        caches[station] = LastReads()
    return caches[station]


def geometry(state: ServiceState, fallback: tuple[int, int]) -> tuple[int, int]:
    """The array's rows and cols as the backend described them, without asking the backend;
    ``fallback`` (e.g. the extent of what was recorded) while a bench was never reachable."""
    info = state.owner.info
    if info is not None:
        return info.rows, info.cols
    return fallback


@router.get(
    "/array/map",
    response_model=ConductanceMap,
    summary="Last known conductance of every cell (from the log; touches no hardware)",
)
async def conductance_map(request: Request, state: StateDep, station: StationFilter
                          ) -> Response:
    """The conductance of every cell at its most recent recorded read (any read: /read,
    /pulse with read_after, the verify reads of /program and of jobs), in siemens, with
    the time of that read; null where a cell was never read. Made from the log only: the
    backend is not asked anything, so this is safe to poll while a job runs."""
    if station is None:
        raise HTTPException(status_code=422, detail=[{
            "loc": ["query", "station"], "type": "value_error",
            "msg": "a conductance map is of one station's array: name a station, not '*'"}])
    cache = _last_reads(request, station)
    async with cache.lock:
        newest = await run_in_threadpool(cache.update, state.storage, station)
        own = station == state.settings.station
        rows, cols = geometry(state, cache.conductance.shape) if own \
            else cache.conductance.shape
        conductance, read_at = cache.snapshot(rows, cols)
    known = ~np.isnan(read_at)
    body = ConductanceMap(
        rows=rows,
        cols=cols,
        backend=state.owner.info.kind if state.owner.info is not None else state.configured_kind,
        conductance=_nullable(conductance),
        read_at=_nullable(read_at),
        cells_read=int(np.count_nonzero(known)),
        updated_at=float(read_at[known].max()) if known.any() else None,
        last_operation_id=newest,
        station=station,
    )
    return Response(content=body.model_dump_json(), media_type="application/json")

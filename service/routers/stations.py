"""GET /stations: the lab's stations on this database, from their heartbeats
(:mod:`service.stations`)."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from service import stations
from service.deps import StateDep
from service.models import StationList, StationRecord

router = APIRouter(tags=["stations"])


@router.get("/stations", response_model=StationList,
            summary="Every station of the database, from their heartbeats")
async def list_stations(state: StateDep) -> StationList:
    """One record per station that ever wrote a heartbeat to this database: its backend, its
    instruments' identities, its last heartbeat, its running job and its health then.
    ``silent`` is true for a station whose last heartbeat is older than three of its intervals
    (stopped, crashed, or cut off from the database): its health is what it last said. With an
    SQLite database the only station is this one."""
    rows = await run_in_threadpool(state.storage.list_stations)
    return StationList(
        this_station=state.settings.station,
        stations=[StationRecord(**row) for row in stations.fleet(rows)],
    )

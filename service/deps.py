"""FastAPI dependencies: the service state, its settings and its storage, per request.

All ``async`` and free of I/O: a plain ``def`` dependency runs on AnyIO's shared worker
threads, which long requests (exports) could fill — and the emergency stop depends on these."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request

from service.config import Settings
from service.state import ServiceState
from service.store import Storage
from service.store.database import check_station


async def get_state(request: Request) -> ServiceState:
    return request.app.state.memprog


async def get_settings(state: Annotated[ServiceState, Depends(get_state)]) -> Settings:
    return state.settings


async def get_storage(state: Annotated[ServiceState, Depends(get_state)]) -> Storage:
    return state.storage


StateDep = Annotated[ServiceState, Depends(get_state)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StorageDep = Annotated[Storage, Depends(get_storage)]


ALL_STATIONS = "*"


async def get_station_filter(
    state: Annotated[ServiceState, Depends(get_state)],
    station: Annotated[
        str | None,
        Query(
            description="Whose records: a station's name (MEMPROG_STATION), '*' for every "
            "station of the database; default: this service's station.",
            max_length=63,
        ),
    ] = None,
) -> str | None:
    """The station a read of the log is about: a name, or None for every station."""
    if station is None:
        return state.settings.station
    if station == ALL_STATIONS:
        return None
    try:
        return check_station(station)
    except ValueError as exc:
        raise HTTPException(status_code=422, detail=[{
            "loc": ["query", "station"], "msg": str(exc), "type": "value_error"}]) from None


StationFilter = Annotated[str | None, Depends(get_station_filter)]
"""A station name, or None for every station (``station=*``)."""

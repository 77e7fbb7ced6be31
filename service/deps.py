"""FastAPI dependencies: the service state, its settings and its storage, per request.

All ``async`` and free of I/O: a plain ``def`` dependency runs on AnyIO's shared worker
threads, which long requests (exports) could fill — and the emergency stop depends on these."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.config import Settings
from service.state import ServiceState
from service.store import Storage


async def get_state(request: Request) -> ServiceState:
    return request.app.state.memprog


async def get_settings(state: Annotated[ServiceState, Depends(get_state)]) -> Settings:
    return state.settings


async def get_storage(state: Annotated[ServiceState, Depends(get_state)]) -> Storage:
    return state.storage


StateDep = Annotated[ServiceState, Depends(get_state)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
StorageDep = Annotated[Storage, Depends(get_storage)]

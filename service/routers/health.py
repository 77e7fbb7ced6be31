"""GET /health: is the service up, and what is it driving."""

from __future__ import annotations

from fastapi import APIRouter

from drivers.base import BackendUnavailable
from predictor import strategy as predictor_strategy
from service.deps import StateDep
from service.models import HealthResponse, LogHealth
from service.stations import memprog_version

router = APIRouter(tags=["health"])


@router.get("/health", response_model=HealthResponse, summary="Service status")
async def health(state: StateDep) -> HealthResponse:
    """Answers at once while the backend is known (its description is cached); for a bench
    that was unreachable so far, it asks again and says whether it is reachable now. Says
    whether the operation log takes records (a stat of the database file, no query)."""
    try:
        info = await state.owner.describe()
    except BackendUnavailable:
        info = None
    storage = state.owner.storage
    failure = storage.check()
    status = "unavailable" if info is None else "degraded" if failure is not None else "ok"
    return HealthResponse(
        status=status,
        log=LogHealth(state="ok" if failure is None else "failed", detail=failure,
                      journal_records=storage.journal_records),
        backend=info.kind if info is not None else state.configured_kind,
        instruments=dict(info.instruments) if info is not None else {},
        unavailable=state.owner.unavailable if info is None else None,
        predictor=predictor_strategy.status(),  # live: with the model's fit to the devices
        queued=state.owner.queued,
        version=memprog_version(),
        station=storage.station,
        database=storage.db.kind,
    )

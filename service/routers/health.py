"""GET /health: is the service up, and what is it driving."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from fastapi import APIRouter

from drivers.base import BackendUnavailable
from service.deps import StateDep
from service.models import HealthResponse

router = APIRouter(tags=["health"])


def _version() -> str:
    try:
        return version("memprog")
    except PackageNotFoundError:
        return "unknown"


@router.get("/health", response_model=HealthResponse, summary="Service status")
async def health(state: StateDep) -> HealthResponse:
    """Answers at once while the backend is known (its description is cached); for a bench
    that was unreachable so far, it asks again and says whether it is reachable now."""
    try:
        info = await state.owner.describe()
    except BackendUnavailable:
        info = None
    return HealthResponse(
        status="ok" if info is not None else "unavailable",
        backend=info.kind if info is not None else state.configured_kind,
        instruments=dict(info.instruments) if info is not None else {},
        unavailable=state.owner.unavailable if info is None else None,
        predictor=state.predictor,
        queued=state.owner.queued,
        version=_version(),
    )

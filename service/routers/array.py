"""GET /array: geometry, limits and what can be asked of the array."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter

from programming import default_strategy, strategy_summaries
from service.deps import StateDep
from service.models import ArrayResponse, LimitsModel
from service.responses import ERRORS

router = APIRouter(tags=["array"])


@router.get(
    "/array", response_model=ArrayResponse, responses=ERRORS, summary="Geometry and limits"
)
async def array(state: StateDep) -> ArrayResponse:
    info, limits = await state.backend()
    return ArrayResponse(
        kind=info.kind,
        rows=info.rows,
        cols=info.cols,
        limits=LimitsModel(**asdict(limits)),
        v_read=state.settings.programming.v_read,
        strategies=strategy_summaries(),
        default_strategy=default_strategy(),
        max_pulses_cap=state.settings.programming.max_pulses_cap,
        details=_jsonable(info.details),
    )


def _jsonable(value: object) -> object:
    """Backend details as JSON: nested dicts and lists kept, anything else as text."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)

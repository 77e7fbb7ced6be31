"""POST /emergency-stop: outputs off and safe state now, bypassing the queue and any lock."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from drivers.base import BackendError
from service.auth import AnyKey
from service.deps import StateDep
from service.models import EmergencyStopResponse

log = logging.getLogger("memprog.estop")

router = APIRouter(tags=["safety"])

_background: set[asyncio.Task] = set()


async def _end_queued(jobs, queued) -> None:
    try:
        await jobs.end_queued(queued)
    except Exception:
        log.exception("emergency stop: recording the end of the queued jobs failed")


@router.post(
    "/emergency-stop",
    response_model=EmergencyStopResponse,
    responses={
        502: {
            "model": EmergencyStopResponse,
            "description": "Jobs were aborted but the backend did not confirm its safe state.",
        }
    },
    summary="Emergency stop: outputs off now, abort every job",
)
async def emergency_stop(request: Request, state: StateDep, principal: AnyKey) -> JSONResponse:
    """Puts the backend into its safe state at once, from this request — not through the
    queue, not waiting for a running job or ``/program`` run. Every queued operation is
    cancelled (it answers 409 and fires nothing), every job queued or running ends
    ``aborted``, and a running programming loop fires no further pulse. Any valid API key may
    call it, whatever its scope. The service stays up: later requests run normally."""
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.emergency_stops.inc()
    log.warning("emergency stop requested by %s", principal.name or "(no authentication)")
    jobs = request.app.state.jobs
    aborted, queued = jobs.stop_all()  # in memory, at once: no job fires another pulse
    error = None
    try:
        await state.owner.emergency_stop()  # the safe state does not wait for anything
    except Exception as exc:  # BackendError, or anything: the answer must come
        error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, BackendError) else str(exc)
        log.error("emergency stop: safe state not confirmed: %s", error)
    if queued:
        # Recorded in the background: the answer never waits for the database (slow, locked,
        # full or gone); the owner records each one's end anyway when it reaches it.
        task = asyncio.create_task(_end_queued(jobs, queued))
        _background.add(task)
        task.add_done_callback(_background.discard)
    info = state.owner.info
    body = EmergencyStopResponse(
        stopped=error is None,
        aborted_jobs=aborted,
        backend=info.kind if info is not None else state.configured_kind,
        error=error,
    )
    return JSONResponse(status_code=200 if error is None else 502, content=body.model_dump())

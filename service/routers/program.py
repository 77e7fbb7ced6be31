"""POST /program: write-and-verify (or one-shot) programming of target conductances."""

from __future__ import annotations

import math

import numpy as np
from fastapi import APIRouter, HTTPException, Response

from drivers.base import Backend
from programming import (
    ProgramJob,
    ProgramOutcome,
    program_cells,
)
from service.deps import StateDep
from service.models import CellResult, ProgramRequest, ProgramResponse
from service.recording import LogRecorder
from service.request_helpers import program_job
from service.responses import ERRORS, json_response
from service.store import Storage

router = APIRouter(tags=["program"])


@router.post(
    "/program", response_model=ProgramResponse, responses=ERRORS, summary="Program conductances"
)
async def program(request: ProgramRequest, state: StateDep) -> Response:
    """Programs every target with the chosen strategy, all cells at once: one batched read,
    then per iteration one batched pulse and one batched verify read of the cells not yet
    within tolerance. The run holds the backend until it ends; other requests queue. An
    emergency stop ends the run before its next pulse (409; what it fired is recorded)."""
    job = await program_job(request, state, trace=request.trace)

    def run(backend: Backend, storage: Storage) -> ProgramOutcome:
        return program_cells(backend, LogRecorder(storage), job,
                             should_stop=state.owner.stop_requested)

    outcome = await state.owner.run(run)
    if outcome.aborted:
        cause = "the service's shutdown" if state.owner.closing else "an emergency stop"
        raise HTTPException(
            status_code=409,
            detail=f"run {outcome.run_id} was stopped by {cause} after "
            f"{outcome.pulses_fired} pulses; every operation it made is recorded "
            f"(GET /api/v1/runs/{outcome.run_id})",
        )
    return json_response(_response(job, outcome))


def _response(job: ProgramJob, out: ProgramOutcome) -> ProgramResponse:
    n = job.target.size
    final = [None] * n if out.final is None else out.final.tolist()
    converged = [None] * n if out.converged is None else out.converged.tolist()
    traces = [None] * n if out.traces is None else out.traces
    stopped = [None] * n if out.stopped is None else out.stopped
    energy = [None] * n if out.energy is None else [
        None if not math.isfinite(e) else e for e in out.energy.tolist()]
    results = [
        CellResult(
            row=r, col=c, start=s, target=t, final=f, pulses=p, converged=k, stopped=why,
            trace=tr, energy=e,
        )
        for r, c, s, t, f, p, k, why, tr, e in zip(
            job.rows.tolist(),
            job.cols.tolist(),
            out.start.tolist(),
            job.target.tolist(),
            final,
            out.pulses.tolist(),
            converged,
            stopped,
            traces,
            energy,
            strict=True,
        )
    ]
    known = [e for e in energy if e is not None]
    return ProgramResponse(
        run_id=out.run_id,
        strategy=job.strategy,
        converged=None if out.converged is None else int(np.count_nonzero(out.converged)),
        total_pulses=out.pulses_fired,
        reads=out.reads,
        energy=sum(known) if len(known) == n else None,
        results=results,
    )

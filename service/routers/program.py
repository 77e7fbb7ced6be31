"""POST /program: write-and-verify (or one-shot) programming of target conductances."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, HTTPException, Response

from drivers.base import Backend
from service.deps import StateDep
from service.models import CellResult, JobRequest, ProgramRequest, ProgramResponse
from service.programming import (
    ProgramJob,
    ProgramOutcome,
    default_strategy,
    get_strategy,
    program_cells,
    strategy_names,
)
from service.responses import ERRORS, json_response
from service.routers.reads import request_v_read
from service.state import ServiceState
from service.storage import Storage
from service.validation import RequestProblem, cell_arrays

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
        return program_cells(backend, storage, job, should_stop=state.owner.stop_requested)

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


async def program_job(
    request: ProgramRequest | JobRequest, state: ServiceState, *, trace: bool = False
) -> ProgramJob:
    """A programming request (``/program``'s or a job's) checked against the array and the
    limits: 422 naming the field, before anything is queued."""
    strategy = request.strategy or default_strategy()
    if strategy not in strategy_names():
        raise RequestProblem(
            ["strategy"],
            f"unknown strategy {strategy!r}; known: {', '.join(strategy_names())}",
            "unknown_strategy",
        )
    info, limits = await state.backend()
    cap = state.settings.programming.max_pulses_cap
    if request.max_pulses > cap:
        raise RequestProblem(
            ["max_pulses"], f"above max_pulses_cap = {cap}", "limit", limit=cap
        )
    rows, cols = cell_arrays([(t.row, t.col) for t in request.targets], info, "targets")
    target = np.array([t.conductance for t in request.targets], dtype=float)
    v_read = request_v_read(state, limits, request.v_read)
    # A target whose read current trips the compliance could never be verified.
    too_high = target * abs(v_read) >= limits.compliance
    if np.any(too_high):
        i = int(np.argmax(too_high))
        ceiling = limits.compliance / abs(v_read)
        raise RequestProblem(
            ["targets", i, "conductance"],
            f"{target[i]} S reads {target[i] * abs(v_read)} A at {v_read} V, at or above the "
            f"read compliance {limits.compliance} A (targets must stay below {ceiling} S)",
            "limit",
            limit=ceiling,
        )
    get_strategy(strategy).validate(target, limits, v_read)
    job = ProgramJob(
        rows=rows,
        cols=cols,
        target=target,
        tolerance=request.tolerance,
        max_pulses=request.max_pulses,
        strategy=strategy,
        verify=request.verify,
        trace=trace,
        v_read=v_read,
        limits=limits,
        read_current_floor=state.settings.programming.read_current_floor,
    )
    return job


def _response(job: ProgramJob, out: ProgramOutcome) -> ProgramResponse:
    n = job.target.size
    final = [None] * n if out.final is None else out.final.tolist()
    converged = [None] * n if out.converged is None else out.converged.tolist()
    traces = [None] * n if out.traces is None else out.traces
    stopped = [None] * n if out.stopped is None else out.stopped
    results = [
        CellResult(
            row=r, col=c, start=s, target=t, final=f, pulses=p, converged=k, stopped=why,
            trace=tr,
        )
        for r, c, s, t, f, p, k, why, tr in zip(
            job.rows.tolist(),
            job.cols.tolist(),
            out.start.tolist(),
            job.target.tolist(),
            final,
            out.pulses.tolist(),
            converged,
            stopped,
            traces,
            strict=True,
        )
    ]
    return ProgramResponse(
        run_id=out.run_id,
        strategy=job.strategy,
        converged=None if out.converged is None else int(np.count_nonzero(out.converged)),
        total_pulses=out.pulses_fired,
        reads=out.reads,
        results=results,
    )

"""What the routers share: a request checked against the array and the limits (422 naming the
field, before anything is queued), and a backend read as API readings. Routers import this
module, never each other."""

from __future__ import annotations

import numpy as np

from drivers.base import Limits, ReadResult
from programming import ProgramJob, default_strategy, get_strategy, strategy_names
from service.models import JobRequest, ProgramRequest, Reading, ReadResponse
from service.state import ServiceState
from service.validation import RequestProblem, cell_arrays, checked_v_read


def readings(result: ReadResult) -> list[Reading]:
    """API readings of a backend read (validated in pydantic-core, not per object in Python)."""
    n = len(result.rows)
    return ReadResponse.model_validate(
        {
            "readings": [
                {"row": r, "col": c, "conductance": g, "current": i, "v_read": v, "compliance": t}
                for r, c, g, i, v, t in zip(
                    result.rows.tolist(),
                    result.cols.tolist(),
                    np.asarray(result.conductance, float).tolist(),
                    np.asarray(result.current, float).tolist(),
                    [result.v_read] * n,
                    np.asarray(result.compliance, bool).tolist(),
                    strict=True,
                )
            ]
        }
    ).readings


def request_v_read(state: ServiceState, limits: Limits, v_read: float | None) -> float:
    """The request's read voltage, or the configured default, within the limits (422)."""
    chosen = state.settings.programming.v_read if v_read is None else v_read
    return checked_v_read(limits, chosen)


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

"""The API contract: request and response models of ``/api/v1``. SI units in every field.

Geometry-dependent checks (a cell inside the array, a voltage within the deployment's limits)
cannot live here — the models do not know the array — and happen in :mod:`service.validation`,
answering with the same 422 error shape as the checks below.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Index = Annotated[int, Field(ge=0, lt=2**31, description="Zero-based index.")]
Cell = Annotated[
    tuple[Index, Index],
    Field(description="A cell as [row, col], zero-based word-line and bit-line indices."),
]


class _Model(BaseModel):
    # Unknown fields are errors: a typo ("voltag") must not be silently ignored.
    model_config = ConfigDict(extra="forbid")


# ------------------------------------------------------------------------------------- errors


class ErrorItem(BaseModel):
    loc: list[str | int] = Field(
        description="Where the problem is: 'body' then the field path, e.g. ['body', 'voltage']."
    )
    msg: str = Field(description="What is wrong, naming the limit it broke if any.")
    type: str = Field(description="Machine-readable kind, e.g. 'limit', 'outside_array'.")
    ctx: dict[str, object] | None = Field(
        None, description="Details, e.g. {'limit': 0.9} (in the field's SI unit)."
    )


class ErrorResponse(BaseModel):
    detail: list[ErrorItem] | str = Field(description="The problems found, or a message.")


# ------------------------------------------------------------------------------------- health


class HealthResponse(BaseModel):
    status: Literal["ok", "unavailable"] = Field(
        description="'ok': the service answers and its backend is known; 'unavailable': the "
        "service answers but its bench could not be reached (at start, or its last operation "
        "failed to reach it and a new attempt failed too; requests answer 503)."
    )
    backend: Literal["simulated", "hardware"] = Field(
        description="The kind of backend being programmed."
    )
    instruments: dict[str, str] = Field(
        description="Instrument role → identity (*IDN? answer, or the simulator's description)."
    )
    unavailable: str | None = Field(
        None, description="Why the bench cannot be reached (status 'unavailable'), else null."
    )
    predictor: dict[str, object] | None = Field(
        None, description="The loaded pulse predictor model, or null when none is loaded."
    )
    queued: int = Field(description="Backend jobs waiting or running right now.")
    version: str = Field(description="memprog version.")


# -------------------------------------------------------------------------------------- array


class LimitsModel(BaseModel):
    v_set_max: float = Field(description="Largest |V| of a SET (negative) pulse, V.")
    v_reset_max: float = Field(description="Largest V of a RESET (positive) pulse, V.")
    width_min: float = Field(description="Shortest pulse width, s.")
    width_max: float = Field(description="Longest pulse width, s.")
    v_read_max: float = Field(description="Largest |V| of a read, V.")
    compliance: float = Field(description="Current compliance of reads, A.")


class ArrayResponse(BaseModel):
    kind: Literal["simulated", "hardware"] = Field(description="Simulated array or a real bench.")
    rows: int = Field(description="Number of rows (word lines).")
    cols: int = Field(description="Number of columns (bit lines).")
    limits: LimitsModel = Field(
        description="Effective safety limits: the stricter of the configured and the backend's."
    )
    v_read: float = Field(description="Default read voltage, V.")
    strategies: dict[str, str] = Field(description="Programming strategy name → summary.")
    default_strategy: str = Field(description="Strategy used when a /program names none.")
    max_pulses_cap: int = Field(description="Largest max_pulses a /program may ask for.")
    details: dict[str, object] = Field(description="Backend-specific description.")


# --------------------------------------------------------------------------------------- read


class ReadRequest(_Model):
    cells: list[Cell] | None = Field(
        None,
        min_length=1,
        description="Cells to read as [[row, col], ...]; or give all=true instead.",
        examples=[[[0, 0], [0, 1]]],
    )
    all: bool = Field(False, description="Read every cell of the array (instead of cells).")
    v_read: float | None = Field(
        None, description="Read voltage, V (default: the service's v_read, normally 0.2 V)."
    )

    @model_validator(mode="after")
    def _cells_or_all(self) -> ReadRequest:
        if self.all == (self.cells is not None):
            raise ValueError("give either cells or all=true (exactly one of them)")
        return self


class Reading(BaseModel):
    row: int = Field(description="Row index.")
    col: int = Field(description="Column index.")
    conductance: float = Field(description="I / v_read, S.")
    current: float = Field(description="Measured current, A.")
    v_read: float = Field(description="Read voltage, V.")
    compliance: bool = Field(
        description="True when the current compliance tripped (the reading is clipped)."
    )


class ReadResponse(BaseModel):
    readings: list[Reading] = Field(description="One reading per requested cell, in order.")


# -------------------------------------------------------------------------------------- pulse


class PulseRequest(_Model):
    cells: list[Cell] = Field(
        min_length=1, description="Cells to pulse as [[row, col], ...], each at most once."
    )
    voltage: float | list[float] = Field(
        description="Pulse amplitude, V: one value for all cells or one per cell. Negative "
        "SETs (conductance rises), positive RESETs.",
        examples=[-0.45],
    )
    width: float | list[float] = Field(
        description="Pulse width, s: one value for all cells or one per cell.", examples=[1e-7]
    )
    read_after: bool = Field(False, description="Read the pulsed cells afterwards.")
    v_read: float | None = Field(None, description="Read voltage of read_after, V.")


class AppliedPulse(BaseModel):
    row: int = Field(description="Row index.")
    col: int = Field(description="Column index.")
    voltage: float = Field(description="Applied amplitude, V.")
    width: float = Field(description="Applied width, s.")


class PulseResponse(BaseModel):
    pulses: list[AppliedPulse] = Field(description="The pulses fired, in request order.")
    readings: list[Reading] | None = Field(
        None, description="Readings after the pulses (read_after=true), else null."
    )


# ------------------------------------------------------------------------------------ program


class Target(_Model):
    row: Index = Field(description="Row index.")
    col: Index = Field(description="Column index.")
    conductance: float = Field(gt=0, description="Target conductance at v_read, S.")


class ProgrammingFields(_Model):
    """The fields POST /program and POST /jobs share."""

    targets: list[Target] = Field(
        min_length=1,
        description="Cells and their target conductances (S), each cell at most once; up to "
        "the whole array.",
    )
    tolerance: float = Field(
        0.02,
        gt=0,
        lt=1,
        description="Convergence band relative to the target: |G − target| ≤ tolerance·target.",
    )
    max_pulses: int = Field(20, ge=1, description="Pulse budget per cell.")
    strategy: str | None = Field(
        None,
        description="Programming strategy (see GET /array: strategies); null for the default.",
    )
    verify: bool = Field(
        True,
        description="true: write and verify until converged or out of budget. false: one shot — "
        "read each cell once, fire exactly one pulse per cell, no verify (final is null).",
    )
    v_read: float | None = Field(None, description="Read voltage, V (default: the service's).")


class ProgramRequest(ProgrammingFields):
    """Program cells to target conductances: write and verify, or one shot."""

    trace: bool = Field(False, description="Return every pulse of every cell with its result.")


class TraceStep(BaseModel):
    voltage: float = Field(description="Pulse amplitude, V.")
    width: float = Field(description="Pulse width, s.")
    conductance: float | None = Field(
        description="Conductance read after the pulse, S (null in one shot)."
    )


class CellResult(BaseModel):
    row: int = Field(description="Row index.")
    col: int = Field(description="Column index.")
    start: float = Field(description="Conductance before programming, S.")
    target: float = Field(description="Target conductance, S.")
    final: float | None = Field(description="Conductance after programming, S (null in one shot).")
    pulses: int = Field(description="Pulses fired at this cell.")
    converged: bool | None = Field(
        description="final within the tolerance of the target (null in one shot)."
    )
    trace: list[TraceStep] | None = Field(
        None, description="Every pulse and its result (trace=true), else null."
    )


class ProgramResponse(BaseModel):
    run_id: int = Field(description="Identifier of this run in GET /runs/{id} and the export.")
    strategy: str = Field(description="Strategy used.")
    converged: int | None = Field(description="Cells converged (null in one shot).")
    total_pulses: int = Field(description="Pulses fired in this run.")
    reads: int = Field(description="Cell reads made in this run (initial and verify reads).")
    results: list[CellResult] = Field(description="One result per target, in request order.")


# --------------------------------------------------------------------------------------- runs


class RunSummary(BaseModel):
    id: int = Field(description="Run identifier.")
    started: float = Field(description="Start, Unix time, s.")
    finished: float | None = Field(description="End, Unix time, s (null while running).")
    status: Literal["running", "done", "failed", "interrupted", "aborted"] = Field(
        description="running; done; failed (an error stopped it; its operations are kept); "
        "interrupted (the service stopped during the run); aborted (stopped between pulses "
        "by a job abort or an emergency stop; its results so far are kept)."
    )
    strategy: str = Field(description="Strategy used.")
    tolerance: float = Field(description="Relative tolerance.")
    max_pulses: int = Field(description="Pulse budget per cell.")
    verify: bool = Field(description="Write-and-verify (true) or one shot (false).")
    v_read: float = Field(description="Read voltage, V.")
    backend: Literal["simulated", "hardware"] = Field(description="Backend kind of the run.")
    n_targets: int = Field(description="Cells targeted.")
    n_converged: int | None = Field(description="Cells converged (null in one shot or unfinished).")
    total_pulses: int | None = Field(description="Pulses fired (null if unfinished).")
    error: str | None = Field(description="Why the run failed, else null.")


class RunList(BaseModel):
    runs: list[RunSummary] = Field(description="Runs, newest first.")


class RunDetail(RunSummary):
    results: list[CellResult] = Field(description="Per-cell results, in request order.")


# --------------------------------------------------------------------------------------- jobs
# Background programming jobs (service/jobs.py, routers/jobs.py).

JobStatus = Literal["queued", "running", "completed", "failed", "aborted", "interrupted"]
JOB_TERMINAL: frozenset[str] = frozenset({"completed", "failed", "aborted", "interrupted"})
"""The statuses a job ends in."""


class JobRequest(ProgrammingFields):
    """A background programming job: the same fields as ``POST /program`` (without ``trace``:
    a job's pulses are in ``GET /runs/{run_id}?trace=true`` and the export)."""


class JobRecord(BaseModel):
    """A job as stored, with its progress."""

    id: int = Field(description="Job identifier.")
    status: JobStatus = Field(
        description="queued (waiting for the backend); running; completed; failed (an error "
        "stopped it, see error); aborted (by POST /jobs/{id}/abort or an emergency stop, before "
        "its next pulse); interrupted (the service stopped or crashed while it was queued or "
        "running; it is never resumed)."
    )
    created_at: datetime = Field(description="Submission time, ISO 8601 UTC.")
    started_at: datetime | None = Field(description="Start, ISO 8601 UTC (null while queued).")
    finished_at: datetime | None = Field(description="End, ISO 8601 UTC (null until it ends).")
    total_cells: int = Field(description="Cells targeted.")
    cells_done: int = Field(
        description="Cells finished: converged or out of pulse budget (in one shot: every cell "
        "once its pulse is fired)."
    )
    cells_converged: int = Field(
        description="Cells within the tolerance of their target (0 in one shot: not verified)."
    )
    pulses: int = Field(description="Pulses fired so far (one per cell per iteration).")
    run_id: int | None = Field(
        description="The run that records its operations (GET /runs/{id}, /export?run_id=), "
        "null until it starts."
    )
    strategy: str = Field(description="Programming strategy.")
    tolerance: float = Field(description="Relative tolerance.")
    max_pulses: int = Field(description="Pulse budget per cell.")
    verify: bool = Field(description="Write-and-verify (true) or one shot (false).")
    v_read: float = Field(description="Read voltage, V.")
    submitted_by: str | None = Field(
        description="Name of the API key that submitted it (null without authentication)."
    )
    abort_requested: bool = Field(
        description="An abort was asked for and takes effect before the next pulse."
    )
    error: str | None = Field(description="Why it failed, was aborted or interrupted; else null.")


class JobList(BaseModel):
    jobs: list[JobRecord] = Field(description="Jobs, newest first.")


# ------------------------------------------------------------------------------------- safety


class EmergencyStopResponse(BaseModel):
    stopped: bool = Field(
        description="true: the backend confirmed its safe state (0 V, outputs off, matrix "
        "open); false: it could not (see error) — check the bench by hand."
    )
    aborted_jobs: list[int] = Field(
        description="Jobs that were queued or running: each ends 'aborted' (a running one "
        "before its next pulse)."
    )
    backend: Literal["simulated", "hardware"] = Field(description="The backend stopped.")
    error: str | None = Field(None, description="Why the safe state was not confirmed.")

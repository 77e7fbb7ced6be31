"""The API contract: request and response models of ``/api/v1``. SI units in every field.

Request fields are strict (:data:`Number`, :data:`Index`, ``StrictBool``): a JSON boolean or
string is never taken for a number of volts, seconds or siemens, a non-integral number or a
boolean never for an index or a count, a number or string never for a boolean — each is a 422
naming the field, before anything is queued (``"voltage": true`` used to fire +1.0 V). An
integral number stays a valid physical quantity (JSON has no separate float type: ``"voltage":
1`` is 1 V). The strictness is per field, not model-wide: FastAPI validates the parsed JSON in
Python mode, where a strict model would refuse a JSON array for a tuple such as :data:`Cell`.
Response models are not strict (they are built by the service).

Geometry-dependent checks (a cell inside the array, a voltage within the deployment's limits)
cannot live here — the models do not know the array — and happen in :mod:`service.validation`,
answering with the same 422 error shape as the checks below.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, StrictBool, model_validator

from drivers.limits import LimitsSchema

Number = Annotated[float, Strict()]
"""A JSON number (an integral one too): never a boolean, never a string."""
Index = Annotated[int, Strict(), Field(ge=0, lt=2**31, description="Zero-based index.")]
"""A JSON integer: never a boolean, a string or a number with a fraction part (1.0 included)."""
Cell = Annotated[
    tuple[Index, Index],
    Field(description="A cell as [row, col], zero-based word-line and bit-line indices."),
]


class _Model(BaseModel):
    # Unknown fields are errors: a typo ("voltag") must not be silently ignored.
    model_config = ConfigDict(extra="forbid")


V_READ_RANGE = (
    "Its magnitude must lie within the limits v_read_min … v_read_max (GET /array: limits; "
    "by default 0.05 V … 0.3 V), either sign; outside them: 422 naming the limit."
)
"""The range of every request's read voltage, stated in its field description."""


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


class LogHealth(BaseModel):
    state: Literal["ok", "failed"] = Field(
        description="'ok': the database takes records; 'failed': it does not (full disk, file "
        "moved away, read-only): nothing is fired until it does (503 'log unavailable')."
    )
    detail: str | None = Field(None, description="Why the log failed, else null.")
    journal_records: int = Field(
        description="Records kept in the side journal (what was under way when the log failed), "
        "replayed into the database once it takes writes again."
    )


class HealthResponse(BaseModel):
    status: Literal["ok", "unavailable", "degraded"] = Field(
        description="'ok': the service answers, its backend is known and its log takes "
        "records; 'unavailable': the service answers but its bench could not be reached (at "
        "start, or its last operation failed to reach it and a new attempt failed too; "
        "requests answer 503); 'degraded': the operation log (database) cannot take records, "
        "so nothing is fired (see log); the emergency stop works in every state."
    )
    log: LogHealth = Field(description="The operation log (the database) and its side journal.")
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
        None, description="The loaded pulse predictor model (name, version, file, fingerprint, "
        "whether it is adapted and its parent), and `fit`: how well it fits the devices it "
        "programs, from its recent pulses (share_unexplained, share_latent_at_bound, verdict "
        "`fits` | `calibration advised` | `unknown`); `status` unavailable with the reason if "
        "none is loaded."
    )
    queued: int = Field(description="Backend jobs waiting or running right now.")
    version: str = Field(description="memprog version.")
    station: str = Field(description="This service's station name (MEMPROG_STATION).")
    database: str = Field(
        description="The store: 'sqlite' (a file on this machine) or 'postgresql' (shared by "
        "the lab's stations)."
    )


# -------------------------------------------------------------------------------------- array


class LimitsModel(LimitsSchema):
    """The effective safety limits (the shared schema, :mod:`drivers.limits`)."""


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
    all: StrictBool = Field(
        False, description="Read every cell of the array (instead of cells)."
    )
    v_read: Number | None = Field(
        None,
        description="Read voltage, V (default: the service's v_read, normally 0.2 V). "
        + V_READ_RANGE,
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
    voltage: Number | list[Number] = Field(
        description="Pulse amplitude, V: one value for all cells or one per cell. Negative "
        "SETs (conductance rises), positive RESETs.",
        examples=[-0.45],
    )
    width: Number | list[Number] = Field(
        description="Pulse width, s: one value for all cells or one per cell.", examples=[1e-7]
    )
    read_after: StrictBool = Field(False, description="Read the pulsed cells afterwards.")
    v_read: Number | None = Field(
        None, description=f"Read voltage of read_after, V (default: the service's). {V_READ_RANGE}"
    )


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
    conductance: Number = Field(gt=0, description="Target conductance at v_read, S.")


class ProgrammingFields(_Model):
    """The fields POST /program and POST /jobs share."""

    targets: list[Target] = Field(
        min_length=1,
        description="Cells and their target conductances (S), each cell at most once; up to "
        "the whole array.",
    )
    tolerance: Number = Field(
        0.02,
        gt=0,
        lt=1,
        description="Convergence band relative to the target: |G − target| ≤ tolerance·target.",
    )
    max_pulses: Annotated[int, Strict()] = Field(20, ge=1, description="Pulse budget per cell.")
    strategy: str | None = Field(
        None,
        description="Programming strategy (see GET /array: strategies); null for the default.",
    )
    verify: StrictBool = Field(
        True,
        description="true: write and verify until converged or out of budget. false: one shot — "
        "read each cell once, fire exactly one pulse per cell, no verify (final is null).",
    )
    v_read: Number | None = Field(
        None, description=f"Read voltage, V (default: the service's). {V_READ_RANGE}"
    )


class ProgramRequest(ProgrammingFields):
    """Program cells to target conductances: write and verify, or one shot."""

    trace: StrictBool = Field(
        False, description="Return every pulse of every cell with its result."
    )


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
    stopped: str | None = Field(
        None,
        description="Why the loop stopped this cell before convergence or budget, else null: a "
        "reading it cannot trust (not finite, zero or negative conductance, a read current "
        "below programming.read_current_floor in A, or the compliance tripped), e.g. "
        "'untrusted reading: 0 A at 0.2 V'. No pulse is fired at a cell after such a reading "
        "(in one shot: none at all); final then holds that reading, S.",
    )
    trace: list[TraceStep] | None = Field(
        None, description="Every pulse and its result (trace=true), else null."
    )
    energy: float | None = Field(
        None, description="Energy this cell's pulses delivered to its device, J (simulated: "
        "∫ V·I dt; a bench: estimated from the reads around each pulse); null if not known."
    )


class ProgramResponse(BaseModel):
    run_id: int = Field(description="Identifier of this run in GET /runs/{id} and the export.")
    strategy: str = Field(description="Strategy used.")
    converged: int | None = Field(description="Cells converged (null in one shot).")
    total_pulses: int = Field(description="Pulses fired in this run.")
    reads: int = Field(description="Cell reads made in this run (initial and verify reads).")
    energy: float | None = Field(
        None, description="Energy all its pulses delivered, J (null if not known for all).")
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
    station: str = Field(description="The station whose bench ran it (MEMPROG_STATION).")
    energy: float | None = Field(
        None, description="Energy its pulses delivered, J (as recorded: null if none known).")


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
        description="Cells finished: converged, out of pulse budget or stopped on a reading "
        "that cannot be trusted (in one shot: every cell once its pulse is fired)."
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
    station: str = Field(
        description="The station that runs it (MEMPROG_STATION): only that station runs, "
        "recovers or aborts it."
    )
    energy: float | None = Field(
        None, description="Energy its pulses delivered so far, J, as recorded in the log "
        "(null while it runs and when none is known)."
    )


class StationRecord(BaseModel):
    """A station as its last heartbeat described it."""

    name: str = Field(description="Station name (MEMPROG_STATION).")
    backend: str | None = Field(description="simulated | hardware.")
    instruments: dict[str, str] | None = Field(
        description="Instrument role → identity (*IDN? answer, or the simulator's).")
    started: float | None = Field(description="When its service started, Unix time, s.")
    heartbeat: float = Field(description="Its last heartbeat, Unix time, s.")
    age_s: float = Field(description="Seconds since its last heartbeat, s.")
    silent: bool = Field(
        description="It missed three heartbeats: stopped, crashed or cut off from the database.")
    running_job: int | None = Field(description="The job it was running then, else null.")
    health: dict[str, object] | None = Field(
        description="Its health then: status ok | degraded | unavailable, log, queued, "
        "heartbeat_s (s between its beats).")
    version: str | None = Field(description="Its memprog version.")
    host: str | None = Field(description="Host name of its machine.")
    pid: int | None = Field(description="Its service's process id.")
    listen: str | None = Field(description="Where its API answers.")


class StationList(BaseModel):
    this_station: str = Field(description="The station answering this request.")
    stations: list[StationRecord] = Field(description="Every station, by name.")


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

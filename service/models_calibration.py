"""The API contract of calibrations and of the predictor's models (pydantic); the rest of the
contract is :mod:`service.models`. SI units in every description."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, StrictInt

from service.models import Cell, JobRecord, _Model

CalibrationStatus = Literal["pulsing", "fitting", "completed", "failed", "aborted", "interrupted"]
CALIBRATION_TERMINAL: frozenset[str] = frozenset({"completed", "failed", "aborted",
                                                  "interrupted"})
Activate = Literal["if_better", "always", "never"]


class CalibrationRequest(_Model):
    """Calibrate the pulse predictor to this station's devices."""

    cells: StrictInt | list[Cell] = Field(
        description="How many cells to pulse (spread over the array, chosen with a fixed seed) "
        "or which ones, as [[row, col], ...]. A few percent of an array is enough (e.g. 205 "
        "of a 64×64).",
        examples=[205],
    )
    pulses_per_cell: StrictInt = Field(
        20, ge=1, le=200,
        description="Pulse budget per cell: each pulse has a read before and after it, and all "
        "are recorded like any pulse.",
    )
    activate: Activate = Field(
        "if_better",
        description="if_better: make the adapted model the active one only if it predicts the "
        "held-out devices of this station better than its parent; always; never (keep it "
        "listed, activate it later with POST /predictor/activate).",
    )


class CalibrationRecord(BaseModel):
    """A calibration: its pulses (a job), then the fit of an adapted model."""

    id: int = Field(description="Calibration identifier.")
    status: CalibrationStatus = Field(
        description="pulsing (its job fires the pulses); fitting (the adapted model is being "
        "fitted from the station's log); completed; failed (see error); aborted (its job was "
        "aborted or an emergency stop came: no model); interrupted (the service stopped "
        "before it ended: no model was activated)."
    )
    created_at: datetime = Field(description="Submission time, ISO 8601 UTC.")
    finished_at: datetime | None = Field(description="End, ISO 8601 UTC (null until it ends).")
    job_id: int | None = Field(description="The job that fires its pulses (GET /jobs/{id}, "
                               "its progress stream GET /jobs/{id}/events).")
    job: JobRecord | None = Field(None, description="That job's record (progress).")
    cells: int = Field(description="Cells pulsed.")
    pulses_per_cell: int = Field(description="Pulse budget per cell.")
    activate: Activate = Field(description="The activation policy asked for.")
    parent: str = Field(description="Fingerprint of the model calibrated from.")
    model: str | None = Field(description="Id of the adapted model written (GET "
                              "/predictor/models), null until then.")
    activated: bool | None = Field(description="Whether it became the active model.")
    report: dict | None = Field(
        description="The fit: records used and dropped (not_finite, noisy, stuck, "
        "uninformative), devices, the held-out fit of parent and adapted model (median "
        "|log10 width error|, decades; share within a factor 2), the correction (decades), "
        "the new prior latent, and why it was or was not activated."
    )
    error: str | None = Field(description="Why it failed, was aborted or interrupted.")
    submitted_by: str | None = Field(description="Name of the API key that submitted it.")


class CalibrationList(BaseModel):
    calibrations: list[CalibrationRecord] = Field(description="Calibrations, newest first.")


class ModelInfo(BaseModel):
    """One pulse-predictor model of this station."""

    id: str = Field(description="Its id: 'shipped', 'configured', or its file name in the "
                    "models directory.")
    path: str = Field(description="Its file.")
    name: str | None = Field(None, description="Model name.")
    version: str | None = Field(None, description="Model version.")
    fingerprint: str | None = Field(None, description="name/version/SHA-256 prefix: what "
                                    "device memory is kept under.")
    adapted: bool | None = Field(None, description="An adapted model (a calibration's).")
    lineage: dict | None = Field(None, description="Where it comes from: parent fingerprint, "
                                 "records used and dropped, cells, time span (Unix s), "
                                 "held-out fit before/after.")
    created: float | None = Field(None, description="When it was made, Unix time, s.")
    active: bool = Field(description="The model /program uses now.")
    error: str | None = Field(None, description="Why the file would be refused, else null.")


class ModelList(BaseModel):
    models: list[ModelInfo] = Field(description="The shipped network first, then the "
                                    "configured one, then the models directory's.")
    start_error: str | None = Field(None, description="Why the model named active could not "
                                    "be loaded at start (the configured one is in use).")


class ActivateRequest(_Model):
    model: str = Field(description="Id of the model to activate (GET /predictor/models).",
                       examples=["shipped"])


class Activation(BaseModel):
    """A model made active on a station (recorded in the log's ``model_activations``)."""

    id: int = Field(description="Activation identifier.")
    time: float = Field(description="When, Unix time, s.")
    station: str = Field(description="The station whose active model it became.")
    model: str = Field(description="The model file made active.")
    fingerprint: str | None = Field(description="The model's fingerprint (SHA-256 based).")
    reason: str = Field(description="Why: the API, or the calibration that made it.")


class ActivationList(BaseModel):
    activations: list[Activation] = Field(description="Newest first.")

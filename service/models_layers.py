"""The API contract of layers: a weight matrix held in the array (``POST /layers``), its state
(``GET /layers/{name}``) and its products (``POST /layers/{name}/multiply``). Units: siemens,
volts, amperes, seconds, joules, watts; weights and outputs in the caller's own units."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, Strict, model_validator

from service.models import Index, JobRecord, _Model

Finite = Annotated[float, Strict(), Field(allow_inf_nan=False)]
"""A finite JSON number (never NaN or infinity, a boolean or a string)."""

LayerName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][\w.-]*$",
                                 description="The layer's name (letters, digits, '_', '.', "
                                 "'-'), unique on the station.")]

MAX_ROWS = 4096
MAX_OUTPUTS = 2048
MAX_VECTORS = 1024


class Origin(_Model):
    row: Index = Field(0, description="Row (word line) of the tile's first cell.")
    col: Index = Field(0, description="Column (bit line) of the tile's first cell.")


class Mapping(_Model):
    kind: Literal["differential"] = Field(
        "differential", description="Each weight on a pair of devices in one row, columns 2j "
        "(G⁺) and 2j+1 (G⁻) from the origin: G⁺ − G⁻ = k·w, k = (g_max − g_min) / max|w|.")
    g_min: Finite = Field(110e-6, gt=0, description="Lowest conductance a device is given, S.")
    g_max: Finite = Field(500e-6, gt=0, description="Highest conductance a device is given, S.")
    low_power: bool = Field(
        False, description="Put the device of each pair that does not carry the weight's sign, "
        "and small weights, at g_min (less read power: Joksas et al. 2022); else both devices "
        "of a pair sit around (g_min + g_max)/2.")

    @model_validator(mode="after")
    def _ordered(self) -> Mapping:
        if self.g_min >= self.g_max:
            raise ValueError(f"g_min = {self.g_min} S must be below g_max = {self.g_max} S")
        return self


class LayerRequest(_Model):
    name: LayerName
    weights: list[list[Finite]] = Field(
        min_length=1, max_length=MAX_ROWS,
        description=f"The weight matrix, rows (inputs, ≤ {MAX_ROWS}) × outputs "
        f"(≤ {MAX_OUTPUTS}), finite numbers in the caller's units; every row the same length.")
    origin: Origin = Field(default_factory=Origin, description="Where the tile starts.")
    mapping: Mapping = Field(default_factory=Mapping, description="Weights to conductances.")
    tolerance: Finite = Field(0.02, gt=0, le=1, description="Relative tolerance of each "
                              "device's conductance (write-and-verify).")
    max_pulses: int = Field(20, ge=1, description="Pulse budget per device.")
    strategy: str | None = Field(None, description="Programming strategy (default: the "
                                 "service's, GET /array).")


class LayerRecord(_Model):
    name: str = Field(description="The layer's name.")
    station: str = Field(description="The station whose array holds it.")
    created: float = Field(description="When it was stored, Unix time, s.")
    rows: int = Field(description="Inputs (word lines).")
    outputs: int = Field(description="Outputs (pairs of bit lines).")
    origin: Origin = Field(description="The tile's first cell.")
    cells: list[list[int]] = Field(description="The tile: [first row, first col, last row, "
                                   "last col] of the rows × 2·outputs cells it owns.")
    mapping: dict[str, object] = Field(description="kind, g_min and g_max (S), low_power, "
                                       "scale: k in S per weight unit.")
    job: JobRecord | None = Field(description="The job that programs it.")


class LayerDetail(LayerRecord):
    weights: list[list[float]] = Field(description="The weights asked for.")
    target_plus: list[list[float]] = Field(description="G⁺ targets, S (rows × outputs).")
    target_minus: list[list[float]] = Field(description="G⁻ targets, S.")
    programmed_plus: list[list[float | None]] | None = Field(
        description="G⁺ as programmed (the job's last verify reads), S; null until programmed.")
    programmed_minus: list[list[float | None]] | None = Field(
        description="G⁻ as programmed, S.")
    weight_error: list[list[float | None]] | None = Field(
        description="Per weight, (G⁺ − G⁻)/k − w: the programmed weight's error, weight units.")
    weight_error_rms: float | None = Field(
        description="Root mean square of weight_error over the weights, weight units.")


class LayerList(_Model):
    layers: list[LayerRecord] = Field(description="This station's layers, by name.")


class MultiplyRequest(_Model):
    inputs: list[list[Finite]] = Field(
        min_length=1, max_length=MAX_VECTORS,
        description=f"Input vectors (≤ {MAX_VECTORS}), each one value per layer row, |x| ≤ 1: "
        "row i is driven at x·v_in volts.")
    v_in: Finite | None = Field(
        None, gt=0, description="Read voltage of x = 1, V (default: programming.v_read, the "
        "voltage the conductances were programmed at; within the read limits).")
    t_read: Finite = Field(1e-8, gt=0, le=1, description="Duration of one product's read, s "
                           "(for its energy and efficiency).")


class MultiplyResponse(_Model):
    outputs: list[list[float]] = Field(description="(I⁺ − I⁻)/(v_in·k) per vector and output, "
                                       "weight units.")
    ideal: list[list[float]] = Field(description="W·x per vector and output, weight units.")
    current_plus: list[list[float]] = Field(description="The G⁺ columns' currents, A.")
    current_minus: list[list[float]] = Field(description="The G⁻ columns' currents, A.")
    error_rms: float = Field(description="Root mean square of outputs − ideal, weight units.")
    relative_error: float = Field(description="‖outputs − ideal‖ / ‖ideal‖ over the batch.")
    v_in: float = Field(description="Read voltage of x = 1, V.")
    t_read: float = Field(description="Duration of one product's read, s.")
    read_power: list[float] = Field(description="Σ|V·I| over the tile's devices, per vector, W.")
    energy_per_product: list[float] = Field(description="read power · t_read, per vector, J.")
    tops_per_watt: float | None = Field(
        description="2·rows·outputs / (t_read · mean read power) / 1e12: tera-operations per "
        "joule (null at zero power).")
    inputs_zeroed: int = Field(description="Inputs whose |x·v_in| fell below v_read_min: "
                               "driven at 0 V.")
    method: str = Field(description="How the currents were obtained (simulator: every device "
                        "at once, its nonlinear I(V, N); a bench: cell by cell through the "
                        "matrix, summed by superposition).")

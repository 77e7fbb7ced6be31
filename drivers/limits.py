"""The safety limits' one schema: the fields, their units, bounds and checks, shared by the
service's settings (``MEMPROG_LIMITS__*``, :class:`service.config.LimitsSettings`), the bench
file's ``[limits]`` (:class:`drivers.visa.bench.LimitsConfig`) and the API's answer
(:class:`service.models.LimitsModel`). The defaults are :class:`drivers.base.Limits`'s, the
frozen dataclass the backends use (:meth:`LimitsSchema.to_limits`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from drivers.base import Limits

_D = Limits()  # the defaults, in one place


class LimitsSchema(BaseModel):
    """Per-deployment hard safety limits. Requests beyond them are rejected (422), never
    clamped; no infinity or NaN switches one off."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    v_set_max: float = Field(_D.v_set_max, gt=0, le=10.0,
                             description="Largest |V| of a SET (negative) pulse, V.")
    v_reset_max: float = Field(_D.v_reset_max, gt=0, le=10.0,
                               description="Largest V of a RESET (positive) pulse, V.")
    width_min: float = Field(_D.width_min, gt=0, description="Shortest pulse width, s.")
    width_max: float = Field(_D.width_max, gt=0, le=1.0, description="Longest pulse width, s.")
    v_read_min: float = Field(
        _D.v_read_min, gt=0, le=2.0,
        description="Smallest |V| of a read, V (below it the read current is noise).",
    )
    v_read_max: float = Field(_D.v_read_max, gt=0, le=2.0, description="Largest |V| of a read, V.")
    compliance: float = Field(_D.compliance, ge=1e-9, le=1.05,
                              description="Current compliance of reads, A.")

    @model_validator(mode="after")
    def _ranges(self) -> LimitsSchema:
        if self.width_min > self.width_max:
            raise ValueError(f"width_min {self.width_min} s exceeds width_max {self.width_max} s")
        if self.v_read_min > self.v_read_max:
            raise ValueError(
                f"v_read_min {self.v_read_min} V exceeds v_read_max {self.v_read_max} V"
            )
        return self

    def to_limits(self) -> Limits:
        return Limits(**self.model_dump())

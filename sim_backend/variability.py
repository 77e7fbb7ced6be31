"""Device-to-device (D2D) and cycle-to-cycle (C2C) variation of JART VCM v1b devices.

Varied parameters: N_max, N_min, r, l_disc (device-model.md, "Variability"; after Yu et al.,
AICAS 2024 and the aihwkit JARTv1b device).

- D2D, at creation: p = p_nom (1 + σ ξ), ξ ~ N(0, 1), clipped to the bounds.
- C2C, after every pulse (u ~ U(-1, 1), one draw per device and parameter):
    N_max  <- N_max (1 + 0.1 u),  clipped to the device's own (D2D) value × (1 ± 0.1);
    N_min  <- N_min (1 + 0.9 u),  clipped to the device's own value × (1 ± 0.9);
    p      <- p (1 + 0.01 u1 + 0.1 ratio u2) for p in (r, l_disc), clipped to ± 10 % of the
              device's own value, where ratio = |ΔN| / (N_max - N_before) for SET and
              |ΔN| / (N_before - N_min) for RESET: the fraction of the switching event that
              happened in this pulse.
  Every parameter also stays within its global bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim_backend.jart import NOMINAL, DeviceParams

PARAMETERS = ("N_max", "N_min", "r", "l_disc")

NOMINAL_VALUES = {
    "N_max": NOMINAL.N_max,
    "N_min": NOMINAL.N_min,
    "r": NOMINAL.r,
    "l_disc": NOMINAL.l_disc,
}
BOUNDS = {
    "N_max": (18.0, 22.0),  # 1e26 m^-3 (±10 %)
    "N_min": (0.004, 0.016),  # 1e26 m^-3 (±50 %)
    "r": (40.5e-9, 49.5e-9),  # m (±10 %)
    "l_disc": (0.36e-9, 0.44e-9),  # m (±10 %)
}
C2C_SPAN = {"N_max": 0.1, "N_min": 0.9}
"""Relative step and clip span of the C2C random walk of the window parameters."""
C2C_GEOMETRY_BASE = 0.01
C2C_GEOMETRY_EVENT = 0.1
C2C_GEOMETRY_SPAN = 0.1


@dataclass(frozen=True)
class Variability:
    """How much devices differ: relative D2D spread σ and whether C2C variation is on."""

    d2d_sigma: float = 0.0
    c2c: bool = False

    def __post_init__(self) -> None:
        if not (self.d2d_sigma >= 0.0 and np.isfinite(self.d2d_sigma)):
            raise ValueError("d2d_sigma: must be a finite number ≥ 0")


PRESETS = {
    "ideal": Variability(0.0, False),
    "d2d": Variability(1.0, False),
    "realistic": Variability(1.0, True),
}


def resolve(variability: str | Variability) -> Variability:
    """A preset name (``ideal``, ``d2d``, ``realistic``) or a :class:`Variability`."""
    if isinstance(variability, Variability):
        return variability
    try:
        return PRESETS[variability]
    except KeyError:
        raise ValueError(
            f"variability: unknown preset {variability!r}; expected one of {sorted(PRESETS)}"
        ) from None


def preset_name(variability: Variability) -> str | None:
    for name, spec in PRESETS.items():
        if spec == variability:
            return name
    return None


Bounds = dict[str, tuple[float, float]]


def bounds_for(centre: dict[str, float] | None = None) -> Bounds:
    """The global bounds of each parameter for a population centred on ``centre`` (default:
    the nominal device): :data:`BOUNDS` scaled by centre / nominal (the same relative spans;
    exactly :data:`BOUNDS` for the nominal centre)."""
    if centre is None:
        return dict(BOUNDS)
    return {k: (BOUNDS[k][0] * (centre[k] / NOMINAL_VALUES[k]),
                BOUNDS[k][1] * (centre[k] / NOMINAL_VALUES[k])) for k in PARAMETERS}


def draw_d2d(n: int, sigma: float, rng: np.random.Generator,
             centre: dict[str, float] | None = None, bounds: Bounds | None = None
             ) -> DeviceParams:
    """Parameters of ``n`` devices: p_c (1 + σ ξ) clipped to the bounds (1-D arrays); p_c the
    population's centre (default nominal)."""
    centre = NOMINAL_VALUES if centre is None else centre
    bounds = BOUNDS if bounds is None else bounds
    values = {}
    for name in PARAMETERS:
        nominal = centre[name]
        xi = rng.standard_normal(n) if sigma > 0 else np.zeros(n)
        lo, hi = bounds[name]
        values[name] = np.clip(nominal * (1.0 + sigma * xi), lo, hi)
    return DeviceParams(**values)


def c2c_update(
    current: DeviceParams,
    device: DeviceParams,
    N_before: np.ndarray,
    N_after: np.ndarray,
    is_set: np.ndarray,
    rng: np.random.Generator,
    bounds: Bounds | None = None,
) -> DeviceParams:
    """The parameters after one pulse on each of the given devices (all 1-D, one per device).

    ``current`` are the parameters the pulse was applied with, ``device`` the device's own (D2D)
    values that bound the walk; ``bounds`` the population's global bounds (default nominal).
    """
    bounds = BOUNDS if bounds is None else bounds
    n = N_before.shape[0]
    u = rng.uniform(-1.0, 1.0, size=(4, n))
    out = {}
    for row, name in enumerate(("N_max", "N_min")):
        span = C2C_SPAN[name]
        own = np.asarray(getattr(device, name))
        walked = np.asarray(getattr(current, name)) * (1.0 + span * u[row])
        out[name] = _clip(walked, own * (1.0 - span), own * (1.0 + span), bounds[name])
    delta = np.abs(N_after - N_before)
    room = np.where(
        is_set,
        np.asarray(current.N_max) - N_before,
        N_before - np.asarray(current.N_min),
    )
    ratio = np.clip(delta / np.maximum(room, 1e-12), 0.0, 1.0)
    for row, name in zip((2, 3), ("r", "l_disc"), strict=True):
        own = np.asarray(getattr(device, name))
        step = C2C_GEOMETRY_BASE * u[row] + C2C_GEOMETRY_EVENT * ratio * rng.uniform(-1.0, 1.0, n)
        walked = np.asarray(getattr(current, name)) * (1.0 + step)
        out[name] = _clip(
            walked, own * (1.0 - C2C_GEOMETRY_SPAN), own * (1.0 + C2C_GEOMETRY_SPAN),
            bounds[name]
        )
    return DeviceParams(**out)


def _clip(value: np.ndarray, lo: np.ndarray, hi: np.ndarray, bound: tuple[float, float]
          ) -> np.ndarray:
    g_lo, g_hi = bound
    return np.clip(value, np.maximum(lo, g_lo), np.minimum(hi, g_hi))

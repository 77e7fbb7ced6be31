"""The classic strategies: ``fixed`` (the conventional fixed-pulse baseline) and ``ispp``
(incremental step pulse programming adapted to the device's runaway switching). Registered in
``programming/__init__.py``, one line each."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from drivers.base import Limits
from programming.strategies import Planner, Strategy


def _within(limits: Limits, set_v: float, reset_v: float) -> tuple[float, float]:
    """A strategy's own amplitude ceilings, never beyond the deployment's limits."""
    return min(set_v, limits.v_set_max), min(reset_v, limits.v_reset_max)


def _width(limits: Limits, width: float) -> float:
    """A strategy's tuned width, or the nearest one the deployment allows (a bench's pulse
    generator may not go as short: the 33500B stops at 16 ns). This is the strategy choosing
    within the limits, not a request being clamped; the ramps adapt the amplitude to it."""
    return float(min(max(width, limits.width_min), limits.width_max))


# --------------------------------------------------------------------------------- strategies


@dataclass(frozen=True)
class FixedStrategy(Strategy):
    """Fixed amplitude and width, polarity from the error's sign: the conventional baseline.

    MemTorch ``naive_program`` style, scaled to the JART device: 100 ns at −0.45 V / +0.90 V
    is strong enough to move a cell off either end of the window within a few pulses, but near
    the middle one pulse moves a cell by far more than a 2 % band, so cells dither around their
    targets (on a ``realistic`` 8×8 array about two thirds converge to 2 % within 200 pulses).
    """

    set_voltage: float = 0.45
    """|V| of the SET pulse, V (applied as negative)."""
    reset_voltage: float = 0.90
    """V of the RESET pulse, V."""
    width: float = 100e-9
    """Pulse width of both polarities, s."""

    def begin(self, target: np.ndarray, limits: Limits) -> Planner:
        v_set, v_reset = _within(limits, self.set_voltage, self.reset_voltage)
        return _FixedPlanner(np.asarray(target, float), -v_set, v_reset, _width(limits, self.width))


class _FixedPlanner(Planner):
    def __init__(self, target: np.ndarray, v_set: float, v_reset: float, width: float):
        self.target, self.v_set, self.v_reset, self.width = target, v_set, v_reset, width

    def choose(self, idx: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        voltage = np.where(self.target[idx] > g, self.v_set, self.v_reset)
        return voltage, np.full(idx.shape, self.width)


@dataclass(frozen=True)
class IsppStrategy(Strategy):
    """Incremental step pulse programming, adapted to the JART device's runaway switching.

    Each polarity ramps its amplitude from a gentle start (10 ns at −0.40 V / +0.75 V) in
    10 mV steps while a cell stays short of its target; on overshoot the polarity switches and
    the ramp restarts. Plain ISPP wastes most of its pulses on this device: switching is
    S-shaped and self-accelerating (a pulse that barely moves a cell at 94 µS moves it by
    hundreds of µS at 300 µS), so the amplitude that finally moves a cell is the one that
    overshoots, and every restart ramps from scratch (median ≈ 55 pulses per cell to 2 %).
    Three refinements keep the ramp but halve that (median ≈ 25, max ≈ 65 on ``realistic``
    8×8 arrays, targets 110…540 µS, measured over 8 seeds):

    * while pulses do next to nothing (< ``coarse_fraction`` of the error) the ramp takes
      ``coarse_step`` steps;
    * the ramp is held, or stepped back, when the last pulse already covered a large part of
      the remaining error (``hold_fraction``, ``back_fraction``);
    * a restart begins ``restart_backoff`` steps below the amplitude that last moved this cell
      in that polarity, not at the absolute start.
    """

    set_start: float = 0.40
    """|V| of the first SET pulse, V (SET pulses are negative)."""
    reset_start: float = 0.75
    """V of the first RESET pulse, V."""
    step: float = 0.01
    """Amplitude increment between pulses of one ramp, V."""
    set_max: float = 0.60
    """Largest |V| the SET ramp reaches, V (also capped by the limits)."""
    reset_max: float = 1.20
    """Largest V the RESET ramp reaches, V (also capped by the limits)."""
    set_width: float = 10e-9
    """SET pulse width, s."""
    reset_width: float = 10e-9
    """RESET pulse width, s."""
    hold_fraction: float = 0.2
    """Keep the amplitude when the last pulse covered at least this fraction of the error."""
    back_fraction: float = 0.6
    """Step the amplitude back when the last pulse covered at least this fraction."""
    restart_backoff: int = 5
    """Steps below the last effective amplitude at which a restart begins."""
    coarse_fraction: float = 0.01
    """Below this covered fraction the last pulse did next to nothing: ramp coarsely."""
    coarse_step: float = 0.04
    """Amplitude increment while the pulses do next to nothing, V."""

    def begin(self, target: np.ndarray, limits: Limits) -> Planner:
        set_max, reset_max = _within(limits, self.set_max, self.reset_max)
        return _IsppPlanner(
            self,
            np.asarray(target, float),
            start=np.array([min(self.set_start, set_max), min(self.reset_start, reset_max)]),
            ceiling=np.array([set_max, reset_max]),
            width=np.array([_width(limits, self.set_width), _width(limits, self.reset_width)]),
        )


@dataclass
class _IsppPlanner(Planner):
    cfg: IsppStrategy
    target: np.ndarray
    start: np.ndarray  # [SET, RESET] first amplitude, V (magnitudes)
    ceiling: np.ndarray  # [SET, RESET] largest amplitude, V (magnitudes)
    width: np.ndarray  # [SET, RESET] pulse width, s
    polarity: np.ndarray = field(init=False)  # per cell: 0 none yet, 1 SET, 2 RESET
    amplitude: np.ndarray = field(init=False)  # per cell: |V| of its last pulse
    error_before: np.ndarray = field(init=False)  # per cell: target − G before its last pulse
    effective: np.ndarray = field(init=False)  # (2, cells): |V| that last moved the cell

    def __post_init__(self) -> None:
        n = self.target.size
        self.polarity = np.zeros(n, dtype=np.int8)
        self.amplitude = np.zeros(n)
        self.error_before = np.zeros(n)
        self.effective = np.repeat(self.start[:, None], n, axis=1)

    def choose(self, idx: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.cfg
        error = self.target[idx] - g
        wanted = np.where(error > 0, 1, 2).astype(np.int8)  # SET raises G
        last = self.polarity[idx]
        amplitude = self.amplitude[idx]
        same = wanted == last  # still short of the target in the same direction
        # Fraction of the error the last pulse covered (only meaningful when `same`).
        before = np.abs(self.error_before[idx])
        covered = np.divide(
            before - np.abs(error), before, out=np.zeros_like(before), where=before > 0
        )

        # Remember the amplitude that moved this cell: on overshoot it was too strong, and a
        # pulse that covered a good part of the error was about right.
        moved = (last > 0) & (~same | (covered >= cfg.hold_fraction))
        pol_row = np.clip(last - 1, 0, 1)
        self.effective[pol_row[moved], idx[moved]] = amplitude[moved]

        pol = wanted - 1  # 0 SET, 1 RESET
        restart = np.maximum(
            self.start[pol], self.effective[pol, idx] - cfg.restart_backoff * cfg.step
        )
        ramp = np.where(
            covered >= cfg.back_fraction,
            amplitude - cfg.step,
            np.where(
                covered >= cfg.hold_fraction,
                amplitude,
                amplitude + np.where(covered < cfg.coarse_fraction, cfg.coarse_step, cfg.step),
            ),
        )
        new = np.where(same, np.maximum(ramp, self.start[pol]), restart)
        new = np.minimum(new, self.ceiling[pol])

        self.polarity[idx] = wanted
        self.amplitude[idx] = new
        self.error_before[idx] = error
        voltage = np.where(wanted == 1, -new, new)
        return voltage, self.width[pol]

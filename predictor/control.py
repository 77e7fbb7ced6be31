"""The predictor's programming policy: predict, pulse, read, re-predict — vectorised over cells.

:class:`PredictorPlanner` follows the service's planner contract (``choose(idx, g)`` returns
``(voltage, width)`` for the cells ``idx`` whose conductance is now ``g``; its previous call
for a cell tells what that cell's last pulse was, ``g`` what the pulse did). Per cell it keeps
the last pulse and an estimate of the device's speed latent z:

1. a cell about which nothing is known gets the model's *prior* latent (``first_latent``,
   by default the fastest devices, z = −1: a first pulse that undershoots on slower devices
   and still tells how slow they are, instead of overshooting on the fast ones);
2. after every pulse the latent is re-inferred from what that pulse did
   (:meth:`PulsePredictor.infer_latent`): the device's own correction, refreshed each pulse
   because the cycle-to-cycle walk of the device changes its speed after every pulse;
3. the next pulse aims at ``aim_fraction`` of the remaining update (1.0 by default: aiming
   short was measured to cost pulses, not save them), at the largest amplitude whose
   predicted width is at least ``width_floor`` (2 ns: twice the shortest pulse).

With a single call per cell (one shot, ``verify: false``) this is the paper's method: one pulse
predicted from the read conductance and the target.

Across runs the service keeps each device's latent (:meth:`PredictorPlanner.recall`, the
``device_memory`` table): a device programmed before starts from its own latent instead of the
prior — its first pulse, and a one shot, are then aimed at this device rather than at a blind
guess (the cycle-to-cycle walk makes an old latent an estimate, refreshed by every run).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from predictor.fit_monitor import FitMonitor
from predictor.runtime import PulsePredictor


@dataclass(frozen=True)
class PolicyConfig:
    first_latent: float | None = -1.0
    """Latent assumed before a cell's first pulse (None: the model's one-shot prior)."""
    first_fraction: float = 1.0
    """Fraction of the update the first (blind) pulse aims at."""
    aim_fraction: float = 1.0
    """Fraction of the remaining update the later pulses aim at (aiming short, 0.95, cost 0.05
    pulses per device on validation devices: an overshoot is as cheap to correct as an
    undershoot here)."""
    width_floor: float = 2e-9
    """Shortest predicted width accepted at an amplitude before a gentler one is used, s."""
    bound_step: float = 0.3
    """How far (in z) beyond a bound the latent is moved when a pulse only gave a bound."""
    margin: float = 0.0
    """The device is assumed this much faster (in z) than inferred ..."""
    escalation: float = 0.5
    """decades: how much longer (shorter) the next pulse of a device already assumed the
    slowest (fastest) the model knows is made when its pulse again barely moved it (ran it
    into the window end) — a device the model cannot express is not sent the same useless
    pulse twice."""
    margin_per_move: float = 0.0
    """... plus this much per unit |ln(G_after / G_before)| of its last pulse (a large move
    changes the device most, cycle to cycle; a faster assumption turns errors into
    undershoots). Measured on validation devices: any margin costs pulses (0.05 → +0.1 pulse
    per device), so both are 0."""


class PredictorPlanner:
    """Per-run pulse chooser over ``target`` (S); see the module docstring."""

    def __init__(
        self,
        predictor: PulsePredictor,
        target: np.ndarray,
        *,
        v_set_max: float = np.inf,
        v_reset_max: float = np.inf,
        width_min: float = 1e-9,
        width_max: float = 0.1,
        config: PolicyConfig = PolicyConfig(),
        monitor: FitMonitor | None = None,
    ):
        self.predictor = predictor
        self.target = np.asarray(target, dtype=float).ravel()
        # Explicit error for targets the model was not trained for (never extrapolate).
        _check_targets(predictor, self.target)
        self.limits = dict(v_set_max=v_set_max, v_reset_max=v_reset_max, width_min=width_min,
                           width_max=width_max)
        self.cfg = config
        n = self.target.size
        self.last_g = np.full(n, np.nan)
        self.last_v = np.zeros(n)
        self.last_w = np.zeros(n)
        self.latent = np.full(n, np.nan)  # NaN: unknown
        self.last_move = np.zeros(n)  # |ln(G_after / G_before)| of the last pulse
        self.pending = np.zeros(n, dtype=bool)  # pulsed, outcome not yet observed
        self.pulses = np.zeros(n, dtype=np.int64)
        # decades the device needs beyond what its latent can say (0 within the model's range)
        self.offset = np.zeros(n)
        self.monitor = monitor

    def choose(self, idx: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.asarray(idx, dtype=np.intp)
        g = np.asarray(g, dtype=float)
        self.observe(idx, g)
        cfg = self.cfg
        z = self.latent[idx]
        known = np.isfinite(z)
        prior = self.predictor.one_shot_latent if cfg.first_latent is None else cfg.first_latent
        z = np.where(known, z - cfg.margin - cfg.margin_per_move * self.last_move[idx], prior)
        frac = np.where(known, cfg.aim_fraction, cfg.first_fraction)
        lo, hi = self.predictor.window
        g_now = np.clip(g, lo, hi)
        aim = g_now + frac * (self.target[idx] - g_now)
        aim = np.clip(aim, lo * (1 + 1e-3), hi * (1 - 1e-3))
        voltage, width = self.predictor.choose_pulse(
            g_now, aim, z, width_floor=cfg.width_floor, check="window",
            offset=self.offset[idx], **self.limits
        )
        self.last_g[idx] = g
        self.last_v[idx] = voltage
        self.last_w[idx] = width
        self.pulses[idx] += 1
        self.pending[idx] = True
        return voltage, width

    def recall(self, latent: np.ndarray) -> None:
        """Start from each device's latent as learned in earlier runs (NaN: unknown, the prior
        is used); clipped to the model's latent range."""
        latent = np.asarray(latent, dtype=float).ravel()
        lo, hi = self.predictor.latent_range
        self.latent = np.where(np.isfinite(latent), np.clip(latent, lo, hi), np.nan)

    def observe(self, idx: np.ndarray, g: np.ndarray) -> None:
        """Update the latent of cells from what their last pulse did (``g``: read after it).

        ``choose`` calls this itself; call it after a run to learn from the last pulses too
        (a cell that converged is not asked again). Each pulse is observed once.
        """
        idx = np.asarray(idx, dtype=np.intp)
        g = np.asarray(g, dtype=float)
        had = self.pending[idx]
        if not np.any(had):
            return
        self.pending[idx[had]] = False
        cells = idx[had]
        z, kind, residual = self.predictor.infer(
            self.last_g[cells], g[had], self.last_v[cells], self.last_w[cells]
        )
        if self.monitor is not None:
            self.monitor.observe(self.predictor, z, kind, residual)
        self.last_move[cells] = np.abs(np.log(np.maximum(g[had], 1e-12)
                                              / np.maximum(self.last_g[cells], 1e-12)))
        old = self.latent[cells]
        step = self.cfg.bound_step
        lo, hi = self.predictor.latent_range
        # Lower bound (barely moved): at least this slow, and slower than assumed before.
        lower = np.fmax(z, np.where(np.isfinite(old), old + step, z))
        # Upper bound (ran into the window end): at least this fast.
        upper = np.fmin(z, np.where(np.isfinite(old), old - step, z))
        # Within the trained range: a bound pushed past it (a device that never moves, e.g.
        # one stuck or read at the wrong voltage) would otherwise grow without end and be
        # remembered for the cell's next run.
        self.latent[cells] = np.clip(np.where(kind == 0, z, np.where(kind == 1, lower, upper)),
                                     lo, hi)
        # Beyond the range: what the latent cannot say goes into the cell's offset. An estimate
        # at a bound leaves its residual there; a bound observed when the latent was already at
        # that end escalates (a device slower than z = +1 that barely moved, or one faster than
        # z = -1 that ran into the window end, must not get the same pulse again).
        eps = 1e-3 * (hi - lo)
        at_bound = (z <= lo + eps) | (z >= hi - eps)
        offset = self.offset[cells]
        esc = self.cfg.escalation
        was_slowest = np.isfinite(old) & (old >= hi - eps)
        was_fastest = np.isfinite(old) & (old <= lo + eps)
        self.offset[cells] = np.where(
            kind == 0, np.where(at_bound, residual, 0.0),
            np.where(kind == 1, np.where(was_slowest, np.maximum(offset, 0.0) + esc, offset),
                     np.where(was_fastest, np.minimum(offset, 0.0) - esc, offset)))


def _check_targets(predictor: PulsePredictor, target: np.ndarray) -> None:
    if target.size == 0:
        return
    if not np.all(np.isfinite(target)):
        raise ValueError("target: must be finite")
    lo, hi = predictor.target_range
    bad = (target < lo) | (target > hi)
    if np.any(bad):
        from predictor.runtime import OutOfRangeError

        raise OutOfRangeError(
            f"target: {target[bad][0]:.4g} S is outside the predictor's trained range "
            f"[{lo:.4g}, {hi:.4g}] S"
        )

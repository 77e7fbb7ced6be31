"""Does the model fit these devices? A running statistic of the pulses the predictor fired.

Every pulse the predictor strategy fires is observed once its verify read comes back
(:meth:`predictor.control.PredictorPlanner.observe`): the device latent z that explains it and
the *residual* — log10(width applied) − log10(width the model predicts for the change observed
at that z), in decades (:meth:`predictor.runtime.PulsePredictor.infer`). On devices like those
the model was trained on, z explains the pulse and the residual is small (cycle-to-cycle noise);
on devices the model cannot express (another population) z runs into its bound and the residual
stays large. Per model (fingerprint), over the last :data:`WINDOW` informative pulses:

- ``p90_abs_residual_decades``: the 90th percentile of |residual| (0 while every pulse is
  explained by a latent within the range);
- ``share_unexplained``: share of pulses with |residual| > :data:`UNEXPLAINED_DECADES`
  (the model's best latent is off by more than a factor of two);
- ``share_latent_at_bound``: share of pulses whose z is at an end of the latent range;
- ``verdict``: ``"unknown"`` (fewer than :data:`MIN_OBSERVATIONS`), ``"fits"``, or
  ``"calibration advised"`` (``share_unexplained`` > :data:`ADVISE_UNEXPLAINED`).

The share at the bound is reported, not judged: on the training population it is high on fresh
devices (their radius drawn at the ends of its range) and 0.07–0.11 once they have cycled, so it
says little alone; a latent at its bound that still explains the pulse is a device the model
knows. Measured share_unexplained: 0 on the training population, ≥ 0.05 on populations the
model cannot express (``memprog benchmark foreign``).
"""

from __future__ import annotations

import threading
from typing import Protocol

import numpy as np

WINDOW = 4096
"""Informative pulses kept per model (the most recent)."""
MIN_OBSERVATIONS = 200
"""Fewer informative pulses than this: no verdict."""
UNEXPLAINED_DECADES = np.log10(2.0)
"""|residual| beyond which a pulse is not explained by any latent (a factor of two), decades."""
ADVISE_UNEXPLAINED = 0.05
"""share_unexplained above which calibration is advised."""


class _Model(Protocol):
    @property
    def fingerprint(self) -> str: ...

    @property
    def latent_range(self) -> tuple[float, float]: ...


class _Ring:
    def __init__(self) -> None:
        self.residual = np.full(WINDOW, np.nan)
        self.at_bound = np.zeros(WINDOW, dtype=bool)
        self.filled = 0
        self.next = 0
        self.total = 0

    def add(self, residual: np.ndarray, at_bound: np.ndarray) -> None:
        n = residual.size
        if n >= WINDOW:
            residual, at_bound, n = residual[-WINDOW:], at_bound[-WINDOW:], WINDOW
        slots = (self.next + np.arange(n)) % WINDOW
        self.residual[slots] = residual
        self.at_bound[slots] = at_bound
        self.next = int((self.next + n) % WINDOW)
        self.filled = min(WINDOW, self.filled + n)
        self.total += int(residual.size)


class FitMonitor:
    """Thread-safe running fit statistics per model fingerprint (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rings: dict[str, _Ring] = {}

    def observe(self, model: _Model, z: np.ndarray, kind: np.ndarray,
                residual: np.ndarray) -> None:
        """Add the pulses of one batch (``kind`` 0: informative; bounds are not counted)."""
        informative = np.asarray(kind) == 0
        if not np.any(informative):
            return
        lo, hi = model.latent_range
        eps = 1e-3 * (hi - lo)
        z = np.asarray(z, dtype=float)[informative]
        with self._lock:
            ring = self._rings.setdefault(model.fingerprint, _Ring())
            ring.add(np.asarray(residual, dtype=float)[informative],
                     (z <= lo + eps) | (z >= hi - eps))

    def report(self, fingerprint: str) -> dict:
        """The statistics of the model ``fingerprint`` (see the module docstring)."""
        with self._lock:
            ring = self._rings.get(fingerprint)
            if ring is None or ring.filled == 0:
                return {"observations": 0, "window": 0, "p90_abs_residual_decades": None,
                        "share_unexplained": None, "share_latent_at_bound": None,
                        "verdict": "unknown", "calibration_advised": False}
            res = np.abs(ring.residual[:ring.filled])
            bound = ring.at_bound[:ring.filled]
            total = ring.total
        p90 = float(np.percentile(res, 90))
        unexplained = float(np.mean(res > UNEXPLAINED_DECADES))
        at_bound = float(np.mean(bound))
        if res.size < MIN_OBSERVATIONS:
            verdict = "unknown"
        elif unexplained > ADVISE_UNEXPLAINED:
            verdict = "calibration advised"
        else:
            verdict = "fits"
        return {
            "observations": total,
            "window": int(res.size),
            "p90_abs_residual_decades": round(p90, 4),
            "share_unexplained": round(unexplained, 4),
            "share_latent_at_bound": round(at_bound, 4),
            "verdict": verdict,
            "calibration_advised": verdict == "calibration advised",
        }

    def forget(self, fingerprint: str | None = None) -> None:
        """Drop the statistics of one model (or all)."""
        with self._lock:
            if fingerprint is None:
                self._rings.clear()
            else:
                self._rings.pop(fingerprint, None)

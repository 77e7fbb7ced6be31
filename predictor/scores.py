"""Programming metrics, defined once (shared/reference/programming.md) and used everywhere.

- RPD relative to the update (the strict one): ``(G_reached − G_target) / (G_target − G_start)``
- RPD relative to the target: ``(G_reached − G_target) / G_target``
- write-and-verify: pulses per device (mean, median, p95, p99, max), fraction converged within
  the budget, device time = Σ pulse widths + reads × read time.
"""

from __future__ import annotations

import numpy as np

WITHIN_LEVELS = (0.10, 0.20, 0.50)


def rpd_update(g_reached, g_target, g_start) -> np.ndarray:
    """Relative percentage difference of the update, as a fraction (0.5 = 50 %)."""
    g_reached, g_target, g_start = (np.asarray(a, dtype=float) for a in
                                    (g_reached, g_target, g_start))
    return (g_reached - g_target) / (g_target - g_start)


def rpd_target(g_reached, g_target) -> np.ndarray:
    """Relative difference to the target, as a fraction."""
    g_reached, g_target = np.asarray(g_reached, dtype=float), np.asarray(g_target, dtype=float)
    return (g_reached - g_target) / g_target


def within(rpd, levels=WITHIN_LEVELS) -> dict[str, float]:
    """Fraction of devices with |RPD| ≤ each level, keyed ``"10%"``, ``"20%"``, ``"50%"``."""
    a = np.abs(np.asarray(rpd, dtype=float))
    return {f"{round(level * 100)}%": float(np.mean(a <= level)) for level in levels}


def distribution(x) -> dict[str, float]:
    """Percentiles of a sample (for RPD distributions)."""
    x = np.asarray(x, dtype=float)
    names = ("p1", "p5", "p25", "median", "p75", "p95", "p99")
    q = np.percentile(x, [1, 5, 25, 50, 75, 95, 99])
    out = {k: float(v) for k, v in zip(names, q, strict=True)}
    out["mean"] = float(x.mean())
    return out


def one_shot_summary(g_reached, g_target, g_start) -> dict:
    """RPD (update and target) distributions and the fractions within ±10/20/50 %."""
    ru = rpd_update(g_reached, g_target, g_start)
    rt = rpd_target(g_reached, g_target)
    return {
        "devices": int(np.size(ru)),
        "within_update": within(ru),
        "within_target": within(rt),
        "rpd_update": distribution(ru),
        "rpd_target": distribution(rt),
    }


def converged(g, g_target, tolerance: float) -> np.ndarray:
    """|G − G_target| ≤ tolerance · G_target (the service's convergence test)."""
    g, g_target = np.asarray(g, dtype=float), np.asarray(g_target, dtype=float)
    return np.abs(g - g_target) <= tolerance * g_target


def device_time(width_sum, reads, read_time: float) -> np.ndarray:
    """Device time per device: Σ pulse widths + reads × read time, s."""
    return np.asarray(width_sum, dtype=float) + np.asarray(reads, dtype=float) * read_time


def pulse_statistics(pulses, is_converged) -> dict:
    """Pulses per device (mean, median, p95, p99, max) and the fraction converged."""
    p = np.asarray(pulses, dtype=float)
    c = np.asarray(is_converged, dtype=bool)
    return {
        "devices": int(p.size),
        "converged_fraction": float(c.mean()),
        "pulses_mean": float(p.mean()),
        "pulses_median": float(np.median(p)),
        "pulses_p95": float(np.percentile(p, 95)),
        "pulses_p99": float(np.percentile(p, 99)),
        "pulses_max": int(p.max()) if p.size else 0,
        "pulses_total": int(p.sum()),
    }

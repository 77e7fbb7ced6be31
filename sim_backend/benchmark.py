"""``memprog benchmark sim``: speed and accuracy of the simulated crossbar.

Figures:
- pulse: one pulse on every device of the array, realistic variability, states across the window,
  widths log-uniform over 10 ns … 10 ms, voltages of both polarities uniform over the validated
  range (SET −0.9 … −0.34 V, RESET +0.5 … +1.3 V); and a harder case in which every pulse lands
  mid-switch (each device's width near its own switching time, the integrator's worst case);
- read: reading the whole array (with read noise);
- accuracy: the adaptive integrator at its default tolerance against a tight-tolerance (1e-11)
  reference integration of the same pulses, and the change of G when the tolerance is halved.

The benchmark of the physics layer; each layer keeps its own ``benchmark`` module (drivers/visa,
predictor, service).
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

from sim_backend import Crossbar, jart
from sim_backend.integrator import DEFAULT_TOL, apply_pulses


def _mixed_pulses(n: int, rng: np.random.Generator):
    is_set = rng.random(n) < 0.5
    V = np.where(is_set, -rng.uniform(0.34, 0.9, n), rng.uniform(0.5, 1.3, n))
    W = 10 ** rng.uniform(-8, -2, n)
    return V, W


def _mid_switch_pulses(N0: np.ndarray, rng: np.random.Generator):
    """Each device's pulse ends near its mid range: widths from the nominal switching time."""
    n = N0.size
    is_set = rng.random(n) < 0.5
    V = np.where(is_set, -rng.uniform(0.34, 0.9, n), rng.uniform(0.6, 1.3, n))
    N_goal = np.where(is_set, np.minimum(N0 * 3, jart.N_HI), np.maximum(N0 / 3, jart.N_LO))
    # Time to the goal from dt = dN / f(N), by a coarse quadrature over 64 points per device.
    s = np.linspace(0.0, 1.0, 64)[:, None]
    N = np.exp(np.log(N0) + s * (np.log(N_goal) - np.log(N0)))
    integrand = N / np.maximum(np.abs(jart.rate(N, V)), 1e-300)
    t = np.abs(np.trapezoid(integrand, s, axis=0) * (np.log(N_goal) - np.log(N0)))
    W = np.clip(t * rng.uniform(0.5, 1.5, n), 1e-9, 0.1)
    return V, W


def _best_of(repeats: int, fn) -> float:
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run_sim_benchmark(
    rows: int = 256, cols: int = 256, seed: int = 0, repeats: int = 3, report: str | None = None
) -> int:
    rng = np.random.default_rng(seed)
    xb = Crossbar(rows, cols, seed=seed, variability="realistic", read_noise=0.01)
    n = rows * cols
    r, c = (a.ravel() for a in np.indices(xb.shape))
    N0 = np.exp(rng.uniform(np.log(jart.N_LO), np.log(jart.N_HI), n))
    figures: dict[str, Any] = {
        "array": f"{rows}x{cols}",
        "devices": n,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }

    for name, pulses in (
        ("mixed", _mixed_pulses(n, rng)),
        ("mid_switch", _mid_switch_pulses(N0, rng)),
    ):
        V, W = pulses

        def one_pulse(V=V, W=W):
            xb.state = N0.reshape(xb.shape)
            xb.pulse(r, c, V, W)

        seconds = _best_of(repeats, one_pulse)
        moved = float(np.mean(np.abs(xb.state.ravel() / N0 - 1) > 1e-3))
        figures[f"pulse_{name}_s"] = seconds
        figures[f"pulse_{name}_rounds"] = xb.last_stats.steps
        figures[f"pulse_{name}_evals_per_device"] = xb.last_stats.evaluations / n
        figures[f"pulse_{name}_fraction_moved"] = moved

    read_s = _best_of(max(repeats, 20), lambda: xb.read(r, c))
    figures["read_all_s"] = read_s

    # Accuracy on a sample of the mixed pulses (the reference is slow by design).
    k = min(n, 8192)
    V, W = _mixed_pulses(k, rng)
    V2, W2 = _mid_switch_pulses(N0[:k], rng)
    V, W, start = np.concatenate([V, V2]), np.concatenate([W, W2]), np.concatenate([N0[:k]] * 2)
    params = jart.NOMINAL_DEVICE
    N_def, _ = apply_pulses(start, V, W, params, tol=DEFAULT_TOL)
    N_half, _ = apply_pulses(start, V, W, params, tol=DEFAULT_TOL / 2)
    N_ref, _ = apply_pulses(start, V, W, params, tol=1e-11)
    G_def, G_half, G_ref = (jart.conductance(x) for x in (N_def, N_half, N_ref))
    err = np.abs(G_def / G_ref - 1)
    figures["accuracy_samples"] = int(start.size)
    figures["accuracy_tol"] = DEFAULT_TOL
    figures["accuracy_max_rel_G_error_vs_reference"] = float(err.max())
    figures["accuracy_p99_rel_G_error_vs_reference"] = float(np.percentile(err, 99))
    figures["accuracy_max_rel_G_change_halving_tol"] = float(np.max(np.abs(G_def / G_half - 1)))

    print(f"memprog benchmark sim — {rows}×{cols} = {n} devices, realistic variability")
    print(f"  one pulse on every device, mixed 10 ns…10 ms, both polarities: "
          f"{figures['pulse_mixed_s'] * 1e3:8.1f} ms  "
          f"({figures['pulse_mixed_evals_per_device']:.1f} rate evaluations/device, "
          f"{figures['pulse_mixed_fraction_moved']:.0%} of devices moved)")
    print(f"  one pulse on every device, every pulse ending mid-switch:    "
          f"{figures['pulse_mid_switch_s'] * 1e3:8.1f} ms  "
          f"({figures['pulse_mid_switch_evals_per_device']:.1f} rate evaluations/device)")
    print(f"  read the whole array:                                        "
          f"{read_s * 1e3:8.2f} ms")
    print(f"  integrator accuracy (tol {DEFAULT_TOL:g}, {start.size} pulses): max |ΔG/G| vs "
          f"1e-11 reference {figures['accuracy_max_rel_G_error_vs_reference']:.2e} "
          f"(p99 {figures['accuracy_p99_rel_G_error_vs_reference']:.2e}); "
          f"halving tol changes G by ≤ {figures['accuracy_max_rel_G_change_halving_tol']:.2e}")
    if report:
        Path(report).parent.mkdir(parents=True, exist_ok=True)
        Path(report).write_text(json.dumps(figures, indent=2))
        print(f"  report: {report}")
    return 0

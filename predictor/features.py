"""Feature definitions of the pulse predictor: one place, used by training, export and runtime.

The network maps one *query* — (G_start, G_target, V, z) — to log10 of the pulse width that moves
a device from G_start to G_target with a rectangular pulse of amplitude V:

=========  =======  ===========================================================================
column     unit     meaning
=========  =======  ===========================================================================
g_start    S        conductance before the pulse (read at +0.2 V)
g_target   S        conductance wanted after the pulse
voltage    V        pulse amplitude; negative = SET (G rises), positive = RESET (G falls)
latent     1        the device's speed latent z (see below); 0 for an unknown nominal device
=========  =======  ===========================================================================

Inside the network (the ONNX graph computes these itself, so callers pass raw SI values):

- ``x_start  = (ln g_start  − LN_G_CENTER) / LN_G_HALF`` (maps the conductance window to ±1)
- ``x_target = (ln g_target − LN_G_CENTER) / LN_G_HALF``
- ``x_update = (log10(|g_target − g_start| / g_start) − LOG_UPDATE_CENTER) / LOG_UPDATE_HALF``:
  the relative size of the update on a log scale, so that a 0.1 % step and a 400 % step are both
  resolved (for small steps the width is proportional to the step).
- ``x_voltage = (|V| − center) / half`` with a center and half-range per polarity.
- ``z`` as given.

The latent z: device-to-device variation of this device model is dominated by the filament
radius r (±10 %; a 1 % change of r changes switching times by ~25 %), which enters the Joule
temperature. In simulated training data z = (r / r_nominal − 1) / 0.1 — so z ∈ [−1, 1] spans the
whole ±10 % range, −1 the fastest devices, +1 the slowest. At run time nobody knows r: z is
*inferred* from the device's own pulses (the width that would have produced the observed change,
see :mod:`predictor.runtime`), so it works on measured devices too.

SET (negative V) and RESET (positive V) have separate networks.
"""

from __future__ import annotations

import math

import numpy as np

from sim_backend.jart import NOMINAL, V_RESET_MAX, conductance

# The conductance window of the device model (any device: G depends on N only, N is clamped).
G_WINDOW_LO = float(conductance(np.array([NOMINAL.N_lo]))[0])  # ≈ 94.45 µS
G_WINDOW_HI = float(conductance(np.array([NOMINAL.N_hi]))[0])  # ≈ 559.3 µS

# The target range the default model is trained and validated for (a margin inside the window:
# at the very ends the device saturates and a pulse width no longer determines the outcome).
G_TARGET_MIN = 100e-6
G_TARGET_MAX = 550e-6

LN_G_CENTER = 0.5 * (math.log(G_WINDOW_LO) + math.log(G_WINDOW_HI))
LN_G_HALF = 0.5 * (math.log(G_WINDOW_HI) - math.log(G_WINDOW_LO))

MIN_RELATIVE_UPDATE = 1e-4
"""Smallest |ΔG| / G_start in the training data; smaller requested updates are raised to it."""
LOG_UPDATE_CENTER = -1.5
LOG_UPDATE_HALF = 2.5

# Pulse amplitudes the default model covers, magnitudes in V (SET pulses are applied negative).
SET_V_RANGE = (0.35, 0.60)
RESET_V_RANGE = (0.80, 1.30)
SET_VOLTAGES = (0.35, 0.40, 0.45, 0.50, 0.55, 0.60)
"""|V| candidates for SET (applied as negative voltages)."""
RESET_VOLTAGES = (0.80, 0.90, 1.00, 1.10, 1.20, 1.30)
"""V candidates for RESET."""
assert max(RESET_VOLTAGES) <= V_RESET_MAX

LATENT_RANGE = (-1.0, 1.0)
R_NOMINAL = NOMINAL.r
R_SPAN = 0.1
"""z = (r / r_nominal − 1) / R_SPAN in simulated data."""

QUERY_COLUMNS = ("g_start", "g_target", "voltage", "latent")


def latent_from_radius(r: np.ndarray) -> np.ndarray:
    """The simulator's ground-truth latent of devices of filament radius r (m)."""
    return (np.asarray(r, dtype=float) / R_NOMINAL - 1.0) / R_SPAN


def polarity_norm(is_set: bool) -> tuple[float, float]:
    """(center, half-range) of |V| for one polarity."""
    lo, hi = SET_V_RANGE if is_set else RESET_V_RANGE
    return 0.5 * (lo + hi), 0.5 * (hi - lo)


def features(query: np.ndarray, is_set: bool) -> np.ndarray:
    """The network's input features (float64, [B, 5]) for raw queries ([B, 4], SI units).

    The reference implementation of what the exported graph computes; training uses it too.
    """
    q = np.asarray(query, dtype=float)
    g_s, g_t, v, z = q[:, 0], q[:, 1], q[:, 2], q[:, 3]
    center, half = polarity_norm(is_set)
    rel = np.maximum(np.abs(g_t - g_s) / g_s, MIN_RELATIVE_UPDATE)
    return np.stack(
        [
            (np.log(g_s) - LN_G_CENTER) / LN_G_HALF,
            (np.log(g_t) - LN_G_CENTER) / LN_G_HALF,
            (np.log10(rel) - LOG_UPDATE_CENTER) / LOG_UPDATE_HALF,
            (np.abs(v) - center) / half,
            z,
        ],
        axis=1,
    )


def feature_spec() -> dict:
    """Feature definitions and units, for the model's metadata."""
    set_c, set_h = polarity_norm(True)
    reset_c, reset_h = polarity_norm(False)
    return {
        "query_columns": [
            {"name": "g_start", "unit": "S", "meaning": "conductance before the pulse, read at "
             "+0.2 V"},
            {"name": "g_target", "unit": "S", "meaning": "conductance wanted after the pulse"},
            {"name": "voltage", "unit": "V", "meaning": "pulse amplitude: negative SET, "
             "positive RESET"},
            {"name": "latent", "unit": "1", "meaning": "device speed latent z: (r/r_nom-1)/0.1 "
             "in simulation, inferred from the device's own pulses at run time; -1 fastest, "
             "+1 slowest"},
        ],
        "network_features": [
            f"x_start = (ln g_start - {LN_G_CENTER:.6f}) / {LN_G_HALF:.6f}",
            f"x_target = (ln g_target - {LN_G_CENTER:.6f}) / {LN_G_HALF:.6f}",
            f"x_update = (log10(max(|g_target-g_start|/g_start, {MIN_RELATIVE_UPDATE})) - "
            f"({LOG_UPDATE_CENTER})) / {LOG_UPDATE_HALF}",
            f"x_voltage = (|V| - {set_c:.4f}) / {set_h:.4f} (SET), "
            f"(|V| - {reset_c:.4f}) / {reset_h:.4f} (RESET)",
            "z = latent",
        ],
        "output": {"name": "log10_width", "unit": "log10(s)"},
        "constants": {
            "ln_g_center": LN_G_CENTER,
            "ln_g_half": LN_G_HALF,
            "min_relative_update": MIN_RELATIVE_UPDATE,
            "log_update_center": LOG_UPDATE_CENTER,
            "log_update_half": LOG_UPDATE_HALF,
            "set_v_center": set_c,
            "set_v_half": set_h,
            "reset_v_center": reset_c,
            "reset_v_half": reset_h,
        },
    }

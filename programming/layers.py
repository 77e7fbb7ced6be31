"""A neural-network layer held in a crossbar: weights mapped to conductances, and the products
read back — pure functions over arrays (the service stores, programs and multiplies layers with
them: :mod:`service.layers`).

Differential mapping (as in aihwkit, MemTorch and Joksas et al., Adv. Sci. 2022): weight w[i, j]
(row i, output j) is held by a pair of devices on columns 2j (G⁺) and 2j + 1 (G⁻) of row i, with

    G⁺ − G⁻ = k · w,        k = (g_max − g_min) / w_max   (S per weight unit, w_max = max |w|)

- ``balanced`` (default): both devices around the middle of the range,
  G± = g_mid ± k·w/2, g_mid = (g_min + g_max)/2;
- ``low_power``: the device that does not carry the weight's sign, and small weights, at the
  low-conductance end: G⁺ = g_min + k·max(w, 0), G⁻ = g_min + k·max(−w, 0) — the same
  differences with less conductance, hence less read power (Joksas et al.: 0.715 → 381
  TOPs⁻¹W⁻¹ at similar accuracy).

Products: input x[i] ∈ [−1, 1] drives row i at V_i = x[i]·v_in; column c collects
I_c = Σ_i I(V_i, N_ic), each device's own current (on the simulator the nonlinear JART current,
not V·G); output j is y_j = (I_{2j} − I_{2j+1}) / (v_in · k), in weight units, beside the ideal
W·x. An input whose |V| is below the read floor (v_read_min) drives nothing (0 V).
Read power P = Σ |V_i · I_ic| (W); energy per product P·t_read (J); efficiency
2 · rows · outputs / (t_read · P) operations per joule (TOPS/W: ×1e-12).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LayerMapping:
    """How a weight matrix becomes conductances (S); see the module."""

    g_min: float  # S
    g_max: float  # S
    low_power: bool = False

    def scale(self, weights: np.ndarray) -> float:
        """k, S per weight unit (a matrix of zeros: 1 S per unit, nothing to scale)."""
        w_max = float(np.max(np.abs(weights))) if np.size(weights) else 0.0
        return (self.g_max - self.g_min) / w_max if w_max > 0 else 1.0

    def targets(self, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """(G⁺, G⁻, k): the pair of target conductances of every weight (rows × outputs, S)
        and the scale (S per weight unit)."""
        w = np.asarray(weights, dtype=float)
        k = self.scale(w)
        if self.low_power:
            g_plus = self.g_min + k * np.maximum(w, 0.0)
            g_minus = self.g_min + k * np.maximum(-w, 0.0)
        else:
            mid = (self.g_min + self.g_max) / 2.0
            g_plus, g_minus = mid + k * w / 2.0, mid - k * w / 2.0
        return g_plus, g_minus, k


def tile_cells(origin_row: int, origin_col: int, rows: int, outputs: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """The cells of a layer's tile, in the order of :func:`interleave` (row-major; in each
    row, output j's G⁺ then G⁻ on columns 2j, 2j + 1 from the origin)."""
    r, c = np.indices((rows, 2 * outputs))
    return (origin_row + r).ravel(), (origin_col + c).ravel()


def interleave(g_plus: np.ndarray, g_minus: np.ndarray) -> np.ndarray:
    """G⁺ and G⁻ (rows × outputs) as the tile's cells (rows × 2·outputs, flattened)."""
    rows, outputs = g_plus.shape
    out = np.empty((rows, 2 * outputs))
    out[:, 0::2], out[:, 1::2] = g_plus, g_minus
    return out.ravel()


def split(tile: np.ndarray, rows: int, outputs: int) -> tuple[np.ndarray, np.ndarray]:
    """The tile's values (flattened, :func:`tile_cells` order) as (G⁺, G⁻)."""
    t = np.asarray(tile, dtype=float).reshape(rows, 2 * outputs)
    return t[:, 0::2], t[:, 1::2]


def input_voltages(x: np.ndarray, v_in: float, v_floor: float) -> tuple[np.ndarray, int]:
    """Row voltages (V) of input vectors ``x`` (vectors × rows, |x| ≤ 1): x·v_in, and 0 where
    |x·v_in| is below the read floor ``v_floor``; and how many inputs were so zeroed."""
    v = np.asarray(x, dtype=float) * v_in
    small = (np.abs(v) < v_floor) & (v != 0.0)
    return np.where(small, 0.0, v), int(np.count_nonzero(small))


@dataclass(frozen=True)
class Products:
    """What a batch of products gave (vectors × outputs unless said)."""

    outputs: np.ndarray  # weight units: (I⁺ − I⁻) / (v_in · k)
    ideal: np.ndarray  # W·x, weight units
    current_plus: np.ndarray  # A, the G⁺ columns' currents
    current_minus: np.ndarray  # A, the G⁻ columns' currents
    power: np.ndarray  # W per vector: Σ |V·I| over the tile's devices
    inputs_zeroed: int  # inputs below the read floor, driven at 0 V


def products(cell_currents: np.ndarray, voltages: np.ndarray, weights: np.ndarray,
             x: np.ndarray, v_in: float, k: float, inputs_zeroed: int = 0) -> Products:
    """Column sums of each device's current (``cell_currents``: vectors × rows × 2·outputs, A,
    driven at ``voltages``: vectors × rows, V) as the layer's outputs, beside the ideal W·x."""
    currents = np.asarray(cell_currents, dtype=float)
    i_plus = currents[:, :, 0::2].sum(axis=1)
    i_minus = currents[:, :, 1::2].sum(axis=1)
    power = np.abs(np.asarray(voltages, dtype=float)[:, :, None] * currents).sum(axis=(1, 2))
    return Products(
        outputs=(i_plus - i_minus) / (v_in * k),
        ideal=np.asarray(x, dtype=float) @ np.asarray(weights, dtype=float),
        current_plus=i_plus,
        current_minus=i_minus,
        power=power,
        inputs_zeroed=inputs_zeroed,
    )


def efficiency(rows: int, outputs: int, power: np.ndarray, t_read: float) -> np.ndarray:
    """Operations per joule of each product: 2 · rows · outputs multiply-accumulates in t_read
    seconds at ``power`` watts (NaN at zero power)."""
    p = np.asarray(power, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, 2.0 * rows * outputs / (t_read * p), np.nan)

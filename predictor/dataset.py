"""Training data for the pulse predictor: simulated pulses, and the service's own log.

A *record* is one pulse: (G_before, V, width, G_after), plus what is known about the device. Two
sources produce the same :class:`Records`:

- :func:`simulate` drives many ``realistic`` simulated crossbars (device-to-device spread and
  cycle-to-cycle variation after every pulse): devices are cycled first so that their C2C random
  walk has spread, then every round sets each device to a random state across the window, fires
  one pulse of random polarity, random amplitude from the model's range and a width drawn
  log-uniformly over the range that matters for that amplitude and that device, and reads the
  result. Everything is vectorised over the array (one ``Crossbar.pulse`` call per round).
- :func:`predictor.log_records.load_export` reads the service's ``/export`` (CSV or JSON lines
  of operations, or the SQLite database itself) and pairs every pulse with the reads just before
  and after it on the same cell, so the same pipeline can fine-tune on measured devices.

No torch here: the runtime never needs it, and neither does this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from predictor import features as F
from sim_backend import Crossbar
from sim_backend.integrator import apply_pulses
from sim_backend.jart import N_HI, N_LO, DeviceParams, conductance, state_for_conductance

RECORD_FIELDS = ("g_before", "voltage", "width", "g_after", "latent", "device", "saturated")


@dataclass
class Records:
    """Pulses as parallel arrays (SI units). ``latent`` is NaN where unknown (measured data)."""

    g_before: np.ndarray
    voltage: np.ndarray
    width: np.ndarray
    g_after: np.ndarray
    latent: np.ndarray
    device: np.ndarray  # int64 device id (unique within a data set)
    saturated: np.ndarray  # bool: the pulse drove the device into a window bound
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.g_before.size)

    def take(self, mask: np.ndarray) -> Records:
        return Records(**{k: getattr(self, k)[mask] for k in RECORD_FIELDS}, info=dict(self.info))

    @staticmethod
    def concatenate(parts: list[Records]) -> Records:
        info = dict(parts[0].info) if parts else {}
        return Records(
            **{k: np.concatenate([getattr(p, k) for p in parts]) for k in RECORD_FIELDS},
            info=info,
        )

    def save(self, path: str | Path) -> None:
        np.savez_compressed(
            path, info=np.array(json.dumps(self.info)), **{k: getattr(self, k) for k in
                                                           RECORD_FIELDS}
        )

    @staticmethod
    def load(path: str | Path) -> Records:
        with np.load(path, allow_pickle=False) as data:
            return Records(**{k: data[k] for k in RECORD_FIELDS},
                           info=json.loads(str(data["info"])))

    def usable(self, min_relative_update: float = F.MIN_RELATIVE_UPDATE) -> np.ndarray:
        """Pulses that moved the device measurably in their own direction without saturating."""
        change = (self.g_after - self.g_before) * np.where(self.voltage < 0, 1.0, -1.0)
        return (
            (change > min_relative_update * self.g_before)
            & ~self.saturated
            & np.isfinite(self.g_after)
            & np.isfinite(self.g_before)
            & (self.width > 0)
        )

    def summary(self) -> dict:
        is_set = self.voltage < 0
        return {
            "records": len(self),
            "set": int(is_set.sum()),
            "reset": int((~is_set).sum()),
            "devices": int(np.unique(self.device).size),
            "g_before_range_S": [float(self.g_before.min()), float(self.g_before.max())],
            "g_after_range_S": [float(self.g_after.min()), float(self.g_after.max())],
            "width_range_s": [float(self.width.min()), float(self.width.max())],
            "voltage_range_V": [float(self.voltage.min()), float(self.voltage.max())],
        } | self.info


# ------------------------------------------------------------------------------- simulation


def switching_time_table(
    voltages: np.ndarray, latents: np.ndarray, *, iterations: int = 48
) -> np.ndarray:
    """Time (s) for a full switch at each (|V|, z), SET rows first, then RESET.

    SET: N_lo → 99 % of the way to N_hi in G; RESET: N_hi → 99 % of the way down. Nominal
    l_disc, r from z, C2C off. Returns an array of shape (2, len(voltages), len(latents)).
    """
    v = np.asarray(voltages, dtype=float)
    z = np.asarray(latents, dtype=float)
    out = np.empty((2, v.size, z.size))
    g_lo, g_hi = F.G_WINDOW_LO, F.G_WINDOW_HI
    for row, is_set in enumerate((True, False)):
        V, Z = np.meshgrid(v, z, indexing="ij")
        V = (-V if is_set else V).ravel()
        r = F.R_NOMINAL * (1.0 + F.R_SPAN * Z.ravel())
        params = DeviceParams(r=r)
        N0 = np.full(V.size, N_LO if is_set else N_HI)
        goal = g_lo + 0.99 * (g_hi - g_lo) if is_set else g_hi - 0.99 * (g_hi - g_lo)
        lo = np.full(V.size, -13.0)  # log10 s
        hi = np.full(V.size, 1.0)
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            N1, _ = apply_pulses(N0, V, 10.0**mid, params)
            g = conductance(N1)
            done = g >= goal if is_set else g <= goal
            hi = np.where(done, mid, hi)
            lo = np.where(done, lo, mid)
        out[row] = (10.0**hi).reshape(v.size, z.size)
    return out


@dataclass(frozen=True)
class SimulationConfig:
    """How :func:`simulate` samples pulses."""

    rows: int = 128
    cols: int = 128
    rounds: int = 24
    """Pulses per device (each from a freshly drawn state)."""
    burn_in_cycles: int = 4
    """Full SET/RESET cycles before recording, so the C2C walk of each device has spread."""
    width_decades_below: float = 5.0
    """Widths are drawn log-uniformly from t_full·10^-this ..."""
    width_decades_above: float = 0.3
    """... to t_full·10^this, t_full being the full-switch time at that |V| for that device."""
    start_at_bounds: float = 0.15
    """Fraction of pulses that start exactly at a window end (2/3 of them fully RESET, the state
    of a fresh array): the most common starting points in practice, and the steepest."""
    read_noise: float = 0.0


def simulate(seeds: list[int] | tuple[int, ...], config: SimulationConfig = SimulationConfig(),
             *, variability: str = "realistic", rng_seed: int = 0) -> Records:
    """Simulated pulse records from one ``realistic`` crossbar per seed (see module doc).

    ``seeds`` are crossbar seeds (they fix every device-to-device and cycle-to-cycle draw);
    ``rng_seed`` fixes the sampling of states, amplitudes and widths. Device ids are
    ``seed * rows * cols + cell``.
    """
    v_grid_set = np.linspace(F.SET_V_RANGE[0], F.SET_V_RANGE[1], 11)
    v_grid_reset = np.linspace(F.RESET_V_RANGE[0], F.RESET_V_RANGE[1], 11)
    z_grid = np.linspace(-1.2, 1.2, 9)
    t_set = np.log10(switching_time_table(v_grid_set, z_grid)[0])
    t_reset = np.log10(switching_time_table(v_grid_reset, z_grid)[1])

    parts = []
    for k, seed in enumerate(seeds):
        rng = np.random.default_rng([rng_seed, int(seed), k])
        xb = Crossbar(config.rows, config.cols, seed=int(seed), variability=variability,
                      read_noise=config.read_noise)
        n = xb.rows * xb.cols
        rows, cols = np.divmod(np.arange(n), xb.cols)
        for _ in range(config.burn_in_cycles):
            xb.pulse(rows, cols, -0.6, 1e-6)  # full SET for every device
            xb.pulse(rows, cols, 1.2, 1e-5)  # full RESET: a large C2C step of r and l_disc
        for _ in range(config.rounds):
            g0 = np.exp(rng.uniform(np.log(F.G_WINDOW_LO), np.log(F.G_WINDOW_HI), n))
            N0 = np.clip(state_for_conductance(g0), N_LO, N_HI)
            at_bound = rng.random(n) < config.start_at_bounds
            N0 = np.where(at_bound, np.where(rng.random(n) < 2 / 3, N_LO, N_HI), N0)
            xb.state = N0.reshape(xb.shape)
            g_before = xb.conductance_map().ravel()
            z = F.latent_from_radius(xb.device_params("now")["r"].ravel())
            is_set = rng.random(n) < 0.5
            v_mag = np.where(
                is_set,
                rng.uniform(*F.SET_V_RANGE, n),
                rng.uniform(*F.RESET_V_RANGE, n),
            )
            log_t = np.where(
                is_set,
                _interp2(t_set, v_grid_set, z_grid, v_mag, z),
                _interp2(t_reset, v_grid_reset, z_grid, v_mag, z),
            )
            log_w = log_t + rng.uniform(-config.width_decades_below,
                                        config.width_decades_above, n)
            width = np.clip(10.0**log_w, 1e-9, 0.1)
            voltage = np.where(is_set, -v_mag, v_mag)
            xb.pulse(rows, cols, voltage, width)
            N_after = xb.state.ravel()
            g_after = xb.conductance_map().ravel()
            if config.read_noise > 0:
                g_before = g_before * (1 + config.read_noise * rng.standard_normal(n))
                g_after = xb.read(rows, cols).ravel()
            saturated = (N_after >= N_HI * (1 - 1e-9)) | (N_after <= N_LO * (1 + 1e-9))
            parts.append(
                Records(g_before, voltage, width, g_after, z,
                        np.int64(seed) * n + np.arange(n, dtype=np.int64), saturated)
            )
    out = Records.concatenate(parts)
    out.info = {
        "source": "simulation",
        "variability": variability,
        "crossbar_seeds": [int(s) for s in seeds],
        "devices_per_seed": config.rows * config.cols,
        "pulses_per_device": config.rounds,
        "burn_in_cycles": config.burn_in_cycles,
        "start_states": f"log-uniform in G over the window; {config.start_at_bounds:g} of them "
        "exactly at a window end (2/3 fully RESET)",
        "sampling_seed": rng_seed,
        "read_noise": config.read_noise,
        "width_sampling": f"log-uniform in t_full(|V|, z)·[1e-{config.width_decades_below:g}, "
        f"1e{config.width_decades_above:g}], clipped to [1e-9, 0.1] s",
        "set_v_range": list(F.SET_V_RANGE),
        "reset_v_range": list(F.RESET_V_RANGE),
    }
    return out


def _interp2(table: np.ndarray, xs: np.ndarray, ys: np.ndarray, x: np.ndarray, y: np.ndarray
             ) -> np.ndarray:
    """Bilinear interpolation of table[i, j] = f(xs[i], ys[j]) at points (x, y) (clamped)."""
    x = np.clip(x, xs[0], xs[-1])
    y = np.clip(y, ys[0], ys[-1])
    i = np.clip(np.searchsorted(xs, x) - 1, 0, xs.size - 2)
    j = np.clip(np.searchsorted(ys, y) - 1, 0, ys.size - 2)
    tx = (x - xs[i]) / (xs[i + 1] - xs[i])
    ty = (y - ys[j]) / (ys[j + 1] - ys[j])
    return (
        table[i, j] * (1 - tx) * (1 - ty)
        + table[i + 1, j] * tx * (1 - ty)
        + table[i, j + 1] * (1 - tx) * ty
        + table[i + 1, j + 1] * tx * ty
    )

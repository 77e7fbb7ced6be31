"""A simulated crossbar of JART VCM v1b devices: read, pulse, state, save and load.

Sign convention: **SET (conductance rises) at negative voltage, RESET at positive voltage.**
Units: volts, seconds, siemens, amperes; the state N in 1e26 m^-3.

Every operation works on a batch of cells at once (parallel ``rows``/``cols`` arrays); nothing
loops over devices in Python. A Crossbar is not thread-safe: one owner drives it (the service
serialises access).

Randomness is seeded: the same seed and the same sequence of operations give the same results,
also across :meth:`Crossbar.save` / :meth:`Crossbar.load` (the generators' states are saved).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sim_backend import variability as var
from sim_backend.integrator import DEFAULT_TOL, IntegrationStats, integrate_pulses
from sim_backend.jart import (
    N_HI,
    N_LO,
    V_READ,
    V_RESET_MAX,
    V_SET_MIN,
    DeviceParams,
    current,
)
from sim_backend.population import Population, resolve_population

WIDTH_MIN = 1e-9
"""Shortest pulse the simulator accepts, s."""
WIDTH_MAX = 0.1
"""Longest pulse the simulator accepts, s."""
V_READ_MAX = 0.3
"""Largest |V| of a read: the simulator's reads never change a device, which holds at this level
(the emulated bench treats a longer source at a higher level as a disturbing pulse), V."""


@dataclass(frozen=True)
class SimulatorRanges:
    """What the simulator accepts — the one place these ranges are written (drivers check
    deployment limits against them): pulse voltages within the fitted model's validated range,
    widths, and reads that never disturb a device."""

    v_min: float = V_SET_MIN
    """Most negative pulse voltage, V."""
    v_max: float = V_RESET_MAX
    """Most positive pulse voltage, V."""
    width_min: float = WIDTH_MIN
    """Shortest pulse, s."""
    width_max: float = WIDTH_MAX
    """Longest pulse, s."""
    v_read_max: float = V_READ_MAX
    """Largest |V| of a read, V."""


RANGES = SimulatorRanges()
FILE_FORMAT = 1


class Crossbar:
    """``rows`` × ``cols`` simulated JART VCM v1b devices.

    Parameters
    ----------
    seed:
        Seeds device-to-device draws, stuck devices, cycle-to-cycle variation and read noise
        (independent streams).
    variability:
        ``"ideal"`` (nominal devices), ``"d2d"`` (device-to-device spread drawn at creation),
        ``"realistic"`` (D2D and cycle-to-cycle variation after every pulse), or a
        :class:`sim_backend.variability.Variability`. A population file with a
        ``[variability]`` section overrides it (the file describes its devices whole).
    population:
        The devices' population (:mod:`sim_backend.population`): a TOML file, a
        :class:`~sim_backend.population.Population`, or None for the JART nominal devices.
    read_noise:
        Relative standard deviation of the Gaussian noise on every read (e.g. 0.01 = 1 %).
    stuck_fraction:
        Fraction of devices stuck at the high or the low conductance bound (half each on
        average); they never move, whatever is pulsed or set.
    initial_N:
        Initial state of every device, 1e26 m^-3 (default: the low bound, fully RESET).
    tol:
        Local error tolerance of the pulse integrator (in ln N per step).
    """

    def __init__(
        self,
        rows: int,
        cols: int,
        *,
        seed: int = 0,
        variability: str | var.Variability = "ideal",
        read_noise: float = 0.0,
        stuck_fraction: float = 0.0,
        initial_N: float = N_LO,
        tol: float = DEFAULT_TOL,
        population: str | os.PathLike | Population | None = None,
    ):
        if int(rows) < 1 or int(cols) < 1:
            raise ValueError("rows, cols: an array needs at least one row and one column")
        if not (0.0 <= read_noise < 1.0):
            raise ValueError("read_noise: relative σ must be in [0, 1)")
        if not (0.0 <= stuck_fraction <= 1.0):
            raise ValueError("stuck_fraction: must be in [0, 1]")
        if not (N_LO <= initial_N <= N_HI):
            raise ValueError(f"initial_N: must be within [{N_LO}, {N_HI}] (1e26 m^-3)")
        if not (0.0 < tol < 1e-2):
            raise ValueError("tol: integrator tolerance must be in (0, 1e-2)")
        self.rows = int(rows)
        self.cols = int(cols)
        self.seed = int(seed)
        self.population = resolve_population(population)
        self.variability = self.population.variability or var.resolve(variability)
        self._const = self.population.constants
        self._bounds = var.bounds_for(self.population.centre.as_dict())
        self.read_noise = float(read_noise)
        self.stuck_fraction = float(stuck_fraction)
        self.tol = float(tol)
        n = self.rows * self.cols

        d2d_seq, stuck_seq, c2c_seq, read_seq = np.random.SeedSequence(self.seed).spawn(4)
        device = var.draw_d2d(n, self.variability.d2d_sigma, np.random.default_rng(d2d_seq),
                              self.population.centre.as_dict(), self._bounds)
        self._device = {k: np.asarray(getattr(device, k), dtype=float) for k in var.PARAMETERS}
        self._now = {k: v.copy() for k, v in self._device.items()}

        stuck_rng = np.random.default_rng(stuck_seq)
        self._stuck = stuck_rng.random(n) < self.stuck_fraction
        high = stuck_rng.random(n) < 0.5
        self._stuck_N = np.where(high, N_HI, N_LO)

        self._c2c_rng = np.random.default_rng(c2c_seq)
        self._read_rng = np.random.default_rng(read_seq)

        self._N = np.full(n, float(initial_N))
        self._N[self._stuck] = self._stuck_N[self._stuck]
        self.pulse_count = np.zeros(n, dtype=np.int64)
        self.last_stats = IntegrationStats(0, 0)

    # ----------------------------------------------------------------------------- geometry
    @property
    def shape(self) -> tuple[int, int]:
        return (self.rows, self.cols)

    def _flat_index(self, rows, cols) -> tuple[np.ndarray, tuple[int, ...]]:
        # A safety net of the physics' own (it sits below drivers): requests are checked by
        # drivers.cells.check_cells before they get here.
        r, c = np.broadcast_arrays(np.asarray(rows), np.asarray(cols))
        if r.size and not (np.issubdtype(r.dtype, np.integer) and np.issubdtype(c.dtype,
                                                                                  np.integer)):
            raise ValueError("rows, cols: cell indices must be integers")
        if np.any((r < 0) | (r >= self.rows)):
            raise IndexError(f"rows: a row index is outside 0 … {self.rows - 1}")
        if np.any((c < 0) | (c >= self.cols)):
            raise IndexError(f"cols: a column index is outside 0 … {self.cols - 1}")
        # In intp before the arithmetic: small integer types (uint8 masks) would wrap around.
        return (r.astype(np.intp) * self.cols + c.astype(np.intp)).ravel(), r.shape

    # -------------------------------------------------------------------------------- state
    @property
    def state(self) -> np.ndarray:
        """N of every device as a (rows, cols) array (a copy), 1e26 m^-3."""
        return self._N.reshape(self.shape).copy()

    @state.setter
    def state(self, value) -> None:
        N = np.broadcast_to(np.asarray(value, dtype=float), self.shape).ravel()
        if not np.all(np.isfinite(N)) or np.any((N < N_LO) | (N > N_HI)):
            raise ValueError(f"state: N must be within [{N_LO}, {N_HI}] (1e26 m^-3)")
        self._N = np.where(self._stuck, self._stuck_N, N)

    @property
    def stuck(self) -> np.ndarray:
        """True for stuck devices, (rows, cols)."""
        return self._stuck.reshape(self.shape).copy()

    def device_params(self, which: str = "now") -> dict[str, np.ndarray]:
        """Device parameters as (rows, cols) arrays: ``"now"`` (after C2C) or ``"device"`` (D2D)."""
        source = {"now": self._now, "device": self._device}[which]
        return {k: v.reshape(self.shape).copy() for k, v in source.items()}

    # -------------------------------------------------------------------------------- reads
    def read_current(self, rows, cols, v_read: float = V_READ) -> np.ndarray:
        """Current (A) of each cell at ``v_read`` (V), with read noise. Never changes N."""
        v_read = _check_read_voltage(v_read)
        index, shape = self._flat_index(rows, cols)
        I = current(self._N[index], v_read)
        if self.read_noise > 0.0:
            I = I * (1.0 + self.read_noise * self._read_rng.standard_normal(index.size))
        return I.reshape(shape)

    def read_currents(self, rows, cols, voltages) -> np.ndarray:
        """Current (A) of each cell at its own voltage (V, non-zero, within the read range),
        with read noise: each device's nonlinear I(V, N). Never changes N."""
        voltages = np.asarray(voltages, dtype=float)
        for v in (voltages.min(initial=V_READ), voltages.max(initial=V_READ)):
            _check_read_voltage(float(v))
        if np.any(voltages == 0.0):
            raise ValueError("voltages: a read voltage must be non-zero")
        index, shape = self._flat_index(rows, cols)
        I = current(self._N[index], voltages.ravel())
        if self.read_noise > 0.0:
            I = I * (1.0 + self.read_noise * self._read_rng.standard_normal(index.size))
        return I.reshape(shape)

    def read(self, rows, cols, v_read: float = V_READ) -> np.ndarray:
        """Conductance I / v_read (S) of each cell, with read noise. Never changes N."""
        return self.read_current(rows, cols, v_read) / v_read

    def conductance_map(self, v_read: float = V_READ) -> np.ndarray:
        """Noise-free conductance (S) of every device, (rows, cols): the simulator's truth."""
        v_read = _check_read_voltage(v_read)
        return (current(self._N, v_read) / v_read).reshape(self.shape)

    # ------------------------------------------------------------------------------- pulses
    def pulse(self, rows, cols, voltage, width) -> np.ndarray:
        """One rectangular pulse per cell: ``voltage`` (V) for ``width`` (s), broadcast; the
        energy each pulse delivered to its device, E = ∫ V·I(V, N(t)) dt in J (flattened, in the
        order of the cells; :func:`sim_backend.integrator.integrate_pulses`).

        SET at negative voltage, RESET at positive. Raises ValueError (nothing applied) for a
        voltage outside [-0.9, +1.3] V (the range the fitted current is validated for), a width
        outside [1e-9, 0.1] s, or a cell named twice in one call.
        """
        r, c, V, W = np.broadcast_arrays(
            np.asarray(rows), np.asarray(cols), np.asarray(voltage, dtype=float),
            np.asarray(width, dtype=float),
        )
        index, _ = self._flat_index(r, c)
        V = V.ravel()
        W = W.ravel()
        if not np.all(np.isfinite(V)) or np.any((V < V_SET_MIN) | (V > V_RESET_MAX)):
            raise ValueError(
                f"voltage: must be within [{V_SET_MIN}, {V_RESET_MAX}] V, the validated range "
                "of the JART v1b current fit"
            )
        if not np.all(np.isfinite(W)) or np.any((W < WIDTH_MIN) | (W > WIDTH_MAX)):
            raise ValueError(f"width: must be within [{WIDTH_MIN}, {WIDTH_MAX}] s")
        if np.unique(index).size != index.size:
            raise ValueError("rows, cols: a cell appears twice in one pulse call")
        if index.size == 0:
            return np.zeros(0)

        moving = ~self._stuck[index]
        where = np.flatnonzero(moving)
        energy = np.zeros(index.size)
        if where.size < index.size:  # a stuck device does not move, but it conducts
            stuck = ~moving
            energy[stuck] = V[stuck] * current(self._N[index[stuck]], V[stuck]) * W[stuck]
        index, V, W = index[moving], V[moving], W[moving]
        N_before = self._N[index]
        params = DeviceParams(**{k: v[index] for k, v in self._now.items()})
        outcome = integrate_pulses(N_before, V, W, params, tol=self.tol, const=self._const)
        N_after, self.last_stats = outcome.N, outcome.stats
        energy[where] = outcome.energy
        self._N[index] = N_after
        self.pulse_count[index] += 1

        fired = V != 0.0
        if self.variability.c2c and np.any(fired):
            idx = index[fired]
            updated = var.c2c_update(
                DeviceParams(**{k: v[idx] for k, v in self._now.items()}),
                DeviceParams(**{k: v[idx] for k, v in self._device.items()}),
                N_before[fired],
                N_after[fired],
                V[fired] < 0,
                self._c2c_rng,
                self._bounds,
            )
            for k in var.PARAMETERS:
                self._now[k][idx] = getattr(updated, k)
        return energy

    # ------------------------------------------------------------------------ save and load
    def save(self, path: str | os.PathLike) -> None:
        """Write the whole array (state, parameters, generators) to an ``.npz`` file.

        Written to a temporary file and renamed, so a crash never leaves half a file.
        """
        path = Path(path)
        meta = {
            "format": FILE_FORMAT,
            "rows": self.rows,
            "cols": self.cols,
            "seed": self.seed,
            "variability": asdict(self.variability),
            "read_noise": self.read_noise,
            "stuck_fraction": self.stuck_fraction,
            "tol": self.tol,
            "population": self.population.to_dict(),
            "c2c_rng": self._c2c_rng.bit_generator.state,
            "read_rng": self._read_rng.bit_generator.state,
        }
        arrays = {f"device_{k}": v for k, v in self._device.items()}
        arrays |= {f"now_{k}": v for k, v in self._now.items()}
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                meta=np.array(json.dumps(meta)),
                N=self._N,
                stuck=self._stuck,
                stuck_N=self._stuck_N,
                pulse_count=self.pulse_count,
                **arrays,  # type: ignore[arg-type]  # numpy's stub types **kwds too narrowly
            )
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Crossbar:
        """Restore an array written by :meth:`save`; it continues exactly where it left off."""
        with np.load(Path(path), allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta.get("format") != FILE_FORMAT:
                raise ValueError(f"{path}: unknown crossbar file format {meta.get('format')!r}")
            xb = cls(
                meta["rows"],
                meta["cols"],
                seed=meta["seed"],
                variability=var.Variability(**meta["variability"]),
                read_noise=meta["read_noise"],
                stuck_fraction=meta["stuck_fraction"],
                tol=meta["tol"],
                population=Population.from_dict(meta["population"])
                if "population" in meta else None,
            )
            n = xb.rows * xb.cols
            xb._N = np.array(data["N"], dtype=float)
            xb._stuck = np.array(data["stuck"], dtype=bool)
            xb._stuck_N = np.array(data["stuck_N"], dtype=float)
            xb.pulse_count = np.array(data["pulse_count"], dtype=np.int64)
            xb._device = {k: np.array(data[f"device_{k}"], dtype=float) for k in var.PARAMETERS}
            xb._now = {k: np.array(data[f"now_{k}"], dtype=float) for k in var.PARAMETERS}
        # A corrupted or hand-edited file must not load: a NaN state or a wrongly sized array
        # would surface later, in the middle of a pulse (half applied).
        arrays = {"N": xb._N, "stuck": xb._stuck, "stuck_N": xb._stuck_N,
                  "pulse_count": xb.pulse_count,
                  **{f"device_{k}": v for k, v in xb._device.items()},
                  **{f"now_{k}": v for k, v in xb._now.items()}}
        for name, a in arrays.items():
            if a.shape != (n,):
                raise ValueError(f"{path}: {name} has shape {a.shape}, expected ({n},)")
        if not np.all(np.isfinite(xb._N) & (xb._N >= N_LO) & (xb._N <= N_HI)):
            raise ValueError(f"{path}: a device state N is not finite or outside [{N_LO}, {N_HI}]")
        for k in var.PARAMETERS:
            lo, hi = xb._bounds[k]
            for name, a in ((f"device_{k}", xb._device[k]), (f"now_{k}", xb._now[k])):
                if not np.all(np.isfinite(a) & (a >= lo * (1 - 1e-12)) & (a <= hi * (1 + 1e-12))):
                    raise ValueError(f"{path}: {name} is not finite or outside [{lo}, {hi}]")
        xb._c2c_rng.bit_generator.state = meta["c2c_rng"]
        xb._read_rng.bit_generator.state = meta["read_rng"]
        return xb

    def __repr__(self) -> str:
        name = var.preset_name(self.variability) or repr(self.variability)
        population = "" if self.population.is_nominal else \
            f", population={self.population.name!r}"
        return (
            f"Crossbar({self.rows}, {self.cols}, seed={self.seed}, variability={name!r}, "
            f"read_noise={self.read_noise}, stuck_fraction={self.stuck_fraction}{population})"
        )


def _check_read_voltage(v_read: float) -> float:
    v_read = float(v_read)
    if not np.isfinite(v_read) or v_read == 0.0 or not (V_SET_MIN <= v_read <= V_RESET_MAX):
        raise ValueError(f"v_read: must be non-zero and within [{V_SET_MIN}, {V_RESET_MAX}] V")
    return v_read

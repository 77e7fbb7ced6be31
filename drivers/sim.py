"""The simulated backend: :class:`drivers.base.Backend` over ``sim_backend.Crossbar``.

The crossbar has no instruments, so the two things a bench adds are emulated here: the read
current compliance (a current beyond ``limits.compliance`` is clipped and flagged, as an SMU in
compliance reports its limit) and the safety limits (checked before the crossbar is touched).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from drivers.base import (
    Backend,
    BackendInfo,
    Limits,
    ReadResult,
    check_pulse,
    check_read,
)
from drivers.cells import check_cells
from sim_backend import RANGES


def check_limits_within_simulator(limits: Limits) -> None:
    """Refuse limits the simulator could not honour (rejected at start, never clamped)."""
    problems = []
    if limits.v_set_max > -RANGES.v_min:
        problems.append(f"v_set_max {limits.v_set_max} V > simulator's {-RANGES.v_min} V")
    if limits.v_reset_max > RANGES.v_max:
        problems.append(f"v_reset_max {limits.v_reset_max} V > simulator's {RANGES.v_max} V")
    if limits.width_min < RANGES.width_min:
        problems.append(f"width_min {limits.width_min} s < simulator's {RANGES.width_min} s")
    if limits.width_max > RANGES.width_max:
        problems.append(f"width_max {limits.width_max} s > simulator's {RANGES.width_max} s")
    if limits.v_read_max > RANGES.v_read_max:
        problems.append(f"v_read_max {limits.v_read_max} V > {RANGES.v_read_max} V, above which a "
                        "read would disturb the device (the simulator's reads never do)")
    if problems:
        raise ValueError("limits outside the simulator's range: " + "; ".join(problems))


class SimBackend(Backend):
    """A simulated crossbar of JART VCM v1b devices behind the backend contract."""

    def __init__(
        self,
        crossbar,  # sim_backend.Crossbar (untyped here so importing drivers stays light)
        limits: Limits | None = None,
        *,
        description: dict[str, object] | None = None,
        state_file: str | Path | None = None,
    ):
        self.crossbar = crossbar
        self.limits = limits if limits is not None else Limits()
        check_limits_within_simulator(self.limits)
        self._details = dict(description or {})
        self._state_file = Path(state_file) if state_file is not None else None

    @classmethod
    def create(
        cls,
        rows: int,
        cols: int,
        *,
        seed: int = 0,
        variability: str = "realistic",
        population: str | Path | None = None,
        read_noise: float = 0.0,
        stuck_fraction: float = 0.0,
        limits: Limits | None = None,
        state_file: str | Path | None = None,
    ) -> SimBackend:
        """A new array, or the one saved in ``state_file`` if that file exists."""
        from sim_backend import Crossbar
        from sim_backend.variability import preset_name

        if state_file is not None and Path(state_file).is_file():
            crossbar = Crossbar.load(state_file)
            if (crossbar.rows, crossbar.cols) != (rows, cols):
                raise ValueError(
                    f"state file {state_file} holds a {crossbar.rows}×{crossbar.cols} array, "
                    f"the configuration asks for {rows}×{cols}: match the configuration to it, "
                    "or move the file away to start a new array"
                )
            origin = f"loaded from {state_file}"
        else:
            crossbar = Crossbar(
                rows,
                cols,
                seed=seed,
                variability=variability,
                population=population,
                read_noise=read_noise,
                stuck_fraction=stuck_fraction,
            )
            origin = "new"
        # What the array is (a loaded one keeps the seed and variability it was made with).
        details = {
            "seed": crossbar.seed,
            "variability": preset_name(crossbar.variability) or repr(crossbar.variability),
            "population": crossbar.population.name,
            "read_noise": crossbar.read_noise,
            "stuck_fraction": crossbar.stuck_fraction,
            "origin": origin,
        }
        return cls(crossbar, limits, description=details, state_file=state_file)

    def describe(self) -> BackendInfo:
        variability = self._details.get("variability", "unknown")
        return BackendInfo(
            kind="simulated",
            rows=int(self.crossbar.rows),
            cols=int(self.crossbar.cols),
            limits=self.limits,
            instruments={
                "array": f"memprog simulated crossbar, JART VCM v1b, variability={variability}"
            },
            details=dict(self._details),
        )

    def read(self, rows: np.ndarray, cols: np.ndarray, v_read: float = 0.2) -> ReadResult:
        check_read(self.limits, v_read)
        rows, cols = self._cells(rows, cols)
        current = np.asarray(self.crossbar.read_current(rows, cols, v_read=v_read), dtype=float)
        # An SMU in compliance reports its limit, not the true current: emulate that.
        tripped = np.abs(current) > self.limits.compliance
        current = np.where(tripped, np.sign(current) * self.limits.compliance, current)
        return ReadResult(
            rows=rows,
            cols=cols,
            conductance=current / v_read,
            current=current,
            v_read=float(v_read),
            compliance=tripped,
        )

    def read_currents(self, rows: np.ndarray, cols: np.ndarray, voltages: np.ndarray
                      ) -> np.ndarray:
        """Every cell at its own voltage in one call: each device's nonlinear I(V, N) (the
        JART v1b current, with read noise), 0 A where V = 0; the compliance clips as a read."""
        rows, cols = np.asarray(rows).ravel(), np.asarray(cols).ravel()
        voltages = np.asarray(voltages, dtype=float).ravel()
        driven = voltages != 0.0
        magnitude = np.abs(voltages[driven])
        if magnitude.size:  # the smallest and the largest |V| within the read limits
            check_read(self.limits, float(magnitude.min()))
            check_read(self.limits, float(magnitude.max()))
        rows, cols = self._cells(rows, cols)
        current = np.zeros(voltages.size)
        current[driven] = self.crossbar.read_currents(rows[driven], cols[driven],
                                                      voltages[driven])
        return np.clip(current, -self.limits.compliance, self.limits.compliance)

    def pulse(
        self, rows: np.ndarray, cols: np.ndarray, voltage: np.ndarray, width: np.ndarray
    ) -> np.ndarray:
        """The pulses, and the energy each delivered (J: ∫ V·I dt, integrated with the state)."""
        rows, cols = self._cells(rows, cols)
        voltage = np.broadcast_to(np.asarray(voltage, dtype=float), rows.shape)
        width = np.broadcast_to(np.asarray(width, dtype=float), rows.shape)
        check_pulse(self.limits, voltage, width)
        return self.crossbar.pulse(rows, cols, voltage, width)

    def safe_state(self) -> None:
        """Nothing is energised between calls in a simulation."""

    def close(self) -> None:
        if self._state_file is not None:
            self._state_file.parent.mkdir(parents=True, exist_ok=True)
            self.crossbar.save(self._state_file)

    def _cells(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return check_cells(rows, cols, self.crossbar.rows, self.crossbar.cols)

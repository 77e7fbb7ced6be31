"""The emulated bench: three instruments wired to one simulated :class:`~sim_backend.Crossbar`.

The wiring is the bench configuration's: the matrix connects crossbar row ``i`` (line
``row_lines[i]``) and column ``j`` (line ``col_lines[j]``) to the instruments' HI and LO buses;
a device is connected to an instrument when its row line is closed to the instrument's HI bus and
its column line to the LO bus. Without a matrix the single device (0, 0) is wired to both.

Rules of the physics and of the integrity checks (violations are recorded, never raised):

* the SMU measures its routed devices at its level (sum of currents; none routed: 0 A and a
  ``smu_unrouted`` violation);
* a pulse reaches the devices routed to the pulser only with the pulser output on; none routed is
  a ``pulse_unrouted`` violation; a device also connected to the SMU whose output is on, or off in a
  mode other than high impedance, is shunted: it gets no pulse (``pulse_shunted``);
* both outputs on into one device: ``two_sources``; a pulse outside the device model's range:
  ``device_overstress`` (no state change).

The bench it emulates is described by a bench file, ``drivers/visa/bench.py``.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import asdict

import numpy as np

from drivers.visa.bench import BenchConfig
from drivers.visa.emulators.instrument import Violation
from drivers.visa.emulators.keithley707b import Keithley707BEmulator
from drivers.visa.emulators.keithley2450 import Keithley2450Emulator
from drivers.visa.emulators.keysight33500b import Keysight33500BEmulator

MAX_VIOLATIONS = 1000
READ_DISTURB_FREE = 0.3
"""|V| up to which sourcing a read level leaves the device state alone (device-model.md), V."""


class EmulatedBench:
    """Shared state of the emulated instruments; every access holds :attr:`lock`."""

    def __init__(self, config: BenchConfig, crossbar=None):
        self.config = config
        if crossbar is None:
            from sim_backend import Crossbar

            em = config.emulator
            crossbar = Crossbar(
                config.rows, config.cols, seed=em.seed, variability=em.variability,
                read_noise=em.read_noise, stuck_fraction=em.stuck_fraction,
                population=em.population,
            )
        if crossbar.rows < config.rows or crossbar.cols < config.cols:
            raise ValueError(
                f"crossbar {crossbar.rows}x{crossbar.cols} smaller than the bench "
                f"{config.rows}x{config.cols}"
            )
        self.crossbar = crossbar
        self.lock = threading.RLock()
        self.violations: list[Violation] = []
        self.violation_count = 0
        self.pulse_counts = np.zeros((config.rows, config.cols), dtype=np.int64)
        self.read_counts = np.zeros((config.rows, config.cols), dtype=np.int64)
        self.pulse_log: deque[tuple[int, int, float, float]] = deque(maxlen=10_000)
        """(row, col, device voltage V, width s) of the last pulses delivered."""
        self.smu = Keithley2450Emulator(self)
        self.pulser = Keysight33500BEmulator(self)
        self.matrix: Keithley707BEmulator | None = (
            Keithley707BEmulator(self) if config.matrix else None)

    def instruments(self) -> dict:
        out: dict[str, object] = {"smu": self.smu, "pulser": self.pulser}
        if self.matrix is not None:
            out["matrix"] = self.matrix
        return out

    def matrix_slots(self) -> list[int]:
        m = self.config.matrix
        if m is None:
            return [1]
        return sorted({int(line[0]) for line in (*m.row_lines, *m.col_lines)})

    # -- violations -------------------------------------------------------------------------------

    def record(self, v: Violation) -> None:
        self.violation_count += 1
        if len(self.violations) < MAX_VIOLATIONS:
            self.violations.append(v)

    # -- wiring -----------------------------------------------------------------------------------

    def routed(self, role: str) -> list[tuple[int, int]]:
        """Devices connected to ``role``'s terminals (``smu`` or ``pulser``)."""
        m = self.config.matrix
        if m is None:
            return [(0, 0)]
        closed = self.matrix.closed  # type: ignore[union-attr]
        hi, lo = (m.smu_hi, m.smu_lo) if role == "smu" else (m.pulser_hi, m.pulser_lo)
        rows = [i for i, line in enumerate(m.row_lines) if f"{line[0]}{hi}{line[1:]}" in closed]
        cols = [j for j, line in enumerate(m.col_lines) if f"{line[0]}{lo}{line[1:]}" in closed]
        return [(r, c) for r in rows for c in cols]

    def check_sources(self, turned_on: str) -> None:
        """Called when an output goes on: two sources into one device is a violation."""
        if self.smu.output and self.pulser.output:
            shared = set(self.routed("smu")) & set(self.routed("pulser"))
            if shared:
                inst = self.smu if turned_on == "smu" else self.pulser
                inst.violation("two_sources", f"SMU and pulser outputs on into {sorted(shared)}")

    # -- physics ----------------------------------------------------------------------------------

    def measure_routed(self, level: float, duration: float) -> float | None:
        """Current (A) the SMU sees at ``level`` V after sourcing it for ``duration`` s.

        Beyond ±0.3 V a read is not harmless: the level acts on the devices like a pulse of the
        integration time before the current is taken. None if the device model refuses.
        """
        devices = self.routed("smu")
        if not devices:
            if self.config.matrix is not None:
                self.smu.violation("smu_unrouted", "SMU measured with no device routed to it")
            return 0.0
        if level == 0.0:
            return 0.0
        rows = np.array([d[0] for d in devices])
        cols = np.array([d[1] for d in devices])
        try:
            if abs(level) > READ_DISTURB_FREE:
                # In equal parts of at most 100 ms (the model's longest pulse); a count, not a
                # running float remainder, so a 0.4 s read is 4 parts, not 4 and a 1 ns sliver
                # (each part is a cycle of the device's cycle-to-cycle variation).
                parts = max(1, math.ceil(duration / 0.1 - 1e-9))
                for _ in range(parts):
                    self.crossbar.pulse(rows, cols, level, max(duration / parts, 1e-9))
            current = np.asarray(self.crossbar.read_current(rows, cols, v_read=level), float)
        except ValueError as e:
            self.smu.violation("device_overstress", f"read at {level:g} V refused: {e}")
            return None
        self.read_counts[rows, cols] += 1
        return float(np.sum(current))

    def deliver_pulse(self, voltage: float, width: float, count: int) -> bool:
        """Fire ``count`` pulses of ``voltage`` (V at the device) and ``width`` (s)."""
        devices = self.routed("pulser")
        if not devices:
            if self.config.matrix is not None:
                self.pulser.violation("pulse_unrouted", "pulse fired with no device routed")
            return False
        shunted = set()
        if self.smu.output or self.smu.off_mode != "HIMP":
            shunted = set(devices) & set(self.routed("smu"))
        if shunted:
            self.pulser.violation(
                "pulse_shunted",
                f"{sorted(shunted)} shunted by the SMU (output "
                f"{'on' if self.smu.output else 'off in ' + self.smu.off_mode + ' mode'})",
            )
        targets = [d for d in devices if d not in shunted]
        if not targets:
            return False
        rows = np.array([d[0] for d in targets])
        cols = np.array([d[1] for d in targets])
        for _ in range(count):
            try:
                self.crossbar.pulse(rows, cols, voltage, width)
            except ValueError as e:
                self.pulser.violation("device_overstress", f"{voltage:g} V, {width:g} s: {e}")
                return False
            self.pulse_counts[rows, cols] += 1
            for r, c in targets:
                self.pulse_log.append((r, c, voltage, width))
        return True

    # -- state for tests --------------------------------------------------------------------------

    def snapshot(self) -> dict:
        with self.lock:
            return {
                "instruments": {role: inst.snapshot() for role, inst in self.instruments().items()},
                "outputs_on": [r for r, i in (("smu", self.smu), ("pulser", self.pulser))
                               if i.output],
                "routed": {"smu": self.routed("smu"), "pulser": self.routed("pulser")},
                "violations": [asdict(v) for v in self.violations],
                "violation_count": self.violation_count,
                "pulses": int(self.pulse_counts.sum()),
                "reads": int(self.read_counts.sum()),
            }

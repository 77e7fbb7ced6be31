"""The backend contract: one interface for the simulated crossbar and for a real bench.

Every operation works on a *batch* of cells given as parallel integer arrays ``rows`` and
``cols``. A backend is owned by exactly one caller at a time (the service serialises access),
but implementations must still expect to be slow (a real read takes milliseconds), serial
(a bench addresses one device at a time through a switch matrix) and failing (timeouts, dropped
connections): they raise :class:`BackendUnavailable` for transient I/O trouble and leave the
hardware in its safe state.

Units are SI throughout: volts, seconds, siemens, amperes.

Sign convention (JART VCM): SET (conductance rises) at negative voltage, RESET at positive.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

BackendKind = Literal["simulated", "hardware"]


class BackendError(RuntimeError):
    """A backend operation failed; the backend has been put into its safe state.

    For a failed pulse batch, ``completed`` says how many pulses of the batch (in the order
    given) were fired before the failure, and ``uncertain`` that the next one may have been
    fired too (its trigger went out but no confirmation came back). The caller records them.
    """

    completed: int = 0
    uncertain: bool = False


class BackendUnavailable(BackendError):
    """Transient I/O trouble (timeout, dropped connection) that outlasted the retries."""


class LimitError(ValueError):
    """A request exceeds a safety limit. Raised before any I/O: nothing was fired.

    ``field`` names the offending request field, ``limit`` the limit it broke.
    """

    def __init__(self, field: str, message: str, limit: float | None = None):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.limit = limit
        self.message = message


@dataclass(frozen=True)
class Limits:
    """Per-deployment hard safety limits. Requests beyond them are rejected, never clamped."""

    v_set_max: float = 0.9
    """Largest |V| of a SET (negative) pulse, V."""
    v_reset_max: float = 1.3
    """Largest V of a RESET (positive) pulse, V."""
    width_min: float = 1e-9
    """Shortest pulse width, s."""
    width_max: float = 0.1
    """Longest pulse width, s."""
    v_read_min: float = 0.05
    """Smallest |V| of a read, V: below it the read current sinks into the SMU's noise (at
    1e-30 V every cell reads 0 S), and a strategy would program towards a meaningless figure."""
    v_read_max: float = 0.3
    """Largest |V| of a read, V (a read must not disturb the state)."""
    compliance: float = 1e-3
    """Current compliance of reads, A."""


@dataclass(frozen=True)
class BackendInfo:
    """What a backend is: simulated or hardware, its geometry, instruments and limits."""

    kind: BackendKind
    rows: int
    cols: int
    limits: Limits
    instruments: dict[str, str] = field(default_factory=dict)
    """Instrument role → identity string (``*IDN?`` answer, or the simulator's description)."""
    details: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class ReadResult:
    """One read of a batch of cells, parallel arrays of equal length."""

    rows: np.ndarray
    cols: np.ndarray
    conductance: np.ndarray
    """I / V_read, S."""
    current: np.ndarray
    """Measured current, A."""
    v_read: float
    """Read voltage, V."""
    compliance: np.ndarray
    """True where the current compliance tripped (the reading is then clipped, not trusted)."""


def stricter(a: Limits, b: Limits) -> Limits:
    """The limits that satisfy both ``a`` and ``b``."""
    return Limits(
        v_set_max=min(a.v_set_max, b.v_set_max),
        v_reset_max=min(a.v_reset_max, b.v_reset_max),
        width_min=max(a.width_min, b.width_min),
        width_max=min(a.width_max, b.width_max),
        v_read_min=max(a.v_read_min, b.v_read_min),
        v_read_max=min(a.v_read_max, b.v_read_max),
        compliance=min(a.compliance, b.compliance),
    )


def check_pulse(limits: Limits, voltage: np.ndarray, width: np.ndarray) -> None:
    """Reject pulses beyond the limits (before any I/O). Raises :class:`LimitError`."""
    voltage = np.asarray(voltage, dtype=float)
    width = np.asarray(width, dtype=float)
    if not np.all(np.isfinite(voltage)):
        raise LimitError("voltage", "must be a finite number of volts")
    if not np.all(np.isfinite(width)):
        raise LimitError("width", "must be a finite number of seconds")
    if np.any(voltage < -limits.v_set_max):
        raise LimitError(
            "voltage",
            f"SET pulse below -{limits.v_set_max} V (limit v_set_max = {limits.v_set_max} V)",
            limits.v_set_max,
        )
    if np.any(voltage > limits.v_reset_max):
        raise LimitError(
            "voltage",
            f"RESET pulse above {limits.v_reset_max} V "
            f"(limit v_reset_max = {limits.v_reset_max} V)",
            limits.v_reset_max,
        )
    if np.any(width < limits.width_min):
        raise LimitError(
            "width",
            f"pulse shorter than width_min = {limits.width_min} s",
            limits.width_min,
        )
    if np.any(width > limits.width_max):
        raise LimitError(
            "width",
            f"pulse longer than width_max = {limits.width_max} s",
            limits.width_max,
        )


def check_read(limits: Limits, v_read: float) -> None:
    """Reject a read voltage outside v_read_min ≤ |v_read| ≤ v_read_max. Raises
    :class:`LimitError`."""
    if not np.isfinite(v_read) or v_read == 0.0:
        raise LimitError("v_read", "must be a finite, non-zero number of volts")
    if abs(v_read) < limits.v_read_min:
        raise LimitError(
            "v_read",
            f"|v_read| below v_read_min = {limits.v_read_min} V (too small a read current "
            "to measure)",
            limits.v_read_min,
        )
    if abs(v_read) > limits.v_read_max:
        raise LimitError(
            "v_read",
            f"|v_read| above v_read_max = {limits.v_read_max} V",
            limits.v_read_max,
        )


class Backend(ABC):
    """A crossbar that can be read and pulsed, simulated or real."""

    @abstractmethod
    def describe(self) -> BackendInfo:
        """Kind, geometry, instrument identities and limits."""

    @abstractmethod
    def read(self, rows: np.ndarray, cols: np.ndarray, v_read: float = 0.2) -> ReadResult:
        """Read the cells at ``v_read`` (V). Never changes the device state."""

    @abstractmethod
    def pulse(
        self, rows: np.ndarray, cols: np.ndarray, voltage: np.ndarray, width: np.ndarray
    ) -> np.ndarray | None:
        """Fire one rectangular pulse per cell: ``voltage`` (V) for ``width`` (s), per cell;
        the energy each pulse delivered to its device (J, in the order of the cells) when the
        backend knows it (the simulator integrates ∫ V·I dt), else None (a bench: the service
        estimates it from the reads around the pulse).

        Implementations call :func:`check_pulse` before any I/O.
        """

    def read_currents(self, rows: np.ndarray, cols: np.ndarray, voltages: np.ndarray
                      ) -> np.ndarray:
        """The current (A) of each cell at its own read voltage (V; 0: the cell is not driven
        and carries no current), what a column of a crossbar sums when its rows are driven at
        those voltages: a layer's product (:mod:`programming.layers`). Reads only, nothing is
        recorded. Every non-zero |V| must lie within the read limits (:func:`check_read`).

        The default reads the cells one voltage at a time (a bench: cell by cell through the
        matrix, by superposition); the simulator does them all at once."""
        rows, cols = np.asarray(rows).ravel(), np.asarray(cols).ravel()
        voltages = np.asarray(voltages, dtype=float).ravel()
        out = np.zeros(voltages.size)
        for v in np.unique(voltages[voltages != 0.0]):
            chosen = voltages == v
            out[chosen] = self.read(rows[chosen], cols[chosen], float(v)).current
        return out

    @abstractmethod
    def safe_state(self) -> None:
        """0 V, outputs off, switch matrix open. Must not raise for a backend already safe."""

    def emergency_stop(self) -> None:
        """Outputs off and safe state *now*: called from another thread while an operation may
        be running on the owner's thread (the service's ``POST /emergency-stop``).

        The default is :meth:`safe_state`. A backend whose operations loop over cells (a bench
        pulsing a batch one cell at a time) should also make the running operation stop before
        its next pulse (raising :class:`BackendError`) and must not wait for it to end.
        """
        self.safe_state()

    def close(self) -> None:
        """Release resources; leaves the hardware in its safe state."""
        self.safe_state()

"""``VisaBackend``: the real bench behind the :class:`drivers.base.Backend` contract.

Composes a Keithley 2450 (reads), a Keysight 33500B (pulses) and an optional Keithley 707B
(routing) from a :class:`~drivers.visa.bench.BenchConfig`. Every request is checked against the
limits and the instruments' ranges before any I/O. Operations are serialised (one operation at a
time, each instrument with its own owner and lock); any failure puts the bench into its safe
state (0 V, outputs off, matrix open) before the error is raised.

The safe state is sent to every instrument at once, each on its own thread, the matrix's first
(opening it is what disconnects the device): an instrument that hangs delays none of the others.
The emergency stop gives each instrument one attempt within the bench's budget
(``[emergency_stop] budget``) and returns by then, naming the instruments that did not confirm.

SCPI round trips per cell: a read is one (plus one matrix switch if the route changes), a pulse
with an unchanged shape is one (plus the switch), a changed shape adds one. With ``routing =
"shared"`` or without a matrix a pulse-and-verify cycle on one cell costs two round trips.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Any, Literal

import numpy as np

from drivers.base import (
    Backend,
    BackendError,
    BackendInfo,
    BackendUnavailable,
    LimitError,
    ReadResult,
    check_pulse,
    check_read,
)
from drivers.cells import check_cells
from drivers.visa.bench import BenchConfig
from drivers.visa.keithley707b import Keithley707B
from drivers.visa.keithley2450 import Keithley2450
from drivers.visa.keysight33500b import Keysight33500B, check_pulse_shape
from drivers.visa.scpi import InstrumentError
from drivers.visa.transport import Instrument, Session

log = logging.getLogger("memprog.visa")

ESTOP_GRACE = 0.2
"""s the emergency stop waits beyond its budget for the instruments' threads, which end by the
budget themselves (lock waits and I/O timeouts are cut to it)."""


class VisaBackend(Backend):
    """A crossbar on a real (or emulated) bench of VISA instruments."""

    def __init__(self, config: BenchConfig):
        self.config = config
        self.limits = config.limits.to_limits()
        self.smu_driver = Keithley2450(config.smu, self.limits.compliance)
        self.pulser_driver = Keysight33500B(config.pulser)
        self.matrix_driver = Keithley707B(config.matrix) if config.matrix else None
        self.instruments: dict[str, Instrument] = {}
        try:
            self.instruments["smu"] = Instrument(
                "smu", config.smu, config.retry, self.smu_driver.on_connect
            )
            self.instruments["pulser"] = Instrument(
                "pulser", config.pulser, config.retry, self.pulser_driver.on_connect
            )
            if self.matrix_driver is not None and config.matrix is not None:
                self.instruments["matrix"] = Instrument(
                    "matrix", config.matrix, config.retry, self.matrix_driver.on_connect
                )
        except BaseException:
            for inst in self.instruments.values():
                inst.close()
            raise
        self._op_lock = threading.RLock()
        self._closed = False
        # Bumped by emergency_stop(); an operation that began under an older value stops before
        # its next route, read or pulse (see _check_stop).
        self._stop_generation = 0

    # -- statistics -----------------------------------------------------------------------------

    @property
    def round_trips(self) -> int:
        """SCPI round trips (replies waited for) over all instruments since start."""
        return sum(inst.stats.round_trips for inst in self.instruments.values())

    def io_stats(self) -> dict[str, dict[str, int]]:
        return {role: inst.stats.snapshot() for role, inst in self.instruments.items()}

    # -- the contract -----------------------------------------------------------------------------

    def connect(self) -> None:
        """Connect to every instrument (configure it, make it safe); BackendUnavailable if not."""
        with self._op_lock:
            self._check_open()

    def describe(self) -> BackendInfo:
        self.connect()
        drivers: dict[str, Any] = {"smu": self.smu_driver, "pulser": self.pulser_driver,
                                   "matrix": self.matrix_driver}
        return BackendInfo(
            kind="hardware",
            rows=self.config.rows,
            cols=self.config.cols,
            limits=self.limits,
            instruments={role: drivers[role].idn for role in self.instruments},
            details={
                "bench": self.config.name,
                "routing": self.config.matrix.routing if self.config.matrix else "none",
                "resources": {r: i.config.resource for r, i in self.instruments.items()},
                "io": self.io_stats(),
            },
        )

    def read(self, rows: np.ndarray, cols: np.ndarray, v_read: float = 0.2) -> ReadResult:
        v_read = float(v_read)
        check_read(self.limits, v_read)
        r_arr, c_arr = self._cells(rows, cols)
        current = np.zeros(r_arr.shape, dtype=float)
        tripped = np.zeros(r_arr.shape, dtype=bool)
        smu = self.instruments["smu"]
        generation = self._stop_generation
        stopped = self._stopped(generation)
        with self._op_lock:
            try:
                self._check_open()
                for k, (r, c) in enumerate(zip(r_arr.tolist(), c_arr.tolist(), strict=True)):
                    self._check_stop(generation)
                    self._route(r, c, "smu", stopped)
                    current[k], tripped[k] = smu.run(
                        lambda s: self._measure(s, v_read, generation),
                        what=f"read of ({r}, {c})", abort=stopped,
                    )
            except BaseException as e:
                err = self._fail(e)
                if err is e:
                    raise
                raise err from e
        return ReadResult(
            rows=r_arr, cols=c_arr, conductance=current / v_read, current=current,
            v_read=v_read, compliance=tripped,
        )

    def pulse(
        self, rows: np.ndarray, cols: np.ndarray, voltage: np.ndarray, width: np.ndarray
    ) -> None:
        check_pulse(self.limits, voltage, width)
        r_arr, c_arr = self._cells(rows, cols)
        try:
            # One pulse per cell: the amplitudes and widths take the cells' shape, never the
            # other way round (a (n, 1) voltage must not fire n pulses on every cell).
            v_arr, w_arr = (np.broadcast_to(np.asarray(a, float), r_arr.shape).ravel()
                            for a in (voltage, width))
        except ValueError:
            raise LimitError("voltage", "voltage and width must match the cells") from None
        # Every shape is checked against the generator's ranges before anything is sent.
        shapes = [check_pulse_shape(self.pulser_driver, v, w)
                  for v, w in zip(v_arr.tolist(), w_arr.tolist(), strict=True)]
        pulser = self.instruments["pulser"]
        done = 0
        uncertain = False
        generation = self._stop_generation
        stopped = self._stopped(generation)
        with self._op_lock:
            try:
                self._check_open()
                for r, c, shape in zip(r_arr.tolist(), c_arr.tolist(), shapes, strict=True):
                    self._check_stop(generation)
                    self._route(r, c, "pulser", stopped)
                    pulser.run(functools.partial(self.pulser_driver.apply_shape, shape=shape),
                               what="pulse shape", abort=stopped)
                    try:
                        pulser.run(lambda s: self._fire(s, generation), idempotent=False,
                                   what=f"pulse on ({r}, {c})", abort=stopped)
                    except InstrumentError as e:
                        uncertain = e.uncertain
                        raise
                    except BackendUnavailable as e:
                        # the fire command was out but no reply came: fired or not, unknown
                        uncertain = getattr(e, "command_sent", False)
                        raise
                    done += 1
            except BaseException as e:
                err = self._fail(e)
                if isinstance(err, BackendError) and len(shapes) > 1:
                    unavailable = isinstance(err, BackendUnavailable)
                    cls = BackendUnavailable if unavailable else BackendError
                    err = cls(f"{err} [{done} of the {len(shapes)} pulses of this request had "
                              "been fired]")
                if isinstance(err, BackendError):
                    # For the caller's log: pulses[:completed] were fired; pulse[completed]
                    # may have been (uncertain) when its reply never came.
                    err.completed = done
                    err.uncertain = uncertain
                if err is e:
                    raise
                raise err from e

    def safe_state(self) -> None:
        """Matrix open, pulser output off, SMU output off at 0 V: all at once, each with its
        retries (a hung instrument delays none of the others); every failure reported."""
        self._make_safe(None)

    def emergency_stop(self) -> None:
        """Stop the running operation before its next route, read or pulse, and make the bench
        safe now, without waiting for the operation's lock; return within the bench's e-stop
        budget (plus :data:`ESTOP_GRACE`).

        Each instrument's own lock keeps every SCPI transaction whole; the safe-state messages go
        out between two of the running operation's transactions, all instruments at once, the
        matrix first. That operation then meets the new stop generation before it could turn the
        pulser's output on again, and fails with a :class:`BackendError` (its pulses fired so far
        are reported as usual). An instrument whose transaction does not end within the budget
        (one that hangs) is not waited for: :class:`BackendUnavailable` names it, the others are
        safe.
        """
        self._stop_generation += 1
        self._make_safe(self.config.emergency_stop.budget)

    def close(self) -> None:
        with self._op_lock:
            if self._closed:
                return
            try:
                self.safe_state()
            except BackendError as e:
                log.warning("close: %s", e)
            finally:
                self._closed = True
                for inst in self.instruments.values():
                    inst.close()

    # -- internals ------------------------------------------------------------------------------

    def _make_safe(self, budget: float | None) -> None:
        """Every instrument's safe state, each on its own thread, the matrix's started first.

        ``budget`` (s, the emergency stop): one attempt each, ended by then; None: the usual
        retries, and every thread is waited for."""
        deadline = None if budget is None else time.monotonic() + budget
        outcome: dict[str, str | None] = {}  # role -> None (safe) or why not confirmed

        def make_safe(role: str, inst: Instrument, safe) -> None:
            try:
                if deadline is None:
                    inst.run(safe, what="safe state")
                else:
                    inst.run_by(safe, deadline, what="safe state")
                outcome[role] = None
            except BackendError as e:
                outcome[role] = str(e)
            except Exception as e:  # reported like a BackendError: the others carry on
                outcome[role] = f"{role}: {type(e).__name__}: {e}"

        threads = []
        for role, driver in (("matrix", self.matrix_driver), ("pulser", self.pulser_driver),
                             ("smu", self.smu_driver)):
            inst = self.instruments.get(role)
            if inst is None or driver is None:
                continue
            thread = threading.Thread(target=make_safe, args=(role, inst, driver.safe),
                                      name=f"safe-state-{role}", daemon=True)
            thread.start()
            threads.append((role, thread))
        for _, thread in threads:
            thread.join(None if deadline is None
                        else max(0.0, deadline - time.monotonic()) + ESTOP_GRACE)
        # a thread still at it (past its own deadline) is not waited for: not confirmed
        results = {role: outcome.get(role, f"{role}: no confirmation in time")
                   for role, _ in threads}
        failed = [role for role, why in results.items() if why is not None]
        if not failed:
            return
        problems = " | ".join(results[role] for role in failed)  # type: ignore[misc]
        if deadline is None:
            raise BackendUnavailable("safe state not confirmed: " + problems)
        safe = [role for role, why in results.items() if why is None]
        raise BackendUnavailable(
            f"emergency stop: safe state not confirmed within {budget:g} s by "
            f"{', '.join(failed)}: {problems}"
            + (f"; confirmed safe: {', '.join(safe)}" if safe else "")
        )

    def _check_open(self) -> None:
        """Refuse a closed backend; connect (configure, make safe) every instrument not connected.

        All of them, before any operation: an instrument left in an unknown state (say the
        pulser's output on from an earlier session) must be safe before another one is used.
        """
        if self._closed:
            raise BackendUnavailable("the VISA backend is closed")
        for inst in self.instruments.values():
            if not inst.connected:
                inst.run(_noop, what="connect")

    def _measure(self, session: Session, v_read: float, generation: int) -> tuple[float, bool]:
        # Under the SMU's lock, like _fire under the pulser's: a stop that came first leaves
        # the SMU's output off.
        self._check_stop(generation)
        return self.smu_driver.measure(session, v_read)

    def _stopped(self, generation: int):
        """For Instrument.run's ``abort``: has an emergency stop come since ``generation``?"""
        return lambda: self._stop_generation != generation

    def _fire(self, session: Session, generation: int) -> None:
        # The fire command turns the output on. Checked under the pulser's lock, which the
        # emergency stop's safe state also takes: a stop either comes before this check (no
        # pulse) or after the pulse has ended (output off again).
        self._check_stop(generation)
        self.pulser_driver.fire(session)

    def _check_stop(self, generation: int) -> None:
        if self._stop_generation != generation:
            raise BackendError("stopped by an emergency stop")

    def _cells(self, rows, cols) -> tuple[np.ndarray, np.ndarray]:
        return check_cells(rows, cols, self.config.rows, self.config.cols)

    def _route(self, row: int, col: int, role: Literal["smu", "pulser"], abort) -> None:
        if self.matrix_driver is None:
            return
        destination = "both" if self.config.matrix.routing == "shared" else role  # type: ignore[union-attr]
        self.instruments["matrix"].run(
            lambda s: self.matrix_driver.route(s, row, col, destination),  # type: ignore[union-attr]
            what=f"route ({row}, {col}) to {destination}", abort=abort,
        )

    def _fail(self, error: BaseException) -> BaseException:
        """Safe state after a failed operation; the error to raise."""
        if self._closed:
            return error
        try:
            self.safe_state()
        except BackendError as e:
            log.error("safe state after %s failed: %s", type(error).__name__, e)
            if isinstance(error, BackendError):
                cls = BackendUnavailable if isinstance(error, BackendUnavailable) else BackendError
                return cls(f"{error} (and the safe state was not confirmed: {e})")
        if isinstance(error, BackendError | LimitError) or not isinstance(error, Exception):
            return error
        return BackendError(f"{type(error).__name__}: {error}")


def _noop(_session: Session) -> None:
    return None

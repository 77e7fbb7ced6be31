"""The one write-and-verify loop: read → choose → check the limits → pulse → verify.

Every caller runs it — ``/program``, background jobs, and every benchmark — the same way for
every strategy: one batched read of all targeted cells, then per iteration one batched pulse of
the cells still outside the tolerance and one batched verify read of those cells, until every
cell converged, spent its pulse budget or was stopped on a reading it cannot trust (never
pulsed blind: see :func:`program_cells`). What is recorded, and where, is the caller's
:class:`Recorder` (the service's operation log; a benchmark's recorder keeps nothing).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from drivers.base import Backend, LimitError, Limits, ReadResult, check_pulse
from programming.errors import StrategyFailure
from programming.strategies import Planner, get_strategy


@dataclass(frozen=True)
class RunParams:
    """What a run was asked to do, as recorded with it."""

    strategy: str
    tolerance: float
    max_pulses: int
    verify: bool
    v_read: float  # V
    n_targets: int


class Recorder(Protocol):
    """Where the loop records a run (the service: its operation log, :mod:`service.store`).

    ``fire`` pulses and records the pulses (the service: reserved in the log before they are
    fired, settled after); ``commit`` makes what was recorded so far durable; the loop commits
    after every iteration, never across a backend read."""

    def start_run(self, params: RunParams) -> int: ...

    def record_read(self, result: ReadResult, run_id: int | None = None) -> None: ...

    def fire(self, backend: Backend, rows: np.ndarray, cols: np.ndarray, voltage: np.ndarray,
             width: np.ndarray, run_id: int | None = None) -> np.ndarray | None: ...

    def commit(self) -> None: ...

    def device_memory(self, key: str, rows: np.ndarray, cols: np.ndarray) -> np.ndarray: ...

    def save_device_memory(self, key: str, rows: np.ndarray, cols: np.ndarray,
                           values: np.ndarray, run_id: int | None = None) -> None: ...

    def record_energy(self, rows: np.ndarray, cols: np.ndarray, energy: np.ndarray,
                      run_id: int | None = None) -> None:
        """The estimated energy (J) of the last pulse at each cell, for a backend that could not
        say it (:func:`estimated_energy`)."""

    def finish_run(self, run_id: int, **results: object) -> None: ...

    def fail_run(self, run_id: int, error: str) -> int | None: ...




@dataclass(frozen=True)
class ProgramJob:
    """One ``/program`` request, validated: parallel arrays, one entry per targeted cell."""

    rows: np.ndarray
    cols: np.ndarray
    target: np.ndarray  # S
    tolerance: float  # relative to the target
    max_pulses: int
    strategy: str
    verify: bool
    trace: bool
    v_read: float  # V
    limits: Limits
    read_current_floor: float = 1e-9  # A; the default of programming.read_current_floor


@dataclass
class ProgramOutcome:
    run_id: int
    start: np.ndarray  # S
    final: np.ndarray | None  # S; None without verify
    pulses: np.ndarray
    converged: np.ndarray | None
    traces: list[list[dict]] | None  # per cell: [{voltage, width, conductance}, ...]
    reads: int  # read operations (cells) this run made
    pulses_fired: int
    wall_time: float  # s
    aborted: bool = False  # should_stop() ended the run early (its run is 'aborted')
    stopped: list[str | None] | None = None  # per cell: why it was stopped (untrusted reading)
    energy: np.ndarray | None = None  # J per cell: its pulses' energy (None: not known)


@dataclass(frozen=True)
class Progress:
    """Where a run stands: after its first read (iteration 0) and after every iteration."""

    run_id: int
    iteration: int
    cells: int  # cells targeted
    cells_done: int  # converged, out of budget or stopped (every cell, once a one-shot pulse
    # is fired)
    cells_converged: int  # within the tolerance (0 in one shot: nothing is verified)
    pulses: int  # pulses fired so far in this run


def program_cells(
    backend: Backend,
    recorder: Recorder,
    job: ProgramJob,
    *,
    should_stop: Callable[[], bool] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    planner: Planner | None = None,
) -> ProgramOutcome:
    """Write (and verify) ``job`` on ``backend``, recording every operation under a new run.

    Runs on the backend owner's thread: nothing else touches the backend meanwhile. Each
    iteration's operations are committed before the next begins, so a crash mid-run keeps
    everything that was fired.

    Never blind: a cell whose reading (the first or any verify read) cannot be trusted — see
    :func:`_untrusted`: not finite, zero or negative, a current below
    ``job.read_current_floor``, or the compliance tripped — is *stopped*: no further pulse is
    fired at it (in one shot: none at all), it counts as done, and ``outcome.stopped`` (and the
    stored run) says why. Pulsing on such a reading drives the cell blind (a 0 S reading made
    ispp spend the whole budget ramping the cell to the top of its window).

    ``should_stop`` is asked before every batched pulse; when it answers True no further pulse
    is fired, the run is recorded as ``aborted`` (with each cell's results so far) and the
    outcome says ``aborted``. ``on_progress`` is called after the first read and after every
    iteration, on this thread, once the iteration's operations are recorded and before they
    are committed: what it writes to the recorder commits atomically with them.

    ``planner``: the pulse chooser to use instead of ``job.strategy``'s (benchmarks pass a
    configured one); ``job.strategy`` is still what the run is recorded under.
    """
    started = time.perf_counter()
    if planner is None:
        planner = get_strategy(job.strategy).begin(job.target, job.limits)
    n = job.target.size
    run_id = recorder.start_run(
        RunParams(job.strategy, job.tolerance, job.max_pulses, job.verify, job.v_read, n)
    )
    run = _Run(backend, recorder, job, planner, run_id, should_stop, on_progress)
    try:
        if planner.memory_key is not None:
            planner.recall(recorder.device_memory(planner.memory_key, job.rows, job.cols))
        run.first_read()
        if job.verify:
            _write_verify(run)
        else:
            _one_shot(run)
        recorder.finish_run(
            run_id,
            rows=job.rows,
            cols=job.cols,
            start=run.start,
            target=job.target,
            final=run.g if job.verify else None,
            pulses=run.pulses,
            converged=run.converged,
            status="aborted" if run.aborted else "done",
            stopped=run.stopped,
        )
        recorder.commit()
    except BaseException as exc:
        fired = recorder.fail_run(run_id, f"{type(exc).__name__}: {exc}")
        recorder.commit()
        last = run.last_progress
        if on_progress is not None and last is not None and fired is not None \
                and fired != last.pulses:
            # pulses of a batch broken off (a bench failure, an emergency stop) are recorded
            on_progress(replace(last, pulses=fired))
        raise
    return ProgramOutcome(
        run_id=run_id,
        start=run.start,
        final=run.g if job.verify else None,
        pulses=run.pulses,
        converged=run.converged,
        traces=_traces(run.steps, n) if job.trace else None,
        reads=run.reads,
        pulses_fired=int(run.pulses.sum()),
        wall_time=time.perf_counter() - started,
        aborted=run.aborted,
        stopped=run.stopped,
        energy=run.energy,
    )


class _Run:
    """The state of one run of :func:`program_cells`, per cell, and the steps both ways of
    programming share (read and distrust, choose within the limits and fire, report)."""

    def __init__(self, backend: Backend, recorder: Recorder, job: ProgramJob, planner: Planner,
                 run_id: int, should_stop: Callable[[], bool] | None,
                 on_progress: Callable[[Progress], None] | None):
        self.backend, self.recorder, self.job, self.planner = backend, recorder, job, planner
        self.run_id = run_id
        self._should_stop = should_stop
        self._on_progress = on_progress
        n = job.target.size
        self.n = n
        self.pulses = np.zeros(n, dtype=np.int64)
        self.energy = np.zeros(n)  # J per cell; NaN once a pulse's energy was not known
        self.unknown_energy = False  # the last batch's backend did not say its energy
        self.halted = np.zeros(n, dtype=bool)  # stopped on a reading that cannot be trusted
        self.stopped: list[str | None] = [None] * n
        self.steps: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]] = []
        self.reads = 0
        self.aborted = False
        self.converged: np.ndarray | None = None
        self.last_progress: Progress | None = None
        self.start = np.full(n, np.nan)
        self.g = self.start.copy()
        self.trusted = self.start.copy()  # per cell: its last trusted reading, S

    def first_read(self) -> None:
        job = self.job
        first = self.backend.read(job.rows, job.cols, job.v_read)
        self.recorder.record_read(first, self.run_id)
        self.reads += self.n
        self.start = np.asarray(first.conductance, dtype=float)
        self.g = self.start.copy()
        self.trusted = self.start.copy()
        self.distrust(first, np.arange(self.n))

    def distrust(self, result: ReadResult, idx: np.ndarray) -> np.ndarray:
        """Stop the cells ``idx`` whose reading in ``result`` cannot be trusted."""
        bad, reasons = _untrusted(result, self.job.read_current_floor)
        where = idx[bad]
        self.halted[where] = True
        for i, why in zip(where.tolist(), reasons, strict=True):
            self.stopped[i] = why
        self.trusted[idx[~bad]] = np.asarray(result.conductance, dtype=float)[~bad]
        return bad

    def should_stop(self) -> bool:
        if self._should_stop is not None and self._should_stop():
            self.aborted = True
        return self.aborted

    def fire(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Choose the pulses of the cells ``idx`` (checked against the limits) and fire them."""
        job = self.job
        voltage, width = _chosen(self.planner, idx, self.g[idx], job.limits)
        energy = self.recorder.fire(self.backend, job.rows[idx], job.cols[idx], voltage, width,
                                    self.run_id)
        self.unknown_energy = energy is None
        if energy is not None:
            self.energy[idx] += np.asarray(energy, dtype=float)
        elif not job.verify:  # one shot: no read after the pulse to estimate it from
            self.energy[idx] = np.nan
        return voltage, width

    def progress(self, iteration: int, done: int, converged_now: int) -> None:
        self.last_progress = Progress(self.run_id, iteration, self.n, done, converged_now,
                                      int(self.pulses.sum()))
        if self._on_progress is not None:
            self._on_progress(self.last_progress)


def _one_shot(run: _Run) -> None:
    """Exactly one pulse per cell read as trusted, chosen from the single read; nothing is
    verified (``converged`` stays None)."""
    run.progress(0, int(np.count_nonzero(run.halted)), 0)
    run.recorder.commit()
    idx = np.flatnonzero(~run.halted)
    if run.should_stop():
        return
    run.planner.one_shot()
    if idx.size:
        voltage, width = run.fire(idx)
        run.pulses[idx] = 1
        run.steps.append((idx, voltage, width, None))
    run.progress(1, run.n, 0)
    run.recorder.commit()


def _write_verify(run: _Run) -> None:
    """Pulse the cells outside the tolerance and read them back, until each one converged,
    spent its budget or was stopped; then let the planner remember what it learned."""
    job, recorder = run.job, run.recorder
    band = job.tolerance * job.target
    converged = (np.abs(run.g - job.target) <= band) & ~run.halted
    run.converged = converged
    iteration = 0
    run.progress(iteration, int(np.count_nonzero(converged | run.halted)),
                 int(np.count_nonzero(converged)))
    recorder.commit()
    while True:
        idx = np.flatnonzero(~converged & ~run.halted & (run.pulses < job.max_pulses))
        if idx.size == 0 or run.should_stop():
            break
        voltage, width = run.fire(idx)
        # Committed before the verify read: no write lock held across backend I/O (a bench's
        # read of a large batch takes minutes; job bookkeeping, other connections, must not
        # wait for it).
        recorder.commit()
        run.pulses[idx] += 1
        after = run.backend.read(job.rows[idx], job.cols[idx], job.v_read)
        recorder.record_read(after, run.run_id)
        run.reads += idx.size
        if run.unknown_energy:  # a bench: estimated from the reads around the pulses
            estimate = estimated_energy(voltage, width, run.g[idx], after.conductance)
            recorder.record_energy(job.rows[idx], job.cols[idx], estimate, run.run_id)
            run.energy[idx] += estimate
        run.g[idx] = after.conductance
        bad = run.distrust(after, idx)
        converged[idx] = (np.abs(run.g[idx] - job.target[idx]) <= band[idx]) & ~bad
        iteration += 1
        run.progress(
            iteration,
            int(np.count_nonzero(converged | run.halted | (run.pulses >= job.max_pulses))),
            int(np.count_nonzero(converged)),
        )
        # The verify reads and the progress are committed with the next iteration's pulse
        # reservation (before anything is fired, with no backend I/O in between), or with the
        # run's end: one commit less per iteration (on PostgreSQL, one synchronous round trip).
        if job.trace:
            run.steps.append((idx, voltage, width, run.g[idx].copy()))
    planner = run.planner
    if planner.memory_key is not None:
        # A stopped cell is shown its last trusted reading and nothing is kept for it: an
        # untrusted one says nothing about the device.
        learned = planner.remember(run.trusted)
        if learned is not None:
            learned = np.array(learned, dtype=float)
            learned[run.halted] = np.nan  # NaN: keep what was remembered before
            recorder.save_device_memory(planner.memory_key, job.rows, job.cols, learned,
                                        run.run_id)


def estimated_energy(voltage: np.ndarray, width: np.ndarray, g_before: np.ndarray,
                     g_after: np.ndarray) -> np.ndarray:
    """The energy of pulses whose backend could not say it, from the reads around them (J):

        E ≈ V² · t · (G_before + G_after) / 2

    the device taken as ohmic at its read conductance, mean of before and after. An estimate:
    a memristor's current at a programming voltage is not V·G_read (the JART v1b device at
    -0.6 V draws several times more), so it is a lower bound, good for comparing strategies on
    one bench, not for a device's true energy. NaN where a read is not finite."""
    g = (np.asarray(g_before, dtype=float) + np.asarray(g_after, dtype=float)) / 2.0
    out = np.asarray(voltage, dtype=float) ** 2 * np.asarray(width, dtype=float) * np.abs(g)
    return np.where(np.isfinite(out), out, np.nan)


def _untrusted(read: ReadResult, floor: float) -> tuple[np.ndarray, list[str]]:
    """Which readings of ``read`` cannot be trusted (a boolean per cell) and, for each of those
    in order, why.

    Untrusted: a current or conductance that is not finite; a conductance that is zero or
    negative (no current, or I / V of the wrong sign: no device reads so); a |current| below
    ``floor`` (A) — a current floor, not a conductance floor, because the noise is the SMU's,
    in amperes, whatever the read voltage; the compliance tripped (the current is clipped, the
    true conductance unknown). Vectorised; only the reasons are built per untrusted cell.
    """
    g = np.asarray(read.conductance, dtype=float)
    current = np.asarray(read.current, dtype=float)
    not_finite = ~(np.isfinite(g) & np.isfinite(current))
    not_positive = ~not_finite & ~(g > 0)
    below = ~not_finite & ~not_positive & (np.abs(current) < floor)
    clipped = np.asarray(read.compliance, dtype=bool) & ~(not_finite | not_positive | below)
    bad = not_finite | not_positive | below | clipped
    reasons = []
    for k in np.flatnonzero(bad).tolist():
        if not_finite[k]:
            why = f"not finite: {g[k]:.3g} S"
        elif not_positive[k]:
            why = f"conductance {g[k]:.3g} S, not positive"
        elif below[k]:
            why = f"below the read current floor {floor:g} A"
        else:
            why = "the current compliance tripped: the reading is clipped"
        reasons.append(f"untrusted reading: {current[k]:.3g} A at {read.v_read:g} V ({why})")
    return bad, reasons


def _chosen(
    planner: Planner, idx: np.ndarray, g: np.ndarray, limits: Limits
) -> tuple[np.ndarray, np.ndarray]:
    """The planner's pulses for the cells ``idx``, verified against the limits before anything
    is fired."""
    try:
        chosen = planner.choose(idx, g)
    except ValueError as exc:  # e.g. the predictor's OutOfRangeError: never a 422 mid-run
        raise StrategyFailure(f"strategy failed during the run: {exc}") from exc
    n = idx.size
    voltage = np.broadcast_to(np.asarray(chosen[0], dtype=float), (n,)).copy()
    width = np.broadcast_to(np.asarray(chosen[1], dtype=float), (n,)).copy()
    try:
        check_pulse(limits, voltage, width)
    except LimitError as exc:
        # A strategy must stay within the limits; a violation is a bug, not bad input.
        raise StrategyFailure(f"strategy chose a pulse beyond the limits: {exc}") from exc
    return voltage, width


def _traces(steps: list, n: int) -> list[list[dict]]:
    """Per cell, its pulses in order with the conductance read after each (None in one shot)."""
    traces: list[list[dict]] = [[] for _ in range(n)]
    for idx, voltage, width, g_after in steps:
        after = [None] * idx.size if g_after is None else g_after.tolist()
        for i, v, w, g in zip(idx.tolist(), voltage.tolist(), width.tolist(), after, strict=True):
            traces[i].append({"voltage": v, "width": w, "conductance": g})
    return traces

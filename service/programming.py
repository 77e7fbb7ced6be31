"""Programming conductances: the strategy registry and the one write-and-verify loop.

A *strategy* chooses pulses; the *loop* (:func:`program_cells`) does everything else, the same
way for every strategy: one batched read of all targeted cells, then per iteration one batched
pulse of the cells still outside the tolerance and one batched verify read of those cells, until
every cell converged, spent its pulse budget or was stopped on a reading it cannot trust (never
pulsed blind: see :func:`program_cells`). Strategies are vectorised over cells: they get
arrays and return arrays, no per-device Python loop.

To add a strategy (the pulse predictor does this)::

    @register_strategy("predictor")
    @dataclass(frozen=True)
    class PredictorStrategy(Strategy):
        def begin(self, target, limits): return MyPlanner(...)

    set_default_strategy("predictor")

Sign convention: SET (G rises) at negative voltage, RESET (G falls) at positive voltage.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from drivers.base import Backend, LimitError, Limits, ReadResult, check_pulse
from service.recording import pulse_and_record
from service.storage import RunParams, Storage

# --------------------------------------------------------------------------- strategy contract


class Planner(ABC):
    """The pulse chooser of one programming run; it may keep per-cell state between calls."""

    @abstractmethod
    def choose(self, idx: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pulses for the cells ``idx`` (indices into the run's targets) whose conductance is
        now ``g`` (S). Returns ``(voltage, width)`` per cell, in V and s, within the limits.

        Called once per iteration with the cells still to be programmed; a cell's previous
        call tells what its last pulse was, ``g`` what it did.
        """

    def one_shot(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Called before the single ``choose`` of a run without verify (no feedback will come);
        a planner may then choose differently (the predictor uses its one-shot prior)."""

    # Device memory: what a planner learns about each device, kept per cell in the database
    # across runs (the predictor: the device's speed latent), so that the next run on the cell
    # starts from it instead of from a blind guess.
    memory_key: str | None = None
    """What the remembered values are (e.g. the model that inferred them); None: nothing."""

    def recall(self, values: np.ndarray) -> None:  # noqa: B027 - optional hook
        """Before the first ``choose``: the values remembered for the run's cells (NaN: none)."""

    def remember(self, g: np.ndarray) -> np.ndarray | None:
        """After the last verify read ``g`` (S, every cell of the run): the values to keep per
        cell (NaN: nothing learned), or None to keep nothing."""
        return None


class Strategy(ABC):
    """A way of choosing programming pulses. Instances are immutable, tuned configurations."""

    name: str = ""
    summary: str = ""

    @abstractmethod
    def begin(self, target: np.ndarray, limits: Limits) -> Planner:
        """A planner for a run towards ``target`` (S, one entry per cell) within ``limits``."""

    def validate(  # noqa: B027 - optional hook, accepts everything by default
        self, target: np.ndarray, limits: Limits, v_read: float
    ) -> None:
        """Refuse a request this strategy cannot carry out, before anything is queued or fired:
        raise :class:`service.validation.RequestProblem` naming the field. A run that starts
        must not fail on its request half-way (its pulses would be fired already)."""


_STRATEGIES: dict[str, Callable[[], Strategy]] = {}
_DEFAULT: list[str] = []


def register_strategy(name: str, summary: str = "") -> Callable:
    """Class decorator: make ``name`` selectable in ``/program`` (``strategy`` field)."""

    def decorate(cls: type[Strategy]) -> type[Strategy]:
        cls.name = name
        cls.summary = summary or (cls.__doc__ or "").strip().splitlines()[0]
        _STRATEGIES[name] = cls
        return cls

    return decorate


def set_default_strategy(name: str) -> None:
    """The strategy a ``/program`` request gets when it names none."""
    if name not in _STRATEGIES:
        raise KeyError(f"unknown strategy {name!r}")
    _DEFAULT[:] = [name]


def default_strategy() -> str:
    return _DEFAULT[0]


def strategy_names() -> list[str]:
    return sorted(_STRATEGIES)


def strategy_summaries() -> dict[str, str]:
    return {name: _STRATEGIES[name].summary for name in strategy_names()}


def get_strategy(name: str) -> Strategy:
    try:
        return _STRATEGIES[name]()
    except KeyError:
        raise KeyError(f"unknown strategy {name!r}; known: {', '.join(strategy_names())}") from None


def _within(limits: Limits, set_v: float, reset_v: float) -> tuple[float, float]:
    """A strategy's own amplitude ceilings, never beyond the deployment's limits."""
    return min(set_v, limits.v_set_max), min(reset_v, limits.v_reset_max)


def _width(limits: Limits, width: float) -> float:
    """A strategy's tuned width, or the nearest one the deployment allows (a bench's pulse
    generator may not go as short: the 33500B stops at 16 ns). This is the strategy choosing
    within the limits, not a request being clamped; the ramps adapt the amplitude to it."""
    return float(min(max(width, limits.width_min), limits.width_max))


# --------------------------------------------------------------------------------- strategies


@register_strategy("fixed")
@dataclass(frozen=True)
class FixedStrategy(Strategy):
    """Fixed amplitude and width, polarity from the error's sign: the conventional baseline.

    MemTorch ``naive_program`` style, scaled to the JART device: 100 ns at −0.45 V / +0.90 V
    is strong enough to move a cell off either end of the window within a few pulses, but near
    the middle one pulse moves a cell by far more than a 2 % band, so cells dither around their
    targets (on a ``realistic`` 8×8 array about two thirds converge to 2 % within 200 pulses).
    """

    set_voltage: float = 0.45
    """|V| of the SET pulse, V (applied as negative)."""
    reset_voltage: float = 0.90
    """V of the RESET pulse, V."""
    width: float = 100e-9
    """Pulse width of both polarities, s."""

    def begin(self, target: np.ndarray, limits: Limits) -> Planner:
        v_set, v_reset = _within(limits, self.set_voltage, self.reset_voltage)
        return _FixedPlanner(np.asarray(target, float), -v_set, v_reset, _width(limits, self.width))


class _FixedPlanner(Planner):
    def __init__(self, target: np.ndarray, v_set: float, v_reset: float, width: float):
        self.target, self.v_set, self.v_reset, self.width = target, v_set, v_reset, width

    def choose(self, idx: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        voltage = np.where(self.target[idx] > g, self.v_set, self.v_reset)
        return voltage, np.full(idx.shape, self.width)


@register_strategy("ispp")
@dataclass(frozen=True)
class IsppStrategy(Strategy):
    """Incremental step pulse programming, adapted to the JART device's runaway switching.

    Each polarity ramps its amplitude from a gentle start (10 ns at −0.40 V / +0.75 V) in
    10 mV steps while a cell stays short of its target; on overshoot the polarity switches and
    the ramp restarts. Plain ISPP wastes most of its pulses on this device: switching is
    S-shaped and self-accelerating (a pulse that barely moves a cell at 94 µS moves it by
    hundreds of µS at 300 µS), so the amplitude that finally moves a cell is the one that
    overshoots, and every restart ramps from scratch (median ≈ 55 pulses per cell to 2 %).
    Three refinements keep the ramp but halve that (median ≈ 25, max ≈ 65 on ``realistic``
    8×8 arrays, targets 110…540 µS, measured over 8 seeds):

    * while pulses do next to nothing (< ``coarse_fraction`` of the error) the ramp takes
      ``coarse_step`` steps;
    * the ramp is held, or stepped back, when the last pulse already covered a large part of
      the remaining error (``hold_fraction``, ``back_fraction``);
    * a restart begins ``restart_backoff`` steps below the amplitude that last moved this cell
      in that polarity, not at the absolute start.
    """

    set_start: float = 0.40
    """|V| of the first SET pulse, V (SET pulses are negative)."""
    reset_start: float = 0.75
    """V of the first RESET pulse, V."""
    step: float = 0.01
    """Amplitude increment between pulses of one ramp, V."""
    set_max: float = 0.60
    """Largest |V| the SET ramp reaches, V (also capped by the limits)."""
    reset_max: float = 1.20
    """Largest V the RESET ramp reaches, V (also capped by the limits)."""
    set_width: float = 10e-9
    """SET pulse width, s."""
    reset_width: float = 10e-9
    """RESET pulse width, s."""
    hold_fraction: float = 0.2
    """Keep the amplitude when the last pulse covered at least this fraction of the error."""
    back_fraction: float = 0.6
    """Step the amplitude back when the last pulse covered at least this fraction."""
    restart_backoff: int = 5
    """Steps below the last effective amplitude at which a restart begins."""
    coarse_fraction: float = 0.01
    """Below this covered fraction the last pulse did next to nothing: ramp coarsely."""
    coarse_step: float = 0.04
    """Amplitude increment while the pulses do next to nothing, V."""

    def begin(self, target: np.ndarray, limits: Limits) -> Planner:
        set_max, reset_max = _within(limits, self.set_max, self.reset_max)
        return _IsppPlanner(
            self,
            np.asarray(target, float),
            start=np.array([min(self.set_start, set_max), min(self.reset_start, reset_max)]),
            ceiling=np.array([set_max, reset_max]),
            width=np.array([_width(limits, self.set_width), _width(limits, self.reset_width)]),
        )


@dataclass
class _IsppPlanner(Planner):
    cfg: IsppStrategy
    target: np.ndarray
    start: np.ndarray  # [SET, RESET] first amplitude, V (magnitudes)
    ceiling: np.ndarray  # [SET, RESET] largest amplitude, V (magnitudes)
    width: np.ndarray  # [SET, RESET] pulse width, s
    polarity: np.ndarray = field(init=False)  # per cell: 0 none yet, 1 SET, 2 RESET
    amplitude: np.ndarray = field(init=False)  # per cell: |V| of its last pulse
    error_before: np.ndarray = field(init=False)  # per cell: target − G before its last pulse
    effective: np.ndarray = field(init=False)  # (2, cells): |V| that last moved the cell

    def __post_init__(self) -> None:
        n = self.target.size
        self.polarity = np.zeros(n, dtype=np.int8)
        self.amplitude = np.zeros(n)
        self.error_before = np.zeros(n)
        self.effective = np.repeat(self.start[:, None], n, axis=1)

    def choose(self, idx: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        cfg = self.cfg
        error = self.target[idx] - g
        wanted = np.where(error > 0, 1, 2).astype(np.int8)  # SET raises G
        last = self.polarity[idx]
        amplitude = self.amplitude[idx]
        same = wanted == last  # still short of the target in the same direction
        # Fraction of the error the last pulse covered (only meaningful when `same`).
        before = np.abs(self.error_before[idx])
        covered = np.divide(
            before - np.abs(error), before, out=np.zeros_like(before), where=before > 0
        )

        # Remember the amplitude that moved this cell: on overshoot it was too strong, and a
        # pulse that covered a good part of the error was about right.
        moved = (last > 0) & (~same | (covered >= cfg.hold_fraction))
        pol_row = np.clip(last - 1, 0, 1)
        self.effective[pol_row[moved], idx[moved]] = amplitude[moved]

        pol = wanted - 1  # 0 SET, 1 RESET
        restart = np.maximum(
            self.start[pol], self.effective[pol, idx] - cfg.restart_backoff * cfg.step
        )
        ramp = np.where(
            covered >= cfg.back_fraction,
            amplitude - cfg.step,
            np.where(
                covered >= cfg.hold_fraction,
                amplitude,
                amplitude + np.where(covered < cfg.coarse_fraction, cfg.coarse_step, cfg.step),
            ),
        )
        new = np.where(same, np.maximum(ramp, self.start[pol]), restart)
        new = np.minimum(new, self.ceiling[pol])

        self.polarity[idx] = wanted
        self.amplitude[idx] = new
        self.error_before[idx] = error
        voltage = np.where(wanted == 1, -new, new)
        return voltage, self.width[pol]


set_default_strategy("ispp")


# ------------------------------------------------------------------------------------ the loop


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
    storage: Storage,
    job: ProgramJob,
    *,
    should_stop: Callable[[], bool] | None = None,
    on_progress: Callable[[Progress], None] | None = None,
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
    are committed: what it writes to ``storage`` commits atomically with them.
    """
    started = time.perf_counter()
    planner = get_strategy(job.strategy).begin(job.target, job.limits)
    n = job.target.size
    run_id = storage.start_run(
        RunParams(job.strategy, job.tolerance, job.max_pulses, job.verify, job.v_read, n)
    )
    last_progress: Progress | None = None
    try:
        if planner.memory_key is not None:
            planner.recall(storage.device_memory(planner.memory_key, job.rows, job.cols))
        first = backend.read(job.rows, job.cols, job.v_read)
        storage.record_read(first, run_id)
        start = np.asarray(first.conductance, dtype=float)
        g = start.copy()
        pulses = np.zeros(n, dtype=np.int64)
        steps: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]] = []
        reads = n
        aborted = False
        halted = np.zeros(n, dtype=bool)  # stopped on a reading that cannot be trusted
        stopped: list[str | None] = [None] * n
        trusted = start.copy()  # per cell: its last trusted reading, S (for device memory)

        def distrust(result: ReadResult, idx: np.ndarray) -> np.ndarray:
            """Stop the cells ``idx`` whose reading in ``result`` cannot be trusted."""
            bad, reasons = _untrusted(result, job.read_current_floor)
            where = idx[bad]
            halted[where] = True
            for i, why in zip(where.tolist(), reasons, strict=True):
                stopped[i] = why
            trusted[idx[~bad]] = np.asarray(result.conductance, dtype=float)[~bad]
            return bad

        distrust(first, np.arange(n))

        def progress(iteration: int, done: int, converged_now: int) -> None:
            nonlocal last_progress
            last_progress = Progress(run_id, iteration, n, done, converged_now, int(pulses.sum()))
            if on_progress is not None:
                on_progress(last_progress)

        if not job.verify:
            progress(0, int(np.count_nonzero(halted)), 0)
            storage.commit()
            # One shot: exactly one pulse per cell read as trusted, chosen from the single read.
            idx = np.flatnonzero(~halted)
            if should_stop is not None and should_stop():
                aborted = True
            else:
                planner.one_shot()
                if idx.size:
                    voltage, width = _chosen(planner, idx, g[idx], job.limits)
                    pulse_and_record(
                        backend, storage, job.rows[idx], job.cols[idx], voltage, width, run_id
                    )
                    pulses[idx] = 1
                    steps.append((idx, voltage, width, None))
                progress(1, n, 0)
                storage.commit()
            final = converged = None
        else:
            band = job.tolerance * job.target
            converged = (np.abs(g - job.target) <= band) & ~halted
            iteration = 0
            progress(
                iteration,
                int(np.count_nonzero(converged | halted)),
                int(np.count_nonzero(converged)),
            )
            storage.commit()
            while True:
                idx = np.flatnonzero(~converged & ~halted & (pulses < job.max_pulses))
                if idx.size == 0:
                    break
                if should_stop is not None and should_stop():
                    aborted = True
                    break
                rows, cols = job.rows[idx], job.cols[idx]
                voltage, width = _chosen(planner, idx, g[idx], job.limits)
                pulse_and_record(backend, storage, rows, cols, voltage, width, run_id)
                # Committed before the verify read: no write lock held across backend I/O (a
                # bench's read of a large batch takes minutes; job bookkeeping, other
                # connections, must not wait for it).
                storage.commit()
                pulses[idx] += 1
                after = backend.read(rows, cols, job.v_read)
                storage.record_read(after, run_id)
                reads += idx.size
                g[idx] = after.conductance
                bad = distrust(after, idx)
                converged[idx] = (np.abs(g[idx] - job.target[idx]) <= band[idx]) & ~bad
                iteration += 1
                progress(
                    iteration,
                    int(np.count_nonzero(converged | halted | (pulses >= job.max_pulses))),
                    int(np.count_nonzero(converged)),
                )
                storage.commit()
                if job.trace:
                    steps.append((idx, voltage, width, g[idx].copy()))
            final = g
            if planner.memory_key is not None:
                # A stopped cell is shown its last trusted reading and nothing is kept for it:
                # an untrusted one says nothing about the device.
                learned = planner.remember(trusted)
                if learned is not None:
                    learned = np.array(learned, dtype=float)
                    learned[halted] = np.nan  # NaN: keep what was remembered before
                    storage.save_device_memory(
                        planner.memory_key, job.rows, job.cols, learned, run_id
                    )

        storage.finish_run(
            run_id,
            rows=job.rows,
            cols=job.cols,
            start=start,
            target=job.target,
            final=final,
            pulses=pulses,
            converged=converged,
            status="aborted" if aborted else "done",
            stopped=stopped,
        )
        storage.commit()
    except BaseException as exc:
        fired = storage.fail_run(run_id, f"{type(exc).__name__}: {exc}")
        storage.commit()
        if (on_progress is not None and last_progress is not None and fired is not None
                and fired != last_progress.pulses):
            # pulses of a batch broken off (a bench failure, an emergency stop) are recorded
            on_progress(replace(last_progress, pulses=fired))
        raise
    return ProgramOutcome(
        run_id=run_id,
        start=start,
        final=final,
        pulses=pulses,
        converged=converged,
        traces=_traces(steps, n) if job.trace else None,
        reads=reads,
        pulses_fired=int(pulses.sum()),
        wall_time=time.perf_counter() - started,
        aborted=aborted,
        stopped=stopped,
    )


class StrategyFailure(RuntimeError):
    """A strategy failed in the middle of a run (a bug, not bad input: requests are checked by
    :meth:`Strategy.validate` before the run). The run is recorded ``failed`` with every
    operation it made."""


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


# The neural pulse predictor registers itself here as the ``predictor`` strategy and becomes the
# default (predictor/strategy.py; the service falls back to ispp if its model cannot be loaded).
import predictor.strategy  # noqa: E402, F401

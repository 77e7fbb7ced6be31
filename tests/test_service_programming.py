"""The strategy registry, the strategies and the write-and-verify loop, on the real Crossbar."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest

from drivers.base import BackendUnavailable, Limits
from drivers.sim import SimBackend
from predictor.strategy import register_predictor_strategy
from programming import (
    ProgramJob,
    default_strategy,
    get_strategy,
    program_cells,
    set_default_strategy,
    strategy_names,
)
from service.recording import LogRecorder
from service.store import Storage

# What the service does where it builds its app: the predictor's strategy is registered explicitly.
register_predictor_strategy()

TARGET_RANGE = (110e-6, 540e-6)  # S, inside the nominal window 94…559 µS


class CountingSimBackend(SimBackend):
    """Test double: the real simulated backend, counting its batched calls."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.read_calls: list[int] = []
        self.pulse_calls: list[int] = []

    def read(self, rows, cols, v_read=0.2):
        self.read_calls.append(len(rows))
        return super().read(rows, cols, v_read)

    def pulse(self, rows, cols, voltage, width):
        self.pulse_calls.append(len(rows))
        return super().pulse(rows, cols, voltage, width)


class FailingSimBackend(CountingSimBackend):
    """Test double: the real simulated backend whose link drops before its n-th pulse."""

    def __init__(self, *args, fail_at_pulse: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.fail_at_pulse = fail_at_pulse

    def pulse(self, rows, cols, voltage, width):
        if len(self.pulse_calls) + 1 == self.fail_at_pulse:
            raise BackendUnavailable("link dropped (test double)")
        return super().pulse(rows, cols, voltage, width)


def make_backend(cls=CountingSimBackend, seed=11, **kwargs):
    from sim_backend import Crossbar

    return cls(Crossbar(8, 8, seed=seed, variability="realistic"), Limits(), **kwargs)


def make_job(n=64, *, seed=0, budget=100, strategy="ispp", verify=True, trace=False, limits=None):
    rows, cols = np.divmod(np.arange(n), 8)
    target = np.random.default_rng(seed).uniform(*TARGET_RANGE, n)
    return ProgramJob(
        rows=rows,
        cols=cols,
        target=target,
        tolerance=0.02,
        max_pulses=budget,
        strategy=strategy,
        verify=verify,
        trace=trace,
        v_read=0.2,
        limits=limits or Limits(),
    )


def operations(storage: Storage, run_id: int) -> list[tuple]:
    with storage.db.reading() as conn:
        return conn.execute(
            "SELECT kind, row, col, voltage, width, conductance FROM operations "
            "WHERE run_id = ? ORDER BY id",
            (run_id,),
        ).fetchall()


@pytest.fixture
def storage(store_target):
    store = Storage(store_target, "simulated", state_dir=Path(tempfile.mkdtemp()))
    yield store
    store.close()


def test_registry_has_the_baseline_and_ispp_and_a_settable_default():
    assert {"fixed", "ispp"} <= set(strategy_names())
    before = default_strategy()
    assert before in strategy_names()
    try:
        set_default_strategy("fixed")
        assert default_strategy() == "fixed"
    finally:
        set_default_strategy(before)
    with pytest.raises(KeyError, match="known"):
        get_strategy("magic")
    with pytest.raises(KeyError):
        set_default_strategy("magic")


def test_fixed_takes_polarity_from_the_error_sign():
    planner = get_strategy("fixed").begin(np.array([200e-6, 200e-6, 400e-6]), Limits())
    voltage, width = planner.choose(np.array([0, 1, 2]), np.array([100e-6, 300e-6, 500e-6]))
    assert voltage[0] < 0 < voltage[1] and voltage[2] > 0  # below target: SET (negative)
    assert np.all(width == width[0])


@pytest.mark.parametrize("seed", [1, 2])
def test_ispp_converges_64_realistic_cells_to_2_percent(storage, seed):
    backend = make_backend(seed=seed)
    job = make_job(seed=seed, budget=100)
    out = program_cells(backend, LogRecorder(storage), job)
    assert out.converged.mean() >= 0.95
    assert np.array_equal(out.converged, np.abs(out.final - job.target) <= 0.02 * job.target)
    # Truth, not just the loop's own reading: the simulator's noise-free conductance.
    truth = backend.crossbar.conductance_map()[job.rows, job.cols]
    assert np.mean(np.abs(truth - job.target) <= 0.02 * job.target) >= 0.95


def test_fixed_baseline_is_slower_than_ispp(storage):
    ispp = program_cells(make_backend(seed=3), LogRecorder(storage), make_job(seed=3, budget=60))
    fixed = program_cells(make_backend(seed=3), LogRecorder(storage), make_job(seed=3, budget=60,
                                                                  strategy="fixed"))
    assert fixed.converged.mean() < ispp.converged.mean()


def test_loop_is_batched_one_read_and_one_pulse_per_iteration(storage):
    backend = make_backend()
    out = program_cells(backend, LogRecorder(storage), make_job(budget=100))
    iterations = int(out.pulses.max())
    assert len(backend.pulse_calls) == iterations
    assert len(backend.read_calls) == 1 + iterations
    assert backend.read_calls[0] == 64 and backend.pulse_calls[0] == 64
    # each iteration pulses exactly the cells still to program: totals add up
    assert sum(backend.pulse_calls) == out.pulses.sum()
    assert sum(backend.read_calls) == out.reads == 64 + out.pulses.sum()


def test_every_operation_is_recorded_under_the_run(storage):
    out = program_cells(make_backend(), LogRecorder(storage), make_job(n=16, budget=50, trace=True))
    ops = operations(storage, out.run_id)
    pulses = [op for op in ops if op[0] == "pulse"]
    reads = [op for op in ops if op[0] == "read"]
    assert len(pulses) == out.pulses.sum()
    assert len(reads) == out.reads == 16 + out.pulses.sum()
    # the trace is what was recorded: each pulse, then the read that verified it
    cell0 = [op for op in ops if (op[1], op[2]) == (0, 0)]
    assert cell0[0][0] == "read" and cell0[0][5] == pytest.approx(out.start[0])
    recorded = [
        (p[3], p[4], r[5]) for p, r in zip(cell0[1::2], cell0[2::2], strict=True)
    ]
    traced = [(s["voltage"], s["width"], s["conductance"]) for s in out.traces[0]]
    assert recorded == traced
    run = storage.get_run(out.run_id)
    assert run["status"] == "done" and run["total_pulses"] == out.pulses.sum()


def test_one_shot_reads_once_and_fires_exactly_one_pulse_per_cell(storage):
    backend = make_backend()
    out = program_cells(backend, LogRecorder(storage), make_job(n=32, verify=False))
    assert out.final is None and out.converged is None
    assert np.all(out.pulses == 1)
    assert backend.read_calls == [32] and backend.pulse_calls == [32]
    kinds = [op[0] for op in operations(storage, out.run_id)]
    assert kinds.count("read") == 32 and kinds.count("pulse") == 32


def test_strategies_stay_within_tighter_limits(storage):
    limits = Limits(v_set_max=0.45, v_reset_max=0.85, width_min=5e-9, width_max=1e-6)
    for name in ("ispp", "fixed"):
        out = program_cells(make_backend(), LogRecorder(storage),
                            make_job(n=16, budget=30, strategy=name, limits=limits))
        pulses = [op for op in operations(storage, out.run_id) if op[0] == "pulse"]
        voltage = np.array([p[3] for p in pulses])
        width = np.array([p[4] for p in pulses])
        assert voltage.min() >= -0.45 and voltage.max() <= 0.85
        assert width.min() >= 5e-9 and width.max() <= 1e-6


def test_a_failing_backend_keeps_what_was_fired_and_marks_the_run(storage):
    backend = make_backend(FailingSimBackend, fail_at_pulse=3)
    with pytest.raises(BackendUnavailable):
        program_cells(backend, LogRecorder(storage), make_job(n=8, budget=20))
    run = storage.list_runs()[0]
    assert run["status"] == "failed" and "link dropped" in run["error"]
    kinds = [op[0] for op in operations(storage, run["id"])]
    # the initial read and two verified iterations were committed before the failure
    assert kinds.count("pulse") == sum(backend.pulse_calls) == 16
    assert kinds.count("read") == sum(backend.read_calls) == 8 + 16


def test_ispp_works_within_a_bench_pulse_generator_width_floor(storage):
    # deploy/bench.toml: the 33500B cannot make pulses shorter than 16 ns
    limits = Limits(width_min=1.6e-8)
    out = program_cells(make_backend(seed=4), LogRecorder(storage),
                        make_job(seed=4, budget=100, limits=limits))
    assert out.converged.mean() >= 0.95
    widths = {op[4] for op in operations(storage, out.run_id) if op[0] == "pulse"}
    assert widths == {1.6e-8}


class LockWatchingSimBackend(CountingSimBackend):
    """Test double: the real simulated backend noting whether the run's SQLite connection
    holds an open (write) transaction while the backend works."""

    def __init__(self, *args, storage: Storage, **kwargs):
        super().__init__(*args, **kwargs)
        self.storage = storage
        self.in_transaction: list[bool] = []

    def read(self, rows, cols, v_read=0.2):
        self.in_transaction.append(self.storage._conn.in_transaction)
        return super().read(rows, cols, v_read)

    def pulse(self, rows, cols, voltage, width):
        self.in_transaction.append(self.storage._conn.in_transaction)
        return super().pulse(rows, cols, voltage, width)


@pytest.mark.parametrize("strategy", ["ispp", "predictor"])
def test_no_write_lock_is_held_while_the_backend_works(storage, strategy):
    """A bench's batch read takes minutes; job bookkeeping on other connections (60 s busy
    timeout) must never wait for it."""
    backend = make_backend(LockWatchingSimBackend, storage=storage)
    out = program_cells(backend, LogRecorder(storage),
                        make_job(32, strategy=strategy, budget=100))
    assert out.converged.sum() >= 30 and len(backend.in_transaction) > 4
    assert not any(backend.in_transaction)

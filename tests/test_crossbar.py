"""The Crossbar: variability, stuck devices, noise, reproducibility, save/load, validation."""

import numpy as np
import pytest

from sim_backend import Crossbar, Variability, jart
from sim_backend.variability import BOUNDS


def all_cells(xb):
    r, c = np.indices(xb.shape)
    return r.ravel(), c.ravel()


def mixed_pulses(xb, seed):
    rng = np.random.default_rng(seed)
    n = xb.rows * xb.cols
    V = np.where(rng.random(n) < 0.5, -rng.uniform(0.4, 0.6, n), rng.uniform(0.9, 1.1, n))
    W = 10 ** rng.uniform(-8, -5, n)
    return V, W


@pytest.mark.parametrize("preset", ["d2d", "realistic"])
def test_d2d_parameters_respect_their_bounds(preset):
    xb = Crossbar(64, 64, seed=3, variability=preset)
    for which in ("device", "now"):
        params = xb.device_params(which)
        for name, (lo, hi) in BOUNDS.items():
            assert np.all((params[name] >= lo) & (params[name] <= hi)), name
    # σ = 1 puts most devices of the ±10 % parameters at a bound, and varies all of them.
    r = xb.device_params("device")["r"]
    assert np.mean(np.isclose(r, BOUNDS["r"][0]) | np.isclose(r, BOUNDS["r"][1])) > 0.5
    assert np.std(xb.device_params("device")["N_min"]) > 0


def test_c2c_parameters_stay_within_bounds_after_many_pulses():
    xb = Crossbar(16, 16, seed=4, variability="realistic")
    rows, cols = all_cells(xb)
    for k in range(30):
        V, W = mixed_pulses(xb, k)
        xb.pulse(rows, cols, V, W)
    own, now = xb.device_params("device"), xb.device_params("now")
    for name, (lo, hi) in BOUNDS.items():
        assert np.all((now[name] >= lo) & (now[name] <= hi)), name
    assert np.all(now["N_max"] <= own["N_max"] * 1.1 + 1e-12)
    assert np.all(now["N_min"] >= own["N_min"] * 0.1 - 1e-12)
    assert np.all(np.abs(now["r"] / own["r"] - 1) <= 0.1 + 1e-12)
    assert not np.allclose(now["r"], own["r"], rtol=1e-6, atol=0.0)


def test_ideal_devices_are_nominal():
    params = Crossbar(4, 4, variability="ideal").device_params()
    assert np.all(params["r"] == jart.NOMINAL.r)
    assert np.all(params["N_max"] == jart.NOMINAL.N_max)


def repeated_updates(variability, n=12):
    """ΔG of one device from the same state under the same pulse, n times."""
    xb = Crossbar(1, 1, seed=5, variability=variability)
    start = jart.state_for_conductance(np.array([150e-6]))[0]
    dG = []
    for _ in range(n):
        xb.state = start
        G0 = xb.read(0, 0)
        xb.pulse(0, 0, -0.45, 0.3e-6)  # a partial update: sensitive to the device's parameters
        dG.append(float(xb.read(0, 0) - G0))
    return np.array(dG)


def test_identical_pulses_give_different_updates_cycle_to_cycle():
    dG = repeated_updates("realistic")
    assert np.all(dG > 0)
    assert np.std(dG) / np.mean(dG) > 0.05
    assert np.unique(dG).size == dG.size


def test_without_c2c_identical_pulses_give_identical_updates():
    dG = repeated_updates("d2d")
    assert np.ptp(dG) == 0.0
    assert np.ptp(repeated_updates(Variability(1.0, c2c=False))) == 0.0


def test_stuck_devices_never_move():
    xb = Crossbar(32, 32, seed=6, variability="realistic", stuck_fraction=0.2)
    stuck = xb.stuck.ravel()
    assert 0.1 < stuck.mean() < 0.3
    rows, cols = all_cells(xb)
    before = xb.conductance_map().ravel()
    highs = np.isclose(before[stuck], jart.conductance(np.array([jart.N_HI]))[0])
    assert 0 < highs.mean() < 1  # both kinds present
    xb.pulse(rows, cols, -0.9, 1e-3)
    xb.pulse(rows, cols, 1.3, 1e-3)
    xb.state = 1.0
    after = xb.conductance_map().ravel()
    np.testing.assert_array_equal(after[stuck], before[stuck])
    assert np.all(after[~stuck] == jart.conductance(np.array([1.0]))[0])


def run_session(xb):
    rows, cols = all_cells(xb)
    out = []
    for k in range(3):
        V, W = mixed_pulses(xb, 100 + k)
        xb.pulse(rows, cols, V, W)
        out.append(xb.read(rows, cols))
    return np.concatenate(out)


def test_same_seed_same_results_and_different_seed_differs():
    kw = dict(variability="realistic", read_noise=0.01, stuck_fraction=0.05)
    a = run_session(Crossbar(8, 8, seed=7, **kw))
    b = run_session(Crossbar(8, 8, seed=7, **kw))
    c = run_session(Crossbar(8, 8, seed=8, **kw))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_save_and_load_continue_exactly(tmp_path):
    kw = dict(seed=9, variability="realistic", read_noise=0.01, stuck_fraction=0.05)
    straight = Crossbar(8, 8, **kw)
    run_session(straight)
    expected = run_session(straight)

    interrupted = Crossbar(8, 8, **kw)
    run_session(interrupted)
    interrupted.save(tmp_path / "array.npz")
    restored = Crossbar.load(tmp_path / "array.npz")
    assert repr(restored) == repr(interrupted)
    np.testing.assert_array_equal(restored.state, interrupted.state)
    np.testing.assert_array_equal(run_session(restored), expected)


def test_read_never_changes_state_and_noise_has_the_stated_sigma():
    xb = Crossbar(16, 16, seed=10, variability="realistic", read_noise=0.02)
    rows, cols = all_cells(xb)
    xb.state = np.random.default_rng(0).uniform(0.1, 1.9, xb.shape)
    before = xb.state
    reads = np.stack([xb.read(rows, cols) for _ in range(200)])
    np.testing.assert_array_equal(xb.state, before)
    rel = reads / xb.conductance_map().ravel() - 1
    assert np.std(rel) == pytest.approx(0.02, rel=0.05)
    quiet = Crossbar(16, 16, seed=10, read_noise=0.0)
    quiet.state = before
    np.testing.assert_array_equal(quiet.read(rows, cols), quiet.conductance_map().ravel())


def test_read_at_other_voltages_follows_the_nonlinear_iv():
    xb = Crossbar(1, 2)
    xb.state = [[0.3, 1.5]]
    I = xb.read_current([0, 0], [0, 1], v_read=0.1)
    np.testing.assert_allclose(I, jart.current(np.array([0.3, 1.5]), 0.1))
    assert xb.read([0], [0], v_read=0.1)[0] != pytest.approx(xb.read([0], [0])[0], rel=1e-3)


def test_pulse_moves_conductance_in_the_documented_direction():
    xb = Crossbar(1, 2)
    xb.state = 0.5
    g0 = xb.conductance_map()
    xb.pulse([0, 0], [0, 1], [-0.5, 0.9], [1e-7, 2e-6])
    g1 = xb.conductance_map()
    assert g1[0, 0] > g0[0, 0]  # SET at negative voltage
    assert g1[0, 1] < g0[0, 1]  # RESET at positive voltage
    np.testing.assert_array_equal(xb.pulse_count, [1, 1])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(rows=0, cols=0, voltage=-1.0, width=1e-6), "voltage"),
        (dict(rows=0, cols=0, voltage=1.5, width=1e-6), "voltage"),
        (dict(rows=0, cols=0, voltage=-0.5, width=1e-12), "width"),
        (dict(rows=0, cols=0, voltage=-0.5, width=1.0), "width"),
        (dict(rows=0, cols=0, voltage=np.nan, width=1e-6), "voltage"),
        (dict(rows=[0, 0], cols=[1, 1], voltage=-0.5, width=1e-6), "twice"),
    ],
)
def test_bad_pulses_are_rejected_and_nothing_is_applied(kwargs, field):
    xb = Crossbar(2, 2, variability="realistic")
    before = xb.state
    with pytest.raises(ValueError, match=field):
        xb.pulse(**kwargs)
    np.testing.assert_array_equal(xb.state, before)
    assert xb.pulse_count.sum() == 0


def test_cells_outside_the_array_are_rejected():
    xb = Crossbar(2, 3)
    with pytest.raises(IndexError, match="rows"):
        xb.read([2], [0])
    with pytest.raises(IndexError, match="cols"):
        xb.pulse([0], [3], -0.5, 1e-6)
    with pytest.raises(ValueError, match="v_read"):
        xb.read([0], [0], v_read=0.0)
    with pytest.raises(ValueError, match="state"):
        xb.state = 5.0
    with pytest.raises(ValueError, match="variability"):
        Crossbar(2, 2, variability="noisy")


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16])
def test_small_integer_indices_address_the_right_cells(dtype):
    """r * cols + c in the caller's small integer type used to wrap around: the wrong cell."""
    xb = Crossbar(300, 300, seed=1)
    rows, cols = np.array([2, 200], dtype=dtype), np.array([0, 7], dtype=dtype)
    xb.pulse(rows, cols, -0.6, 1e-6)
    assert np.flatnonzero(xb.pulse_count).tolist() == [2 * 300 + 0, 200 * 300 + 7]
    g = xb.conductance_map()
    assert g[2, 0] > 4e-4 and g[200, 7] > 4e-4 and np.count_nonzero(g > 4e-4) == 2


@pytest.mark.parametrize(("field", "corrupt", "message"), [
    ("N", lambda a: np.where(np.arange(a.size) == 3, np.nan, a), "state N"),
    ("pulse_count", lambda a: a[:-1], "pulse_count has shape"),
    ("now_r", lambda a: a * 2, "now_r"),
])
def test_a_corrupted_state_file_does_not_load(tmp_path, field, corrupt, message):
    xb = Crossbar(4, 4, seed=2, variability="realistic", stuck_fraction=0.2)
    xb.pulse(np.arange(4), np.arange(4), -0.5, 1e-6)
    path = tmp_path / "array.npz"
    xb.save(path)
    Crossbar.load(path)  # the file as saved loads
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    arrays[field] = corrupt(arrays[field])
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    with pytest.raises(ValueError, match=message):
        Crossbar.load(bad)

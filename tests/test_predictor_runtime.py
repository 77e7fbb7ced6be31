"""The shipped pulse predictor at run time: input checks, batching, speed, accuracy on held-out
devices, and that neither the runtime nor the service imports torch."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from predictor import scores as M
from predictor.control import PolicyConfig, PredictorPlanner
from predictor.evaluate import NominalInversePlanner, Scenario, fresh_array, one_shot, write_verify
from predictor.runtime import DEFAULT_MODEL, OutOfRangeError, PulsePredictor

# Held-out devices: crossbar seeds never used by training (101-104), validation (201) or the
# benchmark (7001).
TEST_SEED = 7002


@pytest.fixture(scope="module")
def p() -> PulsePredictor:
    return PulsePredictor()


def test_default_model_ships_small_with_metadata(p):
    assert DEFAULT_MODEL.is_file() and DEFAULT_MODEL.stat().st_size < 300_000
    meta = p.metadata
    assert p.name == "memprog-pulse-predictor" and p.version == meta["version"]
    assert meta["training"]["data"]["train"]["variability"] == "realistic"
    assert set(meta["training"]["data"]["train"]["crossbar_seeds"]).isdisjoint({TEST_SEED, 7001})
    assert all(-0.9 <= v < 0 for v in meta["voltages"]["set"])
    assert all(0 < v <= 1.3 for v in meta["voltages"]["reset"])
    for polarity in ("set", "reset"):
        m = meta["metrics"][polarity]
        assert m["val_rmse_log10_width"] < 0.05  # < 12 % in width on validation devices
        assert m["parameters"] < 20_000
    assert -1.0 <= p.one_shot_latent <= 1.0


def test_target_outside_trained_range_is_an_error(p):
    lo, hi = p.target_range
    with pytest.raises(OutOfRangeError, match="outside the model's trained range"):
        p.predict_width(2e-4, hi * 1.01, -0.5, 0.0)
    with pytest.raises(OutOfRangeError):
        p.predict_width(3e-4, lo * 0.99, 1.0, 0.0)
    with pytest.raises(OutOfRangeError):
        PredictorPlanner(p, np.array([2e-4, 600e-6]))
    # Inside the range: fine.
    assert np.isfinite(p.predict_width(2e-4, hi, -0.5, 0.0))


def test_other_input_checks(p):
    with pytest.raises(OutOfRangeError, match="amplitude"):
        p.predict_width(2e-4, 3e-4, -0.8, 0.0)  # SET amplitude beyond the trained range
    with pytest.raises(OutOfRangeError, match="amplitude"):
        p.predict_width(4e-4, 3e-4, 0.5, 0.0)
    with pytest.raises(ValueError, match="opposite"):
        p.predict_width(2e-4, 3e-4, 1.0, 0.0)  # RESET cannot raise G
    with pytest.raises(ValueError, match="finite"):
        p.predict_width(np.nan, 3e-4, -0.5, 0.0)
    with pytest.raises(ValueError, match="0 V"):
        p.predict_width(2e-4, 3e-4, 0.0, 0.0)
    # Documented fallbacks: a measured start beyond the window is clamped to it, the latent to
    # its trained range.
    lo_w, _ = p.window
    assert p.predict_log10_width(lo_w * 0.9, 2e-4, -0.5, 0.0) == pytest.approx(
        p.predict_log10_width(lo_w, 2e-4, -0.5, 0.0))
    assert p.predict_log10_width(2e-4, 3e-4, -0.5, 5.0) == pytest.approx(
        p.predict_log10_width(2e-4, 3e-4, -0.5, 1.0))


def test_predictions_are_physical(p):
    g = np.full(5, 250e-6)
    # A larger update needs a longer pulse; a slower device (larger z) too; a stronger pulse a
    # shorter one.
    w = p.predict_width(g, g * np.array([1.01, 1.05, 1.2, 1.5, 2.0]), -0.45, 0.0)
    assert np.all(np.diff(w) > 0)
    w = p.predict_width(g, g * 1.2, -0.45, np.array([-1, -0.5, 0, 0.5, 1]))
    assert np.all(np.diff(w) > 0)
    w = p.predict_width(g, g * 1.2, -np.array([0.35, 0.4, 0.45, 0.5, 0.55]), 0.0)
    assert np.all(np.diff(w) < 0)


def test_latent_inference_inverts_the_network(p):
    rng = np.random.default_rng(1)
    n = 200
    g_s = rng.uniform(120e-6, 450e-6, n)
    g_t = g_s * rng.uniform(1.02, 1.2, n)
    z = rng.uniform(-0.9, 0.9, n)
    w = p.predict_width(g_s, g_t, -0.45, z)
    z_hat, kind = p.infer_latent(g_s, g_t, -0.45, w)
    assert np.all(kind == 0)
    np.testing.assert_allclose(z_hat, z, atol=0.01)
    # A device that did not move gives a lower bound.
    _, kind = p.infer_latent(g_s, g_s, -0.45, w)
    assert np.all(kind == 1)


def test_choose_pulse_respects_limits_and_metadata(p):
    g = np.array([150e-6, 300e-6, 500e-6, 300e-6])
    t = np.array([300e-6, 350e-6, 200e-6, 250e-6])
    v, w = p.choose_pulse(g, t, 0.0, v_set_max=0.5, v_reset_max=1.0, width_min=2e-9,
                          width_max=1e-3)
    assert np.all(np.sign(v) == [-1, -1, 1, 1])
    assert np.all(v >= -0.5) and np.all(v <= 1.0)
    assert set(np.round(v, 6)).issubset(set(np.round(np.r_[p.voltages("set"),
                                                           p.voltages("reset")], 6)))
    assert np.all((w >= 2e-9) & (w <= 1e-3))
    with pytest.raises(OutOfRangeError, match="v_set_max"):
        p.choose_pulse(g[:1], t[:1], 0.0, v_set_max=0.2)


def test_batched_vs_single_and_speed(p):
    rng = np.random.default_rng(0)
    n = 1 << 16
    g_s = rng.uniform(100e-6, 500e-6, n)
    g_t = np.minimum(g_s * rng.uniform(1.01, 1.3, n), 550e-6)
    z = rng.uniform(-1, 1, n)
    batch = p.predict_log10_width(g_s, g_t, -0.5, z)
    single = np.array([p.predict_log10_width(g_s[i], g_t[i], -0.5, z[i]) for i in range(100)])
    np.testing.assert_allclose(batch[:100], single, atol=2e-5)  # float32 GEMM blocking
    best = min(_timed(lambda: p.predict_log10_width(g_s, g_t, -0.5, z)) for _ in range(3))
    # The acceptance figure (≥ 1e6/s, < 100 µs single) is measured by `memprog bench
    # programming`; here a margin for a loaded CI machine.
    assert n / best > 3e5
    one = sorted(_timed(lambda: p.predict_log10_width(2e-4, 2.2e-4, -0.5, 0.0))
                 for _ in range(50))
    assert one[25] < 1e-3


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# ----------------------------------------------------------- accuracy on held-out devices


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    return Scenario(rows=16, cols=16, seed=TEST_SEED)


def test_write_verify_on_held_out_devices(p, scenario):
    xb, r, c, target = fresh_array(scenario)
    res = write_verify(xb, r, c, target, PredictorPlanner(p, target), 0.02, 20)
    stats = M.pulse_statistics(res.pulses, res.converged)
    # Acceptance: median ≤ 3, p99 ≤ 10, ≥ 99.5 % within 20 pulses (256 devices here).
    assert stats["converged_fraction"] >= 0.995
    assert stats["pulses_median"] <= 3
    assert stats["pulses_p99"] <= 10
    # The truth agrees with the verify reads (no read noise): within 2 % of the target.
    assert np.all(np.abs(M.rpd_target(res.g_final, target)[res.converged]) <= 0.02 + 1e-12)


def test_blind_one_shot_on_held_out_devices_is_no_worse_than_the_noise_free_baseline(p, scenario):
    xb, r, c, target = fresh_array(scenario)
    g0, g1 = one_shot(xb, r, c, target, PredictorPlanner(
        p, target, config=PolicyConfig(first_latent=None)))
    ours = M.within(M.rpd_update(g1, target, g0))["50%"]
    xb, r, c, target = fresh_array(scenario)
    g0, g1 = one_shot(xb, r, c, target, NominalInversePlanner(target))
    baseline = M.within(M.rpd_update(g1, target, g0))["50%"]
    # Stated bound: blind one shot (device unknown) ≥ 35 % within ±50 % of the update — the
    # realistic preset's device-to-device spread of switching times (×100 and more) caps any
    # blind rule near 55 % (see `memprog benchmark programming`, blind_bound) — and no worse than
    # the noise-free baseline.
    assert ours >= 0.35
    assert ours >= baseline - 0.02


def test_runtime_and_service_do_not_import_torch():
    code = (
        "import sys\n"
        "import predictor.runtime, predictor.control, predictor.strategy, predictor.evaluate\n"
        "import predictor.dataset, predictor.scores, programming\n"
        "from predictor.runtime import PulsePredictor\n"
        "PulsePredictor().predict_width(2e-4, 3e-4, -0.5, 0.0)\n"
        "try:\n"
        "    import service.app\n"
        "except ImportError:\n"
        "    pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'onnx' not in sys.modules, 'onnx was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)

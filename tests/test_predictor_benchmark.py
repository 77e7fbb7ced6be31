"""`memprog benchmark programming` end to end at a tiny size: JSON figures and PNG plots."""

from __future__ import annotations

import json

import pytest

from predictor.benchmark import run_benchmark
from predictor.evaluate import Scenario, blind_bound
from service.cli import main


def test_benchmark_writes_json_and_plots(tmp_path):
    pytest.importorskip("matplotlib")
    report = run_benchmark(tmp_path, scenario=Scenario(rows=8, cols=8, seed=7003,
                                                       baseline_max_pulses=60),
                           bound=False, log=lambda *a: None)
    saved = json.loads((tmp_path / "programming.json").read_text())
    assert saved["scenario"]["seed"] == 7003
    for name in ("predictor", "noise_free_baseline", "predictor_calibrated"):
        shot = saved["one_shot"][name]
        assert shot["devices"] == 64
        assert set(shot["within_update"]) == {"10%", "20%", "50%"}
        assert set(shot["within_target"]) == {"10%", "20%", "50%"}
    wv = saved["write_verify"]
    for name in ("predictor", "ispp", "fixed"):
        for key in ("pulses_median", "pulses_p95", "pulses_p99", "pulses_max",
                    "converged_fraction", "device_time_total_s"):
            assert key in wv[name]
    assert wv["ratio_ispp_over_predictor"]["pulses_total"] > 1
    assert saved["inference"]["batched_predictions_per_s"] > 0
    assert len(report["plots"]) == 2
    for path in report["plots"]:
        with open(path, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def test_blind_bound_is_a_fraction_with_its_error_and_independent_of_batching():
    from predictor.runtime import PulsePredictor

    predictor = PulsePredictor()
    args = dict(transitions=5, devices=32, widths=8)
    bound = blind_bound(Scenario(seed=7003, burn_in=1), predictor, chunk=2, **args)
    assert 0.0 <= bound["best_fraction_within_50pct_update_mean"] <= 1.0
    assert bound["standard_error"] >= 0.0
    assert len(bound["best_fraction_per_transition"]) == 5
    assert bound["amplitudes_V"]["set"] == predictor.voltages("set").tolist()
    one_by_one = blind_bound(Scenario(seed=7003, burn_in=1), predictor, chunk=1, **args)
    assert one_by_one["best_fraction_per_transition"] == bound["best_fraction_per_transition"]


def test_cli_has_the_subcommands(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "programming", "--help"])
    assert "--read-time" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--out" in capsys.readouterr().out


def test_the_evaluation_runs_the_services_loop_and_tallies_each_cells_pulse_widths():
    """predictor.evaluate's write-and-verify is programming.program_cells (no loop of its own):
    on twin crossbars, the same pulses per cell as the loop's own traces, and the widths the
    tally recorder summed per cell — cells in a shuffled order — are those of the traces."""
    import numpy as np

    from drivers.base import Limits
    from drivers.sim import SimBackend
    from predictor.evaluate import write_verify
    from programming import ProgramJob, get_strategy, program_cells
    from programming.tally import TallyRecorder
    from sim_backend import Crossbar

    rng = np.random.default_rng(5)
    flat = rng.permutation(64)[:40]
    rows, cols = flat // 8, flat % 8
    target = rng.uniform(120e-6, 500e-6, flat.size)

    def twin() -> Crossbar:
        return Crossbar(8, 8, seed=11, variability="realistic", read_noise=0.002)

    res = write_verify(twin(), rows, cols, target, get_strategy("ispp").begin(target, Limits()),
                       0.05, 60)
    job = ProgramJob(rows=rows, cols=cols, target=target, tolerance=0.05, max_pulses=60,
                     strategy="ispp", verify=True, trace=True, v_read=0.2, limits=Limits())
    xb = twin()
    out = program_cells(SimBackend(xb), TallyRecorder(rows, cols, 8), job)
    assert out.traces is not None
    assert res.pulses.tolist() == out.pulses.tolist()
    assert res.pulses.sum() > flat.size  # more than one pulse per cell: a real run
    widths = np.array([sum(step["width"] for step in trace) for trace in out.traces])
    np.testing.assert_allclose(res.width_sum, widths, rtol=1e-12)
    assert res.reads.tolist() == (out.pulses + 1).tolist()
    np.testing.assert_allclose(res.g_final, xb.conductance_map().ravel()[flat])

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

"""``memprog benchmark foreign`` at a tiny size: every population (the training one, the shipped
examples, one given on the command line) before and after calibration, as JSON and Markdown."""

from __future__ import annotations

import json

from predictor.adapted import read_adapted
from predictor.benchmark_foreign import run_benchmark
from sim_backend.population import shipped


def test_the_foreign_benchmark_reports_every_population_before_and_after(tmp_path):
    extra = tmp_path / "warm.toml"
    extra.write_text('name = "warm (test)"\n[nominal]\nT0 = 315.0\n')
    report = run_benchmark(tmp_path / "out", [extra], rows=12, cols=12, plots=False,
                           log=lambda *a: None)
    saved = json.loads((tmp_path / "out" / "foreign.json").read_text())
    names = list(saved["populations"])
    assert names[0] == "training (realistic)" and names[-1] == "warm (test)"
    assert len(names) == 2 + len(shipped())
    for entry in saved["populations"].values():
        for phase in ("before", "adapted", "after"):
            wv = entry[phase]["write_verify"]
            assert 0 <= wv["converged_within_20"] <= 1 and wv["pulses_max"] <= 20
            assert set(entry[phase]["one_shot"]) == {"blind", "known"}
            assert wv["fit"]["verdict"] in ("fits", "calibration advised", "unknown")
        cal = entry["calibration"]
        assert cal["cells"] == 7 and cal["pulses"] == 7 * 20  # 5 % of 144 cells, 20 each
        assert read_adapted(cal["model_file"]).lineage["cells"]["calibrated"] == 7
        assert entry["after"] == (entry["adapted"] if entry["activated"] else entry["before"])
        assert set(entry["verdicts"]) >= {"median ≤ 3 pulses", "calibration ≤ 60 s wall"}
    assert "| training (realistic) | shipped |" in (tmp_path / "out" / "foreign.md").read_text()
    assert report["table_markdown"] == saved["table_markdown"]

"""`memprog benchmark sim` runs end to end and reports its figures (a small array, one repeat)."""

import json

from service.cli import main


def test_bench_sim_writes_its_report(tmp_path, capsys):
    report = tmp_path / "sim.json"
    assert main(["bench", "sim", "--rows", "16", "--cols", "16", "--repeats", "1",
                 "--report", str(report)]) == 0
    figures = json.loads(report.read_text())
    assert figures["devices"] == 256
    for key in ("pulse_mixed_s", "pulse_mid_switch_s", "read_all_s"):
        assert figures[key] > 0
    assert figures["accuracy_max_rel_G_error_vs_reference"] < 1e-3
    assert figures["accuracy_max_rel_G_change_halving_tol"] < 5e-3
    assert "read the whole array" in capsys.readouterr().out

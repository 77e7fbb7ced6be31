"""``memprog train --finetune``: the network fine-tuned offline (torch) on a station's own
pulses — from the service's database — loads in the runtime, carries its lineage, and fits the
held-out devices of that station better than its parent."""

from __future__ import annotations

import time

import pytest

API = "/api/v1"
THIN = """
name = "thin (test)"
[nominal]
r = 40e-9
[variability]
preset = "realistic"
"""


@pytest.mark.slow
def test_a_finetune_on_a_stations_database_improves_its_held_out_fit(tmp_path):
    pytest.importorskip("torch")  # the train extra: always in the test environment
    from fastapi.testclient import TestClient

    from predictor.runtime import DEFAULT_MODEL, PulsePredictor
    from service.app import create_app
    from service.cli import main
    from service.config import Settings

    population = tmp_path / "thin.toml"
    population.write_text(THIN)
    database = tmp_path / "station.db"
    settings = Settings(database=database, sim={"rows": 24, "cols": 24, "seed": 5,
                                                "population": str(population)})
    with TestClient(create_app(settings)) as api:  # the station's pulses, recorded
        cal = api.post(f"{API}/calibrations", json={"cells": 160, "pulses_per_cell": 20,
                                                    "activate": "never"}).json()
        deadline = time.monotonic() + 120
        while api.get(f"{API}/calibrations/{cal['id']}").json()["status"] \
                in ("pulsing", "fitting"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    out = tmp_path / "tuned.onnx"
    assert main(["train", "--finetune", "--from", str(DEFAULT_MODEL), "--data", str(database),
                 "--out", str(out), "--epochs", "15"]) == 0
    tuned, parent = PulsePredictor(out), PulsePredictor()
    meta = tuned.metadata
    assert meta["created_by"] == "memprog train --finetune"
    lineage = meta["lineage"]
    assert lineage["parent_fingerprint"] == parent.fingerprint
    assert lineage["records_used"] > 1000 and lineage["held_out"]["devices"] == 40
    assert lineage["time_span"][0] <= lineage["time_span"][1]
    held = lineage["held_out"]
    assert held["adapted"]["mean_abs_error_decades"] < held["parent"]["mean_abs_error_decades"]
    assert tuned.fingerprint != parent.fingerprint
    with pytest.raises(SystemExit, match="--from MODEL and --data"):
        main(["train", "--finetune", "--out", str(out)])

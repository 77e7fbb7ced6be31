"""The ``predictor`` strategy in the service: default of /program, converges, one shot, /health,
reload without restart, a service without a loadable model, and training data from /export."""

from __future__ import annotations

import numpy as np
import pytest

from predictor import strategy
from predictor.log_records import load_export
from programming import default_strategy, strategy_names

API = "/api/v1"


@pytest.fixture(autouse=True)
def _restore_predictor():
    """Each test leaves the process-wide predictor as it found it (the shipped model)."""
    yield
    strategy.startup(None)


def _targets(n=16, row=0, seed=0):
    rng = np.random.default_rng(seed)
    return [{"row": row + k // 16, "col": k % 16, "conductance": float(g)}
            for k, g in enumerate(rng.uniform(110e-6, 540e-6, n))]


def test_predictor_is_the_default_and_converges(api):
    assert "predictor" in strategy_names() and default_strategy() == "predictor"
    body = api.get(f"{API}/array").json()
    assert body["default_strategy"] == "predictor" and "predictor" in body["strategies"]
    run = api.post(f"{API}/program", json={"targets": _targets(32), "trace": True}).json()
    assert run["strategy"] == "predictor"
    assert run["converged"] == 32, run
    pulses = [r["pulses"] for r in run["results"]]
    assert np.median(pulses) <= 3 and max(pulses) <= 12
    limits = api.get(f"{API}/array").json()["limits"]
    meta_volts = strategy.current().metadata["voltages"]
    allowed = set(np.round(meta_volts["set"] + meta_volts["reset"], 6))
    for r in run["results"]:
        assert abs(r["final"] - r["target"]) <= 0.02 * r["target"]
        for step in r["trace"]:
            assert round(step["voltage"], 6) in allowed  # voltages from the model's metadata
            assert -limits["v_set_max"] <= step["voltage"] <= limits["v_reset_max"]
            assert limits["width_min"] <= step["width"] <= limits["width_max"]


def test_predictor_one_shot(api):
    shot = api.post(f"{API}/program", json={"targets": _targets(16, row=2), "verify": False,
                                            "trace": True}).json()
    assert shot["strategy"] == "predictor" and shot["total_pulses"] == 16
    assert all(r["pulses"] == 1 and r["final"] is None for r in shot["results"])


def test_target_outside_the_trained_range_is_422_and_fires_nothing(api):
    before = api.get(f"{API}/export").text.count("\n")
    r = api.post(f"{API}/program", json={"targets": [{"row": 0, "col": 0,
                                                       "conductance": 80e-6}],
                                         "strategy": "predictor"})
    assert r.status_code == 422 and "trained range" in r.text
    assert api.get(f"{API}/export").text.count("\n") == before


def test_health_names_the_model_and_reload_keeps_serving(api):
    health = api.get(f"{API}/health").json()["predictor"]
    assert health["status"] == "loaded"
    assert health["name"] == "memprog-pulse-predictor" and health["version"]
    info = api.get(f"{API}/predictor").json()
    assert info["version"] == health["version"]
    assert info["metadata"]["conductance_range"]["unit"] == "S"
    again = api.post(f"{API}/predictor/reload").json()
    assert again["status"] == "loaded" and again["version"] == health["version"]
    assert api.get(f"{API}/health").json()["predictor"]["version"] == health["version"]


def test_service_starts_without_a_loadable_model(sim_settings, client_for, tmp_path):
    from service.app import create_app

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    settings = sim_settings.model_copy(update={"predictor": {"path": broken}})
    settings = type(sim_settings)(**(sim_settings.model_dump() | {"predictor": {"path": broken}}))
    with client_for(create_app(settings)) as client:
        health = client.get(f"{API}/health").json()
        assert health["status"] == "ok"
        assert health["predictor"]["status"] == "unavailable"
        assert health["predictor"]["error"]
        assert default_strategy() == "ispp"
        r = client.post(f"{API}/program", json={"targets": _targets(2),
                                                "strategy": "predictor"})
        assert r.status_code == 503 and "not loaded" in r.text
        ok = client.post(f"{API}/program", json={"targets": _targets(2), "max_pulses": 100})
        assert ok.status_code == 200 and ok.json()["strategy"] == "ispp"
        # A failed reload answers 500 and leaves the service as it was.
        assert client.post(f"{API}/predictor/reload").status_code == 500


def test_export_of_a_predictor_run_is_training_data(api, tmp_path):
    run = api.post(f"{API}/program", json={"targets": _targets(16, row=4, seed=1)}).json()
    path = tmp_path / "ops.csv"
    path.write_text(api.get(f"{API}/export").text)
    rec = load_export(path)
    assert len(rec) == run["total_pulses"]
    assert rec.usable().mean() > 0.8
    # The device latents the model infers from the lab's own log are within the trained range.
    z = strategy.current().device_latents(rec)
    assert np.all(np.abs(z[np.isfinite(z)]) <= 1.0)


# ------------------------------------------- requests the predictor cannot serve: 422 up front


def _nothing_recorded(settings) -> bool:
    import sqlite3

    with sqlite3.connect(settings.database) as conn:
        runs = conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
        ops = conn.execute("SELECT COUNT(*) FROM operations").fetchone()[0]
        jobs = conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
    return runs == ops == jobs == 0


def test_limits_that_forbid_every_model_amplitude_are_422_before_any_run(tmp_path, client_for):
    from service.app import create_app
    from service.config import Settings

    settings = Settings(backend="sim", database=tmp_path / "m.db",
                        sim={"rows": 4, "cols": 4, "seed": 7, "variability": "realistic"},
                        limits={"v_set_max": 0.3})
    with client_for(create_app(settings)) as api:
        for path in ("/program", "/jobs"):
            r = api.post(f"{API}{path}", json={"targets": _targets(4)})
            assert r.status_code == 422, r.text
            (problem,) = r.json()["detail"]
            assert problem["loc"] == ["body", "strategy"] and "v_set_max" in problem["msg"]
            assert problem["ctx"]["limit"] == 0.3
        # another strategy still works within these limits
        assert api.post(f"{API}/program", json={"targets": _targets(2), "strategy": "ispp",
                                                "max_pulses": 1}).status_code == 200
    import sqlite3

    with sqlite3.connect(settings.database) as conn:  # only the ispp run
        assert [r[0] for r in conn.execute("SELECT strategy FROM runs")] == ["ispp"]


def test_a_read_voltage_other_than_the_models_is_422(api, sim_settings):
    r = api.post(f"{API}/program", json={"targets": _targets(4), "v_read": -0.3})
    assert r.status_code == 422, r.text
    (problem,) = r.json()["detail"]
    assert problem["loc"] == ["body", "v_read"] and "0.2 V" in problem["msg"]
    assert _nothing_recorded(sim_settings)


def test_a_job_with_a_target_outside_the_trained_range_is_refused_not_queued(api, sim_settings):
    targets = _targets(3)
    targets[2]["conductance"] = 50e-6
    for path in ("/program", "/jobs"):
        r = api.post(f"{API}{path}", json={"targets": targets})
        assert r.status_code == 422, r.text
        (problem,) = r.json()["detail"]
        assert problem["loc"] == ["body", "targets", 2, "conductance"]
        assert problem["ctx"]["limit"] == pytest.approx(strategy.current().target_range[0])
    assert _nothing_recorded(sim_settings)


def test_nan_in_a_request_is_422_not_500(api, sim_settings):
    body = '{"targets": [{"row": 0, "col": 0, "conductance": NaN}], "tolerance": Infinity}'
    r = api.post(f"{API}/program", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert {tuple(p["loc"][1:]) for p in r.json()["detail"]} \
        == {("targets", 0, "conductance"), ("tolerance",)}
    assert _nothing_recorded(sim_settings)


def test_a_device_that_never_moves_keeps_its_latent_within_the_trained_range():
    from predictor.control import PredictorPlanner

    p = strategy.current()
    planner = PredictorPlanner(p, np.full(4, 400e-6))
    g = np.full(4, 200e-6)
    for _ in range(30):  # every pulse "does nothing": a lower bound, raised each time
        planner.choose(np.arange(4), g)
    planner.observe(np.arange(4), g)
    lo, hi = p.latent_range
    assert np.all((planner.latent >= lo) & (planner.latent <= hi))
    assert np.allclose(planner.latent, hi)

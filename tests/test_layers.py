"""Layers: a weight matrix programmed into the simulated array and multiplied in place
(``/api/v1/layers``), checked against an independent computation from the simulator's state
(each device's JART current at its row's voltage, summed by column), and its bad inputs refused
naming the field with nothing stored or fired."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from sim_backend import jart

API = "/api/v1"


def wait_job(api, job_id: int, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while (job := api.get(f"{API}/jobs/{job_id}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job


def weights(rows: int, outputs: int, seed: int = 3) -> list[list[float]]:
    return np.random.default_rng(seed).uniform(-1, 1, (rows, outputs)).round(3).tolist()


def make_layer(api, name: str, w, origin=(0, 0), **mapping) -> dict:
    answer = api.post(f"{API}/layers", json={
        "name": name, "weights": w, "origin": {"row": origin[0], "col": origin[1]},
        "mapping": mapping, "tolerance": 0.02, "max_pulses": 60, "strategy": "ispp"})
    assert answer.status_code == 202, answer.text
    layer = answer.json()
    assert wait_job(api, layer["job"]["id"])["status"] == "completed"
    return layer


def test_a_layer_is_programmed_then_multiplied_as_its_devices_conduct(api):
    w = weights(6, 3)
    layer = make_layer(api, "dense", w, origin=(2, 4))
    assert layer["cells"] == [[2, 4, 7, 9]] and layer["rows"] == 6 and layer["outputs"] == 3

    detail = api.get(f"{API}/layers/dense").json()
    plus, minus = np.array(detail["programmed_plus"]), np.array(detail["programmed_minus"])
    tp, tm = np.array(detail["target_plus"]), np.array(detail["target_minus"])
    assert np.mean(np.abs(plus / tp - 1) <= 0.02) >= 0.9  # write-and-verify to 2 %
    assert np.mean(np.abs(minus / tm - 1) <= 0.02) >= 0.9
    k = detail["mapping"]["scale"]
    np.testing.assert_allclose(tp - tm, k * np.array(w), rtol=1e-12, atol=1e-18)
    assert detail["weight_error_rms"] < 0.05  # weight units, |w| ≤ 1

    x = np.random.default_rng(9).uniform(-1, 1, (5, 6)).round(3)
    x[0] = 0.0  # an input of zeros: no current
    x[1, 0] = 0.01  # below the read floor at 0.2 V: driven at 0 V
    answer = api.post(f"{API}/layers/dense/multiply", json={"inputs": x.tolist()})
    assert answer.status_code == 200, answer.text
    product = answer.json()
    small = (np.abs(x * 0.2) < 0.05) & (x != 0)  # below v_read_min: driven at 0 V
    assert product["v_in"] == 0.2 and product["inputs_zeroed"] == small.sum() >= 1

    # independently: the simulator's state, each device's current at its row's voltage
    crossbar = api.app.state.memprog.owner.backend.crossbar
    N = crossbar._N.reshape(crossbar.shape)[2:8, 4:10]
    V = np.where(np.abs(x * 0.2) < 0.05, 0.0, x * 0.2)
    currents = np.stack([jart.current(N, v[:, None]) * (v[:, None] != 0) for v in V])
    np.testing.assert_allclose(product["current_plus"], currents[:, :, 0::2].sum(axis=1),
                               rtol=1e-12)
    np.testing.assert_allclose(product["current_minus"], currents[:, :, 1::2].sum(axis=1),
                               rtol=1e-12)
    power = np.abs(V[:, :, None] * currents).sum(axis=(1, 2))
    np.testing.assert_allclose(product["read_power"], power, rtol=1e-12)
    np.testing.assert_allclose(product["energy_per_product"], power * 1e-8, rtol=1e-12)
    assert product["tops_per_watt"] == pytest.approx(2 * 6 * 3 / (1e-8 * power.mean()) / 1e12)
    assert product["outputs"][0] == [0.0, 0.0, 0.0] and product["read_power"][0] == 0.0
    np.testing.assert_allclose(product["ideal"], x @ np.array(w), atol=1e-12)
    # the nonlinear current and the programming error, not a wrong mapping: close to W·x
    assert product["relative_error"] < 0.25


def test_low_power_keeps_the_products_and_draws_less(api):
    w = weights(5, 3, seed=5)
    make_layer(api, "balanced", w, origin=(0, 0))
    make_layer(api, "frugal", w, origin=(8, 0), low_power=True)
    x = np.random.default_rng(2).uniform(-1, 1, (8, 5)).round(3).tolist()
    a = api.post(f"{API}/layers/balanced/multiply", json={"inputs": x}).json()
    b = api.post(f"{API}/layers/frugal/multiply", json={"inputs": x}).json()
    assert np.mean(b["read_power"]) < 0.8 * np.mean(a["read_power"])
    assert b["tops_per_watt"] > a["tops_per_watt"]
    assert b["relative_error"] < 0.3 and a["relative_error"] < 0.3
    assert [layer["name"] for layer in api.get(f"{API}/layers").json()["layers"]] == \
        ["balanced", "frugal"]


def test_bad_layers_and_inputs_are_refused_naming_the_field_with_nothing_stored_or_fired(api):
    make_layer(api, "first", weights(4, 2), origin=(0, 0))
    ops = api.get(f"{API}/export").text.count("\n")
    base = {"name": "second", "weights": weights(4, 2), "origin": {"row": 8, "col": 8}}

    def refused(body, loc_start, raw=None):
        answer = api.post(f"{API}/layers", content=raw, headers={
            "Content-Type": "application/json"}) if raw else api.post(f"{API}/layers", json=body)
        assert answer.status_code == 422, answer.text
        loc = answer.json()["detail"][0]["loc"]
        assert loc[:len(loc_start)] == loc_start, answer.json()
        return answer.json()["detail"][0]["msg"]

    assert "rectangular" in refused({**base, "weights": [[1, 2], [3]]}, ["body", "weights", 1])
    fixed = json.loads(json.dumps(base))
    fixed["weights"][0][0] = "NaN"
    refused(None, ["body", "weights", 0, 0], raw=json.dumps(fixed).replace('"NaN"', "NaN"))
    refused(None, ["body", "weights", 0, 0], raw=json.dumps(fixed).replace('"NaN"', "Infinity"))
    assert "past the array" in refused({**base, "origin": {"row": 8, "col": 13}},
                                       ["body", "origin", "col"])
    assert "pass the array" in refused({**base, "origin": {"row": 14, "col": 0}},
                                       ["body", "origin", "row"])
    assert "overlaps layer 'first'" in refused({**base, "origin": {"row": 3, "col": 3}},
                                               ["body", "origin"])
    assert "exists" in refused({**base, "name": "first"}, ["body", "name"])
    refused({**base, "mapping": {"g_min": 500e-6, "g_max": 100e-6}}, ["body", "mapping"])
    refused({**base, "strategy": "predictor", "mapping": {"g_min": 20e-6, "g_max": 500e-6}},
            ["body", "mapping", "g_min"])
    assert [layer["name"] for layer in api.get(f"{API}/layers").json()["layers"]] == ["first"]

    def refused_inputs(inputs, loc_start):
        answer = api.post(f"{API}/layers/first/multiply", json={"inputs": inputs})
        assert answer.status_code == 422, answer.text
        assert answer.json()["detail"][0]["loc"][:len(loc_start)] == loc_start, answer.json()

    refused_inputs([[0.5, 1.5, 0, 0]], ["body", "inputs", 0, 1])
    refused_inputs([[0.5, 0.5, 0]], ["body", "inputs", 0])
    refused_inputs([[0.5] * 4] * 1025, ["body", "inputs"])
    assert api.post(f"{API}/layers/first/multiply",
                    json={"inputs": [[0.1] * 4], "v_in": 0.9}).status_code == 422
    assert api.post(f"{API}/layers/nope/multiply", json={"inputs": [[0.1]]}).status_code == 404
    assert api.get(f"{API}/export").text.count("\n") == ops  # nothing fired or read


def test_on_a_bench_a_product_is_read_cell_by_cell_through_the_matrix(tmp_path):
    """The emulated VISA bench (SCPI emulators on loopback): the layer is programmed through
    the instruments, and its product read one voltage at a time, every device through the
    switch matrix, summed by superposition — the currents the emulated array gives at those
    voltages, and nothing pulsed."""
    from tests.test_service_visa import Rig

    rig = Rig(tmp_path / "visa", variability="d2d")
    try:
        w = weights(3, 2, seed=8)
        layer = rig.lab.program_layer("bench", w, origin=(1, 2), strategy="ispp",
                                      max_pulses=60, timeout=300)
        assert layer.job is not None and layer.job.status == "completed"
        pulses_before = rig.emu.bench.pulse_counts.sum()
        x = np.array([[0.9, -0.6, 0.4], [0.0, 1.0, -1.0]])
        product = rig.lab.multiply("bench", x.tolist())
        assert rig.emu.bench.pulse_counts.sum() == pulses_before  # reads only
        crossbar = rig.emu.bench.crossbar
        N = crossbar._N.reshape(crossbar.shape)[1:4, 2:6]
        V = x * 0.2
        currents = np.stack([jart.current(N, v[:, None]) * (v[:, None] != 0) for v in V])
        np.testing.assert_allclose(product.current_plus, currents[:, :, 0::2].sum(axis=1),
                                   rtol=1e-4)
        np.testing.assert_allclose(product.current_minus, currents[:, :, 1::2].sum(axis=1),
                                   rtol=1e-4)
        assert product.method.startswith("bench")
        assert product.relative_error < 0.3
    finally:
        rig.close()

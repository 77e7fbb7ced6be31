"""Adapted (calibrated) models: the file round-trips with its lineage, predicts the network's
width plus its correction, and a file that is corrupt, of another format or schema, without
lineage, or whose network changed is refused with the reason. The fit monitor's verdicts."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from predictor.adapted import Correction, PolarityCorrection, read_adapted, write_adapted
from predictor.fit_monitor import MIN_OBSERVATIONS, FitMonitor
from predictor.runtime import DEFAULT_MODEL, PulsePredictor

LINEAGE = {"parent_fingerprint": "memprog-pulse-predictor/1.0.0/486481bd51e0",
           "records_used": 1234, "records_dropped": {"noisy": 3, "stuck": 20},
           "cells": {"calibrated": 205}, "time_span": [1.0, 2.0],
           "held_out": {"parent": {"median_abs_error_decades": 0.4},
                        "adapted": {"median_abs_error_decades": 0.1}}}
CORRECTION = Correction(PolarityCorrection(0.3, -0.5, 0.5), PolarityCorrection(-0.2, 0.25, 1.0))


@pytest.fixture
def network(tmp_path):
    path = tmp_path / "net.onnx"
    shutil.copy(DEFAULT_MODEL, path)
    return path


def adapted_file(tmp_path, network, **changes):
    path = write_adapted(tmp_path / "cal.json", name="m-calibrated", version="1.0.0+c1",
                         network=network, correction=CORRECTION, one_shot_prior=-0.4,
                         lineage=LINEAGE, created=1700000000.0)
    if changes:
        doc = json.loads(path.read_text())
        for key, value in changes.items():
            if value is None:
                doc.pop(key)
            else:
                doc[key] = value
        path.write_text(json.dumps(doc))
    return path


def test_an_adapted_model_round_trips_and_predicts_the_network_plus_its_correction(
        tmp_path, network):
    path = adapted_file(tmp_path, network)
    adapted = read_adapted(path)
    assert (adapted.correction, adapted.one_shot_prior, adapted.lineage) == (CORRECTION, -0.4,
                                                                           LINEAGE)
    base, model = PulsePredictor(network), PulsePredictor(path)
    assert model.metadata["adapted"]["lineage"] == LINEAGE
    assert model.one_shot_latent == -0.4 and model.name == "m-calibrated"
    assert model.fingerprint != base.fingerprint and model.network_path == network.resolve()
    g0, g1 = np.array([150e-6, 400e-6, 300e-6]), np.array([300e-6, 200e-6, 320e-6])
    v = np.array([-0.45, 1.1, -0.6])
    want = base.predict_log10_width(g0, g1, v, 0.2) + np.array(
        [0.3 - 0.5 * (0.45 - 0.5), -0.2 + 0.25 * (1.1 - 1.0), 0.3 - 0.5 * (0.6 - 0.5)])
    np.testing.assert_allclose(model.predict_log10_width(g0, g1, v, 0.2), want, atol=1e-6)
    # the latent a pulse implies is the one that explains it under the correction
    w = 10 ** model.predict_log10_width(g0, g1, v, 0.3)
    z, kind = model.infer_latent(g0, g1, v, w)
    np.testing.assert_allclose(z, 0.3, atol=1e-3)
    assert kind.tolist() == [0, 0, 0]


@pytest.mark.parametrize(("change", "reason"), [
    ({"format": "something-else"}, "not a memprog adapted model"),
    ({"schema": 2}, "schema 2"),
    ({"lineage": None}, "no lineage"),
    ({"lineage": {"parent_fingerprint": "x"}}, "lineage without records_used"),
    ({"correction": {"set": {"offset": "a lot"}, "reset": {}}}, "correction.set"),
])
def test_a_model_file_of_another_format_or_without_lineage_is_refused(tmp_path, network,
                                                                      change, reason):
    path = adapted_file(tmp_path, network, **change)
    with pytest.raises(ValueError, match=reason):
        PulsePredictor(path)


def test_a_corrupt_file_or_a_changed_network_is_refused(tmp_path, network):
    path = adapted_file(tmp_path, network)
    with open(network, "r+b") as fh:  # the network changed since the calibration
        fh.seek(1000)
        fh.write(b"\x00" * 16)
    with pytest.raises(ValueError, match="has changed since the calibration"):
        PulsePredictor(path)
    network.unlink()
    with pytest.raises(ValueError, match="does not exist"):
        PulsePredictor(path)
    path.write_text('{"format": "memprog-adapted-model", "sch')
    with pytest.raises(ValueError, match="not a readable adapted model"):
        PulsePredictor(path)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07" + bytes(range(256)) * 4)
    with pytest.raises(ValueError, match="not a loadable ONNX model"):
        PulsePredictor(garbage)


def test_a_network_whose_metadata_has_another_format_is_refused(tmp_path):
    onnx = pytest.importorskip("onnx")  # the train extra: always in the test environment
    model = onnx.load(str(DEFAULT_MODEL))
    for prop in model.metadata_props:
        if prop.key == "memprog":
            meta = json.loads(prop.value)
            meta["format"] = 99
            prop.value = json.dumps(meta)
    path = tmp_path / "future.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ValueError, match="metadata format 99"):
        PulsePredictor(path)


class _Model:
    fingerprint = "m/1/abc"
    latent_range = (-1.0, 1.0)


def test_the_fit_monitor_advises_calibration_only_when_pulses_are_unexplained():
    monitor = FitMonitor()
    n = MIN_OBSERVATIONS
    assert monitor.report("m/1/abc")["verdict"] == "unknown"
    z = np.where(np.arange(n) % 2 == 0, 1.0, 0.2)  # half at the bound, all explained
    monitor.observe(_Model(), z, np.zeros(n, int), np.zeros(n))
    fits = monitor.report("m/1/abc")
    assert (fits["verdict"], fits["share_latent_at_bound"], fits["share_unexplained"]) == (
        "fits", 0.5, 0.0)
    # bounds (kind 1, 2) are not informative: not counted
    monitor.observe(_Model(), np.ones(50), np.ones(50, int), np.full(50, 2.0))
    assert monitor.report("m/1/abc")["observations"] == n
    residual = np.where(np.arange(n) % 5 == 0, 0.8, 0.0)  # 20 % off by more than 2x
    monitor.observe(_Model(), np.ones(n), np.zeros(n, int), residual)
    advised = monitor.report("m/1/abc")
    assert advised["verdict"] == "calibration advised" and advised["calibration_advised"]
    assert advised["share_unexplained"] == pytest.approx(0.1)
    monitor.forget("m/1/abc")
    assert monitor.report("m/1/abc")["observations"] == 0

"""Device memory: each device's speed latent, learned by the predictor while programming it, is
kept in SQLite (``device_memory``) under the model's fingerprint, and the next run on the cell
starts from it — a one shot on a device programmed before lands far closer than a blind one."""

from __future__ import annotations

import sqlite3

import numpy as np

from predictor import strategy
from service.benchmark_memory import run_scenario
from service.store import Storage


def test_storage_round_trip_keeps_keys_apart_and_nan_keeps_the_old_value(store_target,
                                                                           tmp_path):
    storage = Storage(store_target, backend_kind="simulated", state_dir=tmp_path)
    rows, cols = np.array([0, 0, 3, 7]), np.array([0, 5, 2, 7])
    assert np.isnan(storage.device_memory("a", rows, cols)).all()
    storage.save_device_memory("a", rows, cols, np.array([0.1, np.nan, -0.5, 0.9]), run_id=None)
    storage.save_device_memory("b", rows[:1], cols[:1], np.array([0.7]), run_id=None)
    storage.commit()
    got = storage.device_memory("a", np.array([7, 3, 0, 0, 1]), np.array([7, 2, 5, 0, 1]))
    np.testing.assert_array_equal(got, [0.9, -0.5, np.nan, 0.1, np.nan])
    storage.save_device_memory("a", rows, cols, np.array([np.nan, 0.2, 0.3, np.nan]), run_id=None)
    np.testing.assert_array_equal(storage.device_memory("a", rows, cols), [0.1, 0.2, 0.3, 0.9])
    np.testing.assert_array_equal(storage.device_memory("b", rows, cols), [0.7] + [np.nan] * 3)
    storage.close()


def test_a_predictor_run_remembers_every_cell_under_the_model_fingerprint(api, sim_settings):
    rng = np.random.default_rng(3)
    targets = [{"row": r, "col": c, "conductance": float(g)}
               for (r, c), g in zip([(r, c) for r in range(4) for c in range(8)],
                                    rng.uniform(110e-6, 540e-6, 32), strict=True)]
    run = api.post("/api/v1/program", json={"targets": targets}).json()
    assert run["converged"] == 32
    key = f"predictor/{strategy.current().fingerprint}"
    with sqlite3.connect(sim_settings.database) as conn:
        rows = conn.execute("SELECT key, row, col, value, run_id FROM device_memory").fetchall()
    assert {(r[1], r[2]) for r in rows} == {(t["row"], t["col"]) for t in targets}
    assert {r[0] for r in rows} == {key} and {r[4] for r in rows} == {run["run_id"]}
    lo, hi = strategy.current().latent_range
    values = np.array([r[3] for r in rows])
    # inferred per device, so they differ (realistic variability) and mostly lie in range
    assert np.unique(values).size > 16 and np.mean((values >= lo) & (values <= hi)) > 0.8


def test_one_shot_on_remembered_devices_beats_a_blind_one_shot():
    blind = run_scenario(remember=False, rows=16, cols=16, seed=7001, rounds=2, read_noise=0.0)
    memory = run_scenario(remember=True, rows=16, cols=16, seed=7001, rounds=2, read_noise=0.0)
    for b, m in zip(blind, memory, strict=True):
        assert m["one_shot_within_50pct_update"] >= b["one_shot_within_50pct_update"] + 0.3
        assert m["one_shot_within_50pct_update"] >= 0.75
        assert m["write_verify_converged"] == 1.0
    # the second write-and-verify starts from the remembered latents: fewer pulses
    assert memory[1]["write_verify_pulses_mean"] < blind[1]["write_verify_pulses_mean"]

"""Pulse-predictor data: simulated records, the service-export loader, the metrics."""

from __future__ import annotations

import csv
import json
import sqlite3

import numpy as np
import pytest

from predictor import features as F
from predictor import scores as M
from predictor.dataset import Records, SimulationConfig, simulate
from predictor.log_records import load_export


@pytest.fixture(scope="module")
def records() -> Records:
    return simulate([5], SimulationConfig(rows=8, cols=8, rounds=4, burn_in_cycles=1))


def test_simulated_records_are_physical(records):
    n = 8 * 8 * 4
    assert len(records) == n
    assert np.unique(records.device).size == 64
    # Both polarities, voltages inside the model's amplitude ranges.
    is_set = records.voltage < 0
    assert 0.3 < is_set.mean() < 0.7
    assert np.all(np.abs(records.voltage[is_set]) >= F.SET_V_RANGE[0])
    assert np.all(np.abs(records.voltage[is_set]) <= F.SET_V_RANGE[1])
    assert np.all(records.voltage[~is_set] >= F.RESET_V_RANGE[0])
    assert np.all(records.voltage[~is_set] <= F.RESET_V_RANGE[1])
    assert np.all((records.width >= 1e-9) & (records.width <= 0.1))
    # SET never lowers G, RESET never raises it (noise-free reads).
    assert np.all(records.g_after[is_set] >= records.g_before[is_set] * (1 - 1e-9))
    assert np.all(records.g_after[~is_set] <= records.g_before[~is_set] * (1 + 1e-9))
    # The latent is the simulator's filament radius, within ±10 % → z in [-1, 1], spread out.
    assert np.all(np.abs(records.latent) <= 1.0 + 1e-9)
    assert records.latent.std() > 0.3
    # Most pulses move the device without saturating (the width range fits each device).
    assert records.usable().mean() > 0.5
    summary = records.summary()
    assert summary["variability"] == "realistic" and summary["records"] == n


def test_records_round_trip(tmp_path, records):
    path = tmp_path / "r.npz"
    records.save(path)
    back = Records.load(path)
    assert len(back) == len(records)
    np.testing.assert_array_equal(back.width, records.width)
    assert back.info == records.info


def _operations():
    """An operation log: cell (0,0) read, pulse, read, pulse, read; cell (1,2) read, pulse
    (no read after: unusable); cell (3,3) pulse without a read before."""
    return [
        {"id": 1, "kind": "read", "row": 0, "col": 0, "voltage": 0.2, "width": "",
         "conductance": 2.0e-4},
        {"id": 2, "kind": "read", "row": 1, "col": 2, "voltage": 0.2, "width": "",
         "conductance": 3.0e-4},
        {"id": 3, "kind": "pulse", "row": 0, "col": 0, "voltage": -0.5, "width": 1e-8,
         "conductance": ""},
        {"id": 4, "kind": "pulse", "row": 1, "col": 2, "voltage": 1.0, "width": 2e-8,
         "conductance": ""},
        {"id": 5, "kind": "read", "row": 0, "col": 0, "voltage": 0.2, "width": "",
         "conductance": 2.5e-4},
        {"id": 6, "kind": "pulse", "row": 0, "col": 0, "voltage": 1.1, "width": 3e-8,
         "conductance": ""},
        {"id": 7, "kind": "pulse", "row": 3, "col": 3, "voltage": -0.4, "width": 1e-6,
         "conductance": ""},
        {"id": 8, "kind": "read", "row": 0, "col": 0, "voltage": 0.2, "width": "",
         "conductance": 1.5e-4},
        {"id": 9, "kind": "read", "row": 3, "col": 3, "voltage": 0.2, "width": "",
         "conductance": 4.0e-4},
    ]


def _check_pairs(rec: Records):
    assert len(rec) == 2
    np.testing.assert_allclose(rec.g_before, [2.0e-4, 2.5e-4])
    np.testing.assert_allclose(rec.g_after, [2.5e-4, 1.5e-4])
    np.testing.assert_allclose(rec.voltage, [-0.5, 1.1])
    np.testing.assert_allclose(rec.width, [1e-8, 3e-8])
    assert np.all(np.isnan(rec.latent))
    assert rec.usable().all()


def test_export_loader_csv_jsonl_and_sqlite(tmp_path):
    ops = _operations()
    # CSV as /export writes it (header, empty fields), shuffled: the id orders it.
    path = tmp_path / "ops.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(ops[0]))
        writer.writeheader()
        writer.writerows(ops[::-1])
    _check_pairs(load_export(path))
    _check_pairs(load_export(path.read_bytes()))
    jl = tmp_path / "ops.jsonl"
    jl.write_text("\n".join(json.dumps(o) for o in ops))
    _check_pairs(load_export(jl))
    db = tmp_path / "ops.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE operations (id INTEGER, kind TEXT, row INTEGER, col INTEGER, "
                 "voltage REAL, width REAL, conductance REAL)")
    conn.executemany(
        "INSERT INTO operations VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(o["id"], o["kind"], o["row"], o["col"], o["voltage"], o["width"] or None,
          o["conductance"] or None) for o in ops],
    )
    conn.commit()
    conn.close()
    _check_pairs(load_export(db))


def test_export_loader_rejects_missing_columns(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("id,kind,row\n1,read,0\n")
    with pytest.raises(ValueError, match="missing columns"):
        load_export(path)
    with pytest.raises(FileNotFoundError):
        load_export(tmp_path / "nope.csv")


def test_metrics_definitions():
    # RPD relative to the update: reached 150 for a 100 → 200 update is -50 %.
    assert M.rpd_update(150.0, 200.0, 100.0) == pytest.approx(-0.5)
    assert M.rpd_update(80.0, 50.0, 100.0) == pytest.approx(-0.6)  # RESET overshoot
    assert M.rpd_target(210.0, 200.0) == pytest.approx(0.05)
    w = M.within(np.array([0.05, -0.15, 0.4, -0.6]))
    assert w == {"10%": 0.25, "20%": 0.5, "50%": 0.75}
    stats = M.pulse_statistics(np.array([1, 2, 3, 20]), np.array([True, True, True, False]))
    assert stats["pulses_median"] == 2.5 and stats["pulses_max"] == 20
    assert stats["converged_fraction"] == 0.75
    np.testing.assert_allclose(M.device_time([1e-8, 2e-8], [2, 3], 1e-6), [2.01e-6, 3.02e-6])
    assert M.converged(np.array([101.0, 103.0]), np.array([100.0, 100.0]), 0.02).tolist() == [
        True, False]

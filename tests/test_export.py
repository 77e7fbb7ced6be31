"""Exports and the last-known conductance map, in process (real app, real Crossbar, real SQLite).

HDF5 round trip: every operation in the database is in the file, under its cell, in execution
order, with its values; the whole-array map holds each cell's last read; units are attributes.
"""

from __future__ import annotations

import csv
import io
import math
import sqlite3
import time

import h5py
import numpy as np
import pytest

from service.export_hdf5 import FORMAT, MEDIA_TYPE, cell_group_name

API = "/api/v1"


def db_operations(settings, run_id: int | None = None) -> list[dict]:
    with sqlite3.connect(settings.database) as conn:
        conn.row_factory = sqlite3.Row
        sql = "SELECT * FROM operations"
        args: tuple = ()
        if run_id is not None:
            sql += " WHERE run_id = ?"
            args = (run_id,)
        return [dict(row) for row in conn.execute(sql + " ORDER BY id", args)]


def make_history(api) -> list[int]:
    """Reads, pulses (with and without read-after) and two programming runs."""
    assert api.post(f"{API}/read", json={"cells": [[0, 0], [3, 4]]}).status_code == 200
    assert api.post(
        f"{API}/pulse",
        json={"cells": [[0, 0], [2, 2]], "voltage": [-0.6, 1.0], "width": 1e-5, "read_after": True},
    ).status_code == 200
    assert api.post(
        f"{API}/pulse", json={"cells": [[5, 5]], "voltage": -0.5, "width": 1e-6}
    ).status_code == 200
    run_ids = []
    for targets in (
        [{"row": 1, "col": c, "conductance": 150e-6 + 40e-6 * c} for c in range(6)],
        [{"row": 0, "col": 0, "conductance": 200e-6}, {"row": 2, "col": 3, "conductance": 350e-6}],
    ):
        body = api.post(
            f"{API}/program",
            json={"targets": targets, "tolerance": 0.03, "max_pulses": 60, "strategy": "ispp"},
        )
        assert body.status_code == 200, body.text
        run_ids.append(body.json()["run_id"])
    return run_ids


def open_h5(response) -> h5py.File:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == MEDIA_TYPE
    assert ".h5" in response.headers["content-disposition"]
    return h5py.File(io.BytesIO(response.content), "r")


def same(a: float, b: float | None) -> bool:
    if b is None:
        return math.isnan(a)
    return a == b


def check_cell_series(h5: h5py.File, ops: list[dict]) -> None:
    """Every operation of ``ops`` is in its cell's timeseries, in order, with its values, and
    the file holds nothing else."""
    per_cell: dict[tuple[int, int], list[dict]] = {}
    for op in ops:
        per_cell.setdefault((op["row"], op["col"]), []).append(op)
    assert set(h5["crosspoints"]) == {cell_group_name(r, c) for r, c in per_cell}
    for (row, col), expected in per_cell.items():
        group = h5["crosspoints"][cell_group_name(row, col)]
        assert (group.attrs["row"], group.attrs["col"]) == (row, col)
        series = group["timeseries"]
        assert series.maxshape == (None,)  # appendable, like ArC TWO's timeseries
        assert series.attrs["NROWS"] == len(expected) == series.shape[0]
        records = series[:]
        assert list(records["op_id"]) == [op["id"] for op in expected]  # in execution order
        for record, op in zip(records, expected, strict=True):
            is_read = op["kind"] == "read"
            assert record["op_type"] == (1 if is_read else 2)
            assert record["time"] == op["time"]
            assert same(record["voltage"], None if is_read else op["voltage"])
            assert same(record["v_read"], op["voltage"] if is_read else None)
            assert same(record["width"], op["width"])
            assert same(record["conductance"], op["conductance"])
            assert same(record["current"], op["current"])
            assert record["compliance"] == (-1 if op["compliance"] is None else op["compliance"])
            assert record["run_id"] == (-1 if op["run_id"] is None else op["run_id"])
            assert record["backend"] == 0  # simulated


def test_hdf5_export_round_trip(api, sim_settings):
    run_ids = make_history(api)
    ops = db_operations(sim_settings)
    assert {op["kind"] for op in ops} == {"read", "pulse"} and len(ops) > 50
    before = time.time()

    h5 = open_h5(api.get(f"{API}/export", params={"format": "hdf5"}))
    with h5:
        attrs = h5.attrs
        assert attrs["format"] == FORMAT
        assert attrs["backend"] == "simulated"
        assert before - 60 < attrs["created"] <= time.time()
        assert (attrs["rows"], attrs["cols"]) == (16, 16)
        assert attrs["operations"] == len(ops)
        check_cell_series(h5, ops)

        # units, as attributes: of the time series once on /crosspoints, on every map
        series = h5["crosspoints"][cell_group_name(0, 0)]["timeseries"]
        fields = h5["crosspoints"].attrs["fields"]
        units = dict(zip(fields, h5["crosspoints"].attrs["units"], strict=True))
        assert units["time"] == "s" and units["voltage"] == "V" and units["width"] == "s"
        assert units["conductance"] == "S" and units["current"] == "A" and units["v_read"] == "V"
        assert list(fields) == list(series.dtype.names)
        assert len(h5["crosspoints"].attrs["descriptions"]) == len(fields)
        assert h5py.check_enum_dtype(series.dtype["op_type"]) == {"read": 1, "pulse": 2}
        crossbar = h5["crossbar"]
        assert {name: crossbar[name].attrs["units"] for name in crossbar} == {
            "conductance": "S", "current": "A", "v_read": "V", "read_at": "s"
        }

        # the whole-array map: each cell's last read, NaN where never read
        last: dict[tuple[int, int], dict] = {}
        for op in ops:
            if op["kind"] == "read":
                last[(op["row"], op["col"])] = op
        conductance = crossbar["conductance"][:]
        assert conductance.shape == (16, 16)
        assert int(np.count_nonzero(~np.isnan(conductance))) == len(last)
        for (row, col), op in last.items():
            assert conductance[row, col] == op["conductance"]
            assert crossbar["read_at"][row, col] == op["time"]
        assert math.isnan(conductance[5, 5])  # pulsed, never read

        runs = h5["runs"][:]
        assert list(runs["id"]) == run_ids
        assert [s.decode() for s in runs["status"]] == ["done", "done"]

    # one run only
    h5 = open_h5(api.get(f"{API}/export", params={"format": "hdf5", "run_id": run_ids[1]}))
    with h5:
        run_ops = db_operations(sim_settings, run_ids[1])
        assert h5.attrs["run_id"] == run_ids[1] and h5.attrs["operations"] == len(run_ops)
        check_cell_series(h5, run_ops)
        assert list(h5["runs"][:]["id"]) == [run_ids[1]]


def test_csv_export_still_holds_every_operation(api, sim_settings):
    make_history(api)
    response = api.get(f"{API}/export", params={"format": "csv"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(response.text)))
    ops = db_operations(sim_settings)
    assert [int(r["id"]) for r in rows] == [op["id"] for op in ops]
    assert api.get(f"{API}/export", params={"format": "xlsx"}).status_code == 422


def test_hdf5_export_of_an_empty_log(api):
    with open_h5(api.get(f"{API}/export", params={"format": "hdf5"})) as h5:
        assert h5.attrs["operations"] == 0 and len(h5["crosspoints"]) == 0
        assert np.isnan(h5["crossbar"]["conductance"][:]).all()
        assert h5["crossbar"]["conductance"].shape == (16, 16)


# ------------------------------------------------------------------------ /array/map


def test_conductance_map_is_the_last_read_and_fires_nothing(api, sim_settings):
    empty = api.get(f"{API}/array/map").json()
    assert (empty["rows"], empty["cols"], empty["backend"]) == (16, 16, "simulated")
    assert empty["cells_read"] == 0 and empty["updated_at"] is None
    assert all(g is None for row in empty["conductance"] for g in row)
    assert db_operations(sim_settings) == []  # asking for the map fired no read

    first = api.post(f"{API}/read", json={"cells": [[0, 0], [3, 4]]}).json()["readings"]
    api.post(f"{API}/pulse", json={"cells": [[0, 0]], "voltage": -0.7, "width": 1e-5})
    body = api.get(f"{API}/array/map").json()
    assert body["cells_read"] == 2
    assert body["conductance"][3][4] == first[1]["conductance"]
    assert body["conductance"][0][0] == first[0]["conductance"]  # the pulse is not a read
    assert body["conductance"][5][5] is None and body["read_at"][5][5] is None

    # a later read of the same cell replaces it (the map is folded in incrementally)
    again = api.post(f"{API}/read", json={"cells": [[0, 0]]}).json()["readings"][0]
    assert again["conductance"] > first[0]["conductance"]  # the SET pulse raised it
    body = api.get(f"{API}/array/map").json()
    ops = db_operations(sim_settings)
    assert body["conductance"][0][0] == again["conductance"]
    assert body["read_at"][0][0] == ops[-1]["time"] == body["updated_at"]
    assert body["last_operation_id"] == ops[-1]["id"]

    # a whole-array read fills every cell; the map never adds operations of its own
    everything = api.post(f"{API}/read", json={"all": True}).json()["readings"]
    n_ops = len(db_operations(sim_settings))
    for _ in range(3):
        body = api.get(f"{API}/array/map").json()
    assert len(db_operations(sim_settings)) == n_ops
    assert body["cells_read"] == 256
    assert all(body["conductance"][r["row"]][r["col"]] == r["conductance"] for r in everything)


@pytest.mark.parametrize("path", ["/", "/static/dashboard.js", "/static/dashboard.css"])
def test_dashboard_files_are_served_by_the_service(api, path):
    response = api.get(path)
    assert response.status_code == 200
    assert len(response.content) > 1000
    if path == "/":
        assert response.headers["content-type"].startswith("text/html")
        for element in ("backend-banner", "heatmap", "job-progress", "pulse-histogram"):
            assert f'id="{element}"' in response.text
        assert "http://" not in response.text and "https://" not in response.text  # no CDN


def test_notes_and_long_histories_are_exported(tmp_path, monkeypatch):
    """A pulse's note (an uncertain pulse of a failing bench) goes to /notes; a cell whose
    history exceeds one write batch is appended to, in order, with NROWS kept."""
    from service import export_hdf5
    from service.store import Storage

    storage = Storage(tmp_path / "notes.db", backend_kind="hardware")
    one = np.array([1])
    storage.record_pulse(one, one, np.array([-0.5]), np.array([1e-6]))
    storage.record_pulse(np.array([2]), np.array([3]), np.array([0.9]), np.array([1e-7]),
                         note="uncertain: no reply to the trigger")
    n = 7
    for k in range(n):
        storage.record_pulse(one * 0, one * 0, np.array([-0.4]), np.array([1e-6 * (k + 1)]))
    storage.commit()
    monkeypatch.setattr(export_hdf5, "_FLUSH_ROWS", 3)  # W00B00's 7 pulses: 3 + 3 + 1
    ops = export_hdf5.write_hdf5(storage, tmp_path / "x.h5", rows=4, cols=4, backend="hardware")
    assert ops == n + 2
    with h5py.File(tmp_path / "x.h5") as h5:
        notes = h5["notes"][:]
        assert len(notes) == 1
        assert (notes[0]["row"], notes[0]["col"]) == (2, 3)
        assert notes[0]["note"].decode() == "uncertain: no reply to the trigger"
        assert notes[0]["op_id"] == h5["crosspoints/W02B03/timeseries"][0]["op_id"]
        long = h5["crosspoints/W00B00/timeseries"]
        assert long.shape == (n,) and long.attrs["NROWS"] == n and long.maxshape == (None,)
        np.testing.assert_allclose(long[:]["width"], 1e-6 * np.arange(1, n + 1))
        assert list(long[:]["op_id"]) == sorted(long[:]["op_id"])
        assert h5["crosspoints/W02B03/timeseries"][0]["backend"] == 1  # hardware
    storage.close()

"""The energy of every pulse through the service, on the simulator: each pulse record carries
the energy the integrator computed (J), /program and /runs give it per cell and per run, the
CSV and HDF5 exports carry it, and /metrics counts it."""

from __future__ import annotations

import csv
import io
import math

import numpy as np

from tests.test_export import API, cell_group_name, open_h5


def test_every_pulse_carries_its_energy_from_the_log_to_the_exports(api):
    targets = [{"row": r, "col": c, "conductance": 250e-6} for r in range(3) for c in range(4)]
    run = api.post(f"{API}/program", json={"targets": targets, "strategy": "ispp",
                                          "tolerance": 0.02, "max_pulses": 60}).json()
    cells = run["results"]
    assert all(c["energy"] is not None and c["energy"] > 0 for c in cells if c["pulses"])
    assert run["energy"] == sum(c["energy"] for c in cells)

    ops = list(csv.DictReader(io.StringIO(api.get(f"{API}/export").text)))
    pulses = [op for op in ops if op["kind"] == "pulse"]
    assert len(pulses) == run["total_pulses"] > len(cells)
    assert all(float(op["energy"]) > 0 for op in pulses)
    assert all(op["energy"] == "" for op in ops if op["kind"] == "read")
    # per cell, the export's pulses add up to what /program said
    for cell in cells:
        mine = [float(op["energy"]) for op in pulses
                if (int(op["row"]), int(op["col"])) == (cell["row"], cell["col"])]
        assert math.isclose(sum(mine), cell["energy"], rel_tol=1e-12), cell

    detail = api.get(f"{API}/runs/{run['run_id']}").json()
    assert math.isclose(detail["energy"], run["energy"], rel_tol=1e-12)
    for stored, answered in zip(detail["results"], cells, strict=True):
        assert math.isclose(stored["energy"], answered["energy"], rel_tol=1e-12)
    listed = api.get(f"{API}/runs").json()["runs"][0]
    assert math.isclose(listed["energy"], run["energy"], rel_tol=1e-12)

    metrics = api.get("/metrics").text
    line = next(x for x in metrics.splitlines()
                if x.startswith("memprog_pulse_energy_joules_total "))
    assert math.isclose(float(line.split()[1]), run["energy"], rel_tol=1e-9)

    with open_h5(api.get(f"{API}/export", params={"format": "hdf5"})) as h5:
        series = h5["crosspoints"][cell_group_name(0, 0)]["timeseries"][:]
        units = dict(zip(h5["crosspoints"].attrs["fields"], h5["crosspoints"].attrs["units"],
                         strict=True))
        assert units["energy"] == "J"
        is_pulse = series["op_type"] == 2
        assert np.isclose(series["energy"][is_pulse].sum(), cells[0]["energy"], rtol=1e-12)
        assert np.isnan(series["energy"][~is_pulse]).all()


def test_on_a_bench_the_energy_is_estimated_from_the_reads_around_each_pulse(tmp_path):
    """The emulated VISA bench cannot say a pulse's energy: the service records
    V²·t·(G_before + G_after)/2 from the verify reads (programming.loop.estimated_energy), for
    every pulse of a write-and-verify run, and the cells' sums in the run."""
    from tests.test_service_visa import Rig

    rig = Rig(tmp_path / "visa", variability="realistic")
    try:
        run = rig.lab.program([(r, c, 250e-6) for r in range(2) for c in range(3)],
                              strategy="ispp", tolerance=0.02, max_pulses=40)
        ops = rig.ops()
    finally:
        rig.close()
    last_g: dict[tuple[int, int], float] = {}
    pending: dict[tuple[int, int], dict] = {}
    checked = 0
    for op in ops:
        cell = (int(op["row"]), int(op["col"]))
        if op["kind"] == "read":
            g = float(op["conductance"])
            if cell in pending:
                pulse = pending.pop(cell)
                v, w = float(pulse["voltage"]), float(pulse["width"])
                expected = v * v * w * (last_g[cell] + g) / 2
                assert math.isclose(float(pulse["energy"]), expected, rel_tol=1e-9), pulse
                checked += 1
            last_g[cell] = g
        else:
            pending[cell] = op
    assert checked == sum(r.pulses for r in run.results) > 6 and not pending
    detail_energy = sum(float(op["energy"]) for op in ops if op["kind"] == "pulse")
    assert math.isclose(run.energy, detail_energy, rel_tol=1e-9)

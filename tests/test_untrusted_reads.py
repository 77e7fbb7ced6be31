"""Issue 9, point 9(b): the write-and-verify loop never pulses a cell it cannot read.

A reading that is not finite, zero or negative, below the read current floor, or clipped by the
compliance says nothing about the cell (an open contact, a dead device, a short): the loop used to
keep choosing pulses from it (ispp ramped a 0 S cell to the top of the window). Now such a cell
is stopped — no further pulse — and its result says why, in the answer and in the stored run.
Real app, real Crossbar, real SQLite; only the readings of some cells are replaced.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time

import numpy as np
import pytest

from drivers.base import Limits
from drivers.sim import SimBackend
from programming import ProgramJob, program_cells
from service.recording import LogRecorder
from service.store import Storage

API = "/api/v1"
pytestmark = pytest.mark.timeout(300)

# column → what every read of a cell in that column answers (rows 0 and 1 are targeted)
DEAD, FLOOR, CLIPPED, NEGATIVE = 1, 2, 3, 5
GOES_DEAD = (0, 4)  # reads normally until its first pulse, then 0 A
NORMAL = [(0, 0), (1, 0), (1, 4)]


class UntrustedReadsSim_TestDouble(SimBackend):
    """Test double: the real simulated backend, with the readings of some cells replaced by
    readings no loop can trust (see the column constants above)."""

    infinite: tuple[int, int] | None = None  # a cell whose current reads +inf

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pulsed: list[tuple[int, int]] = []

    def pulse(self, rows, cols, voltage, width):
        self.pulsed += list(zip(np.asarray(rows).tolist(), np.asarray(cols).tolist(), strict=True))
        super().pulse(rows, cols, voltage, width)

    def read(self, rows, cols, v_read=0.2):
        result = super().read(rows, cols, v_read)
        current = result.current.copy()
        tripped = result.compliance.copy()
        cols_ = np.asarray(result.cols)
        current[cols_ == DEAD] = 0.0
        current[cols_ == FLOOR] = 5e-10  # below the default floor of 1e-9 A
        current[cols_ == NEGATIVE] = -np.abs(current[cols_ == NEGATIVE])
        clipped = cols_ == CLIPPED
        current[clipped] = np.sign(v_read) * self.limits.compliance
        tripped[clipped] = True
        if GOES_DEAD in self.pulsed:
            current[(result.rows == GOES_DEAD[0]) & (cols_ == GOES_DEAD[1])] = 0.0
        if self.infinite is not None:
            current[(result.rows == self.infinite[0]) & (cols_ == self.infinite[1])] = np.inf
        return dataclasses.replace(
            result, current=current, conductance=current / v_read, compliance=tripped
        )


def make_double(rows=16, cols=16):
    from sim_backend import Crossbar

    return UntrustedReadsSim_TestDouble(Crossbar(rows, cols, seed=7, variability="realistic"))


TARGETS = [(r, c) for r in (0, 1) for c in range(6)]


def pulse_counts(database, run_id: int) -> dict[tuple[int, int], int]:
    with sqlite3.connect(database) as conn:
        rows = conn.execute(
            "SELECT row, col, COUNT(*) FROM operations WHERE run_id = ? AND kind = 'pulse' "
            "GROUP BY row, col",
            (run_id,),
        ).fetchall()
    return {(r, c): n for r, c, n in rows}


def check_stopped(results: list[dict]) -> dict[tuple[int, int], dict]:
    by_cell = {(r["row"], r["col"]): r for r in results}
    for cell in NORMAL:
        assert by_cell[cell]["stopped"] is None, by_cell[cell]
    expect = {
        DEAD: "0 A at 0.2 V",
        FLOOR: "read current floor",
        CLIPPED: "compliance",
        NEGATIVE: "not positive",
    }
    for col, words in expect.items():
        for row in (0, 1):
            result = by_cell[(row, col)]
            assert result["pulses"] == 0, result
            assert result["stopped"].startswith("untrusted reading") and words in result[
                "stopped"], result
    return by_cell


def test_cells_read_as_untrusted_are_stopped_never_pulsed(sim_settings, client_for):
    from service.app import create_app

    backend = make_double()
    with client_for(create_app(sim_settings, backend_factory=lambda s: backend)) as api:
        targets = [{"row": r, "col": c, "conductance": 250e-6} for r, c in TARGETS]
        response = api.post(
            f"{API}/program", json={"targets": targets, "max_pulses": 200, "strategy": "ispp"}
        )
        assert response.status_code == 200, response.text
        run = response.json()
        by_cell = check_stopped(run["results"])
        for cell in NORMAL:
            assert by_cell[cell]["converged"] and by_cell[cell]["pulses"] > 0
        # the cell that read 0 A after its first pulse got no second one
        gone = by_cell[GOES_DEAD]
        assert gone["pulses"] == 1 and "0 A at 0.2 V" in gone["stopped"]
        assert gone["converged"] is False
        assert run["converged"] == len(NORMAL)
        fired = pulse_counts(sim_settings.database, run["run_id"])
        assert fired == {cell: by_cell[cell]["pulses"] for cell in [*NORMAL, GOES_DEAD]}
        # the reason is stored with the run
        stored = api.get(f"{API}/runs/{run['run_id']}").json()["results"]
        assert [r["stopped"] for r in stored] == [r["stopped"] for r in run["results"]]

        # one shot: a cell whose single read is untrusted gets no pulse
        backend.pulsed.clear()
        shot = api.post(
            f"{API}/program",
            json={"targets": targets, "verify": False, "strategy": "ispp"},
        ).json()
        by_cell = check_stopped(shot["results"])
        assert all(by_cell[c]["pulses"] == 1 for c in [*NORMAL, GOES_DEAD])
        assert shot["total_pulses"] == len(NORMAL) + 1
        assert sorted(backend.pulsed) == sorted([*NORMAL, GOES_DEAD])


def test_a_job_counts_its_stopped_cells_as_done(sim_settings, client_for):
    from service.app import create_app

    backend = make_double()
    with client_for(create_app(sim_settings, backend_factory=lambda s: backend)) as api:
        targets = [{"row": r, "col": c, "conductance": 250e-6} for r, c in TARGETS]
        job = api.post(
            f"{API}/jobs", json={"targets": targets, "max_pulses": 200, "strategy": "ispp"}
        ).json()
        deadline = time.monotonic() + 120
        while (record := api.get(f"{API}/jobs/{job['id']}").json())["status"] in (
            "queued", "running"
        ):
            assert time.monotonic() < deadline, record
            time.sleep(0.05)
        assert record["status"] == "completed", record
        assert record["cells_done"] == record["total_cells"] == len(TARGETS)
        assert record["cells_converged"] == len(NORMAL)
        results = api.get(f"{API}/runs/{record['run_id']}").json()["results"]
        check_stopped(results)


def test_the_read_current_floor_is_a_setting(sim_settings, client_for):
    from service.app import create_app

    # 200 µA: above the current of any cell of the window (≤ 559 µS · 0.2 V = 112 µA)
    settings = sim_settings.model_copy(
        update={"programming": sim_settings.programming.model_copy(
            update={"read_current_floor": 2e-4})}
    )
    with client_for(create_app(settings)) as api:
        run = api.post(
            f"{API}/program",
            json={"targets": [{"row": 0, "col": 0, "conductance": 250e-6}], "strategy": "ispp"},
        ).json()
        (only,) = run["results"]
        assert only["pulses"] == 0 and "read current floor 0.0002 A" in only["stopped"]
        assert run["total_pulses"] == 0


def test_the_loop_stops_non_finite_readings_and_reports_progress(tmp_path):
    backend = make_double(8, 8)
    backend.infinite = (2, 0)
    storage = Storage(tmp_path / "ops.db", "simulated")
    cells = [*TARGETS, (2, 0)]
    job = ProgramJob(
        rows=np.array([r for r, _ in cells]),
        cols=np.array([c for _, c in cells]),
        target=np.full(len(cells), 250e-6),
        tolerance=0.02,
        max_pulses=200,
        strategy="ispp",
        verify=True,
        trace=True,
        v_read=0.2,
        limits=Limits(),
    )
    seen = []
    try:
        outcome = program_cells(backend, LogRecorder(storage), job, on_progress=seen.append)
        stopped = dict(zip(cells, outcome.stopped, strict=True))
        assert "not finite" in stopped[(2, 0)]
        assert outcome.pulses[cells.index((2, 0))] == 0
        assert outcome.traces[cells.index((2, 0))] == []
        # stopped at the first read: done from the start; every cell done at the end
        assert seen[0].cells_done == 9 and seen[0].cells_converged == 0
        assert seen[-1].cells_done == len(cells)
        assert (2, 0) not in backend.pulsed
    finally:
        storage.close()


def test_an_old_database_gains_the_stopped_column(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # run_results as memprog wrote it before
        conn.execute(
            "CREATE TABLE run_results (run_id INTEGER NOT NULL, idx INTEGER NOT NULL, "
            "row INTEGER NOT NULL, col INTEGER NOT NULL, start REAL NOT NULL, "
            "target REAL NOT NULL, final REAL, pulses INTEGER NOT NULL, converged INTEGER, "
            "PRIMARY KEY (run_id, idx))"
        )
    storage = Storage(path, "simulated")
    try:
        with sqlite3.connect(path) as conn:
            columns = {row[1] for row in conn.execute("PRAGMA table_info(run_results)")}
        assert "stopped" in columns
    finally:
        storage.close()

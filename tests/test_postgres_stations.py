"""A lab of stations on one PostgreSQL database, for real: ``memprog serve`` processes on emulated
benches (SCPI emulators on loopback, pyvisa-py), a real PostgreSQL server (tests/pg.py).

- two stations run jobs at once; one is SIGKILLed mid-job: after its restart its job is
  ``interrupted``, the other's completes untouched, and the union export holds every operation
  exactly once, with the right station (checked against what each emulated bench saw);
- the database is killed and restarted under a running job: 503s meanwhile, nothing fired
  unlogged, the job ends ``failed`` with the reason, the service comes back by itself;
- a station's SQLite history of 100,000+ operations moves into PostgreSQL (``memprog db
  migrate-to``), verified by counts and checksums, and a second run copies nothing.
"""

from __future__ import annotations

import csv
import io
import json
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import httpx
import numpy as np
import pytest

from drivers.visa.emulators import EmulatorRunner
from service.launch import ServerProcess
from service.store import Storage
from tests.pg import PostgresServer
from tests.servers import visa_server_env
from tests.test_jobs import wait_for
from tests.test_service_visa import ROWS, bench_config

API = "/api/v1"
COLS = ROWS
CELLS = [(r, c) for r in range(ROWS) for c in range(COLS)]

pytestmark = pytest.mark.slow


def job_body(max_pulses: int) -> dict:
    """Every cell, a tolerance the fixed strategy never meets: runs its whole budget."""
    return {"targets": [{"row": r, "col": c, "conductance": 250e-6} for r, c in CELLS],
            "tolerance": 1e-4, "max_pulses": max_pulses, "strategy": "fixed"}


class Station:
    """An emulated bench (threads in this process) and ``memprog serve`` on it, logging to the
    shared PostgreSQL database under its own station name."""

    def __init__(self, name: str, url: str, tmp_path: Path, heartbeat_s: float = 0.5):
        self.name, self.dir = name, tmp_path / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.emu = EmulatorRunner(bench_config("realistic", False, 5.0)).start()
        self.env = visa_server_env(
            self.emu.config.to_toml(), self.dir, MEMPROG_DATABASE=url, MEMPROG_STATION=name,
            MEMPROG_STATE_DIR=str(self.dir), MEMPROG_HEARTBEAT_S=str(heartbeat_s))
        self.server: ServerProcess | None = None
        self.runs = 0

    def start(self) -> Station:
        self.runs += 1
        self.server = ServerProcess(self.env, log_path=self.dir / f"server-{self.runs}.log",
                                    startup_timeout=90).start()
        self.http = httpx.Client(base_url=self.server.url, timeout=60)
        return self

    def kill(self) -> None:
        assert self.server is not None and self.server.process is not None
        self.server.process.send_signal(signal.SIGKILL)  # no shutdown, no last commit
        self.server.process.wait(timeout=30)
        self.http.close()

    def stop(self) -> None:
        try:
            if self.server is not None and self.server.process is not None \
                    and self.server.process.poll() is None:
                self.http.close()
                self.server.stop()
        finally:
            self.emu.stop()

    def job(self, job_id: int) -> dict:
        response = self.http.get(f"{API}/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()


def export_rows(http: httpx.Client, **params: str) -> list[dict[str, str]]:
    response = http.get(f"{API}/export", params={"format": "csv", **params})
    assert response.status_code == 200, response.text
    return list(csv.DictReader(io.StringIO(response.text)))


def assert_log_matches_bench(ops: list[dict[str, str]], station: Station) -> None:
    """Every pulse the station's emulated bench saw is in the log under its name, cell by cell
    (an uncertain pulse may or may not have reached the device; every other one did)."""
    certain = np.zeros((ROWS, COLS), dtype=np.int64)
    uncertain = np.zeros((ROWS, COLS), dtype=np.int64)
    for op in ops:
        if op["kind"] == "pulse" and op["station"] == station.name:
            (uncertain if op["note"] else certain)[int(op["row"]), int(op["col"])] += 1
    bench = station.emu.bench.pulse_counts
    assert bench.sum() > 0
    assert np.all(certain <= bench), (station.name, certain, bench)
    assert np.all(bench <= certain + uncertain), (station.name, certain, uncertain, bench)


def test_two_stations_on_one_database_and_a_killed_one_recovers_only_its_own(
        postgres_url, tmp_path):
    a = Station("bench-a", postgres_url, tmp_path).start()
    b = Station("bench-b", postgres_url, tmp_path).start()
    try:
        job_a = a.http.post(f"{API}/jobs", json=job_body(1000)).json()["id"]
        job_b = b.http.post(f"{API}/jobs", json=job_body(40)).json()["id"]
        wait_for(lambda: a.job(job_a)["pulses"] >= 3 * ROWS * COLS
                 and b.job(job_b)["pulses"] >= ROWS * COLS, 90, "both jobs pulsing")
        assert a.job(job_a)["station"] == "bench-a" and b.job(job_b)["station"] == "bench-b"
        # a station aborts only its own jobs
        refused = a.http.post(f"{API}/jobs/{job_b}/abort")
        assert refused.status_code == 409 and "bench-b" in refused.json()["detail"]
        # the fleet, from the heartbeats
        fleet = {s["name"]: s for s in a.http.get(f"{API}/stations").json()["stations"]}
        assert set(fleet) == {"bench-a", "bench-b"}
        assert fleet["bench-b"]["running_job"] == job_b and not fleet["bench-b"]["silent"]
        assert "2450" in " ".join(fleet["bench-a"]["instruments"].values())

        a.kill()
        # the other station's job goes on to its end, untouched
        done = wait_for(lambda: (j := b.job(job_b))["status"] != "running" and j, 120,
                        "bench-b's job to end")
        assert done["status"] == "completed", done
        # bench-a is silent for the fleet after three missed beats
        wait_for(lambda: {s["name"]: s["silent"] for s in b.http.get(
            f"{API}/stations").json()["stations"]}["bench-a"], 10, "bench-a marked silent")

        a.start()
        after = a.job(job_a)
        assert after["status"] == "interrupted" and "not resumed" in after["error"]
        assert b.job(job_b)["status"] == "completed"
        assert a.job(job_b)["status"] == "completed"  # reads show any station's job
        # reads show this station by default, any with station=
        assert {r["station"] for r in a.http.get(f"{API}/runs").json()["runs"]} == {"bench-a"}
        everyone = a.http.get(f"{API}/runs", params={"station": "*"}).json()["runs"]
        assert {r["station"] for r in everyone} == {"bench-a", "bench-b"}
        assert [j["id"] for j in a.http.get(f"{API}/jobs").json()["jobs"]] == [job_a]

        ops = export_rows(b.http, station="*")
        ids = [int(op["id"]) for op in ops]
        assert len(ids) == len(set(ids)) and ids == sorted(ids)  # each once, in order
        runs = {r["id"]: r["station"] for r in everyone}
        assert all(runs[int(op["run_id"])] == op["station"] for op in ops if op["run_id"])
        assert_log_matches_bench(ops, a)
        assert_log_matches_bench(ops, b)
        assert {op["station"] for op in export_rows(a.http)} == {"bench-a"}
        # the counts each job recorded are what the log holds
        for station, job in ((a, after), (b, done)):
            pulses = sum(1 for op in ops if op["kind"] == "pulse"
                         and op["run_id"] == str(job["run_id"]))
            assert pulses == job["pulses"], (station.name, pulses, job["pulses"])
    finally:
        a.stop()
        b.stop()


def test_the_database_killed_under_a_running_job(tmp_path):
    server = PostgresServer()  # its own: this test takes it away
    station = None
    try:
        url = server.new_database()
        station = Station("bench-c", url, tmp_path).start()
        http = station.http
        job = http.post(f"{API}/jobs", json=job_body(1000)).json()["id"]
        wait_for(lambda: station.job(job)["pulses"] >= 2 * ROWS * COLS, 60, "the job pulsing")

        server.kill()
        refused = wait_for(lambda: (r := http.post(f"{API}/read", json={"cells": [[0, 0]]}))
                           .status_code == 503 and r, 30, "a 503 while the database is away")
        assert "log unavailable" in refused.json()["detail"]
        failed = wait_for(lambda: (j := station.job(job))["status"] != "running" and j, 60,
                          "the job to stop")
        assert failed["status"] == "failed" and "log unavailable" in failed["error"], failed
        health = http.get(f"{API}/health").json()
        assert health["status"] == "degraded" and health["log"]["state"] == "failed"
        assert "memprog_log_up 0.0" in http.get("/metrics").text
        pulses_while_away = station.emu.bench.pulse_counts.sum()
        assert http.post(f"{API}/pulse", json={"cells": [[1, 1]], "voltage": -0.5,
                                                "width": 1e-6}).status_code == 503
        assert station.emu.bench.pulse_counts.sum() == pulses_while_away  # nothing fired

        server.start()  # back, on the same port: the service reconnects by itself
        wait_for(lambda: http.get(f"{API}/health").json()["status"] == "ok", 30,
                 "the service to see the database again")
        assert http.post(f"{API}/read", json={"cells": [[0, 0]]}).status_code == 200
        assert "memprog_log_up 1.0" in http.get("/metrics").text
        stored = station.job(job)
        assert stored["status"] == "failed" and stored["error"] == failed["error"]
        ops = export_rows(http)
        assert_log_matches_bench(ops, station)
        ids = [int(op["id"]) for op in ops]
        assert len(ids) == len(set(ids))  # nothing duplicated by the replay
        pulses = sum(1 for op in ops if op["kind"] == "pulse"
                     and op["run_id"] == str(stored["run_id"]))
        assert pulses == stored["pulses"]
    finally:
        if station is not None:
            station.stop()
        server.stop()


def make_history(path: Path, n_ops: int, station: str) -> None:
    """An SQLite log of a station: runs with results, jobs, device memory, a key, and
    ``n_ops`` operations (reads and pulses, some in runs, one uncertain)."""
    storage = Storage(path, "hardware", station=station)
    storage.close()
    rng = np.random.default_rng(3)
    with sqlite3.connect(path) as conn:
        for run in range(1, 4):
            conn.execute(
                "INSERT INTO runs (id, started, finished, status, strategy, tolerance, "
                "max_pulses, verify, v_read, backend, n_targets, n_converged, total_pulses, "
                "station) VALUES (?, ?, ?, 'done', 'predictor', 0.02, 20, 1, 0.2, 'hardware', "
                "4, 4, 10, ?)", (run, 1e9 + run, 1e9 + run + 1, station))
            conn.executemany(
                "INSERT INTO run_results (run_id, idx, row, col, start, target, final, pulses, "
                "converged) VALUES (?, ?, ?, ?, 1e-4, 2e-4, 2.01e-4, 3, 1)",
                [(run, i, i, i) for i in range(4)])
        conn.execute(
            "INSERT INTO jobs (created, started, finished, status, strategy, tolerance, "
            "max_pulses, verify, v_read, total_cells, run_id, station) VALUES (1e9, 1e9, 1e9, "
            "'completed', 'predictor', 0.02, 20, 1, 0.2, 4, 2, ?)", (station,))
        kinds = rng.integers(0, 2, n_ops)
        conn.executemany(
            "INSERT INTO operations (time, kind, row, col, voltage, width, conductance, "
            "current, compliance, run_id, backend, note, station) VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'hardware', ?, ?)",
            ((1e9 + i * 1e-3, "pulse" if k else "read", i % 64, (i // 64) % 64,
              float(rng.uniform(-1, 1)) if k else 0.2, 1e-6 if k else None,
              None if k else float(rng.uniform(1e-5, 1e-3)), None if k else 4e-5,
              None if k else 0, (i % 4) or None, "uncertain: test" if i == 77 else None,
              station) for i, k in enumerate(kinds.tolist())))
        conn.executemany(
            "INSERT INTO device_memory (station, key, row, col, value, updated, run_id) "
            "VALUES (?, 'predictor/x', ?, ?, ?, 1e9, 1)",
            [(station, r, c, float(r - c)) for r in range(8) for c in range(8)])
        conn.execute("INSERT INTO api_keys (name, scope, hint, hash, created) VALUES "
                     "('alice', 'admin', 'mp_x', 'deadbeef', 1e9)")


def migrate(url: str, source: Path, station: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "db", "migrate-to", url, "--database",
         str(source), "--station", station, "--json"],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr + done.stdout
    return json.loads(done.stdout)


def test_a_station_history_of_100000_operations_moves_to_postgresql(postgres_url, tmp_path):
    source = tmp_path / "bench-d.db"
    make_history(source, 120_000, "bench-d")
    first = migrate(postgres_url, source, "bench-d")
    tables = {t["table"]: t for t in first["tables"]}
    assert first["verified"]
    assert tables["operations"]["source_rows"] == tables["operations"]["target_rows"] == 120_000
    assert tables["operations"]["copied"] == 120_000
    assert tables["operations"]["source_sha256"] == tables["operations"]["target_sha256"]
    assert tables["runs"]["target_rows"] == 3 and tables["run_results"]["target_rows"] == 12
    assert tables["device_memory"]["target_rows"] == 64 and tables["jobs"]["target_rows"] == 1

    # idempotent: a second run copies nothing and verifies the same
    second = migrate(postgres_url, source, "bench-d")
    assert second["verified"]
    assert all(t["copied"] == 0 for t in second["tables"]), second["tables"]
    assert [t["target_sha256"] for t in second["tables"]] == \
        [t["target_sha256"] for t in first["tables"]]

    # what was moved reads back through the store like any station's log
    with closing(Storage(postgres_url, "hardware", station="bench-d",
                         state_dir=tmp_path)) as pg:
        assert pg.count_operations("bench-d")["pulse"] + \
            pg.count_operations("bench-d")["read"] == 120_000
        assert [r["status"] for r in pg.list_all_runs("bench-d")] == ["done"] * 3

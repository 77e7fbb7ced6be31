"""The operation log under abuse: a full disk and a database moved away while the service runs.

Nothing is fired that the log cannot take (503 "log unavailable, nothing fired"), what was under
way goes to the side journal and back into the database once it takes writes, a job hit by it
ends ``failed`` with the reason, ``/health`` and ``/metrics`` say so, and the emergency stop
works throughout (keys come from memory, never from a new database file).

A full disk is made without root: ``RLIMIT_FSIZE = 0`` on the server process (``prlimit``), so
every write that would grow a file fails (EFBIG) while writes into space a file already has
still work — as on a full disk.
"""

from __future__ import annotations

import resource
import sqlite3
import time

import httpx
import pytest

from service.launch import ServerProcess
from service.store import Storage
from service.store.keys import KeyStore
from tests.servers import sim_server_env
from tests.test_jobs import TERMINAL, job_of, long_job, wait_for

API = "/api/v1"
PULSE = {"cells": [[0, 0]], "voltage": -0.9, "width": 1e-6}  # would drive the cell to the top


def disk_full(pid: int, full: bool) -> None:
    """Make every file of process ``pid`` unable to grow (``full``), or undo it."""
    _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (0 if full else hard, hard))


def pulses(database, **where: object) -> int:
    sql = "SELECT COUNT(*) FROM operations WHERE kind = 'pulse'"
    for column in where:
        sql += f" AND {column} = ?"
    with sqlite3.connect(database) as conn:
        return conn.execute(sql, tuple(where.values())).fetchone()[0]


def metric(http: httpx.Client, name: str, headers: dict | None = None) -> float:
    for line in http.get("/metrics", headers=headers).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


@pytest.mark.slow
def test_a_full_disk_fires_nothing_and_the_log_recovers(tmp_path):
    database = tmp_path / "full.db"
    env = sim_server_env(database, rows=8, cols=8, seed=5)
    with ServerProcess(env, log_path=tmp_path / "server.log") as server, \
            httpx.Client(base_url=server.url, timeout=30) as http:
        before = http.post(f"{API}/read", json={"cells": [[0, 0]]}).json()["readings"][0]
        disk_full(server.pid, True)
        try:
            for _ in range(3):  # a retry fires nothing either
                answer = http.post(f"{API}/pulse", json=PULSE)
                assert answer.status_code == 503, answer.text
                assert "log unavailable, nothing fired" in answer.json()["detail"]
            health = http.get(f"{API}/health").json()
            assert health["status"] == "degraded"
            assert health["log"]["state"] == "failed"
            assert "disk is full" in health["log"]["detail"] or "I/O" in health["log"]["detail"]
            assert metric(http, "memprog_log_up") == 0.0
        finally:
            disk_full(server.pid, False)
        wait_for(lambda: http.get(f"{API}/health").json()["status"] == "ok", 15,
                 "the log to recover")
        assert metric(http, "memprog_log_up") == 1.0
        after = http.post(f"{API}/read", json={"cells": [[0, 0]]}).json()["readings"][0]
    # the device never saw a pulse, and the log holds none
    assert after["conductance"] == before["conductance"]
    assert pulses(database) == 0


@pytest.mark.slow
def test_a_job_hit_by_a_full_disk_fails_with_the_reason_and_loses_nothing(tmp_path):
    database = tmp_path / "job.db"
    env = sim_server_env(database, rows=16, cols=16, seed=5)
    with ServerProcess(env, log_path=tmp_path / "server.log") as server, \
            httpx.Client(base_url=server.url, timeout=30) as http:
        job = http.post(f"{API}/jobs", json=long_job(16, 16)).json()
        wait_for(lambda: job_of(http, job["id"])["pulses"] > 256, 30, "the job to pulse")
        disk_full(server.pid, True)
        try:
            ended = wait_for(lambda: (j := job_of(http, job["id"]))["status"] in TERMINAL and j,
                             15, "the job to end")
            assert ended["status"] == "failed"
            assert "log unavailable" in ended["error"]
            # it stays ended: an abort finds nothing to abort
            assert http.post(f"{API}/jobs/{job['id']}/abort").status_code == 409
            assert http.get(f"{API}/health").json()["log"]["journal_records"] > 0
            assert metric(http, "memprog_log_journal_records") > 0
        finally:
            disk_full(server.pid, False)
        wait_for(lambda: http.get(f"{API}/health").json()["log"]["journal_records"] == 0, 15,
                 "the side journal to be replayed")
        stored = job_of(http, job["id"])
        run = http.get(f"{API}/runs/{stored['run_id']}").json()
    # the database has the job's end and every pulse the job counted, none left pending
    assert (stored["status"], stored["error"]) == ("failed", ended["error"])
    assert run["status"] == "failed"
    recorded = pulses(database, run_id=stored["run_id"])
    assert recorded == stored["pulses"] == run["total_pulses"] > 256
    with sqlite3.connect(database) as conn:
        assert conn.execute("SELECT COUNT(*) FROM operations WHERE note IS NOT NULL"
                            ).fetchone() == (0,)
        status = conn.execute("SELECT status FROM jobs WHERE id = ?", (job["id"],)).fetchone()
    assert status == ("failed",)


@pytest.mark.slow
def test_the_database_moved_away_stops_programming_and_never_blocks_the_stop(tmp_path):
    database = tmp_path / "moved.db"
    Storage(database).close()  # the service's database, with its key table
    keys = KeyStore(database)
    program = {"Authorization": "ApiKey " + keys.create("bench", "program")[1]}
    watcher = {"Authorization": "ApiKey " + keys.create("watcher", "read")[1]}
    env = sim_server_env(database, rows=16, cols=16, seed=5, MEMPROG_AUTH__ENABLED="true")
    aside = tmp_path / "aside"
    aside.mkdir()
    files = [database.with_name(database.name + suffix) for suffix in ("", "-wal", "-shm")]
    with ServerProcess(env, log_path=tmp_path / "server.log") as server, \
            httpx.Client(base_url=server.url, timeout=30) as http:
        job = http.post(f"{API}/jobs", json=long_job(16, 16), headers=program).json()
        wait_for(lambda: job_of_with(http, job["id"], watcher)["pulses"] > 0, 30,
                 "the job to pulse")
        for path in files:
            path.rename(aside / path.name)
        try:
            # programming stops by itself: the job ends within a few iterations
            ended = wait_for(
                lambda: (j := job_of_with(http, job["id"], watcher))["status"] in TERMINAL
                and j, 10, "the job to stop")
            assert ended["status"] == "failed" and "log unavailable" in ended["error"]
            moved = aside / database.name
            fired = pulses(moved)
            time.sleep(0.5)
            assert pulses(moved) == fired

            started = time.monotonic()
            stop = http.post(f"{API}/emergency-stop", headers=watcher)
            assert time.monotonic() - started < 1.0
            assert stop.status_code == 200, stop.text
            assert stop.json()["stopped"] is True

            health = http.get(f"{API}/health").json()
            assert (health["status"], health["log"]["state"]) == ("degraded", "failed")
            assert "gone" in health["log"]["detail"]
            answer = http.post(f"{API}/pulse", json=PULSE, headers=program)
            assert answer.status_code == 503 and "nothing" in answer.json()["detail"]
            assert not database.exists()  # nothing opened a new, empty database in its place
        finally:
            for path in files:
                if (aside / path.name).exists():
                    (aside / path.name).rename(path)
        wait_for(lambda: http.get(f"{API}/health").json()["status"] == "ok", 15,
                 "the log to recover once the file is back")
        stored = job_of_with(http, job["id"], watcher)
    assert stored["status"] == "failed"
    assert pulses(database, run_id=stored["run_id"]) == stored["pulses"] == fired


def job_of_with(client, job_id: int, headers: dict) -> dict:
    response = client.get(f"{API}/jobs/{job_id}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()

"""One service per database (an exclusive lock for the service's lifetime, the holder named in a
second one's refusal), a job's or run's end is final (SQLite triggers, and the job manager's
in-memory record), and a new database is private (0600) whatever the umask. Real SQLite, real
processes; two ``memprog serve`` under uvicorn for the end-to-end case."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from programming.loop import RunParams
from service.cli import main
from service.launch import ServerProcess
from service.store import Storage
from tests.servers import sim_server_env
from tests.test_jobs import wait_for

API = "/api/v1"
ROWS = COLS = 16
JOB_ENDS = ("completed", "failed", "aborted", "interrupted")
RUN_ENDS = ("done", "failed", "interrupted", "aborted")


def long_job() -> dict:
    """Every cell, a tolerance the fixed strategy never meets: it runs until aborted."""
    cells = [{"row": r, "col": c, "conductance": 250e-6} for r in range(ROWS) for c in range(COLS)]
    return {"targets": cells, "tolerance": 1e-4, "max_pulses": 1000, "strategy": "fixed"}


def stored(database: Path, sql: str, *args: object) -> list[tuple]:
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def new_job(storage: Storage) -> int:
    return storage.create_job(strategy="ispp", tolerance=0.02, max_pulses=10, verify=True,
                              v_read=0.2, total_cells=1)


# --------------------------------------------------------------------- under uvicorn, twice


@pytest.mark.slow
def test_a_second_service_on_a_live_database_refuses_to_start_and_changes_nothing(tmp_path):
    database = tmp_path / "live.db"
    env = sim_server_env(database, rows=ROWS, cols=COLS, seed=3)
    first = ServerProcess(env, log_path=tmp_path / "first.log").start()
    try:
        with httpx.Client(base_url=first.url, timeout=60) as http:
            job = http.post(f"{API}/jobs", json=long_job()).json()
            wait_for(lambda: http.get(f"{API}/jobs/{job['id']}").json()["pulses"] > 0, 60,
                     "the job to pulse")
            second = ServerProcess(env, log_path=tmp_path / "second.log", startup_timeout=90)
            try:
                with pytest.raises(RuntimeError, match="exited with 2"):
                    second.start()
            finally:
                second.stop()
            refusal = (tmp_path / "second.log").read_text()
            assert f"pid {first.pid}" in refusal and "since" in refusal, refusal
            assert str(database) in refusal and first.url in refusal, refusal

            # the first service's job goes on, running, its record untouched by the second
            seen = http.get(f"{API}/jobs/{job['id']}").json()
            assert (seen["status"], seen["finished_at"], seen["error"]) == ("running", None, None)
            assert stored(database, "SELECT status FROM jobs") == [("running",)]
            assert stored(database, "SELECT status FROM runs") == [("running",)]
            wait_for(lambda: http.get(f"{API}/jobs/{job['id']}").json()["pulses"]
                     > seen["pulses"], 60, "the job to go on pulsing")
            ended = http.post(f"{API}/jobs/{job['id']}/abort").json()
            assert ended["status"] == "aborted"
            pulses = ended["pulses"]
    finally:
        first.stop()
    # its end is its end: nothing after it changed it, the shutdown included
    assert stored(database, "SELECT status, pulses FROM jobs") == [("aborted", pulses)]
    assert stored(database, "SELECT status, total_pulses FROM runs") == [("aborted", pulses)]
    assert stored(database, "SELECT COUNT(*) FROM operations WHERE kind = 'pulse'") == [(pulses,)]


# ---------------------------------------------------------------------------- in process


def test_a_second_storage_is_refused_naming_the_holder_and_changes_nothing(tmp_path):
    database = tmp_path / "db" / "memprog.db"
    holder = Storage(database, "simulated")
    try:
        job = new_job(holder)
        assert holder.update_job_if(job, ("queued",), status="running", started=time.time())
        run = holder.start_run(RunParams("ispp", 0.02, 10, True, 0.2, 1))
        holder.commit_durable()
        with pytest.raises(RuntimeError) as refused:
            Storage(database, "simulated")
        message = str(refused.value)
        assert f"pid {os.getpid()}" in message and "since" in message
        assert str(database) in message
        # nothing was marked interrupted: the refusal came before any change
        assert stored(database, "SELECT status, finished FROM jobs") == [("running", None)]
        assert stored(database, "SELECT id, status FROM runs") == [(run, "running")]
    finally:
        holder.close()
    # released at close: the next service opens it (and marks what was left running)
    again = Storage(database, "simulated")
    again.close()
    assert stored(database, "SELECT status FROM jobs") == [("interrupted",)]


HOLD = """
import sys, time
from service.store import Storage
storage = Storage(sys.argv[1], "simulated")
print("held", flush=True)
time.sleep(120)
"""


def test_the_lock_dies_with_its_process_and_readers_work_meanwhile(tmp_path, capsys):
    database = tmp_path / "memprog.db"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(database)],
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parent.parent)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RuntimeError, match=f"pid {holder.pid}"):
            Storage(database, "simulated")
        # tools that only read (or only touch the api_keys table) work while it is held
        assert main(["keys", "create", "--scope", "read", "--name", "viewer",
                     "--database", str(database)]) == 0
        assert main(["keys", "list", "--database", str(database)]) == 0
        assert "viewer" in capsys.readouterr().out
        assert stored(database, "SELECT COUNT(*) FROM operations") == [(0,)]
        sys.path.insert(0, str(Path(__file__).parent.parent / "deploy"))
        try:
            from backup import backup
        finally:
            sys.path.pop(0)
        assert backup(database, tmp_path / "backup.db")["api_keys"] == 1
    finally:
        holder.send_signal(signal.SIGKILL)  # no close: the kernel releases the lock
        holder.wait(timeout=30)
    Storage(database, "simulated").close()


# ------------------------------------------------------------------ an end is final


def test_an_ended_job_or_run_never_changes_again_in_the_database(tmp_path):
    database = tmp_path / "memprog.db"
    storage = Storage(database, "simulated")
    try:
        jobs = {}
        for status in JOB_ENDS:
            jobs[status] = new_job(storage)
            assert storage.update_job_if(jobs[status], ("queued",), status="running")
            assert storage.update_job_if(jobs[status], ("running",), status=status,
                                         finished=1.0, pulses=7)
        runs = {status: storage.start_run(RunParams("ispp", 0.02, 10, True, 0.2, 1))
                for status in RUN_ENDS}
        storage._conn.executemany("UPDATE runs SET status = ?, total_pulses = 7 WHERE id = ?",
                                  [(status, run) for status, run in runs.items()])
        storage.commit_durable()
    finally:
        storage.close()

    conn = sqlite3.connect(database)
    try:
        with conn:
            conn.execute("UPDATE jobs SET status = 'running', finished = NULL, pulses = 99")
            conn.execute("UPDATE jobs SET status = 'completed' WHERE status = 'aborted'")
            conn.execute("UPDATE runs SET status = 'running', finished = NULL, total_pulses = 99")
    finally:
        conn.close()
    assert stored(database, "SELECT id, status, finished, pulses FROM jobs ORDER BY id") \
        == [(jobs[s], s, 1.0, 7) for s in JOB_ENDS]
    assert stored(database, "SELECT id, status, total_pulses FROM runs ORDER BY id") \
        == [(runs[s], s, 7) for s in RUN_ENDS]
    # a restart marks only what was left running; the ended ones stay as they are
    Storage(database, "simulated").close()
    assert [s for (s,) in stored(database, "SELECT status FROM jobs ORDER BY id")] \
        == list(JOB_ENDS)


def test_the_job_manager_never_reports_an_ended_job_as_running_again(api):
    from service.jobs import _Job

    body = {"targets": [{"row": 0, "col": 0, "conductance": 300e-6}], "max_pulses": 20,
            "strategy": "ispp"}
    job = api.post(f"{API}/jobs", json=body).json()
    ended = wait_for(lambda: (j := api.get(f"{API}/jobs/{job['id']}").json())["status"]
                     in JOB_ENDS and j, 60, "the job to end")
    manager = api.app.state.jobs
    row = manager.storage.get_job(job["id"])
    handle = _Job(job["id"], dict(row))
    manager._update(handle, {"status": "running", "pulses": row["pulses"] + 5})
    assert handle.row == row
    assert api.get(f"{API}/jobs/{job['id']}").json() == ended


# ------------------------------------------------------------------- private files


def modes(folder: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}


def test_a_new_database_and_its_companions_are_private_whatever_the_umask(tmp_path):
    folder = tmp_path / "new"
    old = os.umask(0)
    try:
        storage = Storage(folder / "memprog.db", "simulated")
        try:
            new_job(storage)
            seen = modes(folder)
        finally:
            storage.close()
    finally:
        os.umask(old)
    for name in ("memprog.db", "memprog.db-wal", "memprog.db-shm", "memprog.db.lock"):
        assert seen.pop(name) == 0o600, name
    assert all(mode & 0o077 == 0 for mode in seen.values()), seen  # anything else beside it

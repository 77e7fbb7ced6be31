"""Background programming jobs: contract in process (real app, Crossbar, SQLite), then the
progress stream and the crash (SIGKILL) / restart behaviour against ``memprog serve`` under
uvicorn as a subprocess."""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from service.launch import ServerProcess
from tests.servers import sim_server_env

API = "/api/v1"
TERMINAL = {"completed", "failed", "aborted", "interrupted"}


def wait_for(check: Callable[[], object], timeout: float, what: str, every: float = 0.02):
    """Poll ``check`` until it returns something truthy (returned), at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def targets(cells: list[tuple[int, int]], g: float = 250e-6) -> list[dict]:
    return [{"row": r, "col": c, "conductance": g} for r, c in cells]


def long_job(rows: int, cols: int) -> dict:
    """Every cell, a tolerance the fixed strategy never meets: runs its whole budget."""
    cells = [(r, c) for r in range(rows) for c in range(cols)]
    return {"targets": targets(cells), "tolerance": 1e-4, "max_pulses": 1000, "strategy": "fixed"}


def job_of(client, job_id: int) -> dict:
    response = client.get(f"{API}/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


def run_ops(database, run_id: int) -> list[tuple]:
    """(id, kind, row, col) of a run's operations in execution order, straight from SQLite."""
    with sqlite3.connect(database) as conn:
        return conn.execute(
            "SELECT id, kind, row, col FROM operations WHERE run_id = ? ORDER BY id", (run_id,)
        ).fetchall()


# ------------------------------------------------------------------------------- in process


def test_a_job_programs_its_cells_in_the_background_as_a_run(api, sim_settings):
    cells = [(r, c) for r in range(4) for c in range(8)]
    body = {"targets": targets(cells, 300e-6), "tolerance": 0.02, "max_pulses": 100,
            "strategy": "ispp"}
    response = api.post(f"{API}/jobs", json=body)
    assert response.status_code == 202, response.text
    queued = response.json()
    assert queued["status"] in ("queued", "running")
    assert (queued["total_cells"], queued["strategy"], queued["finished_at"]) == (32, "ispp", None)

    job = wait_for(lambda: (j := job_of(api, queued["id"]))["status"] in TERMINAL and j, 60,
                   "the job to end")
    assert job["status"] == "completed" and job["error"] is None
    run = api.get(f"{API}/runs/{job['run_id']}").json()
    assert run["status"] == "done" and run["n_targets"] == 32
    assert job["pulses"] == run["total_pulses"] == sum(r["pulses"] for r in run["results"])
    assert job["cells_converged"] == run["n_converged"] >= 30
    assert job["cells_done"] == 32
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]
    assert job["created_at"].endswith("Z")
    # exactly the operations of the loop: one read per cell, then one pulse and one read per
    # pulse, all under the job's run
    ops = run_ops(sim_settings.database, job["run_id"])
    assert sum(op[1] == "pulse" for op in ops) == job["pulses"]
    assert sum(op[1] == "read" for op in ops) == 32 + job["pulses"]
    listed = api.get(f"{API}/jobs", params={"limit": 5}).json()["jobs"]
    assert listed[0] == job


def test_jobs_queue_in_order_and_abort_between_pulses(api, sim_settings):
    first = api.post(f"{API}/jobs", json=long_job(16, 16)).json()
    second = api.post(f"{API}/jobs", json=long_job(4, 4)).json()
    third = api.post(
        f"{API}/jobs", json={"targets": targets([(0, 0)]), "max_pulses": 3, "strategy": "ispp"}
    ).json()
    assert first["id"] < second["id"] < third["id"]
    wait_for(lambda: job_of(api, first["id"])["pulses"] > 0, 30, "the first job to pulse")

    # a queued job is aborted without ever running
    aborted = api.post(f"{API}/jobs/{second['id']}/abort").json()
    assert aborted["status"] == "aborted" and aborted["started_at"] is None
    assert aborted["run_id"] is None and aborted["pulses"] == 0
    assert job_of(api, first["id"])["status"] == "running"

    # a running one stops before its next pulse; what it fired stays recorded
    stopped = api.post(f"{API}/jobs/{first['id']}/abort").json()
    stopped = wait_for(lambda: (j := job_of(api, first["id"]))["status"] in TERMINAL and j, 10,
                       "the abort")
    assert stopped["status"] == "aborted" and stopped["error"] == "aborted on request"
    assert 0 < stopped["pulses"] < 256 * 1000
    run = api.get(f"{API}/runs/{stopped['run_id']}").json()
    assert run["status"] == "aborted" and run["total_pulses"] == stopped["pulses"]
    assert len(run["results"]) == 256
    ops = run_ops(sim_settings.database, stopped["run_id"])
    assert sum(op[1] == "pulse" for op in ops) == stopped["pulses"]
    assert sum(op[1] == "read" for op in ops) == 256 + stopped["pulses"]

    # FIFO: the third job ran after the first ended; the aborted second never did
    done = wait_for(lambda: (j := job_of(api, third["id"]))["status"] in TERMINAL and j, 30,
                    "the third job")
    assert done["status"] == "completed"
    assert done["started_at"] >= stopped["finished_at"]
    assert job_of(api, second["id"])["run_id"] is None
    with sqlite3.connect(sim_settings.database) as conn:
        runs = [r[0] for r in conn.execute("SELECT id FROM runs ORDER BY id")]
    assert runs == [stopped["run_id"], done["run_id"]]

    # an ended job cannot be aborted; its record is unchanged
    refused = api.post(f"{API}/jobs/{first['id']}/abort")
    assert refused.status_code == 409 and "aborted" in refused.json()["detail"]


@pytest.mark.parametrize(
    ("change", "loc", "kind"),
    [
        ({"targets": targets([(0, 0), (16, 0)])}, ["body", "targets", 1], "outside_array"),
        ({"targets": targets([(1, 1), (1, 1)])}, ["body", "targets", 1], "duplicate_cell"),
        ({"strategy": "nope"}, ["body", "strategy"], "unknown_strategy"),
        ({"max_pulses": 5000}, ["body", "max_pulses"], "limit"),
        ({"v_read": 0.5}, ["body", "v_read"], "limit"),
        ({"trace": True}, ["body", "trace"], "extra_forbidden"),
        ({"targets": []}, ["body", "targets"], "too_short"),
    ],
)
def test_a_bad_job_is_refused_naming_the_field(api, sim_settings, change, loc, kind):
    body = {"targets": targets([(0, 0)]), "max_pulses": 10, **change}
    response = api.post(f"{API}/jobs", json=body)
    assert response.status_code == 422, response.text
    problem = response.json()["detail"][0]
    assert (problem["loc"], problem["type"]) == (loc, kind)
    assert api.get(f"{API}/jobs").json()["jobs"] == []  # nothing stored, nothing queued


def test_unknown_jobs_answer_404(api):
    assert api.get(f"{API}/jobs/12345").status_code == 404
    assert api.post(f"{API}/jobs/12345/abort").status_code == 404
    assert api.get(f"{API}/jobs/12345/events").status_code == 404
    assert api.get(f"{API}/jobs/0").status_code == 422


# ------------------------------------------------------------------------- under uvicorn

ROWS = COLS = 32


def server_env(tmp_path, **extra: str) -> dict[str, str]:
    return sim_server_env(tmp_path / "jobs.db", rows=ROWS, cols=COLS, seed=11,
                          MEMPROG_SIM__STATE_FILE=str(tmp_path / "array.npz"), **extra)


def sse_records(response: httpx.Response) -> Iterator[dict]:
    """The job records of a ``text/event-stream`` response's ``progress`` events."""
    event = None
    for line in response.iter_lines():
        if line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:"):
            assert event == "progress"
            yield json.loads(line.split(":", 1)[1])
        elif line == "":
            event = None


@pytest.mark.slow
def test_the_progress_stream_follows_a_job_to_its_end(tmp_path):
    with ServerProcess(server_env(tmp_path), log_path=tmp_path / "server.log") as server, \
            httpx.Client(base_url=server.url, timeout=60) as http:
        blocker = http.post(f"{API}/jobs", json=long_job(ROWS, COLS)).json()
        cells = [(r, c) for r in range(2) for c in range(8)]
        watched = http.post(
            f"{API}/jobs",
            json={"targets": targets(cells, 200e-6), "tolerance": 0.02, "max_pulses": 100,
                  "strategy": "ispp"},
        ).json()
        seen: list[dict] = []
        started = time.monotonic()
        with http.stream("GET", f"{API}/jobs/{watched['id']}/events") as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            for record in sse_records(stream):
                seen.append(record)
                if len(seen) == 1:  # connected while it waits: let it run
                    assert record["status"] == "queued"
                    assert http.post(f"{API}/jobs/{blocker['id']}/abort").status_code == 200
                assert time.monotonic() - started < 60
        final = http.get(f"{API}/jobs/{watched['id']}").json()
        run = http.get(f"{API}/runs/{final['run_id']}").json()

        # it ended with the terminal state, which is what GET says
        assert seen[-1] == final and final["status"] == "completed"
        statuses = [r["status"] for r in seen]
        assert statuses[0] == "queued" and "running" in statuses
        assert statuses.index("running") < statuses.index("completed") == len(seen) - 1
        pulses = [r["pulses"] for r in seen]
        assert pulses == sorted(pulses) and pulses[-1] == run["total_pulses"]
        # at least one event per programming iteration: a cell is pulsed once per iteration,
        # so the iterations are as many as the most pulses any cell took
        iterations = max(r["pulses"] for r in run["results"])
        assert len({(r["pulses"], r["cells_done"]) for r in seen if r["status"] == "running"}) \
            >= iterations + 1

        # a client connecting to a finished job gets one event and the stream ends
        with http.stream("GET", f"{API}/jobs/{watched['id']}/events") as stream:
            assert list(sse_records(stream)) == [final]


@pytest.mark.slow
def test_a_job_killed_with_the_server_is_interrupted_and_never_rerun(tmp_path):
    """SIGKILL mid-job: after the restart the job is 'interrupted', every operation it made
    is in the database (its record and the operation log agree exactly), no pulse was fired
    twice, and the restarted service does not resume it."""
    database = tmp_path / "jobs.db"
    env = server_env(tmp_path)
    server = ServerProcess(env, log_path=tmp_path / "server-1.log").start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            job = http.post(f"{API}/jobs", json=long_job(ROWS, COLS)).json()
            queued = http.post(f"{API}/jobs", json=long_job(2, 2)).json()
            seen = wait_for(
                lambda: (j := job_of(http, job["id"]))["pulses"] >= 3 * ROWS * COLS and j, 60,
                "three iterations of the job",
            )
            assert seen["status"] == "running"
    finally:
        server.process.send_signal(signal.SIGKILL)  # no shutdown, no final commit
        server.process.wait(timeout=30)
    assert server.process.returncode == -signal.SIGKILL

    with sqlite3.connect(database) as conn:
        before = conn.execute(
            "SELECT status, pulses, cells_done, run_id FROM jobs WHERE id = ?", (job["id"],)
        ).fetchone()
        ops_before = conn.execute("SELECT COUNT(*), MAX(id) FROM operations").fetchone()
    assert before[0] == "running" and before[1] >= seen["pulses"]
    run_id = before[3]

    server = ServerProcess(env, log_path=tmp_path / "server-2.log").start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            after = job_of(http, job["id"])
            assert after["status"] == "interrupted"
            assert "not resumed" in after["error"] and after["finished_at"] is not None
            # the record counts what the log holds: at least what its progress said at the kill
            assert after["run_id"] == run_id and after["pulses"] >= before[1]
            assert after["pulses"] >= seen["pulses"]
            assert job_of(http, queued["id"])["status"] == "interrupted"
            assert job_of(http, queued["id"])["run_id"] is None
            run = http.get(f"{API}/runs/{run_id}").json()
            assert run["status"] == "interrupted"
            time.sleep(1.0)  # give a (wrong) resumption the time to fire something
            assert http.get(f"{API}/health").json()["queued"] == 0
            assert [j["status"] for j in http.get(f"{API}/jobs").json()["jobs"]] \
                == ["interrupted", "interrupted"]
    finally:
        server.stop()

    ops = run_ops(database, run_id)
    pulses = [op for op in ops if op[1] == "pulse"]
    reads = [op for op in ops if op[1] == "read"]
    # every pulse fired is in the log and counted: they are committed as fired, before the
    # iteration's verify read (the kill may fall between the two: pulses without their read)
    assert len(pulses) == after["pulses"]
    unverified = ROWS * COLS + len(pulses) - len(reads)
    assert 0 <= unverified <= ROWS * COLS
    with sqlite3.connect(database) as conn:
        assert conn.execute("SELECT COUNT(*), MAX(id) FROM operations").fetchone() == ops_before
        assert conn.execute("SELECT COUNT(*) FROM runs").fetchone() == (1,)
    # no pulse twice: per cell, the log is its first read, then pulse, read, pulse, read ...
    # (a pulse fired again, or a resumed run, would break the alternation or the count)
    per_cell: dict[tuple[int, int], list[str]] = {}
    for _, kind, row, col in ops:
        per_cell.setdefault((row, col), []).append(kind)
    assert len(per_cell) == ROWS * COLS
    trailing = 0
    for kinds in per_cell.values():
        pulsed = (len(kinds) - 1) // 2
        tail = ["pulse"] if kinds[-1] == "pulse" else []  # its verify read never came
        trailing += len(tail)
        assert kinds == ["read"] + ["pulse", "read"] * pulsed + tail
    assert trailing == unverified


@pytest.mark.slow
def test_a_graceful_shutdown_interrupts_the_running_job_between_pulses(tmp_path):
    database = tmp_path / "jobs.db"
    with ServerProcess(server_env(tmp_path)) as server, httpx.Client(base_url=server.url) as http:
        job = http.post(f"{API}/jobs", json=long_job(ROWS, COLS)).json()
        wait_for(lambda: job_of(http, job["id"])["pulses"] > 0, 60, "the job to pulse")
        started = time.monotonic()
    assert time.monotonic() - started < 10  # SIGTERM did not wait for the job's 1000 pulses
    assert server.process.returncode in (0, -signal.SIGTERM)
    with sqlite3.connect(database) as conn:
        status, error, pulses, run_id = conn.execute(
            "SELECT status, error, pulses, run_id FROM jobs WHERE id = ?", (job["id"],)
        ).fetchone()
        run_status, run_pulses = conn.execute(
            "SELECT status, total_pulses FROM runs WHERE id = ?", (run_id,)
        ).fetchone()
    assert (status, error) == ("interrupted", "the service was shut down")
    assert (run_status, run_pulses) == ("aborted", pulses)
    assert len([op for op in run_ops(database, run_id) if op[1] == "pulse"]) == pulses


@pytest.mark.slow
def test_a_graceful_shutdown_is_not_held_off_by_an_open_progress_stream(tmp_path):
    """A dashboard following a job keeps its stream open as long as the job runs; SIGTERM still
    ends the service within its graceful-shutdown bound, the job 'interrupted'."""
    import threading

    from service.server import GRACEFUL_SHUTDOWN_S

    database = tmp_path / "jobs.db"
    events: list[dict] = []
    server = ServerProcess(server_env(tmp_path)).start()
    try:
        with httpx.Client(base_url=server.url) as http:
            job = http.post(f"{API}/jobs", json=long_job(ROWS, COLS)).json()

        def follow() -> None:
            with httpx.Client(base_url=server.url, timeout=60) as watcher, \
                    watcher.stream("GET", f"{API}/jobs/{job['id']}/events") as response:
                try:
                    for record in sse_records(response):
                        events.append(record)
                except httpx.HTTPError:
                    pass  # the server closed the stream at shutdown

        watcher = threading.Thread(target=follow, daemon=True)
        watcher.start()
        wait_for(lambda: any(e["pulses"] > 0 for e in events), 60, "the stream to show pulses")
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=GRACEFUL_SHUTDOWN_S + 20)
        assert time.monotonic() - started < GRACEFUL_SHUTDOWN_S + 10
        watcher.join(10)
    finally:
        server.stop()
    with sqlite3.connect(database) as conn:
        status, error = conn.execute(
            "SELECT status, error FROM jobs WHERE id = ?", (job["id"],)).fetchone()
    assert (status, error) == ("interrupted", "the service was shut down")


@pytest.mark.slow
def test_a_graceful_shutdown_stops_a_running_program_request_between_pulses(tmp_path):
    import threading

    from service.server import GRACEFUL_SHUTDOWN_S

    database = tmp_path / "jobs.db"
    server = ServerProcess(server_env(tmp_path)).start()
    body = {"targets": targets([(r, c) for r in range(ROWS) for c in range(COLS)]),
            "tolerance": 1e-4, "max_pulses": 1000, "strategy": "fixed"}
    try:
        def program() -> None:
            with httpx.Client(base_url=server.url, timeout=120) as http:
                try:
                    http.post(f"{API}/program", json=body)
                except httpx.HTTPError:
                    pass  # the connection closes at shutdown

        client = threading.Thread(target=program, daemon=True)
        client.start()

        def pulsed() -> bool:
            with sqlite3.connect(database) as conn:
                return conn.execute(
                    "SELECT COUNT(*) FROM operations WHERE kind = 'pulse'").fetchone()[0] > 0

        wait_for(pulsed, 60, "the run to pulse")
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=GRACEFUL_SHUTDOWN_S + 30)
        assert time.monotonic() - started < GRACEFUL_SHUTDOWN_S + 10
    finally:
        server.stop()
    with sqlite3.connect(database) as conn:
        (status, total), = conn.execute("SELECT status, total_pulses FROM runs").fetchall()
        fired = conn.execute("SELECT COUNT(*) FROM operations WHERE kind = 'pulse'").fetchone()[0]
    assert status == "aborted" and total == fired < ROWS * COLS * 1000

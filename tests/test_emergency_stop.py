"""POST /emergency-stop: answers at once while a long job holds the backend, bypassing the queue;
jobs end 'aborted', queued operations are cancelled, no further pulse is fired, the outputs are
off (checked on the emulated VISA bench, whose instruments know their output state)."""

from __future__ import annotations

import sqlite3
import threading
import time

import httpx
import pytest

from drivers.base import BackendError, BackendUnavailable
from drivers.sim import SimBackend
from drivers.visa.bench import parse_bench
from drivers.visa.emulators import EmulatorRunner
from service.launch import ServerProcess
from tests.servers import visa_server_env
from tests.test_jobs import TERMINAL, job_of, long_job, targets, wait_for

API = "/api/v1"


def pulses_in(database, run_id: int, after: float | None = None) -> int:
    sql = "SELECT COUNT(*) FROM operations WHERE kind = 'pulse' AND run_id = ?"
    args: tuple = (run_id,)
    if after is not None:
        sql += " AND time > ?"
        args += (after,)
    with sqlite3.connect(database) as conn:
        return conn.execute(sql, args).fetchone()[0]


def sim_factory_as(cls):
    """A backend factory: the configured simulated array, behind the test double ``cls``."""
    def factory(settings):
        s = settings.sim
        backend = SimBackend.create(s.rows, s.cols, seed=s.seed, variability=s.variability)
        backend.__class__ = cls
        return backend

    return factory


def test_emergency_stop_without_jobs_answers_stopped(api):
    body = api.post(f"{API}/emergency-stop").json()
    assert body == {"stopped": True, "aborted_jobs": [], "backend": "simulated", "error": None}
    # the service goes on: the next request runs
    assert api.post(f"{API}/read", json={"cells": [[0, 0]]}).status_code == 200


class _UnconfirmedStop(SimBackend):
    def emergency_stop(self) -> None:
        raise BackendUnavailable("pulser did not answer OUTP OFF")


def test_an_unconfirmed_safe_state_is_reported_as_502(sim_settings, client_for):
    from service.app import create_app

    app = create_app(sim_settings, backend_factory=sim_factory_as(_UnconfirmedStop))
    with client_for(app) as api:
        response = api.post(f"{API}/emergency-stop")
    assert response.status_code == 502
    assert response.json() == {
        "stopped": False, "aborted_jobs": [], "backend": "simulated",
        "error": "pulser did not answer OUTP OFF",
    }


class _BreaksOffItsBatch(SimBackend):
    """A backend that, as a bench pulsing a batch cell by cell should, breaks its running
    batch off when the emergency stop comes: once armed, its next pulse call blocks (a long
    batch under way) until the stop, then raises."""

    armed = threading.Event()
    in_batch = threading.Event()
    stop = threading.Event()

    def emergency_stop(self) -> None:
        self.stop.set()
        self.safe_state()

    def pulse(self, rows, cols, voltage, width) -> None:
        if self.armed.is_set():
            self.in_batch.set()
            self.stop.wait(10)
            raise BackendError("batch broken off by the emergency stop after 0 of its pulses")
        super().pulse(rows, cols, voltage, width)


def test_a_batch_broken_off_by_the_stop_ends_the_job_aborted(sim_settings, client_for):
    from service.app import create_app

    app = create_app(sim_settings, backend_factory=sim_factory_as(_BreaksOffItsBatch))
    with client_for(app) as api:
        job = api.post(f"{API}/jobs", json=long_job(16, 16)).json()
        wait_for(lambda: job_of(api, job["id"])["pulses"] > 0, 30, "the job to pulse")
        _BreaksOffItsBatch.armed.set()
        wait_for(_BreaksOffItsBatch.in_batch.is_set, 10, "a batch under way")
        # the owner thread is inside backend.pulse: the stop must not wait for it
        started = time.monotonic()
        assert api.post(f"{API}/emergency-stop").json()["stopped"] is True
        assert time.monotonic() - started < 2.0
        ended = wait_for(lambda: (j := job_of(api, job["id"]))["status"] in TERMINAL and j, 10,
                         "the job to end")
        run = api.get(f"{API}/runs/{ended['run_id']}").json()
    assert ended["status"] == "aborted"
    assert ended["error"] == (
        "stopped by an emergency stop (during a pulse batch: BackendError: batch broken off "
        "by the emergency stop after 0 of its pulses)"
    )
    assert run["status"] == "failed"  # the run itself ended on the backend's error


ROWS = COLS = 32


@pytest.mark.slow
def test_emergency_stop_answers_at_once_and_stops_every_job(tmp_path):
    database = tmp_path / "estop.db"
    env = {
        "MEMPROG_BACKEND": "sim",
        "MEMPROG_SIM__ROWS": str(ROWS),
        "MEMPROG_SIM__COLS": str(COLS),
        "MEMPROG_SIM__SEED": "3",
        "MEMPROG_DATABASE": str(database),
    }
    with ServerProcess(env, log_path=tmp_path / "server.log") as server, \
            httpx.Client(base_url=server.url, timeout=60) as http:
        # a job that would hold the backend for its 1000 iterations (tens of seconds)
        running = http.post(f"{API}/jobs", json=long_job(ROWS, COLS)).json()
        queued = http.post(f"{API}/jobs", json=long_job(4, 4)).json()
        wait_for(lambda: job_of(http, running["id"])["pulses"] > 0, 30, "the job to pulse")

        # a /program request queued behind the job: cancelled, nothing of it fired
        answers: list[httpx.Response] = []
        program = threading.Thread(target=lambda: answers.append(httpx.post(
            f"{server.url}{API}/program", timeout=120,
            json={"targets": targets([(0, 0)]), "max_pulses": 5, "strategy": "ispp"})))
        program.start()
        # running job + queued job + this request
        wait_for(lambda: http.get(f"{API}/health").json()["queued"] >= 3, 10,
                 "the /program request to queue")

        started = time.monotonic()
        response = http.post(f"{API}/emergency-stop")
        latency = time.monotonic() - started
        answered = time.time()
        assert response.status_code == 200, response.text
        assert latency < 2.0, f"the emergency stop took {latency:.2f} s"
        assert response.json() == {
            "stopped": True, "aborted_jobs": [running["id"], queued["id"]],
            "backend": "simulated", "error": None,
        }

        stopped = wait_for(lambda: (j := job_of(http, running["id"]))["status"] in TERMINAL
                           and j, 10, "the running job to end")
        assert (stopped["status"], stopped["error"]) == ("aborted", "stopped by an emergency stop")
        assert stopped["finished_at"] is not None and stopped["pulses"] < ROWS * COLS * 1000
        # the queued job's end is recorded in the background (the answer never waits for
        # the database): at once in memory as requested, stored soon after
        assert job_of(http, queued["id"])["status"] in ("queued", "aborted")
        never = wait_for(lambda: (j := job_of(http, queued["id"]))["status"] in TERMINAL and j,
                         10, "the queued job's end to be recorded")
        assert (never["status"], never["run_id"], never["pulses"]) == ("aborted", None, 0)
        assert (never["started_at"], never["error"]) == (None, "stopped by an emergency stop")
        program.join(30)
        assert answers and answers[0].status_code == 409
        assert "emergency stop" in answers[0].json()["detail"]

        # no further pulse: once answered, at most the one batch that was in flight when the
        # service took the stop (its pulses are recorded after they are fired), none after
        run_id = stopped["run_id"]
        assert pulses_in(database, run_id, after=answered) <= ROWS * COLS
        total = pulses_in(database, run_id)
        assert total == stopped["pulses"]
        time.sleep(0.5)
        assert pulses_in(database, run_id) == total
        assert pulses_in(database, run_id, after=answered + 1.0) == 0
        assert http.get(f"{API}/runs/{run_id}").json()["status"] == "aborted"
        with sqlite3.connect(database) as conn:  # the /program request left no run behind
            assert conn.execute("SELECT COUNT(*) FROM runs").fetchone() == (1,)

        # the stop is not a latch: the service keeps working afterwards
        after = http.post(f"{API}/pulse", json={"cells": [[0, 0]], "voltage": -0.45,
                                                "width": 1e-7})
        assert after.status_code == 200
        assert "memprog_emergency_stops_total 1.0" in http.get("/metrics").text


# ---------------------------------------------------------------- on the emulated VISA bench


def visa_bench():
    inst = {"resource": "TCPIP0::127.0.0.1::0::SOCKET", "timeout": 1.0, "open_timeout": 1.0}
    return parse_bench({
        "name": "emulated bench for the emergency-stop test",
        "smu": {**inst, "nplc": 0.01},
        "pulser": inst,
        "matrix": {
            **inst,
            "routing": "shared",
            "row_lines": [f"1{k:02d}" for k in range(1, 5)],
            "col_lines": ["109", "110", "111", "112"],
        },
        "retry": {"attempts": 3, "delay": 0.02},
        "emulator": {"seed": 2, "variability": "realistic", "timing": False},
    })


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_emergency_stop_leaves_the_bench_outputs_off(tmp_path):
    emu = EmulatorRunner(visa_bench()).start()
    try:
        env = visa_server_env(emu.config.to_toml(), tmp_path)
        with ServerProcess(env, log_path=tmp_path / "server.log") as server, \
                httpx.Client(base_url=server.url, timeout=60) as http:
            job = http.post(f"{API}/jobs", json=long_job(4, 4)).json()
            wait_for(lambda: job_of(http, job["id"])["pulses"] >= 32, 30, "the job to pulse")

            started = time.monotonic()
            response = http.post(f"{API}/emergency-stop")
            assert time.monotonic() - started < 2.0
            assert response.status_code == 200, response.text
            body = response.json()
            assert (body["stopped"], body["aborted_jobs"], body["backend"]) \
                == (True, [job["id"]], "hardware")

            stopped = wait_for(lambda: (j := job_of(http, job["id"]))["status"] in TERMINAL
                               and j, 20, "the job to end")
            assert stopped["status"] == "aborted"
            assert emu.outputs_off()
            fired = emu.state()["pulses"]
            # every pulse the bench delivered is recorded, none was fired after the stop, and
            # none left between a cell's route and its trigger (VisaBackend.emergency_stop
            # stops the batch under the pulser's lock before the next output-on)
            assert 0 < fired == stopped["pulses"]
            time.sleep(0.5)
            assert emu.state()["pulses"] == fired and emu.outputs_off()
            assert emu.state()["violations"] == []
    finally:
        emu.stop()


def test_a_running_program_request_is_stopped_and_answers_409(api, sim_settings):
    answers = []
    body = {"targets": targets([(r, c) for r in range(16) for c in range(16)]),
            "tolerance": 1e-4, "max_pulses": 1000, "strategy": "fixed"}
    program = threading.Thread(target=lambda: answers.append(api.post(f"{API}/program",
                                                                      json=body)))
    program.start()

    def pulsed() -> bool:
        with sqlite3.connect(sim_settings.database) as conn:
            return conn.execute("SELECT COUNT(*) FROM operations WHERE kind = 'pulse'"
                                ).fetchone()[0] > 0

    wait_for(pulsed, 30, "the run to pulse")
    assert api.post(f"{API}/emergency-stop").json()["aborted_jobs"] == []
    program.join(30)
    assert answers and answers[0].status_code == 409
    detail = answers[0].json()["detail"]
    assert "stopped by an emergency stop" in detail
    run = api.get(f"{API}/runs").json()["runs"][0]
    assert run["status"] == "aborted" and f"run {run['id']}" in detail
    assert pulses_in(sim_settings.database, run["id"]) == run["total_pulses"] < 256 * 1000


class _SlowSafeState(SimBackend):
    """Test double: the real simulated backend whose safe state takes a while (a bench's
    several instruments), logging what happens when."""

    events: list[str]  # set by the test

    def emergency_stop(self) -> None:
        self.events.append("safe state begins")
        time.sleep(0.5)
        self.events.append("safe state done")

    def read(self, rows, cols, v_read=0.2):
        self.events.append("read")
        return super().read(rows, cols, v_read)


def test_the_next_request_waits_for_the_safe_state_to_finish(sim_settings, client_for):
    from service.app import create_app

    app = create_app(sim_settings, backend_factory=sim_factory_as(_SlowSafeState))
    with client_for(app) as api:
        backend = api.app.state.memprog.owner.backend
        backend.events = []
        stop = threading.Thread(target=lambda: api.post(f"{API}/emergency-stop"))
        stop.start()
        wait_for(lambda: "safe state begins" in backend.events, 10, "the stop to begin")
        assert api.post(f"{API}/read", json={"cells": [[0, 0]]}).status_code == 200
        stop.join(10)
    assert backend.events == ["safe state begins", "safe state done", "read"]

"""The emergency stop of the VISA bench within its budget while an instrument hangs.

The 33500B stops answering (an injected ``slow`` fault far past every timeout) while a batch of
pulses runs: the emergency stop opens the 707B matrix first (what disconnects the device), makes
the 2450 safe, and returns within the bench's e-stop budget (``[emergency_stop] budget``, 1 s by
default) plus a small margin, raising an error that names the pulser, which never confirmed. On
the emulated bench over real sockets, at the backend and through the running service.
"""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest

from drivers.base import BackendError, BackendUnavailable
from drivers.visa.backend import VisaBackend
from drivers.visa.emulators import EmulatorRunner
from service.launch import ServerProcess
from tests.servers import visa_server_env
from tests.test_emergency_stop import visa_bench
from tests.test_jobs import TERMINAL, job_of, long_job, wait_for

API = "/api/v1"
BUDGET = 1.0  # s, the default e-stop budget (visa_bench() leaves it unset)
MARGIN = 1.0  # s, what the call may take beyond the budget (threads, a loaded machine)
HUNG = {"instrument": "pulser", "kind": "slow", "count": 100, "delay": 30.0}
"""The pulser answers nothing for 30 s: past the 1 s I/O timeout, every retry and the test."""


class MatrixWatch:
    """Polls the emulated 707B (every 5 ms, bounded) and notes when all its channels are open."""

    def __init__(self, emu: EmulatorRunner, seconds: float = 20.0):
        self.emu = emu
        self.opened_at: float | None = None
        self._end = time.monotonic() + seconds
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> MatrixWatch:
        self._thread.start()
        return self

    def _run(self) -> None:
        while self.opened_at is None and time.monotonic() < self._end:
            with self.emu.bench.lock:
                closed = bool(self.emu.bench.matrix.closed)
            if not closed:
                self.opened_at = time.monotonic()
            time.sleep(0.005)

    def join(self) -> None:
        self._thread.join(25)


def smu_safe_after(emu: EmulatorRunner, index: int) -> bool:
    """Did the 2450 get its safe-state message (output off, 0 V) after log entry ``index``?"""
    log = list(emu.bench.smu.log)[index:]
    return any(m.startswith(":OUTP OFF;:SOUR:VOLT:LEV 0") for _, m in log)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("budget", [None, 0.4])
def test_the_stop_opens_the_matrix_and_returns_within_budget_while_the_pulser_hangs(budget):
    config = visa_bench()
    if budget is not None:
        config = config.with_updates(emergency_stop={"budget": budget})
    budget = budget or BUDGET
    with EmulatorRunner(config) as emu:
        backend = VisaBackend(emu.config)
        done = threading.Event()
        outcome: dict[str, BaseException | int] = {}

        def batches() -> None:  # the owner thread: 16-cell pulse batches until one fails
            rows, cols = np.divmod(np.arange(16), 4)
            try:
                for n in range(10_000):
                    if done.is_set():
                        break
                    backend.pulse(rows, cols, -0.45, 1e-7)
                    outcome["batches"] = n + 1
            except BaseException as e:
                outcome["error"] = e

        owner = threading.Thread(target=batches, name="owner")
        try:
            backend.connect()
            owner.start()
            wait_for(lambda: emu.state()["pulses"] >= 16, 30, "the batches to pulse")
            emu.inject(**HUNG)
            wait_for(lambda: emu.faults.fired() >= 1, 10, "the pulser to hang")
            time.sleep(0.2)  # the owner thread waits for the pulser's reply, under its lock
            assert emu.state()["instruments"]["matrix"]["closed"], "a cell is routed"
            smu_log = len(emu.bench.smu.log)
            pulses = emu.state()["pulses"]

            watch = MatrixWatch(emu).start()
            started = time.monotonic()
            with pytest.raises(BackendError) as err:
                backend.emergency_stop()
            elapsed = time.monotonic() - started
            watch.join()
            opened = None if watch.opened_at is None else watch.opened_at - started
            assert elapsed < budget + MARGIN and opened is not None and opened < budget, (
                f"the stop took {elapsed:.2f} s, the matrix opened after {opened} s")

            message = str(err.value)
            assert isinstance(err.value, BackendUnavailable), message
            assert "pulser" in message and f"not confirmed within {budget:g} s" in message, message
            state = emu.state()
            assert state["instruments"]["matrix"]["closed"] == []
            assert not state["instruments"]["smu"]["output"]
            assert state["instruments"]["smu"]["level"] == 0.0
            assert smu_safe_after(emu, smu_log)

            # the batch ends with an error (no further pulse was fired), none after the stop
            owner.join(60)
            assert not owner.is_alive()
            assert isinstance(outcome.get("error"), BackendError), outcome
            assert emu.state()["pulses"] == pulses
            assert emu.state()["violations"] == []
        finally:
            done.set()
            emu.faults.clear()
            owner.join(60)
            backend.close()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_service_answers_502_naming_the_hung_pulser_within_budget(tmp_path):
    with EmulatorRunner(visa_bench()) as emu:
        try:
            env = visa_server_env(emu.config.to_toml(), tmp_path)
            with ServerProcess(env, log_path=tmp_path / "server.log") as server, \
                    httpx.Client(base_url=server.url, timeout=60) as http:
                job = http.post(f"{API}/jobs", json=long_job(4, 4)).json()
                wait_for(lambda: job_of(http, job["id"])["pulses"] >= 32, 30, "the job to pulse")
                emu.inject(**HUNG)
                wait_for(lambda: emu.faults.fired() >= 1, 10, "the pulser to hang")
                time.sleep(0.2)  # the job's pulse waits for the pulser's reply
                assert emu.state()["instruments"]["matrix"]["closed"], "a cell is routed"

                started = time.monotonic()
                response = http.post(f"{API}/emergency-stop")
                elapsed = time.monotonic() - started
                state = emu.state()  # right after the answer
                assert elapsed < BUDGET + MARGIN + 0.5, f"the stop took {elapsed:.2f} s"
                assert response.status_code == 502, response.text
                body = response.json()
                assert (body["stopped"], body["aborted_jobs"]) == (False, [job["id"]])
                assert "pulser" in body["error"] and "not confirmed" in body["error"], body
                assert state["instruments"]["matrix"]["closed"] == []
                assert not state["instruments"]["smu"]["output"]

                ended = wait_for(lambda: (j := job_of(http, job["id"]))["status"] in TERMINAL
                                 and j, 90, "the job to end")
                assert ended["status"] == "aborted", ended
                assert emu.state()["instruments"]["matrix"]["closed"] == []
        finally:
            emu.faults.clear()


@pytest.mark.parametrize("budget", [0, 0.05, 10.5, float("nan"), float("inf")])
def test_an_e_stop_budget_out_of_range_is_refused(budget):
    with pytest.raises(ValueError, match=r"emergency_stop\.budget"):
        visa_bench().with_updates(emergency_stop={"budget": budget})

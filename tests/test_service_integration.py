"""``memprog serve`` under uvicorn as a subprocess on a free loopback port, driven by the client."""

from __future__ import annotations

import asyncio
import csv
import io
import signal
import sqlite3
import time

import httpx
import numpy as np
import pytest

from service.client import MemprogClient, MemprogError
from service.launch import ServerProcess
from tests.servers import sim_server_env

pytestmark = pytest.mark.slow

ROWS = COLS = 16


def server_env(tmp_path, **extra: str) -> dict[str, str]:
    return sim_server_env(tmp_path / "memprog.db", rows=ROWS, cols=COLS, seed=5, **extra)


def exported(lab: MemprogClient) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(lab.export_csv())))


def test_lab_script_scenario(tmp_path):
    state_file = tmp_path / "array.npz"
    env = server_env(tmp_path, MEMPROG_SIM__STATE_FILE=str(state_file))
    with ServerProcess(env, log_path=tmp_path / "server.log") as server, \
            MemprogClient(server.url, timeout=120) as lab:
        health = lab.health()
        assert health.backend == "simulated" and health.status == "ok"

        everything = lab.read()
        assert len(everything.readings) == ROWS * COLS

        pulsed = lab.pulse([(15, 0), (15, 1)], voltage=[-0.6, -0.6], width=1e-5, read_after=True)
        assert all(r.conductance > 400e-6 for r in pulsed.readings)

        # 64 cells, rows 0…3, targets across the window; budget 100 pulses per cell (ISPP on
        # this device needs ≈25 median, ≈65 at worst: see programming.classic.IsppStrategy).
        rng = np.random.default_rng(1)
        targets = [(i // COLS, i % COLS, float(g)) for i, g in
                   enumerate(rng.uniform(110e-6, 540e-6, 64))]
        run = lab.program(targets, strategy="ispp", tolerance=0.02, max_pulses=100)
        assert len(run.results) == 64
        assert run.converged >= 0.95 * 64
        for result, (row, col, g) in zip(run.results, targets, strict=True):
            assert (result.row, result.col, result.target) == (row, col, g)
            if result.converged:
                assert abs(result.final - g) <= 0.02 * g

        # bad input through the client: the service names the field
        with pytest.raises(MemprogError) as refused:
            lab.pulse([(0, 0)], voltage=-1.5, width=1e-6)
        assert refused.value.status_code == 422
        assert refused.value.detail[0]["loc"] == ["body", "voltage"]

        # the export holds every pulse and read this script made, and nothing else
        ops = exported(lab)
        reads = [op for op in ops if op["kind"] == "read"]
        pulses = [op for op in ops if op["kind"] == "pulse"]
        assert len(reads) == ROWS * COLS + 2 + run.reads
        assert len(pulses) == 2 + run.total_pulses
        assert run.reads == 64 + run.total_pulses
        first = {(int(r["row"]), int(r["col"])): float(r["conductance"])
                 for r in reads[: ROWS * COLS]}
        assert all(first[(r.row, r.col)] == r.conductance for r in everything.readings)
        assert [(p["row"], p["col"], float(p["voltage"]), float(p["width"])) for p in pulses[:2]] \
            == [("15", "0", -0.6, 1e-5), ("15", "1", -0.6, 1e-5)]
        in_run = [op for op in ops if op["run_id"] == str(run.run_id)]
        assert len(in_run) == run.reads + run.total_pulses
        last_read = {}
        for op in in_run:
            if op["kind"] == "read":
                last_read[(int(op["row"]), int(op["col"]))] = float(op["conductance"])
        assert all(last_read[(r.row, r.col)] == r.final for r in run.results)

        assert lab.runs().runs[0].id == run.run_id
        assert lab.run(run.run_id).n_converged == run.converged
    # SIGTERM shut down gracefully (uvicorn re-raises the signal once done): the lifespan
    # closed the backend, which saved the simulated array.
    assert server.process.returncode in (0, -signal.SIGTERM)
    assert state_file.is_file()


def test_concurrent_program_requests_queue_and_never_interleave(tmp_path):
    n_requests, cells_per_request = 50, 6
    pool = [(r, c) for r in range(4) for c in range(4)]  # 16 cells shared by all requests
    rng = np.random.default_rng(2)
    bodies = []
    for _ in range(n_requests):
        chosen = rng.choice(len(pool), cells_per_request, replace=False)
        bodies.append({
            "targets": [
                {"row": pool[i][0], "col": pool[i][1], "conductance": float(g)}
                for i, g in zip(chosen, rng.uniform(120e-6, 520e-6, cells_per_request),
                                strict=True)
            ],
            "tolerance": 0.02,
            "max_pulses": 30,
            "strategy": "ispp",
        })

    async def fire_all(url: str) -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=n_requests)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
            return await asyncio.gather(
                *(client.post("/api/v1/program", json=b) for b in bodies)
            )

    with ServerProcess(server_env(tmp_path)) as server:
        started = time.monotonic()
        responses = asyncio.run(fire_all(server.url))
        assert time.monotonic() - started < 120
        assert [r.status_code for r in responses] == [200] * n_requests
        answers = [r.json() for r in responses]
        with MemprogClient(server.url) as lab:
            ops = exported(lab)

    run_ids = [a["run_id"] for a in answers]
    assert len(set(run_ids)) == n_requests
    # exactly the operations reported, run by run, and nothing else
    assert len(ops) == sum(a["reads"] + a["total_pulses"] for a in answers)
    for answer in answers:
        mine = [op for op in ops if op["run_id"] == str(answer["run_id"])]
        assert sum(op["kind"] == "pulse" for op in mine) == answer["total_pulses"]
        assert sum(op["kind"] == "read" for op in mine) == answer["reads"]
        assert answer["total_pulses"] == sum(r["pulses"] for r in answer["results"])
    # no interleaving: in execution order, each run's operations form one unbroken block
    sequence = [op["run_id"] for op in ops]
    blocks = [rid for i, rid in enumerate(sequence) if i == 0 or sequence[i - 1] != rid]
    assert len(blocks) == len(set(blocks)) == n_requests
    ids = [int(op["id"]) for op in ops]
    assert ids == sorted(ids)


def test_a_crash_loses_nothing_that_was_answered(tmp_path):
    config = tmp_path / "memprog.toml"
    config.write_text(f'database = "{tmp_path / "crash.db"}"\n[sim]\nrows = 8\ncols = 8\n')
    env = {"MEMPROG_SIM__VARIABILITY": "realistic"}
    server = ServerProcess(env, config=config).start()
    try:
        with MemprogClient(server.url) as lab:
            assert (lab.array().rows, lab.array().cols) == (8, 8)  # the --config file applies
            lab.read()
            lab.pulse([(0, 0), (1, 1)], voltage=-0.45, width=1e-7, read_after=True)
            run = lab.program([(2, 2, 300e-6), (3, 3, 200e-6)], max_pulses=50, strategy="ispp")
    finally:
        server.process.send_signal(signal.SIGKILL)  # no shutdown, no final commit
        server.process.wait(timeout=30)
    with sqlite3.connect(tmp_path / "crash.db") as conn:
        found = dict(conn.execute("SELECT kind, COUNT(*) FROM operations GROUP BY kind"))
        status = conn.execute("SELECT status FROM runs WHERE id = ?", (run.run_id,)).fetchone()
    assert found == {"read": 64 + 2 + run.reads, "pulse": 2 + run.total_pulses}
    assert status == ("done",)

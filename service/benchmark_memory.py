"""``memprog benchmark memory``: what the service's device memory (each device's speed latent, kept
across runs in the ``device_memory`` table) buys a lab, measured through the real service.

Scenario, on a held-out simulated array (realistic variability) served in process by the real
app (real SQLite, the shipped model), its devices first cycled ``burn_in`` times through full
SET/RESET pulses (−0.6 V 1 µs, +1.2 V 10 µs, as the training data and the programming benchmark
do: the blind one shot's prior latent was chosen for such devices, and a fresh array scores about
half as well blind): ``rounds`` times, program every cell by write-and-verify
to a random target, then fire a one shot (``verify: false``) at every cell towards another
random target and read the array. Once with the memory (the service as shipped), once with the
memory wiped before every one shot (blind: what a device never programmed before gets). Per
round: the one shot's fraction within ±50 % / ±20 % of the update
(``(G_reached − G_target) / (G_target − G_start)``, tasks with |G_target − G_start| ≥ 5 % of
G_target) and of the target, and the write-and-verify pulses per cell.
"""

from __future__ import annotations

import json
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from service.config import Settings
from service.store.database import open_database
from service.store.device_memory import forget_all

TARGET_RANGE = (110e-6, 540e-6)  # S: inside the shipped model's trained target range
MIN_UPDATE = 0.05  # |G_target − G_start| / G_target below which a task is not scored


def _targets(cells: np.ndarray, g: np.ndarray) -> list[dict]:
    return [{"row": int(r), "col": int(c), "conductance": float(x)}
            for (r, c), x in zip(cells.tolist(), g.tolist(), strict=True)]


def run_scenario(
    *, remember: bool, rows: int, cols: int, seed: int, rounds: int, read_noise: float,
    tolerance: float = 0.02, task_seed: int = 5, burn_in: int = 4,
    population: str | None = None, calibrate: bool = False, calibration: dict | None = None,
) -> list[dict]:
    """One scenario (see the module docstring); a dict of figures per round. ``population``: a
    device population file for the array; ``calibrate``: after the burn-in, calibrate the
    predictor through ``POST /calibrations`` (5 % of the cells, at most 205, 20 pulses each,
    ``activate: if_better``) — its record goes into ``calibration``."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
        from fastapi.testclient import TestClient
    from service.app import create_app

    rng = np.random.default_rng(task_seed)
    cells = np.array([(r, c) for r in range(rows) for c in range(cols)])
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            backend="sim",
            database=Path(tmp) / "memory-benchmark.db",
            sim={"rows": rows, "cols": cols, "seed": seed, "variability": "realistic",
                 "read_noise": read_noise, "population": population},
            predictor={"models_dir": Path(tmp) / "models"},
        )
        with TestClient(create_app(settings)) as api:
            every = [[int(r), int(c)] for r, c in cells.tolist()]
            for _ in range(burn_in):
                for voltage, width in ((-0.6, 1e-6), (1.2, 1e-5)):
                    api.post("/api/v1/pulse", json={"cells": every, "voltage": voltage,
                                                    "width": width}).raise_for_status()
            if calibrate:
                done = _calibrate(api, min(205, max(1, round(0.05 * len(cells)))))
                if calibration is not None:
                    calibration.update(done)
            for _ in range(rounds):
                g1 = rng.uniform(*TARGET_RANGE, len(cells))
                run = api.post("/api/v1/program", json={
                    "targets": _targets(cells, g1), "tolerance": tolerance}).json()
                pulses = np.array([x["pulses"] for x in run["results"]])
                if not remember:
                    forget_all(open_database(settings.database, settings.station,
                                             settings.state_dir))
                g2 = rng.uniform(*TARGET_RANGE, len(cells))
                shot = api.post("/api/v1/program", json={
                    "targets": _targets(cells, g2), "verify": False}).json()
                start = np.array([x["start"] for x in shot["results"]])
                readings = api.post("/api/v1/read", json={"all": True}).json()["readings"]
                g_map = np.empty((rows, cols))
                for x in readings:
                    g_map[x["row"], x["col"]] = x["conductance"]
                reached = g_map[cells[:, 0], cells[:, 1]]
                scored = np.abs(g2 - start) >= MIN_UPDATE * g2
                rpd_update = ((reached - g2) / (g2 - start))[scored]
                rpd_target = (reached - g2) / g2
                figures.append({
                    "one_shot_within_50pct_update": float(np.mean(np.abs(rpd_update) <= 0.5)),
                    "one_shot_within_20pct_update": float(np.mean(np.abs(rpd_update) <= 0.2)),
                    "one_shot_within_50pct_target": float(np.mean(np.abs(rpd_target) <= 0.5)),
                    "one_shot_scored_tasks": int(scored.sum()),
                    "write_verify_converged": float(run["converged"] / len(cells)),
                    "write_verify_pulses_mean": float(pulses.mean()),
                    "write_verify_pulses_median": float(np.median(pulses)),
                    "write_verify_pulses_p99": float(np.percentile(pulses, 99)),
                })
    return figures


def _calibrate(api, cells: int) -> dict:
    started = time.perf_counter()
    cal = api.post("/api/v1/calibrations", json={"cells": cells, "pulses_per_cell": 20,
                                                 "activate": "if_better"}).json()
    deadline = time.monotonic() + 600
    while (cal := api.get(f"/api/v1/calibrations/{cal['id']}").json())["status"] in (
            "pulsing", "fitting"):
        if time.monotonic() > deadline:
            raise TimeoutError("the calibration did not end within 600 s")
        time.sleep(0.05)
    return {"status": cal["status"], "activated": cal["activated"], "cells": cal["cells"],
            "held_out": (cal["report"] or {}).get("held_out"), "error": cal["error"],
            "wall_s": round(time.perf_counter() - started, 2)}


def run_memory_benchmark(
    *, rows: int = 32, cols: int = 32, seed: int = 7001, rounds: int = 3,
    read_noise: float = 0.0, burn_in: int = 4, report: str | None = None,
    population: str | None = None, calibrate: bool = False,
) -> int:
    started = time.perf_counter()
    common: dict[str, Any] = dict(rows=rows, cols=cols, seed=seed, rounds=rounds,
                                  read_noise=read_noise, burn_in=burn_in, population=population)
    calibration: dict = {}
    result: dict[str, Any] = {
        "scenario": {**common, "variability": "realistic", "targets_S": list(TARGET_RANGE),
                     "min_update": MIN_UPDATE,
                     "scoring": "one shot from the verify reads after it (read noise applies); "
                                "±x % of the update over tasks with |ΔG| ≥ min_update·G_target, "
                                "of the target over all"},
        "blind": run_scenario(remember=False, **common),
        "memory": run_scenario(remember=True, **common),
    }
    if calibrate:
        result["calibrated"] = run_scenario(remember=True, calibrate=True,
                                            calibration=calibration, **common)
        result["calibration"] = calibration
    result["wall_time_s"] = round(time.perf_counter() - started, 1)
    print(f"device memory, {rows}x{cols} realistic array, seed {seed}, burn-in {burn_in} "
          f"cycles, read noise {read_noise}, population {population or 'training'}")
    print("round  one shot ±50 % of update (±20 %)  ±50 % of target   W&V pulses mean/median/p99")
    if calibrate:
        print(f"calibration: {calibration}")
    for name in ("blind", "memory", "calibrated")[:3 if calibrate else 2]:
        for k, f in enumerate(result[name]):
            print(f"{name:6s} {k + 1}  {f['one_shot_within_50pct_update']:6.1%} "
                  f"({f['one_shot_within_20pct_update']:5.1%})              "
                  f"{f['one_shot_within_50pct_target']:6.1%}           "
                  f"{f['write_verify_pulses_mean']:.2f} / {f['write_verify_pulses_median']:.0f}"
                  f" / {f['write_verify_pulses_p99']:.0f}")
    print(f"wall time {result['wall_time_s']} s")
    if report:
        Path(report).parent.mkdir(parents=True, exist_ok=True)
        Path(report).write_text(json.dumps(result, indent=1))
        print(f"report: {report}")
    return 0

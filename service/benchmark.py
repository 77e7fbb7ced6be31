"""``memprog benchmark api``: latency, throughput and peak memory of the REST service.

Against ``--url`` if given, else against a ``memprog serve`` it starts on a free loopback port
with a 256×256 simulated array and a throw-away database. Every phase is bounded in count and
in time.

The benchmark of the service layer; each layer keeps its own ``benchmark`` module (sim_backend,
drivers/visa, predictor; ``benchmark_memory`` for the device memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from service.launch import ServerProcess, peak_rss_bytes
from service.store.database import is_postgres

API = "/api/v1"
PROGRAM_TOLERANCE = 0.02
PROGRAM_BUDGET = 100
TARGET_RANGE = (110e-6, 540e-6)  # S, inside the nominal window 94…559 µS


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {
        "n": int(ms.size),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
    }


class _Workload:
    """Random one-cell requests over the array (a fresh cell per program, while they last)."""

    def __init__(self, rows: int, cols: int, seed: int = 0):
        self.rows, self.cols = rows, cols
        self.rng = np.random.default_rng(seed)
        self._fresh = iter(self.rng.permutation(rows * cols).tolist())

    def read_body(self) -> dict:
        return {"cells": [[int(self.rng.integers(self.rows)), int(self.rng.integers(self.cols))]]}

    def program_body(self) -> dict:
        flat = next(self._fresh, None)
        if flat is None:
            flat = int(self.rng.integers(self.rows * self.cols))
        row, col = divmod(flat, self.cols)
        return {
            "targets": [
                {"row": row, "col": col, "conductance": float(self.rng.uniform(*TARGET_RANGE))}
            ],
            "tolerance": PROGRAM_TOLERANCE,
            "max_pulses": PROGRAM_BUDGET,
            "strategy": "ispp",
        }


def _sequential(client: httpx.Client, path: str, bodies: list[dict]) -> tuple[list[float], list]:
    times, answers = [], []
    for body in bodies:
        t0 = time.perf_counter()
        response = client.post(API + path, json=body)
        times.append(time.perf_counter() - t0)
        response.raise_for_status()
        answers.append(response.json())
    return times, answers


async def _throughput(
    url: str, path: str, make_body, clients: int, duration: float, max_requests: int
) -> dict[str, float]:
    """``clients`` concurrent clients for at most ``duration`` s or ``max_requests`` in all."""
    done = 0
    started = time.perf_counter()
    deadline = started + duration
    latencies: list[float] = []

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal done
        while time.perf_counter() < deadline and done < max_requests:
            done += 1
            t0 = time.perf_counter()
            response = await client.post(API + path, json=make_body())
            latencies.append(time.perf_counter() - t0)
            response.raise_for_status()

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120.0, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(clients)))
    elapsed = time.perf_counter() - started
    return {
        "clients": clients,
        "requests": len(latencies),
        "seconds": elapsed,
        "per_second": len(latencies) / elapsed,
        **{f"latency_{k}": v for k, v in _percentiles(latencies).items() if k != "n"},
    }


def measure(
    url: str,
    *,
    requests: int = 200,
    clients: int = 8,
    duration: float = 5.0,
    server_pid: int | None = None,
) -> dict:
    with httpx.Client(base_url=url, timeout=120.0) as client:
        health = client.get(API + "/health").json()
        array = client.get(API + "/array").json()
        rows, cols = array["rows"], array["cols"]
        work = _Workload(rows, cols)

        _sequential(client, "/read", [work.read_body() for _ in range(10)])  # warm-up
        read_times, _ = _sequential(client, "/read", [work.read_body() for _ in range(requests)])
        n_program = max(1, min(requests, 100))
        program_times, answers = _sequential(
            client, "/program", [work.program_body() for _ in range(n_program)]
        )
        pulses = np.array([a["total_pulses"] for a in answers])
        converged = np.array([a["converged"] for a in answers])

        t0 = time.perf_counter()
        whole = client.post(API + "/read", json={"all": True})
        read_all_s = time.perf_counter() - t0
        whole.raise_for_status()
        n_whole = len(whole.json()["readings"])

    read_tp = asyncio.run(
        _throughput(url, "/read", work.read_body, clients, duration, max_requests=20_000)
    )
    program_tp = asyncio.run(
        _throughput(url, "/program", work.program_body, clients, duration, max_requests=2_000)
    )
    peak = peak_rss_bytes(server_pid) if server_pid is not None else None
    return {
        "url": url,
        "backend": health["backend"],
        "array": f"{rows}x{cols}",
        "read_one_cell": _percentiles(read_times),
        "program_one_cell": {
            **_percentiles(program_times),
            "strategy": "ispp",
            "tolerance": PROGRAM_TOLERANCE,
            "max_pulses": PROGRAM_BUDGET,
            "pulses_mean": float(pulses.mean()),
            "converged_fraction": float(converged.mean()),
        },
        "read_all": {"cells": n_whole, "seconds": read_all_s},
        "throughput_read": read_tp,
        "throughput_program": program_tp,
        "server_peak_rss_mb": None if peak is None else peak / 2**20,
    }


def _print(figures: dict) -> None:
    r, p = figures["read_one_cell"], figures["program_one_cell"]
    tr, tp = figures["throughput_read"], figures["throughput_program"]
    print(f"memprog benchmark api — {figures['backend']} {figures['array']} at {figures['url']}"
          + (f", {figures['database']} database" if figures.get("database") else ""))
    print(
        f"  one-cell read     p50 {r['p50_ms']:8.2f} ms   p99 {r['p99_ms']:8.2f} ms  (n={r['n']})"
    )
    print(
        f"  one-cell program  p50 {p['p50_ms']:8.2f} ms   p99 {p['p99_ms']:8.2f} ms  (n={p['n']}, "
        f"ispp to {p['tolerance']:.0%}, {p['pulses_mean']:.1f} pulses mean, "
        f"{p['converged_fraction']:.0%} converged)"
    )
    print(
        f"  read all {figures['read_all']['cells']} cells: "
        f"{figures['read_all']['seconds'] * 1e3:.0f} ms"
    )
    for name, t in (("read", tr), ("program", tp)):
        print(
            f"  throughput {name:8s} {t['per_second']:8.1f} req/s with {t['clients']} clients "
            f"({t['requests']} requests in {t['seconds']:.1f} s; p50 {t['latency_p50_ms']:.1f} ms, "
            f"p99 {t['latency_p99_ms']:.1f} ms)"
        )
    rss = figures["server_peak_rss_mb"]
    print(f"  server peak RSS   {'n/a' if rss is None else f'{rss:.0f} MB'} (target ≤ 300 MB)")
    fleet = figures.get("stations")
    if fleet:
        print(f"  {fleet['count']} stations on one {figures.get('database')} database, "
              f"{fleet['clients_each']} clients each: throughput alone → all at once "
              "(ratio; target ≤ 1.3)")
        for name in ("read", "program"):
            f = fleet[name]
            for k, (a, t, r) in enumerate(zip(f["alone_per_second"], f["together_per_second"],
                                              f["ratio"], strict=True)):
                print(f"    bench-{k} {name:8s} {a:8.1f} → {t:8.1f} req/s  ({r:.2f}×)")


def run_api_benchmark(
    url: str | None = None,
    *,
    rows: int = 256,
    cols: int = 256,
    requests: int = 200,
    clients: int = 8,
    duration: float = 5.0,
    server_pid: int | None = None,
    report: str | None = None,
    database: str | None = None,
    stations: int = 1,
) -> int:
    """``database``: where the started server(s) log — an SQLite file (default: a temporary
    one), a ``postgresql://`` URL, or ``postgresql:throwaway`` (a temporary PostgreSQL server,
    :mod:`service.throwaway_postgres`). ``stations`` > 1 starts that many servers on the
    database (SQLite: one file each, as one per file is the rule) and measures each one's
    throughput alone, then all at once."""
    if url is not None:
        figures = measure(
            url, requests=requests, clients=clients, duration=duration, server_pid=server_pid
        )
    else:
        with contextlib.ExitStack() as stack:
            tmp = Path(stack.enter_context(
                tempfile.TemporaryDirectory(prefix="memprog-bench-")))
            target = database
            if target == THROWAWAY:
                from service.throwaway_postgres import PostgresServer

                # fsync on, as a lab's server: every commit is flushed to disk
                target = stack.enter_context(PostgresServer(fsync=True)).new_database()
            servers = []
            for k in range(stations):
                if target is not None and is_postgres(target):
                    where = target  # one database, shared
                elif target is not None:  # an SQLite file each (one service per file)
                    where = target if k == 0 else str(Path(target).with_suffix(f".{k}.db"))
                else:
                    where = str(tmp / f"bench-{k}.db")
                env = {
                    "MEMPROG_BACKEND": "sim",
                    "MEMPROG_SIM__ROWS": str(rows),
                    "MEMPROG_SIM__COLS": str(cols),
                    "MEMPROG_SIM__VARIABILITY": "realistic",
                    "MEMPROG_DATABASE": where,
                    "MEMPROG_STATION": f"bench-{k}",
                    "MEMPROG_STATE_DIR": str(tmp / f"state-{k}"),
                }
                servers.append(stack.enter_context(ServerProcess(env, startup_timeout=120)))
            figures = measure(
                servers[0].url,
                requests=requests,
                clients=clients,
                duration=duration,
                server_pid=servers[0].pid,
            )
            figures["server_started_by_bench"] = True
            figures["database"] = ("postgresql" if target is not None and is_postgres(target)
                                   else "sqlite")
            if stations > 1:
                figures["stations"] = measure_stations([s.url for s in servers], clients,
                                                       duration)
    _print(figures)
    if report:
        Path(report).parent.mkdir(parents=True, exist_ok=True)
        Path(report).write_text(json.dumps(figures, indent=2))
    return 0


THROWAWAY = "postgresql:throwaway"


def measure_stations(urls: list[str], clients: int, duration: float) -> dict:
    """Each station's throughput (one-cell reads, one-cell programs, ``clients`` clients each)
    alone, then with every station loaded at once; ``ratio``: alone / together (1.0: the
    stations do not slow each other)."""
    out: dict = {"count": len(urls), "clients_each": clients}
    for path, body, cap in (("/read", "read_body", 20_000), ("/program", "program_body", 2_000)):
        # cells and targets of their own for each phase (a cell programmed again to the target
        # it already has would take no pulse)
        work = [_Workload(*_geometry(url), seed=100 + k) for k, url in enumerate(urls)]
        alone = [asyncio.run(_throughput(url, path, getattr(w, body), clients, duration,
                                         max_requests=cap))["per_second"]
                 for url, w in zip(urls, work, strict=True)]
        work = [_Workload(*_geometry(url), seed=200 + k) for k, url in enumerate(urls)]

        async def together(path: str = path, body: str = body, cap: int = cap,
                           work: list[_Workload] = work) -> list[dict]:
            return await asyncio.gather(*(
                _throughput(url, path, getattr(w, body), clients, duration, max_requests=cap)
                for url, w in zip(urls, work, strict=True)))

        at_once = [t["per_second"] for t in asyncio.run(together())]
        out[path.strip("/")] = {
            "alone_per_second": alone,
            "together_per_second": at_once,
            "ratio": [a / b if b else None for a, b in zip(alone, at_once, strict=True)],
        }
    return out


def _geometry(url: str) -> tuple[int, int]:
    with httpx.Client(base_url=url, timeout=60.0) as client:
        array = client.get(API + "/array").json()
    return array["rows"], array["cols"]

"""``memprog benchmark visa``: SCPI round trips and wall time per pulse-and-verify cycle.

Starts the emulated bench in-process on free loopback ports, drives it through
:class:`~drivers.visa.backend.VisaBackend` over real sockets (pyvisa-py), and counts, per cycle
(one pulse + one verify read on the same cell):

* round trips: replies the driver waited for (the figure that matters on a real bench, where each
  costs a network turn-around plus the instrument's parse time);
* program messages: lines the instruments received (round trips + writes without a reply);
* wall time of the software and the loopback, with the emulators' instrument timing off (the
  default) or on (``--timing``: NPLC integration, burst and relay settling times).

The benchmark of the VISA drivers; each layer keeps its own ``benchmark`` module (sim_backend,
predictor, service).
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np

from drivers.visa.bench import BenchConfig, load_bench, parse_bench

DEFAULT_BENCH = {
    "name": "benchmark bench (emulated)",
    "smu": {"resource": "TCPIP0::127.0.0.1::5025::SOCKET", "nplc": 0.1},
    "pulser": {"resource": "TCPIP0::127.0.0.1::5026::SOCKET"},
    "matrix": {
        "resource": "TCPIP0::127.0.0.1::5027::SOCKET",
        "routing": "shared",
        "row_lines": ["101", "102", "103", "104"],
        "col_lines": ["105", "106", "107", "108"],
    },
    "emulator": {"variability": "ideal"},
}


def _scenario(config: BenchConfig, *, cycles: int, change_shape: bool, timing: bool) -> dict:
    from drivers.visa.backend import VisaBackend
    from drivers.visa.emulators import EmulatorRunner

    config = config.with_updates(emulator={"timing": timing, "faults": ()})
    with EmulatorRunner(config) as emu:
        backend = VisaBackend(emu.config)
        try:
            backend.connect()
            row, col = np.array([0]), np.array([0])
            # Warm-up: route, first shape.
            backend.pulse(row, col, np.array([-0.34]), np.array([1e-6]))
            backend.read(row, col)
            rt0 = backend.round_trips
            msgs0 = sum(i["messages"] for i in emu.state()["instruments"].values())
            times = []
            for k in range(cycles):
                width = 2e-6 if (change_shape and k % 2 == 0) else 1e-6
                t0 = time.perf_counter()
                backend.pulse(row, col, np.array([-0.34]), np.array([width]))
                backend.read(row, col)
                times.append(time.perf_counter() - t0)
            round_trips = backend.round_trips - rt0
            state = emu.state()
            messages = sum(i["messages"] for i in state["instruments"].values()) - msgs0
        finally:
            backend.close()
        violations = emu.state()["violation_count"]
    times_ms = sorted(t * 1e3 for t in times)
    return {
        "cycles": cycles,
        "round_trips_per_cycle": round_trips / cycles,
        "messages_per_cycle": messages / cycles,
        "wall_ms_mean": statistics.fmean(times_ms),
        "wall_ms_median": statistics.median(times_ms),
        "wall_ms_p95": times_ms[min(len(times_ms) - 1, int(0.95 * len(times_ms)))],
        "violations": violations,
    }


def run_visa_benchmark(
    config: str | Path | None = None,
    cycles: int = 200,
    timing: bool = False,
    report: str | Path | None = None,
) -> int:
    if not 1 <= cycles <= 100_000:
        raise SystemExit("--cycles must be within 1 ... 100000")
    base = load_bench(config) if config else parse_bench(DEFAULT_BENCH)
    scenarios: dict[str, tuple[BenchConfig, bool]] = {}
    if base.matrix is not None:
        scenarios["matrix shared, same shape"] = (
            base.with_updates(matrix={"routing": "shared"}), False)
        scenarios["matrix shared, shape changes"] = (
            base.with_updates(matrix={"routing": "shared"}), True)
        scenarios["matrix exclusive, same shape"] = (
            base.with_updates(matrix={"routing": "exclusive"}), False)
    scenarios["no matrix, same shape"] = (base.with_updates(matrix=None), False)

    results = {}
    print(f"memprog benchmark visa: {cycles} pulse-and-verify cycles per scenario over loopback, "
          f"instrument timing {'on' if timing else 'off'}")
    print(f"{'scenario':32s} {'round trips':>11s} {'messages':>9s} {'mean ms':>8s} "
          f"{'median':>7s} {'p95':>7s}")
    for name, (cfg, change) in scenarios.items():
        r = _scenario(cfg, cycles=cycles, change_shape=change, timing=timing)
        results[name] = r
        print(f"{name:32s} {r['round_trips_per_cycle']:11.2f} {r['messages_per_cycle']:9.2f} "
              f"{r['wall_ms_mean']:8.3f} {r['wall_ms_median']:7.3f} {r['wall_ms_p95']:7.3f}")
        if r["violations"]:
            print(f"  !! {r['violations']} integrity violation(s) reported by the emulators")
    payload = {
        "benchmark": "visa",
        "cycles": cycles,
        "instrument_timing": timing,
        "bench": base.name,
        "scenarios": results,
    }
    if report:
        Path(report).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"report written to {report}")
    return 0 if all(r["violations"] == 0 for r in results.values()) else 1

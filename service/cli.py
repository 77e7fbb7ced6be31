"""The ``memprog`` command line: one entry point, a subcommand per task.

Each subcommand imports its implementation lazily so that ``memprog --help`` stays fast and the
service never imports training code.

The predictor's handlers are in ``predictor/cli.py`` (the same concept on the other side).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _benchmark_sim(args: argparse.Namespace) -> int:
    from sim_backend.benchmark import run_sim_benchmark

    return run_sim_benchmark(
        rows=args.rows, cols=args.cols, seed=args.seed, repeats=args.repeats, report=args.report
    )


def _serve(args: argparse.Namespace) -> int:
    from service.server import serve

    return serve(config=args.config, host=args.host, port=args.port, log_level=args.log_level)


def _benchmark_api(args: argparse.Namespace) -> int:
    from service.benchmark import run_api_benchmark

    return run_api_benchmark(
        url=args.url,
        rows=args.rows,
        cols=args.cols,
        requests=args.requests,
        clients=args.clients,
        duration=args.duration,
        server_pid=args.server_pid,
        report=args.report,
        database=args.database,
        stations=args.stations,
    )


def _emulate(args: argparse.Namespace) -> int:
    from drivers.visa.emulators import run_emulators

    return run_emulators(args.config)


def _benchmark_visa(args: argparse.Namespace) -> int:
    from drivers.visa.benchmark import run_visa_benchmark

    return run_visa_benchmark(
        config=args.config, cycles=args.cycles, timing=args.timing, report=args.report
    )


def _benchmark_memory(args: argparse.Namespace) -> int:
    from service.benchmark_memory import run_memory_benchmark

    return run_memory_benchmark(rows=args.rows, cols=args.cols, seed=args.seed,
                                rounds=args.rounds, read_noise=args.read_noise,
                                burn_in=args.burn_in, report=args.report,
                                population=args.population, calibrate=args.calibrate)


def _benchmark_layer(args: argparse.Namespace) -> int:
    from service.benchmark_layer import run_layer_benchmark

    run_layer_benchmark(args.out, plots=not args.no_plots)
    return 0


def _benchmark_foreign(args: argparse.Namespace) -> int:
    from predictor.benchmark_foreign import run_benchmark

    run_benchmark(args.out, args.population, rows=args.rows, cols=args.cols,
                  plots=not args.no_plots)
    return 0


def _train(args: argparse.Namespace) -> int:
    from predictor.cli import train_command

    return train_command(args)


def _benchmark_programming(args: argparse.Namespace) -> int:
    from predictor.cli import benchmark_command

    return benchmark_command(args)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("memprog")
    except PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memprog",
        description="Program memristor conductances on a simulated crossbar or a real bench.",
    )
    parser.add_argument("--version", action="version", version=f"memprog {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the REST service (default http://127.0.0.1:8000)")
    serve.add_argument("--config", default=None, help="TOML settings file (env vars override it)")
    serve.add_argument("--host", default=None, help="interface (default: settings, 127.0.0.1)")
    serve.add_argument("--port", type=int, default=None, help="TCP port (default: settings, 8000)")
    serve.add_argument(
        "--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"]
    )
    serve.set_defaults(func=_serve)

    # "bench" is the lab bench (instruments); measurements of speed and accuracy are benchmarks.
    benchmark = sub.add_parser("benchmark", help="benchmarks that print their figures")
    bench_sub = benchmark.add_subparsers(dest="benchmark", required=True)

    sim = bench_sub.add_parser("sim", help="simulated crossbar: pulse/read speed, accuracy")
    sim.add_argument("--rows", type=int, default=256)
    sim.add_argument("--cols", type=int, default=256)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--repeats", type=int, default=3, help="timed repetitions (best is kept)")
    sim.add_argument("--report", default=None, help="write the figures as JSON to this path")
    sim.set_defaults(func=_benchmark_sim)

    api = bench_sub.add_parser(
        "api", help="REST service: latency, throughput, server memory (starts one if no --url)"
    )
    api.add_argument("--url", default=None, help="a running service; default: start one")
    api.add_argument("--rows", type=int, default=256, help="array rows of a started server")
    api.add_argument("--cols", type=int, default=256, help="array cols of a started server")
    api.add_argument("--requests", type=int, default=200, help="timed requests per latency")
    api.add_argument("--clients", type=int, default=8, help="concurrent clients (throughput)")
    api.add_argument(
        "--duration", type=float, default=5.0, help="seconds of each throughput phase (bounded)"
    )
    api.add_argument(
        "--server-pid", type=int, default=None, help="pid of the --url server (peak memory)"
    )
    api.add_argument("--report", default=None, help="write the figures as JSON to this path")
    api.add_argument(
        "--database", default=None,
        help="where a started server logs: an SQLite path (default: a temporary file), a "
        "postgresql:// URL, or postgresql:throwaway (a temporary local PostgreSQL server)")
    api.add_argument(
        "--stations", type=int, default=1,
        help="start this many servers on the database and measure each one's throughput alone "
        "and all at once")
    api.set_defaults(func=_benchmark_api)

    visa = bench_sub.add_parser(
        "visa", help="VISA bench over loopback emulators: SCPI round trips, time per cycle"
    )
    visa.add_argument("--config", default=None, help="bench TOML (default: a built-in 4x4 bench)")
    visa.add_argument("--cycles", type=int, default=200, help="pulse-and-verify cycles each")
    visa.add_argument("--timing", action="store_true", help="emulate instrument timing (NPLC)")
    visa.add_argument("--report", default=None, help="write the figures as JSON to this path")
    visa.set_defaults(func=_benchmark_visa)

    prog = bench_sub.add_parser(
        "programming", help="pulse predictor vs baselines on held-out simulated devices"
    )
    prog.add_argument("--out", default="reports/programming", help="JSON + PNG directory")
    prog.add_argument("--model", default=None, help="ONNX model (default: the shipped one)")
    prog.add_argument("--rows", type=int, default=64)
    prog.add_argument("--cols", type=int, default=64)
    prog.add_argument("--seed", type=int, default=7001, help="held-out crossbar seed")
    prog.add_argument("--read-noise", type=float, default=0.0, help="relative σ of reads")
    prog.add_argument("--burn-in", type=int, default=4,
                      help="full SET/RESET cycles of the devices first (as in training)")
    prog.add_argument("--read-time", type=float, default=1e-6, help="s per read (device time)")
    prog.add_argument("--tolerance", type=float, default=0.02, help="relative to the target")
    prog.add_argument("--max-pulses", type=int, default=20, help="predictor's budget")
    prog.add_argument("--baseline-max-pulses", type=int, default=200, help="ispp/fixed budget")
    prog.add_argument("--no-bound", action="store_true", help="skip the blind one-shot bound")
    prog.add_argument("--no-plots", action="store_true", help="JSON only")
    prog.set_defaults(func=_benchmark_programming)

    foreign = bench_sub.add_parser(
        "foreign", help="the predictor on device populations it was not trained on, before "
        "and after calibration")
    foreign.add_argument("--out", default="docs/benchmarks/foreign", help="report directory")
    foreign.add_argument("--population", nargs="*", default=[],
                         help="more population files (besides the shipped examples)")
    foreign.add_argument("--rows", type=int, default=64)
    foreign.add_argument("--cols", type=int, default=64)
    foreign.add_argument("--no-plots", action="store_true", help="JSON and Markdown only")
    foreign.set_defaults(func=_benchmark_foreign)

    layer = bench_sub.add_parser(
        "layer", help="a 64x32 layer of a digits classifier on a simulated array: programming "
        "energy and time per strategy, product accuracy, read power")
    layer.add_argument("--out", default="docs/bench/layer", help="report directory")
    layer.add_argument("--no-plots", action="store_true", help="JSON only")
    layer.set_defaults(func=_benchmark_layer)

    memory = bench_sub.add_parser(
        "memory", help="device memory: one shot and write-and-verify with and without it"
    )
    memory.add_argument("--rows", type=int, default=32)
    memory.add_argument("--cols", type=int, default=32)
    memory.add_argument("--seed", type=int, default=7001, help="held-out crossbar seed")
    memory.add_argument("--rounds", type=int, default=3)
    memory.add_argument("--read-noise", type=float, default=0.0, help="relative σ of reads")
    memory.add_argument("--burn-in", type=int, default=4, help="full SET/RESET cycles first")
    memory.add_argument("--report", default="reports/benchmark_memory.json", help="JSON report")
    memory.add_argument("--population", default=None, help="device population file")
    memory.add_argument("--calibrate", action="store_true",
                        help="also: calibrate through POST /calibrations first, then the rounds")
    memory.set_defaults(func=_benchmark_memory)

    train = sub.add_parser("train", help="train, evaluate and export the pulse predictor")
    train.add_argument("--out", default="predictor/models/default.onnx", help="ONNX file")
    train.add_argument("--epochs", type=int, default=None, help="maximum epochs per polarity")
    train.add_argument("--version", default=None, help="model version (metadata)")
    train.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    train.add_argument("--quick", action="store_true", help="tiny data set (smoke test)")
    train.add_argument("--no-eval", action="store_true", help="skip the validation run")
    train.add_argument(
        "--export-data", nargs="*", default=None, help="service /export files to add (measured)"
    )
    train.add_argument("--finetune", action="store_true",
                       help="fine-tune an existing model on a station's pulses (--from, --data)")
    train.add_argument("--from", dest="parent", default=None,
                       help="with --finetune: the model to start from (.onnx or adapted .json)")
    train.add_argument("--data", default=None,
                       help="with --finetune: the station's export (CSV, JSON lines) or database")
    train.set_defaults(func=_train)

    from service.keys_cli import add_parser as add_keys_parser

    add_keys_parser(sub)

    from service.calibrate_cli import add_parser as add_calibrate_parser

    add_calibrate_parser(sub)
    from service.db_cli import add_parser as add_db_parser

    add_db_parser(sub)

    emulate = sub.add_parser(
        "emulate", help="serve the SCPI/TSP instrument emulators of a bench file on loopback"
    )
    emulate.add_argument("--config", required=True, help="bench TOML (e.g. deploy/bench.toml)")
    emulate.set_defaults(func=_emulate)

    return parser


DEPRECATED = {"bench": "benchmark"}
"""Old subcommand names still accepted (lab scripts), each with a note on stderr."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DEPRECATED:
        print(f"memprog: '{argv[0]}' is now '{DEPRECATED[argv[0]]}'; the old name will go",
              file=sys.stderr)
        argv[0] = DEPRECATED[argv[0]]
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

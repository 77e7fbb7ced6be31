"""The ``memprog`` command line: one entry point, a subcommand per task.

Each subcommand imports its implementation lazily so that ``memprog --help`` stays fast and the
service never imports training code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _bench_sim(args: argparse.Namespace) -> int:
    from sim_backend.bench import run_sim_benchmark

    return run_sim_benchmark(
        rows=args.rows, cols=args.cols, seed=args.seed, repeats=args.repeats, report=args.report
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="memprog",
        description="Program memristor conductances on a simulated crossbar or a real bench.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    bench = sub.add_parser("bench", help="benchmarks that print their figures")
    bench_sub = bench.add_subparsers(dest="bench", required=True)

    sim = bench_sub.add_parser("sim", help="simulated crossbar: pulse/read speed, accuracy")
    sim.add_argument("--rows", type=int, default=256)
    sim.add_argument("--cols", type=int, default=256)
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--repeats", type=int, default=3, help="timed repetitions (best is kept)")
    sim.add_argument("--report", default=None, help="write the figures as JSON to this path")
    sim.set_defaults(func=_bench_sim)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

"""Handlers of ``memprog train`` and ``memprog benchmark programming`` (imported lazily).

The predictor's side of the command line; ``service/cli.py`` builds the parser and calls these.
"""

from __future__ import annotations

import argparse
import json


def train_command(args: argparse.Namespace) -> int:
    try:
        from predictor import train
    except ImportError as exc:  # torch is the optional `train` extra
        raise SystemExit(
            f"memprog train needs the training extra (pip install 'memprog[train]'): {exc}"
        ) from exc

    if getattr(args, "finetune", False):
        if not args.parent or not args.data:
            raise SystemExit("memprog train --finetune needs --from MODEL and --data EXPORT")
        from predictor.finetune import FinetuneConfig, finetune

        fcfg = FinetuneConfig(epochs=args.epochs) if args.epochs is not None \
            else FinetuneConfig()
        meta = finetune(args.parent, args.data, args.out, fcfg, version=args.version)
        print(json.dumps(meta["lineage"]["held_out"], indent=2))
        return 0
    cfg = train.TrainConfig()
    if args.quick:
        cfg = train.quick_config()
    if args.epochs is not None:
        cfg.epochs = args.epochs
    if args.version is not None:
        cfg.version = args.version
    cfg.threads = args.threads
    meta = train.run(args.out, cfg, export_data=args.export_data, evaluate=not args.no_eval)
    metrics = meta["metrics"]
    print(json.dumps({k: metrics[k] for k in ("set", "reset", "time_s") if k in metrics},
                     indent=2))
    return 0


def benchmark_command(args: argparse.Namespace) -> int:
    from predictor.benchmark import run_benchmark
    from predictor.evaluate import Scenario
    from predictor.runtime import DEFAULT_MODEL

    sc = Scenario(
        rows=args.rows,
        cols=args.cols,
        seed=args.seed,
        read_noise=args.read_noise,
        tolerance=args.tolerance,
        max_pulses=args.max_pulses,
        baseline_max_pulses=args.baseline_max_pulses,
        read_time=args.read_time,
        burn_in=args.burn_in,
    )
    run_benchmark(
        args.out, args.model or DEFAULT_MODEL, sc, bound=not args.no_bound,
        plots=not args.no_plots,
    )
    return 0

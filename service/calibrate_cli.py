"""``memprog calibrate``: calibrate a running service's pulse predictor to its devices, through
the client (:meth:`service.client.MemprogClient.calibrate`), and show the result."""

from __future__ import annotations

import argparse
import json
import os
import sys

from service.client import MemprogClient, MemprogError


def add_parser(sub: argparse._SubParsersAction) -> None:
    cal = sub.add_parser(
        "calibrate",
        help="calibrate a running service's pulse predictor to its devices (then list models)",
    )
    cal.add_argument("--url", default="http://127.0.0.1:8000", help="the service")
    cal.add_argument("--cells", type=int, default=None,
                     help="cells to pulse (default: 5 %% of the array, at most 205)")
    cal.add_argument("--pulses-per-cell", type=int, default=20, help="pulse budget per cell")
    cal.add_argument("--activate", choices=("if_better", "always", "never"), default="if_better",
                     help="when the adapted model becomes the active one")
    cal.add_argument("--timeout", type=float, default=3600.0, help="s to wait for the end")
    cal.add_argument("--api-key", default=os.environ.get("MEMPROG_API_KEY"),
                     help="API key with scope program (default: $MEMPROG_API_KEY)")
    cal.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        with MemprogClient(args.url, api_key=args.api_key) as lab:
            cells = args.cells
            if cells is None:
                array = lab.array()
                cells = max(1, min(205, round(0.05 * array.rows * array.cols)))
            started = lab.calibrate(cells, pulses_per_cell=args.pulses_per_cell,
                                    activate=args.activate)
            print(f"calibration {started.id}: {started.cells} cells × "
                  f"{started.pulses_per_cell} pulses (job {started.job_id}) from "
                  f"{started.parent}", file=sys.stderr)
            final = lab.wait_calibration(started.id, timeout=args.timeout)
            print(json.dumps(final.model_dump(mode="json", exclude={"job"}), indent=1))
            if final.status != "completed":
                print(f"calibration {final.id} {final.status}: {final.error}", file=sys.stderr)
                return 1
            active = next((m for m in lab.models().models if m.active), None)
            print(f"model {final.model}: {'activated' if final.activated else 'not activated'}"
                  f" ({(final.report or {}).get('activation')}); active: "
                  f"{active.id if active else 'none'}", file=sys.stderr)
            return 0
    except (MemprogError, TimeoutError, OSError) as exc:
        print(f"memprog calibrate: {exc}", file=sys.stderr)
        return 2

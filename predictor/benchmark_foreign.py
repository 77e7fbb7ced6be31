"""``memprog benchmark foreign``: the pulse predictor on device populations it was not trained
on, before and after calibrating it to them — the figures of calibration.

For the training population and every population file (the shipped examples in
``sim_backend/populations/``, and any ``--population FILE`` written by others), a held-out
64×64 ``realistic`` array (seed 7001, burned in as in :mod:`predictor.evaluate`):

- **before**, with the shipped model: write-and-verify to 2 % (converged, within 20 pulses,
  median / p95 / p99 / max pulses) with the fit monitor's verdict; one shot blind (the model's
  prior) and on known devices (:func:`predictor.evaluate.one_shot_known`), within ±50 % of the
  update and of the target (noise-free truth);
- **calibration**, as the service runs it: on 5 % of the cells of that array (205 of 4096,
  fixed seed), at most 20 pulses each through the one programming loop with the calibration's
  pulse chooser, every pulse with a read before and after, then the fit
  (:func:`predictor.calibration.fit`); its cost: pulses, device time (Σ widths + reads ×
  read time), wall seconds; its held-out fit; the adapted model written to a file with its
  lineage and loaded back from it;
- **after**, with the adapted model: the same figures on the same devices (the array rebuilt
  from its seed), and the targets of the calibration issue as PASS/FAIL.

Writes ``foreign.json`` (and ``foreign.md``, the table) and a plot.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from drivers.base import Limits
from drivers.sim import SimBackend
from predictor import scores as M
from predictor.adapted import write_adapted
from predictor.calibration import ExplorationPlanner, OperationsTally, fit, improves
from predictor.control import PolicyConfig, PredictorPlanner
from predictor.evaluate import Scenario, fresh_array, one_shot, one_shot_known, write_verify
from predictor.fit_monitor import FitMonitor
from predictor.runtime import DEFAULT_MODEL, PulsePredictor
from programming import ProgramJob, program_cells
from sim_backend.population import Population, shipped

CALIBRATION_SHARE = 0.05
CALIBRATION_CELLS_MAX = 205
CALIBRATION_PULSES = 20
CELLS_SEED = 20261203

TARGETS = {
    "converged_within_20": 0.995,
    "pulses_median": 3,
    "pulses_p99": 10,
    "one_shot_known_within_50pct_update": 0.85,
    "calibration_wall_s": 60.0,
}


def write_and_verify(sc: Scenario, predictor: PulsePredictor) -> dict:
    monitor = FitMonitor()
    xb, r, c, target = fresh_array(sc)
    res = write_verify(xb, r, c, target, PredictorPlanner(predictor, target, monitor=monitor),
                       sc.tolerance, sc.max_pulses)
    p = res.pulses
    return {
        "converged": float(res.converged.mean()),
        "converged_within_20": float(np.mean(res.converged & (p <= 20))),
        "pulses_median": float(np.median(p)),
        "pulses_p95": float(np.percentile(p, 95)),
        "pulses_p99": float(np.percentile(p, 99)),
        "pulses_max": int(p.max()),
        "pulses_mean": float(p.mean()),
        "fit": monitor.report(predictor.fingerprint),
    }


def one_shots(sc: Scenario, predictor: PulsePredictor) -> dict:
    xb, r, c, target = fresh_array(sc)
    g0, g1 = one_shot(xb, r, c, target, PredictorPlanner(
        predictor, target, config=PolicyConfig(first_latent=None)))
    k0, k1, k_target, _ = one_shot_known(sc, predictor)
    return {
        "blind": {"within_50pct_update": M.within(M.rpd_update(g1, target, g0))["50%"],
                  "within_50pct_target": M.within(M.rpd_target(g1, target))["50%"]},
        "known": {"within_50pct_update": M.within(M.rpd_update(k1, k_target, k0))["50%"],
                  "within_50pct_target": M.within(M.rpd_target(k1, k_target))["50%"]},
    }


def calibrate(sc: Scenario, parent: PulsePredictor, out: Path) -> tuple[PulsePredictor, dict]:
    """Calibrate ``parent`` on 5 % of the array's cells; the adapted model (loaded from its
    file) and the calibration's cost and fit."""
    started = time.perf_counter()
    xb, _, _, _ = fresh_array(sc)
    n = min(CALIBRATION_CELLS_MAX, round(CALIBRATION_SHARE * sc.n))
    cells = np.sort(np.random.default_rng(CELLS_SEED).choice(sc.n, n, replace=False))
    rows, cols = cells // sc.cols, cells % sc.cols
    limits = Limits()
    lo, hi = parent.target_range
    job = ProgramJob(rows=rows, cols=cols, target=np.full(n, float(np.sqrt(lo * hi))),
                     tolerance=0.0, max_pulses=CALIBRATION_PULSES, strategy="calibration",
                     verify=True, trace=False, v_read=parent.v_read, limits=limits)
    tally = OperationsTally()
    planner = ExplorationPlanner(parent, n, v_set_max=limits.v_set_max,
                                 v_reset_max=limits.v_reset_max, width_min=limits.width_min,
                                 width_max=limits.width_max)
    outcome = program_cells(SimBackend(xb), tally, job, planner=planner)
    pulsed = time.perf_counter()
    records = tally.records()
    result = fit(parent, records)
    widths = float(records.width.sum())
    path = write_adapted(
        out, name=f"{parent.name}-calibrated", version=f"{parent.version}+bench",
        network=parent.network_path, correction=result.correction,
        one_shot_prior=result.one_shot_prior,
        lineage={"parent_fingerprint": parent.fingerprint,
                 "records_used": result.records_used,
                 "records_dropped": result.records_dropped,
                 "cells": {"calibrated": n, "devices_in_fit": result.devices},
                 "time_span": [0.0, 0.0],  # a simulation has no clock
                 "held_out": result.held_out},
        created=time.time())
    adapted = PulsePredictor(path)
    wall = time.perf_counter() - started
    reads = outcome.reads
    return adapted, {
        "cells": n,
        "pulses": int(outcome.pulses_fired),
        "reads": int(reads),
        "device_time_s": widths + reads * sc.read_time,
        "wall_s": round(wall, 2),
        "pulse_wall_s": round(pulsed - started, 2),
        "records": len(records),
        "records_used": result.records_used,
        "records_dropped": result.records_dropped,
        "held_out": result.held_out,
        "improves": improves(result),
        "correction_decades": {p: vars(getattr(result.correction, p))
                               for p in ("set", "reset")},
        "one_shot_prior": result.one_shot_prior,
        "model_file": str(path),
    }


def verdicts(after: dict, before: dict, calibration: dict, training: bool) -> dict[str, bool]:
    wv = after["write_verify"]
    out = {
        "converged ≥ 99.5 % within 20": wv["converged_within_20"] >= TARGETS[
            "converged_within_20"],
        "median ≤ 3 pulses": wv["pulses_median"] <= TARGETS["pulses_median"],
        "p99 ≤ 10 pulses": wv["pulses_p99"] <= TARGETS["pulses_p99"],
        "one shot known ≥ 85 % (±50 % of the update)": after["one_shot"]["known"][
            "within_50pct_update"] >= TARGETS["one_shot_known_within_50pct_update"],
        "calibration ≤ 60 s wall": calibration["wall_s"] <= TARGETS["calibration_wall_s"],
    }
    if training:
        b, a = before["write_verify"], wv
        out["training population no worse"] = (
            a["converged_within_20"] >= b["converged_within_20"]
            and a["pulses_mean"] <= b["pulses_mean"] * 1.02
            and after["one_shot"]["known"]["within_50pct_update"]
            >= before["one_shot"]["known"]["within_50pct_update"] - 0.01)
    return out


def run_benchmark(out_dir: str | Path = "docs/benchmarks/foreign",
                  populations: list[str | Path] | None = None, *, model: str | Path = DEFAULT_MODEL,
                  rows: int = 64, cols: int = 64, plots: bool = True, log=print) -> dict:
    """Every figure of the module docstring; writes ``foreign.json`` and ``foreign.md``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parent = PulsePredictor(model)
    files: dict[str, Path | None] = {"training (realistic)": None}
    for p in [*shipped().values(), *(Path(x) for x in populations or [])]:
        files[Population.load(p).name] = Path(p)
    report: dict = {"model": parent.fingerprint, "targets": TARGETS, "populations": {}}
    started = time.perf_counter()
    for k, (name, path) in enumerate(files.items()):
        sc = Scenario(rows=rows, cols=cols, population=str(path) if path else None)
        log(f"{name}: {rows}x{cols}, seed {sc.seed}")
        before = {"write_verify": write_and_verify(sc, parent), "one_shot": one_shots(sc, parent)}
        adapted, calibration = calibrate(sc, parent, out_dir / f"adapted-{k}.json")
        fitted = {"write_verify": write_and_verify(sc, adapted),
                  "one_shot": one_shots(sc, adapted)}
        # what the service then runs: the adapted model if it beat its parent on the held-out
        # devices (activate: if_better), else the parent
        after = fitted if calibration["improves"] else before
        entry = {"file": str(path) if path else None, "before": before,
                 "calibration": calibration, "adapted": fitted, "after": after,
                 "activated": calibration["improves"],
                 "verdicts": verdicts(after, before, calibration, path is None)}
        report["populations"][name] = entry
        for phase in ("before", "adapted"):
            wv, shot = entry[phase]["write_verify"], entry[phase]["one_shot"]
            log(f"  {phase:>7}: W&V {wv['converged_within_20'] * 100:.2f} % within 20, median "
                f"{wv['pulses_median']:g} p99 {wv['pulses_p99']:g} max {wv['pulses_max']}; one "
                f"shot blind {shot['blind']['within_50pct_update'] * 100:.1f} %, known "
                f"{shot['known']['within_50pct_update'] * 100:.1f} %; fit "
                f"{wv['fit']['verdict']} ({wv['fit']['share_unexplained']})")
        held = calibration["held_out"]
        log(f"  calibration: {calibration['pulses']} pulses, {calibration['wall_s']} s; held-out "
            f"error (mean, decades) {held['parent']['mean_abs_error_decades']} → "
            f"{held['adapted']['mean_abs_error_decades']}: "
            f"{'activated' if entry['activated'] else 'not activated (parent stays)'}")
        for what, ok in entry["verdicts"].items():
            log(f"    {'PASS' if ok else 'FAIL'} {what}")
    report["wall_s"] = round(time.perf_counter() - started, 1)
    report["table_markdown"] = table(report)
    (out_dir / "foreign.json").write_text(json.dumps(report, indent=1, default=_plain))
    (out_dir / "foreign.md").write_text(report["table_markdown"])
    log(report["table_markdown"])
    if plots:
        try:
            report["plot"] = _plot(report, out_dir)
        except ImportError as exc:  # matplotlib: the train extra
            log(f"no plot ({exc})")
    return report


def table(report: dict) -> str:
    lines = ["| population | model | W&V within 20 | median / p95 / p99 / max | one shot blind / "
             "known (±50 % of the update) | fit | calibration |",
             "|---|---|---|---|---|---|---|"]
    for name, e in report["populations"].items():
        cal = e["calibration"]
        for phase in ("before", "adapted"):
            wv, shot = e[phase]["write_verify"], e[phase]["one_shot"]
            cost = (f"{cal['pulses']} pulses, {cal['device_time_s'] * 1e3:.2f} ms device, "
                    f"{cal['wall_s']:.1f} s; held-out error "
                    f"{cal['held_out']['parent']['mean_abs_error_decades']} → "
                    f"{cal['held_out']['adapted']['mean_abs_error_decades']} dec.; "
                    f"{'activated' if e['activated'] else 'not activated'}"
                    if phase == "adapted" else "")
            label = "shipped" if phase == "before" else "adapted"
            lines.append(
                f"| {name if phase == 'before' else ''} | {label} | "
                f"{wv['converged_within_20'] * 100:.2f} % | {wv['pulses_median']:g} / "
                f"{wv['pulses_p95']:g} / {wv['pulses_p99']:g} / {wv['pulses_max']} | "
                f"{shot['blind']['within_50pct_update'] * 100:.1f} % / "
                f"{shot['known']['within_50pct_update'] * 100:.1f} % | "
                f"{wv['fit']['verdict']} | {cost} |")
    return "\n".join(lines) + "\n"


def _plain(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(type(obj).__name__)


def _plot(report: dict, out_dir: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["populations"])
    x = np.arange(len(names))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for shift, phase in ((-0.2, "before"), (0.2, "adapted")):
        mean = [report["populations"][n][phase]["write_verify"]["pulses_mean"] for n in names]
        known = [report["populations"][n][phase]["one_shot"]["known"]["within_50pct_update"]
                 * 100 for n in names]
        axes[0].bar(x + shift, mean, 0.4, label=phase)
        axes[1].bar(x + shift, known, 0.4, label=phase)
    axes[0].set_ylabel("write-and-verify:\nmean pulses per device")
    axes[1].set_ylabel("one shot, known devices:\n% within ±50 % of the update")
    axes[1].axhline(85, color="k", lw=0.8, ls="--")
    for ax in axes:
        ax.set_xticks(x, names, rotation=20, fontsize=8)
        ax.legend(fontsize=8)
    fig.suptitle("Before and after calibrating on 5 % of the cells (≤ 20 pulses each)", y=0.99)
    fig.tight_layout()
    path = out_dir / "foreign.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)

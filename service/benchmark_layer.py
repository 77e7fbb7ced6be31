"""``memprog benchmark layer``: a 64×32 layer (64×64 devices) of a small digits classifier held in
a simulated 64×64 array, programmed with each strategy, then multiplied in place.

The classifier: scikit-learn's digits (8×8 images, 1,797 samples, shipped with scikit-learn: no
download), a two-layer perceptron 64 → 32 (ReLU) → 10 trained here in numpy (seeded). Its first
layer (64 inputs × 32 outputs) goes onto the array through ``POST /api/v1/layers``; the test
images (x = pixel / 16) are multiplied by ``POST /layers/{name}/multiply`` and the rest of the
network runs in software. Per strategy, on a fresh service with the same simulated array:
cells converged, wall time, device time (Σ pulse widths), programming energy (Σ ∫V·I dt),
product accuracy (relative error of the outputs vs W·x), classifier accuracy vs the ideal
layer's, read power and TOPS/W — with and without ``low_power``. A JSON report and a plot under
``docs/bench/layer/``.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from service.client import MemprogClient
from service.launch import ServerProcess

STRATEGIES = ("predictor", "ispp", "fixed")
HIDDEN = 32
SEED = 0


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Train/test split of scikit-learn's digits, x = pixel / 16 ∈ [0, 1] (seeded)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = data.data / 16.0
    y = data.target
    order = np.random.default_rng(SEED).permutation(len(y))
    test = order[:360]
    train = order[360:]
    return x[train], y[train], x[test], y[test]


def train_mlp(x: np.ndarray, y: np.ndarray, hidden: int = HIDDEN, epochs: int = 400,
              lr: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A 64 → hidden (ReLU) → 10 perceptron, full-batch gradient descent on cross-entropy
    (numpy, seeded): W1 (64 × hidden), b1, W2 (hidden × 10), b2."""
    rng = np.random.default_rng(SEED)
    n_in = x.shape[1]
    w1 = rng.normal(0, np.sqrt(2 / n_in), (n_in, hidden))
    b1 = np.zeros(hidden)
    w2 = rng.normal(0, np.sqrt(2 / hidden), (hidden, 10))
    b2 = np.zeros(10)
    onehot = np.eye(10)[y]
    for _ in range(epochs):
        h = np.maximum(x @ w1 + b1, 0.0)
        logits = h @ w2 + b2
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        g = (p - onehot) / len(y)
        gw2, gb2 = h.T @ g, g.sum(axis=0)
        gh = (g @ w2.T) * (h > 0)
        gw1, gb1 = x.T @ gh, gh.sum(axis=0)
        w1 -= lr * gw1
        b1 -= lr * gb1
        w2 -= lr * gw2
        b2 -= lr * gb2
    return w1, b1, w2, b2


def classify(first: np.ndarray, b1: np.ndarray, w2: np.ndarray, b2: np.ndarray) -> np.ndarray:
    """Classes from the first layer's outputs (x·W1, however computed)."""
    return np.argmax(np.maximum(first + b1, 0.0) @ w2 + b2, axis=1)


def multiply_all(lab: MemprogClient, name: str, x: np.ndarray, v_in: float | None = None
                 ) -> tuple[np.ndarray, np.ndarray, dict]:
    """The layer's outputs for every row of ``x`` (1,024 vectors a call), and the read figures
    (mean read power, W; TOPS/W; energy per product, J; inputs driven at 0 V)."""
    outputs, ideal, power, zeroed, tops = [], [], [], 0, []
    for start in range(0, len(x), 1024):
        answer = lab.multiply(name, x[start:start + 1024].tolist(), v_in=v_in)
        outputs.append(np.array(answer.outputs))
        ideal.append(np.array(answer.ideal))
        power.extend(answer.read_power)
        zeroed += answer.inputs_zeroed
        if answer.tops_per_watt is not None:
            tops.append(answer.tops_per_watt)
    p = float(np.mean(power))
    return np.vstack(outputs), np.vstack(ideal), {
        "read_power_mean_W": p,
        "energy_per_product_J": p * 1e-8,
        "tops_per_watt": float(np.mean(tops)) if tops else None,
        "inputs_zeroed": zeroed,
        "t_read_s": 1e-8,
    }


def device_time(lab: MemprogClient, run_id: int) -> float:
    """Σ of the run's pulse widths, s (from the CSV export)."""
    rows = csv.DictReader(io.StringIO(lab.export_csv(run_id)))
    return float(sum(float(r["width"]) for r in rows if r["kind"] == "pulse"))


def run_layer_benchmark(report_dir: str | Path = "docs/bench/layer", plots: bool = True,
                        log=print) -> dict:
    t0 = time.perf_counter()
    x_train, y_train, x_test, y_test = digits()
    w1, b1, w2, b2 = train_mlp(x_train, y_train)
    ideal_accuracy = float(np.mean(classify(x_test @ w1, b1, w2, b2) == y_test))
    log(f"digits MLP 64 → {HIDDEN} → 10, software: {ideal_accuracy * 100:.1f} % on "
        f"{len(y_test)} test images")
    report: dict = {"layer": {"rows": 64, "outputs": HIDDEN, "cells": "64 x 64"},
                    "ideal_accuracy": ideal_accuracy, "strategies": {}}
    for strategy in STRATEGIES:
        for low_power in ((False, True) if strategy == "predictor" else (False,)):
            key = strategy + (" low_power" if low_power else "")
            with tempfile.TemporaryDirectory(prefix="memprog-layer-") as tmp, ServerProcess({
                "MEMPROG_BACKEND": "sim", "MEMPROG_SIM__ROWS": "64", "MEMPROG_SIM__COLS": "64",
                "MEMPROG_SIM__VARIABILITY": "realistic", "MEMPROG_SIM__SEED": "11",
                "MEMPROG_DATABASE": str(Path(tmp) / "layer.db"),
            }, startup_timeout=120) as server, MemprogClient(server.url, timeout=600) as lab:
                started = time.perf_counter()
                layer = lab.program_layer("hidden", w1.tolist(), strategy=strategy,
                                          low_power=low_power, tolerance=0.02,
                                          max_pulses=100, timeout=1800)
                wall = time.perf_counter() - started
                job = layer.job
                assert job is not None and job.run_id is not None
                run = lab.run(job.run_id)
                first, ideal_first, reading = multiply_all(lab, "hidden", x_test)
                accuracy = float(np.mean(classify(first, b1, w2, b2) == y_test))
                rel = float(np.linalg.norm(first - ideal_first) / np.linalg.norm(ideal_first))
                figures = {
                    "cells_converged": job.cells_converged,
                    "cells": job.total_cells,
                    "pulses": job.pulses,
                    "wall_time_s": round(wall, 2),
                    "device_time_s": device_time(lab, job.run_id),
                    "programming_energy_J": run.energy,
                    "programming_energy_per_cell_J": None if run.energy is None
                    else run.energy / job.total_cells,
                    "weight_error_rms": layer.weight_error_rms,
                    "product_relative_error": rel,
                    "accuracy": accuracy,
                    "accuracy_drop_points": (ideal_accuracy - accuracy) * 100,
                    **reading,
                }
            report["strategies"][key] = figures
            log(f"  {key:>21}: {figures['cells_converged']}/{figures['cells']} converged, "
                f"{figures['pulses']} pulses, {wall:.1f} s wall, device "
                f"{figures['device_time_s'] * 1e3:.2f} ms, energy "
                f"{(figures['programming_energy_J'] or 0) * 1e9:.2f} nJ; products "
                f"{rel * 100:.1f} % off, accuracy {accuracy * 100:.1f} % "
                f"(drop {figures['accuracy_drop_points']:.1f} points); read "
                f"{figures['read_power_mean_W'] * 1e3:.2f} mW, "
                f"{figures['tops_per_watt'] or 0:.1f} TOPS/W")
    report["wall_time_s"] = round(time.perf_counter() - t0, 1)
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "layer.json").write_text(json.dumps(report, indent=2))
    if plots:
        _plot(report, out / "layer.png")
    log(f"report: {out / 'layer.json'}" + (f", {out / 'layer.png'}" if plots else ""))
    return report


def _plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["strategies"])
    s = report["strategies"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].bar(names, [s[n]["programming_energy_J"] * 1e9 for n in names], color="#4c72b0")
    axes[0].set_ylabel("programming energy, nJ (64×64 devices)")
    axes[0].set_yscale("log")
    axes[1].bar(names, [s[n]["accuracy"] * 100 for n in names], color="#55a868")
    axes[1].axhline(report["ideal_accuracy"] * 100, color="k", ls="--", lw=1,
                    label="software layer")
    axes[1].set_ylim(0, 100)
    axes[1].set_ylabel("digits test accuracy, %")
    axes[1].legend(loc="lower right")
    axes[2].bar(names, [s[n]["read_power_mean_W"] * 1e3 for n in names], color="#c44e52")
    axes[2].set_ylabel("read power per product, mW")
    for ax in axes:
        ax.tick_params(axis="x", rotation=20)
    fig.suptitle("memprog benchmark layer: a 64×32 layer of a digits MLP on a simulated array",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)

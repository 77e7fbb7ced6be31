"""A tiny digits classifier whose last layer lives in a (simulated) memristor array.

Trains a 64 → 16 → 10 perceptron on scikit-learn's digits (shipped with scikit-learn: no
download) in numpy, programs its last layer (16 × 10 weights: 16 × 20 devices) into the array
through memprog's REST API, runs the test images through it — the first layer in software, the
last one as products read from the array — and prints the accuracy of the ideal layer against
the programmed one, and what the programming and the products cost in energy.

    python examples/digits_layer.py                    # starts a simulated service of its own
    python examples/digits_layer.py --url http://127.0.0.1:8000 [--api-key KEY]
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from pathlib import Path

import numpy as np

from service.benchmark_layer import classify, digits, train_mlp
from service.client import MemprogClient
from service.launch import ServerProcess


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="a running memprog (default: start one)")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--strategy", default="predictor")
    args = parser.parse_args()

    x_train, y_train, x_test, y_test = digits()
    w1, b1, w2, b2 = train_mlp(x_train, y_train, hidden=16)
    hidden = np.maximum(x_test @ w1 + b1, 0.0)
    software = np.mean(np.argmax(hidden @ w2 + b2, axis=1) == y_test)
    print(f"software classifier: {software * 100:.1f} % of {len(y_test)} test digits")

    with contextlib.ExitStack() as stack:
        url = args.url
        if url is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="memprog-example-"))
            url = stack.enter_context(ServerProcess({
                "MEMPROG_BACKEND": "sim", "MEMPROG_SIM__ROWS": "32", "MEMPROG_SIM__COLS": "32",
                "MEMPROG_SIM__VARIABILITY": "realistic",
                "MEMPROG_DATABASE": str(Path(tmp) / "example.db")})).url
        lab = stack.enter_context(MemprogClient(url, api_key=args.api_key, timeout=600))
        layer = lab.program_layer("digits-out", w2.tolist(), strategy=args.strategy,
                                  low_power=True, tolerance=0.02, max_pulses=50)
        assert layer.job is not None and layer.job.run_id is not None
        run = lab.run(layer.job.run_id)
        print(f"last layer {layer.rows} × {layer.outputs} on {layer.rows * layer.outputs * 2} "
              f"devices: {layer.job.cells_converged}/{layer.job.total_cells} converged with "
              f"{layer.job.pulses} pulses, {run.energy * 1e9:.2f} nJ of programming energy; "
              f"weight error {layer.weight_error_rms:.3f} rms")
        # Each vector scaled by its own largest activation (the layer is linear: W·h = m·W·(h/m)),
        # so that its inputs span the read voltage and few fall below the read floor.
        m = np.maximum(hidden.max(axis=1, keepdims=True), 1e-12)
        product = lab.multiply("digits-out", (hidden / m).tolist())
        logits = np.array(product.outputs) * m
        array = np.mean(classify(logits, np.zeros(10), np.eye(10), b2) == y_test)
        print(f"programmed classifier: {array * 100:.1f} % "
              f"({(software - array) * 100:.1f} points below software)")
        print(f"products: {product.relative_error * 100:.1f} % from W·x; read power "
              f"{np.mean(product.read_power) * 1e3:.2f} mW, "
              f"{np.mean(product.energy_per_product) * 1e12:.1f} pJ a product over "
              f"{product.t_read * 1e9:.0f} ns, {product.tops_per_watt:.0f} TOPS/W")


if __name__ == "__main__":
    main()

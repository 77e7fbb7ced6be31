"""End to end on a tiny data set: simulate, train (seconds), export ONNX, load with onnxruntime,
predict; the metadata; reload without restart."""

from __future__ import annotations

import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # the optional `train` extra

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.export internals

from predictor import train  # noqa: E402
from predictor.runtime import PulsePredictor, read_metadata  # noqa: E402


def _measured_export(path):
    """An operation log as the service's /export writes it (CSV), from a small array."""
    from sim_backend import Crossbar

    xb = Crossbar(2, 4, seed=9, variability="realistic")
    rows, cols = np.divmod(np.arange(8), 4)
    lines = ["id,time,kind,row,col,voltage,width,conductance,current,compliance,run_id,backend"]
    op = 0

    def read():
        nonlocal op
        for r, c, g in zip(rows, cols, xb.read(rows, cols), strict=True):
            op += 1
            lines.append(f"{op},0,read,{r},{c},0.2,,{g},{g * 0.2},0,,simulated")

    read()
    for k in range(4):
        v = -0.5 if k % 2 == 0 else 1.0
        xb.pulse(rows, cols, v, 2e-8)
        for r, c in zip(rows, cols, strict=True):
            op += 1
            lines.append(f"{op},0,pulse,{r},{c},{v},2e-08,,,,,simulated")
        read()
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """Trained on a tiny simulated data set plus a measured export (the fine-tuning path)."""
    folder = tmp_path_factory.mktemp("model")
    export = _measured_export(folder / "export.csv")
    out = folder / "tiny.onnx"
    cfg = train.quick_config()
    meta = train.run(out, cfg, evaluate=False, export_data=[str(export)], log=lambda *a: None)
    return out, meta


def test_tiny_pipeline_trains_exports_and_predicts(tiny_model):
    path, meta = tiny_model
    assert path.is_file() and path.stat().st_size < 200_000
    # Training learnt something: the validation error is far below the spread of the widths
    # (log10 widths span ~6 decades; predicting their mean would give an RMSE of ~1.5).
    for polarity in ("set", "reset"):
        assert meta["metrics"][polarity]["val_rmse_log10_width"] < 0.6
    p = PulsePredictor(path)
    g_s = np.array([150e-6, 300e-6, 450e-6])
    w = p.predict_width(g_s, g_s * 1.1, -0.5, 0.0)
    assert w.shape == (3,) and np.all(np.isfinite(w)) and np.all(w > 0)
    w = p.predict_width(g_s, g_s * 0.9, 1.0, 0.0)
    assert np.all(np.isfinite(w))


def test_onnx_graph_matches_torch_and_reference_features(tmp_path):
    """The exported graph computes what the torch module computes, and the module's features
    are the reference implementation's (predictor.features)."""
    cfg = train.quick_config()
    torch.manual_seed(0)
    nets = []
    for is_set in (True, False):
        net = train.PolarityNet(is_set, cfg.hidden, -6.0, 1.5)
        with torch.no_grad():
            for prm in net.parameters():
                prm.copy_(torch.randn_like(prm) * 0.3)
        nets.append(net.eval())
    out = train.export_onnx(train.PulsePredictor(*nets), tmp_path / "random.onnx",
                            train.build_metadata(cfg, {}, {}))
    p = PulsePredictor(out)
    rng = np.random.default_rng(3)
    n = 50
    g_s = rng.uniform(100e-6, 500e-6, n)
    z = rng.uniform(-1, 1, n)
    for net, g_t, v in ((nets[0], np.minimum(g_s * rng.uniform(1.001, 1.5, n), 550e-6), -0.45),
                        (nets[1], np.maximum(g_s * rng.uniform(0.5, 0.999, n), 100e-6), 1.05)):
        q = np.stack([g_s, g_t, np.full(n, v), z], 1)
        with torch.no_grad():
            ref = net(torch.tensor(q, dtype=torch.float32)).numpy()[:, 0]
            via_features = net.forward_features(
                torch.tensor(train.F.features(q, net.is_set), dtype=torch.float32)
            ).numpy()[:, 0] * 1.5 - 6.0
        np.testing.assert_allclose(ref, via_features, atol=1e-4)
        np.testing.assert_allclose(p.predict_log10_width(g_s, g_t, v, z), ref, atol=1e-4)


def test_metadata_contents(tiny_model):
    path, _ = tiny_model
    meta = read_metadata(path)
    assert meta["name"] == train.MODEL_NAME
    assert meta["version"] == "0.0.0-quick"
    names = [c["name"] for c in meta["features"]["query_columns"]]
    assert names == ["g_start", "g_target", "voltage", "latent"]
    units = {c["name"]: c["unit"] for c in meta["features"]["query_columns"]}
    assert units == {"g_start": "S", "g_target": "S", "voltage": "V", "latent": "1"}
    assert all(v < 0 for v in meta["voltages"]["set"])
    assert all(v > 0 for v in meta["voltages"]["reset"])
    cr = meta["conductance_range"]
    assert cr["unit"] == "S" and cr["target_min"] < cr["target_max"]
    assert cr["window_min"] <= cr["target_min"] and cr["target_max"] <= cr["window_max"]
    data = meta["training"]["data"]["train"]
    assert data["variability"] == "realistic" and data["records"] > 0
    assert data["crossbar_seeds"] == [101]
    assert data["measured_records"] == 32  # 8 cells × 4 pulses from the export
    assert meta["training"]["data"]["validation"]["crossbar_seeds"] == [201]
    assert "val_rmse_log10_width" in meta["metrics"]["set"]


def test_batched_equals_single(tiny_model):
    path, _ = tiny_model
    p = PulsePredictor(path)
    rng = np.random.default_rng(0)
    g_s = rng.uniform(100e-6, 540e-6, 64)
    g_t = rng.uniform(100e-6, 540e-6, 64)
    v = np.where(g_t > g_s, -0.5, 1.0)
    z = rng.uniform(-1, 1, 64)
    batch = p.predict_log10_width(g_s, g_t, v, z)
    single = np.array([p.predict_log10_width(g_s[i], g_t[i], v[i], z[i]) for i in range(64)])
    np.testing.assert_allclose(batch, single, rtol=0, atol=2e-5)  # float32 GEMM blocking


def test_reload_swaps_model_while_predicting(tiny_model, tmp_path):
    path, _ = tiny_model
    cfg = train.quick_config()
    cfg.version = "0.0.1-quick"
    nets = [train.PolarityNet(s, cfg.hidden, -6.0, 1.5) for s in (True, False)]
    other = train.export_onnx(train.PulsePredictor(*nets), tmp_path / "other.onnx",
                              train.build_metadata(cfg, {}, {}))
    p = PulsePredictor(path)
    errors = []
    stop = threading.Event()

    def hammer():
        while not stop.is_set():
            try:
                out = p.predict_width(np.full(32, 2e-4), np.full(32, 2.4e-4), -0.5, 0.0)
                assert np.all(np.isfinite(out))
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        assert p.reload(other)["version"] == "0.0.1-quick"
        assert p.version == "0.0.1-quick"
        assert p.reload(path)["version"] == "0.0.0-quick"
        with pytest.raises(Exception):  # noqa: B017 - any load error; the old model stays
            p.reload(tmp_path / "missing.onnx")
        assert p.version == "0.0.0-quick"
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors

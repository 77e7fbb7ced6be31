"""Training of the pulse predictor (PyTorch, the ``train`` extra); only ``memprog train`` uses it.

One command generates the data, trains the SET and RESET networks with early stopping on
held-out devices, evaluates, and exports the ONNX model with its metadata::

    memprog train --out predictor/models/default.onnx

Everything is seeded: the same command gives the same model (up to floating-point summation
order of the CPU kernels). Training devices come from crossbar seeds ``TRAIN_SEEDS``, validation
devices from ``VAL_SEEDS``; the benchmark's held-out devices from seeds used by neither.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from predictor import features as F
from predictor.dataset import Records, SimulationConfig, simulate
from predictor.log_records import load_export

TRAIN_SEEDS = (101, 102, 103, 104)
VAL_SEEDS = (201,)
MODEL_NAME = "memprog-pulse-predictor"
FORMAT_VERSION = 1


@dataclass
class TrainConfig:
    hidden: tuple[int, ...] = (64, 64, 64)
    epochs: int = 120
    batch: int = 2048
    lr: float = 3e-3
    weight_decay: float = 0.0
    patience: int = 12
    seed: int = 0
    threads: int = 2
    train_seeds: tuple[int, ...] = TRAIN_SEEDS
    val_seeds: tuple[int, ...] = VAL_SEEDS
    sim: SimulationConfig = field(default_factory=SimulationConfig)
    val_sim: SimulationConfig = field(
        default_factory=lambda: SimulationConfig(rows=64, cols=64, rounds=24)
    )
    version: str = "1.0.0"


def quick_config() -> TrainConfig:
    """A tiny configuration that trains in seconds (tests, smoke runs); not a useful model."""
    return TrainConfig(
        hidden=(32, 32),
        epochs=30,
        batch=256,
        lr=1e-2,
        patience=5,
        train_seeds=(101,),
        sim=SimulationConfig(rows=32, cols=32, rounds=8, burn_in_cycles=1),
        val_sim=SimulationConfig(rows=16, cols=16, rounds=8, burn_in_cycles=1),
        version="0.0.0-quick",
    )


# ----------------------------------------------------------------------------------- model


class PolarityNet(nn.Module):
    """One polarity: raw query (g_start S, g_target S, V, z) → log10 width (s).

    The feature normalisation (:mod:`predictor.features`) and the output scaling are part of the
    module, so the exported graph takes raw SI values.
    """

    # buffers (register_buffer), typed for the checker
    v_center: torch.Tensor
    v_half: torch.Tensor
    y_mean: torch.Tensor
    y_std: torch.Tensor

    def __init__(self, is_set: bool, hidden: tuple[int, ...], y_mean: float, y_std: float):
        super().__init__()
        self.is_set = is_set
        center, half = F.polarity_norm(is_set)
        self.register_buffer("v_center", torch.tensor(center, dtype=torch.float32))
        self.register_buffer("v_half", torch.tensor(half, dtype=torch.float32))
        self.register_buffer("y_mean", torch.tensor(y_mean, dtype=torch.float32))
        self.register_buffer("y_std", torch.tensor(y_std, dtype=torch.float32))
        layers: list[nn.Module] = []
        width_in = 5
        for h in hidden:
            layers += [nn.Linear(width_in, h), nn.SiLU()]
            width_in = h
        layers.append(nn.Linear(width_in, 1))
        self.mlp = nn.Sequential(*layers)

    def features(self, q: torch.Tensor) -> torch.Tensor:
        g_s, g_t, v, z = q[:, 0:1], q[:, 1:2], q[:, 2:3], q[:, 3:4]
        x_s = (torch.log(g_s) - F.LN_G_CENTER) / F.LN_G_HALF
        x_t = (torch.log(g_t) - F.LN_G_CENTER) / F.LN_G_HALF
        rel = torch.clamp(torch.abs(g_t - g_s) / g_s, min=F.MIN_RELATIVE_UPDATE)
        x_u = (torch.log10(rel) - F.LOG_UPDATE_CENTER) / F.LOG_UPDATE_HALF
        x_v = (torch.abs(v) - self.v_center) / self.v_half
        return torch.cat([x_s, x_t, x_u, x_v, z], dim=1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised output for precomputed features (training)."""
        return self.mlp(x)

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.features(q)) * self.y_std + self.y_mean


class PulsePredictor(nn.Module):
    """Both polarities in one graph: inputs ``set_query`` [B1, 4], ``reset_query`` [B2, 4]."""

    def __init__(self, set_net: PolarityNet, reset_net: PolarityNet):
        super().__init__()
        self.set_net = set_net
        self.reset_net = reset_net

    def forward(self, set_query: torch.Tensor, reset_query: torch.Tensor):
        return self.set_net(set_query), self.reset_net(reset_query)


# -------------------------------------------------------------------------------- training


def _arrays(rec: Records, is_set: bool) -> tuple[np.ndarray, np.ndarray]:
    keep = rec.usable() & ((rec.voltage < 0) == is_set) & np.isfinite(rec.latent)
    q = np.stack([rec.g_before[keep], rec.g_after[keep], rec.voltage[keep], rec.latent[keep]], 1)
    return q, np.log10(rec.width[keep])


def fit_polarity(
    is_set: bool, train: Records, val: Records, cfg: TrainConfig, log=print
) -> tuple[PolarityNet, dict]:
    """Train one polarity's network; early stopping on the validation devices' loss."""
    torch.manual_seed(cfg.seed + (0 if is_set else 1))
    q_tr, y_tr = _arrays(train, is_set)
    q_va, y_va = _arrays(val, is_set)
    y_mean, y_std = float(y_tr.mean()), float(y_tr.std())
    net = PolarityNet(is_set, cfg.hidden, y_mean, y_std)
    x_tr = torch.tensor(F.features(q_tr, is_set), dtype=torch.float32)
    t_tr = torch.tensor((y_tr - y_mean) / y_std, dtype=torch.float32)[:, None]
    x_va = torch.tensor(F.features(q_va, is_set), dtype=torch.float32)
    t_va = torch.tensor((y_va - y_mean) / y_std, dtype=torch.float32)[:, None]
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=4)
    gen = torch.Generator().manual_seed(cfg.seed + 17)
    best: tuple[float, dict[str, torch.Tensor] | None, int] = (float("inf"), None, -1)
    history = []
    n = x_tr.shape[0]
    for epoch in range(cfg.epochs):
        net.train()
        perm = torch.randperm(n, generator=gen)
        total = 0.0
        for start in range(0, n, cfg.batch):
            b = perm[start:start + cfg.batch]
            opt.zero_grad()
            loss = torch.mean((net.forward_features(x_tr[b]) - t_tr[b]) ** 2)
            loss.backward()
            opt.step()
            total += loss.detach().item() * b.numel()
        net.eval()
        with torch.no_grad():
            val_loss = float(torch.mean((net.forward_features(x_va) - t_va) ** 2))
        sched.step(val_loss)
        history.append((total / n, val_loss))
        if val_loss < best[0] - 1e-6:
            best = (val_loss, {k: v.clone() for k, v in net.state_dict().items()}, epoch)
        if epoch - best[2] >= cfg.patience:
            break
        if epoch % 10 == 0:
            log(f"  {'SET' if is_set else 'RESET'} epoch {epoch:3d}  train {total / n:.5f}  "
                f"val {val_loss:.5f}  lr {opt.param_groups[0]['lr']:.1e}")
    assert best[1] is not None, "no epoch ran"
    net.load_state_dict(best[1])
    net.eval()
    with torch.no_grad():
        pred = net(torch.tensor(q_va, dtype=torch.float32)).numpy()[:, 0]
    err = pred - y_va
    metrics = {
        "train_records": int(n),
        "val_records": int(q_va.shape[0]),
        "epochs_run": len(history),
        "best_epoch": best[2],
        "val_rmse_log10_width": float(np.sqrt(np.mean(err**2))),
        "val_p95_abs_log10_width": float(np.percentile(np.abs(err), 95)),
        "parameters": int(sum(p.numel() for p in net.parameters())),
    }
    return net, metrics


# ---------------------------------------------------------------------------------- export


def export_onnx(model: PulsePredictor, path: str | Path, metadata: dict) -> Path:
    """Write the two-input, two-output ONNX graph (dynamic batch) with ``metadata``."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.eval()
    example = (torch.full((2, 4), 2e-4), torch.full((3, 4), 2e-4))
    batch_set = torch.export.Dim("batch_set", min=0, max=1 << 24)
    batch_reset = torch.export.Dim("batch_reset", min=0, max=1 << 24)
    tmp = path.with_name(path.name + ".tmp")
    torch.onnx.export(
        model,
        example,
        str(tmp),
        input_names=["set_query", "reset_query"],
        output_names=["set_log10_width", "reset_log10_width"],
        dynamic_shapes={"set_query": {0: batch_set}, "reset_query": {0: batch_reset}},
        dynamo=True,
        external_data=False,
        verbose=False,
    )
    proto = onnx.load(str(tmp))
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key = "memprog"
    entry.value = json.dumps(metadata, sort_keys=True)
    proto.doc_string = (
        f"{metadata['name']} {metadata['version']}: pulse width (log10 s) for a conductance "
        "update of a JART VCM v1b memristor; see metadata 'memprog'."
    )
    proto.producer_name = "memprog"
    onnx.checker.check_model(proto)
    onnx.save(proto, str(tmp))
    os.replace(tmp, path)  # atomic: a service reloading meanwhile sees the old or the new file
    data = tmp.with_name(tmp.name + ".data")
    data.unlink(missing_ok=True)
    return path


def build_metadata(cfg: TrainConfig, data_summary: dict, metrics: dict) -> dict:
    return {
        "name": MODEL_NAME,
        "version": cfg.version,
        "format": FORMAT_VERSION,
        "created_by": "memprog train",
        "inputs": {
            "set_query": "[batch, 4] float32: g_start S, g_target S, voltage V (< 0), latent",
            "reset_query": "[batch, 4] float32: g_start S, g_target S, voltage V (> 0), latent",
        },
        "outputs": {
            "set_log10_width": "[batch, 1] float32: log10 of the SET pulse width in s",
            "reset_log10_width": "[batch, 1] float32: log10 of the RESET pulse width in s",
        },
        "features": F.feature_spec(),
        "voltages": {
            "set": [-v for v in F.SET_VOLTAGES],
            "reset": list(F.RESET_VOLTAGES),
            "unit": "V",
            "set_trained_range": [-F.SET_V_RANGE[1], -F.SET_V_RANGE[0]],
            "reset_trained_range": list(F.RESET_V_RANGE),
        },
        "conductance_range": {
            "target_min": F.G_TARGET_MIN,
            "target_max": F.G_TARGET_MAX,
            "window_min": F.G_WINDOW_LO,
            "window_max": F.G_WINDOW_HI,
            "unit": "S",
            "v_read": 0.2,
            "policy": "a target outside [target_min, target_max] is rejected (OutOfRangeError);"
            " a measured g_start outside the window is clamped to it for the features",
        },
        "latent": {
            "range": list(F.LATENT_RANGE),
            "one_shot_prior": metrics.get("one_shot_prior_latent", 0.0),
            "meaning": "device speed: (r/r_nom-1)/0.1 in simulation; inferred at run time",
        },
        "width_range": {"min": 1e-9, "max": 0.1, "unit": "s"},
        "training": {
            "data": data_summary,
            "config": {k: v for k, v in asdict(cfg).items() if k not in ("sim", "val_sim")},
            "simulation": asdict(cfg.sim),
            "validation_simulation": asdict(cfg.val_sim),
        },
        "metrics": metrics,
    }


# ------------------------------------------------------------------------------ one command


def run(
    out: str | Path,
    cfg: TrainConfig | None = None,
    *,
    export_data: list[str] | None = None,
    evaluate: bool = True,
    log=print,
) -> dict:
    """Generate data, train both polarities, evaluate on held-out devices, export. Returns the
    metadata written into the model."""
    cfg = cfg or TrainConfig()
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    log(f"simulating training data: seeds {cfg.train_seeds}, {cfg.sim.rows}x{cfg.sim.cols} "
        f"devices each, {cfg.sim.rounds} pulses per device")
    train = simulate(cfg.train_seeds, cfg.sim, rng_seed=cfg.seed)
    val = simulate(cfg.val_seeds, cfg.val_sim, rng_seed=cfg.seed + 1)
    measured_summary = None
    if export_data:
        measured = Records.concatenate([load_export(p) for p in export_data])
        log(f"  + {len(measured)} measured records from {len(export_data)} export(s)")
        measured = _with_latent(measured)
        measured_summary = {"records": len(measured), "files": [str(p) for p in export_data],
                            "with_latent": int(np.isfinite(measured.latent).sum())}
        info = train.info
        train = Records.concatenate([train, measured])
        train.info = info | {"measured_records": len(measured)}
    t_data = time.perf_counter() - t0
    log(f"  {len(train)} training records, {len(val)} validation records ({t_data:.1f} s)")
    nets = {}
    metrics: dict = {}
    for is_set in (True, False):
        name = "set" if is_set else "reset"
        log(f"training the {name.upper()} network")
        nets[name], metrics[name] = fit_polarity(is_set, train, val, cfg, log)
        log(f"  {name}: val RMSE {metrics[name]['val_rmse_log10_width']:.4f} decades")
    model = PulsePredictor(nets["set"], nets["reset"])
    t_train = time.perf_counter() - t0 - t_data
    metrics["time_s"] = {"data": round(t_data, 1), "training": round(t_train, 1)}
    summary = {"train": train.summary(), "validation": val.summary()}
    if measured_summary:
        summary["measured"] = measured_summary
    metadata = build_metadata(cfg, summary, metrics)
    path = export_onnx(model, out, metadata)
    if evaluate:
        from predictor.evaluate import quick_evaluation

        log("evaluating on the validation devices")
        evaluation = quick_evaluation(path, seeds=cfg.val_seeds, log=log)
        metrics["validation_programming"] = evaluation
        metrics["one_shot_prior_latent"] = evaluation["one_shot_prior_latent"]
        metadata = build_metadata(cfg, summary, metrics)
        path = export_onnx(model, out, metadata)
    metrics["time_s"]["total"] = round(time.perf_counter() - t0, 1)
    log(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB) in {metrics['time_s']['total']} s")
    return metadata


def _with_latent(rec: Records) -> Records:
    """Measured records get the latent the current default model infers per device."""
    from predictor.runtime import load_default

    predictor = load_default()
    rec.latent = predictor.device_latents(rec)
    return rec

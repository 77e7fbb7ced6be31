"""``memprog train --finetune --from MODEL --data EXPORT``: the full offline fine-tune of the
network on a station's own pulses (torch, the ``train`` extra) — for labs that want more than
the service's calibration (:mod:`predictor.calibration`, a correction on top of the network).

1. The network's weights are read from the parent's ONNX file (an adapted model's network, its
   latents inferred with the adapted model) into the training modules of :mod:`predictor.train`.
2. Records from the export (CSV, JSON lines or the SQLite database: every pulse with a read of
   its cell just before and after, at the model's read voltage), cleaned as the calibration
   cleans them (noisy, stuck, uninformative dropped and counted); each device gets the median
   latent the parent infers from its pulses.
3. A share of the devices (seeded) is held out; both networks continue training on the rest
   (AdamW, a small learning rate, early stopping on the held-out loss), from the parent's
   weights.
4. The fine-tuned network is exported with the parent's metadata, ``created_by: memprog train
   --finetune`` and its ``lineage`` (parent fingerprint, records used and dropped, devices,
   held-out error before and after, one step ahead as :func:`predictor.calibration.held_out_fit`).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from predictor import features as F
from predictor.calibration import (
    CalibrationConfig,
    _device_latents,
    _informative,
    clean,
    held_out_fit,
)
from predictor.dataset import Records
from predictor.log_records import load_export
from predictor.runtime import PulsePredictor
from predictor.train import PolarityNet, export_onnx
from predictor.train import PulsePredictor as TorchPredictor


@dataclass(frozen=True)
class FinetuneConfig:
    epochs: int = 40
    lr: float = 1e-3
    batch: int = 512
    patience: int = 6
    held_out_fraction: float = 0.25
    seed: int = 0


def load_network(parent: PulsePredictor) -> TorchPredictor:
    """The parent's network as torch modules, with its weights."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(parent.network_path))
    weights = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    nets = {}
    for name, is_set in (("set_net", True), ("reset_net", False)):
        layers = sorted({int(k.split(".")[2]) for k in weights
                         if k.startswith(f"{name}.mlp.") and k.endswith(".weight")})
        hidden = tuple(int(weights[f"{name}.mlp.{i}.weight"].shape[0]) for i in layers[:-1])
        net = PolarityNet(is_set, hidden, float(weights[f"{name}.y_mean"]),
                          float(weights[f"{name}.y_std"]))
        state = {k[len(name) + 1:]: torch.tensor(np.array(v)) for k, v in weights.items()
                 if k.startswith(f"{name}.")}
        net.load_state_dict(state)
        nets[name] = net
    return TorchPredictor(nets["set_net"], nets["reset_net"])


def _train(net: PolarityNet, rec: Records, val: Records, cfg: FinetuneConfig, log) -> dict:
    def arrays(r: Records) -> tuple[torch.Tensor, torch.Tensor]:
        keep = (r.voltage < 0) == net.is_set
        q = np.stack([r.g_before[keep], r.g_after[keep], r.voltage[keep], r.latent[keep]], 1)
        y = (np.log10(r.width[keep]) - float(net.y_mean)) / float(net.y_std)
        return (torch.tensor(F.features(q, net.is_set), dtype=torch.float32),
                torch.tensor(y, dtype=torch.float32)[:, None])

    x, t = arrays(rec)
    xv, tv = arrays(val)
    if x.shape[0] == 0:
        return {"records": 0, "epochs_run": 0}
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr)
    gen = torch.Generator().manual_seed(cfg.seed)

    def val_loss() -> float:
        with torch.no_grad():
            return float(torch.mean((net.forward_features(xv) - tv) ** 2)) if xv.shape[0] \
                else 0.0

    best = (val_loss(), copy.deepcopy(net.state_dict()), -1)
    start_loss = best[0]
    epoch = -1
    for epoch in range(cfg.epochs):
        net.train()
        perm = torch.randperm(x.shape[0], generator=gen)
        for s in range(0, x.shape[0], cfg.batch):
            b = perm[s:s + cfg.batch]
            opt.zero_grad()
            loss = torch.mean((net.forward_features(x[b]) - t[b]) ** 2)
            loss.backward()
            opt.step()
        net.eval()
        current = val_loss()
        if current < best[0] - 1e-7:
            best = (current, copy.deepcopy(net.state_dict()), epoch)
        if epoch - best[2] >= cfg.patience:
            break
    net.load_state_dict(best[1])
    net.eval()
    log(f"  {'SET' if net.is_set else 'RESET'}: {x.shape[0]} records, held-out loss "
        f"{start_loss:.4f} → {best[0]:.4f} (best epoch {best[2]})")
    return {"records": int(x.shape[0]), "epochs_run": epoch + 1, "best_epoch": best[2],
            "held_out_loss_before": start_loss, "held_out_loss_after": best[0]}


def finetune(parent_path: str | Path, data: str | Path, out: str | Path,
             cfg: FinetuneConfig = FinetuneConfig(), *, version: str | None = None,
             log=print) -> dict:
    """Fine-tune (see the module docstring); the metadata written into ``out``."""
    started = time.perf_counter()
    parent = PulsePredictor(parent_path)
    records = load_export(data, v_read=parent.v_read)
    cleaned, dropped = clean(records, CalibrationConfig())
    informative = _informative(parent, cleaned, CalibrationConfig())
    dropped["uninformative"] = int(np.count_nonzero(~informative))
    rec = cleaned.take(informative)
    if len(rec) == 0:
        raise ValueError(f"{data}: no informative pulse records (dropped: {dropped})")
    rec.latent = _device_latents(parent, rec)
    devices = np.unique(rec.device)
    rng = np.random.default_rng(cfg.seed)
    held = rng.choice(devices, round(cfg.held_out_fraction * devices.size), replace=False) \
        if devices.size >= 4 else np.zeros(0, np.int64)
    is_held = np.isin(rec.device, held)
    train, test = rec.take(~is_held), rec.take(is_held)
    log(f"fine-tuning {parent.fingerprint} on {len(train)} records of "
        f"{devices.size - held.size} devices ({held.size} devices held out; dropped {dropped})")
    torch.manual_seed(cfg.seed)
    model = load_network(parent)
    metrics = {"set": _train(model.set_net, train, test, cfg, log),
               "reset": _train(model.reset_net, train, test, cfg, log)}
    meta = copy.deepcopy(parent.metadata)
    adapted = meta.pop("adapted", None)
    meta["version"] = version or f"{parent.version}+ft"
    meta["created_by"] = "memprog train --finetune"
    if adapted is not None:
        meta["latent"]["one_shot_prior"] = parent.one_shot_latent
    meta["lineage"] = {
        "parent_fingerprint": parent.fingerprint,
        "records_used": len(train),
        "records_dropped": dropped,
        "records_in_data": len(records),
        "cells": {"devices_in_fit": int(devices.size - held.size)},
        "time_span": records.info.get("time_span"),
        "held_out": {"devices": int(held.size), "records": len(test),
                     "parent": held_out_fit(parent, test)},
        "data": str(data),
        "finetune": metrics,
    }
    path = export_onnx(model, out, meta)
    tuned = PulsePredictor(path)
    meta["lineage"]["held_out"]["adapted"] = held_out_fit(tuned, test)
    path = export_onnx(model, out, meta)  # again, with the held-out fit after
    before = meta["lineage"]["held_out"]["parent"]["mean_abs_error_decades"]
    after = meta["lineage"]["held_out"]["adapted"]["mean_abs_error_decades"]
    log(f"wrote {path}: held-out error (mean, decades) {before} → {after} "
        f"({time.perf_counter() - started:.1f} s)")
    return meta

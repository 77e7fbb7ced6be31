"""Adapted (calibrated) pulse-predictor models: a correction on top of a shipped network.

A station's devices differ from the population the network was trained on (another filament
radius, activation energy, temperature …): every width the network predicts is then off by a
factor that depends on the amplitude. An *adapted model* keeps the network as it is and adds,
per polarity p, a correction of the predicted log10 width that is affine in the amplitude::

    log10 t_adapted(G_s, G_t, V, z) = log10 t_net(G_s, G_t, V, z) + Δ_p(|V|)
    Δ_p(|V|) = offset_p + slope_p (|V| − v_ref_p)                          [decades]

fitted from the station's own pulses (:mod:`predictor.calibration`), and a new prior latent for
devices not met yet. ``offset`` moves every width by a factor (a hotter or slower population);
``slope`` changes how strongly the width depends on the amplitude (another activation energy).

The file is JSON (``*.json`` beside the network it corrects): the network file by name and
SHA-256 (a network replaced since is refused), the correction, and the *lineage* — the model it
was calibrated from (fingerprint), the records used and dropped, the cells, the time span of the
records, and the held-out fit of the parent and of this model. A file in another format or
schema, or without its lineage, is refused with the reason (:func:`read_adapted`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

FORMAT = "memprog-adapted-model"
SCHEMA = 1
LINEAGE_FIELDS = ("parent_fingerprint", "records_used", "records_dropped", "cells",
                  "time_span", "held_out")
"""What an adapted model must say about where it comes from."""


@dataclass(frozen=True)
class PolarityCorrection:
    """Δ(|V|) = offset + slope (|V| − v_ref), in decades of the width (V in volts)."""

    offset: float = 0.0
    """decades (log10 of a factor on the width)."""
    slope: float = 0.0
    """decades per volt of |V|."""
    v_ref: float = 0.0
    """|V| at which Δ = offset, V."""

    def __call__(self, magnitude: np.ndarray) -> np.ndarray:
        return self.offset + self.slope * (np.asarray(magnitude, dtype=float) - self.v_ref)


@dataclass(frozen=True)
class Correction:
    """The correction of both polarities (SET: V < 0, RESET: V > 0)."""

    set: PolarityCorrection = field(default_factory=PolarityCorrection)
    reset: PolarityCorrection = field(default_factory=PolarityCorrection)

    def __call__(self, voltage: np.ndarray) -> np.ndarray:
        """Δ in decades for each amplitude ``voltage`` (V, signed)."""
        v = np.asarray(voltage, dtype=float)
        return np.where(v < 0, self.set(np.abs(v)), self.reset(np.abs(v)))

    @property
    def is_zero(self) -> bool:
        return self == Correction()


NO_CORRECTION = Correction()


@dataclass(frozen=True)
class AdaptedModel:
    """An adapted model as read from its file (see the module docstring)."""

    path: Path
    name: str
    version: str
    network: Path  # the ONNX network it corrects
    network_sha256: str
    correction: Correction
    one_shot_prior: float  # the latent assumed for a device not met yet
    lineage: dict
    created: float  # Unix time, s


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _number(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(float(value)):
        raise ValueError(f"{where}: must be a finite number, got {value!r}")
    return float(value)


def read_adapted(path: str | Path) -> AdaptedModel:
    """Read and check an adapted model file; ``ValueError`` naming what is wrong otherwise."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable adapted model ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"{path}: not a memprog adapted model (format "
                         f"{doc.get('format') if isinstance(doc, dict) else None!r}, expected "
                         f"{FORMAT!r})")
    if doc.get("schema") != SCHEMA:
        raise ValueError(f"{path}: adapted-model schema {doc.get('schema')!r}; this memprog "
                         f"reads schema {SCHEMA}")
    lineage = doc.get("lineage")
    if not isinstance(lineage, dict):
        raise ValueError(f"{path}: no lineage (where the model comes from): refused")
    missing = [k for k in LINEAGE_FIELDS if k not in lineage]
    if missing:
        raise ValueError(f"{path}: lineage without {', '.join(missing)}: refused")
    try:
        net = doc["network"]
        network = (path.parent / str(net["file"])).resolve()
        digest = str(net["sha256"])
        corr = doc["correction"]
        correction = Correction(**{
            p: PolarityCorrection(**{k: _number(corr[p][k], f"correction.{p}.{k}")
                                     for k in ("offset", "slope", "v_ref")})
            for p in ("set", "reset")
        })
        prior = _number(doc["latent"]["one_shot_prior"], "latent.one_shot_prior")
        name, version = str(doc["name"]), str(doc["version"])
        created = _number(doc.get("created", 0.0), "created")
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path}: incomplete adapted model (missing {exc})") from exc
    if not network.is_file():
        raise ValueError(f"{path}: its network {network} does not exist")
    if sha256_of(network) != digest:
        raise ValueError(f"{path}: its network {network} has changed since the calibration "
                         "(SHA-256 differs): refused")
    return AdaptedModel(path, name, version, network, digest, correction, prior, lineage,
                        created)


def write_adapted(path: str | Path, *, name: str, version: str, network: Path,
                  correction: Correction, one_shot_prior: float, lineage: dict,
                  created: float) -> Path:
    """Write an adapted model file atomically (a crash never leaves half a file); the network
    is named relative to the file's directory."""
    path = Path(path)
    missing = [k for k in LINEAGE_FIELDS if k not in lineage]
    if missing:
        raise ValueError(f"lineage without {', '.join(missing)}")
    network = Path(network).resolve()
    doc = {
        "format": FORMAT,
        "schema": SCHEMA,
        "name": name,
        "version": version,
        "created": created,
        "network": {"file": os.path.relpath(network, path.parent.resolve()),
                    "sha256": sha256_of(network)},
        "correction": {p: asdict(getattr(correction, p)) for p in ("set", "reset")},
        "latent": {"one_shot_prior": float(one_shot_prior)},
        "lineage": lineage,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as fh:
        json.dump(doc, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path

"""A pulse-predictor model file, loaded: the ONNX network and its ``memprog`` metadata, or an
adapted model (:mod:`predictor.adapted`: a correction on top of a network). What
:class:`predictor.runtime.PulsePredictor` runs; nothing here predicts."""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from predictor.adapted import NO_CORRECTION, AdaptedModel, Correction, read_adapted

DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "default.onnx"
METADATA_KEY = "memprog"
METADATA_FORMAT = 1
"""The network metadata's format this memprog reads."""


class OutOfRangeError(ValueError):
    """A query outside the range the model was trained on (it would extrapolate)."""


@dataclass(frozen=True)
class LoadedModel:
    session: ort.InferenceSession
    metadata: dict
    path: Path
    set_voltages: np.ndarray  # negative, V
    reset_voltages: np.ndarray  # positive, V
    target_range: tuple[float, float]
    window: tuple[float, float]
    set_range: tuple[float, float]  # trained |V| range of SET
    reset_range: tuple[float, float]
    latent_range: tuple[float, float]
    min_relative_update: float
    digest: str  # SHA-256 of the model file, hex
    correction: Correction = NO_CORRECTION  # an adapted model's, decades of the width


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def read_metadata(path: str | Path) -> dict:
    """The ``memprog`` metadata of a model file (without building a full predictor); of an
    adapted model, its network's metadata with the adaptation applied."""
    path = Path(path)
    if path.suffix == ".json":
        adapted = read_adapted(path)
        return _adapted_metadata(_metadata(_session(adapted.network, 1), adapted.network),
                                 adapted)
    return _metadata(_session(path, 1), path)


def _metadata(session: ort.InferenceSession, path: Path) -> dict:
    props = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in props:
        raise ValueError(f"{path}: not a memprog pulse-predictor model (no '{METADATA_KEY}' "
                         "metadata)")
    try:
        meta = json.loads(props[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: its '{METADATA_KEY}' metadata is not JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != METADATA_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise ValueError(f"{path}: model metadata format {found!r}; this memprog reads format "
                         f"{METADATA_FORMAT}")
    return meta


def _adapted_metadata(network_meta: dict, adapted: AdaptedModel) -> dict:
    meta = copy.deepcopy(network_meta)
    meta["name"], meta["version"] = adapted.name, adapted.version
    meta["latent"]["one_shot_prior"] = adapted.one_shot_prior
    meta["adapted"] = {
        "network": str(adapted.network),
        "network_sha256": adapted.network_sha256,
        "correction_decades": {
            p: vars(getattr(adapted.correction, p)) for p in ("set", "reset")
        },
        "lineage": adapted.lineage,
        "created": adapted.created,
    }
    return meta


def load_model(path: Path, threads: int) -> LoadedModel:
    """Load a network (``.onnx``) or an adapted model (``.json``); ``ValueError`` naming the
    reason for a file that is not one, is corrupt, of another format, or without lineage."""
    path = Path(path)
    adapted = read_adapted(path) if path.suffix == ".json" else None
    network = adapted.network if adapted is not None else path
    try:
        session = _session(network, threads)
    except Exception as exc:  # onnxruntime raises its own types for a corrupt file
        raise ValueError(f"{network}: not a loadable ONNX model ({exc})") from exc
    meta = _metadata(session, network)
    if adapted is not None:
        meta = _adapted_metadata(meta, adapted)
    names = {i.name for i in session.get_inputs()}
    if names != {"set_query", "reset_query"}:
        raise ValueError(f"{path}: unexpected inputs {sorted(names)}")
    volts = meta["voltages"]
    cr = meta["conductance_range"]
    return LoadedModel(
        session=session,
        metadata=meta,
        path=path,
        set_voltages=np.array(sorted(volts["set"], key=abs), dtype=float),
        reset_voltages=np.array(sorted(volts["reset"]), dtype=float),
        target_range=(float(cr["target_min"]), float(cr["target_max"])),
        window=(float(cr["window_min"]), float(cr["window_max"])),
        set_range=tuple(sorted(abs(v) for v in volts["set_trained_range"])),
        reset_range=tuple(sorted(volts["reset_trained_range"])),
        latent_range=tuple(meta["latent"]["range"]),
        min_relative_update=float(meta["features"]["constants"]["min_relative_update"]),
        digest=hashlib.sha256(path.read_bytes()).hexdigest(),
        correction=adapted.correction if adapted is not None else NO_CORRECTION,
    )

"""The station's pulse-predictor models: the shipped network, the configured one, and the
adapted models its calibrations wrote — which one is active, kept across restarts.

Invariants:

- models live in the models directory (``predictor.models_dir``, default ``models/`` beside the
  database); the shipped network stays where the package put it and is always listed;
- the active model is named in ``active.json`` there, written atomically *after* the model
  loaded: a model that fails to load is never made active, and a crash leaves either the old
  or the new pointer, never half of one;
- at start the service loads the active model; if that fails (a file removed, corrupt, its
  network changed) it loads the configured one instead and ``/health`` says why;
- activating a model swaps it in without a restart (runs in flight finish on theirs); device
  memory is keyed by model fingerprint, so a new model starts every device afresh.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from predictor import strategy
from predictor.adapted import read_adapted
from predictor.runtime import DEFAULT_MODEL, read_metadata

log = logging.getLogger("memprog.models")

SHIPPED = "shipped"
"""The id of the network shipped with memprog."""
ACTIVE_FILE = "active.json"


class ModelNotFound(LookupError):
    """No model with that id in the registry."""


class ModelRegistry:
    """The models of one station (see the module docstring)."""

    def __init__(self, models_dir: Path, configured: Path | None = None):
        self.dir = Path(models_dir)
        self.configured = Path(configured) if configured is not None else None
        self.start_error: str | None = None  # why the active model could not be loaded
        self.on_activate: Callable[[str, str | None, str], None] | None = None
        """Called after an activation with (model file, fingerprint, reason): the service
        records it in the log (``model_activations``, with the station)."""

    # --------------------------------------------------------------------------- the files
    def path_of(self, model_id: str) -> Path:
        """The file of the model ``model_id`` (``shipped``, ``configured``, or a file name in
        the models directory); :class:`ModelNotFound` otherwise."""
        if model_id == SHIPPED:
            return DEFAULT_MODEL
        if model_id == "configured" and self.configured is not None:
            return self.configured
        if "/" in model_id or model_id.startswith(".") or model_id == ACTIVE_FILE:
            raise ModelNotFound(f"no model {model_id!r}")
        path = self.dir / model_id
        if path.suffix not in (".json", ".onnx") or not path.is_file():
            raise ModelNotFound(f"no model {model_id!r} in {self.dir}")
        return path

    def id_of(self, path: Path) -> str:
        path = Path(path).resolve()
        if path == DEFAULT_MODEL.resolve():
            return SHIPPED
        if self.configured is not None and path == self.configured.resolve():
            return "configured"
        return path.name

    def list(self) -> list[dict]:
        """Every model: id, file, name, version, fingerprint, lineage (adapted ones), whether
        it is active, and — for a file that would be refused — why (``error``)."""
        paths = [DEFAULT_MODEL]
        if self.configured is not None and self.configured.resolve() != DEFAULT_MODEL.resolve():
            paths.append(self.configured)
        if self.dir.is_dir():
            paths += sorted(p for p in self.dir.iterdir()
                            if p.suffix in (".json", ".onnx") and p.name != ACTIVE_FILE)
        active = strategy.status()
        active_fp = active.get("fingerprint") if active["status"] == "loaded" else None
        return [self._describe(p, active_fp) for p in paths]

    def _describe(self, path: Path, active_fp: str | None) -> dict:
        out: dict = {"id": self.id_of(path), "path": str(path)}
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if path.suffix == ".json":
                adapted = read_adapted(path)
                out |= {"name": adapted.name, "version": adapted.version, "adapted": True,
                        "lineage": adapted.lineage, "created": adapted.created}
            else:
                meta = read_metadata(path)
                out |= {"name": meta["name"], "version": meta["version"], "adapted": False,
                        "lineage": meta.get("lineage"), "created": path.stat().st_mtime}
            out["fingerprint"] = f"{out['name']}/{out['version']}/{digest[:12]}"
            out["active"] = out["fingerprint"] == active_fp
            out["error"] = None
        except (OSError, ValueError, KeyError) as exc:
            out |= {"active": False, "error": f"refused: {exc}"}
        return out

    # ------------------------------------------------------------------------- activation
    def active_path(self) -> Path | None:
        """The model ``active.json`` names, if any."""
        pointer = self.dir / ACTIVE_FILE
        try:
            doc = json.loads(pointer.read_text())
            return Path(doc["path"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.start_error = f"{pointer} is unreadable ({exc}); using the configured model"
            return None

    def startup(self) -> dict:
        """Load the active model (or the configured one); the predictor's status."""
        active = self.active_path()
        if active is not None:
            status = strategy.startup(active)
            if status["status"] == "loaded":
                return status
            self.start_error = (f"the active model {active} could not be loaded "
                                f"({status.get('error')}); using the configured model")
        return strategy.startup(self.configured)

    def activate(self, model_id: str, reason: str = "activated through the API") -> dict:
        """Load the model ``model_id`` and make it the active one (kept across restarts). A
        model that does not load leaves the active one in place (the error propagates). The
        activation is recorded with the station (``on_activate``, set by the service)."""
        path = self.path_of(model_id)
        status = strategy.reload(path)  # raises before anything changes if it cannot load
        self._point_to(path)
        self.start_error = None
        if self.on_activate is not None:
            try:
                self.on_activate(str(path), status.get("fingerprint"), reason)
            except Exception as exc:  # the model is active; only its record is missing
                log.warning("model activation of %s not recorded: %s", path, exc)
        return status

    def _point_to(self, path: Path) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        pointer = self.dir / ACTIVE_FILE
        tmp = pointer.with_name(pointer.name + ".tmp")
        with open(tmp, "w") as fh:
            json.dump({"path": str(Path(path).resolve()), "since": time.time()}, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, pointer)

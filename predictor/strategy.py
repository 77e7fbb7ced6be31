"""The ``predictor`` strategy of ``/program`` (the default), and the service's loaded model.

The service registers the strategy and makes it the default where it builds its app
(:func:`register_predictor_strategy`, called in ``service/app.py``; never by an import side
effect). The model is loaded when the service starts (:func:`startup`); if it cannot be
loaded the service still starts, ``/health`` says why, ``/program`` falls back to ``ispp`` as
its default, and an explicit ``strategy: "predictor"`` is answered with an error.
:func:`reload` swaps in a new model file (e.g. one fine-tuned on the lab's own ``/export``)
without restarting; runs in flight finish on the model they started with.

Never imports torch.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from drivers.base import Limits
from predictor.control import PolicyConfig, PredictorPlanner
from predictor.fit_monitor import FitMonitor
from predictor.runtime import DEFAULT_MODEL, PulsePredictor
from programming.errors import InvalidRequest
from programming.strategies import Planner, Strategy, register_strategy, set_default_strategy

FALLBACK_STRATEGY = "ispp"


class PredictorUnavailable(RuntimeError):
    """The pulse-predictor model is not loaded (see ``/health``)."""


_lock = threading.Lock()
_state: dict = {"predictor": None, "path": None, "error": None}

MONITOR = FitMonitor()
"""How well each model fits the devices it programs (fed by every pulse of the strategy)."""


def startup(path: str | Path | None = None) -> dict:
    """Load the model at service start. Never raises: returns the ``/health`` description and
    sets the default strategy (``predictor`` when loaded, ``ispp`` otherwise)."""
    model = Path(path) if path is not None else DEFAULT_MODEL
    with _lock:
        _state["path"] = model
        try:
            _state["predictor"] = PulsePredictor(model)
            _state["error"] = None
        except Exception as exc:  # any load failure: the service starts without the model
            _state["predictor"] = None
            _state["error"] = f"{type(exc).__name__}: {exc}"
    set_default_strategy("predictor" if _state["predictor"] is not None else FALLBACK_STRATEGY)
    return status()


def reload(path: str | Path | None = None) -> dict:
    """Load the model file again (or ``path``) and swap it in; raises if it cannot be loaded
    (the model in use then stays)."""
    with _lock:
        model = Path(path) if path is not None else (_state["path"] or DEFAULT_MODEL)
        # A new object: runs in flight keep the model they started with to their end.
        _state["predictor"] = PulsePredictor(model)
        _state["path"] = model
        _state["error"] = None
    set_default_strategy("predictor")
    return status()


def status() -> dict:
    """What ``/health`` reports: name, version and file of the model, or why there is none."""
    p = _state["predictor"]
    if p is None:
        return {
            "status": "unavailable",
            "path": str(_state["path"] or DEFAULT_MODEL),
            "error": _state["error"] or "not loaded",
            "fallback_strategy": FALLBACK_STRATEGY,
        }
    meta = p.metadata
    adapted = meta.get("adapted")
    return {
        "status": "loaded",
        "name": p.name,
        "version": p.version,
        "path": str(p.path),
        "fingerprint": p.fingerprint,
        "voltages": meta["voltages"]["set"] + meta["voltages"]["reset"],
        "target_range": [meta["conductance_range"]["target_min"],
                         meta["conductance_range"]["target_max"]],
        "adapted": adapted is not None,
        "parent": adapted["lineage"]["parent_fingerprint"] if adapted else None,
        "fit": MONITOR.report(p.fingerprint),
    }


def current() -> PulsePredictor:
    p = _state["predictor"]
    if p is None:
        p = _lazy_default()
    return p


def _lazy_default() -> PulsePredictor:
    """Outside the service (tests, scripts) the strategy loads the shipped model on first use."""
    with _lock:
        if _state["predictor"] is None and _state["error"] is None:
            try:
                _state["predictor"] = PulsePredictor(_state["path"] or DEFAULT_MODEL)
            except Exception as exc:
                _state["error"] = f"{type(exc).__name__}: {exc}"
        if _state["predictor"] is None:
            raise PredictorUnavailable(f"the pulse predictor is not loaded: {_state['error']}")
        return _state["predictor"]


@dataclass(frozen=True)
class PredictorStrategy(Strategy):
    """Neural pulse predictor: predict, pulse, read, re-predict with the device's own latent.

    Amplitudes come from the model's metadata (the largest |V| within the limits whose
    predicted width is at least ``width_floor``); the first pulse assumes the fastest devices
    (an undershoot that measures how slow a device is), every later pulse uses the latent
    inferred from the device's previous pulse. One shot (``verify: false``) uses the model's
    one-shot prior instead. Targets outside the model's trained range are rejected.
    """

    aim_fraction: float = 1.0
    width_floor: float = 2e-9
    first_latent: float = -1.0

    def validate(self, target: np.ndarray, limits: Limits, v_read: float) -> None:
        """422 before anything is queued: a target outside the model's trained range, a read
        voltage other than the model's (its conductances are at that voltage), or limits that
        leave the model no amplitude of a polarity."""
        p = current()
        if abs(v_read - p.v_read) > 1e-9:
            raise InvalidRequest(
                ["v_read"],
                f"the predictor works on conductances read at {p.v_read} V; got {v_read} V "
                "(use another strategy to program at another read voltage)",
                "value_error",
            )
        lo, hi = p.target_range
        bad = (target < lo) | (target > hi)
        if np.any(bad):
            i = int(np.argmax(bad))
            raise InvalidRequest(
                ["targets", i, "conductance"],
                f"predictor: {target[i]:.4g} S is outside the predictor's trained range "
                f"[{lo:.4g}, {hi:.4g}] S",
                "limit",
                limit=hi if target[i] > hi else lo,
            )
        set_v, reset_v = p.allowed_voltages(limits.v_set_max, limits.v_reset_max)
        for allowed, field, name, limit in ((set_v, "v_set_max", "SET", limits.v_set_max),
                                            (reset_v, "v_reset_max", "RESET",
                                             limits.v_reset_max)):
            if allowed.size == 0:
                raise InvalidRequest(
                    ["strategy"],
                    f"the service's limit {field} = {limit} V allows none of the predictor's "
                    f"{name} amplitudes {p.voltages(name.lower()).tolist()} V",
                    "limit",
                    limit=limit,
                )

    def begin(self, target: np.ndarray, limits: Limits) -> Planner:
        config = PolicyConfig(first_latent=self.first_latent, aim_fraction=self.aim_fraction,
                              width_floor=self.width_floor)
        return _ServicePlanner(
            PredictorPlanner(
                current(),
                target,
                v_set_max=limits.v_set_max,
                v_reset_max=limits.v_reset_max,
                width_min=limits.width_min,
                width_max=limits.width_max,
                config=config,
                monitor=MONITOR,
            )
        )


class _ServicePlanner(Planner):
    """The service's planner contract around :class:`PredictorPlanner`; its device memory is
    each device's speed latent, under the model's fingerprint."""

    def __init__(self, inner: PredictorPlanner):
        self.inner = inner
        self.memory_key = f"predictor/{inner.predictor.fingerprint}"

    def recall(self, values: np.ndarray) -> None:
        self.inner.recall(values)

    def remember(self, g: np.ndarray) -> np.ndarray:
        self.inner.observe(np.arange(g.size), g)  # what each cell's last pulse did
        return self.inner.latent.copy()

    def one_shot(self) -> None:
        """A run without verify: the single pulse uses the model's one-shot prior latent."""
        self.inner.cfg = PolicyConfig(
            first_latent=None,
            first_fraction=self.inner.cfg.first_fraction,
            aim_fraction=self.inner.cfg.aim_fraction,
            width_floor=self.inner.cfg.width_floor,
        )

    def choose(self, idx: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.inner.choose(idx, g)


def register_predictor_strategy() -> None:
    """Make ``predictor`` selectable in ``/program`` and jobs, and the default strategy."""
    register_strategy("predictor")(PredictorStrategy)
    set_default_strategy("predictor")

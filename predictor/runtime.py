"""Run time of the pulse predictor: onnxruntime only (never torch), batched, thread-safe.

:class:`PulsePredictor` loads an exported model (``predictor/models/default.onnx`` by default),
reads its metadata, and answers three batched questions:

- :meth:`~PulsePredictor.predict_width`: the pulse width (s) that moves a device from G_start
  to G_target at a given amplitude, for a device of speed latent z;
- :meth:`~PulsePredictor.choose_pulse`: amplitude *and* width — among the model's voltages (from
  its metadata) that the safety limits allow, the largest |V| whose predicted width is at least
  ``width_floor`` (fast pulses, lowest sensitivity to the device's own speed), width clamped to
  the limits;
- :meth:`~PulsePredictor.infer_latent`: the latent z of a device from a pulse it received —
  the z for which the network's width for the observed change equals the width applied
  (bisection through the network; z is monotone: a slower device needs a longer pulse).

Input checks (explicit, never a silent extrapolation):

- a *target* conductance outside the model's trained target range (metadata
  ``conductance_range.target_min/target_max``) raises :class:`OutOfRangeError` (``check=True``,
  the default). Internal intermediate aims of the programming loop use ``check="window"``: they
  must lie inside the device window the network was trained on, also an error otherwise;
- a measured *start* conductance outside the window is clamped to the window (documented
  fallback: a noisy read of a device at its bound);
- a voltage outside the trained range of its polarity, or a SET/RESET that cannot move the
  device towards the target (wrong direction) raises :class:`OutOfRangeError` /
  :class:`ValueError`; non-finite inputs raise :class:`ValueError`;
- the latent is clipped to its trained range [-1, 1].

Thread safety: the onnxruntime session is safe for concurrent ``run`` calls; :meth:`reload`
builds the new session completely, then swaps one reference, so a call in flight finishes on
the model it started with and the service never restarts to change the model.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "default.onnx"
METADATA_KEY = "memprog"


class OutOfRangeError(ValueError):
    """A query outside the range the model was trained on (it would extrapolate)."""


@dataclass(frozen=True)
class _Loaded:
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


def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def read_metadata(path: str | Path) -> dict:
    """The ``memprog`` metadata of a model file (without building a full predictor)."""
    session = _session(Path(path), 1)
    return _metadata(session, Path(path))


def _metadata(session: ort.InferenceSession, path: Path) -> dict:
    props = session.get_modelmeta().custom_metadata_map
    if METADATA_KEY not in props:
        raise ValueError(f"{path}: not a memprog pulse-predictor model (no '{METADATA_KEY}' "
                         "metadata)")
    return json.loads(props[METADATA_KEY])


def _load(path: Path, threads: int) -> _Loaded:
    session = _session(path, threads)
    meta = _metadata(session, path)
    names = {i.name for i in session.get_inputs()}
    if names != {"set_query", "reset_query"}:
        raise ValueError(f"{path}: unexpected inputs {sorted(names)}")
    volts = meta["voltages"]
    cr = meta["conductance_range"]
    return _Loaded(
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
    )


class PulsePredictor:
    """A loaded pulse-predictor model (see the module docstring)."""

    def __init__(self, path: str | Path = DEFAULT_MODEL, *, threads: int = 1):
        self._threads = int(threads)
        self._lock = threading.Lock()
        self._m = _load(Path(path), self._threads)

    # ------------------------------------------------------------------------------ identity
    @property
    def metadata(self) -> dict:
        return self._m.metadata

    @property
    def name(self) -> str:
        return str(self._m.metadata["name"])

    @property
    def version(self) -> str:
        return str(self._m.metadata["version"])

    @property
    def path(self) -> Path:
        return self._m.path

    @property
    def fingerprint(self) -> str:
        """``name/version/sha256[:12]`` of the model file: what a device latent learned with
        this model is stored under (another model's latents mean something else)."""
        return f"{self.name}/{self.version}/{self._m.digest[:12]}"

    @property
    def target_range(self) -> tuple[float, float]:
        return self._m.target_range

    @property
    def window(self) -> tuple[float, float]:
        return self._m.window

    @property
    def v_read(self) -> float:
        """The read voltage of the conductances the model was trained on, V."""
        return float(self._m.metadata["conductance_range"].get("v_read", 0.2))

    def allowed_voltages(self, v_set_max: float, v_reset_max: float) -> tuple[np.ndarray,
                                                                               np.ndarray]:
        """The model's SET and RESET amplitudes (V) that the limits allow (|V| ≤ the maximum)."""
        m = self._m
        return (m.set_voltages[np.abs(m.set_voltages) <= v_set_max + 1e-12],
                m.reset_voltages[m.reset_voltages <= v_reset_max + 1e-12])

    @property
    def latent_range(self) -> tuple[float, float]:
        """The device speed latents z the model was trained on."""
        return self._m.latent_range

    @property
    def one_shot_latent(self) -> float:
        """The latent assumed for a device about which nothing is known yet."""
        return float(self._m.metadata["latent"].get("one_shot_prior", 0.0))

    def voltages(self, polarity: str) -> np.ndarray:
        """The model's amplitudes for ``"set"`` (negative) or ``"reset"`` (positive), V."""
        return (self._m.set_voltages if polarity == "set" else self._m.reset_voltages).copy()

    def describe(self) -> dict:
        m = self._m
        return {
            "name": self.name,
            "version": self.version,
            "path": str(m.path),
            "voltages": {"set": m.set_voltages.tolist(), "reset": m.reset_voltages.tolist()},
            "target_range_S": list(m.target_range),
        }

    def reload(self, path: str | Path | None = None) -> dict:
        """Load ``path`` (default: the current file again) and swap it in atomically.

        A model that fails to load leaves the current one in place (the error propagates).
        """
        with self._lock:
            new = _load(Path(path) if path is not None else self._m.path, self._threads)
            self._m = new
        return self.describe()

    # ----------------------------------------------------------------------------- inference
    def predict_log10_width(
        self,
        g_start,
        g_target,
        voltage,
        latent=0.0,
        *,
        check: bool | str = True,
    ) -> np.ndarray:
        """log10 of the pulse width (s) for each query (arrays broadcast; SI units).

        ``check``: True — targets must lie in the trained target range; ``"window"`` — within
        the device window; False — no range check on targets (the caller guarantees it).
        """
        return self._predict(self._m, g_start, g_target, voltage, latent, check)

    def _predict(self, m: _Loaded, g_start, g_target, voltage, latent, check) -> np.ndarray:
        """:meth:`predict_log10_width` on the model snapshot ``m`` (one snapshot per public
        call: a reload in between never mixes two models)."""
        g_s, g_t, v, z = (np.asarray(a, dtype=float) for a in
                          np.broadcast_arrays(g_start, g_target, voltage, latent))
        shape = g_s.shape
        g_s, g_t, v, z = g_s.ravel(), g_t.ravel(), v.ravel(), z.ravel()
        self._check(m, g_s, g_t, v, z, check)
        g_s = np.clip(g_s, m.window[0], m.window[1])
        z = np.clip(z, *m.latent_range)
        return self._run(m, g_s, g_t, v, z).reshape(shape)

    def predict_width(self, g_start, g_target, voltage, latent=0.0, *, check=True) -> np.ndarray:
        """Pulse width (s); see :meth:`predict_log10_width`."""
        return 10.0 ** self.predict_log10_width(g_start, g_target, voltage, latent, check=check)

    @staticmethod
    def _check(m: _Loaded, g_s, g_t, v, z, check) -> None:
        for name, a in (("g_start", g_s), ("g_target", g_t), ("voltage", v), ("latent", z)):
            if not np.all(np.isfinite(a)):
                raise ValueError(f"{name}: must be finite")
        if np.any(g_s <= 0):
            raise ValueError("g_start: must be positive (S)")
        if check:
            lo, hi = m.target_range if check is True else m.window
            bad = (g_t < lo) | (g_t > hi)
            if np.any(bad):
                raise OutOfRangeError(
                    f"g_target: {g_t[bad][0]:.4g} S is outside the model's trained range "
                    f"[{lo:.4g}, {hi:.4g}] S"
                )
        is_set = v < 0
        mag = np.abs(v)
        if np.any(v == 0):
            raise ValueError("voltage: 0 V moves nothing")
        for sel, (lo, hi), name in ((is_set, m.set_range, "SET"), (~is_set, m.reset_range,
                                                                     "RESET")):
            bad = sel & ((mag < lo - 1e-9) | (mag > hi + 1e-9))
            if np.any(bad):
                raise OutOfRangeError(
                    f"voltage: {name} amplitude {mag[bad][0]:.3g} V is outside the trained "
                    f"range [{lo}, {hi}] V"
                )
        wrong = (is_set & (g_t < g_s)) | (~is_set & (g_t > g_s))
        if np.any(wrong):
            raise ValueError("voltage: SET (negative) raises G and RESET (positive) lowers it; "
                             "a query asks for the opposite")

    @staticmethod
    def _run(m: _Loaded, g_s, g_t, v, z) -> np.ndarray:
        q = np.stack([g_s, g_t, v, z], axis=1).astype(np.float32)
        is_set = v < 0
        out = np.empty(g_s.size, dtype=float)
        set_out, reset_out = m.session.run(
            None, {"set_query": q[is_set], "reset_query": q[~is_set]}
        )
        out[is_set] = set_out[:, 0]
        out[~is_set] = reset_out[:, 0]
        return out

    # ------------------------------------------------------------------------- pulse choice
    def choose_pulse(
        self,
        g_now,
        g_target,
        latent=0.0,
        *,
        v_set_max: float = np.inf,
        v_reset_max: float = np.inf,
        width_min: float = 1e-9,
        width_max: float = 0.1,
        width_floor: float = 3e-9,
        check: bool | str = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(voltage V, width s) per cell that moves ``g_now`` to ``g_target``.

        Polarity from the sign of the update. Among the model's voltages of that polarity with
        |V| within the limits, the largest |V| whose predicted width is ≥ ``width_floor`` (else
        the smallest allowed |V|); the width is then clamped to [width_min, width_max] and to
        the model's width range. Raises :class:`OutOfRangeError` if the limits leave no
        amplitude of a needed polarity.
        """
        m = self._m
        g_now, g_target, latent = (np.asarray(a, dtype=float).ravel() for a in
                                   np.broadcast_arrays(g_now, g_target, latent))
        n = g_now.size
        g_start = np.clip(g_now, m.window[0], m.window[1])
        is_set = g_target >= g_start
        # A request to stay put still gets a (minimal) pulse in the SET direction.
        tiny = np.abs(g_target - g_start) < m.min_relative_update * g_start
        g_target = np.where(
            tiny, g_start * np.where(is_set, 1 + m.min_relative_update,
                                     1 - m.min_relative_update), g_target
        )
        set_v = m.set_voltages[np.abs(m.set_voltages) <= v_set_max + 1e-12]
        reset_v = m.reset_voltages[m.reset_voltages <= v_reset_max + 1e-12]
        if np.any(is_set) and set_v.size == 0:
            raise OutOfRangeError(f"limits: v_set_max {v_set_max} V allows none of the model's "
                                  f"SET amplitudes {m.set_voltages.tolist()}")
        if np.any(~is_set) and reset_v.size == 0:
            raise OutOfRangeError(f"limits: v_reset_max {v_reset_max} V allows none of the "
                                  f"model's RESET amplitudes {m.reset_voltages.tolist()}")
        voltage = np.empty(n)
        width = np.empty(n)
        floor = np.log10(max(width_floor, width_min))
        for sel, cands in ((is_set, set_v), (~is_set, reset_v)):
            idx = np.flatnonzero(sel)
            if idx.size == 0:
                continue
            k = cands.size  # candidates ordered by increasing |V|
            log_w = self._predict(
                m, np.repeat(g_start[idx], k), np.repeat(g_target[idx], k),
                np.tile(cands, idx.size), np.repeat(latent[idx], k), check,
            ).reshape(idx.size, k)
            ok = log_w >= floor
            # Largest |V| with an acceptable width; if none, the gentlest amplitude.
            pick = np.where(ok.any(axis=1), k - 1 - np.argmax(ok[:, ::-1], axis=1), 0)
            voltage[idx] = cands[pick]
            width[idx] = 10.0 ** log_w[np.arange(idx.size), pick]
        lo = max(width_min, float(m.metadata["width_range"]["min"]))
        hi = min(width_max, float(m.metadata["width_range"]["max"]))
        return voltage, np.clip(width, lo, hi)

    # ------------------------------------------------------------------------ device latent
    def infer_latent(
        self,
        g_before,
        g_after,
        voltage,
        width,
        *,
        iterations: int = 18,
        min_relative_change: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(z, kind) of devices from one pulse each: ``kind`` 0 = estimate, 1 = lower bound
        (the device moved less than ``min_relative_change``: it is at least this slow), 2 =
        upper bound (it reached the end of the window: at least this fast).
        """
        m = self._m
        g_b, g_a, v, w = (np.asarray(a, dtype=float).ravel() for a in
                          np.broadcast_arrays(g_before, g_after, voltage, width))
        rel_min = max(m.min_relative_update, min_relative_change or 0.0)
        lo_w, hi_w = m.window
        g_b = np.clip(g_b, lo_w, hi_w)
        sign = np.where(v < 0, 1.0, -1.0)
        change = (g_a - g_b) * sign
        small = change < rel_min * g_b
        edge_gap = 2e-3  # relative distance to the window end that counts as saturated
        saturated = np.where(v < 0, g_a >= hi_w * (1 - edge_gap), g_a <= lo_w * (1 + edge_gap))
        g_obs = np.where(small, g_b * (1 + sign * rel_min), g_a)
        # Keep the observation off the end the pulse drives towards (a saturated device says
        # only "at least this fast"); the other end is where it started, which is fine.
        g_obs = np.where(v < 0, np.clip(g_obs, lo_w, hi_w * (1 - edge_gap)),
                         np.clip(g_obs, lo_w * (1 + edge_gap), hi_w))
        # A device at the window end already cannot move further that way.
        g_obs = np.where(sign * (g_obs - g_b) <= 0, g_b * (1 + sign * rel_min), g_obs)
        target = np.log10(np.maximum(w, 1e-30))
        z_lo = np.full(g_b.size, m.latent_range[0])
        z_hi = np.full(g_b.size, m.latent_range[1])
        for _ in range(iterations):
            mid = 0.5 * (z_lo + z_hi)
            pred = self._run(m, g_b, g_obs, v, mid)
            slower = pred < target  # a slower device (larger z) needs a longer pulse
            z_lo = np.where(slower, mid, z_lo)
            z_hi = np.where(slower, z_hi, mid)
        kind = np.where(small, 1, np.where(saturated, 2, 0))
        return 0.5 * (z_lo + z_hi), kind

    def device_latents(self, records) -> np.ndarray:
        """Per record, the median latent inferred from all informative pulses of its device
        (NaN for a device without one): for fine-tuning on measured data."""
        z, kind = self.infer_latent(records.g_before, records.g_after, records.voltage,
                                    records.width)
        out = np.full(z.size, np.nan)
        good = kind == 0
        devices, inverse = np.unique(records.device, return_inverse=True)
        for d in range(devices.size):  # per device, once, at training time only
            sel = inverse == d
            vals = z[sel & good]
            if vals.size:
                out[sel] = np.median(vals)
        return out


_DEFAULT: dict[str, PulsePredictor] = {}
_DEFAULT_LOCK = threading.Lock()


def load_default(path: str | Path | None = None) -> PulsePredictor:
    """The process-wide predictor (loaded once; ``path`` overrides the shipped default)."""
    key = str(Path(path).resolve()) if path is not None else str(DEFAULT_MODEL)
    with _DEFAULT_LOCK:
        if key not in _DEFAULT:
            _DEFAULT[key] = PulsePredictor(key)
        return _DEFAULT[key]

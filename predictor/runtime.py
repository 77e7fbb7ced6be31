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

import threading
from dataclasses import replace
from pathlib import Path

import numpy as np

from predictor.adapted import Correction
from predictor.model_file import (
    DEFAULT_MODEL,
    LoadedModel,
    OutOfRangeError,
    load_model,
    read_metadata,
)

__all__ = ["DEFAULT_MODEL", "OutOfRangeError", "PulsePredictor", "load_default",
           "read_metadata"]


class PulsePredictor:
    """A loaded pulse-predictor model (see the module docstring)."""

    def __init__(self, path: str | Path = DEFAULT_MODEL, *, threads: int = 1):
        self._threads = int(threads)
        self._lock = threading.Lock()
        self._m = load_model(Path(path), self._threads)

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

    @property
    def network_path(self) -> Path:
        """The ONNX network this model runs (an adapted model's network, else its own file)."""
        adapted = self._m.metadata.get("adapted")
        return Path(adapted["network"]) if adapted else self._m.path

    @property
    def correction(self) -> Correction:
        """An adapted model's correction of the network's log10 width (zero for a network)."""
        return self._m.correction

    def with_correction(self, correction: Correction) -> PulsePredictor:
        """The same network under another correction (a view for fitting one; the model file
        and its fingerprint stay this model's)."""
        view = object.__new__(PulsePredictor)
        view._threads, view._lock = self._threads, threading.Lock()
        view._m = replace(self._m, correction=correction)
        return view

    def reload(self, path: str | Path | None = None) -> dict:
        """Load ``path`` (default: the current file again) and swap it in atomically.

        A model that fails to load leaves the current one in place (the error propagates).
        """
        with self._lock:
            new = load_model(Path(path) if path is not None else self._m.path, self._threads)
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

    def _predict(self, m: LoadedModel, g_start, g_target, voltage, latent, check) -> np.ndarray:
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
    def _check(m: LoadedModel, g_s, g_t, v, z, check) -> None:
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
    def _run(m: LoadedModel, g_s, g_t, v, z) -> np.ndarray:
        q = np.stack([g_s, g_t, v, z], axis=1).astype(np.float32)
        is_set = v < 0
        out = np.empty(g_s.size, dtype=float)
        set_out, reset_out = m.session.run(
            None, {"set_query": q[is_set], "reset_query": q[~is_set]}
        )
        out[is_set] = set_out[:, 0]
        out[~is_set] = reset_out[:, 0]
        if not m.correction.is_zero:  # an adapted model (predictor.adapted)
            out += m.correction(v)
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
        offset=0.0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(voltage V, width s) per cell that moves ``g_now`` to ``g_target``.

        Polarity from the sign of the update. Among the model's voltages of that polarity with
        |V| within the limits, the largest |V| whose predicted width is ≥ ``width_floor`` (else
        the smallest allowed |V|); the width is then clamped to [width_min, width_max] and to
        the model's width range. Raises :class:`OutOfRangeError` if the limits leave no
        amplitude of a needed polarity.

        ``offset`` (decades, per cell): added to every predicted log10 width before the choice —
        what a device beyond the model's latent range needs more (> 0, slower than z = +1 says)
        or less (< 0, faster than z = −1), as measured by :meth:`infer`.
        """
        m = self._m
        g_now, g_target, latent, offset = (np.asarray(a, dtype=float).ravel() for a in
                                           np.broadcast_arrays(g_now, g_target, latent, offset))
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
            ).reshape(idx.size, k) + offset[idx, None]
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
        upper bound (it reached the end of the window: at least this fast). See :meth:`infer`.
        """
        z, kind, _ = self.infer(g_before, g_after, voltage, width, iterations=iterations,
                                min_relative_change=min_relative_change)
        return z, kind

    def infer(
        self,
        g_before,
        g_after,
        voltage,
        width,
        *,
        iterations: int = 18,
        min_relative_change: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(z, kind, residual) of devices from one pulse each.

        z: the latent for which the model's width for the observed change equals the width
        applied (bisection through the network; a slower device needs a longer pulse), within
        the trained range; kind as :meth:`infer_latent`. ``residual``: log10(width applied) −
        log10(width the model predicts for the observed change at z), decades — about 0 when
        z explains the pulse; > 0 when the device is slower than the slowest latent says, < 0
        when faster than the fastest (a device the model cannot express: another population).
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
        z = 0.5 * (z_lo + z_hi)
        residual = target - self._run(m, g_b, g_obs, v, z) if g_b.size else np.zeros(0)
        return z, kind, residual

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

"""Calibration of the pulse predictor to a station's own devices — numpy and onnxruntime only.

The shipped network knows the population it was trained on. On a station's devices every width
it predicts may be off by a factor that depends on the amplitude; the device latent z then runs
into its bound. Calibration fits an *adapted model* (:mod:`predictor.adapted`): the network
unchanged, plus per polarity a correction Δ_p(|V|) = offset_p + slope_p (|V| − v_ref_p) of the
log10 width, and a new prior latent, from pulse records of the station (each a pulse with a
read of its cell just before and just after it: :func:`predictor.log_records.load_export`).

1. **Clean** (:func:`clean`): records that are not finite are dropped; a *noisy* record — the
   reads say the pulse moved the cell against its polarity by more than ``noisy_change`` — is
   dropped; a *stuck* device — none of its pulses moved it by ``stuck_change`` — is dropped with
   all its records. Each count is reported.
2. **Split** the devices: ``held_out_fraction`` of them (seeded) are kept out of the fit.
3. **Fit** by alternating least squares: (a) under the current correction, each pulse's latent
   is inferred and each device gets the median over its informative pulses (moved by at least
   ``informative_change`` in its direction, not run into the window end); (b) with those
   latents fixed, y = log10 t_applied − log10 t_net(G_before, G_after, V, z_device) is regressed
   on |V| per polarity (robust: residuals beyond 3 MAD are left out, the slope is 0 when the
   amplitudes span less than 0.05 V). Until the correction changes by < 1e-3 decade.
   The new prior latent is the median device latent.
4. **Held-out fit** (:func:`held_out_fit`): on the held-out devices, one step ahead as the
   strategy works — each pulse's width predicted with the latent inferred from the device's
   previous pulse; the error |log10 t_applied − log10 t_predicted| — for the parent and for the
   adapted model. Lower is better.

:class:`ExplorationPlanner` chooses the calibration's own pulses: informative ones, across the
model's amplitudes and widths, aimed at random conductances, each verified by a read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from predictor.adapted import Correction, PolarityCorrection
from predictor.control import PolicyConfig, PredictorPlanner
from predictor.dataset import Records
from predictor.runtime import PulsePredictor
from programming import Planner


@dataclass(frozen=True)
class CalibrationConfig:
    """How records are cleaned, split and fitted (relative changes of G are fractions)."""

    held_out_fraction: float = 0.25
    """Share of devices kept out of the fit, to compare parent and adapted model on."""
    stuck_change: float = 0.005
    """A device none of whose pulses moved it by this much (relative) is stuck."""
    noisy_change: float = 0.02
    """A record whose reads moved against the pulse's polarity by more than this is noisy."""
    informative_change: float = 0.01
    """Records that moved the device at least this much in their direction are fitted on."""
    iterations: int = 40
    seed: int = 0


@dataclass
class FitResult:
    correction: Correction
    one_shot_prior: float
    records_used: int
    records_dropped: dict[str, int]
    devices: int
    held_out: dict  # {"devices", "records", "parent": {...}, "adapted": {...}}
    iterations: int


# ------------------------------------------------------------------------------- cleaning


def clean(records: Records, config: CalibrationConfig = CalibrationConfig()
          ) -> tuple[Records, dict[str, int]]:
    """The records worth fitting on, and how many were dropped for what (see the module)."""
    dropped = {"not_finite": 0, "noisy": 0, "stuck": 0}
    finite = (np.isfinite(records.g_before) & np.isfinite(records.g_after)
              & np.isfinite(records.voltage) & np.isfinite(records.width)
              & (records.g_before > 0) & (records.g_after > 0) & (records.width > 0)
              & (records.voltage != 0))
    dropped["not_finite"] = int(np.count_nonzero(~finite))
    rec = records.take(finite)
    change = _change(rec)
    noisy = change < -config.noisy_change
    dropped["noisy"] = int(np.count_nonzero(noisy))
    rec = rec.take(~noisy)
    change = np.abs(_change(rec))
    devices, inverse = np.unique(rec.device, return_inverse=True)
    moved = np.zeros(devices.size, dtype=bool)
    np.logical_or.at(moved, inverse, change >= config.stuck_change)
    stuck = ~moved[inverse]
    dropped["stuck"] = int(np.count_nonzero(stuck))
    dropped["stuck_devices"] = int(np.count_nonzero(~moved))
    return rec.take(~stuck), dropped


def _change(rec: Records) -> np.ndarray:
    """Relative change of G in the pulse's own direction (> 0: it moved as the polarity says)."""
    return (rec.g_after - rec.g_before) / rec.g_before * np.where(rec.voltage < 0, 1.0, -1.0)


def _informative(predictor: PulsePredictor, rec: Records, config: CalibrationConfig
                 ) -> np.ndarray:
    lo, hi = predictor.window
    edge = 2e-3
    saturated = np.where(rec.voltage < 0, rec.g_after >= hi * (1 - edge),
                         rec.g_after <= lo * (1 + edge))
    inside = (rec.g_before > lo) & (rec.g_before < hi)
    return (_change(rec) >= config.informative_change) & ~saturated & inside


# ---------------------------------------------------------------------------------- fitting


def _group_median(keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(unique keys, median of ``values`` per key), vectorised (no loop over groups)."""
    order = np.lexsort((values, keys))
    k, v = keys[order], values[order]
    uniq, start, count = np.unique(k, return_index=True, return_counts=True)
    lo = start + (count - 1) // 2
    hi = start + count // 2
    return uniq, 0.5 * (v[lo] + v[hi])


def _device_latents(predictor: PulsePredictor, rec: Records) -> np.ndarray:
    """Per record, the median latent of its device over ``rec`` (all informative)."""
    z, _, _ = predictor.infer(rec.g_before, rec.g_after, rec.voltage, rec.width)
    devices, medians = _group_median(rec.device, z)
    return medians[np.searchsorted(devices, rec.device)]


def _robust_affine(x: np.ndarray, y: np.ndarray, v_ref: float) -> PolarityCorrection:
    """y ≈ offset + slope (x − v_ref), least squares with residuals beyond 3 MAD left out."""
    if y.size == 0:
        return PolarityCorrection(0.0, 0.0, v_ref)
    fit_slope = np.ptp(x) >= 0.05
    keep = np.ones(y.size, dtype=bool)
    offset, slope = float(np.median(y)), 0.0
    for _ in range(3):
        xs, ys = x[keep] - v_ref, y[keep]
        if fit_slope and xs.size >= 3:
            slope, offset = (float(c) for c in np.polyfit(xs, ys, 1))
        else:
            offset, slope = float(np.mean(ys)), 0.0
        resid = y - (offset + slope * (x - v_ref))
        mad = 1.4826 * float(np.median(np.abs(resid - np.median(resid))))
        keep = np.abs(resid) <= max(3 * mad, 0.05)
    return PolarityCorrection(offset, slope, v_ref)


def fit_correction(network: PulsePredictor, rec: Records, config: CalibrationConfig
                   ) -> tuple[Correction, float, int]:
    """(correction, prior latent, iterations) fitted on the informative records ``rec``."""
    is_set = rec.voltage < 0
    mag = np.abs(rec.voltage)
    refs = {p: float(np.mean(mag[sel])) if np.any(sel) else 0.0
            for p, sel in (("set", is_set), ("reset", ~is_set))}
    corr = Correction(PolarityCorrection(0.0, 0.0, refs["set"]),
                      PolarityCorrection(0.0, 0.0, refs["reset"]))
    base = network.with_correction(Correction())
    log_w = np.log10(rec.width)
    done = 0
    while done < config.iterations:
        done += 1
        z_dev = _device_latents(network.with_correction(corr), rec)
        y = log_w - base.predict_log10_width(rec.g_before, rec.g_after, rec.voltage, z_dev,
                                             check=False)
        new = Correction(_robust_affine(mag[is_set], y[is_set], refs["set"]),
                         _robust_affine(mag[~is_set], y[~is_set], refs["reset"]))
        change = max(abs(new.set.offset - corr.set.offset), abs(new.set.slope - corr.set.slope),
                     abs(new.reset.offset - corr.reset.offset),
                     abs(new.reset.slope - corr.reset.slope))
        corr = new
        if change < 1e-3:
            break
    z_dev = _device_latents(network.with_correction(corr), rec)
    _, per_device = _group_median(rec.device, z_dev)
    return corr, float(np.median(per_device)) if per_device.size else 0.0, done


def held_out_fit(predictor: PulsePredictor, rec: Records) -> dict:
    """How well ``predictor`` predicts the widths of the informative records ``rec`` the way
    the strategy uses it — one step ahead: each record's width predicted with the latent
    inferred from the previous record of the same device (in order). The error
    |log10 t_applied − log10 t_predicted| in decades: median, and share within a factor 2."""
    order = np.argsort(rec.device, kind="stable")  # keeps each device's order
    dev = rec.device[order]
    follows = np.flatnonzero(dev[1:] == dev[:-1]) + 1  # positions with a previous record
    if follows.size == 0:
        return {"records": 0, "devices": 0, "median_abs_error_decades": None,
                "mean_abs_error_decades": None, "within_factor_2": None}
    z, _, _ = predictor.infer(rec.g_before[order], rec.g_after[order], rec.voltage[order],
                              rec.width[order])
    test = rec.take(order[follows])
    pred = predictor.predict_log10_width(test.g_before, test.g_after, test.voltage,
                                         z[follows - 1], check=False)
    err = np.abs(np.log10(test.width) - pred)
    return {"records": int(err.size), "devices": int(np.unique(test.device).size),
            "median_abs_error_decades": round(float(np.median(err)), 4),
            "mean_abs_error_decades": round(float(np.mean(err)), 4),
            "within_factor_2": round(float(np.mean(err <= np.log10(2.0))), 4)}


def fit(parent: PulsePredictor, records: Records,
        config: CalibrationConfig = CalibrationConfig()) -> FitResult:
    """Clean, split, fit and compare (see the module docstring). ``parent``: the model in use
    (its network is what the correction is fitted on, from scratch)."""
    cleaned, dropped = clean(records, config)
    informative = _informative(parent, cleaned, config)
    dropped["uninformative"] = int(np.count_nonzero(~informative))
    rec = cleaned.take(informative)
    if len(rec) == 0:
        raise ValueError("calibration: no informative pulse records to fit on "
                         f"(dropped: {dropped})")
    devices = np.unique(rec.device)
    rng = np.random.default_rng(config.seed)
    n_out = round(config.held_out_fraction * devices.size) if devices.size >= 4 else 0
    held = rng.choice(devices, n_out, replace=False) if n_out else np.zeros(0, np.int64)
    is_held = np.isin(rec.device, held)
    train = rec.take(~is_held)
    network = parent.with_correction(Correction())
    correction, prior, iterations = fit_correction(network, train, config)
    correction = _best_scale(network, train, correction)
    adapted = parent.with_correction(correction)
    _, per_device = _group_median(train.device, _device_latents(adapted, train))
    prior = float(np.median(per_device)) if per_device.size else prior
    test = rec.take(is_held)
    return FitResult(
        correction=correction,
        one_shot_prior=prior,
        records_used=len(train),
        records_dropped=dropped,
        devices=int(devices.size),
        held_out={"devices": int(held.size), "records": len(test),
                  "parent": held_out_fit(parent, test),
                  "adapted": held_out_fit(adapted, test)},
        iterations=iterations,
    )


def _scaled(c: Correction, alpha: float) -> Correction:
    return Correction(*(PolarityCorrection(alpha * p.offset, alpha * p.slope, p.v_ref)
                        for p in (c.set, c.reset)))


def _best_scale(network: PulsePredictor, rec: Records, correction: Correction) -> Correction:
    """The fitted correction scaled by the α in {0, ¼, ½, ¾, 1} that predicts the fit's own
    records best one step ahead (mean error): the latent and the offset trade off, and the
    alternating fit can drift along that valley on devices the network already knows."""
    errors = {a: held_out_fit(network.with_correction(_scaled(correction, a)), rec)
              ["mean_abs_error_decades"] for a in (0.0, 0.25, 0.5, 0.75, 1.0)}
    known = {a: e for a, e in errors.items() if e is not None}
    return _scaled(correction, min(known, key=known.__getitem__)) if known else correction


def improves(result: FitResult) -> bool:
    """Does the adapted model predict the held-out devices better than its parent (mean
    |log10 width error| one step ahead: the tail the parent cannot explain counts)?"""
    p = result.held_out["parent"]["mean_abs_error_decades"]
    a = result.held_out["adapted"]["mean_abs_error_decades"]
    return p is not None and a is not None and a < p


# ------------------------------------------------------------------------ the pulses to fit


class ExplorationPlanner(Planner):
    """The calibration's pulses: for each cell, every pulse aims at a new random conductance
    across the window (log-uniform, at least 10 % away), at a random one of the model's
    amplitudes of the needed polarity that the limits allow, with the width the model predicts
    for the cell (its latent and offset as learned from its previous pulses,
    :class:`PredictorPlanner`) times a random factor within ±``spread`` decades — pulses that
    move the devices measurably across amplitudes and widths, never the same one twice.

    Run with the one loop in verify mode, a tolerance of 0 and ``max_pulses`` = the budget per
    cell: every pulse then has a read before and after it, recorded like any pulse."""

    def __init__(self, predictor: PulsePredictor, n: int, *, v_set_max: float,
                 v_reset_max: float, width_min: float, width_max: float, seed: int = 0,
                 spread: float = 0.3):
        lo, hi = predictor.target_range
        self.predictor = predictor
        self.rng = np.random.default_rng(seed)
        self.spread = float(spread)
        self.tracker = PredictorPlanner(predictor, np.full(n, np.sqrt(lo * hi)),
                                        v_set_max=v_set_max, v_reset_max=v_reset_max,
                                        width_min=width_min, width_max=width_max,
                                        config=PolicyConfig(first_latent=None))
        self.set_v, self.reset_v = predictor.allowed_voltages(v_set_max, v_reset_max)
        w_lo = max(width_min, float(predictor.metadata["width_range"]["min"]))
        w_hi = min(width_max, float(predictor.metadata["width_range"]["max"]))
        self.width_range = (w_lo, w_hi)

    def choose(self, idx: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        idx = np.asarray(idx, dtype=np.intp)
        g = np.asarray(g, dtype=float)
        t = self.tracker
        t.observe(idx, g)
        lo, hi = self.predictor.window
        g_now = np.clip(g, lo * (1 + 1e-3), hi * (1 - 1e-3))
        span = np.log(hi * 0.99) - np.log(lo * 1.01)
        aim = np.exp(np.log(lo * 1.01) + span * self.rng.random(idx.size))
        close = np.abs(np.log(aim / g_now)) < 0.1
        # too close: the other side of the window from the cell
        aim = np.where(close, np.where(g_now > np.sqrt(lo * hi), lo * 1.05, hi * 0.95), aim)
        is_set = aim > g_now
        voltage = np.where(
            is_set,
            self.set_v[self.rng.integers(0, self.set_v.size, idx.size)],
            self.reset_v[self.rng.integers(0, self.reset_v.size, idx.size)],
        )
        z = t.latent[idx]
        z = np.where(np.isfinite(z), z, self.predictor.one_shot_latent)
        log_w = self.predictor.predict_log10_width(g_now, aim, voltage, z, check="window")
        log_w = log_w + t.offset[idx] + self.rng.uniform(-self.spread, self.spread, idx.size)
        width = np.clip(10.0 ** log_w, *self.width_range)
        t.last_g[idx], t.last_v[idx], t.last_w[idx] = g, voltage, width
        t.pending[idx] = True
        t.pulses[idx] += 1
        return voltage, width


class OperationsTally:
    """A :class:`programming.loop.Recorder` that keeps the run's reads and pulses in memory (a
    calibration on a simulated crossbar, without a database: the benchmark's), then gives them
    as pulse records (:meth:`records`) exactly as :func:`predictor.log_records.load_export` pairs
    them from the service's log."""

    def __init__(self) -> None:
        self._parts: list[dict[str, np.ndarray]] = []
        self._count = 0

    def _add(self, kind: str, rows, cols, voltage, width, conductance) -> None:
        rows = np.asarray(rows, dtype=np.int64).ravel()
        n = rows.size
        self._parts.append({
            "order": np.arange(self._count, self._count + n, dtype=float),
            "kind": np.full(n, kind, dtype=object),
            "row": rows,
            "col": np.asarray(cols, dtype=np.int64).ravel(),
            "voltage": np.broadcast_to(np.asarray(voltage, dtype=float), (n,)).copy(),
            "width": np.broadcast_to(np.asarray(width, dtype=float), (n,)).copy(),
            "conductance": np.broadcast_to(np.asarray(conductance, dtype=float), (n,)).copy(),
        })
        self._count += n

    def records(self) -> Records:
        from predictor.log_records import records_from_operations

        ops = {k: np.concatenate([p[k] for p in self._parts]) for k in self._parts[0]} \
            if self._parts else {}
        return records_from_operations(ops)

    # -- the Recorder protocol
    def start_run(self, params) -> int:
        return 1

    def record_read(self, result, run_id=None) -> None:
        g = np.where(np.asarray(result.compliance, dtype=bool), np.nan, result.conductance)
        self._add("read", result.rows, result.cols, result.v_read, np.nan, g)

    def fire(self, backend, rows, cols, voltage, width, run_id=None) -> None:
        backend.pulse(rows, cols, voltage, width)
        self._add("pulse", rows, cols, voltage, width, np.nan)

    def commit(self) -> None:
        """Nothing to make durable."""

    def record_energy(self, rows: np.ndarray, cols: np.ndarray, energy: np.ndarray,
                      run_id: int | None = None) -> None:
        """Energies are not part of the tally."""

    def device_memory(self, key, rows, cols) -> np.ndarray:
        return np.full(np.asarray(rows).size, np.nan)

    def save_device_memory(self, key, rows, cols, values, run_id=None) -> None:
        """Nothing kept across runs."""

    def finish_run(self, run_id, **results) -> None:
        """Nothing kept."""

    def fail_run(self, run_id, error) -> int | None:
        return None

"""Evaluation of the pulse predictor on held-out simulated devices: the scenarios, loops and
baselines that ``memprog benchmark programming`` (:mod:`predictor.benchmark`) reports.

Devices: a ``realistic`` crossbar (device-to-device spread and cycle-to-cycle variation) whose
seed was never used for training or validation, cycled ``burn_in`` times through a full SET and
RESET first (devices in use: their C2C walk has spread, as in the training data). Start states
are drawn log-uniformly across the operating window, targets uniformly over the model's target
range, redrawn while |G_target − G_start| < ``min_update`` · G_target. Every strategy gets the
same devices in the same state (the crossbar is rebuilt from its seed for each).

One shot (RPD relative to the update and to the target, noise-free truth of the simulator):

- ``predictor``: one pulse per device predicted from the read conductance and the target, the
  device latent unknown (the model's one-shot prior);
- ``noise_free_baseline``: the paper's baseline — the deterministic nominal device (C2C off)
  inverted by bisection of the width, at one fixed amplitude per polarity;
- ``predictor_calibrated``: the same devices first written to their start states by the
  predictor (write-and-verify), so the predictor knows each device's latent from its last pulse,
  then one shot to the target;
- ``blind_bound``: an estimate of the best *any* one-shot rule that knows only (G_start,
  G_target) can do: for sample transitions, the best single (amplitude, width) applied to every
  device of the population, and the fraction of devices it brings within ±50 % (with its
  standard error over the transitions).

Write-and-verify to a tolerance (default 2 % of the target) with the service's own loop,
:func:`programming.program_cells` (read all; then per iteration pulse the unconverged cells and
read them), on the crossbar through :class:`drivers.sim.SimBackend`: ``predictor``, and the
service's ``ispp`` and ``fixed`` strategies, on the same devices. Device time = Σ widths + reads ×
``read_time``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from drivers.base import Limits
from drivers.sim import SimBackend
from predictor import scores as M
from predictor.control import PolicyConfig, PredictorPlanner
from predictor.runtime import PulsePredictor
from programming import Planner, ProgramJob, ProgramOutcome, get_strategy, program_cells
from programming.tally import TallyRecorder
from sim_backend import Crossbar
from sim_backend.crossbar import V_READ
from sim_backend.integrator import apply_pulses
from sim_backend.jart import N_HI, N_LO, DeviceParams, conductance, state_for_conductance

HELDOUT_SEED = 7001
"""Crossbar seed of the benchmark's devices (training uses 101-104, validation 201)."""
BASELINE_VOLTAGES = (-0.45, 1.0)
"""The noise-free baseline's fixed (SET, RESET) amplitudes, V."""


@dataclass(frozen=True)
class Scenario:
    rows: int = 64
    cols: int = 64
    seed: int = HELDOUT_SEED
    burn_in: int = 4
    read_noise: float = 0.0
    tolerance: float = 0.02
    max_pulses: int = 20
    baseline_max_pulses: int = 200
    min_update: float = 0.05
    read_time: float = 1e-6
    sample_seed: int = 0
    population: str | None = None
    """Device population file (sim_backend.population); None: the training population."""

    @property
    def n(self) -> int:
        return self.rows * self.cols


# ------------------------------------------------------------------------------- devices


def fresh_array(sc: Scenario) -> tuple[Crossbar, np.ndarray, np.ndarray, np.ndarray]:
    """(crossbar, rows, cols, N_start, target): the same devices and task on every call."""
    xb = Crossbar(sc.rows, sc.cols, seed=sc.seed, variability="realistic",
                  read_noise=sc.read_noise, population=sc.population)
    rows, cols = np.divmod(np.arange(sc.n), sc.cols)
    for _ in range(sc.burn_in):
        xb.pulse(rows, cols, -0.6, 1e-6)
        xb.pulse(rows, cols, 1.2, 1e-5)
    g_start, target = draw_task(sc)
    xb.state = np.clip(state_for_conductance(g_start), N_LO, N_HI).reshape(xb.shape)
    return xb, rows, cols, target


def draw_task(sc: Scenario, target_range: tuple[float, float] = (100e-6, 550e-6)
              ) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([sc.sample_seed, sc.seed])
    lo_w, hi_w = float(conductance(np.array([N_LO]))[0]), float(conductance(np.array([N_HI]))[0])
    g_start = np.exp(rng.uniform(np.log(lo_w), np.log(hi_w), sc.n))
    target = rng.uniform(*target_range, sc.n)
    for _ in range(100):
        bad = np.abs(target - g_start) < sc.min_update * target
        if not bad.any():
            break
        target[bad] = rng.uniform(*target_range, int(bad.sum()))
    return g_start, target


# ------------------------------------------------------------------------- the write loop


@dataclass
class LoopResult:
    g_start: np.ndarray
    g_final: np.ndarray  # truth (noise-free) after the run
    g_read: np.ndarray  # last read
    pulses: np.ndarray
    width_sum: np.ndarray
    reads: np.ndarray
    converged: np.ndarray
    wall_time: float
    energy: np.ndarray | None = None  # J per device: its pulses' ∫ V·I dt (the simulator's)


def write_verify(xb: Crossbar, rows, cols, target, planner, tolerance: float, max_pulses: int
                 ) -> LoopResult:
    """Write-and-verify on a crossbar with the service's own loop
    (:func:`programming.program_cells`), with the noise-free truth beside it."""
    g_true_start = _truth(xb, rows, cols)
    out, tally = _run_loop(xb, rows, cols, target, planner, tolerance, max_pulses, verify=True)
    assert out.final is not None
    g_final = _truth(xb, rows, cols)
    return LoopResult(g_true_start, g_final, out.final, out.pulses, tally.width_sum,
                      out.pulses + 1, M.converged(g_final, target, tolerance), out.wall_time,
                      out.energy)


def one_shot(xb: Crossbar, rows, cols, target, planner) -> tuple[np.ndarray, np.ndarray]:
    """One pulse per device chosen from one read, with the service's loop in one-shot mode;
    returns (G_start, G_reached), noise-free."""
    g_start = _truth(xb, rows, cols)
    _run_loop(xb, rows, cols, target, planner, 0.0, 1, verify=False)
    return g_start, _truth(xb, rows, cols)


class _Configured(Planner):
    """A pulse chooser configured by the evaluation (a :class:`PredictorPlanner` with its own
    prior, the noise-free baseline, a registered strategy's planner) as the loop's planner:
    nothing remembered across runs, and its one-shot configuration left as it was given."""

    def __init__(self, inner):
        self.inner = inner

    def choose(self, idx: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.inner.choose(idx, g)


def _run_loop(xb: Crossbar, rows, cols, target, planner, tolerance: float, max_pulses: int,
              *, verify: bool) -> tuple[ProgramOutcome, TallyRecorder]:
    rows, cols = np.asarray(rows), np.asarray(cols)
    tally = TallyRecorder(rows, cols, xb.cols)
    job = ProgramJob(rows=rows, cols=cols, target=np.asarray(target, dtype=float),
                     tolerance=tolerance, max_pulses=max_pulses, strategy="evaluation",
                     verify=verify, trace=False, v_read=V_READ, limits=Limits())
    out = program_cells(SimBackend(xb), tally, job, planner=_Configured(planner))
    return out, tally


def _truth(xb: Crossbar, rows, cols) -> np.ndarray:
    """The simulator's noise-free conductance (S) of the cells."""
    return xb.conductance_map().ravel()[np.asarray(rows) * xb.cols + np.asarray(cols)]


def one_shot_known(sc: Scenario, predictor: PulsePredictor
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """One shot on devices the predictor knows: every device first written (write-and-verify)
    from another state to its start state by the predictor, which so learns each device's
    latent from its last pulses; then one pulse per device to its target with that latent.
    (G_start, G_reached, target, share of devices with a latent), noise-free truth; targets
    closer than ``min_update`` to the start are moved away as in :func:`draw_task`."""
    xb, r, c, target = fresh_array(sc)
    g_start_goal = np.clip(xb.conductance_map().ravel(), 100e-6, 550e-6)
    g_prev, _ = draw_task(replace(sc, sample_seed=sc.sample_seed + 1))
    close = np.abs(g_prev - g_start_goal) < sc.min_update * g_start_goal
    g_prev = np.where(close, np.where(g_start_goal < 300e-6, g_start_goal * 1.3,
                                      g_start_goal / 1.3), g_prev)
    xb.state = np.clip(state_for_conductance(g_prev), N_LO, N_HI).reshape(xb.shape)
    warm = _policy(predictor, g_start_goal)
    warmed = write_verify(xb, r, c, g_start_goal, warm, sc.tolerance, sc.max_pulses)
    warm.observe(np.arange(sc.n), warmed.g_read)  # the last pulse of each device, too
    g_now = xb.conductance_map().ravel()
    target_c = np.where(np.abs(target - g_now) < sc.min_update * target,
                        np.where(g_now < 300e-6, np.minimum(g_now * 1.3, 550e-6),
                                 np.maximum(g_now / 1.3, 100e-6)), target)
    planner = _policy(predictor, target_c, latent=warm.latent,
                      config=PolicyConfig(first_latent=None))
    planner.offset[:] = warm.offset  # what the latent cannot say, learned too
    g0, g1 = one_shot(xb, r, c, target_c, planner)
    return g0, g1, target_c, float(np.isfinite(warm.latent).mean())


# ----------------------------------------------------------------- the noise-free baseline


class NominalInversePlanner:
    """The paper's noise-free baseline: the nominal device, C2C off, inverted by bisection.

    For each cell: fixed amplitude per polarity (``voltages``), the width for which the nominal
    device goes from the read conductance to the target (40 bisection steps in log10 width over
    [1e-9, 0.1] s, vectorised over cells).
    """

    def __init__(self, target: np.ndarray, voltages=BASELINE_VOLTAGES):
        self.target = np.asarray(target, float)
        self.v_set, self.v_reset = voltages

    def choose(self, idx, g):
        g = np.clip(np.asarray(g, float), 94.46e-6, 559.2e-6)
        t = self.target[idx]
        is_set = t > g
        v = np.where(is_set, self.v_set, self.v_reset)
        N0 = np.clip(state_for_conductance(g), N_LO, N_HI)
        lo = np.full(g.size, -9.0)
        hi = np.full(g.size, -1.0)
        for _ in range(40):
            mid = 0.5 * (lo + hi)
            N1, _ = apply_pulses(N0, v, 10.0**mid, DeviceParams())
            reached = conductance(N1)
            past = np.where(is_set, reached >= t, reached <= t)
            hi = np.where(past, mid, hi)
            lo = np.where(past, lo, mid)
        return v, 10.0 ** (0.5 * (lo + hi))


# -------------------------------------------------------------------- physics upper bound


def blind_bound(sc: Scenario, predictor: PulsePredictor, transitions: int = 96,
                devices: int = 256, widths: int = 64, rng_seed: int = 1, chunk: int = 4) -> dict:
    """An estimate of the best fraction within ±50 % of the update that *any* blind one-shot
    rule can reach: one (V, width) per transition, chosen knowing the device population but not
    the device.

    Per transition, the population-best (V, width) over the model's amplitudes × ``widths``
    log-spaced widths in [1 ns, 100 ms], on ``devices`` held-out devices (their parameters after
    the scenario's burn-in); averaged over ``transitions`` drawn like the benchmark's tasks
    (:func:`draw_task`). The grid slightly under-estimates each transition's optimum; the mean
    carries a sampling error, reported as ``standard_error``.
    """
    xb, *_ = fresh_array(Scenario(rows=16, cols=devices // 16, seed=sc.seed, burn_in=sc.burn_in))
    params = {k: v.ravel() for k, v in xb.device_params("now").items()}
    g_s, g_t = draw_task(Scenario(rows=1, cols=transitions, seed=sc.seed,
                                  min_update=sc.min_update, sample_seed=1000 + rng_seed))
    volts = {True: predictor.voltages("set"), False: predictor.voltages("reset")}
    w_grid = np.logspace(-9, -1, widths)
    n_dev = params["r"].size
    best = np.zeros(transitions)
    for start in range(0, transitions, chunk):
        ks = range(start, min(start + chunk, transitions))
        V, W, dev, N0, sizes = [], [], [], [], []
        for k in ks:
            v = volts[bool(g_t[k] > g_s[k])]
            n = v.size * widths * n_dev
            V.append(np.repeat(v, widths * n_dev))
            W.append(np.tile(np.repeat(w_grid, n_dev), v.size))
            dev.append(np.tile(np.arange(n_dev), widths * v.size))
            N0.append(np.full(n, float(np.clip(state_for_conductance(g_s[k]), N_LO, N_HI))))
            sizes.append((k, v.size, n))
        d = np.concatenate(dev)
        N1, _ = apply_pulses(np.concatenate(N0), np.concatenate(V), np.concatenate(W),
                             DeviceParams(**{p: a[d] for p, a in params.items()}))
        at = 0
        for k, n_v, n in sizes:
            ok = np.abs(M.rpd_update(conductance(N1[at:at + n]), g_t[k], g_s[k])) <= 0.5
            best[k] = ok.reshape(n_v * widths, n_dev).mean(axis=1).max()
            at += n
    return {
        "estimate_of": "best fraction within ±50 % of the update any blind one-shot rule reaches",
        "transitions": transitions,
        "tasks": "drawn like the benchmark's (draw_task)",
        "devices": int(n_dev),
        "amplitudes_V": {"set": volts[True].tolist(), "reset": volts[False].tolist()},
        "width_grid": f"{widths} log-spaced widths in [1e-9, 0.1] s",
        "best_fraction_within_50pct_update_mean": float(best.mean()),
        "standard_error": float(best.std(ddof=1) / np.sqrt(transitions)),
        "best_fraction_per_transition": [round(float(b), 4) for b in best],
    }


# -------------------------------------------------------------------------------- runners


def _policy(predictor: PulsePredictor, target, limits=None, config=None, latent=None):
    lim = limits or {}
    config = config or PolicyConfig()
    planner = PredictorPlanner(predictor, target, config=config, **lim)
    if latent is not None:
        planner.latent[:] = latent
    return planner


def _service_planner(name: str, target: np.ndarray):
    """The planner of the registered strategy ``name`` (fixed, ispp), at the default limits."""
    return get_strategy(name).begin(target, Limits())


def run_strategies(sc: Scenario, predictor: PulsePredictor, strategies: dict[str, Callable],
                   log=print) -> dict[str, LoopResult]:
    out = {}
    for name, make in strategies.items():
        xb, rows, cols, target = fresh_array(sc)
        budget = sc.max_pulses if name == "predictor" else sc.baseline_max_pulses
        res = write_verify(xb, rows, cols, target, make(target), sc.tolerance, budget)
        out[name] = res
        energy = "" if res.energy is None else \
            f", energy {res.energy.mean() * 1e12:.1f} pJ per device mean"
        log(f"  {name:>10}: converged {res.converged.mean() * 100:.2f} %, pulses median "
            f"{np.median(res.pulses):.0f}, p99 {np.percentile(res.pulses, 99):.0f}, "
            f"max {res.pulses.max()}{energy} ({res.wall_time:.1f} s)")
    return out


def wv_summary(res: LoopResult, target, sc: Scenario, budget: int) -> dict:
    dt = M.device_time(res.width_sum, res.reads, sc.read_time)
    conv = res.converged
    # converged_fraction: the simulator's noise-free truth within the tolerance at the end.
    return M.pulse_statistics(res.pulses, conv) | {
        "budget": budget,
        "converged_by_verify_read": float(np.mean(M.converged(res.g_read, target,
                                                              sc.tolerance))),
        "converged_within_20_pulses": float(np.mean(conv & (res.pulses <= 20))),
        "device_time_total_s": float(dt.sum()),
        "device_time_per_device_mean_s": float(dt.mean()),
        "width_sum_total_s": float(res.width_sum.sum()),
        **_energy_summary(res),
        "reads_total": int(res.reads.sum()),
        "final_rpd_target": M.distribution(M.rpd_target(res.g_final, target)),
        "software_wall_time_s": round(res.wall_time, 3),
        "software_wall_time_per_device_ms": round(res.wall_time / target.size * 1e3, 4),
    }


def _energy_summary(res: LoopResult) -> dict:
    """Programming energy (J): in all, per device, per converged device, and its distribution
    over the devices (the pulses' ∫ V·I dt; not the reads')."""
    if res.energy is None:
        return {}
    e = res.energy
    return {
        "energy_total_J": float(e.sum()),
        "energy_per_device_mean_J": float(e.mean()),
        "energy_per_device_median_J": float(np.median(e)),
        "energy_per_device_p99_J": float(np.percentile(e, 99)),
        "energy_per_converged_device_mean_J": float(e[res.converged].mean())
        if res.converged.any() else None,
    }


def quick_evaluation(model_path: str | Path, seeds=(201,), rows: int = 32, cols: int = 32,
                     log=print) -> dict:
    """A small evaluation on validation devices used by training: the best one-shot prior latent
    and write-and-verify figures. Never uses the benchmark's held-out seed."""
    predictor = PulsePredictor(model_path)
    sc = Scenario(rows=rows, cols=cols, seed=int(seeds[0]))
    grid = np.round(np.linspace(-1.0, 1.0, 9), 3)
    fractions = {}
    for z in grid:
        xb, r, c, target = fresh_array(sc)
        g0, g1 = one_shot(xb, r, c, target, _policy(predictor, target,
                                                    config=PolicyConfig(first_latent=float(z))))
        fractions[float(z)] = M.within(M.rpd_update(g1, target, g0))["50%"]
    best = max(fractions, key=fractions.__getitem__)
    xb, r, c, target = fresh_array(sc)
    res = write_verify(xb, r, c, target, _policy(predictor, target), sc.tolerance, sc.max_pulses)
    summary = {
        "devices": sc.n,
        "crossbar_seed": sc.seed,
        "one_shot_within_50pct_update_by_prior_latent": fractions,
        "one_shot_prior_latent": best,
        "write_verify": M.pulse_statistics(res.pulses, res.converged),
    }
    log(f"  one shot (prior z={best}): {fractions[best] * 100:.1f} % within ±50 % of the update; "
        f"write-and-verify to 2 %: median {np.median(res.pulses):.0f} pulses, converged "
        f"{res.converged.mean() * 100:.1f} %")
    return summary

"""Pulse integrator: apply a rectangular pulse of its own voltage and width to every device.

During a rectangular pulse V is constant, so each device follows the autonomous scalar ODE
dN/dt = f(N; V, params). Rates span ~15 decades across voltages and the switching is S-shaped
(slow start, fast middle, slow end), so a fixed step is wrong: a 10 ns Euler step overshoots a
−0.6 V pulse by 30 % (device-model.md). We integrate u = ln N with an embedded Dormand–Prince
5(4) Runge–Kutta pair, vectorised over devices, each device with its own step size and remaining
time. The error of every step is held below ``tol`` in u (a relative error in N), so the number of
steps is independent of the pulse's time scale. N is clamped to the operating bounds
[N_lo, N_hi]: SET stops at N_hi, RESET at N_lo (the state equation is monotone in time for a
given polarity, so a device that reaches its bound stays there for the rest of the pulse).

Source of the method: Dormand & Prince, J. Comp. Appl. Math. 6:19 (1980); step-size control as
in Hairer, Nørsett & Wanner, Solving ODEs I, §II.4.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sim_backend.jart import (
    E_CHARGE,
    FIT,
    K_B_EV,
    NOMINAL,
    DeviceParams,
    JartConstants,
    current,
    reset_coefficients,
    set_coefficients,
)

DEFAULT_TOL = 1e-6
"""Default local error tolerance of one step, in ln N."""

# Dormand–Prince 5(4) tableau.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A: tuple[tuple[float, ...], ...] = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B5 = _A[6]
"""Fifth-order weights (row 7 of the tableau: the solution), also the energy quadrature's."""
# Fifth-order weights minus embedded fourth-order weights: the local error estimate.
_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525, -1 / 40)


@dataclass
class _Polarity:
    """Everything the log-rate of one polarity group needs, one entry per active device.

    The V-dependent current coefficients and the parameter-dependent prefactors are computed
    once per pulse; only the N-dependent part is evaluated at each stage.
    """

    is_set: bool
    k: dict[str, np.ndarray]  # current-fit coefficients (V-dependent)
    V: np.ndarray
    field_per_I: np.ndarray  # SET: E = I * field_per_I (1 / (z e μn 1e26 N A), without N)
    thermal: np.ndarray  # R_th0 (r_nom / r)^2 × (1 or 0.27), K/W
    prefactor: np.ndarray  # a ν0 / l_disc, 1/s (× c_VO × window × hop gives dN/dt)
    N_bound: np.ndarray  # N_max for SET, N_min for RESET (window of the state equation)

    def take(self, keep: np.ndarray) -> _Polarity:
        return _Polarity(
            self.is_set,
            {name: value[keep] for name, value in self.k.items()},
            self.V[keep],
            self.field_per_I[keep],
            self.thermal[keep],
            self.prefactor[keep],
            self.N_bound[keep],
        )

    def current(self, u: np.ndarray) -> np.ndarray:
        """I(V, N) at u = ln N (A), for the active devices (the JART v1b fit)."""
        N = np.exp(u)
        k = self.k
        if self.is_set:
            return -k["A"] - k["B"] / (1.0 + (k["c"] / N) ** k["d"]) ** k["f"]
        return k["g"] / (1.0 + k["h"] * (N / FIT.N_min_nom) ** (-FIT.j0)) ** (1.0 / FIT.k0)

    def log_rate(self, u: np.ndarray, const: JartConstants) -> np.ndarray:
        """du/dt = (dN/dt) / N at u = ln N, for the active devices."""
        return self.log_rate_and_power(u, const)[0]

    def log_rate_and_power(self, u: np.ndarray, const: JartConstants
                           ) -> tuple[np.ndarray, np.ndarray]:
        """du/dt at u = ln N and the power P = V·I (W, ≥ 0: V and I share their sign) the
        device draws there, for the active devices."""
        N = np.exp(u)
        I = self.current(u)
        R_series = const.R_TiOx + const.R0 * (
            1.0 + const.R0 * const.alpha_line * I * I * const.R_th_line
        )
        V_cell = self.V - I * R_series
        T = const.T0 + np.abs(I * V_cell) * self.thermal
        if self.is_set:
            E = np.abs(I) * self.field_per_I / N
            window = 1.0 - (N / self.N_bound) ** 10
        else:
            E = np.abs(V_cell) / const.l_cell
            window = 1.0 - (self.N_bound / N) ** 10
        gamma = np.minimum(E * (const.z_VO * const.a / (np.pi * const.dWA)), 1.0)
        base = np.sqrt(1.0 - gamma * gamma) + gamma * np.arcsin(gamma)
        half = gamma * (np.pi / 2.0)
        inv_kT = const.dWA / (K_B_EV * T)
        hop = np.exp(-(base - half) * inv_kT) - np.exp(-(base + half) * inv_kT)
        magnitude = 0.5 * (const.N_plug + N) * self.prefactor * window * hop / N
        return (magnitude if self.is_set else -magnitude), self.V * I


def _polarity_group(
    is_set: bool, V: np.ndarray, params: DeviceParams, const: JartConstants
) -> _Polarity:
    n = V.shape[0]
    r = np.broadcast_to(np.asarray(params.r, dtype=float), (n,))
    l_disc = np.broadcast_to(np.asarray(params.l_disc, dtype=float), (n,))
    area = np.pi * r * r
    if is_set:
        ks = set_coefficients(V)
        k = {"A": ks.A, "B": ks.B, "c": ks.c, "d": ks.d, "f": ks.f}
        scale = 1.0
        N_bound = np.broadcast_to(np.asarray(params.N_max, dtype=float), (n,))
    else:
        kr = reset_coefficients(V)
        k = {"g": kr.g, "h": kr.h}
        scale = const.R_th_reset_scale
        N_bound = np.broadcast_to(np.asarray(params.N_min, dtype=float), (n,))
    return _Polarity(
        is_set=is_set,
        k=k,
        V=V,
        field_per_I=1.0 / (const.z_VO * E_CHARGE * const.mu_n * 1e26 * area),
        thermal=const.R_th0 * (const.r / r) ** 2 * scale,
        prefactor=const.a * const.nu0 / l_disc,
        N_bound=np.array(N_bound, dtype=float),
    )


@dataclass(frozen=True)
class PulseOutcome:
    """What :func:`integrate_pulses` gives per device: the state after the pulse and the energy
    the pulse delivered to it."""

    N: np.ndarray  # 1e26 m^-3, clamped to [N_lo, N_hi]
    energy: np.ndarray  # J: E = ∫ V·I(V, N(t)) dt over the pulse (≥ 0)
    stats: IntegrationStats


@dataclass(frozen=True)
class IntegrationStats:
    """Work done by one call of :func:`apply_pulses` (for benchmarks and tests)."""

    steps: int  # integration rounds (each advances every still-active device by one step)
    evaluations: int  # device-rate evaluations summed over devices


def apply_pulses(
    N0: np.ndarray,
    V: np.ndarray,
    width: np.ndarray,
    params: DeviceParams,
    *,
    tol: float = DEFAULT_TOL,
    const: JartConstants = NOMINAL,
    max_rounds: int = 100_000,
) -> tuple[np.ndarray, IntegrationStats]:
    """N after one rectangular pulse per device: ``V[i]`` volts for ``width[i]`` seconds.

    N0, V, width are 1-D arrays of one length; ``params`` fields are scalars or arrays of that
    length. Returns the new N (clamped to [N_lo, N_hi]) and integration statistics
    (:func:`integrate_pulses` also gives each pulse's energy).
    """
    out = integrate_pulses(N0, V, width, params, tol=tol, const=const, max_rounds=max_rounds)
    return out.N, out.stats


def integrate_pulses(
    N0: np.ndarray,
    V: np.ndarray,
    width: np.ndarray,
    params: DeviceParams,
    *,
    tol: float = DEFAULT_TOL,
    const: JartConstants = NOMINAL,
    max_rounds: int = 100_000,
) -> PulseOutcome:
    """N after one rectangular pulse per device, and the energy each pulse delivered:

        E = ∫₀^width V · I(V, N(t)) dt   (J),

    integrated with the state by the same Dormand–Prince stages (the fifth-order weights on
    the stage powers, an extra quadrature component of the ODE system that costs no extra
    rate evaluation); a device at the bound it is driven towards (already, or reached during
    the pulse) draws I(V, N_bound) for the rest of it.
    """
    N0 = np.asarray(N0, dtype=float)
    V = np.broadcast_to(np.asarray(V, dtype=float), N0.shape)
    width = np.broadcast_to(np.asarray(width, dtype=float), N0.shape)
    N_end = np.clip(N0.copy(), const.N_lo, const.N_hi)
    # Devices that do not move (V = 0, or already at their bound): constant power.
    energy = np.where(width > 0, V * current(N_end, V) * width, 0.0)
    steps = evaluations = 0
    for is_set in (True, False):
        chosen = (V < 0) & (width > 0) if is_set else (V > 0) & (width > 0)
        # A device already at the bound it is driven towards does not move.
        chosen &= (N_end < const.N_hi) if is_set else (N_end > const.N_lo)
        index = np.flatnonzero(chosen)
        if index.size == 0:
            continue
        group = _polarity_group(is_set, V[index], params.take(index), const)
        u_end, e_end, s, e = _integrate_group(
            group, np.log(N_end[index]), width[index].copy(), tol, const, max_rounds
        )
        N_end[index] = np.exp(u_end)
        energy[index] = e_end
        steps += s
        evaluations += e
    return PulseOutcome(np.clip(N_end, const.N_lo, const.N_hi), np.maximum(energy, 0.0),
                        IntegrationStats(steps, evaluations))


def _integrate_group(
    group: _Polarity,
    u: np.ndarray,
    t_left: np.ndarray,
    tol: float,
    const: JartConstants,
    max_rounds: int,
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Dormand–Prince 5(4) on u = ln N for one polarity group, with the energy E = ∫ P dt as a
    quadrature component (its stages are the powers at the state's stages, weighted by the
    fifth-order weights); returns the final u, the energies and the counts."""
    u_lo, u_hi = np.log(const.N_lo), np.log(const.N_hi)
    u_out = u.copy()
    e_out = np.zeros(u.size)
    energy = np.zeros(u.size)
    alive = np.arange(u.size)  # positions in u_out of the devices still integrating
    bound = u_hi if group.is_set else u_lo

    def f(x: np.ndarray, g: _Polarity) -> tuple[np.ndarray, np.ndarray]:
        return g.log_rate_and_power(np.clip(x, u_lo, u_hi), const)

    k1, p1 = f(u, group)
    # The power each device draws once at its bound (where it stays for the rest of the pulse).
    p_bound = f(np.full(u.size, bound), group)[1]
    evaluations = u.size
    # First step: at most a 1 % change of N (error control takes over from there).
    h = np.minimum(t_left, 0.01 / np.maximum(np.abs(k1), 1e-300))
    rounds = 0
    while alive.size:
        rounds += 1
        if rounds > max_rounds:
            raise RuntimeError("pulse integration did not finish: step size collapsed")
        h = np.minimum(h, t_left)
        ks, ps = [k1], [p1]
        for stage in range(1, 7):
            a = _A[stage]
            du = a[0] * ks[0]
            for j in range(1, stage):
                if a[j]:
                    du = du + a[j] * ks[j]
            x = u + h * du
            if stage == 6:
                u_new = x  # row 7 of the tableau is the fifth-order solution (FSAL)
            k, p = f(x, group)
            ks.append(k)
            ps.append(p)
        evaluations += 6 * alive.size
        err = np.abs(h * sum(e * k for e, k in zip(_E, ks, strict=True) if e))
        accept = err <= tol
        # Past the bound the device stops there (stages beyond it see the rate at the bound).
        hit = (u_new >= u_hi) if group.is_set else (u_new <= u_lo)
        # ∫ P dt over the step: the fifth-order weights (row 7) on the stage powers (in place:
        # this is every round's only extra work for the energy).
        step_energy = _B5[0] * ps[0]
        for b, p in zip(_B5[1:], ps[1:6], strict=True):
            if b:
                step_energy += b * p
        step_energy *= h
        step_energy[~accept] = 0.0
        energy += step_energy
        u = np.where(accept, u_new, u)
        t_left = np.where(accept, t_left - h, t_left)
        k1 = np.where(accept, ks[6], k1)
        p1 = np.where(accept, ps[6], p1)
        factor = 0.9 * (tol / np.maximum(err, 1e-300)) ** 0.2
        h = h * np.clip(factor, 0.2, 5.0)
        finished = (accept & hit) | (t_left <= 0.0)
        if np.any(finished):
            done = alive[finished]
            u_out[done] = u[finished]
            # at the bound for the rest of the pulse: its power there, constant
            rest = np.maximum(t_left[finished], 0.0)
            e_out[done] = energy[finished] + p_bound[finished] * rest
            keep = ~finished
            alive = alive[keep]
            u, t_left, h, k1, p1, energy, p_bound = (u[keep], t_left[keep], h[keep], k1[keep],
                                                     p1[keep], energy[keep], p_bound[keep])
            group = group.take(keep)
    return np.clip(u_out, u_lo, u_hi), e_out, rounds, evaluations

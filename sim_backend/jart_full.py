"""Full (implicit) JART VCM v1b model — a numpy reference for validating the simplified model.

Not used by the simulator itself: it is slow (nested iterative solves) and exists to check the
explicit current fit of :mod:`sim_backend.jart` against the physics it was fitted to.

Sources
-------
* C. Bengel, A. Siemon, F. Cüppers, S. Hoffmann-Eifert, A. Hardtdegen, M. von Witzleben,
  L. Hellmich, R. Waser, S. Menzel, "Variability-aware modeling of filamentary oxide-based bipolar
  resistive switching cells using SPICE level compact models", IEEE TCAS-I 67(12):4618 (2020).
* The JART VCM v1b Verilog-A model published by the authors (emrl.de, "JART"), from which the
  branch choices below (φ_Bn clamp, TE/TFE split at V_S = 0, R_th and window selected by the sign
  of the applied voltage) are taken.
* F. Cüppers et al., APL Materials 7:091105 (2019) for the parameter set (device-model.md).

Equivalent circuit (all elements in series, V at the active electrode, SET at V < 0)::

    V = V_S + I (R_disc + R_plug + R_series(I))                                           (1)
    R_disc   = l_disc / (z_VO e μ_n N A)                 A = π r²,  N in 1e26 m^-3 × 1e26
    R_plug   = (l_cell - l_disc) / (z_VO e μ_n N_plug A)
    R_series = R_TiOx + R0 (1 + R0 α_line I² R_th,line)

Schottky interface, barrier lowered by the image force (ψ = φ_Bn0 - φ_n - V_S)::

    φ_Bn = φ_Bn0 - [e³ z_VO N ψ / (8 π² (ε_φB ε0)³)]^(1/4)   if ψ > 0, else φ_Bn0;  φ_Bn ≥ 0   (2)

Thermionic emission (TE) for V_S ≥ 0 (RESET side, reads)::

    I = A A* T² exp(-e φ_Bn / kT) [exp(e V_S / kT) - 1]                                     (3)

Thermionic-field emission (TFE) for V_S < 0 (SET side, reverse-biased Schottky)::

    E00 = (e h / 4π) sqrt(z_VO N / (m* ε ε0))            (in J; the paper's W00)
    E0  = E00 coth(E00/kT),   ε' = E00 / (E00/kT - tanh(E00/kT))
    I   = -A (A* T / k) sqrt(π E00 e (|V_S| + φ_Bn / cosh²(E00/kT)))
          × exp(-e φ_Bn / E0) [exp(e |V_S| / ε') - 1]                                      (4)

Filament temperature (steady state, no thermal capacitance in v1b)::

    T = T0 + |I (V_S + V_disc + V_plug)| R_th0 (r_nom / r)² (× 0.27 if V > 0)               (5)

(V_S + V_disc + V_plug = V - I R_series.)  I, V_S and T are implicit: for fixed T, (1)-(4) is a
scalar equation in V_S that is solved by bracketed root finding (Illinois false position with
bisection safeguard); T is found by a damped, bracket-safeguarded fixed-point iteration of (5).

Branch choice: for V > 0 the Schottky current is *not* monotonic in V_S below ψ = 0 (the image
force lowering vanishes as V_S → φ_Bn0 - φ_n with an infinite slope), so (1) has up to three roots.
The one a circuit simulator reaches by ramping V up from 0 is the lowest-V_S root (strongly lowered
barrier); that is the one returned here, and it reproduces the "G full" oracle of device-model.md.
For V < 0 the current is monotonic and the root is unique.

State equation (identical in form to the simplified model's, with the full current)::

    SET  (V < 0): E = V_disc / l_disc = I R_disc / l_disc,   F = 1 - (N / N_max)^10
    RESET(V > 0): E = (V - I R_series) / l_cell,             F = 1 - (N_min / N)^10
    γ = z_VO a E / (π ΔW_A)     (ΔW_A in V, signed E)
    ΔW_min/max = ΔW_A [sqrt(1 - γ²) ∓ γπ/2 + γ asin γ]
    dN/dt = -c_VO a ν0 F [exp(-ΔW_min/kT) - exp(-ΔW_max/kT)] / l_disc,   c_VO = (N_plug + N)/2

(signed γ: the bracket is positive at V > 0, so N falls in RESET and rises in SET; F is clipped
at 0 outside [N_min, N_max], as the Verilog-A's `trig` switch does).

Units: N and dN/dt in 1e26 m^-3 and 1e26 m^-3/s, V in V, I in A, T in K, G in S.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Physical constants (exact SI values, CODATA 2018).
E_CHARGE = 1.602176634e-19
"""Elementary charge e, C."""
K_B = 1.380649e-23
"""Boltzmann constant k, J/K."""
EPS0 = 8.8541878128e-12
"""Vacuum permittivity ε0, F/m."""
H_PLANCK = 6.62607015e-34
"""Planck constant h, J s."""

V_READ = 0.2
"""Default read voltage, V."""


@dataclass(frozen=True)
class JartFullParams:
    """Parameters of the full JART VCM v1b model (nominal device, device-model.md).

    Names follow Bengel et al. (2020) / the v1b Verilog-A.  Lengths in m, energies in eV,
    concentrations in 1e26 m^-3.
    """

    T0: float = 293.0  # ambient temperature, K
    eps: float = 17.0  # static relative permittivity of HfO2 (ε)
    eps_phiB: float = 5.5  # relative permittivity for image-force barrier lowering (ε_φB)
    phi_Bn0: float = 0.18  # nominal Schottky barrier height, eV
    phi_n: float = 0.1  # Fermi level to conduction band edge in the oxide, eV
    mu_n: float = 4e-6  # electron mobility, m²/(V s)
    A_star: float = 6.01e5  # effective Richardson constant A*, A/(m² K²)
    m_star: float = 9.10938e-31  # effective electron mass in the dielectric m*, kg
    z_VO: float = 2.0  # oxygen-vacancy charge number
    N_plug: float = 20.0  # vacancy concentration in the plug, 1e26 m^-3
    N_max: float = 20.0  # state-equation window, 1e26 m^-3
    N_min: float = 0.008
    a: float = 0.25e-9  # ion hopping distance, m
    nu0: float = 2e13  # attempt frequency, Hz
    dW_A: float = 1.35  # activation energy of ion hopping, eV
    r_nom: float = 45e-9  # nominal filament radius (R_th0 refers to it), m
    l_cell: float = 3e-9  # disc + plug length, m
    R_th0: float = 15.72e6  # thermal resistance of the filament, K/W
    R_th_reset_scale: float = 0.27  # R_th scaling for V > 0 (RESET)
    R_TiOx: float = 650.0  # series resistance of the TiOx layer, Ω
    R0: float = 719.2437  # line resistance at T0, Ω
    R_th_line: float = 90471.47  # thermal resistance of the line, K/W
    alpha_line: float = 3.92e-3  # temperature coefficient of the line resistance, 1/K


NOMINAL_FULL = JartFullParams()


@dataclass(frozen=True)
class OperatingPoint:
    """Self-consistent solution of the full model at one (N, V): arrays of the broadcast shape."""

    V_S: np.ndarray  # voltage over the Schottky interface, V
    I: np.ndarray  # device current, A
    T: np.ndarray  # filament temperature, K
    R_disc: np.ndarray  # Ω
    R_plug: np.ndarray  # Ω
    R_series: np.ndarray  # Ω, at the solution current
    residual: np.ndarray  # V - V_S - I (R_disc + R_plug + R_series), V
    converged: np.ndarray  # bool: V_S and T iterations met their tolerances


# --------------------------------------------------------------------------------------------
# Constitutive equations
# --------------------------------------------------------------------------------------------


def barrier_height(N: np.ndarray, V_S: np.ndarray, p: JartFullParams = NOMINAL_FULL
                   ) -> np.ndarray:
    """Image-force-lowered Schottky barrier φ_Bn in eV, eq. (2) of the module docstring.

    φ_Bn = φ_Bn0 - (e³ z_VO N ψ / (8π² (ε_φB ε0)³))^(1/4), ψ = φ_Bn0 - φ_n - V_S, for ψ > 0;
    φ_Bn = φ_Bn0 for ψ ≤ 0; clamped at 0 (as in the v1b Verilog-A).
    """
    psi = np.maximum(p.phi_Bn0 - p.phi_n - V_S, 0.0)
    eps_b = p.eps_phiB * EPS0
    lowering = (E_CHARGE**3 * p.z_VO * N * 1e26 * psi / (8.0 * np.pi**2 * eps_b**3)) ** 0.25
    return np.maximum(p.phi_Bn0 - lowering, 0.0)


def schottky_current(V_S: np.ndarray, N: np.ndarray, T: np.ndarray, area: np.ndarray,
                     p: JartFullParams = NOMINAL_FULL) -> np.ndarray:
    """Current through the Schottky interface (A) at interface voltage V_S, eqs. (3)/(4).

    TE (Richardson) for V_S ≥ 0, TFE (Padovani–Stratton form used by JART) for V_S < 0.
    ``area`` = π r² in m².  All arguments broadcast.
    """
    V_S = np.asarray(V_S, dtype=float)
    kT = K_B * T  # J
    phi = barrier_height(N, V_S, p)  # eV = V
    # Thermionic emission (V_S >= 0); the TFE branch is also evaluated, then selected.
    vs_pos = np.maximum(V_S, 0.0)
    i_te = area * p.A_star * T**2 * np.exp(-E_CHARGE * phi / kT) * np.expm1(E_CHARGE * vs_pos / kT)
    # Thermionic-field emission (V_S < 0).
    E00 = (E_CHARGE * H_PLANCK / (4.0 * np.pi)) * np.sqrt(
        p.z_VO * N * 1e26 / (p.m_star * p.eps * EPS0))
    x = E00 / kT
    tanh_x = np.tanh(x)
    E0 = E00 / tanh_x
    # x - tanh x, with its series for small x (cancellation; x ≈ 0.2 at N = 0.008, 293 K).
    x_minus_tanh = np.where(x > 1e-2, x - tanh_x, x**3 / 3.0 - 2.0 * x**5 / 15.0)
    eps_prime = E00 / x_minus_tanh
    vs_abs = np.abs(np.minimum(V_S, 0.0))
    i_tfe = -(area * p.A_star * T / K_B
              * np.sqrt(np.pi * E00 * E_CHARGE * (vs_abs + phi / np.cosh(np.minimum(x, 300.0))**2))
              * np.exp(-E_CHARGE * phi / E0) * np.expm1(E_CHARGE * vs_abs / eps_prime))
    return np.where(V_S < 0.0, i_tfe, i_te)


def disc_resistance(N: np.ndarray, area: np.ndarray, l_disc: np.ndarray,
                    p: JartFullParams = NOMINAL_FULL) -> np.ndarray:
    """R_disc = l_disc / (z_VO e μ_n N A), Ω (N in 1e26 m^-3)."""
    return l_disc / (p.z_VO * E_CHARGE * p.mu_n * N * 1e26 * area)


def plug_resistance(area: np.ndarray, l_disc: np.ndarray, p: JartFullParams = NOMINAL_FULL
                    ) -> np.ndarray:
    """R_plug = (l_cell - l_disc) / (z_VO e μ_n N_plug A), Ω."""
    return (p.l_cell - l_disc) / (p.z_VO * E_CHARGE * p.mu_n * p.N_plug * 1e26 * area)


def series_resistance(I: np.ndarray, p: JartFullParams = NOMINAL_FULL) -> np.ndarray:
    """R_series(I) = R_TiOx + R0 (1 + R0 α_line I² R_th,line), Ω (Joule-heated lines)."""
    return p.R_TiOx + p.R0 * (1.0 + p.R0 * p.alpha_line * I * I * p.R_th_line)


# --------------------------------------------------------------------------------------------
# Implicit solve
# --------------------------------------------------------------------------------------------

_VS_ITER = 200  # max Illinois/bisection iterations for V_S (typically ~10-20 are used)
_T_ITER = 200  # max fixed-point iterations for T (typically ~5-15)
_T_RTOL = 1e-12  # relative tolerance of the temperature fixed point


def _vs_grid(V: np.ndarray, p: JartFullParams) -> np.ndarray:
    """Scan grid of V_S in [0, V] for V > 0 (rows = elements), dense near V_S = φ_Bn0 - φ_n.

    The V > 0 circuit residual can have three roots, the lower two within a few mV of
    V_S = φ_Bn0 - φ_n when V is close to the fold; a log-clustered grid there separates them.
    """
    v_c = p.phi_Bn0 - p.phi_n
    lin = np.linspace(0.0, 1.0, 41)
    clustered = v_c * (1.0 - np.logspace(-0.3, -9.0, 40))
    upper = v_c + np.linspace(0.0, 1.0, 25)[None, :] * np.maximum(V[:, None] - v_c, 0.0)
    lower = np.concatenate([lin * v_c, clustered])[None, :].repeat(V.size, axis=0)
    grid = np.concatenate([lower, upper], axis=1)
    grid = np.sort(np.minimum(grid, V[:, None]), axis=1)
    return grid


def _residual(V_S, V, N, T, area, R_fixed, p):
    """Circuit residual f(V_S) = V - V_S - I (R_disc + R_plug + R_series(I)) and I."""
    I = schottky_current(V_S, N, T, area, p)
    return V - V_S - I * (R_fixed + series_resistance(I, p)), I


def _solve_vs(V, N, T, area, R_fixed, p):
    """Lowest root V_S of the circuit equation (1) at fixed T, for 1-D arrays (V != 0).

    Bracket: f(0) = V and f(V) = -I(V) R has the opposite sign, so a root lies between 0 and V.
    For V > 0 the first sign change on a scan grid gives the lowest root's bracket; then
    Illinois false position with a bisection step every third iteration (guaranteed
    convergence, superlinear in practice) narrows it to machine precision.
    Returns (V_S, I, converged).
    """
    n = V.size
    lo = np.minimum(V, 0.0)  # V < 0: [V, 0]
    hi = np.maximum(V, 0.0)  # V > 0: [0, V] before the scan
    pos = V > 0
    if np.any(pos):
        idx = np.flatnonzero(pos)
        grid = _vs_grid(V[idx], p)
        V_c, N_c, T_c, area_c, R_c = (a[idx][:, None] for a in (V, N, T, area, R_fixed))
        f_grid, _ = _residual(grid, V_c, N_c, T_c, area_c, R_c, p)
        # f > 0 at V_S = 0; the first grid point where f <= 0 closes the bracket.
        nonpos = f_grid <= 0.0
        first = np.argmax(nonpos, axis=1)
        first = np.where(nonpos.any(axis=1), first, grid.shape[1] - 1)
        rows = np.arange(idx.size)
        hi[idx] = grid[rows, first]
        lo[idx] = grid[rows, np.maximum(first - 1, 0)]
    f_lo, _ = _residual(lo, V, N, T, area, R_fixed, p)
    f_hi, _ = _residual(hi, V, N, T, area, R_fixed, p)
    done = np.zeros(n, dtype=bool)
    side = np.zeros(n, dtype=int)  # Illinois: which end was retained last time
    scale = np.abs(V)
    for it in range(_VS_ITER):
        width = hi - lo
        done = done | (width <= 4e-16 * np.maximum(np.abs(lo), np.abs(hi)) + 1e-300)
        if done.all():
            break
        denom = f_lo - f_hi
        safe = np.where(denom != 0.0, denom, 1.0)
        x_fp = np.where(denom != 0.0, lo + f_lo * width / safe, 0.5 * (lo + hi))
        inside = (x_fp > lo) & (x_fp < hi)
        x_new = np.where(inside & (it % 3 != 2), x_fp, 0.5 * (lo + hi))
        f_new, _ = _residual(x_new, V, N, T, area, R_fixed, p)
        exact = f_new == 0.0
        same_as_lo = np.sign(f_new) == np.sign(f_lo)
        # Replace the end with the same sign; halve the stale end's value (Illinois).
        new_lo = np.where(same_as_lo, x_new, lo)
        new_hi = np.where(same_as_lo, hi, x_new)
        new_f_lo = np.where(same_as_lo, f_new, np.where(side == -1, 0.5 * f_lo, f_lo))
        new_f_hi = np.where(same_as_lo, np.where(side == 1, 0.5 * f_hi, f_hi), f_new)
        side = np.where(same_as_lo, 1, -1)
        upd = ~done
        lo = np.where(upd, np.where(exact, x_new, new_lo), lo)
        hi = np.where(upd, np.where(exact, x_new, new_hi), hi)
        f_lo = np.where(upd, np.where(exact, 0.0, new_f_lo), f_lo)
        f_hi = np.where(upd, np.where(exact, 0.0, new_f_hi), f_hi)
        done = done | (upd & (exact | (np.abs(f_new) <= 1e-15 * scale)))
    # Return whichever bracket end has the smaller residual (both within ~1 ulp of the root).
    f_lo_true, I_lo = _residual(lo, V, N, T, area, R_fixed, p)
    f_hi_true, I_hi = _residual(hi, V, N, T, area, R_fixed, p)
    take_lo = np.abs(f_lo_true) <= np.abs(f_hi_true)
    V_S = np.where(take_lo, lo, hi)
    I = np.where(take_lo, I_lo, I_hi)
    return V_S, I, done


def _thermal_resistance(V, r, p):
    """R_th,eff = R_th0 (r_nom/r)² × (0.27 if V > 0), K/W (selected by the applied voltage)."""
    return p.R_th0 * (p.r_nom / r) ** 2 * np.where(V > 0, p.R_th_reset_scale, 1.0)


def operating_point(N, V, *, r=45e-9, l_disc=0.4e-9, T0=None,
                    params: JartFullParams = NOMINAL_FULL) -> OperatingPoint:
    """Self-consistent (V_S, I, T) of the full model for arrays of N and V (broadcast).

    Outer loop: T ← T + ω (T0 + R_th,eff |I(T) (V - I R_series)| - T), eq. (5), with the
    damping ω from a secant estimate of the map's slope (ω = 1/(1 - slope), clipped to
    [0.05, 1]), safeguarded by a bracket [T_lo, T_hi] of the temperature (T_lo = T0; T_hi from
    the maximum power a source V can deliver through R_series ≥ R_TiOx + R0: V²/(4 R_series)).
    Inner loop: V_S at fixed T by :func:`_solve_vs`.  Starting at T0, the iteration reaches the
    lowest self-consistent temperature (the branch a ramp from 0 V reaches).
    """
    p = params
    T0 = p.T0 if T0 is None else float(T0)
    N, V, r, l_disc = np.broadcast_arrays(*(np.asarray(a, dtype=float)
                                            for a in (N, V, r, l_disc)))
    shape = N.shape
    N, V, r, l_disc = (a.ravel().copy() for a in (N, V, r, l_disc))
    if np.any(N <= 0):
        raise ValueError("N must be positive")
    area = np.pi * r * r
    R_disc = disc_resistance(N, area, l_disc, p)
    R_plug = plug_resistance(area, l_disc, p)
    R_fixed = R_disc + R_plug
    R_th = _thermal_resistance(V, r, p)

    n = N.size
    V_S = np.zeros(n)
    I = np.zeros(n)
    T = np.full(n, T0)
    conv_vs = np.ones(n, dtype=bool)
    conv_T = np.ones(n, dtype=bool)
    act = np.flatnonzero(V != 0.0)
    if act.size:
        Va, Na, ra, Rf, Rth = V[act], N[act], area[act], R_fixed[act], R_th[act]
        T_lo = np.full(act.size, T0)
        T_hi = T0 + Rth * Va * Va / (4.0 * (p.R_TiOx + p.R0)) + 1.0
        Ta = np.full(act.size, T0)
        h_prev = np.full(act.size, np.nan)
        T_prev = np.full(act.size, np.nan)
        done = np.zeros(act.size, dtype=bool)
        vs_a = np.zeros(act.size)
        i_a = np.zeros(act.size)
        ok_vs = np.zeros(act.size, dtype=bool)
        for _ in range(_T_ITER):
            w = np.flatnonzero(~done)
            if w.size == 0:
                break
            vs_w, i_w, ok_w = _solve_vs(Va[w], Na[w], Ta[w], ra[w], Rf[w], p)
            vs_a[w], i_a[w], ok_vs[w] = vs_w, i_w, ok_w
            power = np.abs(i_w * (Va[w] - i_w * series_resistance(i_w, p)))
            h = T0 + Rth[w] * power - Ta[w]  # fixed-point defect
            conv = np.abs(h) <= _T_RTOL * Ta[w]
            done[w[conv]] = True
            T_lo[w] = np.where(h > 0, np.maximum(T_lo[w], Ta[w]), T_lo[w])
            T_hi[w] = np.where(h < 0, np.minimum(T_hi[w], Ta[w]), T_hi[w])
            # Damping from the secant slope s of the map T -> T + h: ω = 1 / (1 - s).
            dT = Ta[w] - T_prev[w]
            slope = np.where(np.isfinite(dT) & (dT != 0.0),
                             1.0 + (h - h_prev[w]) / np.where(dT != 0.0, dT, 1.0), 0.0)
            omega = np.clip(1.0 / np.maximum(1.0 - slope, 1e-12), 0.05, 1.0)
            T_new = Ta[w] + omega * h
            bad = ~((T_new > T_lo[w]) & (T_new < T_hi[w])) & ~conv
            T_new = np.where(bad, 0.5 * (T_lo[w] + T_hi[w]), T_new)
            T_prev[w], h_prev[w] = Ta[w], h
            Ta[w] = np.where(conv, Ta[w], T_new)
        V_S[act], I[act], T[act] = vs_a, i_a, Ta
        conv_vs[act], conv_T[act] = ok_vs, done
    R_series = series_resistance(I, p)
    residual = V - V_S - I * (R_fixed + R_series)
    return OperatingPoint(
        V_S=V_S.reshape(shape), I=I.reshape(shape), T=T.reshape(shape),
        R_disc=R_disc.reshape(shape), R_plug=R_plug.reshape(shape),
        R_series=R_series.reshape(shape), residual=residual.reshape(shape),
        converged=(conv_vs & conv_T).reshape(shape),
    )


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def full_current(N, V, *, r=45e-9, l_disc=0.4e-9, T0=293.0,
                 params: JartFullParams = NOMINAL_FULL) -> tuple[np.ndarray, np.ndarray]:
    """Current I (A) and filament temperature T (K) of the full JART v1b model.

    Solves V = V_S + I (R_disc + R_plug + R_series(I)) with the Schottky current of the module
    docstring (TE for V_S ≥ 0, TFE for V_S < 0) and T = T0 + |I (V - I R_series)| R_th,eff,
    for arrays of N (1e26 m^-3), V (V), r (m) and l_disc (m), broadcast.
    """
    op = operating_point(N, V, r=r, l_disc=l_disc, T0=T0, params=params)
    return op.I, op.T


def rate_from_operating_point(N, V, op: OperatingPoint, *, N_max=20.0, N_min=0.008,
                              l_disc=0.4e-9, params: JartFullParams = NOMINAL_FULL
                              ) -> np.ndarray:
    """dN/dt (1e26 m^-3/s) from a solved operating point (state equation of the docstring).

    Field: SET E = I R_disc / l_disc, RESET E = (V - I R_series) / l_cell (signed); Mott–Gurney
    hopping with γ = z_VO a E / (π ΔW_A); window F clipped at 0; c_VO = (N_plug + N)/2.
    """
    p = params
    N, V, N_max, N_min, l_disc = np.broadcast_arrays(
        *(np.asarray(a, dtype=float) for a in (N, V, N_max, N_min, l_disc)))
    is_set = V < 0
    E_set = op.I * op.R_disc / l_disc
    E_reset = (V - op.I * op.R_series) / p.l_cell
    E = np.where(is_set, E_set, E_reset)
    gamma = np.clip(p.z_VO * p.a * E / (np.pi * p.dW_A), -1.0, 1.0)
    common = np.sqrt(1.0 - gamma * gamma) + gamma * np.arcsin(gamma)
    dW_min = p.dW_A * (common - gamma * np.pi / 2.0)  # eV
    dW_max = p.dW_A * (common + gamma * np.pi / 2.0)
    kT_eV = K_B * op.T / E_CHARGE
    hop = np.exp(-dW_min / kT_eV) - np.exp(-dW_max / kT_eV)  # sign of E
    window = np.where(is_set, 1.0 - (N / N_max) ** 10, 1.0 - (N_min / N) ** 10)
    window = np.maximum(window, 0.0)
    c_VO = 0.5 * (p.N_plug + N)
    rate = -c_VO * p.a * p.nu0 * window * hop / l_disc
    return np.where(V == 0.0, 0.0, rate)


def full_rate(N, V, *, N_max=20.0, N_min=0.008, r=45e-9, l_disc=0.4e-9, T0=293.0,
              params: JartFullParams = NOMINAL_FULL) -> np.ndarray:
    """dN/dt in 1e26 m^-3/s of the full model (positive for SET at V < 0, negative at V > 0).

    The state equation is the simplified model's (device-model.md "State equation") evaluated
    with the full model's self-consistent current and temperature; see the module docstring.
    """
    op = operating_point(N, V, r=r, l_disc=l_disc, T0=T0, params=params)
    return rate_from_operating_point(N, V, op, N_max=N_max, N_min=N_min, l_disc=l_disc,
                                     params=params)


def full_conductance(N, v_read=V_READ, *, r=45e-9, l_disc=0.4e-9, T0=293.0,
                     params: JartFullParams = NOMINAL_FULL) -> np.ndarray:
    """Read conductance G = I(v_read, N) / v_read in S of the full model."""
    I, _ = full_current(N, v_read, r=r, l_disc=l_disc, T0=T0, params=params)
    return I / v_read

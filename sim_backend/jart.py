"""Simplified JART VCM v1b model (valence-change memristor), vectorised over devices.

State N: oxygen-vacancy concentration of the disc in units of 1e26 m^-3. Observable
G = I(V_read, N) / V_read at V_read = +0.2 V.

Sign convention: **SET (N and G rise) at negative V, RESET (N and G fall) at positive V.**

Sources: Yu, Menzel, Strachan, Neftci, "Integration of physics-derived memristor models with
machine learning frameworks", Asilomar 2022 (the simplified, explicit current fit used by IBM
aihwkit's JARTv1b device); Bengel et al., IEEE TCAS-I 67(12):4618 (2020) for the full JART VCM
v1b model and its state equation. Figures and constants: ``shared/reference/device-model.md``.

Simplified current (N in 1e26 m^-3, V in V, I in A)::

    V < 0:  I = -[(α1+α0)/(1+exp(-(V+α2)/α3)) - α0]
                - [β1(1-exp(-V)) - β0 V] / (1 + (c(V)/N)^d(V))^f(V)
    V >= 0: I = g(V) / (1 + h(V) (N/N_min,nom)^(-j0))^(1/k0)

State equation (both model variants)::

    R_series = R_TiOx + R0 (1 + R0 α_line I² R_th,line),  V_series = I R_series
    T        = T0 + |I (V - V_series)| R_th0 (r_nom/r)² (×0.27 for RESET)
    E        = I / (z e μn N A)           (SET: V_disc / l_disc)
             = (V - V_series) / l_cell    (RESET)
    γ        = z a |E| / (π ΔW_A)
    ΔW_min/max = ΔW_A [sqrt(1-γ²) ∓ γπ/2 + γ asin γ]
    F        = 1 - (N/N_max)^10 (SET),  1 - (N_min/N)^10 (RESET)
    dN/dt    = ± c_VO a ν0 F [exp(-ΔW_min/kT) - exp(-ΔW_max/kT)] / l_disc,  c_VO = (N_plug + N)/2
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Physical constants (CODATA 2018, exact SI values).
E_CHARGE = 1.602176634e-19
"""Elementary charge, C."""
K_B = 1.380649e-23
"""Boltzmann constant, J/K."""
K_B_EV = K_B / E_CHARGE
"""Boltzmann constant, eV/K."""

V_READ = 0.2
"""Default read voltage, V."""
V_SET_MIN = -0.9
"""Most negative pulse voltage the fitted current is validated for, V."""
V_RESET_MAX = 1.3
"""Most positive pulse voltage the fitted current is validated for, V."""


@dataclass(frozen=True)
class JartConstants:
    """Nominal physical parameters of the JART VCM v1b device (device-model.md)."""

    T0: float = 293.0  # ambient temperature, K
    N_max: float = 20.0  # window of the state equation, 1e26 m^-3
    N_min: float = 0.008
    N_plug: float = 20.0
    N_lo: float = 0.06  # operating bounds (hard clamp of the simplified model)
    N_hi: float = 1.9897452127440086
    a: float = 0.25e-9  # hopping distance, m
    nu0: float = 2e13  # attempt frequency, Hz
    dWA: float = 1.35  # activation energy, eV
    z_VO: float = 2.0  # oxygen-vacancy charge number
    r: float = 45e-9  # filament radius, m
    l_disc: float = 0.4e-9  # disc length, m
    l_cell: float = 3e-9  # cell length, m
    mu_n: float = 4e-6  # electron mobility, m^2/(V s)
    R_th0: float = 15.72e6  # thermal resistance, K/W
    R_th_reset_scale: float = 0.27  # R_th scaling for RESET
    R_TiOx: float = 650.0  # series resistance of the TiOx layer, Ohm
    R0: float = 719.2437  # line resistance at T0, Ohm
    R_th_line: float = 90471.47  # thermal resistance of the line, K/W
    alpha_line: float = 3.92e-3  # temperature coefficient of the line, 1/K


@dataclass(frozen=True)
class FitConstants:
    """Constants of the simplified explicit current fit (Yu et al. 2022)."""

    alpha0: float = 4.81951e-5
    alpha2: float = 1.03685
    alpha3: float = 0.34567
    beta0: float = 7.0526e-4
    beta1: float = 4.2383e-5
    c0: float = 4.004
    c1: float = 2.8646
    c2: float = 4.2125
    c3: float = 1.4134
    d0: float = 6.6103
    d1: float = 1.4524
    d2: float = 7.4235
    d3: float = 4.0585
    f0: float = 6.326e-4
    f1: float = 1.4711
    f2: float = 0.5199
    f3: float = 1.561
    g0: float = 4.84e-3
    g1: float = 0.1353
    h0: float = 5.548
    h1: float = 6.8648
    h2: float = 51.586
    h3: float = 0.36
    j0: float = 1.054
    k0: float = 1.0526
    N_min_nom: float = 0.008  # the fit's reference N_min: fixed, even when a device's N_min varies


NOMINAL = JartConstants()
FIT = FitConstants()
N_LO = NOMINAL.N_lo
N_HI = NOMINAL.N_hi


@dataclass(frozen=True)
class DeviceParams:
    """The parameters that vary from device to device (and cycle to cycle), as arrays.

    Any field may be a scalar or an array broadcastable against the state array.
    """

    N_max: np.ndarray | float = NOMINAL.N_max
    N_min: np.ndarray | float = NOMINAL.N_min
    r: np.ndarray | float = NOMINAL.r
    l_disc: np.ndarray | float = NOMINAL.l_disc

    def take(self, index: np.ndarray) -> DeviceParams:
        """The parameters of a subset of devices (flat ``index`` into 1-D parameter arrays)."""
        return DeviceParams(
            **{k: _take(getattr(self, k), index) for k in ("N_max", "N_min", "r", "l_disc")}
        )


def _take(value: np.ndarray | float, index: np.ndarray) -> np.ndarray | float:
    return np.asarray(value)[index] if np.ndim(value) else value


NOMINAL_DEVICE = DeviceParams()


# --------------------------------------------------------------------------------------------
# Current: the voltage-dependent coefficients are computed once per pulse (V is constant during
# a rectangular pulse), the N-dependent part at every integration step.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SetCoefficients:
    """V-dependent coefficients of the SET-side (V < 0) current: I = -A - B / (1+(c/N)^d)^f."""

    A: np.ndarray
    B: np.ndarray
    c: np.ndarray
    d: np.ndarray
    f: np.ndarray

    def take(self, index: np.ndarray) -> SetCoefficients:
        return SetCoefficients(self.A[index], self.B[index], self.c[index], self.d[index],
                               self.f[index])


@dataclass(frozen=True)
class ResetCoefficients:
    """V-dependent coefficients of the V ≥ 0 current: I = g / (1 + h (N/N_min,nom)^-j0)^(1/k0)."""

    g: np.ndarray
    h: np.ndarray

    def take(self, index: np.ndarray) -> ResetCoefficients:
        return ResetCoefficients(self.g[index], self.h[index])


def set_coefficients(V: np.ndarray, fit: FitConstants = FIT) -> SetCoefficients:
    """Coefficients of the simplified SET-side current for V < 0 (array)."""
    V = np.asarray(V, dtype=float)
    alpha1 = fit.alpha0 * np.exp(-fit.alpha2 / fit.alpha3)
    A = (alpha1 + fit.alpha0) / (1.0 + np.exp(-(V + fit.alpha2) / fit.alpha3)) - fit.alpha0
    B = fit.beta1 * (1.0 - np.exp(-V)) - fit.beta0 * V
    c = fit.c2 * np.exp(-V / fit.c3) + fit.c1 * V - fit.c0
    d = fit.d2 * np.exp(-V / fit.d3) + fit.d1 * V - fit.d0
    f = fit.f0 + (fit.f1 - fit.f0) / (1.0 + (-V / fit.f2) ** fit.f3)
    return SetCoefficients(A, B, c, d, f)


def reset_coefficients(V: np.ndarray, fit: FitConstants = FIT) -> ResetCoefficients:
    """Coefficients of the simplified current for V ≥ 0 (array)."""
    V = np.asarray(V, dtype=float)
    g = -fit.g0 * (np.exp(-fit.g1 * V) - 1.0)
    h = fit.h0 + fit.h1 * V + fit.h2 * np.exp(-fit.h3 * V)
    return ResetCoefficients(g, h)


def current_set(N: np.ndarray, k: SetCoefficients) -> np.ndarray:
    """SET-side current (A, negative) of devices in state N for precomputed coefficients."""
    return -k.A - k.B / (1.0 + (k.c / N) ** k.d) ** k.f


def current_reset(N: np.ndarray, k: ResetCoefficients, fit: FitConstants = FIT) -> np.ndarray:
    """Current (A, positive) for V ≥ 0 of devices in state N for precomputed coefficients."""
    return k.g / (1.0 + k.h * (N / fit.N_min_nom) ** (-fit.j0)) ** (1.0 / fit.k0)


def current(N: np.ndarray, V: np.ndarray | float, params: FitConstants = FIT) -> np.ndarray:
    """Device current I(V, N) in A of the simplified JART v1b model, for arrays of N and V.

    N in 1e26 m^-3, V in volts (broadcast). See the module docstring for the equations.
    """
    N, V = np.broadcast_arrays(np.asarray(N, dtype=float), np.asarray(V, dtype=float))
    out = np.empty(N.shape, dtype=float)
    neg = V < 0
    if np.any(neg):
        out[neg] = current_set(N[neg], set_coefficients(V[neg], params))
    pos = ~neg
    if np.any(pos):
        out[pos] = current_reset(N[pos], reset_coefficients(V[pos], params), params)
    return out


def conductance(N: np.ndarray, v_read: float = V_READ) -> np.ndarray:
    """Read conductance G = I(v_read, N) / v_read in S."""
    return current(N, v_read) / v_read


def state_for_conductance(G: np.ndarray, v_read: float = V_READ, fit: FitConstants = FIT
                          ) -> np.ndarray:
    """Inverse of :func:`conductance` for v_read > 0: the N whose read conductance is G (S).

    Closed form of the V ≥ 0 branch: N = N_min,nom ((g/I)^k0 - 1) / h)^(-1/j0), I = G v_read.
    """
    if v_read <= 0:
        raise ValueError("v_read: the closed-form inverse needs a positive read voltage")
    k = reset_coefficients(np.asarray(v_read, dtype=float), fit)
    I = np.asarray(G, dtype=float) * v_read
    return fit.N_min_nom * (((k.g / I) ** fit.k0 - 1.0) / k.h) ** (-1.0 / fit.j0)


# --------------------------------------------------------------------------------------------
# State equation
# --------------------------------------------------------------------------------------------


def rate_from_current(
    N: np.ndarray,
    V: np.ndarray,
    I: np.ndarray,
    params: DeviceParams = NOMINAL_DEVICE,
    const: JartConstants = NOMINAL,
) -> np.ndarray:
    """dN/dt in 1e26 m^-3/s for devices in state N under applied V carrying current I.

    Shared by the simplified and the full model (they differ only in how I is obtained).
    Positive for SET (V < 0), negative for RESET (V > 0), zero at V = 0.
    """
    N = np.asarray(N, dtype=float)
    V = np.asarray(V, dtype=float)
    I = np.asarray(I, dtype=float)
    is_set = V < 0
    r = np.asarray(params.r, dtype=float)
    area = np.pi * r * r
    R_series = const.R_TiOx + const.R0 * (1.0 + const.R0 * const.alpha_line * I * I
                                          * const.R_th_line)
    V_cell = V - I * R_series  # voltage across the cell once the series drop is removed
    thermal = np.where(is_set, 1.0, const.R_th_reset_scale)
    T = const.T0 + np.abs(I * V_cell) * const.R_th0 * (const.r / r) ** 2 * thermal
    # SET: field over the disc, V_disc / l_disc = I R_disc / l_disc = I / (z e μn N A).
    E_set = I / (const.z_VO * E_CHARGE * const.mu_n * 1e26 * N * area)
    E_reset = V_cell / const.l_cell
    E = np.where(is_set, E_set, E_reset)
    gamma = np.minimum(const.z_VO * const.a * np.abs(E) / (np.pi * const.dWA), 1.0)
    base = np.sqrt(1.0 - gamma * gamma) + gamma * np.arcsin(gamma)
    half = gamma * (np.pi / 2.0)
    kT = K_B_EV * T
    hop = np.exp(-const.dWA * (base - half) / kT) - np.exp(-const.dWA * (base + half) / kT)
    window = np.where(
        is_set,
        1.0 - (N / params.N_max) ** 10,
        1.0 - (params.N_min / N) ** 10,
    )
    c_VO = 0.5 * (const.N_plug + N)
    l_disc = np.asarray(params.l_disc, dtype=float)
    magnitude = c_VO * const.a * const.nu0 * window * hop / l_disc
    return np.where(is_set, magnitude, np.where(V > 0, -magnitude, 0.0))


def rate(
    N: np.ndarray,
    V: np.ndarray,
    params: DeviceParams = NOMINAL_DEVICE,
    const: JartConstants = NOMINAL,
) -> np.ndarray:
    """dN/dt (1e26 m^-3/s) of the simplified model for arrays of N and V (broadcast)."""
    N, V = np.broadcast_arrays(np.asarray(N, dtype=float), np.asarray(V, dtype=float))
    return rate_from_current(N, V, current(N, V), params, const)

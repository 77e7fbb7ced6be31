"""Tests of the full (implicit) JART VCM v1b reference model and its comparison with the
simplified model (sim_backend.jart).

Oracles: device-model.md "Validation targets" (G full at 0.2 V) and the project acceptance
"simplified vs full model within 10 % in G and dN/dt at the listed points", asserted where it
truly holds (see SIMPLIFIED_RATE_DISAGREES for the points where it does not, with numbers).
"""

from __future__ import annotations

import numpy as np
import pytest

from sim_backend import jart
from sim_backend.jart_full import (
    NOMINAL_FULL,
    full_conductance,
    full_current,
    full_rate,
    operating_point,
    schottky_current,
    series_resistance,
)

# device-model.md, "G full (µS)" at V_read = 0.2 V, nominal device.
G_FULL_ORACLE_US = {0.008: 15.25, 0.06: 100.15, 0.3: 309.6, 1.0: 479.9, 1.9897: 543.4,
                    20.0: 617.7}

N_POINTS = (0.06, 0.3, 1.0, 1.9897)
V_POINTS = (-0.342, -0.4, -0.5, 0.7065, 0.9, 1.1)

# (N, V) points where |dN/dt simplified / dN/dt full - 1| > 10 %: measured values (sim_backend.jart
# as of writing). The fitted current is 1-4 % off the full current there (e.g. -3.3 % at
# N = 0.06, V = -0.342 V), and dN/dt amplifies current errors 10-34× (Joule heating in the
# Arrhenius hopping rate, ΔW_A/kT ≈ 25-45; at high N the cell is past its maximum-power point,
# so the sign of the sensitivity flips). The state equations of the two models agree to 1e-9
# given the same current (test_state_equation_matches_simplified), so these differences are the
# fit's, not the full model's. Left out of the 10 % assertion on purpose.
SIMPLIFIED_RATE_DISAGREES = {
    (0.06, -0.342): -0.350, (0.06, -0.4): -0.347, (0.06, -0.5): -0.335,
    (0.06, 0.7065): -0.321, (0.06, 0.9): -0.291, (0.06, 1.1): -0.241,
    (1.0, -0.342): +0.122, (1.0, -0.4): +0.107,
    (1.9897, -0.342): +0.217, (1.9897, -0.4): +0.201, (1.9897, -0.5): +0.176,
    (1.9897, 0.7065): -0.129,
}
RATE_AGREES = [(n, v) for n in N_POINTS for v in V_POINTS
               if (n, v) not in SIMPLIFIED_RATE_DISAGREES]


def test_g_full_matches_device_model_table():
    N = np.array(list(G_FULL_ORACLE_US))
    G_us = full_conductance(N) * 1e6
    expected = np.array(list(G_FULL_ORACLE_US.values()))
    # The oracle asks for ~5 % (10 % at most); the implementation reproduces it to < 0.05 %.
    np.testing.assert_allclose(G_us, expected, rtol=0.01)


def test_simplified_vs_full_conductance_within_10_percent():
    N = np.array(N_POINTS)
    G_full = full_conductance(N)
    G_simp = jart.conductance(N)
    rel = np.abs(G_simp / G_full - 1.0)
    assert np.all(rel < 0.10), dict(zip(N_POINTS, rel, strict=True))


def test_simplified_vs_full_current_within_5_percent_at_pulse_points():
    NN, VV = np.meshgrid(N_POINTS, V_POINTS, indexing="ij")
    I_full, _ = full_current(NN, VV)
    I_simp = jart.current(NN, VV)
    assert np.all(np.abs(I_simp / I_full - 1.0) < 0.05)


def test_simplified_vs_full_rate_within_10_percent_where_the_fit_holds():
    N = np.array([p[0] for p in RATE_AGREES])
    V = np.array([p[1] for p in RATE_AGREES])
    r_full = full_rate(N, V)
    r_simp = jart.rate(N, V)
    rel = r_simp / r_full - 1.0
    assert np.all(np.abs(rel) < 0.10), dict(zip(RATE_AGREES, np.round(rel, 3), strict=True))


def test_rate_disagreement_table_is_current():
    """The documented disagreements are real (so the exclusion list cannot silently go stale)."""
    pts = list(SIMPLIFIED_RATE_DISAGREES)
    N = np.array([p[0] for p in pts])
    V = np.array([p[1] for p in pts])
    rel = jart.rate(N, V) / full_rate(N, V) - 1.0
    expected = np.array(list(SIMPLIFIED_RATE_DISAGREES.values()))
    if np.all(np.abs(rel) < 0.10):
        pytest.fail("the simplified model now agrees everywhere: move these points into "
                    "the 10 % assertion")
    np.testing.assert_allclose(rel, expected, atol=0.02)


def test_state_equation_matches_simplified():
    """Given the same current, both models' dN/dt are the same function (device-model.md)."""
    rate_from_current = getattr(jart, "rate_from_current", None)
    if rate_from_current is None:
        pytest.skip("sim_backend.jart.rate_from_current not available")
    NN, VV = np.meshgrid(N_POINTS, V_POINTS, indexing="ij")
    op = operating_point(NN, VV)
    np.testing.assert_allclose(rate_from_current(NN, VV, op.I), full_rate(NN, VV), rtol=1e-9)


def test_implicit_solve_converges():
    N = np.geomspace(0.004, 22.0, 25)[:, None]
    V = np.linspace(-1.0, 1.4, 41)[None, :]
    V = V[V != 0.0][None, :]
    op = operating_point(N, V)
    assert op.converged.all()
    V_b = np.broadcast_to(V, op.I.shape)
    N_b = np.broadcast_to(N, op.I.shape)
    # Circuit equation (1), recomputed from scratch at the returned V_S and T.
    area = np.pi * (45e-9) ** 2
    I = schottky_current(op.V_S, N_b, op.T, area)
    np.testing.assert_array_equal(I, op.I)
    resid = V_b - op.V_S - I * (op.R_disc + op.R_plug + series_resistance(I))
    assert np.max(np.abs(resid / V_b)) < 1e-9
    # Temperature fixed point (5).
    p = NOMINAL_FULL
    R_th = p.R_th0 * np.where(V_b > 0, p.R_th_reset_scale, 1.0)
    T_map = p.T0 + R_th * np.abs(I * (V_b - I * series_resistance(I)))
    assert np.max(np.abs(T_map / op.T - 1.0)) < 1e-9


def test_lowest_root_is_selected_for_positive_voltage():
    """For V > 0 the residual is positive on [0, V_S): V_S is the lowest root (ramp branch)."""
    N = np.array([0.008, 0.06, 0.3, 1.0, 1.9897, 20.0])[:, None]
    V = np.array([0.2, 0.7065, 1.1])[None, :]
    op = operating_point(N, V)
    frac = np.linspace(0.0, 1.0, 2001)[:-1]
    vs = op.V_S[..., None] * frac
    area = np.pi * (45e-9) ** 2
    Nb = np.broadcast_to(N, op.I.shape)[..., None]
    Vb = np.broadcast_to(V, op.I.shape)[..., None]
    I = schottky_current(vs, Nb, op.T[..., None], area)
    f = Vb - vs - I * (op.R_disc[..., None] + op.R_plug[..., None] + series_resistance(I))
    assert np.all(f > 0)


def test_array_call_equals_elementwise_calls():
    N = np.array([0.008, 0.06, 0.3, 1.0, 1.9897, 20.0, 0.5])
    V = np.array([0.2, -0.342, -0.5, 0.7065, 1.1, -0.9, 0.0])
    r = np.array([45e-9, 40.5e-9, 49.5e-9, 45e-9, 42e-9, 45e-9, 45e-9])
    l_disc = np.array([0.4e-9, 0.44e-9, 0.36e-9, 0.4e-9, 0.4e-9, 0.38e-9, 0.4e-9])
    I, T = full_current(N, V, r=r, l_disc=l_disc)
    rate = full_rate(N, V, r=r, l_disc=l_disc)
    for k in range(N.size):
        Ik, Tk = full_current(N[k], V[k], r=r[k], l_disc=l_disc[k])
        assert np.ndim(Ik) == 0
        np.testing.assert_allclose(Ik, I[k], rtol=1e-12, atol=0.0)
        np.testing.assert_allclose(Tk, T[k], rtol=1e-12)
        np.testing.assert_allclose(full_rate(N[k], V[k], r=r[k], l_disc=l_disc[k]), rate[k],
                                   rtol=1e-10, atol=0.0)
    # Broadcasting: (4, 1) × (6,) -> (4, 6).
    grid, _ = full_current(np.array(N_POINTS)[:, None], np.array(V_POINTS))
    assert grid.shape == (4, 6)
    np.testing.assert_allclose(grid[2, 4], full_current(N_POINTS[2], V_POINTS[4])[0], rtol=1e-12)


def test_signs_and_zero_bias():
    N = np.array(N_POINTS)[:, None]
    V = np.array([-0.5, 0.0, 0.9])
    I, T = full_current(N, V)
    rate = full_rate(N, V)
    assert np.all(I[:, 0] < 0) and np.all(I[:, 2] > 0)
    assert np.all(I[:, 1] == 0) and np.all(T[:, 1] == NOMINAL_FULL.T0)
    assert np.all(rate[:, 0] > 0) and np.all(rate[:, 1] == 0) and np.all(rate[:, 2] < 0)
    assert np.all(T[:, [0, 2]] > NOMINAL_FULL.T0)

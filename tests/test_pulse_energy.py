"""The energy of a pulse on the simulator, E = ∫ V·I(V, N(t)) dt, against an independent
quadrature: scipy's LSODA on the state and the energy together (dN/dt from ``jart.rate``,
dE/dt = V·``jart.current``, not the integrator's code), stopped at the bound by an event, the
rest of the pulse at the bound's constant power."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from sim_backend import jart
from sim_backend.integrator import apply_pulses, integrate_pulses
from tests.test_integrator import random_pulses


def reference_energy(n0: float, v: float, w: float) -> float:
    bound = jart.N_HI if v < 0 else jart.N_LO
    moving = (v < 0 and n0 < jart.N_HI) or (v > 0 and n0 > jart.N_LO)
    if not moving:
        return float(v * jart.current(np.array([n0]), v)[0] * w)

    def rhs(t, y, v=v):
        n = np.array([y[0]])
        return [jart.rate(n, v)[0], v * jart.current(n, v)[0]]

    def hit(t, y, bound=bound):
        return y[0] - bound

    hit.terminal = True
    sol = solve_ivp(rhs, (0.0, w), [n0, 0.0], method="LSODA", rtol=1e-10, atol=[1e-14, 1e-30],
                    events=hit)
    energy = float(sol.y[1, -1])
    if sol.status == 1:  # reached the bound: the rest of the pulse there
        energy += float(v * jart.current(np.array([bound]), v)[0] * (w - sol.t[-1]))
    return energy


def test_the_energy_of_every_pulse_agrees_with_an_independent_quadrature():
    N0, V, W = random_pulses(32, seed=21)
    # and a few that switch completely and dwell at the bound, and one already there
    N0 = np.concatenate([N0, [0.1, 1.5, jart.N_HI]])
    V = np.concatenate([V, [-0.8, 1.2, -0.6]])
    W = np.concatenate([W, [1e-3, 1e-3, 1e-6]])
    out = integrate_pulses(N0, V, W, jart.NOMINAL_DEVICE)
    expected = np.array([reference_energy(n, v, w) for n, v, w in zip(N0, V, W, strict=True)])
    assert np.all(out.energy > 0)
    np.testing.assert_allclose(out.energy, expected, rtol=0.05)  # the bound
    worst = float(np.max(np.abs(out.energy / expected - 1)))
    assert worst < 1e-3, worst  # in fact far closer
    # the state is the same as without the energy
    N, _ = apply_pulses(N0, V, W, jart.NOMINAL_DEVICE)
    np.testing.assert_array_equal(out.N, N)


def test_no_pulse_no_energy_and_a_longer_pulse_more():
    N0 = np.full(3, 0.5)
    out = integrate_pulses(N0, np.array([0.0, -0.5, -0.5]), np.array([1e-6, 1e-7, 1e-6]),
                           jart.NOMINAL_DEVICE)
    assert out.energy[0] == 0.0 and 0 < out.energy[1] < out.energy[2]
    # order of magnitude: |V|·I·t with I of tens to hundreds of µA
    assert out.energy[2] == pytest.approx(0.5 * abs(jart.current(N0[:1], -0.5)[0]) * 1e-6,
                                          rel=10)

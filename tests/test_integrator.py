"""The adaptive pulse integrator: accuracy, tolerance convergence, bounds, vectorisation."""

import numpy as np
import pytest
from scipy.integrate import solve_ivp

from sim_backend import jart
from sim_backend.integrator import DEFAULT_TOL, apply_pulses


def random_pulses(n: int, seed: int):
    """States across the window; SET and RESET voltages over the validated range; widths
    log-uniform from 1 ns to 100 ms."""
    rng = np.random.default_rng(seed)
    N0 = np.exp(rng.uniform(np.log(jart.N_LO), np.log(jart.N_HI), n))
    is_set = rng.random(n) < 0.5
    V = np.where(is_set, -rng.uniform(0.34, 0.9, n), rng.uniform(0.5, 1.3, n))
    W = 10 ** rng.uniform(-9, -1, n)
    return N0, V, W


def test_fast_pulse_matches_adaptive_reference():
    """−0.6 V for 2 ns from N = 0.3: 1.606 (a 1 ns Euler step would give 2.13)."""
    N, _ = apply_pulses(np.array([0.3]), np.array([-0.6]), np.array([2e-9]), jart.NOMINAL_DEVICE)
    assert N[0] == pytest.approx(1.606, rel=0.002)


def test_halving_the_tolerance_changes_g_by_less_than_half_a_percent():
    N0, V, W = random_pulses(4000, seed=11)
    N1, _ = apply_pulses(N0, V, W, jart.NOMINAL_DEVICE, tol=DEFAULT_TOL)
    N2, _ = apply_pulses(N0, V, W, jart.NOMINAL_DEVICE, tol=DEFAULT_TOL / 2)
    G1, G2 = jart.conductance(N1), jart.conductance(N2)
    assert np.max(np.abs(G1 / G2 - 1)) < 0.005


def test_agrees_with_tight_tolerance_reference():
    N0, V, W = random_pulses(4000, seed=12)
    N, _ = apply_pulses(N0, V, W, jart.NOMINAL_DEVICE)
    ref, _ = apply_pulses(N0, V, W, jart.NOMINAL_DEVICE, tol=1e-11)
    assert np.max(np.abs(jart.conductance(N) / jart.conductance(ref) - 1)) < 1e-3


def test_agrees_with_an_independent_ode_solver():
    """scipy's LSODA on dN/dt directly (not in log N), clamped at the bounds by an event."""
    N0, V, W = random_pulses(24, seed=13)
    N, _ = apply_pulses(N0, V, W, jart.NOMINAL_DEVICE)
    for n0, v, w, n in zip(N0, V, W, N, strict=True):
        bound = jart.N_HI if v < 0 else jart.N_LO

        def hit(t, y, bound=bound):
            return y[0] - bound

        hit.terminal = True
        sol = solve_ivp(lambda t, y, v=v: jart.rate(y, v), (0.0, w), [n0], method="LSODA",
                        rtol=1e-10, atol=1e-14, events=hit)
        expected = np.clip(sol.y[0, -1], jart.N_LO, jart.N_HI)
        assert jart.conductance(np.array([n]))[0] == pytest.approx(
            jart.conductance(np.array([expected]))[0], rel=1e-3
        )


def test_long_pulses_stop_exactly_at_the_bounds():
    N, _ = apply_pulses(np.array([0.1, 1.5]), np.array([-0.9, 1.3]), np.array([0.1, 0.1]),
                        jart.NOMINAL_DEVICE)
    assert N[0] == jart.N_HI
    assert N[1] == jart.N_LO


def test_zero_voltage_and_devices_at_their_bound_do_not_move():
    N0 = np.array([0.5, jart.N_HI, jart.N_LO])
    N, stats = apply_pulses(N0, np.array([0.0, -0.9, 1.3]), np.array([1e-3, 1e-3, 1e-3]),
                            jart.NOMINAL_DEVICE)
    np.testing.assert_array_equal(N, N0)
    assert stats.evaluations == 0


def test_batch_equals_device_by_device():
    """Each device has its own step size: integrating it alone gives the same result."""
    N0, V, W = random_pulses(40, seed=14)
    batch, _ = apply_pulses(N0, V, W, jart.NOMINAL_DEVICE)
    alone = [apply_pulses(N0[i:i + 1], V[i:i + 1], W[i:i + 1], jart.NOMINAL_DEVICE)[0][0]
             for i in range(N0.size)]
    np.testing.assert_allclose(batch, alone, rtol=1e-12)


def test_per_device_parameters_are_used():
    """A thinner filament (smaller r) heats more and switches faster."""
    params = jart.DeviceParams(r=np.array([40.5e-9, 49.5e-9]))
    N, _ = apply_pulses(np.array([0.06, 0.06]), np.array([-0.4, -0.4]), np.array([50e-6, 50e-6]),
                        params)
    assert N[0] > N[1]

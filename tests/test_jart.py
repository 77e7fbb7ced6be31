"""The simplified JART VCM v1b model against the validation tables of device-model.md."""

import numpy as np
import pytest

from sim_backend import jart
from sim_backend.integrator import apply_pulses

N_HI = jart.N_HI

# G at V_read = 0.2 V, nominal device (µS), device-model.md.
G_TABLE = {0.008: 14.13, 0.06: 94.45, 0.3: 304.9, 1.0: 489.8, 1.9897: 559.3, 20.0: 637.4}

# Switching times (s) at constant voltage, nominal device, from the low (SET) or the high
# (RESET) operating bound to the given N.
SET_TIMES = {
    -0.342: {0.3: 5.14e-3, 1.0: 5.33e-3, N_HI: 9.90e-3},
    -0.4: {0.3: 93e-6, 1.0: 97e-6, N_HI: 167e-6},
    -0.5: {0.3: 0.32e-6, 1.0: 0.34e-6, N_HI: 0.59e-6},
    -0.6: {0.3: 4.5e-9, 1.0: 5.0e-9, N_HI: 9.4e-9},
}
RESET_TIMES = {
    0.7065: {1.0: 4.57e-3, 0.3: 4.74e-3, jart.N_LO: 9.90e-3},
    0.9: {1.0: 9.9e-6, 0.3: 10.3e-6, jart.N_LO: 18.1e-6},
    1.1: {1.0: 109e-9, 0.3: 115e-9, jart.N_LO: 157e-9},
}


def switching_time(V: float, N_target: float) -> float:
    """Time for the nominal device to go from its start bound to N_target at constant V.

    Found with the pulse integrator itself: bisection (in log width) on the shortest pulse
    width that reaches N_target (the far bound is reached exactly: the integrator clamps there).
    """
    start = jart.N_LO if V < 0 else N_HI
    goal = N_target
    lo, hi = np.log(1e-10), np.log(0.1)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        N, _ = apply_pulses(np.array([start]), np.array([V]), np.array([np.exp(mid)]),
                            jart.NOMINAL_DEVICE)
        reached = N[0] >= goal if V < 0 else N[0] <= goal
        lo, hi = (lo, mid) if reached else (mid, hi)
    return float(np.exp(0.5 * (lo + hi)))


def quadrature_time(V: float, N0: float, N1: float) -> float:
    """The same time by direct quadrature of dt = dN / f(N), independent of the integrator."""
    u = np.linspace(np.log(N0), np.log(N1), 400_001)
    N = np.exp(u)
    return float(abs(np.trapezoid(N / np.abs(jart.rate(N, V)), u)))


@pytest.mark.parametrize(("N", "G_uS"), list(G_TABLE.items()))
def test_conductance_table(N, G_uS):
    assert jart.conductance(np.array([N]))[0] * 1e6 == pytest.approx(G_uS, rel=0.01)


def test_conductance_inverse_round_trips():
    N = np.geomspace(jart.N_LO, N_HI, 50)
    np.testing.assert_allclose(jart.state_for_conductance(jart.conductance(N)), N, rtol=1e-10)


def test_sign_convention_set_negative_reset_positive():
    N = np.array([0.3, 1.0])
    assert np.all(jart.rate(N, -0.5) > 0)  # SET: N (and G) rise
    assert np.all(jart.rate(N, 0.9) < 0)  # RESET: N falls
    assert np.all(jart.rate(N, 0.0) == 0)
    assert np.all(np.diff(jart.conductance(np.geomspace(0.01, 20, 30))) > 0)


def test_full_range_switching_at_the_symmetric_pair():
    """−0.342 V and +0.7065 V both switch the full range in 9.9 ms ± 10 %."""
    assert switching_time(-0.342, N_HI) == pytest.approx(9.90e-3, rel=0.10)
    assert switching_time(0.7065, jart.N_LO) == pytest.approx(9.90e-3, rel=0.10)


@pytest.mark.parametrize(
    ("V", "N_target", "t_ref"),
    [(V, N, t) for V in (-0.4, -0.5) for N, t in SET_TIMES[V].items()]
    + [(V, N, t) for V in (0.9, 1.1) for N, t in RESET_TIMES[V].items()],
)
def test_switching_times_within_15_percent(V, N_target, t_ref):
    assert switching_time(V, N_target) == pytest.approx(t_ref, rel=0.15)


@pytest.mark.parametrize(
    ("V", "N_target", "t_ref"),
    [(V, N, t) for V, d in SET_TIMES.items() for N, t in d.items()]
    + [(V, N, t) for V, d in RESET_TIMES.items() for N, t in d.items()],
)
def test_quadrature_agrees_with_table(V, N_target, t_ref):
    start = jart.N_LO if V < 0 else N_HI
    assert quadrature_time(V, start, N_target) == pytest.approx(t_ref, rel=0.10)


@pytest.mark.parametrize("V", [-0.342, -0.4, -0.5, 0.7065, 0.9, 1.1])
def test_s_shape_mid_range_is_crossed_fast(V):
    """The mid range (N 0.3 ↔ 1) takes < 10 % of the full switching time."""
    full = quadrature_time(V, jart.N_LO, N_HI)
    mid = quadrature_time(V, 0.3, 1.0)
    assert mid < 0.10 * full


@pytest.mark.parametrize(("G0_uS", "dG_uS"), [(94.45, 0.003), (304.9, 3.56), (489.8, 0.18)])
def test_one_microsecond_set_pulse_update_depends_on_state(G0_uS, dG_uS):
    """ΔG from one 1 µs SET pulse at the default −0.342 V spans 1000× with the state.

    Within 5 %, or half a unit of the last digit the reference gives (0.003 µS has one).
    """
    N0 = np.maximum(jart.state_for_conductance(np.array([G0_uS * 1e-6])), jart.N_LO)
    N1, _ = apply_pulses(N0, np.array([-0.342]), np.array([1e-6]), jart.NOMINAL_DEVICE)
    dG = (jart.conductance(N1) - jart.conductance(N0))[0] * 1e6
    assert dG == pytest.approx(dG_uS, rel=0.05, abs=0.0005)


def test_read_voltage_does_not_switch():
    """At +0.2 V the rate is so small that even a 1 s read moves N by < 1 ppm."""
    N = np.geomspace(jart.N_LO, N_HI, 200)
    assert np.all(np.abs(jart.rate(N, 0.2)) * 1.0 < 1e-6 * N)


def test_current_vectorised_equals_scalar_calls():
    N = np.array([0.06, 0.3, 1.0, 1.9])
    V = np.array([-0.6, -0.342, 0.2, 1.1])
    batch = jart.current(N, V)
    single = [jart.current(np.array([n]), np.array([v]))[0] for n, v in zip(N, V, strict=True)]
    np.testing.assert_array_equal(batch, single)

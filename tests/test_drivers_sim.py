"""drivers.sim (the backend contract over the real sim_backend.Crossbar) and drivers.factory."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from drivers.base import Backend, LimitError, Limits
from drivers.factory import make_backend
from drivers.sim import SimBackend
from service.config import Settings

ROWS = np.array([0, 1, 2, 3])
COLS = np.array([0, 1, 2, 3])


@pytest.fixture
def backend() -> SimBackend:
    return SimBackend.create(4, 4, seed=3, variability="realistic")


def test_describes_a_simulated_array(backend):
    info = backend.describe()
    assert isinstance(backend, Backend)
    assert info.kind == "simulated"
    assert (info.rows, info.cols) == (4, 4)
    assert info.limits == Limits()
    assert "JART" in info.instruments["array"]
    assert info.details["variability"] == "realistic"


def test_read_reports_conductance_current_and_does_not_disturb(backend):
    before = backend.crossbar.state.copy()
    result = backend.read(ROWS, COLS, v_read=0.2)
    assert np.array_equal(backend.crossbar.state, before)
    # A fresh array is fully RESET: the bottom of the nominal window, ≈ 94.45 µS at 0.2 V.
    assert np.allclose(result.conductance, 94.45e-6, rtol=0.01)
    assert np.allclose(result.current, result.conductance * 0.2)
    assert result.v_read == 0.2
    assert not result.compliance.any()
    assert np.array_equal(result.rows, ROWS) and np.array_equal(result.cols, COLS)


def test_set_raises_and_reset_lowers_conductance(backend):
    g0 = backend.read(ROWS, COLS).conductance
    backend.pulse(ROWS, COLS, voltage=-0.6, width=1e-5)  # SET: negative voltage
    g1 = backend.read(ROWS, COLS).conductance
    assert np.all(g1 > g0 + 100e-6)
    backend.pulse(ROWS, COLS, voltage=np.full(4, 1.1), width=np.full(4, 1e-5))  # RESET
    g2 = backend.read(ROWS, COLS).conductance
    assert np.all(g2 < g1 - 100e-6)


@pytest.mark.parametrize(
    ("voltage", "width", "field"),
    [(-0.95, 1e-6, "voltage"), (1.35, 1e-6, "voltage"), (-0.5, 0.2, "width"),
     (-0.5, 1e-10, "width"), (float("nan"), 1e-6, "voltage")],
)
def test_pulse_beyond_limits_fires_nothing(backend, voltage, width, field):
    before = backend.crossbar.state.copy()
    with pytest.raises(LimitError) as caught:
        backend.pulse(ROWS, COLS, voltage=[-0.5, -0.5, voltage, -0.5], width=width)
    assert caught.value.field == field
    assert np.array_equal(backend.crossbar.state, before)
    assert backend.crossbar.pulse_count.sum() == 0


def test_tighter_configured_limits_are_enforced():
    backend = SimBackend.create(2, 2, limits=Limits(v_set_max=0.5, width_max=1e-3))
    with pytest.raises(LimitError, match=r"v_set_max = 0\.5"):
        backend.pulse([0], [0], voltage=-0.6, width=1e-6)
    with pytest.raises(LimitError, match="width_max"):
        backend.pulse([0], [0], voltage=-0.4, width=2e-3)
    with pytest.raises(LimitError, match="v_read_max"):
        backend.read([0], [0], v_read=0.5)


def test_limits_beyond_the_simulator_are_refused_not_clamped():
    with pytest.raises(ValueError, match="v_set_max"):
        SimBackend.create(2, 2, limits=Limits(v_set_max=1.0))
    with pytest.raises(ValueError, match="width_max"):
        SimBackend.create(2, 2, limits=Limits(width_max=1.0))
    with pytest.raises(ValueError, match="v_read_max"):  # a read that would disturb a device
        SimBackend.create(2, 2, limits=Limits(v_read_max=0.5))


def test_non_integer_cells_are_refused_never_rounded(backend):
    with pytest.raises(LimitError) as err:
        backend.pulse(np.array([1.9]), np.array([2.7]), voltage=-0.6, width=1e-6)
    assert err.value.field == "rows"
    assert backend.crossbar.pulse_count.sum() == 0


def test_compliance_trips_and_clips_the_reading():
    backend = SimBackend.create(1, 2, variability="ideal", limits=Limits(compliance=50e-6))
    backend.pulse([0], [1], voltage=-0.6, width=1e-5)  # cell (0,1) to the top: I ≈ 112 µA
    result = backend.read([0, 0], [0, 1], v_read=0.2)
    assert result.compliance.tolist() == [False, True]
    assert result.current[1] == pytest.approx(50e-6)
    assert result.conductance[1] == pytest.approx(50e-6 / 0.2)


def test_cells_outside_the_array_are_refused(backend):
    with pytest.raises(IndexError, match="outside"):
        backend.read([0, 4], [0, 0])
    with pytest.raises(IndexError, match="outside"):
        backend.pulse([0], [-1], voltage=-0.5, width=1e-6)


def test_state_file_survives_a_restart(tmp_path):
    path = tmp_path / "array.npz"
    first = SimBackend.create(2, 2, seed=1, state_file=path)
    first.pulse([0], [0], voltage=-0.6, width=1e-5)
    g = first.read([0, 1], [0, 0]).conductance
    assert g[0] > 2 * g[1]  # the pulsed cell differs from a fresh one
    first.close()
    second = SimBackend.create(2, 2, seed=1, state_file=path)
    assert second.describe().details["origin"].startswith("loaded")
    assert np.allclose(second.read([0, 1], [0, 0]).conductance, g)
    second.close()
    # the array is what the file holds, and says so, whatever else is configured ...
    third = SimBackend.create(2, 2, seed=9, variability="ideal", read_noise=0.1, state_file=path)
    details = third.describe().details
    assert (details["seed"], details["variability"], details["read_noise"]) \
        == (1, "realistic", 0.0)
    # ... and another geometry is refused, not silently replaced by the file's
    with pytest.raises(ValueError, match="holds a 2×2 array"):
        SimBackend.create(8, 8, state_file=path)


def test_factory_builds_the_configured_simulator(tmp_path):
    settings = Settings(
        database=tmp_path / "x.db",
        sim={"rows": 3, "cols": 5, "seed": 2, "variability": "d2d"},
        limits={"v_set_max": 0.7},
    )
    backend = make_backend(settings)
    info = backend.describe()
    assert (info.kind, info.rows, info.cols) == ("simulated", 3, 5)
    assert info.details["variability"] == "d2d"
    assert info.limits.v_set_max == 0.7


def test_factory_does_not_import_the_bench_drivers_for_the_simulator():
    code = (
        "import sys; from drivers.factory import make_backend; from service.config import "
        "Settings; make_backend(Settings(sim={'rows': 2, 'cols': 2})); "
        "print(any(m.startswith('drivers.visa') or m == 'pyvisa' for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

"""Device populations: a file round-trips (also through a saved array), bad files are refused
naming the field, the default is bit-identical to the nominal devices, and each shipped example
moves the switching times the way its physics says."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from drivers.visa.bench import load_bench
from drivers.visa.emulators.bench import EmulatedBench
from service.config import Settings
from sim_backend import Crossbar
from sim_backend.jart import N_HI, N_LO, conductance
from sim_backend.population import NOMINAL_POPULATION, Population, shipped
from sim_backend.variability import Variability

HOT = """
name = "hot"
[nominal]
T0 = 330.0
r = 42e-9
[variability]
preset = "d2d"
c2c = true
"""


def run(xb: Crossbar) -> tuple[float, float, float]:
    rows, cols = np.arange(64) // 8, np.arange(64) % 8
    for k in range(6):
        xb.pulse(rows, cols, np.where(k % 2 == 0, -0.55, 1.1), np.full(64, 3e-8 * (k + 1)))
    return (float(xb.state.sum()), float(xb.read(rows, cols).sum()),
            float(xb.device_params()["r"].sum()))


def test_the_default_population_is_bit_identical_to_the_nominal_devices():
    # recorded with the code before populations existed (same seed, same operations)
    before = (5.279225286918486, 0.006478703984949386, 2.898346946562777e-06)
    args = dict(seed=3, variability="realistic", read_noise=0.01)
    assert run(Crossbar(8, 8, **args)) == before
    assert run(Crossbar(8, 8, population=NOMINAL_POPULATION, **args)) == before


def test_a_population_round_trips_through_its_file_and_a_saved_array(tmp_path):
    path = tmp_path / "hot.toml"
    path.write_text(HOT)
    pop = Population.load(path)
    assert (pop.name, pop.constants.T0, pop.centre.r) == ("hot", 330.0, 42e-9)
    assert pop.constants.r == 45e-9  # R_th0's reference radius stays
    assert pop.variability == Variability(1.0, True)
    assert Population.from_dict(pop.to_dict()) == pop
    xb = Crossbar(8, 8, seed=4, variability="ideal", population=path)
    assert xb.variability == Variability(1.0, True)  # the file's recipe
    r = xb.device_params("device")["r"]
    assert 0.9 * 42e-9 - 1e-15 <= r.min() and r.max() <= 1.1 * 42e-9 + 1e-15
    run(xb)
    xb.save(tmp_path / "a.npz")
    back = Crossbar.load(tmp_path / "a.npz")
    assert back.population == pop
    assert run(back) == run(xb)  # continues identically


@pytest.mark.parametrize(("text", "field"), [
    ("[nominal]\nTx = 300.0\n", "nominal.Tx: unknown constant"),
    ("[nominal]\nT0 = -5.0\n", "nominal.T0"),
    ("[nominal]\nr = 42\n", "nominal.r = 42 m is outside"),
    ("[nominal]\nr = 42e-6\n", "nominal.r"),
    ("[nominal]\nT0 = 57.0\n", "nominal.T0 = 57 K"),
    ("[nominal]\ndWA = \"1.3\"\n", "nominal.dWA: must be a finite number"),
    ("[nominal]\nN_hi = 1.5\n", "nominal.N_hi: the operating window"),
    ("[nominal]\nN_min = 0.05\nN_max = 2.6\n[variability]\nsigma = 1\n", "variability.sigma"),
    ("[variability]\npreset = \"wild\"\n", "variability.preset"),
    ("colour = \"blue\"\n", "unknown key 'colour'"),
    ("[nominal\n", "cannot be read"),
])
def test_a_bad_population_file_is_refused_naming_the_field(tmp_path, text, field):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace(".", r"\.")):
        Population.load(path)


def test_the_service_refuses_to_start_on_a_bad_population_naming_it(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[nominal]\nr = 42\n")
    with pytest.raises(ValueError, match=r"sim\.population[\s\S]*nominal\.r = 42 m"):
        Settings(database=tmp_path / "m.db", sim={"population": str(path)})


def half_switching_time(pop: Population | None, V: float) -> float:
    """Width (s) that moves a population's nominal device half way across the window."""
    if pop is not None:
        pop = dataclasses.replace(pop, variability=Variability())  # its centre device alone
    widths = np.logspace(-9, -1, 161)
    xb = Crossbar(1, widths.size, population=pop)
    xb.state = np.full((1, widths.size), N_LO if V < 0 else N_HI)
    xb.pulse(np.zeros(widths.size, int), np.arange(widths.size), V, widths)
    g = xb.conductance_map().ravel()
    g_mid = float(np.sqrt(np.prod(conductance(np.array([N_LO, N_HI])))))
    moved = g >= g_mid if V < 0 else g <= g_mid
    assert moved.any(), "a full switch within 0.1 s"
    return float(widths[np.argmax(moved)])


# (the physics) hotter: faster; thinner filament: hotter and a higher field, faster; a higher
# activation energy: slower. Factors measured at -0.5 V (SET) and +1.0 V (RESET).
EXPECTED = {"hot_chuck": (0.1, 0.6), "thin_filament": (0.05, 0.4), "slow_oxide": (2.0, 6.0)}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_shipped_population_moves_the_switching_times_as_its_physics_says(name):
    pop = Population.load(shipped()[name])
    lo, hi = EXPECTED[name]
    for V in (-0.5, 1.0, -0.4, 0.8):
        factor = half_switching_time(pop, V) / half_switching_time(None, V)
        assert lo <= factor <= hi, (name, V, factor)


def test_the_emulated_bench_builds_its_crossbar_from_the_population(tmp_path):
    (tmp_path / "pops").mkdir()
    (tmp_path / "pops" / "hot.toml").write_text(HOT)
    bench = tmp_path / "bench.toml"
    bench.write_text("""
name = "t"
[smu]
resource = "TCPIP0::127.0.0.1::5025::SOCKET"
[pulser]
resource = "TCPIP0::127.0.0.1::5026::SOCKET"
[emulator]
population = "pops/hot.toml"
""")
    config = load_bench(bench)
    assert config.emulator.population == str(tmp_path / "pops" / "hot.toml")
    emulated = EmulatedBench(config)
    assert emulated.crossbar.population.name == "hot"

"""The exact command strings each driver sends for connect, read, pulse, route and safe state,
captured from the driver (what it wrote) and from the emulator (what arrived) over real sockets
through pyvisa-py; plus the validators that guard every setting."""

from __future__ import annotations

import json

import numpy as np
import pytest

from drivers.base import LimitError
from drivers.visa.backend import VisaBackend
from drivers.visa.bench import parse_bench
from drivers.visa.emulators import EmulatorRunner
from drivers.visa.keithley2450 import Keithley2450
from drivers.visa.keysight33500b import Keysight33500B
from drivers.visa.scpi import Range, Setting, join_scpi, num, split_reply

pytestmark = pytest.mark.timeout(60)

ANY = "TCPIP0::127.0.0.1::0::SOCKET"


def bench(routing: str | None = "exclusive", **limits):
    data = {
        "smu": {"resource": ANY, "timeout": 1.0},
        "pulser": {"resource": ANY, "timeout": 1.0},
        "limits": {"width_min": 1e-9, **limits},
        "emulator": {"timing": False, "variability": "ideal"},
    }
    if routing:
        data["matrix"] = {
            "resource": ANY, "timeout": 1.0, "routing": routing,
            "row_lines": ["101", "102", "103"], "col_lines": ["104", "105", "106"],
        }
    return parse_bench(data)


@pytest.fixture
def rig(request):
    routing = getattr(request, "param", "exclusive")
    with EmulatorRunner(bench(routing)) as emu:
        backend = VisaBackend(emu.config)
        try:
            yield emu, backend
        finally:
            backend.close()


def sent(backend: VisaBackend, role: str) -> list[str]:
    return list(backend.instruments[role].journal)


def received(emu: EmulatorRunner, role: str) -> list[str]:
    return [m for _, m in emu.bench.instruments()[role].log]


def clear(backend: VisaBackend) -> None:
    for inst in backend.instruments.values():
        inst.journal.clear()


STATUS = 'print(channel.getclose("allslots"), errorqueue.count)'
SMU_SETUP = (
    '*CLS;:OUTP OFF;:SOUR:FUNC VOLT;:SOUR:VOLT:RANG:AUTO 0;:SOUR:VOLT:RANG 2;:SOUR:VOLT:LEV 0;'
    ':SOUR:VOLT:ILIM 0.001;:SENS:FUNC "CURR";:SENS:CURR:NPLC 0.1;:SENS:CURR:RANG:AUTO 1;'
    ":OUTP:VOLT:SMOD HIMP;:SYST:ERR?"
)
PULSER_SETUP = (
    "*CLS;:OUTP1 OFF;:OUTP1:LOAD INF;:SOUR1:FUNC PULS;:SOUR1:BURS:MODE TRIG;:SOUR1:BURS:NCYC 1;"
    ":SOUR1:BURS:STAT ON;:TRIG1:SOUR BUS;:SYST:ERR?"
)
FIRE = "OUTP1 ON;*TRG;*WAI;:OUTP1 OFF;*OPC?;:SYST:ERR?"
READ_02 = (
    ":SOUR:VOLT:LEV 0.2;:OUTP ON;:READ?;:SOUR:VOLT:ILIM:TRIP?;:OUTP OFF;:SOUR:VOLT:LEV 0;:SYST:ERR?"
)


def test_connect_strings_compliance_before_output_on(rig):
    emu, backend = rig
    backend.connect()
    assert sent(backend, "smu") == ["*IDN?;*LANG?", SMU_SETUP]
    assert sent(backend, "pulser") == ["*IDN?", PULSER_SETUP]
    assert sent(backend, "matrix") == ["*IDN?", f'*CLS\nchannel.open("allslots")\n{STATUS}']
    # what arrived is what was sent (the 707B's write holds three TSP chunks, one per line)
    assert received(emu, "smu") == sent(backend, "smu")
    assert received(emu, "pulser") == sent(backend, "pulser")
    assert received(emu, "matrix") == ["*IDN?", "*CLS", 'channel.open("allslots")', STATUS]
    units = SMU_SETUP.split(";")
    assert units.index(":SOUR:VOLT:ILIM 0.001") < units.index(":OUTP:VOLT:SMOD HIMP")
    assert ":OUTP ON" not in SMU_SETUP


def test_read_strings(rig):
    emu, backend = rig
    backend.connect()
    clear(backend)
    result = backend.read(np.array([1]), np.array([2]), v_read=0.2)
    assert sent(backend, "matrix") == [f'channel.exclusiveclose("1A02,1B06")\n{STATUS}']
    assert sent(backend, "smu") == [READ_02]
    assert sent(backend, "pulser") == []
    assert result.conductance[0] == pytest.approx(
        float(emu.bench.crossbar.read([1], [2])[0]), rel=1e-6)
    # another level, negative: same transaction, other number; the route is kept
    clear(backend)
    backend.read(np.array([1]), np.array([2]), v_read=-0.15)
    assert sent(backend, "matrix") == []
    assert sent(backend, "smu") == [READ_02.replace("LEV 0.2", "LEV -0.15", 1)]


def test_pulse_strings_shape_only_when_it_changes(rig):
    emu, backend = rig
    backend.connect()
    clear(backend)
    row, col = np.array([1]), np.array([2])
    backend.pulse(row, col, np.array([-0.5]), np.array([1e-6]))
    assert sent(backend, "matrix") == [f'channel.exclusiveclose("1C02,1D06")\n{STATUS}']
    assert sent(backend, "pulser") == [
        # timing unknown after connect: through the smallest legal pulse, then widen
        "OUTP1:POL INV;:SOUR1:VOLT:LOW -0.5;:SOUR1:VOLT:HIGH 0;"
        ":SOUR1:FUNC:PULS:TRAN:BOTH 8.4e-09;:SOUR1:FUNC:PULS:WIDT 1.6e-08;"
        ":SOUR1:FUNC:PULS:PER 2.2e-06;:SOUR1:FUNC:PULS:WIDT 1e-06;"
        ":SOUR1:FUNC:PULS:TRAN:BOTH 1e-07;:SYST:ERR?",
        FIRE,
    ]
    clear(backend)
    backend.pulse(row, col, np.array([-0.5]), np.array([1e-6]))
    assert sent(backend, "pulser") == [FIRE]
    assert sent(backend, "matrix") == []
    clear(backend)
    backend.pulse(row, col, np.array([0.8]), np.array([5e-7]))  # RESET, narrower
    assert sent(backend, "pulser") == [
        "OUTP1:POL NORM;:SOUR1:VOLT:HIGH 0.8;:SOUR1:VOLT:LOW 0;"
        ":SOUR1:FUNC:PULS:TRAN:BOTH 5e-08;:SOUR1:FUNC:PULS:WIDT 5e-07;"
        ":SOUR1:FUNC:PULS:PER 1.1e-06;:SYST:ERR?",
        FIRE,
    ]
    clear(backend)
    backend.pulse(row, col, np.array([0.8]), np.array([2e-6]))  # wider
    assert sent(backend, "pulser") == [
        "OUTP1:POL NORM;:SOUR1:VOLT:HIGH 0.8;:SOUR1:VOLT:LOW 0;"
        ":SOUR1:FUNC:PULS:PER 4.4e-06;:SOUR1:FUNC:PULS:WIDT 2e-06;"
        ":SOUR1:FUNC:PULS:TRAN:BOTH 2e-07;:SYST:ERR?",
        FIRE,
    ]
    state = emu.state()
    assert state["violation_count"] == 0 and state["pulses"] == 4
    assert [p[2:] for p in emu.bench.pulse_log] == [
        (-0.5, 1e-6), (-0.5, 1e-6), (0.8, 5e-7), (0.8, 2e-6)]


@pytest.mark.parametrize("rig", ["shared"], indirect=True)
def test_route_strings_shared(rig):
    emu, backend = rig
    backend.connect()
    clear(backend)
    backend.read(np.array([2]), np.array([0]))
    backend.pulse(np.array([2]), np.array([0]), np.array([-0.4]), np.array([1e-6]))
    backend.read(np.array([2]), np.array([0]))
    assert sent(backend, "matrix") == [
        f'channel.exclusiveclose("1A03,1B04,1C03,1D04")\n{STATUS}'
    ]
    assert emu.state()["instruments"]["matrix"]["closed"] == ["1A03", "1C03", "1B04", "1D04"]


def test_safe_state_strings(rig):
    emu, backend = rig
    backend.read(np.array([0]), np.array([0]))  # connects every instrument first
    assert [m.split(";")[0] for m in sent(backend, "pulser")] == ["*IDN?", "*CLS"]
    clear(backend)
    backend.safe_state()
    assert sent(backend, "pulser") == ["OUTP1 OFF;:SYST:ERR?"]
    assert sent(backend, "smu") == [":OUTP OFF;:SOUR:VOLT:LEV 0;:SYST:ERR?"]
    assert sent(backend, "matrix") == [f'channel.open("allslots")\n{STATUS}']
    assert emu.state()["instruments"]["matrix"]["closed"] == []


@pytest.mark.parametrize("rig", ["shared", None], indirect=True)
def test_cycle_with_unchanged_shape_costs_two_round_trips(rig):
    emu, backend = rig
    row, col = np.array([0]), np.array([0])
    backend.pulse(row, col, np.array([-0.35]), np.array([1e-6]))
    backend.read(row, col)
    before = backend.round_trips
    messages = sum(i.messages for i in emu.bench.instruments().values())
    for _ in range(5):
        backend.pulse(row, col, np.array([-0.35]), np.array([1e-6]))
        backend.read(row, col)
    assert backend.round_trips - before == 10
    # the emulator counts the same: nothing was sent that the driver did not count
    assert sum(i.messages for i in emu.bench.instruments().values()) - messages == 10


def test_exclusive_cycle_round_trips():
    """Exclusive routing switches twice per cycle: 4 round trips (the figure in the docs)."""
    with EmulatorRunner(bench("exclusive")) as emu:
        backend = VisaBackend(emu.config)
        try:
            row, col = np.array([0]), np.array([0])
            backend.pulse(row, col, np.array([-0.35]), np.array([1e-6]))
            before = backend.round_trips
            for _ in range(3):
                backend.read(row, col)
                backend.pulse(row, col, np.array([-0.35]), np.array([1e-6]))
            assert backend.round_trips - before == 12
        finally:
            backend.close()


# -- limits and validators: rejected before any I/O ---------------------------------------------


def test_requests_over_the_limits_are_rejected_before_any_io(rig):
    emu, backend = rig
    backend.connect()
    clear(backend)
    messages = sum(i.messages for i in emu.bench.instruments().values())
    cell = (np.array([0]), np.array([0]))
    cases = [
        (lambda: backend.pulse(*cell, np.array([-1.0]), np.array([1e-6])), "voltage"),
        (lambda: backend.pulse(*cell, np.array([1.4]), np.array([1e-6])), "voltage"),
        (lambda: backend.pulse(*cell, np.array([0.5]), np.array([0.2])), "width"),
        # inside the deployment limits (width_min 1 ns) but below the 33500B's 16 ns
        (lambda: backend.pulse(*cell, np.array([0.5]), np.array([1e-8])), "width"),
        # below the 33500B's smallest amplitude
        (lambda: backend.pulse(*cell, np.array([0.001]), np.array([1e-6])), "voltage"),
        (lambda: backend.pulse(*cell, np.array([np.nan]), np.array([1e-6])), "voltage"),
        (lambda: backend.read(*cell, v_read=0.35), "v_read"),
        (lambda: backend.read(*cell, v_read=0.0), "v_read"),
        (lambda: backend.read(np.array([3]), np.array([0])), "rows"),
        (lambda: backend.read(np.array([0]), np.array([-1])), "cols"),
        # the second pulse of the batch is bad: the first is not fired either
        (lambda: backend.pulse(np.array([0, 1]), np.array([0, 0]), np.array([-0.5, -0.5]),
                               np.array([1e-6, 5e-9])), "width"),
    ]
    for call, field in cases:
        with pytest.raises(LimitError) as info:
            call()
        assert info.value.field == field
    assert all(sent(backend, r) == [] for r in backend.instruments)
    assert sum(i.messages for i in emu.bench.instruments().values()) == messages
    assert emu.state()["pulses"] == 0


def test_settings_reject_out_of_range_values_never_clamp():
    limit = Setting("compliance", ":SOUR:VOLT:ILIM {}", Range(1e-9, 1.05, "A"))
    assert limit(1e-3) == ":SOUR:VOLT:ILIM 0.001"
    assert limit(1.05) == ":SOUR:VOLT:ILIM 1.05"
    for bad in (1.06, 0.0, -1e-3, float("inf"), float("nan")):
        with pytest.raises(LimitError) as info:
            limit(bad)
        assert info.value.field == "compliance"
    with pytest.raises(LimitError, match="compliance"):
        Keithley2450(bench().smu, compliance=2.0)
    with pytest.raises(LimitError, match="nplc"):
        Keithley2450.nplc(20)


def test_number_formatting_round_trips_exactly():
    for x in (0.2, 1e-6, 2.5e-5, -0.5, 0.0, 1.0, 3.141592653589793e-06, 1 / 3):
        assert float(num(x)) == x
    assert [num(x) for x in (0.2, 1e-6, 0.0, 2.0, -0.35)] == ["0.2", "1e-06", "0", "2", "-0.35"]


def test_message_helpers():
    assert join_scpi(["OUTP1 ON", "*TRG", ":SYST:ERR?", "SYST:ERR?"]) == \
        "OUTP1 ON;*TRG;:SYST:ERR?;:SYST:ERR?"
    assert split_reply('1.5E-05;0;0,"No error; really"', 3) == ["1.5E-05", "0",
                                                                 '0,"No error; really"']
    with pytest.raises(IOError):
        split_reply("1;2", 3)
    pulser = Keysight33500B(bench().pulser)
    with pytest.raises(LimitError, match="width"):
        pulser.shape(0.5, 1e-8)
    shape = pulser.shape(-0.4, 1e-6)
    assert (shape.amplitude, shape.polarity, shape.edge, shape.period) == (0.4, -1, 1e-7, 2.2e-6)


def test_memprog_bench_visa_reports_round_trips(tmp_path, capsys):
    from drivers.visa.benchmark import run_visa_benchmark

    report = tmp_path / "visa.json"
    assert run_visa_benchmark(cycles=5, report=report) == 0
    figures = json.loads(report.read_text())["scenarios"]
    assert figures["matrix shared, same shape"]["round_trips_per_cycle"] == 2
    assert figures["matrix shared, shape changes"]["round_trips_per_cycle"] == 3
    assert figures["matrix exclusive, same shape"]["round_trips_per_cycle"] == 4
    assert figures["no matrix, same shape"]["round_trips_per_cycle"] == 2
    assert all(f["violations"] == 0 and f["wall_ms_median"] > 0 for f in figures.values())
    assert "round trips" in capsys.readouterr().out

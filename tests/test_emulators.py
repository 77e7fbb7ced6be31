"""The instrument emulators over real loopback sockets: dialect, error queue, physics, integrity
checks and fault injection. The reference for the physics is a second Crossbar with the same seed
driven directly."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from drivers.visa.bench import parse_bench
from drivers.visa.emulators import EmulatorRunner
from sim_backend import Crossbar

pytestmark = pytest.mark.timeout(60)

MATRIX = {
    "resource": "TCPIP0::127.0.0.1::0::SOCKET",
    "routing": "exclusive",
    "row_lines": ["101", "102", "103"],
    "col_lines": ["104", "105", "106"],
}


def bench(matrix: bool = True, **emulator):
    data = {
        "smu": {"resource": "TCPIP0::127.0.0.1::0::SOCKET"},
        "pulser": {"resource": "TCPIP0::127.0.0.1::0::SOCKET"},
        "emulator": {"timing": False, "variability": "ideal", **emulator},
    }
    if matrix:
        data["matrix"] = MATRIX
    return parse_bench(data)


class Client:
    """A line-based raw-socket client (what a VISA SOCKET resource is underneath)."""

    def __init__(self, resource: str, timeout: float = 2.0):
        host, port = resource.split("::")[1:3]
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.buf = b""

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode() + b"\n")

    def readline(self) -> bytes:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed by the emulator")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def ask(self, text: str) -> str:
        self.send(text)
        return self.readline().decode()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def emu():
    with EmulatorRunner(bench()) as runner:
        yield runner


@pytest.fixture
def smu(emu):
    c = Client(emu.resources["smu"])
    yield c
    c.close()


@pytest.fixture
def pulser(emu):
    c = Client(emu.resources["pulser"])
    yield c
    c.close()


@pytest.fixture
def matrix(emu):
    c = Client(emu.resources["matrix"])
    yield c
    c.close()


# -- dialect and error queue ----------------------------------------------------------------------


def test_identities_and_common_commands(smu, pulser, matrix):
    assert smu.ask("*IDN?").startswith("KEITHLEY INSTRUMENTS,MODEL 2450,EMULATED")
    assert pulser.ask("*IDN?").startswith("Keysight Technologies,33511B,EMULATED")
    assert "Model 707B" in matrix.ask("*IDN?")
    assert smu.ask("*LANG?") == "SCPI"
    assert smu.ask("*RST;*CLS;*OPC?") == "1"
    assert smu.ask(":SYST:ERR?") == '0,"No error"'
    assert pulser.ask("SYST:ERR?") == '+0,"No error"'


def test_unknown_header_and_bad_value_go_to_the_error_queue_in_order(smu):
    smu.send(":SOUR:VOLT:FROB 1")
    smu.send(":SOUR:VOLT:ILIM 5")  # 2450 current limit tops out at 1.05 A
    smu.send(":OUTP MAYBE")
    assert smu.ask(":SYST:ERR:COUN?") == "3"
    assert smu.ask(":SYST:ERR?") == '-113,"Undefined header;:SOUR:VOLT:FROB"'
    assert smu.ask(":SYST:ERR?").startswith('-222,"Data out of range')
    assert smu.ask(":SYST:ERR?").startswith('-224,"Illegal parameter value')
    assert smu.ask(":SYST:ERR?") == '0,"No error"'
    # a rejected value leaves the setting alone (rejected, not clamped)
    assert float(smu.ask(":SOUR:VOLT:ILIM?")) == pytest.approx(1.05e-4)


def test_error_queue_overflow_and_clear(pulser):
    for _ in range(25):
        pulser.send("FROB")
    first = pulser.ask("SYST:ERR?")
    assert first.startswith('-113,"Undefined header')
    errors = [pulser.ask("SYST:ERR?") for _ in range(19)]
    assert errors[-1] == '-350,"Queue overflow"'
    assert pulser.ask("SYST:ERR?") == '+0,"No error"'
    pulser.send("FROB")
    pulser.send("*CLS")
    assert pulser.ask("SYST:ERR?") == '+0,"No error"'


def test_short_long_forms_case_and_compound_paths(smu, pulser):
    smu.send(":source:voltage:level 0.125")
    assert float(smu.ask(":SOUR:VOLT?")) == 0.125
    smu.send(":SOURce1:VOLTage:LEVel:IMMediate:AMPLitude -0.05")
    assert float(smu.ask(":sour:volt:lev?")) == -0.05
    # multiple queries in one message: one reply, fields joined by ';'
    assert smu.ask(':SOUR:VOLT?;:OUTP?;*OPC?') == "-5.000000E-02;0;1"
    # relative path after ';' (no leading ':') continues from the previous header
    pulser.send("SOUR1:VOLT:HIGH 0.4;LOW 0")
    assert float(pulser.ask("VOLT:LOW?")) == 0.0
    assert float(pulser.ask("VOLT:HIGH?")) == 0.4
    # ...so a repeated full path without ':' is an undefined header, as on the instrument
    pulser.send("SOUR1:VOLT:HIGH 0.5;SOUR1:VOLT:LOW 0.1")
    assert pulser.ask("SYST:ERR?").startswith('-113,"Undefined header')
    assert float(pulser.ask("VOLT:HIGH?")) == 0.5
    # channel 2 does not exist on the 33511B
    pulser.send("OUTP2 ON")
    assert pulser.ask("SYST:ERR?").startswith('-114,"Header suffix out of range')


def test_2450_reads_and_queries_after_setup(smu):
    setup = (
        ':SOUR:FUNC VOLT;:SOUR:VOLT:RANG 2;:SOUR:VOLT:ILIM 0.001;:SENS:FUNC "CURR";'
        ":SENS:CURR:NPLC 0.1;:OUTP:VOLT:SMOD HIMP;:SYST:ERR?"
    )
    assert smu.ask(setup) == '0,"No error"'
    assert smu.ask(":SENS:FUNC?") == '"CURR:DC"'
    assert smu.ask(":OUTP:VOLT:SMOD?") == "HIMP"
    smu.send(":SOUR:VOLT:LEV 3")  # above the 2 V range (x1.05)
    assert smu.ask(":SYST:ERR?").startswith('-222,"Data out of range')


# -- physics --------------------------------------------------------------------------------------


def _route_pulser(matrix, row_line: str, col_line: str):
    assert matrix.ask(
        f'channel.exclusiveclose("1C{row_line},1D{col_line}") '
        'print(channel.getclose("allslots"))'
    ) == f"1C{row_line};1D{col_line}"


def _arm_pulse(pulser, high: float, low: float, width: float, load: str = "INF", pol="NORM"):
    # narrowing from the *RST pulse (100 us in 1 ms): width first, then the period
    message = (
        f"OUTP1:LOAD {load};:SOUR1:FUNC PULS;:OUTP1:POL {pol};:SOUR1:VOLT:HIGH {high};"
        f":SOUR1:VOLT:LOW {low};:SOUR1:FUNC:PULS:WIDT {width};:SOUR1:FUNC:PULS:PER {4 * width};"
        ":SOUR1:BURS:MODE TRIG;:SOUR1:BURS:NCYC 1;:SOUR1:BURS:STAT ON;:TRIG1:SOUR BUS;:SYST:ERR?"
    )
    assert pulser.ask(message) == '+0,"No error"'


def test_pulse_reaches_only_the_routed_device_and_only_with_the_output_on(emu, pulser, matrix):
    ref = Crossbar(3, 3, seed=0, variability="ideal")
    xb = emu.bench.crossbar
    _route_pulser(matrix, "02", "06")  # crossbar row 1, col 2
    _arm_pulse(pulser, high=0.0, low=-0.5, width=1e-6, pol="INV")  # -0.5 V SET pulse
    # output off: the burst runs but nothing leaves the instrument
    assert pulser.ask("*TRG;*WAI;*OPC?") == "1"
    np.testing.assert_array_equal(xb.conductance_map(), ref.conductance_map())
    # output on: the routed device, and only it, is SET
    assert pulser.ask("OUTP1 ON;*TRG;*WAI;:OUTP1 OFF;*OPC?;:SYST:ERR?") == '1;+0,"No error"'
    ref.pulse([1], [2], -0.5, 1e-6)
    np.testing.assert_array_equal(xb.conductance_map(), ref.conductance_map())
    assert xb.conductance_map()[1, 2] > 3 * xb.conductance_map()[0, 0]
    state = emu.state()
    assert state["pulses"] == 1 and state["violation_count"] == 0
    assert state["instruments"]["pulser"]["bursts"] == 2


@pytest.mark.parametrize(("load", "factor"), [("INF", 1.0), ("50", 2.0), ("150", 4.0 / 3.0)])
def test_load_setting_scales_what_the_device_sees(emu, pulser, matrix, load, factor):
    ref = Crossbar(3, 3, seed=0, variability="ideal")
    _route_pulser(matrix, "01", "04")
    # programmed +0.3 V: a RESET far too weak to matter at INF, but 0.6 V at 50 Ohm matters less
    # than this check: the device must see exactly the open-circuit level
    ref.pulse([0], [0], -0.4, 5e-6)
    emu.bench.crossbar.pulse([0], [0], -0.4, 5e-6)
    _arm_pulse(pulser, high=0.0, low=-0.3, width=5e-6, load=load, pol="INV")
    assert pulser.ask("OUTP1 ON;*TRG;*WAI;:OUTP1 OFF;*OPC?") == "1"
    ref.pulse([0], [0], -0.3 * factor, 5e-6)
    np.testing.assert_allclose(emu.bench.crossbar.conductance_map(), ref.conductance_map(),
                               rtol=1e-12)
    log = list(emu.bench.pulse_log)
    assert log[-1][2] == pytest.approx(-0.3 * factor, rel=1e-12)


def test_unrouted_pulse_is_a_violation_and_changes_nothing(emu, pulser, matrix):
    before = emu.bench.crossbar.conductance_map()
    assert matrix.ask('channel.open("allslots") print(channel.getclose("allslots"))') == "nil"
    _arm_pulse(pulser, high=0.0, low=-0.6, width=1e-6, pol="INV")
    assert pulser.ask("OUTP1 ON;*TRG;*WAI;:OUTP1 OFF;*OPC?") == "1"
    np.testing.assert_array_equal(emu.bench.crossbar.conductance_map(), before)
    kinds = [v["kind"] for v in emu.state()["violations"]]
    assert kinds == ["pulse_unrouted"]


def test_smu_reads_the_routed_device_at_its_level_and_trips_compliance(emu, smu, matrix):
    xb = emu.bench.crossbar
    xb.pulse([2], [1], -0.6, 1e-6)  # make (2, 1) a high-conductance device
    assert matrix.ask('channel.exclusiveclose("1A03,1B05") print(channel.getclose("allslots"))') \
        == "1A03;1B05"
    smu.send(":SOUR:VOLT:ILIM 0.001;:SOUR:VOLT:RANG 2;:OUTP:VOLT:SMOD HIMP")
    reply = smu.ask(":SOUR:VOLT:LEV 0.2;:OUTP ON;:READ?;:SOUR:VOLT:ILIM:TRIP?;:OUTP OFF")
    current, tripped = reply.split(";")
    expected = float(xb.read_current([2], [1], 0.2)[0])
    assert float(current) == pytest.approx(expected, rel=1e-6)
    assert tripped == "0"
    # another level reads the nonlinear I(V) of the same device
    reply = smu.ask(":SOUR:VOLT:LEV -0.1;:OUTP ON;:READ?;:OUTP OFF")
    assert float(reply) == pytest.approx(float(xb.read_current([2], [1], -0.1)[0]), rel=1e-6)
    # a current limit below the device current clips the reading and trips
    smu.send(":SOUR:VOLT:ILIM 5e-5")
    reply = smu.ask(":SOUR:VOLT:LEV 0.2;:OUTP ON;:READ?;:SOUR:VOLT:ILIM:TRIP?;:OUTP OFF")
    assert reply == "5.000000E-05;1"
    # a fixed measurement range below the current overflows
    smu.send(":SOUR:VOLT:ILIM 0.001;:SENS:CURR:RANG 1e-5")
    assert float(smu.ask(":OUTP ON;:READ?;:OUTP OFF")) == pytest.approx(9.9e37)
    # output off: the relay is open, nothing is measured
    assert float(smu.ask(":READ?")) == 0.0
    assert emu.state()["violation_count"] == 0


def test_smu_in_normal_off_mode_shunts_a_pulse(emu, pulser, matrix):
    """Both instruments on one device: the SMU must be off in high-impedance mode."""
    before = emu.bench.crossbar.conductance_map()
    assert matrix.ask('channel.exclusiveclose("1A01,1B04,1C01,1D04") '
                      'print(channel.getclose("allslots"))') == "1A01;1C01;1B04;1D04"
    _arm_pulse(pulser, high=0.0, low=-0.6, width=1e-6, pol="INV")
    assert pulser.ask("OUTP1 ON;*TRG;*WAI;:OUTP1 OFF;*OPC?") == "1"  # SMU off mode: NORM
    np.testing.assert_array_equal(emu.bench.crossbar.conductance_map(), before)
    assert [v["kind"] for v in emu.state()["violations"]] == ["pulse_shunted"]


def test_707b_channels_errors_and_hot_switching(emu, smu, matrix):
    assert matrix.ask('print(channel.getclose("allslots"))') == "nil"
    matrix.send('channel.close("1A01,1B06")')
    assert matrix.ask('print(channel.getclose("slot1"), errorqueue.count)') == \
        "1A01;1B06\t0.00000e+00"
    matrix.send('channel.close("1Z99")')  # invalid channel: runtime error, chunk aborted
    matrix.send("channel.frobnicate()")
    matrix.send("print(((")
    assert matrix.ask("print(errorqueue.count)") == "3.00000e+00"
    code, text, *_ = matrix.ask("print(errorqueue.next())").split("\t")
    assert float(code) == 1115 and "invalid channel" in text
    assert float(matrix.ask("print(errorqueue.next())").split("\t")[0]) == -286
    assert float(matrix.ask("print(errorqueue.next())").split("\t")[0]) == -285
    assert matrix.ask("print(errorqueue.next())").split("\t")[1] == "Queue Is Empty"
    # switching with an output on is hot switching
    assert smu.ask(":OUTP ON;*OPC?") == "1"
    assert matrix.ask('channel.open("allslots") print(errorqueue.count)') == "0.00000e+00"
    assert smu.ask(":OUTP OFF;*OPC?") == "1"
    kinds = [v["kind"] for v in emu.state()["violations"]]
    assert "hot_switch" in kinds and "transaction_open" in kinds


def test_interleaved_connections_on_one_instrument_are_flagged(emu):
    a, b = Client(emu.resources["smu"]), Client(emu.resources["smu"])
    try:
        assert a.ask("*OPC?") == "1"
        assert b.ask("*OPC?") == "1"
        assert emu.state()["violation_count"] == 0  # a second client alone is not interleaving
        assert a.ask("*OPC?") == "1"  # a and b now take turns
        kinds = [v["kind"] for v in emu.state()["violations"]]
        assert kinds == ["interleaved"]
    finally:
        a.close()
        b.close()


def test_without_a_matrix_one_device_is_wired_to_both():
    with EmulatorRunner(bench(matrix=False)) as emu:
        p = Client(emu.resources["pulser"])
        s = Client(emu.resources["smu"])
        try:
            assert s.ask(":OUTP:VOLT:SMOD HIMP;:SOUR:VOLT:ILIM 1e-3;:SYST:ERR?") == '0,"No error"'
            _arm_pulse(p, high=0.0, low=-0.6, width=1e-6, pol="INV")
            assert p.ask("OUTP1 ON;*TRG;*WAI;:OUTP1 OFF;*OPC?") == "1"
            g = float(s.ask(":SOUR:VOLT:LEV 0.2;:OUTP ON;:READ?;:OUTP OFF")) / 0.2
            assert g == pytest.approx(float(emu.bench.crossbar.read([0], [0])[0]), rel=1e-6)
            assert g > 300e-6
            assert emu.state()["violation_count"] == 0
        finally:
            p.close()
            s.close()


def test_timing_is_emulated():
    with EmulatorRunner(bench(timing=True)) as emu:
        s = Client(emu.resources["smu"])
        try:
            s.ask(":SENS:CURR:NPLC 5;*OPC?")
            t0 = time.perf_counter()
            s.ask(":READ?")
            assert time.perf_counter() - t0 >= 0.09  # 5 PLC at 50 Hz
        finally:
            s.close()


# -- faults ---------------------------------------------------------------------------------------


def test_fault_slow_reply(emu, smu):
    emu.inject(instrument="smu", kind="slow", delay=0.4, match="*OPC?")
    t0 = time.perf_counter()
    assert smu.ask("*OPC?") == "1"
    assert time.perf_counter() - t0 >= 0.35
    t0 = time.perf_counter()
    assert smu.ask("*OPC?") == "1"  # count = 1: bounded
    assert time.perf_counter() - t0 < 0.3


def test_fault_dropped_connection(emu):
    emu.inject(instrument="pulser", kind="drop", after=1)
    c = Client(emu.resources["pulser"])
    try:
        assert c.ask("*OPC?") == "1"
        c.send("OUTP1 ON")  # dropped before it is executed
        with pytest.raises(ConnectionError):
            c.readline()
    finally:
        c.close()
    assert emu.state()["instruments"]["pulser"]["output"] is False
    c = Client(emu.resources["pulser"])
    try:
        assert c.ask("*OPC?") == "1"  # a new connection is served
    finally:
        c.close()


def test_fault_garbage_reply(emu, matrix):
    emu.inject(instrument="matrix", kind="garbage", match="print(")
    matrix.send('print(channel.getclose("allslots"))')
    raw = matrix.readline()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("ascii")
    assert matrix.ask('print(channel.getclose("allslots"))') == "nil"


def test_fault_queued_instrument_error(emu, smu):
    emu.inject(instrument="smu", kind="error", error='-310,"System error"', count=2)
    assert smu.ask(":SYST:ERR?") == '-310,"System error"'
    assert smu.ask(":SYST:ERR?") == '-310,"System error"'
    assert smu.ask(":SYST:ERR?") == '0,"No error"'
    assert emu.faults.pending() == 0 and emu.faults.fired() == 2


def test_faults_from_the_bench_file_and_loopback_only():
    cfg = bench(faults=[{"instrument": "smu", "kind": "error", "count": 1}])
    with EmulatorRunner(cfg) as emu:
        c = Client(emu.resources["smu"])
        try:
            assert c.ask(":SYST:ERR?") == '-240,"Hardware error"'
        finally:
            c.close()
    remote = cfg.with_resources({"smu": "TCPIP0::192.0.2.1::5025::SOCKET"})
    with pytest.raises(ValueError, match="loopback only"):
        EmulatorRunner(remote, free_ports=False).start()


def test_memprog_emulate_serves_a_bench_file(tmp_path):
    ports = []
    for _ in range(3):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    cfg = bench().with_resources(
        {role: f"TCPIP0::127.0.0.1::{port}::SOCKET"
         for role, port in zip(("smu", "pulser", "matrix"), ports, strict=True)}
    )
    path = tmp_path / "bench.toml"
    path.write_text(cfg.to_toml())
    script = Path(sys.executable).with_name("memprog")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "service.cli"]
    proc = subprocess.Popen([*command, "emulate", "--config", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert "emulators running" in "".join(proc.stdout.readline() for _ in range(7))
        c = Client(f"TCPIP0::127.0.0.1::{ports[1]}::SOCKET")
        try:
            assert c.ask("*IDN?").startswith("Keysight Technologies,33511B,EMULATED")
        finally:
            c.close()
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0


def test_two_sources_and_a_dc_rest_level_are_flagged(emu, smu, pulser, matrix):
    assert matrix.ask('channel.exclusiveclose("1A01,1B04,1C01,1D04") '
                      'print(errorqueue.count)') == "0.00000e+00"
    # the *RST pulse levels (+-0.05 V) rest at -0.05 V: not 0 V while the output is on
    assert pulser.ask("OUTP1 ON;:OUTP1 OFF;*OPC?") == "1"
    assert smu.ask(":OUTP ON;*OPC?") == "1"
    assert pulser.ask("OUTP1 ON;*OPC?") == "1"
    assert pulser.ask("OUTP1 OFF;*OPC?") == "1"
    assert smu.ask(":OUTP OFF;*OPC?") == "1"
    kinds = [v["kind"] for v in emu.state()["violations"]]
    assert kinds.count("dc_rest") == 2 and "two_sources" in kinds


def test_a_disturbing_read_acts_as_whole_pulses_of_at_most_100_ms():
    """Beyond 0.3 V the SMU's source time acts on the device: 0.4 s is 4 pulses (4 cycles of
    cycle-to-cycle variation), not 4 and a leftover sliver."""
    from drivers.visa.bench import parse_bench
    from drivers.visa.emulators import EmulatorRunner

    inst = {"resource": "TCPIP0::127.0.0.1::0::SOCKET"}
    config = parse_bench({"smu": inst, "pulser": inst, "emulator": {"timing": False}})
    with EmulatorRunner(config) as emu, emu.bench.lock:
        emu.bench.measure_routed(0.2, 0.4)  # harmless
        assert emu.bench.crossbar.pulse_count.tolist() == [0]
        emu.bench.measure_routed(0.5, 0.4)
        assert emu.bench.crossbar.pulse_count.tolist() == [4]
        emu.bench.measure_routed(0.5, 0.25)
        assert emu.bench.crossbar.pulse_count.tolist() == [7]

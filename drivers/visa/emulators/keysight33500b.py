"""Emulated Keysight 33500B waveform generator (one channel, SCPI): triggered pulse bursts.

Physics: the generator has a 50 Ohm source impedance; its level settings are what a load of
``OUTP1:LOAD`` ohms would see, so the open-circuit level, which a high-impedance memristor sees, is
``setting · (R + 50) / R``: twice the setting at the default 50 Ohm, the setting itself at ``INF``.
Changing the load keeps the output and changes the displayed settings, as the instrument does.

A normal pulse rests at LOW and rises to HIGH; ``OUTP1:POL INV`` mirrors the waveform about the
offset (rests at HIGH, dips to LOW). A bus trigger (``*TRG``) in triggered-burst mode fires
NCYC pulses of the current width at the peak level; they reach the device(s) the matrix routes to
the pulser only while the output is on.

The emulator of the instrument whose driver is ``drivers/visa/keysight33500b.py`` (same name:
the same instrument on the two sides).
"""

from __future__ import annotations

import math

from drivers.visa.emulators.instrument import SCPIInstrument, query_handler
from drivers.visa.emulators.scpi import (
    Command,
    SCPIError,
    boolean,
    keyword,
    number,
    one_arg,
)

SOURCE_IMPEDANCE = 50.0
WIDTH_MIN = 16e-9
EDGE_MIN, EDGE_MAX = 8.4e-9, 1e-6
PERIOD_MIN, PERIOD_MAX = 33e-9, 1e6
OC_LEVEL_MAX = 10.0
OC_AMPLITUDE_MIN = 2e-3
FUNCTIONS = ["SINusoid", "SQUare", "TRIangle", "RAMP", "PULSe", "PRBS", "NOISe", "ARB", "DC"]


class Keysight33500BEmulator(SCPIInstrument):
    role = "pulser"
    idn = "Keysight Technologies,33511B,EMULATED-33500B,memprog-emulator"

    def __init__(self, bench):
        super().__init__(bench)
        self.errors.plus_sign = True

    def reset(self) -> None:
        self.output = False
        self.load = 50.0
        self.polarity = "NORM"
        self.function = "SIN"
        self.high_oc = 0.1  # open-circuit levels, V (0.1 Vpp into 50 Ohm)
        self.low_oc = -0.1
        self.period = 1e-3
        self.width = 1e-4
        self.edge = 1e-8
        self.burst = False
        self.burst_mode = "TRIG"
        self.ncycles = 1
        self.trigger_source = "IMM"
        self.bursts = 0
        self.bursts_delivered = 0

    # -- helpers ----------------------------------------------------------------------------------

    @property
    def factor(self) -> float:
        """Open-circuit level / displayed level."""
        return 1.0 if math.isinf(self.load) else (self.load + SOURCE_IMPEDANCE) / self.load

    def peak_and_rest(self) -> tuple[float, float]:
        """(peak, rest) open-circuit levels of the pulse, V."""
        if self.polarity == "NORM":
            return self.high_oc, self.low_oc
        return self.low_oc, self.high_oc

    # -- command table --------------------------------------------------------------------------

    def command_table(self) -> list[Command]:
        return [
            Command(":OUTPut#[:STATe]", set=self._set_output,
                    get=self._q(lambda: "1" if self.output else "0")),
            Command(":OUTPut#:LOAD", set=self._set_load,
                    get=self._q(lambda: "+9.9E+37" if math.isinf(self.load) else
                                f"{self.load:+.15E}")),
            Command(":OUTPut#:POLarity", set=self._set_polarity,
                    get=self._q(lambda: self.polarity)),
            Command("[:SOURce#]:FUNCtion[:SHAPe]", set=self._set_function,
                    get=self._q(lambda: self.function)),
            Command("[:SOURce#]:VOLTage:HIGH", set=self._set_high,
                    get=self._q(lambda: f"{self.high_oc / self.factor:+.15E}")),
            Command("[:SOURce#]:VOLTage:LOW", set=self._set_low,
                    get=self._q(lambda: f"{self.low_oc / self.factor:+.15E}")),
            Command("[:SOURce#]:FUNCtion:PULSe:WIDTh", set=self._set_width,
                    get=self._q(lambda: f"{self.width:+.15E}")),
            Command("[:SOURce#]:FUNCtion:PULSe:PERiod", set=self._set_period,
                    get=self._q(lambda: f"{self.period:+.15E}")),
            Command("[:SOURce#]:FUNCtion:PULSe:TRANsition[:BOTH]", set=self._set_edge,
                    get=self._q(lambda: f"{self.edge:+.15E}")),
            Command("[:SOURce#]:BURSt:MODE", set=self._set_burst_mode,
                    get=self._q(lambda: self.burst_mode)),
            Command("[:SOURce#]:BURSt:NCYCles", set=self._set_ncycles,
                    get=self._q(lambda: f"{self.ncycles:+.15E}")),
            Command("[:SOURce#]:BURSt:STATe", set=self._set_burst,
                    get=self._q(lambda: "1" if self.burst else "0")),
            Command(":TRIGger#:SOURce", set=self._set_trigger_source,
                    get=self._q(lambda: self.trigger_source)),
        ]

    @staticmethod
    def _q(fn):
        return query_handler(_channel, fn)

    # -- setters ----------------------------------------------------------------------------------

    def _set_output(self, suffixes, args) -> None:
        _channel(suffixes)
        on = boolean(one_arg(args))
        if on and not self.output:
            self.output = True
            self.bench.check_sources("pulser")
            _, rest = self.peak_and_rest()
            if abs(rest) > 1e-12:
                self.violation("dc_rest", f"output on resting at {rest:g} V (not 0 V)")
            if not self.burst and self.function == "PULS":
                self.violation("continuous", "output on in continuous pulse mode (burst off)")
        elif not on:
            self.output = False

    def _set_load(self, suffixes, args) -> None:
        _channel(suffixes)
        self.load = number(one_arg(args), 1.0, 10e3, default=50.0,
                           keywords={"INF": math.inf, "INFINITY": math.inf}, what="load")

    def _set_polarity(self, suffixes, args) -> None:
        _channel(suffixes)
        self.polarity = keyword(one_arg(args), ["NORMal", "INVerted"])

    def _set_function(self, suffixes, args) -> None:
        _channel(suffixes)
        self.function = keyword(one_arg(args), FUNCTIONS)

    def _level(self, args, what: str) -> float:
        top = OC_LEVEL_MAX / self.factor
        return number(one_arg(args), -top, top, what=what) * self.factor

    def _set_high(self, suffixes, args) -> None:
        _channel(suffixes)
        high = self._level(args, "high level")
        if high - self.low_oc < OC_AMPLITUDE_MIN - 1e-15:
            raise SCPIError(-222, "high level must be above the low level")
        self.high_oc = high

    def _set_low(self, suffixes, args) -> None:
        _channel(suffixes)
        low = self._level(args, "low level")
        if self.high_oc - low < OC_AMPLITUDE_MIN - 1e-15:
            raise SCPIError(-222, "low level must be below the high level")
        self.low_oc = low

    def _set_width(self, suffixes, args) -> None:
        _channel(suffixes)
        w = number(one_arg(args), WIDTH_MIN, PERIOD_MAX, what="pulse width")
        e, p = self.edge, self.period
        if e > 0.625 * w or w + 1.6 * e > p or w > p - WIDTH_MIN:
            raise SCPIError(-221, "pulse width does not fit the period and edge time")
        self.width = w

    def _set_period(self, suffixes, args) -> None:
        _channel(suffixes)
        p = number(one_arg(args), PERIOD_MIN, PERIOD_MAX, what="period")
        if self.width + 1.6 * self.edge > p or self.width > p - WIDTH_MIN:
            raise SCPIError(-221, "period shorter than pulse width and edges")
        self.period = p

    def _set_edge(self, suffixes, args) -> None:
        _channel(suffixes)
        e = number(one_arg(args), EDGE_MIN, EDGE_MAX, what="edge time")
        if e > 0.625 * self.width or self.width + 1.6 * e > self.period:
            raise SCPIError(-221, "edge time does not fit the pulse width")
        self.edge = e

    def _set_burst_mode(self, suffixes, args) -> None:
        _channel(suffixes)
        self.burst_mode = keyword(one_arg(args), ["TRIGgered", "GATed"])

    def _set_ncycles(self, suffixes, args) -> None:
        _channel(suffixes)
        n = number(one_arg(args), 1, 1e8, what="burst count")
        if n != int(n):
            raise SCPIError(-222, "burst count must be an integer")
        self.ncycles = int(n)

    def _set_burst(self, suffixes, args) -> None:
        _channel(suffixes)
        self.burst = boolean(one_arg(args))

    def _set_trigger_source(self, suffixes, args) -> None:
        _channel(suffixes)
        self.trigger_source = keyword(one_arg(args), ["IMMediate", "EXTernal", "TIMer", "BUS"])

    # -- the burst ------------------------------------------------------------------------------

    def trigger(self) -> None:
        if not (self.burst and self.burst_mode == "TRIG" and self.trigger_source == "BUS"):
            raise SCPIError(-211, "not armed for a bus-triggered burst")
        self.bursts += 1
        self.busy(self.ncycles * self.period)
        if self.function != "PULS":
            self.violation("not_a_pulse", f"burst of a {self.function} waveform")
            return
        if not self.output:
            return  # the output relay is open: nothing leaves the instrument
        peak, _ = self.peak_and_rest()
        if self.bench.deliver_pulse(peak, self.width, self.ncycles):
            self.bursts_delivered += 1

    # -- integrity --------------------------------------------------------------------------------

    def end_of_message(self) -> None:
        if self.output:
            self.violation("transaction_open",
                           "the pulser output stays on after the program message")

    def snapshot(self) -> dict:
        peak, _ = self.peak_and_rest()
        return {
            **super().snapshot(),
            "output": self.output,
            "load": self.load,
            "polarity": self.polarity,
            "function": self.function,
            "high": self.high_oc / self.factor,
            "low": self.low_oc / self.factor,
            "peak_open_circuit": peak,
            "width": self.width,
            "period": self.period,
            "edge": self.edge,
            "burst": self.burst,
            "trigger_source": self.trigger_source,
            "bursts": self.bursts,
            "bursts_delivered": self.bursts_delivered,
        }


def _channel(suffixes) -> None:
    if any(s != 1 for s in suffixes):
        raise SCPIError(-114, "the 33511B has one channel")

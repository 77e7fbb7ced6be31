"""Emulated Keithley 2450 SourceMeter (SCPI): sources a voltage, measures the routed device.

Physics: with the output on, ``:READ?`` measures the current of the device(s) the matrix routes to
the SMU (their sum: they are in parallel), at the source level, through the crossbar model;
beyond the current limit the reading is clipped at the limit and ``:SOUR:VOLT:ILIM:TRIP?``
answers 1; beyond a fixed measurement range the reading is the overflow value 9.9E+37. With the
output off the output relay is open and the reading is 0 A.

The emulator of the instrument whose driver is ``drivers/visa/keithley2450.py`` (same name: the
same instrument on the two sides).
"""

from __future__ import annotations

import math

from drivers.visa.emulators.instrument import SCPIInstrument, query_handler
from drivers.visa.emulators.scpi import (
    Command,
    SCPIError,
    boolean,
    keyword,
    no_args,
    number,
    one_arg,
    string,
)

SOURCE_RANGES = (0.02, 0.2, 2.0, 20.0, 200.0)
OVERFLOW = 9.9e37
NAN_READING = 9.91e37


class Keithley2450Emulator(SCPIInstrument):
    role = "smu"
    idn = "KEITHLEY INSTRUMENTS,MODEL 2450,EMULATED-2450,memprog-emulator"

    def reset(self) -> None:
        self.language = getattr(self, "language", "SCPI")
        self.output = False
        self.source_function = "VOLT"
        self.level = 0.0
        self.source_range_auto = True
        self.source_range = 0.2
        self.ilim = 1.05e-4
        self.tripped = False
        self.sense_function = "CURR:DC"
        self.nplc = 1.0
        self.current_range_auto = True
        self.current_range = 1e-4
        self.off_mode = "NORM"

    # -- command table --------------------------------------------------------------------------

    def command_table(self) -> list[Command]:
        return [
            Command(":SOURce#:FUNCtion[:MODE]", set=self._set_source_function,
                    get=self._q(lambda: self.source_function)),
            Command(":SOURce#:VOLTage[:LEVel][:IMMediate][:AMPLitude]", set=self._set_level,
                    get=self._q(lambda: f"{self.level:.6E}")),
            Command(":SOURce#:VOLTage:RANGe", set=self._set_source_range,
                    get=self._q(lambda: f"{self.source_range:.6E}")),
            Command(":SOURce#:VOLTage:RANGe:AUTO", set=self._set_source_range_auto,
                    get=self._q(lambda: "1" if self.source_range_auto else "0")),
            Command(":SOURce#:VOLTage:ILIMit[:LEVel]", set=self._set_ilim,
                    get=self._q(lambda: f"{self.ilim:.6E}")),
            Command(":SOURce#:VOLTage:ILIMit[:LEVel]:TRIPped",
                    get=self._q(lambda: "1" if self.tripped else "0")),
            Command(":SENSe#:FUNCtion[:ON]", set=self._set_sense_function,
                    get=self._q(lambda: f'"{self.sense_function}"')),
            Command(":SENSe#:CURRent[:DC]:NPLCycles", set=self._set_nplc,
                    get=self._q(lambda: f"{self.nplc:.6E}")),
            Command(":SENSe#:CURRent[:DC]:RANGe[:UPPer]", set=self._set_current_range,
                    get=self._q(lambda: f"{self.current_range:.6E}")),
            Command(":SENSe#:CURRent[:DC]:RANGe:AUTO", set=self._set_current_range_auto,
                    get=self._q(lambda: "1" if self.current_range_auto else "0")),
            Command(":OUTPut#[:STATe]", set=self._set_output,
                    get=self._q(lambda: "1" if self.output else "0")),
            Command(":OUTPut#:VOLTage:SMODe", set=self._set_off_mode,
                    get=self._q(lambda: self.off_mode)),
            Command(":OUTPut#:CURRent:SMODe", set=self._set_off_mode,
                    get=self._q(lambda: self.off_mode)),
            Command(":READ", get=self._read),
            Command(":MEASure:CURRent[:DC]", get=self._read),
            Command(":STATus:PRESet", set=self._noop),
            Command(":SYSTem:CLEar", set=self._clear),
        ]

    @staticmethod
    def _q(fn):
        return query_handler(_single, fn)

    def common(self, name: str, query: bool, args: list[str]) -> str | None:
        if name == "LANG":
            if query:
                no_args(args)
                return self.language
            self.language = keyword(one_arg(args), ["SCPI", "TSP", "SCPI2400"])
            return None
        return super().common(name, query, args)

    # -- setters ----------------------------------------------------------------------------------

    def _noop(self, suffixes, args) -> None:
        no_args(args)

    def _clear(self, suffixes, args) -> None:
        no_args(args)
        self.errors.clear()

    def _set_source_function(self, suffixes, args) -> None:
        _single(suffixes)
        func = keyword(one_arg(args), ["VOLTage", "CURRent"])
        if func != "VOLT":
            raise SCPIError(-221, "only the voltage source is emulated")
        if self.output:
            raise SCPIError(-221, "output on")
        self.source_function = func

    def _set_level(self, suffixes, args) -> None:
        _single(suffixes)
        top = 210.0 if self.source_range_auto else self.source_range * 1.05
        v = number(one_arg(args), -top, top, default=0.0, what="source level")
        self.level = v
        self.tripped = False

    def _set_source_range(self, suffixes, args) -> None:
        _single(suffixes)
        r = number(one_arg(args), -210.0, 210.0, default=0.2, what="source range")
        if abs(self.level) > 1.05 * _range_for(abs(r)):
            raise SCPIError(-221, "source level above the new range")
        self.source_range = _range_for(abs(r))
        self.source_range_auto = False

    def _set_source_range_auto(self, suffixes, args) -> None:
        _single(suffixes)
        self.source_range_auto = boolean(one_arg(args))

    def _set_ilim(self, suffixes, args) -> None:
        _single(suffixes)
        self.ilim = number(one_arg(args), 1e-9, 1.05, default=1.05e-4, what="current limit")

    def _set_sense_function(self, suffixes, args) -> None:
        _single(suffixes)
        func = string(one_arg(args)).upper()
        if func in ("CURR", "CURRENT", "CURR:DC", "CURRENT:DC"):
            self.sense_function = "CURR:DC"
            return
        if func in ("VOLT", "VOLTAGE", "VOLT:DC", "VOLTAGE:DC", "RES", "RESISTANCE"):
            raise SCPIError(-221, "only current measurement is emulated")
        raise SCPIError(-224, func)

    def _set_nplc(self, suffixes, args) -> None:
        _single(suffixes)
        self.nplc = number(one_arg(args), 0.01, 10.0, default=1.0, what="NPLC")

    def _set_current_range(self, suffixes, args) -> None:
        _single(suffixes)
        self.current_range = number(one_arg(args), 1e-8, 1.0, default=1e-4, what="current range")
        self.current_range_auto = False

    def _set_current_range_auto(self, suffixes, args) -> None:
        _single(suffixes)
        self.current_range_auto = boolean(one_arg(args))

    def _set_output(self, suffixes, args) -> None:
        _single(suffixes)
        on = boolean(one_arg(args))
        if on and not self.output:
            self.output = True
            self.tripped = False
            self.bench.check_sources("smu")
        elif not on:
            self.output = False
            self.tripped = False

    def _set_off_mode(self, suffixes, args) -> None:
        _single(suffixes)
        self.off_mode = keyword(one_arg(args), ["NORMal", "ZERO", "HIMPedance", "GUARd"])

    # -- measurement ------------------------------------------------------------------------------

    def _read(self, suffixes, args) -> str:
        if len(args) > 1:
            raise SCPIError(-108)
        if args:
            string(args[0])  # a reading buffer name; only the default one exists
        integration = self.nplc / self.bench.config.emulator.line_frequency
        self.busy(integration + 2e-4)
        if not self.output:
            return f"{0.0:.6E}"
        current = self.bench.measure_routed(self.level, integration)
        if current is None:
            return f"{NAN_READING:.6E}"
        if abs(current) > self.ilim:
            current = math.copysign(self.ilim, current)
            self.tripped = True
        if not self.current_range_auto and abs(current) > 1.05 * self.current_range:
            return f"{OVERFLOW:.6E}"
        return f"{current:.6E}"

    # -- integrity --------------------------------------------------------------------------------

    def end_of_message(self) -> None:
        if self.output:
            self.violation("transaction_open", "the SMU output stays on after the program message")

    def snapshot(self) -> dict:
        return {
            **super().snapshot(),
            "output": self.output,
            "level": self.level,
            "compliance": self.ilim,
            "tripped": self.tripped,
            "nplc": self.nplc,
            "off_mode": self.off_mode,
            "source_range": None if self.source_range_auto else self.source_range,
            "current_range": None if self.current_range_auto else self.current_range,
            "language": self.language,
        }


def _single(suffixes) -> None:
    if any(s != 1 for s in suffixes):
        raise SCPIError(-114)


def _range_for(v: float) -> float:
    for r in SOURCE_RANGES:
        if v <= r:
            return r
    return SOURCE_RANGES[-1]


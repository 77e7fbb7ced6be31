"""Keysight 33500B waveform generator: the programming pulses, one triggered burst each.

Configuration on every (re)connect (channel 1 shown)::

    *IDN?
    *CLS;:OUTP1 OFF;:OUTP1:LOAD INF;:SOUR1:FUNC PULS;:SOUR1:BURS:MODE TRIG;:SOUR1:BURS:NCYC 1;
    :SOUR1:BURS:STAT ON;:TRIG1:SOUR BUS;:SYST:ERR?

``OUTP1:LOAD INF`` matters: the output has a 50 Ohm source impedance and a memristor is a high
impedance, so with the default 50 Ohm load setting the device would see twice the programmed level.

Shape, sent only when amplitude, width or polarity change (a positive pulse of 0.5 V, 1 us)::

    OUTP1:POL NORM;:SOUR1:VOLT:HIGH 0.5;:SOUR1:VOLT:LOW 0;:SOUR1:FUNC:PULS:PER 2.2e-06;
    :SOUR1:FUNC:PULS:WIDT 1e-06;:SOUR1:FUNC:PULS:TRAN:BOTH 1e-07;:SYST:ERR?

A negative pulse rests at 0 V and dips to -A: ``HIGH 0``, ``LOW -A`` with the output inverted about
the offset (``OUTP1:POL INV``). Level and timing commands are ordered so that every intermediate
state is legal (high above low; edge ≤ 0.625 · width; period ≥ width + 1.6 · edge).

Firing, one round trip::

    OUTP1 ON;*TRG;*WAI;:OUTP1 OFF;*OPC?;:SYST:ERR?

Its emulator, the same instrument on the other side, is
``drivers/visa/emulators/keysight33500b.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.base import LimitError
from drivers.visa.bench import PulserConfig
from drivers.visa.scpi import (
    Choice,
    InstrumentError,
    Range,
    ScpiInstrument,
    Setting,
    join_scpi,
    parse_float,
    split_reply,
)
from drivers.visa.transport import Session

WIDTH_MIN = 16e-9
"""Shortest pulse width of the 33500B, s."""
EDGE_MIN = 8.4e-9
EDGE_MAX = 1e-6
AMPLITUDE_MIN = 2e-3
"""Smallest high-low difference into a high impedance (LOAD INF), V."""
LEVEL_MAX = 10.0
"""Largest |level| into a high impedance, V."""


def _round(x: float) -> float:
    return float(f"{x:.6g}")


@dataclass(frozen=True)
class PulseShape:
    """Amplitude (V, > 0), width (s) and polarity (+1 RESET side, -1 SET side) of one pulse."""

    amplitude: float
    width: float
    polarity: int
    edge: float
    period: float


class Keysight33500B(ScpiInstrument):
    """The SCPI dialect of the 33500B used here, commands declared next to their validators."""

    ERROR = "SYST:ERR?"  # IDENTIFY, CLEAR: ScpiInstrument's
    TRIGGER = "*TRG"
    WAIT = "*WAI"
    OPERATION_COMPLETE = "*OPC?"

    def __init__(self, config: PulserConfig, name: str = "pulser"):
        self.config = config
        self.name = name
        ch = config.channel
        self.OUTPUT_ON = f"OUTP{ch} ON"
        self.OUTPUT_OFF = f"OUTP{ch} OFF"
        self.LOAD_INF = f"OUTP{ch}:LOAD INF"
        self.FUNCTION_PULSE = f"SOUR{ch}:FUNC PULS"
        self.BURST_TRIGGERED = f"SOUR{ch}:BURS:MODE TRIG"
        self.BURST_ONE = f"SOUR{ch}:BURS:NCYC 1"
        self.BURST_ON = f"SOUR{ch}:BURS:STAT ON"
        self.TRIGGER_BUS = f"TRIG{ch}:SOUR BUS"
        self.polarity = Setting("polarity", f"OUTP{ch}:POL {{}}", Choice(("NORM", "INV")))
        level = Range(-LEVEL_MAX, LEVEL_MAX, "V")
        self.high = Setting("voltage", f"SOUR{ch}:VOLT:HIGH {{}}", level)
        self.low = Setting("voltage", f"SOUR{ch}:VOLT:LOW {{}}", level)
        self.period = Setting("period", f"SOUR{ch}:FUNC:PULS:PER {{}}", Range(33e-9, 1e6, "s"))
        self.width = Setting("width", f"SOUR{ch}:FUNC:PULS:WIDT {{}}", Range(WIDTH_MIN, 1e6, "s"))
        self.edge = Setting("edge", f"SOUR{ch}:FUNC:PULS:TRAN:BOTH {{}}",
                            Range(EDGE_MIN, EDGE_MAX, "s"))
        self._shape: PulseShape | None = None
        self.idn = ""

    # -- shapes -----------------------------------------------------------------------------------

    def shape(self, voltage: float, width: float) -> PulseShape:
        """The shape for ``voltage`` (V, signed) and ``width`` (s); LimitError if impossible."""
        amplitude = abs(float(voltage))
        Range(AMPLITUDE_MIN, LEVEL_MAX, "V")("voltage", amplitude)
        w = Range(WIDTH_MIN, 1e6, "s")("width", width)
        edge = _round(min(max(EDGE_MIN, self.config.edge_fraction * w), EDGE_MAX))
        period = _round(2 * w + 2 * edge)
        return PulseShape(amplitude, w, 1 if voltage > 0 else -1, edge, period)

    def shape_units(self, new: PulseShape, old: PulseShape | None) -> list[str]:
        """The commands that take the generator from ``old`` (None: unknown) to ``new``."""
        if new.polarity > 0:  # rest at 0 V, rise to +A: high first keeps high > low throughout
            levels = [self.polarity("NORM"), self.high(new.amplitude), self.low(0.0)]
        else:  # rest at 0 V, dip to -A: inverted about the offset; low first
            levels = [self.polarity("INV"), self.low(-new.amplitude), self.high(0.0)]
        widen = [self.period(new.period), self.width(new.width), self.edge(new.edge)]
        if old is None:  # unknown timing: step through the smallest legal shape first
            timing = [self.edge(EDGE_MIN), self.width(WIDTH_MIN), *widen]
        elif new.width >= old.width:
            timing = widen
        else:
            timing = widen[::-1]
        return [*levels, *timing]

    # -- messages -------------------------------------------------------------------------------

    def setup_message(self) -> str:
        return join_scpi(
            [
                self.CLEAR,
                self.OUTPUT_OFF,
                self.LOAD_INF,
                self.FUNCTION_PULSE,
                self.BURST_TRIGGERED,
                self.BURST_ONE,
                self.BURST_ON,
                self.TRIGGER_BUS,
                self.ERROR,
            ]
        )

    def fire_message(self) -> str:
        return join_scpi(
            [self.OUTPUT_ON, self.TRIGGER, self.WAIT, self.OUTPUT_OFF, self.OPERATION_COMPLETE,
             self.ERROR]
        )

    def safe_message(self) -> str:
        return join_scpi([self.OUTPUT_OFF, self.ERROR])

    # -- operations (run under the instrument's lock by the transport) ----------------------------

    def on_connect(self, s: Session) -> None:
        self._shape = None  # the instrument's timing is unknown after a (re)connect
        self.idn = s.query(self.IDENTIFY).strip()
        self.send_checked(s, self.setup_message())

    def apply_shape(self, s: Session, shape: PulseShape) -> bool:
        """Send the shape if it changed; True if anything was sent."""
        if shape == self._shape:
            return False
        message = join_scpi([*self.shape_units(shape, self._shape), self.ERROR])
        self._shape = None  # unknown until confirmed
        self.send_checked(s, message)
        self._shape = shape
        return True

    def fire(self, s: Session) -> None:
        """Output on, one bus-triggered burst, output off: one round trip."""
        message = self.fire_message()
        # The reply comes after the burst (*WAI): one period of the shape in use, which for a
        # long pulse may exceed the I/O timeout on its own.
        busy = self._shape.period if self._shape is not None else 0.0
        opc, error = split_reply(s.query(message, busy=busy), 2)
        try:
            self.check(error, message)
            if parse_float(opc, "*OPC?") != 1:
                raise InstrumentError(self.name, [(0, f"*OPC? answered {opc!r}")], message)
        except InstrumentError as e:
            # The reply came, but with an error (e.g. -211 "Trigger ignored") or an *OPC?
            # other than 1: whether a burst reached the device is not known. The caller
            # records the pulse as uncertain, never as certainly fired.
            e.uncertain = True
            raise

    def on_error(self) -> None:
        self._shape = None  # what the instrument holds after an error is not known


def check_pulse_shape(driver: Keysight33500B, voltage: float, width: float) -> PulseShape:
    """LimitError (field voltage/width) if the 33500B cannot make this pulse; nothing is sent."""
    try:
        return driver.shape(voltage, width)
    except LimitError as e:
        raise LimitError(e.field, f"{e.message} (33500B)", e.limit) from None


__all__ = ["Keysight33500B", "PulseShape", "check_pulse_shape"]

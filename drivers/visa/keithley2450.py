"""Keithley 2450 SourceMeter (native SCPI): the verify reads.

Configuration on every (re)connect, compliance before the output can go on::

    *IDN?;*LANG?                                   → must answer SCPI
    *CLS;:OUTP OFF;:SOUR:FUNC VOLT;:SOUR:VOLT:RANG:AUTO 0;:SOUR:VOLT:RANG <R>;:SOUR:VOLT:LEV 0;
    :SOUR:VOLT:ILIM <A>;:SENS:FUNC "CURR";:SENS:CURR:NPLC <n>;:SENS:CURR:RANG:AUTO 1;
    :OUTP:VOLT:SMOD HIMP;:SYST:ERR?

One read is one round trip, the output on only for the measurement and the level back at 0 V::

    :SOUR:VOLT:LEV <V>;:OUTP ON;:READ?;:SOUR:VOLT:ILIM:TRIP?;:OUTP OFF;:SOUR:VOLT:LEV 0;:SYST:ERR?

Its emulator, the same instrument on the other side, is
``drivers/visa/emulators/keithley2450.py``.
"""

from __future__ import annotations

from drivers.base import BackendError
from drivers.visa.bench import SMUConfig
from drivers.visa.scpi import (
    Choice,
    Range,
    ScpiInstrument,
    Setting,
    join_scpi,
    parse_bool,
    parse_float,
    split_reply,
)
from drivers.visa.transport import Session

OVERFLOW = 9.9e37
"""Keithley's reading for a measurement over range."""


class Keithley2450(ScpiInstrument):
    """The SCPI dialect of the 2450 used here, commands declared next to their validators."""

    # identity / housekeeping
    IDENTIFY = "*IDN?;*LANG?"  # CLEAR, ERROR: ScpiInstrument's
    # source
    OUTPUT_ON = ":OUTP ON"
    OUTPUT_OFF = ":OUTP OFF"
    SOURCE_VOLTAGE = ":SOUR:FUNC VOLT"
    SOURCE_RANGE_FIXED = ":SOUR:VOLT:RANG:AUTO 0"
    source_range = Setting("source_range", ":SOUR:VOLT:RANG {}", Range(0.02, 210.0, "V"))
    source_level = Setting("v_read", ":SOUR:VOLT:LEV {}", Range(-210.0, 210.0, "V"))
    current_limit = Setting("compliance", ":SOUR:VOLT:ILIM {}", Range(1e-9, 1.05, "A"))
    LIMIT_TRIPPED = ":SOUR:VOLT:ILIM:TRIP?"
    off_mode = Setting("off_mode", ":OUTP:VOLT:SMOD {}", Choice(("NORM", "ZERO", "HIMP", "GUAR")))
    # measure
    MEASURE_CURRENT = ':SENS:FUNC "CURR"'
    nplc = Setting("nplc", ":SENS:CURR:NPLC {}", Range(0.01, 10.0))
    CURRENT_RANGE_AUTO = ":SENS:CURR:RANG:AUTO 1"
    CURRENT_RANGE_FIXED = ":SENS:CURR:RANG:AUTO 0"
    current_range = Setting("current_range", ":SENS:CURR:RANG {}", Range(1e-8, 1.0, "A"))
    READ = ":READ?"

    def __init__(self, config: SMUConfig, compliance: float, name: str = "smu"):
        self.config = config
        self.name = name
        # Validate everything up front: a bad bench file fails before any I/O.
        self._setup = [
            self.CLEAR,
            self.OUTPUT_OFF,
            self.SOURCE_VOLTAGE,
            self.SOURCE_RANGE_FIXED,
            self.source_range(config.source_range),
            self.source_level(0.0),
            self.current_limit(compliance),  # compliance before the output can go on
            self.MEASURE_CURRENT,
            self.nplc(config.nplc),
            *(
                [self.CURRENT_RANGE_AUTO]
                if config.current_range is None
                else [self.CURRENT_RANGE_FIXED, self.current_range(config.current_range)]
            ),
            self.off_mode("HIMP"),
        ]
        self.compliance = compliance
        self.idn = ""

    # -- messages -------------------------------------------------------------------------------

    def setup_message(self) -> str:
        return join_scpi([*self._setup, self.ERROR])

    def read_message(self, v_read: float) -> str:
        return join_scpi(
            [
                self.source_level(v_read),
                self.OUTPUT_ON,
                self.READ,
                self.LIMIT_TRIPPED,
                self.OUTPUT_OFF,
                self.source_level(0.0),
                self.ERROR,
            ]
        )

    def safe_message(self) -> str:
        return join_scpi([self.OUTPUT_OFF, self.source_level(0.0), self.ERROR])

    # -- operations (run under the instrument's lock by the transport) ----------------------------

    def on_connect(self, s: Session) -> None:
        idn, lang = split_reply(s.query(self.IDENTIFY), 2)
        if lang.strip().strip('"').upper() != "SCPI":
            raise BackendError(
                f"{self.name}: the 2450 is in {lang!r} command mode; set it to SCPI "
                "(front panel: Menu → System → Settings → Command Set) and restart it"
            )
        self.idn = idn.strip()
        self.check(split_reply(s.query(self.setup_message()), 1)[0], "setup")

    def measure(self, s: Session, v_read: float) -> tuple[float, bool]:
        """Source ``v_read`` (V), measure; returns (current in A, compliance tripped)."""
        message = self.read_message(v_read)
        reading, tripped, error = split_reply(s.query(message), 3)
        self.check(error, message)
        current = parse_float(reading, "2450 reading")
        if abs(current) >= OVERFLOW / 10:
            raise BackendError(f"{self.name}: current over the measurement range (overflow)")
        return current, parse_bool(tripped, "2450 limit tripped")

"""The bench configuration: which instruments, where, how they are wired, and the safety limits.

Loaded from TOML (``deploy/bench.toml`` is the example). Every model is frozen and rejects unknown
keys, so a typo in a bench file is an error at start-up, not a silently ignored setting.

Wiring (only with a Keithley 707B matrix): crossbar row ``i`` is on matrix line ``row_lines[i]`` and
crossbar column ``j`` on ``col_lines[j]``; a line is ``"<slot><column>"`` (``"105"`` = slot 1,
column 05). The instruments' terminals sit on matrix rows (buses) ``smu_hi``, ``smu_lo``,
``pulser_hi``, ``pulser_lo``. Routing cell (i, j) to the SMU closes ``<slot><smu_hi><col>`` of the
row line and ``<slot><smu_lo><col>`` of the column line; 707B channel names, e.g. ``1A05``.

``routing = "exclusive"`` connects a cell to one instrument at a time (a pulse-and-verify cycle
switches the matrix twice). ``routing = "shared"`` connects both instruments to the addressed cell
and relies on their output relays for isolation: the 2450 is kept in the high-impedance output-off
mode (``:OUTP:VOLT:SMOD HIMP``), the 33500B output relay opens with ``OUTP1 OFF``; the matrix then
switches only when the cell changes.

Without a matrix the bench is one device (1 x 1) wired to both instruments in the shared manner.

The emulated bench that such a file can describe is ``drivers/visa/emulators/bench.py``.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from drivers.limits import LimitsSchema

_LINE = re.compile(r"^[1-6](0[1-9]|1[0-2])$")
_SOCKET = re.compile(r"^TCPIP\d*::(?P<host>[^:]+)::(?P<port>\d+)::SOCKET$", re.IGNORECASE)

InstrumentRole = Literal["smu", "pulser", "matrix"]
ROLES: tuple[InstrumentRole, ...] = ("smu", "pulser", "matrix")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class InstrumentConfig(_Frozen):
    """Where an instrument is and how to talk to it."""

    resource: str = Field(min_length=1)
    """VISA resource string, e.g. ``TCPIP0::192.168.0.20::5025::SOCKET``."""
    read_termination: str = "\n"
    write_termination: str = "\n"
    timeout: float = Field(default=2.0, gt=0.0, le=60.0)
    """I/O timeout of one read, s."""
    open_timeout: float = Field(default=2.0, gt=0.0, le=60.0)
    """Connection timeout, s."""

    def socket_address(self) -> tuple[str, int] | None:
        """(host, port) of a raw-socket resource, else None."""
        m = _SOCKET.match(self.resource.strip())
        return (m["host"], int(m["port"])) if m else None


class SMUConfig(InstrumentConfig):
    """Keithley 2450, used for the verify reads."""

    nplc: float = Field(default=0.1, ge=0.01, le=10.0)
    """Integration time in power-line cycles."""
    current_range: float | None = Field(default=None, ge=1e-8, le=1.0)
    """Fixed current measurement range, A; None = auto range."""
    source_range: float = Field(default=2.0, ge=0.02, le=200.0)
    """Fixed voltage source range, V (must cover v_read_max)."""


class PulserConfig(InstrumentConfig):
    """Keysight 33500B, used for the programming pulses."""

    channel: Literal[1, 2] = 1
    edge_fraction: float = Field(default=0.1, gt=0.0, le=0.5)
    """Edge time as a fraction of the pulse width (kept within 8.4 ns ... 1 us)."""


class MatrixConfig(InstrumentConfig):
    """Keithley 707B switch matrix (TSP), optional."""

    routing: Literal["exclusive", "shared"] = "exclusive"
    smu_hi: str = "A"
    smu_lo: str = "B"
    pulser_hi: str = "C"
    pulser_lo: str = "D"
    row_lines: tuple[str, ...] = Field(min_length=1)
    col_lines: tuple[str, ...] = Field(min_length=1)

    @field_validator("smu_hi", "smu_lo", "pulser_hi", "pulser_lo")
    @classmethod
    def _bus(cls, v: str) -> str:
        v = v.strip().upper()
        if len(v) != 1 or v not in "ABCDEFGH":
            raise ValueError("a matrix bus is one row letter A..H")
        return v

    @field_validator("row_lines", "col_lines")
    @classmethod
    def _lines(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for line in v:
            if not _LINE.match(line):
                raise ValueError(f"matrix line {line!r} is not '<slot 1-6><column 01-12>'")
        return v

    @model_validator(mode="after")
    def _distinct(self) -> MatrixConfig:
        buses = [self.smu_hi, self.smu_lo, self.pulser_hi, self.pulser_lo]
        if len(set(buses)) != 4:
            raise ValueError("smu_hi, smu_lo, pulser_hi and pulser_lo must be four different buses")
        lines = [*self.row_lines, *self.col_lines]
        if len(set(lines)) != len(lines):
            raise ValueError("a matrix line is used twice in row_lines/col_lines")
        return self

    def channels(self, row: int, col: int, role: Literal["smu", "pulser"]) -> tuple[str, str]:
        """The two 707B channels connecting cell (row, col) to ``role``'s HI and LO terminals."""
        hi, lo = (self.smu_hi, self.smu_lo) if role == "smu" else (self.pulser_hi, self.pulser_lo)
        r, c = self.row_lines[row], self.col_lines[col]
        return f"{r[0]}{hi}{r[1:]}", f"{c[0]}{lo}{c[1:]}"


class RetryConfig(_Frozen):
    """Bounded retries on transient I/O trouble."""

    attempts: int = Field(default=3, ge=1, le=10)
    """Tries of one operation (the first included)."""
    delay: float = Field(default=0.05, ge=0.0, le=5.0)
    """Pause before a retry, s."""


class EmergencyStopConfig(_Frozen):
    """The emergency stop's time budget."""

    budget: float = Field(default=1.0, ge=0.1, le=10.0)
    """s the emergency stop takes at most (plus 0.2 s of grace): every instrument is made safe at
    once, each with one attempt within the budget (no retry, no wait for a busy instrument
    beyond it); an instrument that has not confirmed by then is named in the error, while the
    ones that did are safe."""


class LimitsConfig(LimitsSchema):
    """The bench file's ``[limits]``: the shared schema (:mod:`drivers.limits`), with the
    shortest pulse the 33500B makes as the default ``width_min``."""

    width_min: float = Field(default=1.6e-8, gt=0.0, description="Shortest pulse width, s.")


FaultKind = Literal["slow", "drop", "garbage", "error"]


class FaultConfig(_Frozen):
    """One injected fault of an emulated instrument (bounded: fires ``count`` times)."""

    instrument: InstrumentRole
    kind: FaultKind
    match: str = ""
    """Fires on program messages containing this text (case-insensitive); empty = any."""
    after: int = Field(default=0, ge=0, le=10_000)
    """Matching messages to let through first."""
    count: int = Field(default=1, ge=1, le=100)
    delay: float = Field(default=1.0, ge=0.0, le=30.0)
    """For ``slow``: how late the reply comes, s."""
    error: str = '-240,"Hardware error"'
    """For ``error``: the queued error, ``<code>,"<message>"``."""

    @field_validator("error")
    @classmethod
    def _error(cls, v: str) -> str:
        if not re.match(r'^[+-]?\d+,".*"$', v.strip()):
            raise ValueError('error must look like -240,"Hardware error"')
        return v.strip()


class EmulatorConfig(_Frozen):
    """The emulated bench: the simulated crossbar behind the instruments, timing, faults."""

    seed: int = 0
    variability: Literal["ideal", "d2d", "realistic"] = "ideal"
    read_noise: float = Field(default=0.0, ge=0.0, le=1.0)
    stuck_fraction: float = Field(default=0.0, ge=0.0, le=1.0)
    population: str | None = None
    """Device population file of the emulated crossbar (sim_backend.population; a relative
    path is from the bench file's directory); None: the JART nominal devices."""
    timing: bool = True
    """Emulate integration (NPLC) and burst durations in the replies."""
    line_frequency: float = Field(default=50.0, ge=50.0, le=60.0)
    faults: tuple[FaultConfig, ...] = ()


class BenchConfig(_Frozen):
    """A whole bench: the instruments, the wiring, the limits, the retry policy."""

    name: str = "bench"
    smu: SMUConfig
    pulser: PulserConfig
    matrix: MatrixConfig | None = None
    limits: LimitsConfig = LimitsConfig()
    retry: RetryConfig = RetryConfig()
    emergency_stop: EmergencyStopConfig = EmergencyStopConfig()
    emulator: EmulatorConfig = EmulatorConfig()

    @model_validator(mode="after")
    def _ranges(self) -> BenchConfig:
        if self.smu.source_range < self.limits.v_read_max:
            raise ValueError("smu.source_range must cover limits.v_read_max")
        return self

    @property
    def rows(self) -> int:
        return len(self.matrix.row_lines) if self.matrix else 1

    @property
    def cols(self) -> int:
        return len(self.matrix.col_lines) if self.matrix else 1

    def instrument(self, role: InstrumentRole) -> InstrumentConfig | None:
        return getattr(self, role)

    def with_resources(self, resources: dict[str, str]) -> BenchConfig:
        """A copy with some instruments' resource strings replaced (role → resource)."""
        update = {}
        for role, res in resources.items():
            inst = self.instrument(role)  # type: ignore[arg-type]
            if inst is not None:
                update[role] = inst.model_copy(update={"resource": res})
        return self.model_copy(update=update)

    def to_toml(self) -> str:
        """The configuration as a TOML document (``load_bench`` reads it back unchanged)."""
        data = self.model_dump(exclude_none=True)
        lines = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
        for section, fields in data.items():
            if not isinstance(fields, dict):
                continue
            lines += ["", f"[{section}]"]
            tables = {k: v for k, v in fields.items() if isinstance(v, list | tuple) and v
                      and all(isinstance(x, dict) for x in v)}
            lines += [f"{k} = {_toml_value(v)}" for k, v in fields.items() if k not in tables]
            for name, items in tables.items():
                for item in items:
                    lines += ["", f"[[{section}.{name}]]"]
                    lines += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
        return "\n".join(lines) + "\n"

    def with_updates(self, **sections: dict | None) -> BenchConfig:
        """A copy with fields of some sections replaced, validated again."""
        data = self.model_dump()
        for section, fields in sections.items():
            if fields is None:
                data[section] = None
            else:
                data[section] = {**(data.get(section) or {}), **fields}
        return BenchConfig.model_validate(data)


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a JSON string is a valid TOML basic string
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def parse_bench(data: dict) -> BenchConfig:
    """Validate a bench configuration given as a mapping (the parsed TOML)."""
    return BenchConfig.model_validate(data)


def load_bench(path: str | Path) -> BenchConfig:
    """Load and validate a bench configuration TOML file (a relative emulator population is
    taken from the file's directory)."""
    with open(path, "rb") as f:
        config = parse_bench(tomllib.load(f))
    population = config.emulator.population
    if population is not None and not Path(population).is_absolute():
        emulator = config.emulator.model_copy(
            update={"population": str(Path(path).resolve().parent / population)})
        config = config.model_copy(update={"emulator": emulator})
    return config

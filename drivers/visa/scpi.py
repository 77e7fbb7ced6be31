"""Command declarations and their validators, shared by the instrument drivers.

A :class:`Setting` is one command that takes one value, declared as data next to the validator
that guards it: values outside the instrument's range raise :class:`drivers.base.LimitError`
before anything is sent. Nothing is ever clamped.

Numbers are written in the shortest form that reads back to the same float (``0.2``, ``1e-06``),
so the instrument receives exactly the value that was asked for.

The instruments' side of SCPI (parsing commands, answering) is
``drivers/visa/emulators/scpi.py``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from drivers.base import BackendError, LimitError

if TYPE_CHECKING:  # the transport imports this module
    from drivers.visa.transport import Session


class ProtocolError(IOError):
    """A reply that does not parse (garbage, wrong number of fields): a transient I/O fault."""


class InstrumentError(BackendError):
    """The instrument reported an error in its error queue."""

    def __init__(self, instrument: str, errors: Sequence[tuple[int, str]], message: str = ""):
        self.instrument = instrument
        self.errors = list(errors)
        self.uncertain = False
        """True if this error came with the reply to a fire: whether the pulse reached the
        device is not known (the operation log marks it so)."""
        text = "; ".join(f'{code},"{msg}"' for code, msg in self.errors)
        after = f" after {message!r}" if message else ""
        super().__init__(f"{instrument} reported {text}{after}")


def num(value: float) -> str:
    """The shortest decimal that reads back as the same float: ``0.2``, ``1e-06``, ``0``."""
    s = repr(float(value))
    return s[:-2] if s.endswith(".0") else s


@dataclass(frozen=True)
class Range:
    """A closed numeric range with its unit; out of range is rejected, never clamped."""

    lo: float
    hi: float
    unit: str = ""

    def __call__(self, name: str, value: float) -> float:
        v = float(value)
        if not math.isfinite(v):
            unit = f" of {self.unit}" if self.unit else ""
            raise LimitError(name, f"must be a finite number{unit}")
        if v < self.lo or v > self.hi:
            u = f" {self.unit}" if self.unit else ""
            raise LimitError(name, f"{num(v)}{u} outside {num(self.lo)} ... {num(self.hi)}{u}")
        return v


@dataclass(frozen=True)
class Choice:
    """One of a fixed set of keywords."""

    values: tuple[str, ...]

    def __call__(self, name: str, value: str) -> str:
        v = str(value).upper()
        if v not in self.values:
            raise LimitError(name, f"{value!r} is not one of {', '.join(self.values)}")
        return v


@dataclass(frozen=True)
class Setting:
    """A command setting one value: ``template`` with one ``{}``, guarded by ``validator``."""

    name: str
    template: str
    validator: Range | Choice

    def __call__(self, value: float | str) -> str:
        v = self.validator(self.name, value)  # type: ignore[arg-type]  # its own kind of value
        return self.template.format(num(v) if isinstance(v, float) else v)


def join_scpi(units: Sequence[str]) -> str:
    """One program message of SCPI units: ``;`` between units, every header rooted (``;:``).

    Common commands (``*TRG``) and already rooted headers (``:OUTP``) are kept as they are.
    """
    out = []
    for i, unit in enumerate(units):
        if i and not unit.startswith(("*", ":")):
            unit = ":" + unit
        out.append(unit)
    return ";".join(out)


def split_reply(reply: str, expected: int) -> list[str]:
    """Split a reply to several queries on ``;`` outside quotes; exactly ``expected`` fields."""
    fields: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in reply.strip():
        if ch == '"':
            quoted = not quoted
        if ch == ";" and not quoted:
            fields.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    fields.append("".join(cur).strip())
    if len(fields) != expected or quoted:
        raise ProtocolError(f"expected {expected} field(s) in reply, got {reply!r}")
    return fields


_ERROR = re.compile(r'^\s*([+-]?\d+)\s*,\s*"(.*)"\s*$')


def parse_error(field: str) -> tuple[int, str]:
    """``-113,"Undefined header"`` → (-113, 'Undefined header'); ``+0,"No error"`` → (0, ...)."""
    m = _ERROR.match(field)
    if not m:
        raise ProtocolError(f"not an error-queue entry: {field!r}")
    return int(m[1]), m[2]


def parse_float(field: str, what: str) -> float:
    try:
        v = float(field)
    except ValueError:
        raise ProtocolError(f"{what}: not a number: {field!r}") from None
    if math.isnan(v):
        raise ProtocolError(f"{what}: not a number: {field!r}")
    return v


def parse_bool(field: str, what: str) -> bool:
    f = field.strip().upper()
    if f in ("1", "ON", "+1"):
        return True
    if f in ("0", "OFF", "+0"):
        return False
    raise ProtocolError(f"{what}: not a boolean: {field!r}")


class InstrumentDriver:
    """What every instrument driver here has: its role's ``name`` (for messages), its
    identity (the ``IDENTIFY`` query's answer, read on every (re)connect) and the command
    that clears its status (``CLEAR``)."""

    IDENTIFY = "*IDN?"
    CLEAR = "*CLS"
    name: str = ""
    idn: str = ""


class ScpiInstrument(InstrumentDriver):
    """An SCPI instrument whose every program message ends with a read of its error queue
    (``ERROR``): an entry other than ``0,"No error"`` is an :class:`InstrumentError` naming
    the instrument and the message. ``safe`` sends ``safe_message()`` the same way."""

    ERROR = ":SYST:ERR?"

    def check(self, field: str, message: str) -> None:
        """Raise the error-queue entry ``field`` (the reply to ``ERROR``) if it is one."""
        code, text = parse_error(field)
        if code != 0:
            self.on_error()
            raise InstrumentError(self.name, [(code, text)], message)

    def on_error(self) -> None:
        """Called before an error is raised: forget what the instrument may no longer hold."""

    def send_checked(self, s: Session, message: str) -> None:
        """Send ``message`` (ending with ``ERROR``) and raise what its error queue says."""
        self.check(split_reply(s.query(message), 1)[0], message)

    def safe_message(self) -> str:
        raise NotImplementedError

    def safe(self, s: Session) -> None:
        self.send_checked(s, self.safe_message())


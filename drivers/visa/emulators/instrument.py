"""The emulated instrument core: program-message processing, common commands, error queue,
command counts, and the per-instrument integrity checks.

An instrument processes one program message (one line) at a time, atomically, under the bench's
lock. What it did is reported back as the reply (or None) and a delay (how long the instrument
would take: integration, bursts), which the server waits before replying.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from drivers.visa.emulators.scpi import (
    Command,
    ErrorQueue,
    SCPIError,
    compile_pattern,
    match_pattern,
    no_args,
    parse_unit,
    split_outside_quotes,
)

if TYPE_CHECKING:
    from drivers.visa.emulators.bench import EmulatedBench


@dataclass(frozen=True)
class Violation:
    """A broken rule of the bench: what a whole, serialised, safe transaction never does."""

    kind: str
    instrument: str
    detail: str
    connection: int
    message: str


class EmulatedInstrument:
    """Base of the three emulated instruments."""

    role = ""
    idn = ""

    def __init__(self, bench: EmulatedBench):
        self.bench = bench
        self.errors = ErrorQueue()
        self.counts: Counter[str] = Counter()
        """Commands executed, by canonical header (``*TRG``, ``:SOUR:VOLT:LEV``, ``...?``)."""
        self.messages = 0
        """Program messages processed."""
        self.log: deque[tuple[int, str]] = deque(maxlen=2000)
        """The last program messages, (connection, text), oldest first."""
        self._delay = 0.0
        self._conn = 0
        self._message = ""
        self._seq = 0
        self._last_seq: dict[int, int] = {}
        self._open_conns: set[int] = set()
        self.reset()

    # -- life cycle of a connection ---------------------------------------------------------------

    def connection_opened(self, conn: int) -> None:
        self._open_conns.add(conn)

    def connection_closed(self, conn: int) -> None:
        self._open_conns.discard(conn)
        self._last_seq.pop(conn, None)

    # -- one program message ----------------------------------------------------------------------

    def process(self, message: str, conn: int) -> tuple[str | None, float]:
        """Execute one program message; (reply or None, seconds the instrument is busy)."""
        self._check_interleaving(conn, message)
        self.messages += 1
        self.log.append((conn, message))
        self._delay = 0.0
        self._conn = conn
        self._message = message
        reply = self.execute(message)
        self.end_of_message()
        return reply, self._delay

    def _check_interleaving(self, conn: int, message: str) -> None:
        self._seq += 1
        mine = self._last_seq.get(conn)
        if mine is not None:
            others = [c for c, s in self._last_seq.items() if c != conn and s > mine
                      and c in self._open_conns]
            if others:
                self.violation(
                    "interleaved",
                    f"connections {conn} and {others[0]} take turns on one instrument",
                    conn=conn,
                    message=message,
                )
        self._last_seq[conn] = self._seq

    def violation(self, kind: str, detail: str, *, conn: int | None = None,
                  message: str | None = None) -> None:
        self.bench.record(
            Violation(kind, self.role, detail, self._conn if conn is None else conn,
                      self._message if message is None else message)
        )

    def busy(self, seconds: float) -> None:
        if self.bench.config.emulator.timing:
            self._delay += seconds

    # -- to implement ---------------------------------------------------------------------------

    def reset(self) -> None:
        """``*RST``: the power-on defaults (the error queue is left alone)."""

    def execute(self, message: str) -> str | None:
        raise NotImplementedError

    def end_of_message(self) -> None:
        """Integrity checks once a program message is done."""

    def snapshot(self) -> dict:
        return {
            "idn": self.idn,
            "messages": self.messages,
            "commands": dict(self.counts),
            "errors": self.errors.entries(),
        }


class SCPIInstrument(EmulatedInstrument):
    """An instrument speaking SCPI: a table of :class:`Command` patterns and common commands."""

    def __init__(self, bench: EmulatedBench):
        self.commands: list[Command] = []
        super().__init__(bench)
        self.commands = self.command_table()
        self.commands.append(Command(":SYSTem:ERRor[:NEXT]", get=self._error_next))
        self.commands.append(Command(":SYSTem:ERRor:COUNt", get=self._error_count))

    def command_table(self) -> list[Command]:
        raise NotImplementedError

    def execute(self, message: str) -> str | None:
        replies: list[str] = []
        try:
            units = split_outside_quotes(message, ";")
        except SCPIError as e:
            self.errors.push_error(e)
            return None
        path: list[str] = []
        for i, text in enumerate(units):
            if not text.strip():
                if len(units) > 1:
                    self.errors.push_error(SCPIError(-102, "empty command"))
                continue
            try:
                unit, path = parse_unit(text, path, first=(i == 0))
                reply = self._execute_unit(unit)
            except SCPIError as e:
                self.errors.push_error(e)
                continue
            if reply is not None:
                replies.append(reply)
        return ";".join(replies) if replies else None

    def _execute_unit(self, unit) -> str | None:
        if unit.common:
            self.counts["*" + unit.mnemonics[0] + ("?" if unit.query else "")] += 1
            return self.common(unit.mnemonics[0], unit.query, unit.args)
        for cmd in self.commands:
            suffixes = match_pattern(cmd.nodes, unit.mnemonics)
            if suffixes is None:
                continue
            handler = cmd.get if unit.query else cmd.set
            if handler is None:
                raise SCPIError(-113, unit.header)
            self.counts[_canonical(cmd.pattern) + ("?" if unit.query else "")] += 1
            return handler(suffixes, unit.args)
        raise SCPIError(-113, unit.header)

    def common(self, name: str, query: bool, args: list[str]) -> str | None:
        no_args(args)
        if name == "IDN" and query:
            return self.idn
        if name == "RST" and not query:
            self.reset()
            return None
        if name == "CLS" and not query:
            self.errors.clear()
            return None
        if name == "OPC":
            return "1" if query else None
        if name == "WAI" and not query:
            return None
        if name == "TRG" and not query:
            self.trigger()
            return None
        if name == "ESR" and query:
            return "0"
        if name == "STB" and query:
            return "0"
        raise SCPIError(-113, f"*{name}{'?' if query else ''}")

    def trigger(self) -> None:
        raise SCPIError(-211)

    def _error_next(self, suffixes, args) -> str:
        no_args(args)
        return self.errors.next()

    def _error_count(self, suffixes, args) -> str:
        no_args(args)
        return str(len(self.errors))


def query_handler(check_suffixes: Callable[[list], None], answer: Callable[[], str]) -> Callable:
    """A command table's query handler: checks the header's numeric suffixes
    (``check_suffixes``), refuses arguments, and answers ``answer()``."""

    def get(suffixes, args):
        check_suffixes(suffixes)
        no_args(args)
        return answer()

    return get


def _canonical(pattern: str) -> str:
    """``[SOURce#]:VOLTage[:LEVel]`` → ``:VOLT`` (the required nodes, short forms)."""
    return ":" + ":".join(n.short for n in compile_pattern(pattern) if not n.optional)

"""Emulated Keithley 707B switch matrix (TSP): a small Lua-call interpreter.

Supported: ``channel.open/close/exclusiveclose/getclose/reset(list)``, ``errorqueue.clear()``,
``errorqueue.next()``, ``errorqueue.count``, ``print(...)``, ``reset()``, ``waitcomplete()`` and
the common commands ``*IDN?``, ``*RST``, ``*CLS``, ``*OPC?``, ``*WAI``. As in TSP, a chunk (one
line) stops at its first error, which goes to the error queue. A channel is ``<slot><row A-H><column
01-12>``; lists are comma-separated, or ``allslots`` / ``slot<n>``.

Switching a channel while an instrument output is on ("hot switching") is a violation.

The emulator of the instrument whose driver is ``drivers/visa/keithley707b.py`` (same name: the
same instrument on the two sides).
"""

from __future__ import annotations

import re

from drivers.visa.emulators.instrument import EmulatedInstrument

_CHANNEL = re.compile(r"^([1-6])([A-H])(0[1-9]|1[0-2])$")
_TOKEN = re.compile(
    r"""\s*(?:(?P<str>"[^"]*"|'[^']*')|(?P<num>[+-]?\d+\.?\d*(?:[eE][+-]?\d+)?)"""
    r"""|(?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)|(?P<op>[(),;]))"""
)
RELAY_SETTLE = 3e-3
"""Relay closure plus settling time, s."""


class TSPError(Exception):
    def __init__(self, code: int, text: str):
        super().__init__(text)
        self.code = code
        self.text = text


class Keithley707BEmulator(EmulatedInstrument):
    role = "matrix"
    idn = "Keithley Instruments Inc., Model 707B, EMULATED-707B, memprog-emulator"

    def __init__(self, bench):
        self.slots = bench.matrix_slots()
        self.closed: set[str] = set()
        super().__init__(bench)
        self.errors.size = 100

    def reset(self) -> None:
        self._switch(set())

    # -- the interpreter ------------------------------------------------------------------------

    def execute(self, message: str) -> str | None:
        text = message.strip()
        if text.startswith("*"):
            return self._common(text)
        out: list[str] = []
        try:
            for call in _parse_chunk(text):
                self._eval(call, out)
        except TSPError as e:
            self.errors.push(e.code, e.text)
        return "\n".join(out) if out else None

    def _common(self, text: str) -> str | None:
        head = text.upper()
        self.counts[head] += 1
        if head == "*IDN?":
            return self.idn
        if head == "*RST":
            self.reset()
            return None
        if head == "*CLS":
            self.errors.clear()
            return None
        if head == "*OPC?":
            return "1"
        if head in ("*WAI", "*OPC", "*TRG"):
            return None
        self.errors.push(-285, f"TSP Syntax error at line 1: unexpected symbol near '{text}'")
        return None

    def _eval(self, node, out: list[str]):
        kind = node[0]
        if kind in ("str", "num"):
            return [node[1]]
        if kind == "name":
            name = node[1]
            if name == "errorqueue.count":
                return [float(len(self.errors))]
            if name == "nil":
                return [None]
            if name in ("true", "false"):
                return [name == "true"]
            raise TSPError(-286, f"TSP Runtime error at line 1: attempt to index a nil value "
                                 f"({name})")
        _, name, arg_nodes = node
        args = []
        for a in arg_nodes:
            values = self._eval(a, out)
            args.extend(values if a is arg_nodes[-1] else values[:1])
        self.counts[name] += 1
        if name == "print":
            out.append("\t".join(_tsp_str(v) for v in args))
            return []
        if name in ("channel.open", "channel.close", "channel.exclusiveclose", "channel.reset"):
            channels = self._channel_list(args, name)
            if name in ("channel.open", "channel.reset"):
                self._switch(self.closed - channels)
            elif name == "channel.close":
                self._switch(self.closed | channels)
            else:
                self._switch(set(channels))
            return []
        if name == "channel.getclose":
            channels = self._channel_list(args, name)
            closed = sorted(self.closed & channels, key=_channel_order)
            return [";".join(closed) if closed else None]
        if name == "errorqueue.clear":
            self.errors.clear()
            return []
        if name == "errorqueue.next":
            code, text = self.errors.pop()
            if code == 0:
                text = "Queue Is Empty"
            return [float(code), text, 0.0 if code == 0 else 2.0, 1.0]
        if name == "reset":
            self.reset()
            return []
        if name == "waitcomplete":
            return []
        raise TSPError(-286, f"TSP Runtime error at line 1: attempt to call field '{name}' "
                             "(a nil value)")

    def _channel_list(self, args, fn: str) -> set[str]:
        if len(args) != 1 or not isinstance(args[0], str):
            raise TSPError(-286, f"TSP Runtime error at line 1: bad argument #1 to '{fn}' "
                                 "(string expected)")
        result: set[str] = set()
        for item in args[0].split(","):
            item = item.strip().upper()
            if item == "ALLSLOTS":
                result |= self._all_channels(self.slots)
            elif re.fullmatch(r"SLOT[1-6]", item) and int(item[4]) in self.slots:
                result |= self._all_channels([int(item[4])])
            else:
                m = _CHANNEL.match(item)
                if not m or int(m[1]) not in self.slots:
                    raise TSPError(1115, f"Parameter error: invalid channel {item!r} in {fn}")
                result.add(item)
        return result

    @staticmethod
    def _all_channels(slots) -> set[str]:
        return {f"{s}{r}{c:02d}" for s in slots for r in "ABCDEFGH" for c in range(1, 13)}

    def _switch(self, closed: set[str]) -> None:
        if closed == self.closed:
            return
        if hasattr(self.bench, "smu"):
            live = [i.role for i in (self.bench.smu, self.bench.pulser) if i.output]
            if live:
                self.violation("hot_switch", f"matrix switched with the {live[0]} output on")
        self.closed = set(closed)
        self.busy(RELAY_SETTLE)

    def snapshot(self) -> dict:
        return {**super().snapshot(), "closed": sorted(self.closed, key=_channel_order)}


def _channel_order(ch: str) -> tuple:
    return (ch[0], int(ch[2:]), ch[1])


def _tsp_str(v) -> str:
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return f"{v:.5e}"
    return str(v)


def _parse_chunk(text: str) -> list:
    """Statements of a chunk: a sequence of calls, optionally separated by ``;``."""
    tokens = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise TSPError(-285, f"TSP Syntax error at line 1: unexpected symbol near "
                                 f"'{text[pos:pos + 10].strip()}'")
        kind = m.lastgroup or ""
        value = m.group(kind)
        if kind == "str":
            value = value[1:-1]
        elif kind == "num":
            value = float(value)
        tokens.append((kind, value))
        pos = m.end()

    i = 0

    def expr():
        nonlocal i
        if i >= len(tokens):
            raise TSPError(-285, "TSP Syntax error at line 1: unexpected end of chunk")
        kind, value = tokens[i]
        if kind in ("str", "num"):
            i += 1
            return (kind, value)
        if kind == "name":
            i += 1
            if i < len(tokens) and tokens[i] == ("op", "("):
                i += 1
                args = []
                if tokens[i:i + 1] != [("op", ")")]:
                    args.append(expr())
                    while tokens[i:i + 1] == [("op", ",")]:
                        i += 1
                        args.append(expr())
                if tokens[i:i + 1] != [("op", ")")]:
                    raise TSPError(-285, "TSP Syntax error at line 1: ')' expected")
                i += 1
                return ("call", value, args)
            return ("name", value)
        raise TSPError(-285, f"TSP Syntax error at line 1: unexpected symbol near '{value}'")

    calls = []
    while i < len(tokens):
        if tokens[i] == ("op", ";"):
            i += 1
            continue
        node = expr()
        if node[0] != "call":
            raise TSPError(-285, "TSP Syntax error at line 1: '=' expected")
        calls.append(node)
    return calls

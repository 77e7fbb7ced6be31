"""A small but real SCPI parser for the instrument emulators.

* program messages are split into units on ``;`` outside quotes;
* headers match their command patterns in short or long form, case-insensitively, with optional
  nodes (``[LEVel]``) and numeric suffixes (``SOURce#``: ``SOUR``, ``SOURCE1``, ``sour2``);
* after a ``;`` a header without a leading ``:`` continues from the previous header's path
  (``SOUR1:VOLT:LOW 0;HIGH 1``), as the standard says; common commands (``*TRG``) do not move it;
* errors go into a bounded queue, oldest first, with the standard codes and messages; an
  overflowing queue keeps its last place for ``-350,"Queue overflow"``.

The SCPI of the emulated instruments: the controller's side is ``drivers/visa/scpi.py``.
"""

from __future__ import annotations

import math
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

ERRORS = {
    -100: "Command error",
    -102: "Syntax error",
    -104: "Data type error",
    -108: "Parameter not allowed",
    -109: "Missing parameter",
    -113: "Undefined header",
    -114: "Header suffix out of range",
    -131: "Invalid suffix",
    -141: "Invalid character data",
    -211: "Trigger ignored",
    -221: "Settings conflict",
    -222: "Data out of range",
    -224: "Illegal parameter value",
    -350: "Queue overflow",
}


class SCPIError(Exception):
    """An error to queue: code and message (the standard message unless given)."""

    def __init__(self, code: int, detail: str = ""):
        self.code = code
        base = ERRORS.get(code, "Error")
        self.text = f"{base};{detail}" if detail else base
        super().__init__(f'{code},"{self.text}"')


class ErrorQueue:
    """The instrument's error/event queue (FIFO, bounded)."""

    def __init__(self, size: int = 20, plus_sign: bool = False):
        self.size = size
        self.plus_sign = plus_sign
        self._q: deque[tuple[int, str]] = deque()

    def push(self, code: int, text: str) -> None:
        if len(self._q) >= self.size:
            self._q[-1] = (-350, ERRORS[-350])
            return
        self._q.append((code, text))

    def push_error(self, e: SCPIError) -> None:
        self.push(e.code, e.text)

    def pop(self) -> tuple[int, str]:
        return self._q.popleft() if self._q else (0, "No error")

    def format(self, code: int, text: str) -> str:
        sign = "+" if self.plus_sign and code >= 0 else ""
        return f'{sign}{code},"{text}"'

    def next(self) -> str:
        return self.format(*self.pop())

    def clear(self) -> None:
        self._q.clear()

    def __len__(self) -> int:
        return len(self._q)

    def entries(self) -> list[tuple[int, str]]:
        return list(self._q)


# -- messages -------------------------------------------------------------------------------------


def split_outside_quotes(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    cur: list[str] = []
    quote = ""
    for ch in text:
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == sep:
            parts.append("".join(cur))
            cur = []
            continue
        cur.append(ch)
    if quote:
        raise SCPIError(-102, "unterminated string")
    parts.append("".join(cur))
    return parts


@dataclass
class Unit:
    """One parsed program message unit."""

    raw: str
    common: bool
    query: bool
    mnemonics: list[str]
    args: list[str]

    @property
    def header(self) -> str:
        return ("" if self.common else ":") + ":".join(self.mnemonics) + ("?" if self.query else "")


_MNEMONIC = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def parse_unit(text: str, path: list[str], first: bool) -> tuple[Unit, list[str]]:
    """Parse one unit; ``path`` is the header path left by the previous unit of the message."""
    text = text.strip()
    m = re.match(r"^(\S+)(?:\s+(.*))?$", text, re.S)
    if not m:
        raise SCPIError(-102, "empty command")
    head, rest = m[1], (m[2] or "").strip()
    args = [a.strip() for a in split_outside_quotes(rest, ",")] if rest else []
    if any(a == "" for a in args):
        raise SCPIError(-102, "empty parameter")
    query = head.endswith("?")
    if query:
        head = head[:-1]
    if head.startswith("*"):
        name = head[1:].upper()
        if not name.isalpha():
            raise SCPIError(-102, head)
        return Unit(text, True, query, [name], args), path
    rooted = head.startswith(":")
    parts = head.lstrip(":").split(":")
    if not all(_MNEMONIC.match(p) for p in parts):
        raise SCPIError(-102, head)
    mnemonics = parts if (rooted or first) else [*path, *parts]
    return Unit(text, False, query, [p.upper() for p in mnemonics], args), mnemonics[:-1]


# -- command patterns -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    long: str
    short: str
    optional: bool
    numeric: bool

    def accepts(self, mnemonic: str) -> int | None:
        """The numeric suffix (1 if none) if ``mnemonic`` names this node, else None."""
        m = re.fullmatch(r"([A-Z_]+)(\d*)", mnemonic)
        if not m or m[1] not in (self.long, self.short):
            return None
        if m[2] and not self.numeric:
            return None
        return int(m[2]) if m[2] else 1


def compile_pattern(pattern: str) -> list[Node]:
    """``[SOURce#]:VOLTage[:LEVel]`` → nodes; the uppercase letters are the short form."""
    nodes = []
    for token in re.findall(r"\[:?[A-Za-z]+#?\]|:?[A-Za-z]+#?", pattern):
        optional = token.startswith("[")
        name = token.strip("[]:")
        numeric = name.endswith("#")
        name = name.rstrip("#")
        short = "".join(ch for ch in name if ch.isupper())
        nodes.append(Node(name.upper(), short, optional, numeric))
    return nodes


def match_pattern(nodes: list[Node], mnemonics: list[str]) -> list[int] | None:
    """The numeric suffixes of the matched nodes (in order), or None if no match."""

    def go(i: int, j: int, acc: list[int]) -> list[int] | None:
        if i == len(nodes):
            return acc if j == len(mnemonics) else None
        node = nodes[i]
        if j < len(mnemonics):
            suffix = node.accepts(mnemonics[j])
            if suffix is not None:
                found = go(i + 1, j + 1, [*acc, suffix] if node.numeric else acc)
                if found is not None:
                    return found
        if node.optional:
            return go(i + 1, j, [*acc, 1] if node.numeric else acc)
        return None

    return go(0, 0, [])


Handler = Callable[..., "str | None"]


@dataclass
class Command:
    pattern: str
    set: Handler | None = None
    get: Handler | None = None
    nodes: list[Node] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.nodes = compile_pattern(self.pattern)


# -- parameters -----------------------------------------------------------------------------------


def one_arg(args: list[str]) -> str:
    if not args:
        raise SCPIError(-109)
    if len(args) > 1:
        raise SCPIError(-108)
    return args[0]


def no_args(args: list[str]) -> None:
    if args:
        raise SCPIError(-108)


_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def number(
    arg: str,
    lo: float,
    hi: float,
    *,
    default: float | None = None,
    keywords: dict[str, float] | None = None,
    what: str = "",
) -> float:
    """A numeric parameter within [lo, hi]; MIN/MAX/DEF and extra keywords (``INF``)."""
    word = arg.strip().upper()
    specials = {"MIN": lo, "MINIMUM": lo, "MAX": hi, "MAXIMUM": hi}
    if default is not None:
        specials.update({"DEF": default, "DEFAULT": default})
    for k, v in (keywords or {}).items():
        specials[k.upper()] = v
    if word in specials:
        return specials[word]
    if not _NUMBER.match(word):
        if re.match(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?[A-Z]+$", word):
            raise SCPIError(-131, word)
        if word[:1].isalpha():
            raise SCPIError(-141, word)
        raise SCPIError(-104, word)
    value = float(word)
    if not math.isfinite(value) or value < lo or value > hi:
        raise SCPIError(-222, f"{what} {arg} outside {lo:g} ... {hi:g}".strip())
    return value


def boolean(arg: str) -> bool:
    word = arg.strip().upper()
    if word in ("1", "ON"):
        return True
    if word in ("0", "OFF"):
        return False
    raise SCPIError(-224, arg)


def keyword(arg: str, choices: list[str]) -> str:
    """One of ``choices`` (long forms with the short form in capitals); returns the short form."""
    word = arg.strip().upper()
    for c in choices:
        short = "".join(ch for ch in c if ch.isupper())
        if word in (c.upper(), short):
            return short
    if not word[:1].isalpha():
        raise SCPIError(-104, arg)
    raise SCPIError(-224, arg)


def string(arg: str) -> str:
    a = arg.strip()
    if len(a) >= 2 and a[0] == a[-1] and a[0] in "\"'":
        return a[1:-1]
    raise SCPIError(-104, "string expected")

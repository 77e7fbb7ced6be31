"""Keithley 707B switch matrix (TSP): routes a crossbar cell to the SMU or to the pulser.

TSP aborts a chunk at its first error, so the action and the check are two chunks (two lines),
sent in one write; the check reads back the closed channels and the error count (one round trip)::

    channel.exclusiveclose("1A01,1B05")
    print(channel.getclose("allslots"), errorqueue.count)      → 1A01;1B05<TAB>0.00000e+00

Safe state (and on every (re)connect, after ``*IDN?``; then with ``*CLS`` in front)::

    channel.open("allslots")
    print(channel.getclose("allslots"), errorqueue.count)      → nil<TAB>0.00000e+00

Its emulator, the same instrument on the other side, is
``drivers/visa/emulators/keithley707b.py``.
"""

from __future__ import annotations

from collections.abc import Iterable

from drivers.base import BackendError
from drivers.visa.bench import MatrixConfig
from drivers.visa.scpi import InstrumentDriver, InstrumentError, ProtocolError, parse_float
from drivers.visa.transport import Session

Destination = str
"""``"smu"``, ``"pulser"`` or ``"both"``."""


class Keithley707B(InstrumentDriver):
    """The TSP calls of the 707B used here (IDENTIFY, CLEAR: :class:`InstrumentDriver`'s; its
    error queue is TSP's ``errorqueue``, read with the status of every action)."""

    OPEN_ALL = 'channel.open("allslots")'
    STATUS = 'print(channel.getclose("allslots"), errorqueue.count)'
    NEXT_ERROR = "print(errorqueue.next())"

    def __init__(self, config: MatrixConfig, name: str = "matrix"):
        self.config = config
        self.name = name
        self.idn = ""
        self._route: tuple[int, int, Destination] | None = None

    # -- messages -------------------------------------------------------------------------------

    def channels(self, row: int, col: int, destination: Destination) -> list[str]:
        roles = ("smu", "pulser") if destination == "both" else (destination,)
        return [ch for role in roles for ch in self.config.channels(row, col, role)]  # type: ignore[arg-type]

    def route_message(self, row: int, col: int, destination: Destination) -> str:
        return f'channel.exclusiveclose("{",".join(self.channels(row, col, destination))}")'

    # -- operations (run under the instrument's lock by the transport) ----------------------------

    def on_connect(self, s: Session) -> None:
        self._route = None
        self.idn = s.query(self.IDENTIFY).strip()
        self._action(s, self.OPEN_ALL, [], clear=True)

    def route(self, s: Session, row: int, col: int, destination: Destination) -> bool:
        """Connect (row, col) to the destination, everything else open; False if already so."""
        if self._route == (row, col, destination):
            return False
        self._route = None
        self._action(s, self.route_message(row, col, destination),
                     self.channels(row, col, destination))
        self._route = (row, col, destination)
        return True

    def safe(self, s: Session) -> None:
        self._route = None
        self._action(s, self.OPEN_ALL, [])

    def _action(
        self, s: Session, action: str, expected: Iterable[str], clear: bool = False
    ) -> None:
        reply = s.query_lines([*([self.CLEAR] if clear else []), action, self.STATUS])
        fields = reply.split("\t")
        if len(fields) != 2:
            raise ProtocolError(f"{self.name}: unexpected status reply {reply!r}")
        closed_text, count_text = fields[0].strip(), fields[1].strip()
        count = int(parse_float(count_text, "errorqueue.count"))
        if count:
            errors = []
            for _ in range(min(count, 10)):
                parts = s.query(self.NEXT_ERROR).split("\t")
                code = int(parse_float(parts[0], "error code")) if parts else 0
                errors.append((code, parts[1].strip() if len(parts) > 1 else ""))
            raise InstrumentError(self.name, errors, action)
        closed = set() if closed_text == "nil" else {c for c in closed_text.split(";") if c}
        if closed != set(expected):
            raise BackendError(
                f"{self.name}: after {action!r} the closed channels are "
                f"{sorted(closed) or 'none'}, expected {sorted(expected) or 'none'}"
            )

"""VISA transport: one ResourceManager per process, one owner per instrument, atomic transactions.

PyVISA is not safe for two threads on one instrument, a closed ResourceManager invalidates the
others, and there is no built-in reconnect. So:

* :func:`resource_manager` keeps one ``ResourceManager("@py")`` per process (re-created after a
  fork) and never closes it while instruments use it;
* an :class:`Instrument` is the only owner of its resource in the process (a second one is refused)
  and runs every operation under its lock: the write, the read and the error check of one
  transaction cannot interleave with another thread's;
* on a timeout, an I/O error or a garbled reply it closes the resource, reopens it and runs the
  driver's ``on_connect`` (``*CLS``, re-configure, safe state), then retries an idempotent
  operation (bounded); a non-idempotent one (firing a pulse) is never repeated. When the retries
  are spent it raises :class:`drivers.base.BackendUnavailable` naming the instrument and the cause;
* :meth:`Instrument.run_by` (the emergency stop) makes one attempt that ends by a deadline: it
  waits for the lock (a running transaction may wait for a hung reply under it), connects and
  waits for every reply only until then, never retries, and drops a session whose reply did not
  come (a late reply must not answer the next query).

A *round trip* is one reply waited for; writes that expect no reply are counted separately.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from drivers.base import BackendError, BackendUnavailable
from drivers.visa.bench import InstrumentConfig, RetryConfig
from drivers.visa.scpi import InstrumentError, ProtocolError

log = logging.getLogger("memprog.visa")

T = TypeVar("T")

_RM_LOCK = threading.Lock()
_RM = None
_RM_PID: int | None = None

_OWNERS_LOCK = threading.Lock()
_OWNERS: dict[str, Instrument] = {}


def resource_manager():
    """The process's single pyvisa-py ResourceManager (created on first use)."""
    global _RM, _RM_PID
    with _RM_LOCK:
        if _RM is None or _RM_PID != os.getpid():
            import pyvisa

            _RM = pyvisa.ResourceManager("@py")
            _RM_PID = os.getpid()
        return _RM


def _transient_errors() -> tuple[type[BaseException], ...]:
    import pyvisa.errors

    return (pyvisa.errors.VisaIOError, OSError, ProtocolError, UnicodeDecodeError, EOFError)


@dataclass
class IOStats:
    """Counters of one instrument's traffic."""

    round_trips: int = 0
    """Replies waited for."""
    writes: int = 0
    """Program messages sent (with or without a reply)."""
    connects: int = 0
    """(Re)connections made (the first included)."""
    failures: int = 0
    """Transactions that failed with a transient I/O fault."""

    def snapshot(self) -> dict[str, int]:
        return dict(self.__dict__)


class Session:
    """The write/query interface handed to an operation while its instrument's lock is held."""

    def __init__(self, instrument: Instrument, resource, deadline: float | None = None):
        self._inst = instrument
        self._res = resource
        # time.monotonic() by which every reply must have come (Instrument.run_by), or None
        self._deadline = deadline

    def write(self, message: str) -> None:
        self._inst.stats.writes += 1
        self._inst.journal.append(message)
        self._res.write(message)

    def query(self, message: str, busy: float = 0.0) -> str:
        """Send one program message and wait for its reply (one round trip).

        ``busy``: seconds the instrument works before it can answer (a burst it runs), added
        to the timeout for this reply only.
        """
        if self._deadline is not None:
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no time left to send {message!r}")
            self._res.timeout = max(1.0, (left + busy) * 1000.0)  # ms
            busy = 0.0  # already in the timeout
        self.write(message)
        self._inst.stats.round_trips += 1
        if busy > 0:
            timeout = self._res.timeout
            self._res.timeout = timeout + busy * 1000.0  # ms
            try:
                reply = self._res.read()
            finally:
                self._res.timeout = timeout
        else:
            reply = self._res.read()
        if not reply.replace("\t", " ").isprintable():
            raise ProtocolError(f"unprintable reply to {message!r}: {reply!r}")
        return reply

    def query_lines(self, lines: list[str]) -> str:
        """Several program messages in one write, the last a query: one round trip.

        (Separate small writes would each wait for the previous one's TCP acknowledgement,
        Nagle's algorithm against delayed ACKs, ~40 ms; pyvisa-py cannot set TCP_NODELAY.)
        """
        return self.query(self._inst.config.write_termination.join(lines))


class Instrument:
    """The single owner of one VISA resource; runs operations atomically, reconnects, retries."""

    def __init__(
        self,
        name: str,
        config: InstrumentConfig,
        retry: RetryConfig,
        on_connect: Callable[[Session], None],
        *,
        journal_size: int = 1000,
    ):
        self.name = name
        self.config = config
        self.retry = retry
        self.on_connect = on_connect
        self.stats = IOStats()
        self.journal: deque[str] = deque(maxlen=journal_size)
        """The last program messages sent, oldest first (for tests and diagnostics)."""
        self._lock = threading.RLock()
        self._res = None
        self._activity = ""  # what the lock is held for (named when the emergency stop waits)
        self._key = config.resource.strip().upper()
        with _OWNERS_LOCK:
            if self._key in _OWNERS:
                raise BackendUnavailable(
                    f"{name}: {config.resource} is already owned by another driver in this process"
                )
            _OWNERS[self._key] = self
        self._released = False

    # -- connection ------------------------------------------------------------------------------

    def _open(self, deadline: float | None = None) -> None:
        rm = resource_manager()
        open_timeout = self.config.open_timeout
        if deadline is not None:
            open_timeout = min(open_timeout, deadline - time.monotonic())
            if open_timeout <= 0:
                raise TimeoutError("no time left to connect")
        res = rm.open_resource(
            self.config.resource,
            read_termination=self.config.read_termination,
            write_termination=self.config.write_termination,
            timeout=int(self.config.timeout * 1000),
            open_timeout=max(1, int(open_timeout * 1000)),
        )
        self.stats.connects += 1
        self._res = res
        try:
            self.on_connect(Session(self, res, deadline))
        except BaseException:
            self._drop()
            raise

    def _drop(self) -> None:
        res, self._res = self._res, None
        if res is not None:
            try:
                res.close()
            except Exception:  # closing a broken session may fail; it is gone anyway
                log.debug("%s: close failed", self.name, exc_info=True)

    @property
    def connected(self) -> bool:
        return self._res is not None

    def close(self) -> None:
        """Close the resource and give up ownership."""
        with self._lock:
            self._drop()
            if not self._released:
                with _OWNERS_LOCK:
                    if _OWNERS.get(self._key) is self:
                        del _OWNERS[self._key]
                self._released = True

    # -- operations -------------------------------------------------------------------------------

    def run(
        self,
        op: Callable[[Session], T],
        *,
        idempotent: bool = True,
        what: str = "",
        abort: Callable[[], bool] | None = None,
    ) -> T:
        """Run ``op`` atomically under this instrument's lock; reconnect and retry on I/O faults.

        ``idempotent=False`` (a pulse): after a fault the instrument is reconnected (so it is back
        in its safe state) but the operation is not repeated; BackendUnavailable says so.
        An :class:`InstrumentError` is retried like a transient fault if ``idempotent``.
        ``abort`` (an emergency stop) is asked before every attempt and before every wait
        between attempts: once true, no further attempt, a :class:`BackendError` instead.
        """
        transient = _transient_errors()
        what = what or getattr(op, "__name__", "operation")
        attempts = self.retry.attempts
        with self._lock, self._doing(what):
            if self._released:
                raise BackendUnavailable(f"{self.name}: closed")
            for attempt in range(1, attempts + 1):
                if abort is not None and abort():
                    raise BackendError(f"{self.name}: {what} stopped by an emergency stop")
                started = False
                try:
                    if self._res is None:
                        self._open()
                    started = True
                    return op(Session(self, self._res))
                except InstrumentError:
                    self._recover()
                    if not idempotent or attempt == attempts:
                        raise
                    log.warning("%s: %s: instrument error, retrying", self.name, what)
                except transient as e:
                    self.stats.failures += 1
                    self._drop()
                    cause = _describe(e)
                    log.warning("%s: %s: %s (attempt %d/%d)", self.name, what, cause, attempt,
                                attempts)
                    if started and not idempotent:
                        safe = "reconnected and made safe" if self._recover() else (
                            "could not reconnect")
                        err = BackendUnavailable(
                            f"{self.name} ({self.config.resource}): {cause} during {what}; "
                            f"{safe}; not repeated, the outcome is unknown"
                        )
                        err.command_sent = True  # type: ignore[attr-defined]
                        raise err from e
                    if attempt == attempts:
                        self._recover()
                        raise BackendUnavailable(
                            f"{self.name} ({self.config.resource}): {cause} during {what}; "
                            f"gave up after {attempts} attempt(s)"
                        ) from e
                    if self.retry.delay and not (abort is not None and abort()):
                        time.sleep(self.retry.delay)
            raise AssertionError("unreachable")  # pragma: no cover

    def run_by(self, op: Callable[[Session], T], deadline: float, *, what: str = "") -> T:
        """One attempt of ``op`` that ends by ``deadline`` (``time.monotonic()``): the
        emergency stop's.

        The lock is waited for until the deadline only, a connection is made and every reply
        waited for only until then; no retry, no reconnect after a fault (the session is
        dropped: a reply that comes late must not answer the next query). Raises
        :class:`BackendUnavailable` naming the instrument when ``op`` did not complete in time.
        """
        what = what or getattr(op, "__name__", "operation")
        where = f"{self.name} ({self.config.resource})"
        if not self._lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            busy = f" with {self._activity}" if self._activity else ""
            raise BackendUnavailable(f"{where}: still busy{busy}; {what} not sent in time")
        try:
            if self._released:
                raise BackendUnavailable(f"{self.name}: closed")
            with self._doing(what):
                try:
                    if self._res is None:
                        self._open(deadline)
                    return op(Session(self, self._res, deadline))
                except _transient_errors() as e:
                    self.stats.failures += 1
                    self._drop()
                    raise BackendUnavailable(
                        f"{where}: {_describe(e)} during {what}; not confirmed in time"
                    ) from e
                finally:
                    if self._res is not None:  # Session.query cut it to the time left
                        self._res.timeout = int(self.config.timeout * 1000)
        finally:
            self._lock.release()

    @contextlib.contextmanager
    def _doing(self, what: str):
        outer, self._activity = self._activity, what
        try:
            yield
        finally:
            self._activity = outer

    def _recover(self) -> bool:
        """Best effort: (re)connect, which clears the error queue and restores the safe state."""
        self._drop()
        try:
            self._open()
            return True
        except Exception as e:  # best effort; the caller raises the original error
            log.warning("%s: could not reconnect: %s", self.name, _describe(e))
            self._drop()
            return False


def _describe(e: BaseException) -> str:
    name = type(e).__name__
    text = str(e)
    if "VI_ERROR_TMO" in text:
        return "timeout"
    return f"{name}: {text}" if text else name

"""Bounded client connections: a flood of idle ones cannot take what the emergency stop needs.

uvicorn as it comes keeps a TCP connection that never sends a byte open for ever (its keep-alive
timer starts only after a first response) and accepts until the process runs out of file
descriptors (RLIMIT_NOFILE: 1,024 under systemd unless raised); then asyncio stops accepting for
a second at a time and ``POST /emergency-stop`` waits in the kernel's queue behind the flood.
uvicorn's ``limit_concurrency`` does not help: while the flood holds its connections it answers
503 to every request, the e-stop's too.

Invariants (one :class:`ConnectionGuard` per server, its connections made by
:func:`guarded_protocol`):

- At most ``cap`` client connections are open, and ``cap`` fits the descriptor limit with a
  reserve (:func:`descriptor_budget`): asyncio accepts up to ``backlog`` connections in one go
  before the protocol sees any of them, and the service has files of its own (database, logs,
  instruments). So accept() does not fail for want of a descriptor.
- At the cap a new connection evicts the one idle longest. Idle: no request in flight — it never
  completed a request, or it waits between keep-alive requests. A connection with a request in
  flight (a job's progress stream, a big download, a ``/program`` run) is never evicted; when
  every one has, the new connection is answered 503 and closed.
- A connection that has not completed its request headers ``header_timeout`` s after it opened,
  or after the first byte of a later request on it, is closed. Idle time between requests is
  uvicorn's keep-alive timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any

try:
    import resource
except ImportError:  # not POSIX: no descriptor limit to read or raise
    resource = None  # type: ignore[assignment]

log = logging.getLogger("memprog.connections")

DEFAULT_MAX_CONNECTIONS = 1000
"""connections when ``server.max_connections`` is unset (or the descriptor budget, if lower)."""

OWN_DESCRIPTORS = 64
"""descriptors kept for the service's own use: SQLite (database, WAL, shared memory, backups),
log files, the event loop, instrument sockets, the predictor, a shell's stdio."""

ACCEPT_BATCHES = 3
"""accept batches of ``backlog`` connections that can be open before the first one's protocol
evicts anything: asyncio creates a connection's transport one loop iteration after accept() and
calls ``connection_made`` one more later, accepting again meanwhile."""

WARN_EVERY_S = 60.0
"""s between two warnings about evicted or refused connections (a flood must not flood the log)."""

_REFUSAL = b"too many connections with a request in flight\n"
SERVICE_UNAVAILABLE = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_REFUSAL), _REFUSAL)
)
"""what a connection refused at the cap gets before it is closed (it sent nothing yet)."""


def raise_descriptor_limit() -> int | None:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; the soft limit after it
    (None where there is none)."""
    if resource is None:
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # An unlimited hard limit (not on Linux) still has a kernel ceiling: ask for a usual one.
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return None if soft == resource.RLIM_INFINITY else soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("could not raise the file descriptor limit from %d to %d: %s",
                    soft, target, exc)
        return soft
    return target


def descriptor_budget(descriptors: int, backlog: int) -> int:
    """Client connections that fit ``descriptors`` with the reserve (may be < 1)."""
    return descriptors - ACCEPT_BATCHES * backlog - OWN_DESCRIPTORS


def connection_cap(max_connections: int | None, backlog: int, descriptors: int | None) -> int:
    """The most client connections to keep open. ValueError (naming the settings and the limit)
    if ``max_connections`` is set beyond the descriptor budget, or nothing fits at all."""
    budget = None if descriptors is None else descriptor_budget(descriptors, backlog)
    if max_connections is None:
        cap = DEFAULT_MAX_CONNECTIONS if budget is None else min(DEFAULT_MAX_CONNECTIONS, budget)
        if cap < 1:
            raise ValueError(
                f"the file descriptor limit ({descriptors}) leaves no room for client "
                f"connections beside the reserve ({ACCEPT_BATCHES} × server.backlog "
                f"{backlog} + {OWN_DESCRIPTORS}): raise it (LimitNOFILE=) or lower server.backlog"
            )
        return cap
    if budget is not None and max_connections > budget:
        raise ValueError(
            f"server.max_connections {max_connections} does not fit the file descriptor limit "
            f"{descriptors}: at most {budget} (the limit minus {ACCEPT_BATCHES} × "
            f"server.backlog {backlog} minus {OWN_DESCRIPTORS}); raise the limit (LimitNOFILE=) "
            f"or lower server.max_connections"
        )
    return max_connections


class ConnectionGuard:
    """The connections of one server: how many are open, which are idle, oldest idle first."""

    def __init__(self, cap: int, header_timeout: float):
        self.cap = cap
        self.header_timeout = header_timeout  # s
        self.open = 0
        self.evicted = 0
        self.refused = 0
        self.timed_out = 0
        self._idle: OrderedDict[Any, None] = OrderedDict()  # oldest idle first
        self._warned = -WARN_EVERY_S

    def admit(self, conn: Any) -> bool:
        """Count a new (idle) connection in, evicting the one idle longest at the cap; False
        if every open connection has a request in flight (the caller refuses it)."""
        if self.open >= self.cap:
            if not self._idle:
                self.refused += 1
                self._warn()
                return False
            victim, _ = self._idle.popitem(last=False)
            # Counted out now, not when its close completes: the next connection of the same
            # accept batch must not evict one more.
            self.release(victim)
            victim.guard_close()
            self.evicted += 1
            self._warn()
        conn.guard_counted = True
        self.open += 1
        self._idle[conn] = None
        return True

    def release(self, conn: Any) -> None:
        """Count a connection out (once, whatever calls it first)."""
        if conn.guard_counted:
            conn.guard_counted = False
            self.open -= 1
            self._idle.pop(conn, None)

    def busy(self, conn: Any) -> None:
        """A request is in flight on ``conn``: never evict it until it is answered."""
        self._idle.pop(conn, None)

    def idle(self, conn: Any) -> None:
        """``conn`` has no request in flight (from now: the newest idle)."""
        if conn.guard_counted:
            self._idle[conn] = None
            self._idle.move_to_end(conn)

    def _warn(self) -> None:
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY_S:
            self._warned = now
            log.warning(
                "%d client connections open (the most kept): %d idle ones evicted, %d new ones "
                "refused, %d closed without complete request headers, so far",
                self.open, self.evicted, self.refused, self.timed_out,
            )


def guarded_protocol(base: type[asyncio.Protocol], guard: ConnectionGuard
                     ) -> type[asyncio.Protocol]:
    """uvicorn's HTTP/1.1 protocol ``base`` (h11 or httptools: both keep the request being
    answered in ``cycle`` and call ``on_response_complete``) under ``guard``."""

    class GuardedHTTPProtocol(base):  # type: ignore[misc, valid-type]
        guard_counted = False
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            if not guard.admit(self):
                transport.write(SERVICE_UNAVAILABLE)  # type: ignore[attr-defined]
                transport.close()
                return
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            guard.release(self)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if not self._in_flight() and self._header_timer is None:
                self._arm_header_timer()  # the first byte of a later request
            super().data_received(data)
            if self._in_flight():
                self._cancel_header_timer()
                guard.busy(self)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self._in_flight():  # else a pipelined request started at once
                guard.idle(self)

        def guard_close(self) -> None:
            self._cancel_header_timer()
            if not self.transport.is_closing():
                self.transport.close()

        def _in_flight(self) -> bool:
            return self.cycle is not None and not self.cycle.response_complete

        def _arm_header_timer(self) -> None:
            self._cancel_header_timer()
            self._header_timer = self.loop.call_later(guard.header_timeout, self._header_timeout)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timeout(self) -> None:
            self._header_timer = None
            if not self._in_flight() and not self.transport.is_closing():
                guard.timed_out += 1
                guard.release(self)
                self.transport.close()

    GuardedHTTPProtocol.__name__ = GuardedHTTPProtocol.__qualname__ = f"Guarded{base.__name__}"
    return GuardedHTTPProtocol

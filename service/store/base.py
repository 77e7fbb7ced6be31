"""What the parts of the operation log share: the notes of reserved and uncertain pulses,
:class:`LogUnavailable`, the :func:`journaled` decorator, and :class:`LogParts` (the state of
:class:`service.store.Storage` that the table classes use).

Invariants:

- a write the database cannot take is never lost once something was fired: a
  :func:`journaled` call goes to the side journal (:mod:`service.store.journal`) instead, to be
  replayed by :meth:`service.store.Storage.recover`, under the same method name (journaled
  names are part of the journal's format: never rename one);
- only the database failing (:func:`service.store.db.is_fault`) fails the log; a statement that
  breaks a constraint is a bug and is raised as it is.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.store import db

log = logging.getLogger("memprog.storage")

PENDING = "pending: recorded before firing, not yet confirmed"
"""Note of a pulse reserved in the log before it is fired (:meth:`Storage.reserve_pulses`)."""

UNCERTAIN_FIRE = "uncertain: the trigger went out but no clean confirmation came back"
"""Note of a pulse whose trigger went out on a bench that then failed to confirm it."""

CRASHED_PENDING = (
    "uncertain: recorded before firing; the service stopped before the outcome was recorded"
)
"""Note of a reserved pulse found at start-up: it may or may not have been fired."""

LOST_PENDING = (
    "uncertain: recorded before firing; the database went away and lost the outcome"
)
"""Note of a reserved pulse still pending after the database came back (PostgreSQL: a server
crash lost its settlement, committed asynchronously): it may or may not have been fired."""


class LogUnavailable(RuntimeError):
    """The operation log cannot take records (a full disk, a database file moved away or
    read-only): nothing new may be fired until it can. The message says what happened to the
    operation that met it."""


def journaled(method: Callable) -> Callable:
    """A write method of :class:`Storage` that must never be lost once something was fired.

    While the database takes writes, the call runs as usual and is remembered until the next
    commit (a commit that fails rolls the transaction back: the calls since the last commit go
    to the side journal then). While the log is failed, or when the call itself fails, the call
    goes to the side journal instead, to be replayed by :meth:`Storage.recover`.
    """
    name = method.__name__

    @functools.wraps(method)
    def wrapper(self: Any, *args: object, **kwargs: object) -> object:
        with self._lock:
            if self._replaying:
                return method(self, *args, **kwargs)
            at = time.time()
            if self.failure is not None:
                self._divert()
                self._to_journal(name, args, kwargs, at)
                return None
            self._now = at
            try:
                result = method(self, *args, **kwargs)
            except db.Error as exc:
                if not db.is_fault(exc):  # a bug (a constraint), not the log failing
                    raise
                self._broke(exc)
                self._to_journal(name, args, kwargs, at)
                return None
            finally:
                self._now = None
            self._pending.append((name, args, kwargs, at))
            return result

    return wrapper


JOB_INTERRUPTED = (
    "the service stopped (crash or restart) while this job was queued or running; "
    "it was not resumed, and every operation it recorded is kept"
)


class LogParts:
    """What the table classes of the log (operations, runs, device memory, jobs, recovery) share
    with :class:`~service.store.Storage`, which provides all of it."""

    path: Path
    db: Any
    station: str
    backend_kind: str | None
    failure: str | None
    _conn: Any
    _lock: Any
    _pending: list
    _replaying: bool
    _now: float | None

    def ensure_writable(self, consequence: str) -> None:
        raise NotImplementedError

    def check(self) -> str | None:
        raise NotImplementedError

    def _clock(self) -> float:
        raise NotImplementedError

    def _broke(self, exc: BaseException) -> None:
        raise NotImplementedError

    def _to_journal(self, name: str, args: tuple, kwargs: dict, at: float) -> None:
        raise NotImplementedError

    def _insert_now(self, sql: str, args: tuple, consequence: str) -> int:
        """Any thread: one ``INSERT`` through a connection of its own, committed; the new row's
        id. :class:`LogUnavailable` ("log unavailable, ``consequence``") when the log cannot
        take it; a statement breaking a constraint (a bug) is raised as it is."""
        self.ensure_writable(consequence)
        try:
            conn = self.db.side_writer()
            try:
                (new_id,) = conn.execute(f"{sql} RETURNING id", args).fetchone()
                conn.commit()
                return int(new_id)
            finally:
                conn.close()
        except db.Error as exc:
            if not db.is_fault(exc):
                raise
            raise LogUnavailable(f"log unavailable, {consequence}: {exc}") from exc


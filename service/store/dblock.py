"""One service per database: an exclusive lock, held for the service's whole lifetime.

A second ``memprog serve`` on a database a running service uses would, at its start, mark the
first one's running job ``interrupted`` while that job goes on pulsing under it. So a service
holds an exclusive :func:`fcntl.flock` on ``<database>.lock``, beside the database:

* taken before anything in the database is created, opened or changed
  (:class:`service.store.Storage`), and by ``memprog serve`` before it opens the backend
  (:func:`reserve`): a second service is refused there, with the holder named (pid, host, since
  when, listen address), having touched neither the database nor the instruments;
* released when the database is closed, and by the kernel when the holder's process ends,
  however it ends: a crash leaves no stale lock, only stale text in the file, which is read
  only while someone holds the lock;
* the file is never deleted (deleting a lock file another process is about to lock would let
  two holders in), and is 0600: whoever can open it can lock it, and so keep the service out;
* only services take it: tools that only read (exports, backups, ``memprog keys``, tests
  reading SQLite) open the database as before while a service runs;
* flock belongs to an open file, not a process: a second lock on the same database in the same
  process is refused too — except the one :func:`reserve` took, which that process's storage
  adopts (:func:`hold`).

A new database file is created 0600 whatever the umask (:func:`create_private`); SQLite gives its
``-wal``, ``-shm`` and ``-journal`` files the database's mode. The database holds the API key
hashes and the whole record of the bench.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

PRIVATE_MODE = 0o600
LOCK_SUFFIX = ".lock"
_HOLDER_BYTES = 4096  # more than any holder record takes


class DatabaseInUse(RuntimeError):
    """Another service holds the database; the message names it."""


def lock_path(database: str | Path) -> Path:
    """``<database>.lock``, beside the database."""
    database = Path(database)
    return database.with_name(database.name + LOCK_SUFFIX)


def create_private(path: str | Path) -> bool:
    """Create ``path`` empty, mode 0600, unless it exists; True if it made it. SQLite then
    opens it as a new database (an empty file is one), and gives its companions its mode."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, PRIVATE_MODE)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, PRIVATE_MODE)  # exactly 0600, whatever the umask took away
    finally:
        os.close(fd)
    return True


class DatabaseLock:
    """The exclusive lock on one database; :meth:`acquire` raises :class:`DatabaseInUse`
    (naming the holder) while another holds it. ``listen`` is where this service answers
    (e.g. ``http://127.0.0.1:8000``), recorded for a refused second one to name."""

    def __init__(self, database: str | Path, listen: str | None = None):
        self.database = Path(database)
        self.path = lock_path(self.database)
        self.listen = listen
        self._fd: int | None = None
        self._guard = threading.Lock()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> DatabaseLock:
        with self._guard:
            if self._fd is not None:
                return self
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # os.open is close-on-exec: a child process never inherits (and keeps) the lock.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, PRIVATE_MODE)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise DatabaseInUse(self._refusal()) from None
            except BaseException:
                os.close(fd)
                raise
            try:
                now = time.time()
                holder = {
                    "pid": os.getpid(),
                    "host": socket.gethostname(),
                    "since": now,  # Unix time, s
                    "since_utc": _utc(now),
                    "listen": self.listen,
                    "database": str(self.database),
                }
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
            except BaseException:
                os.close(fd)  # closing releases the lock
                raise
            self._fd = fd
            return self

    def release(self) -> None:
        """Release (idempotent). The holder record is cleared first: nobody holds it now."""
        with self._guard:
            fd, self._fd = self._fd, None
        with _registry:
            if _reserved.get(_key(self.database)) is self:
                del _reserved[_key(self.database)]
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass  # the lock goes with the descriptor anyway
        finally:
            os.close(fd)

    def _refusal(self) -> str:
        holder = _read_holder(self.path)
        if holder is None:
            who = "another memprog service (it is starting: its details are not written yet)"
        else:
            who = (f"another memprog service: pid {holder.get('pid')} on "
                   f"{holder.get('host')}, since {holder.get('since_utc')}")
            if holder.get("listen"):
                who += f", listening on {holder['listen']}"
        return (
            f"the database {self.database} is in use by {who}. One service per database: stop "
            "that one first, or give this one another database (MEMPROG_DATABASE). Tools that "
            f"only read it (exports, backups, memprog keys) work meanwhile. Lock: {self.path}"
        )


def _read_holder(path: Path, attempts: int = 10) -> dict | None:
    """The holder's record; None if it has not written one yet (it writes right after it
    takes the lock: a few short tries)."""
    for attempt in range(attempts):
        try:
            with open(path, "rb") as f:
                text = f.read(_HOLDER_BYTES)
            if text.strip():
                return json.loads(text)
        except (OSError, ValueError):
            pass
        if attempt + 1 < attempts:
            time.sleep(0.05)
    return None


def _utc(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------- memprog serve: taken before the backend

_reserved: dict[Path, DatabaseLock] = {}
_registry = threading.Lock()


def _key(database: str | Path) -> Path:
    return Path(database).resolve()


def reserve(database: str | Path, listen: str | None = None) -> DatabaseLock:
    """For ``memprog serve``: take the lock now, before the backend is opened; this process's
    next :class:`~service.store.Storage` on ``database`` adopts it (:func:`hold`)."""
    lock = DatabaseLock(database, listen).acquire()
    with _registry:
        _reserved[_key(database)] = lock
    return lock


def hold(database: str | Path) -> DatabaseLock:
    """The lock for a storage opening ``database``: the one this process reserved (once),
    else a new one, acquired."""
    with _registry:
        lock = _reserved.pop(_key(database), None)
    if lock is not None and lock.held:
        return lock
    return DatabaseLock(database).acquire()

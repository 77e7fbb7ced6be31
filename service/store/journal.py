"""The side journal: where the log's writes go while the database cannot take them.

A pulse is recorded before it is fired (:meth:`service.store.Storage.reserve_pulses`), so a
database that refuses writes (a full disk, a file moved away, a read-only mount) stops
programming before anything is fired. What was already under way when it broke — the
confirmation of a batch that was fired, its verify read, the end of its run and job — must not
be lost: it is written here instead, and replayed into the database when it can take writes
again (at the next start at the latest).

The file is allocated in full when the service starts (``size`` bytes), so that writing a
record never needs a new disk block: it works on a full disk and under ``RLIMIT_FSIZE``. Each
record is ``MAGIC``, a length and a CRC-32 (8 bytes, little-endian), then the pickled record;
the first position that does not hold a whole, intact record ends the journal (all zeros after
a reset). Every append is flushed to the disk (``fdatasync``) before it returns.

Records are ``(uid, time, operation, args, kwargs)``: a :class:`service.store.Storage` write
method and its arguments. ``uid`` makes a replay idempotent (the storage keeps the uids it has
applied, in the same transaction as the writes). The file is the service's own and only ever
read by it: pickle is not a trust boundary here.
"""

from __future__ import annotations

import os
import pickle
import struct
import threading
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

MAGIC = b"MPJ1"
HEADER = struct.Struct("<4sII")  # magic, length, crc32
DEFAULT_SIZE = 8 * 1024 * 1024
"""bytes allocated for the journal: a whole 256×256 verify read is about 3 MB."""

Record = tuple[str, float, str, tuple, dict]


class JournalFull(OSError):
    """The journal has no room left for a record."""


def journal_path(database: str | Path) -> Path:
    """The journal that belongs to ``database`` (beside it)."""
    database = Path(database)
    return database.with_name(database.name + ".sidejournal")


class SideJournal:
    """An append-only file of records, allocated in advance. Thread-safe."""

    def __init__(self, path: str | Path, size: int = DEFAULT_SIZE):
        self.path = Path(path)
        self.size = size
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        self._fd = os.open(self.path, flags, 0o600)
        self._lock = threading.Lock()
        try:
            current = os.fstat(self._fd).st_size
            if current < size:
                _allocate(self._fd, current, size)
            self.size = max(size, current)
            self._end = sum(HEADER.size + len(body) for body in self._bodies())
            self._count = sum(1 for _ in self._bodies())
        except BaseException:
            os.close(self._fd)
            raise

    @property
    def count(self) -> int:
        """Records held (not yet replayed)."""
        return self._count

    def append(self, operation: str, args: tuple, kwargs: dict, at: float) -> str:
        """Write one record durably; its uid. Raises :class:`JournalFull` when out of room."""
        uid = uuid.uuid4().hex
        body = pickle.dumps((uid, at, operation, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
        blob = HEADER.pack(MAGIC, len(body), zlib.crc32(body)) + body
        with self._lock:
            if self._end + len(blob) > self.size:
                raise JournalFull(
                    f"side journal {self.path} is full ({self.size} bytes): a record of "
                    f"{len(blob)} bytes does not fit"
                )
            os.pwrite(self._fd, blob, self._end)
            os.fdatasync(self._fd)
            self._end += len(blob)
            self._count += 1
        return uid

    def records(self) -> list[Record]:
        """Every record held, oldest first."""
        with self._lock:
            return [pickle.loads(body) for body in self._bodies()]

    def reset(self) -> None:
        """Forget every record (after they were replayed): the first header is zeroed."""
        with self._lock:
            os.pwrite(self._fd, bytes(HEADER.size), 0)
            os.fdatasync(self._fd)
            self._end = 0
            self._count = 0

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def _bodies(self) -> Iterator[bytes]:
        offset = 0
        while offset + HEADER.size <= self.size:
            magic, length, crc = HEADER.unpack(os.pread(self._fd, HEADER.size, offset))
            if magic != MAGIC or offset + HEADER.size + length > self.size:
                return
            body = os.pread(self._fd, length, offset + HEADER.size)
            if len(body) != length or zlib.crc32(body) != crc:
                return  # torn by a crash during the append: nothing after it was written
            yield body
            offset += HEADER.size + length


def _allocate(fd: int, start: int, size: int) -> None:
    """Give the file real blocks up to ``size`` (zeros), so later writes need no new space."""
    try:
        os.posix_fallocate(fd, start, size - start)
    except OSError:  # a file system without fallocate: write the zeros
        chunk = bytes(1 << 20)
        offset = start
        while offset < size:
            offset += os.pwrite(fd, chunk[: min(len(chunk), size - offset)], offset)
    os.fsync(fd)

"""Connections to the store's SQLite file: the one place, with :mod:`service.store.schema`,
that knows it is SQLite (pragmas, URIs, the driver's error types). The tables' classes write
portable SQL over these and catch :data:`Error` / ask :func:`is_fault`, never ``sqlite3``.

Invariants:

- every connection waits for a busy database (``busy_timeout``) instead of failing at once, and
  caps the WAL it leaves behind (:data:`WAL_SIZE_LIMIT`);
- a read-only connection (:func:`reading`) never creates the file and lives for one block: a read
  never holds the database beyond its queries;
- one writer per database (:func:`open_writer`, the backend owner's): WAL, ``synchronous=NORMAL``,
  and ``FULL`` inside :func:`durable`; other threads write through a :func:`side_writer` of their
  own, which never recreates a database moved away (``mode=rw``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from service.store.dblock import create_private

try:  # PostgreSQL's driver, where the postgresql extra is installed (service.store.postgres)
    import psycopg as _psycopg

    _PG_ERRORS: tuple[type[Exception], ...] = (_psycopg.Error,)
    _PG_UNAVAILABLE: tuple[type[Exception], ...] = (_psycopg.OperationalError,
                                                     _psycopg.InterfaceError)
except ImportError:  # pragma: no cover - SQLite only
    _PG_ERRORS = _PG_UNAVAILABLE = ()

Error: tuple[type[Exception], ...] = (sqlite3.Error, *_PG_ERRORS)
"""What a failed statement raises (the drivers' base classes of errors), for ``except``."""

Unavailable: tuple[type[Exception], ...] = (sqlite3.OperationalError, *_PG_UNAVAILABLE)
"""What a statement raises when the database fails (locked too long, read-only, gone, I/O, a
PostgreSQL server away); the service answers it 503 (:mod:`service.errors`)."""

Row = sqlite3.Row
"""The rows of a :func:`reading` connection: by position and by column name."""

Connection = sqlite3.Connection
"""An open connection (the tables' classes type their arguments with it)."""

WAL_SIZE_LIMIT = 16 * 1024 * 1024
"""bytes: the WAL file is truncated to this size when a write restarts it after a complete
checkpoint. Auto-checkpoints keep it near 4 MiB; a reader holding one snapshot for long (a sqlite3
shell left in a transaction) lets it grow meanwhile, and without this it would never shrink."""


def is_fault(exc: BaseException) -> bool:
    """Is ``exc`` the database failing (disk full, I/O, read-only, gone, corrupt, a server
    away) rather than a statement breaking a constraint (a bug, raised as it is)?"""
    if _PG_ERRORS and isinstance(exc, _PG_ERRORS):
        from service.store import postgres

        return postgres.is_fault(exc)
    return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """A connection with the store's settings: the writer's (DEFERRED transactions), or a
    read-only one (``mode=ro``: never creates the file)."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
    else:
        conn = sqlite3.connect(path, check_same_thread=False, isolation_level="DEFERRED")
    conn.execute("PRAGMA busy_timeout = 10000")
    conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")  # a WAL grown large shrinks
    return conn


@contextmanager
def reading(path: Path) -> Iterator[sqlite3.Connection]:
    """A short read-only connection (rows by name), closed when the block ends: a read never
    holds the database beyond its query."""
    conn = connect(path, readonly=True)
    conn.row_factory = sqlite3.Row
    try:
        yield conn
    finally:
        conn.close()


def open_keys(path: Path, *, create: bool) -> sqlite3.Connection:
    """A connection for the key store (rows by name): with ``create``, making the database
    file (mode 0600) if it is missing; otherwise to an existing file only, ``FileNotFoundError``
    naming the path if there is none (``mode=rw``: SQLite itself never creates it, even if it
    vanishes after the check)."""
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
        create_private(path)
        conn = sqlite3.connect(path, timeout=30)
    else:
        missing = FileNotFoundError(f"no database at {path}")
        if not path.is_file():
            raise missing
        try:
            conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=rw", uri=True, timeout=30)
        except sqlite3.OperationalError as exc:
            if not path.is_file():
                raise missing from exc
            raise
    conn.row_factory = sqlite3.Row
    return conn


def side_writer(path: Path) -> sqlite3.Connection:
    """A writer of its own for a thread other than the backend owner's (jobs' bookkeeping)."""
    # mode=rw: a database moved away while in use must never be replaced by a new file
    conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, check_same_thread=False)
    # The owner holds the write lock while it reads a programming iteration's cells (on a
    # bench, a large batch takes seconds): wait for it longer than the default.
    conn.execute("PRAGMA busy_timeout = 60000")
    return conn


def open_writer(path: Path) -> sqlite3.Connection:
    """The log's writer: WAL (readers never block it), ``synchronous=NORMAL`` (a commit is safe
    from a crash of the process; :func:`durable` for a power cut)."""
    conn = connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    return conn


@contextmanager
def durable(conn: sqlite3.Connection) -> Iterator[None]:
    """Within the block, commits wait for the disk (``synchronous=FULL``: the WAL's fsync covers
    every earlier commit too). The level cannot change inside a transaction: enter it with none
    open."""
    conn.execute("PRAGMA synchronous = FULL")
    try:
        yield
    finally:
        conn.execute("PRAGMA synchronous = NORMAL")


def new_database(dest: str | Path) -> sqlite3.Connection:
    """A connection to a new SQLite file at ``dest`` (a copy being made: no WAL)."""
    return sqlite3.connect(dest)


def copy_database(path: Path, dest: str | Path) -> sqlite3.Connection:
    """A copy of the database at ``path`` in the new file ``dest`` (the online backup, in one
    step: one short read transaction, which writers do not wait for), as a plain file (no WAL:
    read-only opens work); the open connection to the copy (the caller closes it)."""
    src = connect(path, readonly=True)
    try:
        dst = sqlite3.connect(dest)
        try:
            src.backup(dst)  # pages=-1: all in one step
            dst.execute("PRAGMA journal_mode = DELETE")
        except BaseException:
            dst.close()
            raise
        return dst
    finally:
        src.close()


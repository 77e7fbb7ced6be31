"""Which store a service writes to, chosen by ``MEMPROG_DATABASE``: a path (an SQLite file on this
machine, the embedded default) or a ``postgresql://`` URL (a server shared by a lab's stations).

:func:`open_database` gives a :class:`SqliteDatabase` or a :class:`PostgresDatabase`; both offer the
same few things the table classes need (connections to write and to read, the schema's
migration, a durable commit, a copy as an SQLite file for exports), so the table classes write
one SQL for both. Everything dialect-specific stays in :mod:`service.store.db` /
:mod:`service.store.schema` (SQLite) and :mod:`service.store.postgres` /
:mod:`service.store.postgres_schema` (PostgreSQL).

Invariants:

- ``station`` names this service's bench: the store writes it on every row it makes;
- the *anchor* is a local path that the database lock (:mod:`service.store.dblock`) and the side
  journal (:mod:`service.store.journal`) sit beside: the SQLite file itself, or for PostgreSQL
  ``<state_dir>/memprog-<station>.pg`` (a station keeps what the database could not take on its
  own disk, never on the server that failed);
- a PostgreSQL station also holds an advisory lock named after it on the server, for as long as
  its writer's connection lives: two services of one station name on two hosts are refused too.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from service.store import db, dblock, schema

POSTGRES_SCHEMES = ("postgresql://", "postgres://", "postgresql+psycopg://")

STATION_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def is_postgres(target: str | Path) -> bool:
    return isinstance(target, str) and target.startswith(POSTGRES_SCHEMES)


def default_station() -> str:
    """The host name (``MEMPROG_STATION``'s default), made a valid station name."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:63].strip("-.") or "station"
    return name if STATION_NAME.match(name) else "station"


def check_station(name: str) -> str:
    if not STATION_NAME.match(name):
        raise ValueError(
            f"station name {name!r} is not valid: 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


class SqliteDatabase:
    """An SQLite file (:mod:`service.store.db`)."""

    kind = "sqlite"

    def __init__(self, path: str | Path, station: str):
        self.path = Path(path)
        self.station = check_station(station)
        self.anchor = self.path

    def describe(self) -> str:
        return str(self.path)

    def create(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        dblock.create_private(self.path)

    def open_writer(self) -> Any:
        conn = db.open_writer(self.path)
        st = os.stat(self.path)
        self.file_id = (st.st_dev, st.st_ino)
        return conn

    def migrate(self, conn: Any) -> int:
        return schema.migrate(conn, self.station)

    def reading(self) -> contextlib.AbstractContextManager[Any]:
        return db.reading(self.path)

    def side_writer(self) -> Any:
        return db.side_writer(self.path)

    def commit(self, conn: Any) -> None:
        """``synchronous=NORMAL``: in the WAL, safe from a crash of the process."""
        conn.commit()

    def commit_before_firing(self, conn: Any) -> None:
        """As :meth:`commit` (one writer, in-process: what the process committed, it keeps)."""
        conn.commit()

    def write(self, conn: Any, sql: str, params: tuple = ()) -> None:
        """A write whose result nobody reads (SQLite: at once; it is in-process)."""
        conn.execute(sql, params)

    def write_many(self, conn: Any, sql: str, rows: Iterable[tuple]) -> None:
        conn.executemany(sql, rows)

    def durable_commit(self, conn: Any) -> None:
        """Commit, then write a marker at ``synchronous=FULL``: the WAL's fsync covers every
        earlier commit too (a commit without changes syncs nothing, and the level cannot change
        inside a transaction)."""
        conn.commit()
        with db.durable(conn):
            conn.execute("INSERT INTO meta (key, value) VALUES ('durable_commit', ?) "
                         "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (time.time(),))
            conn.commit()

    def problem(self) -> str | None:
        """Cheap (a stat): the database file moved, deleted or replaced under the service."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return f"the database file {self.path} is gone (moved or deleted while in use)"
        except OSError as exc:
            return f"the database file {self.path} cannot be checked: {exc}"
        if (st.st_dev, st.st_ino) != self.file_id:
            return f"the database file {self.path} was replaced while in use"
        return None

    def reconnect(self, conn: Any) -> Any:
        """SQLite's writer stays open through a failure (the file comes back in place)."""
        return conn

    def copy_to(self, dest: str | Path) -> db.Connection:
        return db.copy_database(self.path, dest)


class PostgresDatabase:
    """A PostgreSQL server shared by stations (:mod:`service.store.postgres`)."""

    kind = "postgresql"

    def __init__(self, url: str, station: str, state_dir: str | Path | None = None):
        from service.store import postgres  # psycopg: only where PostgreSQL is used

        self._pg = postgres
        self.url = url.replace("postgresql+psycopg://", "postgresql://", 1)
        self.station = check_station(station)
        self.state_dir = Path(state_dir) if state_dir is not None else Path.cwd()
        self.anchor = self.state_dir / f"memprog-{self.station}.pg"
        self._unflushed = False  # asynchronous commits since the last synchronous one

    def describe(self) -> str:
        return self._pg.redact(self.url)

    def create(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)

    def open_writer(self) -> Any:
        conn = self._pg.connect(self.url, application=f"memprog {self.station}",
                                synchronous_commit=False)
        try:
            if not self._pg.try_station_lock(conn, self.station):
                holder = self._holder(conn)
                raise dblock.DatabaseInUse(
                    f"station {self.station!r} is already served on {self.describe()}"
                    f"{holder}. One service per station: stop that one first, or give this one "
                    "another name (MEMPROG_STATION)."
                )
        except BaseException:
            conn.close()
            raise
        return conn

    def _holder(self, conn: Any) -> str:
        try:
            row = conn.execute(
                "SELECT host, pid, listen FROM stations WHERE name = ?", (self.station,)
            ).fetchone()
            conn.rollback()
        except self._pg.Error:
            return ""
        if row is None:
            return ""
        return f" by pid {row[1]} on {row[0]}" + (f", listening on {row[2]}" if row[2] else "")

    def migrate(self, conn: Any) -> int:
        from service.store import postgres_schema

        return postgres_schema.migrate(conn)

    def reading(self) -> contextlib.AbstractContextManager[Any]:
        return self._pg.reading(self.url)

    def side_writer(self) -> Any:
        return self._pg.connect(self.url, application=f"memprog {self.station}")

    def commit(self, conn: Any) -> None:
        """Asynchronous (the writer's session runs ``synchronous_commit = off``): on the server,
        safe from a crash of this process and from a lost network, flushed by the server within
        a fraction of a second — as SQLite's ``synchronous=NORMAL`` is safe from a crash of the
        process. A pulse reservation commits synchronously (:meth:`commit_before_firing`): a
        pulse is never fired unlogged, even if the server crashes; and the synchronous commit's
        WAL flush covers every asynchronous commit before it. :meth:`durable_commit` ends every
        request."""
        if conn.in_transaction:
            conn.commit()
            self._unflushed = True

    def commit_before_firing(self, conn: Any) -> None:
        """A synchronous commit (the level and the commit in one message)."""
        conn.commit(sync=True)
        self._unflushed = False

    def durable_commit(self, conn: Any) -> None:
        """A synchronous commit (with nothing to commit after asynchronous ones, a marker row
        of the station's is written for it)."""
        if conn.in_transaction:
            conn.commit(sync=True)
        elif self._unflushed:
            conn.defer("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO "
                       "UPDATE SET value = excluded.value",
                       (f"durable_commit {self.station}", time.time()))
            conn.commit(sync=True)
        self._unflushed = False

    def write(self, conn: Any, sql: str, params: tuple = ()) -> None:
        """A write whose result nobody reads: held, sent with the next message."""
        conn.defer(sql, params)

    def write_many(self, conn: Any, sql: str, rows: Iterable[tuple]) -> None:
        conn.defer_many(sql, rows)

    def reserve(self, conn: Any, sql: str, rows: Iterable[tuple]) -> int:
        """Insert the pending pulses and commit synchronously, in one message: their first id."""
        ids = conn.insert_returning_and_commit(sql, rows, sync=True)
        self._unflushed = False
        return int(min(ids))

    def problem(self) -> str | None:
        return None  # a lost server shows when a statement fails (connection errors)

    def reconnect(self, conn: Any) -> Any:
        """A new writer connection (the old one is dropped), with the station's lock taken
        again; raises the driver's error while the server is still away."""
        with contextlib.suppress(Exception):
            conn.close()
        return self.open_writer()

    def copy_to(self, dest: str | Path) -> db.Connection:
        """The log as a new SQLite file at ``dest`` (one repeatable-read transaction: a
        consistent snapshot; writers do not wait for it): the exports read it as they read a
        copy of an SQLite log. The open connection to the copy (the caller closes it)."""
        dst = db.new_database(dest)
        try:
            schema.migrate(dst, self.station)
            src = self._pg.connect(self.url, readonly=True, application="memprog export")
            try:
                src.raw.isolation_level = self._pg.psycopg.IsolationLevel.REPEATABLE_READ
                for table, columns in _COPIED:
                    cur = src.raw.cursor(name=f"copy_{table}")  # server-side: in pages
                    cur.itersize = 20_000
                    cur.execute(f"SELECT {', '.join(columns)} FROM {table}")
                    marks = ", ".join("?" * len(columns))
                    while rows := cur.fetchmany(20_000):
                        dst.executemany(
                            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows
                        )
                    cur.close()
                src.rollback()
            finally:
                src.close()
            dst.commit()
        except BaseException:
            dst.close()
            raise
        return dst


_COPIED = (
    ("runs", schema.RUN_COLUMNS),
    ("run_results", ("run_id", "idx", "row", "col", "start", "target", "final", "pulses",
                     "converged", "stopped")),
    ("operations", schema.OPERATION_COLUMNS),
)
"""What an export's copy of a PostgreSQL log holds (keys, jobs and the rest stay behind)."""


Database = SqliteDatabase | PostgresDatabase


def open_database(
    target: str | Path, station: str | None = None, state_dir: str | Path | None = None
) -> Database:
    """The store at ``target``: a ``postgresql://`` URL or an SQLite file's path."""
    station = station or default_station()
    if is_postgres(target):
        return PostgresDatabase(str(target), station, state_dir)
    return SqliteDatabase(target, station)


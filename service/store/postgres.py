"""Connections to a PostgreSQL store: with :mod:`service.store.postgres_schema`, the one place
that knows the store is PostgreSQL. The table classes write the same SQL for both stores (``?``
placeholders, ``RETURNING``, ``ON CONFLICT``); a :class:`Connection` here translates the
placeholders for psycopg 3 and hands out rows that read by position and by column name, like
SQLite's.

Invariants:

- a connection never waits forever: ``connect_timeout`` on connecting, ``statement_timeout``
  and TCP keepalives on a statement, so a database that goes away fails the statement (the log
  fails, :mod:`service.store.recovery`) instead of hanging the backend owner;
- every commit is durable (``synchronous_commit`` is the server's, ``on`` by default): there is
  no second, stronger commit as on SQLite;
- Python booleans are stored as integers 0/1 (the schema's flags are integers on both stores).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, ClassVar

import psycopg
from psycopg.adapt import Dumper

Error = psycopg.Error

CONNECT_TIMEOUT_S = 5
"""s: a connection attempt to a database that does not answer gives up after this."""

STATEMENT_TIMEOUT_MS = 60_000
"""ms: a statement running longer than this is cancelled by the server (a lock held by a
stuck peer, a dead network); the owner's writes take milliseconds."""


def is_fault(exc: BaseException) -> bool:
    """The database failing (gone, restarting, unreachable, out of space, cancelled) rather
    than a statement breaking a constraint or a typo in SQL (a bug)."""
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return True  # connection lost, admin shutdown, cannot connect, connection closed
    if isinstance(exc, psycopg.errors.InsufficientResources | psycopg.errors.QueryCanceled):
        return True  # disk full, statement_timeout
    return isinstance(exc, psycopg.errors.ReadOnlySqlTransaction)


class _IntFromBool(Dumper):
    """``True``/``False`` as ``1``/``0`` (the flags are INTEGER columns, as on SQLite)."""

    oid = psycopg.postgres.types["int8"].oid

    def dump(self, obj: bool) -> bytes:
        return b"1" if obj else b"0"


class Row(tuple):
    """A row by position (a tuple) and by column name (``row["name"]``, ``keys()``)."""

    _names: ClassVar[dict[str, int]] = {}

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._names[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


@lru_cache(maxsize=256)
def _row_class(names: tuple[str, ...]) -> type[Row]:
    return type("Row", (Row,), {"_names": {name: i for i, name in enumerate(names)}})


def _row_factory(cursor: psycopg.Cursor) -> Any:
    if cursor.description is None:
        return tuple
    return _row_class(tuple(col.name for col in cursor.description))


_PLACEHOLDER = re.compile(r"'(?:[^']|'')*'|\?|%")


@lru_cache(maxsize=512)
def translate(sql: str) -> str:
    """SQLite's ``?`` placeholders as psycopg's ``%s`` (outside quoted literals); a literal
    ``%`` doubled."""
    def sub(m: re.Match) -> str:
        token = m.group(0)
        return "%s" if token == "?" else "%%" if token == "%" else token

    return _PLACEHOLDER.sub(sub, sql)


MULTIROW_MAX = 500
"""Rows up to which an insert is one multi-row statement (a batch of a few cells: one round
trip); larger batches go through psycopg's pipeline (a whole array's read, measured faster)."""

MAX_PARAMS = 30_000
"""Parameters per statement of a multi-row insert (the protocol allows 65,535)."""

_VALUES = re.compile(r"^(INSERT INTO .*? VALUES )(\([^()]*\))(.*)$", re.S)


def _values_group(sql: str) -> tuple[str, str, str] | None:
    m = _VALUES.match(sql)
    return None if m is None else (m.group(1), m.group(2), m.group(3))


@lru_cache(maxsize=512)
def _multirow(sql: str, k: int) -> str:
    """``INSERT ... VALUES (?, ?) tail`` as ``VALUES (...), (...), ... tail`` for ``k`` rows."""
    split = _values_group(sql)
    assert split is not None, sql
    head, group, tail = split
    return translate(head + ", ".join([group] * k) + tail)


def _chunks(rows: list[tuple]) -> Iterator[list[tuple]]:
    width = max(1, len(rows[0])) if rows else 1
    step = max(1, MAX_PARAMS // width)
    for start in range(0, len(rows), step):
        yield rows[start:start + step]


class Cursor:
    """What a statement returned: the sqlite3 cursor's reading methods."""

    def __init__(self, cur: psycopg.Cursor):
        self._cur = cur

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount

    def fetchone(self) -> Any:
        return self._cur.fetchone() if self._cur.description is not None else None

    def fetchall(self) -> list:
        return self._cur.fetchall() if self._cur.description is not None else []

    def fetchmany(self, size: int) -> list:
        return self._cur.fetchmany(size)

    def __iter__(self) -> Iterator:
        return iter(self._cur)


class Connection:
    """A psycopg connection that speaks like the store's sqlite3 connections: ``execute`` and
    ``executemany`` with ``?`` placeholders, ``commit``/``rollback``/``close``, and as a context
    manager a transaction (committed, or rolled back on an exception).

    Writes whose result nobody reads (:meth:`defer`, :meth:`defer_many`: the log's records) are
    held and sent with the connection's next message — its next statement, or its commit — in
    one round trip: on a loaded machine a round trip to the server costs more than the write. A
    held write that fails raises there (the commit, or the next statement), which fails the log
    like any write (its calls go to the side journal); a rollback drops them unsent."""

    def __init__(self, raw: psycopg.Connection):
        self.raw = raw
        self._held: list[tuple[str, list]] = []  # (SQL with %s, its parameters)

    # --- statements whose results are read ------------------------------------------------

    def execute(self, sql: str, params: Sequence = ()) -> Cursor:
        self._send_held()
        cur = self.raw.cursor(row_factory=_row_factory)
        cur.execute(translate(sql), tuple(params))
        return Cursor(cur)

    def executemany(self, sql: str, params: Iterable[Sequence]) -> Cursor:
        """Every row of ``params``: an ``INSERT ... VALUES (...)`` of up to :data:`MULTIROW_MAX`
        rows as multi-row inserts (one statement); others through psycopg's pipelined
        ``executemany``."""
        self._send_held()
        rows = [tuple(p) for p in params]
        cur = self.raw.cursor(row_factory=_row_factory)
        if not rows:
            return Cursor(cur)
        if len(rows) > MULTIROW_MAX or _values_group(sql) is None:
            cur.executemany(translate(sql), rows)  # pipelined: the larger batches' fastest
            return Cursor(cur)
        for chunk in _chunks(rows):
            cur.execute(_multirow(sql, len(chunk)), [v for row in chunk for v in row])
        return Cursor(cur)

    def insert_returning_and_commit(self, sql: str, params: Iterable[Sequence], *,
                                    sync: bool) -> list:
        """An ``INSERT ... VALUES (...) RETURNING x`` of every row of ``params``, then a commit
        (``sync``: one that waits for the server's disk), with the held writes before it — one
        message for a batch of up to :data:`MULTIROW_MAX` rows; every row's ``x`` in order (the
        server returns a multi-row insert's rows in VALUES order)."""
        rows = [tuple(p) for p in params]
        if len(rows) > MULTIROW_MAX:
            self._send_held()
            cur = self.raw.cursor()
            out: list = []
            for chunk in _chunks(rows):
                cur.execute(_multirow(sql, len(chunk)), [v for row in chunk for v in row])
                out.extend(row[0] for row in cur.fetchall())
            self.commit(sync=sync)
            return out
        self._held.append((_multirow(sql, len(rows)), [v for row in rows for v in row]))
        sent = self._send_held(sync_commit=sync) if sync else self._send_held(commit=True)
        assert sent is not None
        return [row[0] for row in _first_rows(sent)]

    # --- writes whose results nobody reads ---------------------------------------------------

    def defer(self, sql: str, params: Sequence = ()) -> None:
        """Hold a write, sent with the next message (see the class)."""
        self._held.append((translate(sql), list(params)))

    def defer_many(self, sql: str, params: Iterable[Sequence]) -> None:
        """Hold an ``INSERT ... VALUES (...)`` of every row of ``params`` (up to
        :data:`MULTIROW_MAX` rows; a larger batch, or another statement, is sent now)."""
        rows = [tuple(p) for p in params]
        if not rows:
            return
        if len(rows) > MULTIROW_MAX or _values_group(sql) is None:
            self.executemany(sql, rows)
            return
        for chunk in _chunks(rows):
            self._held.append((_multirow(sql, len(chunk)), [v for row in chunk for v in row]))

    def _send_held(self, *, commit: bool = False, sync_commit: bool = False
                   ) -> psycopg.ClientCursor | None:
        """Send the held writes (then a commit, if asked) as one message: bound on the client
        (psycopg's ClientCursor, its quoting), several statements in one simple query."""
        if not self._held and not (commit or sync_commit):
            return None
        statements = [sql for sql, _ in self._held]
        params = [p for _, ps in self._held for p in ps]
        self._held = []
        if sync_commit:
            statements.append("SET LOCAL synchronous_commit = on")
        if commit or sync_commit:
            statements.append("COMMIT")
        cur = psycopg.ClientCursor(self.raw)
        cur.execute("; ".join(statements), params)
        return cur

    # --- transactions ------------------------------------------------------------------------

    def commit(self, *, sync: bool = False) -> None:
        """Commit (with the held writes, in one message). ``sync``: wait for the server's disk
        whatever the session's ``synchronous_commit``."""
        if self._held or sync:
            if self._held or self.raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                cur = self._send_held(commit=True, sync_commit=sync)
                if cur is not None:
                    while cur.nextset():
                        pass
            return
        self.raw.commit()

    def rollback(self) -> None:
        self._held = []
        self.raw.rollback()

    def close(self) -> None:
        self._held = []
        self.raw.close()

    @property
    def closed(self) -> bool:
        return bool(self.raw.closed)

    @property
    def in_transaction(self) -> bool:
        """A transaction is open, or writes are held for one (as sqlite3's attribute)."""
        return bool(self._held) or \
            self.raw.info.transaction_status != psycopg.pq.TransactionStatus.IDLE

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        if kind is None:
            self.commit()
        else:
            self.rollback()


def _first_rows(cur: psycopg.ClientCursor) -> list:
    """The rows of the first statement of a multi-statement message that returned any (the
    others are skipped to the end)."""
    rows: list | None = None
    while True:
        if rows is None and cur.description is not None:
            rows = cur.fetchall()
        if not cur.nextset():
            break
    return rows or []


def connect(url: str, *, readonly: bool = False, application: str = "memprog",
            synchronous_commit: bool = True) -> Connection:
    """A connection with the store's settings (see the module's invariants);
    ``synchronous_commit=False``: its commits do not wait for the server's disk (the writer's,
    :meth:`service.store.database.PostgresDatabase.commit`)."""
    options = f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"
    if not synchronous_commit:
        options += " -c synchronous_commit=off"
    raw = psycopg.connect(
        url,
        connect_timeout=CONNECT_TIMEOUT_S,
        application_name=application[:63],
        keepalives=1,
        keepalives_idle=5,
        keepalives_interval=2,
        keepalives_count=3,
        options=options,
    )
    raw.adapters.register_dumper(bool, _IntFromBool)
    if readonly:
        raw.read_only = True
    return Connection(raw)


@contextmanager
def reading(url: str) -> Iterator[Connection]:
    """A short read-only connection, closed when the block ends (its transaction too)."""
    conn = connect(url, readonly=True, application="memprog reader")
    try:
        yield conn
    finally:
        try:
            conn.rollback()
        finally:
            conn.close()


def try_station_lock(conn: Connection, station: str) -> bool:
    """Take the session-level advisory lock of ``station`` on ``conn`` (held until the
    connection ends: a crash or a lost network releases it); False if another session holds it."""
    (got,) = conn.execute(
        "SELECT pg_try_advisory_lock(hashtextextended(?, 0))", (f"memprog station {station}",)
    ).fetchone()
    conn.commit()
    return bool(got)


def redact(url: str) -> str:
    """The URL without its password (for messages and /health)."""
    return re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url)


def copy_rows(conn: Connection, table: str, columns: Sequence[str],
              rows: Iterable[Sequence]) -> None:
    """Bulk-insert ``rows`` into ``table`` with COPY (in the connection's transaction), in
    order: identity columns left out take their values in that order."""
    with conn.raw.cursor() as cur, cur.copy(
        f"COPY {table} ({', '.join(columns)}) FROM STDIN"
    ) as copy:
        for row in rows:
            copy.write_row(row)

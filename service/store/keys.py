"""The ``api_keys`` table: API keys with scopes, stored hashed (:class:`KeyStore`, one class for
its table, like :class:`service.store.jobs.JobStore`). What a scope allows, and how a request
names its key, is :mod:`service.auth`; the keys in memory that authenticate requests are
:mod:`service.key_cache`."""

from __future__ import annotations

import builtins
import hashlib
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from service.store import db, schema
from service.store.database import Database, SqliteDatabase, open_database

Scope = Literal["read", "program", "admin"]
SCOPES: tuple[Scope, ...] = ("read", "program", "admin")
RANK = {scope: rank for rank, scope in enumerate(SCOPES)}

KEY_PREFIX = "mp_"

@dataclass(frozen=True)
class Principal:
    """Who is asking: a key's name and scope (``name`` None when authentication is off)."""

    name: str | None
    scope: Scope
    key_id: int | None = None


OPEN = Principal(name=None, scope="admin")
"""Everyone, when authentication is off."""


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    """The ``api_keys`` table of the service database. Safe from any thread and any process
    (each call opens its own connection); never touches the other tables.

    It opens an existing database only, and raises ``FileNotFoundError`` naming the path
    otherwise: a typo must not leave a stray database holding keys no service reads. With
    ``create=True`` (``memprog keys create --create``, the service's start) it makes a new one,
    mode 0600 whatever the umask (:func:`service.store.dblock.create_private`)."""

    def __init__(self, target: str | Path | Database, *, create: bool = False,
                 station: str | None = None):
        self.db: Database = (open_database(target, station) if isinstance(target, str | Path)
                             else target)
        self.path = self.db.path if isinstance(self.db, SqliteDatabase) else None
        self._create_file = create
        self._ready = False

    def _connect(self) -> Any:
        if isinstance(self.db, SqliteDatabase):
            conn = db.open_keys(self.db.path, create=self._create_file)
        else:
            conn = self.db.side_writer()  # one key table for the lab, on the server
        if not self._ready:
            try:
                # the api_keys table is a schema step like any other
                if isinstance(self.db, SqliteDatabase):
                    schema.migrate(conn, self.db.station)
                else:
                    self.db.migrate(conn)
            except BaseException:
                conn.close()  # e.g. a file that is no database
                raise
            self._ready = True
        return conn

    def create(self, name: str, scope: Scope) -> tuple[int, str]:
        """A new key: its id and the key itself (stored only as a hash: show it now)."""
        if scope not in RANK:
            raise ValueError(f"unknown scope {scope!r}; one of {', '.join(SCOPES)}")
        if not name.strip():
            raise ValueError("a key needs a name (whose key it is)")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        conn = self._connect()
        try:
            with conn:
                (key_id,) = conn.execute(
                    "INSERT INTO api_keys (name, scope, hint, hash, created) "
                    "VALUES (?, ?, ?, ?, ?) RETURNING id",
                    (name.strip(), scope, key[:10], key_hash(key), time.time()),
                ).fetchone()
        finally:
            conn.close()
        return int(key_id), key

    def list(self) -> list[dict]:
        """Every key (valid and revoked), oldest first, without hashes."""
        conn = self._connect()
        try:
            rows = conn.execute(
                "SELECT id, name, scope, hint, created, revoked FROM api_keys ORDER BY id"
            ).fetchall()
        finally:
            conn.close()
        return [dict(row) for row in rows]

    def revoke(self, key_id: int) -> bool:
        """Revoke a key; False if there is no such valid key."""
        conn = self._connect()
        try:
            with conn:
                changed = conn.execute(
                    "UPDATE api_keys SET revoked = ? WHERE id = ? AND revoked IS NULL",
                    (time.time(), key_id),
                ).rowcount
        finally:
            conn.close()
        return changed > 0

    def verify(self, key: str) -> Principal | None:
        """The holder of a valid ``key``, None for an unknown or revoked one."""
        conn = self._connect()
        try:
            row = conn.execute(
                "SELECT id, name, scope FROM api_keys WHERE hash = ? AND revoked IS NULL",
                (key_hash(key),),
            ).fetchone()
        finally:
            conn.close()
        return None if row is None else Principal(row["name"], row["scope"], row["id"])

    def valid_keys(self) -> builtins.list[tuple[str, Principal]]:
        """Every valid key as (SHA-256 hex, holder): what :class:`KeyCache` holds."""
        conn = self._connect()
        try:
            rows = conn.execute(
                "SELECT id, name, scope, hash FROM api_keys WHERE revoked IS NULL"
            ).fetchall()
        finally:
            conn.close()
        return [(row["hash"], Principal(row["name"], row["scope"], row["id"])) for row in rows]

    def record_uses(self, station: str, uses: dict[int, tuple[float, float, int]]) -> None:
        """Add key uses seen by ``station``: key id → (first, last use, Unix s; count)."""
        if not uses:
            return
        conn = self._connect()
        try:
            with conn:
                conn.executemany(
                    "INSERT INTO key_uses (key_id, station, first_used, last_used, uses) "
                    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (key_id, station) DO UPDATE SET "
                    "last_used = excluded.last_used, uses = key_uses.uses + excluded.uses",
                    [(key_id, station, first, last, n)
                     for key_id, (first, last, n) in uses.items()],
                )
        finally:
            conn.close()

    def uses(self) -> builtins.list[dict]:
        """Every key's uses, per station."""
        conn = self._connect()
        try:
            rows = conn.execute(
                "SELECT key_id, station, first_used, last_used, uses FROM key_uses "
                "ORDER BY key_id, station").fetchall()
        finally:
            conn.close()
        return [dict(zip(("key_id", "station", "first_used", "last_used", "uses"), row,
                         strict=True)) for row in rows]

    def count_valid(self) -> int:
        conn = self._connect()
        try:
            return int(
                conn.execute("SELECT COUNT(*) FROM api_keys WHERE revoked IS NULL").fetchone()[0]
            )
        finally:
            conn.close()

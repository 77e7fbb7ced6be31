"""Access control: API keys with scopes, stored hashed in the service's SQLite database.

Scopes, each implying the ones before it:

* ``read`` — every ``GET`` of ``/api/v1`` (array, runs, export, jobs and their progress stream,
  predictor), ``POST /read``, and ``GET /metrics``;
* ``program`` — also ``POST /pulse``, ``POST /program``, ``POST /jobs`` and
  ``POST /jobs/{id}/abort``;
* ``admin`` — everything, also ``POST /predictor/reload``.

``POST /emergency-stop`` takes *any* valid key, whatever its scope (safety first: whoever may
watch the bench may stop it). ``GET /api/v1/health``, ``/docs`` and ``/openapi.json`` are open
(liveness probes, documentation).

A request names its key as ``Authorization: ApiKey <key>`` or ``Authorization: Bearer <key>``:
401 without a key or with an unknown or revoked one, 403 with a key whose scope is too small.
Keys are created, listed and revoked with ``memprog keys ...`` (:mod:`service.keys_cli`); a key is
shown once, when it is created, and only its SHA-256 is stored (keys are 256-bit random tokens,
so a fast hash is as good as a slow one). Revoking takes effect at the next request.

Authentication is off unless ``auth.enabled`` (``MEMPROG_AUTH__ENABLED=true``); the service
refuses to start bound to anything but a loopback address while it is off
(:func:`exposure_problem`).
"""

from __future__ import annotations

import hashlib
import ipaddress
import secrets
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader

Scope = Literal["read", "program", "admin"]
SCOPES: tuple[Scope, ...] = ("read", "program", "admin")
_RANK = {scope: rank for rank, scope in enumerate(SCOPES)}

KEY_PREFIX = "mp_"

SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    scope TEXT NOT NULL CHECK (scope IN ('read', 'program', 'admin')),
    hint TEXT NOT NULL,               -- the key's first characters, to recognise it in listings
    hash TEXT NOT NULL UNIQUE,        -- SHA-256 of the key, hex
    created REAL NOT NULL,            -- Unix time, s
    revoked REAL                      -- Unix time, s; NULL while valid
);
"""


@dataclass(frozen=True)
class Principal:
    """Who is asking: a key's name and scope (``name`` None when authentication is off)."""

    name: str | None
    scope: Scope
    key_id: int | None = None


OPEN = Principal(name=None, scope="admin")
"""Everyone, when authentication is off."""


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    """The ``api_keys`` table of the service database. Safe from any thread and any process
    (each call opens its own connection); never touches the other tables."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._ready = False

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30)
        conn.row_factory = sqlite3.Row
        if not self._ready:
            conn.executescript(SCHEMA)
            self._ready = True
        return conn

    def create(self, name: str, scope: Scope) -> tuple[int, str]:
        """A new key: its id and the key itself (stored only as a hash: show it now)."""
        if scope not in _RANK:
            raise ValueError(f"unknown scope {scope!r}; one of {', '.join(SCOPES)}")
        if not name.strip():
            raise ValueError("a key needs a name (whose key it is)")
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        conn = self._connect()
        try:
            with conn:
                cur = conn.execute(
                    "INSERT INTO api_keys (name, scope, hint, hash, created) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (name.strip(), scope, key[:10], _hash(key), time.time()),
                )
        finally:
            conn.close()
        return int(cur.lastrowid), key

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
                (_hash(key),),
            ).fetchone()
        finally:
            conn.close()
        return None if row is None else Principal(row["name"], row["scope"], row["id"])

    def count_valid(self) -> int:
        conn = self._connect()
        try:
            return int(
                conn.execute("SELECT COUNT(*) FROM api_keys WHERE revoked IS NULL").fetchone()[0]
            )
        finally:
            conn.close()


# ------------------------------------------------------------------------ binding and serving


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # any other name may resolve to anything


def exposure_problem(auth_enabled: bool, host: str) -> str | None:
    """Why the service must not start on ``host``, or None."""
    if auth_enabled or is_loopback(host):
        return None
    return (
        f"refusing to serve on {host} without authentication: anyone who can reach this "
        "address could fire pulses. Enable it (MEMPROG_AUTH__ENABLED=true, or [auth] "
        "enabled = true in the config file) and create keys with `memprog keys create "
        "--scope program --name NAME`, or bind to 127.0.0.1."
    )


# ------------------------------------------------------------------------------ dependencies


@dataclass
class AuthState:
    """What the dependencies need: on or off, and where the keys are."""

    enabled: bool
    keys: KeyStore


_header = APIKeyHeader(
    name="Authorization",
    scheme_name="ApiKey",
    description="`ApiKey <key>` or `Bearer <key>` (keys: `memprog keys create`). Needed only "
    "when the service runs with authentication on.",
    auto_error=False,
)


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status_code=401,
        detail=detail,
        headers={"WWW-Authenticate": 'ApiKey realm="memprog", Bearer realm="memprog"'},
    )


def _principal(request: Request, authorization: str | None) -> Principal:
    auth: AuthState = request.app.state.auth
    if not auth.enabled:
        return OPEN
    if not authorization:
        raise _unauthorized("an API key is needed: Authorization: ApiKey <key> (or Bearer <key>)")
    scheme, _, key = authorization.strip().partition(" ")
    if scheme.lower() not in ("apikey", "bearer") or not key.strip():
        raise _unauthorized("Authorization must be 'ApiKey <key>' or 'Bearer <key>'")
    principal = auth.keys.verify(key.strip())
    if principal is None:
        raise _unauthorized("unknown or revoked API key")
    request.state.principal = principal
    return principal


def require(scope: Scope | None) -> Callable[..., Principal]:
    """A dependency: the caller's :class:`Principal`, refusing (401/403) a caller without a
    valid key of at least ``scope`` (``None``: any valid key)."""

    def dependency(
        request: Request, authorization: Annotated[str | None, Security(_header)] = None
    ) -> Principal:
        principal = _principal(request, authorization)
        if scope is not None and _RANK[principal.scope] < _RANK[scope]:
            raise HTTPException(
                status_code=403,
                detail=f"this needs a key with scope '{scope}' (or higher); "
                f"key '{principal.name}' has '{principal.scope}'",
            )
        return principal

    dependency.__name__ = f"require_{scope or 'any_key'}"
    return dependency


def require_by_method(scopes: dict[str, Scope]) -> Callable[..., Principal]:
    """A dependency for a router whose routes differ by method, e.g. ``{"GET": "read",
    "POST": "admin"}``; a method not named needs ``admin``."""

    def dependency(
        request: Request, authorization: Annotated[str | None, Security(_header)] = None
    ) -> Principal:
        return require(scopes.get(request.method, "admin"))(request, authorization)

    return dependency


ReadKey = Annotated[Principal, Depends(require("read"))]
ProgramKey = Annotated[Principal, Depends(require("program"))]
AnyKey = Annotated[Principal, Depends(require(None))]

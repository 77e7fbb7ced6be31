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

import asyncio
import builtins
import hashlib
import ipaddress
import math
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from fastapi import Depends, HTTPException, Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Send
from starlette.types import Scope as ASGIScope

from service.dblock import create_private

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
    (each call opens its own connection); never touches the other tables.

    It opens an existing database only, and raises ``FileNotFoundError`` naming the path
    otherwise: a typo must not leave a stray database holding keys no service reads. With
    ``create=True`` (``memprog keys create --create``, the service's start) it makes a new one,
    mode 0600 whatever the umask (:func:`service.dblock.create_private`)."""

    def __init__(self, path: str | Path, *, create: bool = False):
        self.path = Path(path)
        self._create_file = create
        self._ready = False

    def _connect(self) -> sqlite3.Connection:
        if self._create_file:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            create_private(self.path)
            conn = sqlite3.connect(self.path, timeout=30)
        else:
            conn = self._open_existing()
        conn.row_factory = sqlite3.Row
        if not self._ready:
            try:
                conn.executescript(SCHEMA)
            except BaseException:
                conn.close()  # e.g. a file that is no database
                raise
            self._ready = True
        return conn

    def _open_existing(self) -> sqlite3.Connection:
        missing = FileNotFoundError(f"no database at {self.path}")
        if not self.path.is_file():
            raise missing
        # mode=rw: SQLite itself never creates the file (it may vanish after the check).
        uri = f"{self.path.absolute().as_uri()}?mode=rw"
        try:
            return sqlite3.connect(uri, uri=True, timeout=30)
        except sqlite3.OperationalError as exc:
            if not self.path.is_file():
                raise missing from exc
            raise

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
        assert cur.lastrowid is not None  # an INSERT names its row
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


# --------------------------------------------------------------------------- the key cache


KEY_REFRESH_S = 2.0
"""s between reloads of the valid keys: a revoked key stops working within about this."""

MISS_REFRESH_S = 0.25
"""s: an unknown key makes the cache reload at most this often (a new key works at once, a
flood of made-up keys costs at most four small queries a second)."""

MISS_WAIT_S = 1.0
"""s a request with a key the cache does not know waits at most for that reload."""


class KeyCache:
    """The valid keys, in memory: what authenticates requests.

    The request path never waits on the database for a key the service already knows, so a
    database that is slow, locked, full or gone cannot block the emergency stop (it authenticates
    from here). The cache is reloaded every :data:`KEY_REFRESH_S` s and, for a key it does not
    know, at most every :data:`MISS_REFRESH_S` s. A reload that fails keeps the keys known
    before (``error`` says why); the key store never creates a database file.
    """

    def __init__(self, store: KeyStore):
        self.store = store
        self._by_hash: dict[str, Principal] = {}
        self._ids: frozenset[int] = frozenset()
        self._loaded_at = -math.inf  # time.monotonic() of the last successful reload
        self._tried_at = -math.inf
        self._reload: asyncio.Future | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="key-cache")
        self.error: str | None = None

    def load(self) -> None:
        """Reload now, on this thread."""
        self._tried_at = time.monotonic()
        try:
            keys = self.store.valid_keys()
        except (sqlite3.Error, OSError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            return
        self._by_hash = dict(keys)
        self._ids = frozenset(p.key_id for _, p in keys if p.key_id is not None)
        self._loaded_at, self.error = time.monotonic(), None

    async def reload(self) -> None:
        """Reload on the cache's own thread (one reload at a time; callers share it)."""
        if self._reload is None or self._reload.done():
            loop = asyncio.get_running_loop()
            self._reload = asyncio.wrap_future(self._executor.submit(self.load), loop=loop)
        await asyncio.shield(self._reload)

    def known(self, key: str) -> Principal | None:
        return self._by_hash.get(_hash(key))

    def still_valid(self, principal: Principal) -> bool:
        """Is the key of ``principal`` still valid (as of the last reload)?"""
        return principal.key_id is None or principal.key_id in self._ids

    async def lookup(self, key: str) -> Principal | None:
        """The holder of ``key``; for a key not known yet, after a bounded reload."""
        principal = self.known(key)
        if principal is not None:
            return principal
        asked = time.monotonic()
        try:
            async with asyncio.timeout(MISS_WAIT_S):
                await asyncio.sleep(max(0.0, MISS_REFRESH_S - (asked - self._tried_at)))
                if self._tried_at < asked:  # nobody reloaded since this request came
                    await self.reload()
        except TimeoutError:
            pass
        return self.known(key)

    async def keep_fresh(self) -> None:
        """Reload every :data:`KEY_REFRESH_S` s until cancelled (a task of the service)."""
        while True:
            await asyncio.sleep(KEY_REFRESH_S)
            await self.reload()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


# ------------------------------------------------------------------------------ dependencies


@dataclass
class AuthState:
    """What the middleware and the dependencies need: on or off, and the keys."""

    enabled: bool
    keys: KeyStore
    cache: KeyCache | None = None

    def __post_init__(self) -> None:
        if self.cache is None:
            self.cache = KeyCache(self.keys)


OPEN_PATHS = frozenset({
    "/api/v1/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/",
    "/dashboard", "/favicon.ico",
})
"""Paths served without a key: liveness probes, documentation, the dashboard page (which asks
for a key itself)."""

OPEN_PREFIXES = ("/static/",)

_PRINCIPAL = "memprog.principal"  # where the middleware leaves the caller, in the ASGI scope


class AuthMiddleware:
    """Authenticates every request but the open ones *before* its body is read.

    A request without a valid key is answered 401 from its headers alone: an anonymous client
    cannot make the service parse (and hold in memory) a large body. The caller found is left
    in the scope for the scope checks of the routes (:func:`require`). Keys come from the
    :class:`KeyCache`, never from a database query per request.
    """

    def __init__(self, app: ASGIApp, auth: AuthState):
        self.app = app
        self.auth = auth

    async def __call__(self, scope: ASGIScope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or not self.auth.enabled
                or scope["path"] in OPEN_PATHS or scope["path"].startswith(OPEN_PREFIXES)):
            await self.app(scope, receive, send)
            return
        authorization = Headers(scope=scope).get("authorization")
        try:
            scope[_PRINCIPAL] = await _authenticate(self.auth, authorization)
        except HTTPException as exc:
            response = JSONResponse({"detail": exc.detail}, exc.status_code, exc.headers)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status_code=401,
        detail=detail,
        headers={"WWW-Authenticate": 'ApiKey realm="memprog", Bearer realm="memprog"'},
    )


async def _authenticate(auth: AuthState, authorization: str | None) -> Principal:
    if not authorization:
        raise _unauthorized("an API key is needed: Authorization: ApiKey <key> (or Bearer <key>)")
    scheme, _, key = authorization.strip().partition(" ")
    if scheme.lower() not in ("apikey", "bearer") or not key.strip():
        raise _unauthorized("Authorization must be 'ApiKey <key>' or 'Bearer <key>'")
    assert auth.cache is not None
    principal = await auth.cache.lookup(key.strip())
    if principal is None:
        raise _unauthorized("unknown or revoked API key")
    return principal


_header = APIKeyHeader(
    name="Authorization",
    scheme_name="ApiKey",
    description="`ApiKey <key>` or `Bearer <key>` (keys: `memprog keys create`). Needed only "
    "when the service runs with authentication on.",
    auto_error=False,
)


async def _principal(request: Request, authorization: str | None) -> Principal:
    auth: AuthState = request.app.state.auth
    if not auth.enabled:
        return OPEN
    principal = request.scope.get(_PRINCIPAL)
    if principal is None:  # an open path that checks a scope anyway
        principal = await _authenticate(auth, authorization)
        request.scope[_PRINCIPAL] = principal
    request.state.principal = principal
    return principal


def require(scope: Scope | None) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the caller's :class:`Principal`, refusing (401/403) a caller without a
    valid key of at least ``scope`` (``None``: any valid key). Async and I/O-free: it never
    takes a worker thread (the emergency stop depends on it)."""

    async def dependency(
        request: Request, authorization: Annotated[str | None, Security(_header)] = None
    ) -> Principal:
        principal = await _principal(request, authorization)
        if scope is not None and _RANK[principal.scope] < _RANK[scope]:
            raise HTTPException(
                status_code=403,
                detail=f"this needs a key with scope '{scope}' (or higher); "
                f"key '{principal.name}' has '{principal.scope}'",
            )
        return principal

    dependency.__name__ = f"require_{scope or 'any_key'}"
    return dependency


def require_by_method(scopes: dict[str, Scope]) -> Callable[..., Awaitable[Principal]]:
    """A dependency for a router whose routes differ by method, e.g. ``{"GET": "read",
    "POST": "admin"}``; a method not named needs ``admin``."""

    async def dependency(
        request: Request, authorization: Annotated[str | None, Security(_header)] = None
    ) -> Principal:
        return await require(scopes.get(request.method, "admin"))(request, authorization)

    return dependency


ReadKey = Annotated[Principal, Depends(require("read"))]
ProgramKey = Annotated[Principal, Depends(require("program"))]
AnyKey = Annotated[Principal, Depends(require(None))]

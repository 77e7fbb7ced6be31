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
Keys are created, listed and revoked with ``memprog keys ...`` (:mod:`service.keys_cli`) and kept
in the ``api_keys`` table (:mod:`service.store.keys`); requests are authenticated from the keys
held in memory (:mod:`service.key_cache`). A key is shown once, when it is created, and only its
SHA-256 is stored (keys are 256-bit random tokens, so a fast hash is as good as a slow one).
Revoking takes effect at the next request.

Authentication is off unless ``auth.enabled`` (``MEMPROG_AUTH__ENABLED=true``); the service
refuses to start bound to anything but a loopback address while it is off
(:func:`exposure_problem`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Send
from starlette.types import Scope as ASGIScope

from service.key_cache import KeyCache
from service.store.keys import OPEN, RANK, KeyStore, Principal, Scope

__all__ = ["AnyKey", "AuthMiddleware", "AuthState", "Principal", "ProgramKey", "ReadKey",
           "exposure_problem", "is_loopback", "require", "require_by_method"]

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
        if scope is not None and RANK[principal.scope] < RANK[scope]:
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

"""``memprog serve``: the service under uvicorn (one process, one backend owner)."""

from __future__ import annotations

import sys
from pathlib import Path

import uvicorn
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from service import connections
from service.app import create_app
from service.auth import exposure_problem
from service.config import load_settings
from service.store import dblock
from service.store.database import open_database
from service.store.keys import KeyStore

GRACEFUL_SHUTDOWN_S = 3.0
"""s that open responses get on SIGTERM before they are closed and the service shuts down."""


def serve(
    config: str | Path | None = None,
    host: str | None = None,
    port: int | None = None,
    log_level: str = "info",
) -> int:
    """Run until SIGINT/SIGTERM; shutdown puts the backend into its safe state.

    Refuses (exit status 2, nothing served) to bind to a non-loopback address without
    authentication, to start on a database another service holds (naming it; nothing
    opened, neither the database nor the backend: :mod:`service.store.dblock`), and to start with
    ``server.max_connections`` beyond what the file descriptor limit allows.

    Raises the process's soft file descriptor limit to its hard limit first; client connections
    are bounded below it, with a reserve, and idle ones give way (:mod:`service.connections`)."""
    settings = load_settings(config)
    host = host if host is not None else settings.server.host
    problem = exposure_problem(settings.auth.enabled, host)
    if problem is not None:
        print(f"memprog serve: {problem}", file=sys.stderr)
        return 2
    port = port if port is not None else settings.server.port
    descriptors = connections.raise_descriptor_limit()
    try:
        cap = connections.connection_cap(
            settings.server.max_connections, settings.server.backlog, descriptors
        )
    except ValueError as exc:
        print(f"memprog serve: {exc}", file=sys.stderr)
        return 2
    guard = connections.ConnectionGuard(cap, settings.server.header_timeout_s)
    listen = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    try:
        # Before the backend is opened: a second service must not touch the bench either.
        # The storage adopts this lock and releases it when it closes.
        database = open_database(settings.database, settings.station, settings.state_dir)
        reservation = dblock.reserve(database.anchor, listen)
    except (dblock.DatabaseInUse, OSError) as exc:
        print(f"memprog serve: {exc}", file=sys.stderr)
        return 2
    try:
        # create=True: the database is this service's own (the storage would create it next).
        if settings.auth.enabled and KeyStore(database, create=True).count_valid() == 0:
            print(
                "memprog serve: authentication is on but no API key exists yet: every request "
                "but /api/v1/health answers 401 until one is created (memprog keys create)",
                file=sys.stderr,
            )
        app = create_app(settings)
        uvicorn.run(
            app,
            host=host,
            port=port,
            log_level=log_level,
            # One worker on purpose: the backend has exactly one owner.
            workers=None,
            # On SIGTERM uvicorn waits for open responses before the service's own shutdown
            # (jobs 'interrupted', safe state) runs; a job's progress stream stays open as long
            # as the job: bounded, or a watching dashboard would keep a stopped service pulsing.
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,  # type: ignore[arg-type]  # s, float
            # Bounded connections, idle ones evicted first, a header timeout: a flood of silent
            # sockets cannot take the descriptors an emergency stop needs. No WebSocket
            # upgrade (the API has none): it would take a connection out of the guard.
            http=connections.guarded_protocol(AutoHTTPProtocol, guard),
            ws="none",
            backlog=settings.server.backlog,
            timeout_keep_alive=settings.server.keep_alive_s,  # type: ignore[arg-type]  # s; a float works
        )
    finally:
        reservation.release()  # if the storage never adopted it (a failed start)
    return 0

"""``memprog serve``: the service under uvicorn (one process, one backend owner)."""

from __future__ import annotations

import sys
from pathlib import Path

import uvicorn

from service.app import create_app
from service.auth import KeyStore, exposure_problem
from service.config import load_settings

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
    authentication."""
    settings = load_settings(config)
    host = host if host is not None else settings.server.host
    problem = exposure_problem(settings.auth.enabled, host)
    if problem is not None:
        print(f"memprog serve: {problem}", file=sys.stderr)
        return 2
    if settings.auth.enabled and KeyStore(settings.database).count_valid() == 0:
        print(
            "memprog serve: authentication is on but no API key exists yet: every request "
            "but /api/v1/health answers 401 until one is created (memprog keys create)",
            file=sys.stderr,
        )
    app = create_app(settings)
    uvicorn.run(
        app,
        host=host,
        port=port if port is not None else settings.server.port,
        log_level=log_level,
        # One worker on purpose: the backend has exactly one owner.
        workers=None,
        # On SIGTERM uvicorn waits for open responses before the service's own shutdown
        # (jobs 'interrupted', safe state) runs; a job's progress stream stays open as long
        # as the job: bounded, or a watching dashboard would keep a stopped service pulsing.
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
    )
    return 0

"""``memprog serve``: the service under uvicorn (one process, one backend owner)."""

from __future__ import annotations

from pathlib import Path

import uvicorn

from service.app import create_app
from service.config import load_settings


def serve(
    config: str | Path | None = None,
    host: str | None = None,
    port: int | None = None,
    log_level: str = "info",
) -> int:
    """Run until SIGINT/SIGTERM; shutdown puts the backend into its safe state."""
    settings = load_settings(config)
    app = create_app(settings)
    uvicorn.run(
        app,
        host=host if host is not None else settings.server.host,
        port=port if port is not None else settings.server.port,
        log_level=log_level,
        # One worker on purpose: the backend has exactly one owner.
        workers=None,
    )
    return 0

"""A lab's stations: this service's heartbeat, and the fleet as the heartbeats tell it.

Every ``heartbeat_s`` seconds the service writes its row of the ``stations`` table
(:mod:`service.store.stations`): backend kind, the instruments' identities, the running job, its
health, version, host, pid and address. ``GET /api/v1/stations`` lists every station of the
database with ``silent`` set for one that missed :data:`SILENT_BEATS` beats (stopped, crashed or
cut off from the database). With SQLite the fleet is this one station.

A heartbeat that the database cannot take fails the log like any write (nothing is fired until
it is back), so a PostgreSQL server that went away while the station was idle is noticed within
one beat; the log watcher then reconnects (:func:`service.app._watch_log`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from service.state import ServiceState
from service.store import LogUnavailable

log = logging.getLogger("memprog.stations")

SILENT_BEATS = 3
"""A station whose last heartbeat is older than this many of its intervals is ``silent``."""


def memprog_version() -> str:
    try:
        return version("memprog")
    except PackageNotFoundError:
        return "unknown"


def heartbeat_fields(state: ServiceState, running_job: int | None) -> dict[str, Any]:
    """What this station says of itself in a heartbeat."""
    owner, settings = state.owner, state.settings
    info = owner.info
    failure = owner.storage.failure
    status = ("unavailable" if info is None or owner.unavailable is not None
              else "degraded" if failure is not None else "ok")
    host = settings.server.host
    return {
        "backend": info.kind if info is not None else state.configured_kind,
        "instruments": dict(info.instruments) if info is not None else {},
        "started": STARTED,
        "running_job": running_job,
        "health": {"status": status, "log": "ok" if failure is None else "failed",
                   "unavailable": owner.unavailable, "queued": owner.queued,
                   "heartbeat_s": settings.heartbeat_s},
        "version": memprog_version(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "listen": f"http://{host}:{settings.server.port}",
    }


STARTED = time.time()


async def beat_forever(state: ServiceState, running_job: Any) -> None:
    """Write this station's heartbeat every ``heartbeat_s`` s until cancelled (a task of the
    service); the first at once."""
    interval = state.settings.heartbeat_s
    while True:
        try:
            fields = heartbeat_fields(state, running_job())
            await asyncio.to_thread(state.storage.beat, **fields)
        except LogUnavailable as exc:
            log.warning("heartbeat not written: %s", exc)
        except Exception:  # keep beating whatever happened
            log.exception("heartbeat failed")
        await asyncio.sleep(interval)


def fleet(rows: list[dict], now: float | None = None) -> list[dict]:
    """The stations' rows as the API gives them: ``silent`` after :data:`SILENT_BEATS` missed
    beats, ``age_s`` since the last one."""
    now = time.time() if now is None else now
    out = []
    for row in rows:
        interval = float((row.get("health") or {}).get("heartbeat_s") or 5.0)
        age = max(0.0, now - float(row["heartbeat"]))
        out.append({**row, "age_s": age, "silent": age > SILENT_BEATS * interval})
    return out

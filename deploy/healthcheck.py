#!/usr/bin/env python3
"""Health check of a memprog service (the Docker image's HEALTHCHECK; usable from cron/monitoring).

Exit status 0 when ``GET /api/v1/health`` answers 200 with ``"status": "ok"`` (the service is up,
its backend is known and its database takes records), 1 otherwise — also when a bench is
unreachable (``"unavailable"``) or the database cannot take records (``"degraded"``: nothing is
fired), since programming would fail. Standard library only. The URL comes from the first
argument or ``MEMPROG_HEALTH_URL``, default ``http://127.0.0.1:8000/api/v1/health``;
``/api/v1/health`` needs no API key.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8000/api/v1/health"


def main(argv: list[str]) -> int:
    url = argv[1] if len(argv) > 1 else os.environ.get("MEMPROG_HEALTH_URL", DEFAULT_URL)
    try:
        with urllib.request.urlopen(url, timeout=4.0) as response:
            body = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"memprog unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    if body.get("status") != "ok":
        why = body.get("unavailable") or (body.get("log") or {}).get("detail")
        print(f"memprog unhealthy: {body.get('status')}: {why}", file=sys.stderr)
        return 1
    print(f"memprog ok: {body.get('backend')}, {body.get('queued')} queued")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

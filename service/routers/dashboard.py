"""The dashboard: ``/`` serves a single page, ``/static/...`` its script and style.

Plain HTML, JavaScript and CSS from ``service/static/`` (no build step, nothing fetched from
elsewhere): the page draws the conductance heatmap and the pulses-per-device histogram itself
on ``<canvas>`` and talks only to this service's ``/api/v1`` — ``/health`` (the SIMULATED /
HARDWARE banner), ``/array/map`` (the last known conductances, from the log: the page never
fires a read), ``/jobs`` and their event streams (live progress), ``/runs/{id}`` (pulses per
device). When the API asks for a key (401) the page asks for one, keeps it in the browser's
localStorage and sends it as ``Authorization: ApiKey <key>``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

router = APIRouter(include_in_schema=False)

# The page is small and changes with the service: always revalidate.
_NO_CACHE = {"Cache-Control": "no-cache"}


@router.get("/")
def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html", headers=_NO_CACHE)


@router.get("/dashboard")
def dashboard_alias() -> RedirectResponse:
    return RedirectResponse("/")


def install(app: FastAPI) -> None:
    """Adds the page (``/``) and its files (``/static``) to ``app``."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

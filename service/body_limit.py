"""A cap on request bodies: 413 beyond it, before the body is held in memory; 408 for a body
that stops arriving.

A declared ``Content-Length`` beyond the cap is refused from the headers alone; a chunked body
is counted as it arrives and refused as soon as it passes the cap (the application then sees
the client as gone and answers nothing more). The cap is
:attr:`service.config.ServerSettings.max_body_bytes`, by default large enough for a request
that names every cell of the configured array (:func:`default_max_body_bytes`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

BYTES_PER_CELL = 128
"""bytes of JSON one cell may take in a request: a pretty-printed target
``{"row": 4095, "col": 4095, "conductance": 0.00012345678901234567}`` takes about 80."""

BASE_BYTES = 1 << 20
"""bytes allowed on top of the per-cell share (the other fields, generous white space)."""


def default_max_body_bytes(cells: int) -> int:
    """A cap that a request naming each of ``cells`` cells fits in, bytes."""
    return BASE_BYTES + BYTES_PER_CELL * cells


class BodyLimitMiddleware:
    """Refuses (413) a request body larger than ``max_bytes()`` bytes."""

    def __init__(self, app: ASGIApp, max_bytes: Callable[[], int], body_timeout: float = 30.0):
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes()
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(limit)(scope, receive, send)
            return

        received = 0
        body_done = False  # once the body is in, receive() only waits for a disconnect
        refused = False  # the body passed the cap: the application sees a disconnect
        ours = False  # the 413 went out: whatever the application answers is dropped
        started = False

        async def refuse(response: JSONResponse) -> Message:
            nonlocal refused, ours
            refused = True
            if not started:
                ours = True
                await response(scope, receive, send)
            return {"type": "http.disconnect"}

        async def counted_receive() -> Message:
            nonlocal received, body_done
            if refused:
                return {"type": "http.disconnect"}
            if body_done:
                return await receive()
            try:
                # a body trickled in (or never sent) must not hold its connection for ever
                message = await asyncio.wait_for(receive(), self.body_timeout)
            except TimeoutError:
                return await refuse(_too_slow(self.body_timeout))
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > limit:
                    return await refuse(_too_large(limit))
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if ours:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        await self.app(scope, counted_receive, guarded_send)


def _too_slow(timeout: float) -> JSONResponse:
    return JSONResponse(
        status_code=408,
        content={"detail": f"request body not received: no data for {timeout} s "
                           "(MEMPROG_SERVER__BODY_TIMEOUT_S)"},
        headers={"Connection": "close"},
    )


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse(
        status_code=413,
        content={"detail": [{
            "loc": ["body"],
            "msg": f"request body larger than max_body_bytes = {limit} bytes "
                   "(MEMPROG_SERVER__MAX_BODY_BYTES)",
            "type": "too_large",
            "ctx": {"limit": limit},
        }]},
    )

"""What a progress-stream client of a job is handed: the job records published since it last
looked (:class:`Subscriber`), bounded, the newest always kept. The job manager
(:mod:`service.jobs`) publishes; the route ``GET /jobs/{id}/events`` reads."""

from __future__ import annotations

import asyncio
from collections import deque

from service.models import JobRecord

SUBSCRIBER_BACKLOG = 1000
"""Progress events kept for a stream client that falls behind; beyond it the oldest are dropped
(the newest, and so the terminal one, always arrive)."""


class Subscriber:
    """One progress-stream client: the job records published since it last looked."""

    def __init__(self) -> None:
        self._events: deque[JobRecord] = deque(maxlen=SUBSCRIBER_BACKLOG)
        self._wake = asyncio.Event()

    def push(self, record: JobRecord) -> None:  # on the event loop
        self._events.append(record)
        self._wake.set()

    async def next(self, timeout: float) -> JobRecord | None:
        """The next record, None if none came within ``timeout`` s."""
        if not self._events:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                return None
        return self._events.popleft()

"""The valid API keys in memory (:class:`KeyCache`): what authenticates every request, so that
the request path never waits on the database (:mod:`service.auth`)."""

from __future__ import annotations

import asyncio
import math
import time
from concurrent.futures import ThreadPoolExecutor

from service.store import db
from service.store.keys import KeyStore, Principal, key_hash

KEY_REFRESH_S = 2.0
"""s between reloads of the valid keys: a revoked key stops working within about this."""

MISS_REFRESH_S = 0.25
"""s: an unknown key makes the cache reload at most this often (a new key works at once, a
flood of made-up keys costs at most four small queries a second)."""

MISS_WAIT_S = 1.0
"""s a request with a key the cache does not know waits at most for that reload."""


_RELOAD_FAILS: tuple[type[BaseException], ...] = (*db.Error, OSError)


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
        self._uses: dict[int, tuple[float, float, int]] = {}  # since the last reload

    def note_use(self, principal: Principal) -> None:
        """Count a request ``principal``'s key authenticated (written with the next reload,
        as this station's key use)."""
        if principal.key_id is None:
            return
        now = time.time()
        first, _, n = self._uses.get(principal.key_id, (now, now, 0))
        self._uses[principal.key_id] = (first, now, n + 1)

    def load(self) -> None:
        """Reload now, on this thread (and write the key uses counted since the last one)."""
        self._tried_at = time.monotonic()
        try:
            uses, self._uses = self._uses, {}
            try:
                self.store.record_uses(self.store.db.station, uses)
            except BaseException:
                for key_id, (first, last, n) in uses.items():  # kept for the next reload
                    f2, l2, n2 = self._uses.get(key_id, (first, last, 0))
                    self._uses[key_id] = (min(first, f2), max(last, l2), n + n2)
                raise
            keys = self.store.valid_keys()
        except _RELOAD_FAILS as exc:
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
        return self._by_hash.get(key_hash(key))

    def still_valid(self, principal: Principal) -> bool:
        """Is the key of ``principal`` still valid (as of the last reload)?"""
        return principal.key_id is None or principal.key_id in self._ids

    async def lookup(self, key: str) -> Principal | None:
        """The holder of ``key``; for a key not known yet, after a bounded reload."""
        principal = self.known(key)
        if principal is not None:
            self.note_use(principal)
            return principal
        asked = time.monotonic()
        try:
            async with asyncio.timeout(MISS_WAIT_S):
                await asyncio.sleep(max(0.0, MISS_REFRESH_S - (asked - self._tried_at)))
                if self._tried_at < asked:  # nobody reloaded since this request came
                    await self.reload()
        except TimeoutError:
            pass
        principal = self.known(key)
        if principal is not None:
            self.note_use(principal)
        return principal

    async def keep_fresh(self) -> None:
        """Reload every :data:`KEY_REFRESH_S` s until cancelled (a task of the service)."""
        while True:
            await asyncio.sleep(KEY_REFRESH_S)
            await self.reload()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

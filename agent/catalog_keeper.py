"""Keeps this process's catalog snapshot current: loads it at start and again after every change.

Changes are announced on a PostgreSQL channel (LISTEN/NOTIFY). A lost listening connection is
re-established and followed by a full reload, since announcements made meanwhile were missed.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

import asyncpg
import redis.asyncio as aioredis

from cache import UNAVAILABLE, account_key

from .pricing.catalog import Catalog
from .store.catalog import load_catalog
from .store.database import CATALOG_CHANNEL

log = logging.getLogger(__name__)


async def seed_balances(client: aioredis.Redis, catalog: Catalog, previous: Catalog | None) -> None:
    """Gives Redis the stored balance of accounts it does not know yet (new accounts, or an empty Redis)."""
    pipe = client.pipeline(transaction=False)
    count = 0
    for key, account in catalog.accounts.items():
        if previous is not None and key in previous.accounts:
            continue
        pipe.hsetnx(account_key(account.tenant, account.account_tag), "balance", account.balance)
        count += 1
        if count % 5000 == 0:
            await pipe.execute()
    await pipe.execute()


class CatalogKeeper:
    def __init__(self, database_url: str, pool: asyncpg.Pool, redis: aioredis.Redis) -> None:
        self.database_url = database_url
        self.pool = pool
        self.redis = redis
        self.current = Catalog()
        self.loaded = asyncio.Event()
        self.last_load_seconds = 0.0
        self._changed = asyncio.Event()
        self._version = 0
        self._listener: asyncpg.Connection | None = None
        self._oldest_change: float | None = None
        self.on_reload = lambda catalog, seconds, delay: None

    def get(self) -> Catalog:
        return self.current

    async def reload(self) -> Catalog:
        changed_at, self._oldest_change = self._oldest_change, None
        self._version += 1
        # Millions of new objects would trigger collection after collection of the young generations, each
        # a pause of the event loop: collect nothing while loading, then move the survivors, the catalog
        # included, out of the collector's way (they hold no reference cycles; refcounting frees them).
        collecting = gc.isenabled()
        gc.disable()
        try:
            catalog, seconds = await load_catalog(self.pool, self._version)
        finally:
            if collecting:
                gc.enable()
        previous = self.current if self.loaded.is_set() else None
        try:
            await seed_balances(self.redis, catalog, previous)
        except UNAVAILABLE as exc:
            log.warning("catalog: could not seed balances in Redis (%s); will retry on next load", exc)
        self.current = catalog
        gc.freeze()
        self.last_load_seconds = seconds
        self.loaded.set()
        self.on_reload(catalog, seconds, None if changed_at is None else time.time() - changed_at)
        log.info(
            "catalog v%d: %d accounts, %d carriers, %d rates loaded in %.2fs",
            catalog.version, len(catalog.accounts), len(catalog.carriers), catalog.rate_count, seconds,
        )
        return catalog

    def _announce(self, _connection, _pid, _channel, payload: str) -> None:
        try:
            changed_at = float(payload.split(" ", 1)[0])
        except ValueError:
            changed_at = time.time()
        if self._oldest_change is None:
            self._oldest_change = changed_at
        self._changed.set()

    async def _listen(self) -> asyncpg.Connection:
        listener = await asyncpg.connect(self.database_url, timeout=5)
        await listener.add_listener(CATALOG_CHANNEL, self._announce)
        return listener

    async def start(self) -> None:
        """Listens first, then loads: a change committed in between is not missed."""
        self._listener = await self._listen()
        await self.reload()

    async def run(self) -> None:
        """Reloads after each announced change, and after each reconnection (announcements were missed)."""
        listener = self._listener
        while True:
            try:
                if listener is None or listener.is_closed():
                    listener = await self._listen()
                    self._changed.set()
                while not listener.is_closed():
                    try:
                        await asyncio.wait_for(self._changed.wait(), timeout=1.0)
                    except asyncio.TimeoutError:
                        await listener.execute("SELECT 1")
                        continue
                    await asyncio.sleep(0.05)  # let a burst of announcements settle into one reload
                    self._changed.clear()
                    await self.reload()
            except asyncio.CancelledError:
                if listener is not None and not listener.is_closed():
                    await listener.close()
                raise
            except Exception as exc:  # noqa: BLE001 - keep listening whatever happened
                log.warning("catalog: listener lost (%s); reconnecting", exc)
                if listener is not None and not listener.is_closed():
                    listener.terminate()
                listener = None
                await asyncio.sleep(1.0)

"""Keeps this process's catalog snapshot current: loads it once at start, then applies each change.

Changes are announced on a PostgreSQL channel (LISTEN/NOTIFY) and read from the change log
(store/changes.py) from the last one applied, so a lost announcement or a lost listening connection costs
nothing but time: the log is also polled every second, and every authorization learns from Redis whether a
newer change was published (`catch_up`, awaited before the call is rated: read-your-writes).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Iterable

import asyncpg
import redis.asyncio as aioredis

from cache import UNAVAILABLE, account_key, followers, seed_balance

from . import metrics, scheduling
from .pricing.account import Account
from .pricing.catalog import Catalog
from .store import changes
from .store.catalog import DeckMissing, apply_changes, load_catalog
from .store.database import CATALOG_CHANNEL
from .store.database import deadline as dropped_after

log = logging.getLogger(__name__)
_POLL = 1.0  # seconds between looks at the change log when no announcement came
_DECK_WAIT = 60.0  # seconds a stale worker waits for a deck another host activated to be built here
_PG_TIMEOUT = 10.0  # seconds one catch-up may wait for PostgreSQL
_SLOW_CATCH_UP = 0.1  # seconds: a catch-up this long is logged


async def seed_balances(client: aioredis.Redis, accounts: Iterable[Account]) -> None:
    """Gives Redis the stored balance of accounts it does not know yet (new accounts, or an empty Redis)."""
    pipe = client.pipeline(transaction=False)
    count = 0
    for account in accounts:
        pipe.hsetnx(account_key(account.tenant, account.account_tag), "balance", account.balance)
        count += 1
        if count % 5000 == 0:
            await pipe.execute()
    await pipe.execute()


class CatalogKeeper:
    def __init__(self, database_url: str, pool: asyncpg.Pool, redis: aioredis.Redis, deck_dir: str) -> None:
        self.database_url = database_url
        self.pool = pool
        self.redis = redis
        self.deck_dir = deck_dir
        self._turns = os.path.join(deck_dir, ".catch-up-turns")  # scheduling.one_at_a_time
        self.current = Catalog()
        self.loaded = asyncio.Event()
        self.last_load_seconds = 0.0
        self._changed = asyncio.Event()
        self._lock = asyncio.Lock()
        self._listener: asyncpg.Connection | None = None
        self.follower = followers.name()
        self.on_reload = lambda catalog, seconds, delay: None
        self._since: float | None = None  # when the catch-up under way began (`busy`)

    def busy(self) -> str:
        """What this keeper is doing now, for a line about a late event loop (serve.watch_loop)."""
        if self._since is None:
            return ""
        return f" (catching up from change {self.current.version} for {time.perf_counter() - self._since:.3f} s)"

    def get(self) -> Catalog:
        return self.current

    async def _seed(self, accounts: Iterable[Account]) -> None:
        try:
            await seed_balances(self.redis, accounts)
        except UNAVAILABLE as exc:
            log.warning("catalog: could not seed balances in Redis (%s); will retry on next load", exc)

    async def load(self) -> Catalog:
        started = time.perf_counter()
        catalog = await load_catalog(self.pool, self.deck_dir)
        await self._seed(catalog.accounts.values())
        self.current = catalog
        self.last_load_seconds = time.perf_counter() - started
        self.loaded.set()
        self.on_reload(catalog, self.last_load_seconds, None)
        log.info("catalog v%d: %d accounts, %d carriers, %d rates loaded in %.2fs", catalog.version,
                 len(catalog.accounts), len(catalog.carriers), catalog.rate_count, self.last_load_seconds)
        return catalog

    async def catch_up(self, target: int = 0) -> Catalog:
        """Applies the changes logged after the current version. Returns the snapshot, whose version may
        stay below `target` only if the log does not hold it (a Redis that outlived its database): the
        caller decides. Waits (bounded) for a deck activated elsewhere to be built on this host."""
        deadline = time.monotonic() + _DECK_WAIT
        if target and self.current.version < target:
            metrics.CATALOG_WAITS.inc()
        while True:
            async with self._lock:
                catalog = self.current
                if target and catalog.version >= target:
                    return catalog
                started = self._since = time.perf_counter()
                try:
                    # bounded: a half-open connection must not hold a request (or the follower) forever
                    async with asyncio.timeout(_PG_TIMEOUT), self.pool.acquire() as connection:
                        with dropped_after(connection, _PG_TIMEOUT):
                            rows = await changes.since(connection, catalog.version)
                            if any(row.kind not in changes.READ_AS_THEY_ARE for row in rows):
                                async with connection.transaction(isolation="repeatable_read", readonly=True):
                                    await changes.lock_rates(connection)  # before the snapshot (migration 012)
                                    # the rows read were committed before it: only later ones are added
                                    rows += await changes.since(connection, rows[-1].seq)
                                    updated = await apply_changes(connection, catalog, rows, self.deck_dir)
                            else:
                                updated = await apply_changes(connection, catalog, rows, self.deck_dir)
                except DeckMissing:
                    if time.monotonic() > deadline:
                        raise
                else:
                    if updated is not catalog:
                        written = {(c.tenant, tag) for c in rows if c.kind == "account" for tag in c.subject}
                        await self._seed(a for key in written if (a := updated.accounts.get(key)) is not None
                                         and catalog.accounts.get(key) is None)
                        self.current = updated
                        delay = max(0.0, time.time() - rows[-1].at.timestamp()) if rows[-1].at else None
                        seconds = time.perf_counter() - started
                        self.on_reload(updated, seconds, delay)
                        if seconds >= _SLOW_CATCH_UP:
                            log.info("catalog: changes %d-%d (%s) applied in %.3f s", rows[0].seq, rows[-1].seq,
                                     ", ".join(sorted({c.kind for c in rows})), seconds)
                    return updated
                finally:
                    self._since = None
            await asyncio.sleep(0.05)  # a deck activated elsewhere is still being built here

    async def seed_account(self, tenant: str, account_tag: str) -> None:
        """The live balance of an account Redis has none for, from PostgreSQL: the balance the outbox
        writer keeps in step with the ledger, or a newer one the outbox still holds (cache.seed_balance);
        never a catalog snapshot, which may be hours old."""
        async with asyncio.timeout(_PG_TIMEOUT), self.pool.acquire() as connection:
            with dropped_after(connection, _PG_TIMEOUT):
                row = await connection.fetchrow(
                    "SELECT balance, balance_version FROM accounts WHERE tenant = $1 AND account_tag = $2",
                    tenant, account_tag)
        await seed_balance(self.redis, tenant, account_tag, row["balance"] if row else 0,
                           row["balance_version"] if row else 0)

    def _announce(self, _connection, _pid, _channel, _payload: str) -> None:
        self._changed.set()

    async def _listen(self) -> asyncpg.Connection:
        listener = await asyncpg.connect(self.database_url, timeout=5)
        await listener.add_listener(CATALOG_CHANNEL, self._announce)
        return listener

    async def start(self) -> None:
        """Listens first, then loads: a change committed in between is not missed."""
        self._listener = await self._listen()
        await self.load()
        await self._report()  # waited for from now on

    async def _report(self) -> None:
        try:
            await followers.report(self.redis, self.follower, self.current.version)
        except UNAVAILABLE as exc:
            log.debug("catalog: could not report change %d applied (%s)", self.current.version, exc)

    async def run(self) -> None:
        """Applies changes when announced, and at least every second (announcements can be lost); after
        each look, notes in Redis the change applied, which writers wait for before they publish theirs."""
        listener = self._listener
        while True:
            try:
                if listener is None or listener.is_closed():
                    listener = await self._listen()
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout=_POLL)
                except asyncio.TimeoutError:
                    pass
                self._changed.clear()
                # Every process of the host follows the same log: they catch up in turns, not all at once
                # beside the requests (a request that needs the change catches up at once, in catch_up).
                async with scheduling.one_at_a_time(self._turns):
                    await self.catch_up()
                await self._report()
            except asyncio.CancelledError:
                if listener is not None and not listener.is_closed():
                    await listener.close()
                try:  # not waited for by the next writer
                    async with asyncio.timeout(0.5):
                        await followers.forget(self.redis, self.follower)
                except (*UNAVAILABLE, asyncio.TimeoutError):
                    pass
                raise
            except Exception as exc:  # noqa: BLE001 - keep following the log whatever happened
                log.warning("catalog: could not follow the change log (%r); retrying", exc)
                if listener is not None and not listener.is_closed():
                    listener.terminate()
                listener = None
                await asyncio.sleep(1.0)

"""Housekeeping: carrying the outbox to PostgreSQL, ending calls whose end never came, building decks,
reconciling with Kamailio (agent/reconcile.py).

With `serve`, one housekeeping process per host does this beside the HTTP workers, so their event loops
only answer requests; the supervisor stops it after the workers, and it writes the whole outbox before
exiting. An app created on its own (tests, embedding) runs the same tasks in its own loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Any, Awaitable, Callable

import cache
from cache import UNAVAILABLE

from . import metrics, reconcile
from .config import Settings
from .store import decks
from .store.database import create_pool
from .store.writer import OutboxWriter
from .transaction import now_ms

log = logging.getLogger(__name__)
EXPIRE_BATCH = 50  # due calls listed at a time (one FCALL each: short scripts keep Redis responsive)


async def expire_calls(call: Callable[..., Awaitable[Any]], settings: Settings) -> None:
    """Releases reservations never begun and ends calls that outlived their units plus the grace period,
    over every slot group's deadlines (one group failing, its master lost, holds back none of the others)."""
    while True:
        await asyncio.sleep(settings.reaper_interval)
        for group in cache.GROUPS:
            try:
                await expire_group(call, settings, group)
            except UNAVAILABLE as exc:
                log.warning("expiry: Redis unavailable for %s (%s)", group.prefix, exc)
            except Exception:  # noqa: BLE001 - the task must outlive any single failure
                log.exception("expiry: unexpected failure")


async def expire_group(call: Callable[..., Awaitable[Any]], settings: Settings, group: cache.Group) -> None:
    """Lists the group's due calls and expires each with its own FCALL (rating_expire), which names the
    parties' keys it must be sent with (every key a function touches is declared): background work, two
    FCALLs per call expired."""
    expired_retention = max(settings.record_retention, settings.max_units + settings.call_grace + 60)
    while True:
        now = now_ms()
        due = await call("ZRANGEBYSCORE", group.deadlines, "-inf", now, "LIMIT", 0, EXPIRE_BATCH)
        replies = await asyncio.gather(*(expire_one(call, group, key, (now, settings.record_retention,
                                                                       expired_retention)) for key in due))
        if len(due) < EXPIRE_BATCH or all(cache.undeclared(reply) for reply in replies):
            return  # (a batch of calls whose parties keep changing: the next round)
        await asyncio.sleep(0)


async def expire_one(call: Callable[..., Awaitable[Any]], group: cache.Group, key: str, args: tuple) -> list:
    keys = (*cache.expiry_keys(group), key)
    reply = await call(*cache.fcall("rating_expire", keys, args))
    for _ in range(3):  # again only when the call changed between the two (authorized afresh, other parties)
        wanted = cache.undeclared(reply)
        if wanted is None:
            break
        reply = await call(*cache.fcall("rating_expire", keys + wanted, args))
    return reply


async def keep_library(redis, interval: float = 60.0) -> None:
    """Says which library version this host's agent uses, and deletes the versions no agent has used for an
    hour (cache.sweep_libraries): a rolling upgrade leaves no old functions behind."""
    while True:
        try:
            deleted = await cache.sweep_libraries(redis)
            if deleted:
                log.info("Redis function libraries no agent uses any more, deleted: %s", ", ".join(deleted))
        except UNAVAILABLE as exc:
            log.warning("library sweep: Redis unavailable (%s)", exc)
        except Exception:  # noqa: BLE001 - the task must outlive any single failure
            log.exception("library sweep: unexpected failure")
        await asyncio.sleep(interval)


def outbox_writer(settings: Settings, pool_factory) -> tuple[OutboxWriter, Any]:
    """A writer with its own Redis client: a blocking stream read must not trip the hot path's timeout."""
    client = cache.connect(settings.redis_url, timeout=5.0)
    writer = OutboxWriter(client, pool_factory, settings.outbox_batch, on_written=metrics.OUTBOX_WRITTEN.inc,
                          claim_idle=settings.outbox_claim_idle, on_dead=metrics.OUTBOX_DEAD.inc,
                          timeout=settings.database_timeout, linger=settings.outbox_linger,
                          replicas=settings.redis_replicas)
    return writer, client


async def final_drain(writer: OutboxWriter, timeout: float) -> None:
    """A last pass so a clean shutdown leaves nothing of this process pending."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.drain_once(), timeout=timeout)


async def _follow_decks(settings: Settings, pool_factory, redis) -> None:
    from .app import until_ready

    await decks.follow(settings, await until_ready("PostgreSQL", pool_factory), redis)


async def housekeep(settings: Settings, stop: asyncio.Event) -> None:
    from .app import until_ready

    pool = None

    async def pool_factory():
        nonlocal pool
        if pool is None:
            pool = await create_pool(settings.database_url, max_size=2)
        return pool

    redis = cache.connect(settings.redis_url, max(settings.redis_timeout, 2.0))
    await until_ready("Redis", lambda: cache.load_library(redis))
    writer, writer_client = outbox_writer(settings, pool_factory)
    # on a cluster, the expiry's 16 FCALLs a round go the hot path's way (its own slot map): redis-py's cluster
    # client asks a node for the keys of every FCALL first (COMMAND GETKEYS)
    expiry = cache.AutoPipeline(settings.redis_url, redis, max(settings.redis_timeout, 2.0)) \
        if cache.is_cluster(redis) else None
    tasks = [
        asyncio.create_task(writer.run(), name="outbox-writer"),
        asyncio.create_task(expire_calls(expiry.call if expiry else redis.execute_command, settings),
                            name="call-expiry"),
        asyncio.create_task(_follow_decks(settings, pool_factory, redis), name="deck-builder"),
        asyncio.create_task(keep_library(redis), name="library-sweep"),
    ]
    if reconcile.enabled(settings):  # --kamailio-rpc: end the calls no Kamailio has any more
        tasks.append(asyncio.create_task(reconcile.reconcile(settings, redis), name="kamailio-reconcile"))
    await stop.wait()
    for task in tasks:
        while not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=1.0)
    await final_drain(writer, timeout=15)
    if expiry is not None:
        await expiry.close()
    await writer_client.aclose()
    await redis.aclose()
    if pool is not None:
        await pool.close()


def run_housekeeper(settings: Settings) -> None:
    """Process entry point: runs until SIGTERM or SIGINT, then writes what is left of the outbox."""
    import uvloop

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await housekeep(settings, stop)

    uvloop.run(main())

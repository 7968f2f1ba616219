"""The application factory: every resource and background task is a cleanup context of the app."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from enum import Enum
from typing import AsyncIterator

from aiohttp import web

import cache
from cache import UNAVAILABLE, AutoPipeline

from .catalog_keeper import CatalogKeeper
from .config import Settings
from .graphql.security import refuse_unsafe_exposure
from .http import forward, health, rest
from .http.responses import add_unrouted
from . import metrics
from .keys import (BUILDS_DECKS, CALLS_ONLY, CATALOG, DATABASE, LIVE_STATE, PIPELINE, REDIS, SETTINGS, TRANSACTIONS,
                   WRITER)
from .store import decks
from .store.database import create_pool, migrate
from .store.records import stored_call
from .housekeeping import expire_calls, final_drain, outbox_writer
from .transaction import Transactions

log = logging.getLogger(__name__)


async def until_ready(what: str, attempt, pause: float = 1.0):
    """Retries `attempt` until it succeeds: a service started before its databases waits for them."""
    while True:
        try:
            return await attempt()
        except (OSError, *UNAVAILABLE) as exc:
            log.warning("waiting for %s: %s", what, exc)
        except Exception as exc:  # asyncpg raises several unrelated types while PostgreSQL starts
            if "asyncpg" not in type(exc).__module__:
                raise
            log.warning("waiting for %s: %s", what, exc)
        await asyncio.sleep(pause)


@contextlib.asynccontextmanager
async def _background(name: str, coroutine) -> AsyncIterator[None]:
    task = asyncio.create_task(coroutine, name=name)
    try:
        yield
    finally:
        # Client libraries may swallow one cancellation mid-I/O; insist until the task is gone.
        while not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=1.0)
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _observe_reload(catalog, seconds: float, delay: float | None) -> None:
    metrics.CATALOG_RELOADS.inc()
    metrics.CATALOG_LOAD_SECONDS.set(seconds)
    metrics.RATE_TABLE_SIZE.set(catalog.rate_count)
    metrics.CATALOG_VERSION.set(catalog.version)
    metrics.ACCOUNTS.set(len(catalog.accounts))
    if delay is not None:
        metrics.CATALOG_DELAY.set(delay)


async def metrics_ctx(app: web.Application) -> AsyncIterator[None]:
    async with _background("metrics-flush", metrics.flush_periodically()):
        yield


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    client = cache.connect(settings.redis_url, settings.redis_timeout)
    await until_ready("Redis", lambda: cache.load_library(client))
    app[REDIS] = client
    app[PIPELINE] = AutoPipeline(settings.redis_url, client, settings.redis_timeout,
                                  on_batch=metrics.ENDPOINTS.redis_batch_done, batch=settings.redis_batch,
                                  replicas=settings.redis_replicas)
    app[LIVE_STATE] = metrics.LiveState(client)
    yield
    await app[PIPELINE].close()
    await client.aclose()


async def database_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    pool = await until_ready("PostgreSQL", lambda: create_pool(settings.database_url, stateless=app[CALLS_ONLY]))
    if app[BUILDS_DECKS]:  # served on its own; under the supervisor, serve.prepare migrated before any child
        async with pool.acquire() as connection:
            await migrate(connection)
    app[DATABASE] = pool
    yield
    await pool.close()


async def catalog_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    if app[BUILDS_DECKS]:  # served on its own (tests, embedding): no supervisor built the decks first
        await decks.ensure(app[DATABASE], settings.decks)
    keeper = CatalogKeeper(settings.database_url, app[DATABASE], app[REDIS], settings.decks)
    keeper.on_reload = _observe_reload
    await until_ready("the catalog", keeper.start)
    app[CATALOG] = keeper
    app[TRANSACTIONS] = Transactions(settings, app[PIPELINE], keeper.get, keeper.catch_up, keeper.seed_account,
                                     functools.partial(stored_call, app[DATABASE]))
    async with _background("catalog-listener", keeper.run()):
        yield


async def housekeeping_ctx(app: web.Application) -> AsyncIterator[None]:
    """The outbox writer, call expiry and deck builder, in this process (when no housekeeper runs them)."""
    pool = app[DATABASE]

    async def current_pool():
        return pool

    writer, client = outbox_writer(app[SETTINGS], current_pool)
    app[WRITER] = writer
    async with _background("outbox-writer", writer.run()):
        async with _background("call-expiry", expire_calls(app[PIPELINE].call, app[SETTINGS])):
            async with _background("deck-builder", decks.follow(app[SETTINGS], pool, app[REDIS])):
                yield
    await final_drain(writer, timeout=5)
    await client.aclose()


class Role(str, Enum):
    """What one process of the service does (agent/serve.py starts one manager and N workers)."""

    ALONE = "alone"  # everything in one process: tests, embedding
    WORKER = "worker"  # the call endpoints; management passed through to the manager
    MANAGER = "manager"  # GraphQL and deck uploads, off the loops that answer Kamailio


def create_app(settings: Settings, role: Role = Role.ALONE, manager_socket: str = "") -> web.Application:
    """The service in one of its roles; a worker reaches the manager on the Unix socket `manager_socket`."""
    app = web.Application()
    app[SETTINGS] = settings
    app[BUILDS_DECKS] = role is Role.ALONE
    app[CALLS_ONLY] = role is Role.WORKER
    app.add_routes(rest.routes)
    app.add_routes(health.routes)
    if role is Role.WORKER:
        forward.setup(app, manager_socket)
        app.on_startup.insert(0, refuse_unsafe_exposure)
    else:
        from . import graphql  # the schema is built here only: workers never import it

        graphql.setup(app)
    add_unrouted(app)
    app.cleanup_ctx.extend([metrics_ctx, redis_ctx, database_ctx, catalog_ctx])
    if role is Role.ALONE:
        app.cleanup_ctx.append(housekeeping_ctx)
    return app

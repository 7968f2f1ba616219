"""Typed application state (aiohttp `AppKey`s) shared by the modules of the service."""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncpg
import redis.asyncio as aioredis
from aiohttp import web

from cache import AutoPipeline

from .config import Settings

if TYPE_CHECKING:
    from .catalog_keeper import CatalogKeeper
    from .store.writer import OutboxWriter
    from .transaction import Transactions

SETTINGS = web.AppKey("settings", Settings)
BUILDS_DECKS = web.AppKey("builds_decks", bool)  # served on its own: builds missing decks at start
CALLS_ONLY = web.AppKey("calls_only", bool)  # a worker: the call endpoints and probes, nothing else
REDIS = web.AppKey("redis", aioredis.Redis)
PIPELINE = web.AppKey("pipeline", AutoPipeline)
DATABASE = web.AppKey("database", asyncpg.Pool)
CATALOG = web.AppKey("catalog", "CatalogKeeper")
TRANSACTIONS = web.AppKey("transactions", "Transactions")
WRITER = web.AppKey("writer", "OutboxWriter")
LIVE_STATE = web.AppKey("live_state", "LiveState")

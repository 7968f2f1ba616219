"""Redis: the live state of balances and calls, changed only through the `rating` function library.

Every HTTP request costs one FCALL. Calls made by concurrent requests are sent together, a few per write
(auto-pipelining), which roughly doubles throughput over one round trip each.
"""

from __future__ import annotations

import asyncio
from importlib.resources import files
from typing import Any, Iterable, Sequence

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .connection import PipelinedConnection

LIBRARY = files(__package__).joinpath("rating.lua").read_text()
DEADLINES = "rating:deadlines"
OUTBOX = "rating:outbox"
OUTBOX_GROUP = "pg-writer"
CATALOG = "rating:catalog"
BROKEN_CALLS = "rating:calls:broken"  # calls the expiry could not finish (cache/rating.lua, expire)

UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError, asyncio.TimeoutError)


def account_key(tenant: str, account_tag: str) -> str:
    """Length-prefixed so that no tenant/tag pair can collide with another."""
    return f"rating:a:{len(tenant)}:{tenant}:{account_tag}"


def open_calls_key(tenant: str, account_tag: str, inbound: bool) -> str:
    """The set of call keys an account holds open (authorized or running) in one direction: the sizes of
    the two sets are the counts its concurrency limits apply to."""
    return f"rating:{'oi' if inbound else 'oo'}:{len(tenant)}:{tenant}:{account_tag}"


def open_calls_keys(tenant: str, account_tag: str) -> tuple[str, str]:
    """Both open-call sets of an account: (inbound, outbound)."""
    return open_calls_key(tenant, account_tag, True), open_calls_key(tenant, account_tag, False)


def call_key(tenant: str, transaction_tag: str) -> str:
    return f"rating:c:{len(tenant)}:{tenant}:{transaction_tag}"


def connect(url: str, timeout: float) -> aioredis.Redis:
    """A client that fails fast (no hidden retries) so the agent can answer 503 at once."""
    return aioredis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
        max_connections=64,
    )


async def load_library(client: aioredis.Redis) -> None:
    await client.execute_command("FUNCTION", "LOAD", "REPLACE", LIBRARY)


class AutoPipeline:
    """The hot path's client: commands of one event-loop tick go to Redis in one write (see connection.py)."""

    def __init__(self, url: str, client: aioredis.Redis, timeout: float, on_batch=None, batch: int = 12) -> None:
        self.client = client  # redis-py, for loading the library
        self.connection = PipelinedConnection(url, timeout, on_batch, batch)

    async def call(self, *command: Any) -> Any:
        """Runs one command; reloads the library once if Redis lost it, retries once if the link broke."""
        for attempt in (1, 2):
            try:
                return await self.connection.call(*command)
            except ResponseError as exc:
                if "Function not found" not in str(exc) or attempt == 2:
                    raise
                await load_library(self.client)
            except UNAVAILABLE:
                # Every script is idempotent: a retry after a lost reply answers as the first run did.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def close(self) -> None:
        await self.connection.close()


def fcall(function: str, keys: Sequence[str], args: Sequence[Any]) -> tuple:
    return ("FCALL", function, len(keys), *keys, *args)


def stream_id(version: int) -> str:
    """An outbox entry id from its version as PostgreSQL keeps it (agent/store/records.stream_version)."""
    return f"{version // 1_000_000}-{version % 1_000_000}"


async def seed_balance(client: aioredis.Redis, tenant: str, account_tag: str, balance: int, version: int) -> int:
    """Gives Redis the live balance of an account it has none for: PostgreSQL's `balance` (which includes the
    ledger up to outbox version `version`), or the newer one the outbox still holds. Returns the live one."""
    return int(await client.execute_command(*fcall(
        "rating_seed", (account_key(tenant, account_tag), OUTBOX), (tenant, account_tag, balance, stream_id(version)),
    )))


async def move_balance(
    client: aioredis.Redis, tenant: str, account_tag: str, mode: str, amount: int, at_ms: int, reference: str = ""
) -> int:
    """Sets (`mode="set"`) or adds to (`mode="add"`) a live balance and logs the move; returns the new balance.

    Not retried: unlike the call functions, adding twice would move the balance twice.
    """
    if mode not in ("set", "add"):
        raise ValueError("mode must be 'set' or 'add'")
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise ValueError("amount must be an integer")
    reply = await client.execute_command(*fcall(
        "rating_balance", (account_key(tenant, account_tag), OUTBOX),
        (tenant, account_tag, mode, amount, at_ms, reference),
    ))
    return int(reply)


async def publish_catalog(client: aioredis.Redis, version: int,
                          accounts: Iterable[tuple[str, str]] | None = None) -> int:
    """Makes catalog change `version` (committed) the one every authorization must be planned on; for a
    change of `accounts` (tenant, tag) alone, only the calls of those accounts."""
    keys = (CATALOG, *(account_key(tenant, tag) for tenant, tag in accounts or ()))
    return int(await client.execute_command(*fcall("rating_publish", keys, (version,))))

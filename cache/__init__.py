"""Redis: the live state of balances and calls, changed only through the `rating` function library.

Every HTTP request costs one FCALL. Calls made by concurrent requests during one event-loop tick are sent
together as one pipeline (auto-pipelining), which roughly doubles throughput over one round trip each.
"""

from __future__ import annotations

import asyncio
import time
from importlib.resources import files
from typing import Any, Sequence

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

LIBRARY = files(__package__).joinpath("rating.lua").read_text()
DEADLINES = "rating:deadlines"
OUTBOX = "rating:outbox"
OUTBOX_GROUP = "pg-writer"

UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError, asyncio.TimeoutError)


def account_key(tenant: str, account_tag: str) -> str:
    """Length-prefixed so that no tenant/tag pair can collide with another."""
    return f"rating:a:{len(tenant)}:{tenant}:{account_tag}"


def open_calls_key(tenant: str, account_tag: str) -> str:
    """The set of call keys an account holds open (authorized or running)."""
    return f"rating:o:{len(tenant)}:{tenant}:{account_tag}"


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
    """Sends the commands issued during one event-loop tick as one pipeline, without a transaction."""

    def __init__(self, client: aioredis.Redis, timeout: float, on_batch=None) -> None:
        self.client = client
        self.timeout = timeout
        self.on_batch = on_batch  # called with (seconds, commands) after each batch
        self._pending: list[tuple[tuple, asyncio.Future]] = []
        self._tasks: set[asyncio.Task] = set()

    def submit(self, *command: Any) -> asyncio.Future:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((command, future))
        return future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.ensure_future(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[tuple, asyncio.Future]]) -> None:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                pipe = self.client.pipeline(transaction=False)
                for command, _ in batch:
                    pipe.execute_command(*command)
                results = await pipe.execute(raise_on_error=False)
        except BaseException as exc:  # noqa: BLE001 - every waiter must learn the failure
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc if isinstance(exc, Exception) else RedisConnectionError(str(exc)))
            if not isinstance(exc, Exception):
                raise
            return
        if self.on_batch is not None:
            self.on_batch(time.perf_counter() - started, len(batch))
        for (_, future), result in zip(batch, results):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def call(self, *command: Any) -> Any:
        """Runs one command in the next batch; reloads the library once if Redis lost it."""
        for attempt in (1, 2):
            try:
                return await self.submit(*command)
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
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def fcall(function: str, keys: Sequence[str], args: Sequence[Any]) -> tuple:
    return ("FCALL", function, len(keys), *keys, *args)


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

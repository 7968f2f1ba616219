"""Redis: the live state of balances and calls, changed only through the `rating` function library.

Every HTTP request costs one FCALL. Calls made by concurrent requests are sent together, a few per write
(auto-pipelining), which roughly doubles throughput over one round trip each.

The library is loaded under a name that carries its version (the hash of rating.lua): `rating_<version>`,
its functions `rating_<version>_authorize` and so on (`fcall` takes the plain names). So agents of two
releases rate side by side against one Redis during a rolling upgrade, each through its own functions over
the same keys (a new library must read what the previous one wrote). Every agent notes the library it uses
in `rating:libraries` (name -> when last seen) when it loads it and from its housekeeper every minute; a
library no agent has noted for `LIBRARY_IDLE` is deleted.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from importlib.resources import files
from typing import Any, Iterable, Sequence

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import sentinel
from .connection import PipelinedConnection

_SOURCE = files(__package__).joinpath("rating.lua").read_text()
VERSION = hashlib.sha1(_SOURCE.encode()).hexdigest()[:12]
LIBRARY_NAME = f"rating_{VERSION}"
LIBRARIES = "rating:libraries"  # library name -> ms when an agent last said it uses it
LIBRARY_IDLE = 3600.0  # seconds without an agent noting a library before it is deleted
_REGISTERED = re.compile(r"(redis\.register_function\W+(?:function_name\s*=\s*)?')rating_(\w+)'")
FUNCTIONS = {f"rating_{name}": f"{LIBRARY_NAME}_{name}" for _, name in _REGISTERED.findall(_SOURCE)}
LIBRARY = _REGISTERED.sub(lambda m: f"{m.group(1)}{LIBRARY_NAME}_{m.group(2)}'",
                          _SOURCE.replace("#!lua name=rating\n", f"#!lua name={LIBRARY_NAME}\n", 1))
if not LIBRARY.startswith(f"#!lua name={LIBRARY_NAME}\n") or len(FUNCTIONS) != LIBRARY.count("register_function"):
    raise RuntimeError("cache/rating.lua: its name line or a function registration is not as expected")
_OURS = re.compile(r"rating(_[0-9a-f]{12})?")  # this library's names, of any version (and before versions)
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
    """A client that fails fast (no hidden retries) so the agent can answer 503 at once; of the master
    Sentinel names for a redis+sentinel:// URL (cache/sentinel.py)."""
    if sentinel.is_sentinel(url):
        return sentinel.connect(url, timeout, decode_responses=True, max_connections=64)
    return aioredis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
        max_connections=64,
    )


async def load_library(client: aioredis.Redis) -> None:
    """Loads this version of the library (noted in use first, so no sweep removes it meanwhile)."""
    await note_library(client)
    await client.execute_command("FUNCTION", "LOAD", "REPLACE", LIBRARY)


async def note_library(client: aioredis.Redis) -> None:
    await client.hset(LIBRARIES, LIBRARY_NAME, int(time.time() * 1000))


async def sweep_libraries(client: aioredis.Redis, idle: float = LIBRARY_IDLE) -> list[str]:
    """Notes this agent's library in use and deletes the versions no agent has noted for `idle` seconds
    (and the unversioned one of before); returns the names deleted."""
    await note_library(client)
    now = time.time() * 1000
    seen = {name: int(ms) for name, ms in (await client.hgetall(LIBRARIES)).items()}
    deleted = []
    for entry in await client.execute_command("FUNCTION", "LIST", "LIBRARYNAME", "rating*"):
        fields = dict(zip(entry[::2], entry[1::2])) if isinstance(entry, list) else entry
        name = fields.get("library_name")
        if name is None or name == LIBRARY_NAME or not _OURS.fullmatch(name):
            continue
        if now - seen.get(name, 0) > idle * 1000:
            try:
                await client.execute_command("FUNCTION", "DELETE", name)
            except ResponseError:  # deleted by another agent meanwhile
                pass
            await client.hdel(LIBRARIES, name)
            deleted.append(name)
    return deleted


class AutoPipeline:
    """The hot path's client: commands of one event-loop tick go to Redis in one write (see connection.py)."""

    def __init__(self, url: str, client: aioredis.Redis, timeout: float, on_batch=None, batch: int = 12,
                 replicas: int = 0) -> None:
        self.client = client  # redis-py, for loading the library
        self.connection = PipelinedConnection(url, timeout, on_batch, batch, replicas)

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
    """The FCALL of one of the library's functions, by its plain name (`rating_authorize`)."""
    return ("FCALL", FUNCTIONS[function], len(keys), *keys, *args)


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


async def published_for(call, tenant: str, account_tag: str | None) -> int:
    """The newest catalog change a call of `account_tag` must be planned on: the catalog key's, or the
    account's own (`cv`) when newer, as the library's `stale` compares them. `call` runs one command (the
    hot path's AutoPipeline.call or a client's execute_command); both reads go out together."""
    catalog = call("GET", CATALOG)
    if not account_tag:
        return int(await catalog or 0)
    account = call("HGET", account_key(tenant, account_tag), "cv")
    return max(int(found or 0) for found in await asyncio.gather(catalog, account))


async def publish_catalog(client: aioredis.Redis, version: int,
                          accounts: Iterable[tuple[str, str]] | None = None) -> int:
    """Makes catalog change `version` (committed) the one every authorization must be planned on; for a
    change of `accounts` (tenant, tag) alone, only the calls of those accounts."""
    keys = (CATALOG, *(account_key(tenant, tag) for tenant, tag in accounts or ()))
    return int(await client.execute_command(*fcall("rating_publish", keys, (version,))))

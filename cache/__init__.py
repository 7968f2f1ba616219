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
import zlib
from importlib.resources import files
from typing import Any, Iterable, NamedTuple, Sequence

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from . import cluster, sentinel
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
OUTBOX_GROUP = "pg-writer"
SLOT_GROUPS = 16  # fixed: a tenant's keys never move between groups (see group_of)


class Group(NamedTuple):
    """The keys that exist once per slot group: each carries the group's hash tag, so one Redis Cluster slot
    holds them and every key of the group's tenants (README "Scaling out")."""

    index: int
    prefix: str  # rating:{g<index>}: - every key of the group starts with it
    deadlines: str  # ZSET call key -> when the agent must expire or end the call by itself (ms)
    outbox: str  # STREAM what PostgreSQL must learn (agent/store/writer.py)
    catalog: str  # STRING the newest catalog change published, a copy per group (publish_catalog)
    stats: str  # HASH totals for metrics (summed over the groups: agent/metrics.py)
    broken: str  # SET call keys the expiry failed to finish
    dead: str  # STREAM outbox entries PostgreSQL refused (agent/store/writer.py dead letters)
    # STRING the newest outbox entry a writer read and asked the master's replicas for (agent/store/writer.py
    # replicated: a write after the read, so a WAIT behind it covers every entry read)
    read: str


def _group(index: int) -> Group:
    prefix = f"rating:{{g{index}}}:"
    return Group(index, prefix, f"{prefix}deadlines", f"{prefix}outbox", f"{prefix}catalog", f"{prefix}stats",
                 f"{prefix}calls:broken", f"{prefix}outbox:dead", f"{prefix}outbox:read")


GROUPS = tuple(_group(index) for index in range(SLOT_GROUPS))
_TENANTS: dict[str, Group] = {}  # tenant -> its group, computed once per tenant (the hot path asks per call)

UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError, asyncio.TimeoutError)


def group_of(tenant: str) -> Group:
    """A tenant's slot group: CRC-32 of its name modulo SLOT_GROUPS. Every party of a call is of the call's
    tenant, so one FCALL touches one group's keys only."""
    found = _TENANTS.get(tenant)
    if found is None:
        if len(_TENANTS) >= 100_000:
            _TENANTS.clear()
        found = _TENANTS[tenant] = GROUPS[zlib.crc32(tenant.encode()) % SLOT_GROUPS]
    return found


def account_key(tenant: str, account_tag: str) -> str:
    """Length-prefixed so that no tenant/tag pair can collide with another."""
    return f"{group_of(tenant).prefix}a:{len(tenant)}:{tenant}:{account_tag}"


def open_calls_key(tenant: str, account_tag: str, inbound: bool) -> str:
    """The set of call keys an account holds open (authorized or running) in one direction: the sizes of
    the two sets are the counts its concurrency limits apply to."""
    return f"{group_of(tenant).prefix}{'oi' if inbound else 'oo'}:{len(tenant)}:{tenant}:{account_tag}"


def open_calls_keys(tenant: str, account_tag: str) -> tuple[str, str]:
    """Both open-call sets of an account: (inbound, outbound)."""
    return open_calls_key(tenant, account_tag, True), open_calls_key(tenant, account_tag, False)


def call_key(tenant: str, transaction_tag: str) -> str:
    return f"{group_of(tenant).prefix}c:{len(tenant)}:{tenant}:{transaction_tag}"


def call_keys(tenant: str, transaction_tag: str) -> tuple[str, str, str, str, str]:
    """KEYS of rating_authorize, rating_finish, rating_rollback and rating_record: the call, then its group's
    deadlines, outbox, catalog and stats (cache/rating.lua)."""
    group = group_of(tenant)
    return (f"{group.prefix}c:{len(tenant)}:{tenant}:{transaction_tag}", group.deadlines, group.outbox,
            group.catalog, group.stats)


def expiry_keys(group: Group) -> tuple[str, str, str, str]:
    """The first KEYS of rating_expire for one group (the call's and its parties' follow)."""
    return group.deadlines, group.outbox, group.stats, group.broken


def party_keys(parties: Iterable[dict]) -> tuple[str, ...]:
    """The keys the library touches for these parties (as they travel, cache/call.py PARTY_KEYS): each one's
    account and open-call set, and the other direction's set it counts under a total limit. They follow
    call_keys in the KEYS of every call function."""
    found: list[str] = []
    for party in parties:
        found += [key for key in (party.get("k"), party.get("o"), party.get("ox")) if key]
    return tuple(dict.fromkeys(found))


REDECLARE = "keys"  # a call function's answer when its call's parties' keys were not all declared


def undeclared(reply: list) -> tuple[str, ...] | None:
    """The keys a call function asked for (answer `keys`: nothing was done), or None for any other answer.
    The caller sends the same call again with them after its group's keys (and the refused account's)."""
    return tuple(reply[6:]) if reply[1] == REDECLARE else None


def connect(url: str, timeout: float) -> aioredis.Redis:
    """A client that fails fast (no hidden retries) so the agent can answer 503 at once; of the master
    Sentinel names for a redis+sentinel:// URL (cache/sentinel.py); of a Redis Cluster for a
    redis+cluster:// URL (cache/cluster.py: redis-py's RedisCluster, which has the same commands)."""
    if cluster.is_cluster(url):
        return cluster.connect(url, timeout, decode_responses=True, max_connections=64)
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


def is_cluster(client) -> bool:
    """Whether `client` (cache.connect's) is of a Redis Cluster: its commands may touch one slot each."""
    return isinstance(client, aioredis.RedisCluster)


async def load_library(client: aioredis.Redis) -> None:
    """Loads this version of the library (noted in use first, so no sweep removes it meanwhile); on a cluster,
    on every master (redis-py sends FUNCTION LOAD to all of them; replicas get it from their master)."""
    await note_library(client)
    await client.function_load(LIBRARY, replace=True)


async def note_library(client: aioredis.Redis) -> None:
    await client.hset(LIBRARIES, LIBRARY_NAME, int(time.time() * 1000))


async def sweep_libraries(client: aioredis.Redis, idle: float = LIBRARY_IDLE) -> list[str]:
    """Notes this agent's library in use and deletes the versions no agent has noted for `idle` seconds
    (and the unversioned one of before); returns the names deleted."""
    await note_library(client)
    now = time.time() * 1000
    seen = {name: int(ms) for name, ms in (await client.hgetall(LIBRARIES)).items()}
    deleted = []
    listed = await client.function_list("rating*")
    if isinstance(listed, dict):  # a cluster's: per master
        listed = [entry for entries in listed.values() for entry in entries]
    names = set()
    for entry in listed:
        fields = dict(zip(entry[::2], entry[1::2])) if isinstance(entry, list) else entry
        names.add(fields.get("library_name"))
    for name in sorted(filter(None, names)):
        if name == LIBRARY_NAME or not _OURS.fullmatch(name):
            continue
        if now - seen.get(name, 0) > idle * 1000:
            try:
                await client.function_delete(name)
            except ResponseError:  # deleted by another agent meanwhile (on a cluster: or not on every master)
                pass
            await client.hdel(LIBRARIES, name)
            deleted.append(name)
    return deleted


class AutoPipeline:
    """The hot path's client: commands of one event-loop tick go to Redis in one write (see connection.py);
    over a Redis Cluster, one such connection per master (cluster.ClusterConnection)."""

    def __init__(self, url: str, client: aioredis.Redis, timeout: float, on_batch=None, batch: int = 12,
                 replicas: int = 0) -> None:
        self.client = client  # redis-py, for loading the library
        self.cluster = cluster.ClusterConnection(url, timeout, on_batch, batch, replicas) \
            if cluster.is_cluster(url) else None
        self.connection = self.cluster or PipelinedConnection(url, timeout, on_batch, batch, replicas)

    async def call(self, *command: Any) -> Any:
        """Runs one command; reloads the library once if Redis lost it, retries once if the link broke;
        follows a cluster's redirections."""
        for attempt in (1, 2):
            try:
                try:
                    return await self.connection.call(*command)
                except ResponseError as exc:
                    if self.cluster is None or not str(exc).startswith(_REDIRECTED):
                        raise
                    return await self.cluster.redirected(exc, command)
            except ResponseError as exc:
                if "Function not found" not in str(exc) or attempt == 2:
                    raise
                await load_library(self.client)
            except UNAVAILABLE:
                # Every script is idempotent: a retry after a lost reply answers as the first run did.
                if self.cluster is not None:
                    self.cluster.lost()  # a master lost: its replica may be promoted meanwhile
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def close(self) -> None:
        await self.connection.close()


_REDIRECTED = ("MOVED ", "ASK ", "CLUSTERDOWN", "TRYAGAIN")  # a cluster's answers about where a slot is served


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
        "rating_seed", (account_key(tenant, account_tag), group_of(tenant).outbox), (tenant, account_tag, balance, stream_id(version)),
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
        "rating_balance", (account_key(tenant, account_tag), group_of(tenant).outbox),
        (tenant, account_tag, mode, amount, at_ms, reference),
    ))
    return int(reply)


async def published_for(call, tenant: str, account_tag: str | None) -> int:
    """The newest catalog change a call of `account_tag` must be planned on: the catalog key's (the copy of
    the tenant's group), or the account's own (`cv`) when newer, as the library's `stale` compares them.
    `call` runs one command (the hot path's AutoPipeline.call or a client's execute_command); both reads go
    out together."""
    catalog = call("GET", group_of(tenant).catalog)
    if not account_tag:
        return int(await catalog or 0)
    account = call("HGET", account_key(tenant, account_tag), "cv")
    return max(int(found or 0) for found in await asyncio.gather(catalog, account))


async def publish_catalog(client: aioredis.Redis, version: int,
                          accounts: Iterable[tuple[str, str]] | None = None) -> int:
    """Makes catalog change `version` (committed) the one every authorization must be planned on; for a
    change of `accounts` (tenant, tag) alone, only the calls of those accounts.

    A catalog change is written to every group's copy of the catalog key (one FCALL per group: a Redis
    Cluster spreads them over its masters), all of them before this returns, so the very next authorization
    of any tenant sees it. Returns the lowest catalog version of the groups written."""
    grouped: dict[int, list[str]] = {}
    for tenant, tag in accounts or ():
        grouped.setdefault(group_of(tenant).index, []).append(account_key(tenant, tag))
    if grouped:
        keys = [(GROUPS[index].catalog, *found) for index, found in sorted(grouped.items())]
    else:  # no accounts named: a change of the whole catalog
        keys = [(group.catalog,) for group in GROUPS]
    replies = await asyncio.gather(*(client.execute_command(*fcall("rating_publish", group, (version,)))
                                     for group in keys))
    return min(int(reply) for reply in replies)

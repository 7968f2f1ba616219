"""Reading the agent's live state from tests: balances and call records.

Thin synchronous wrappers over the agent's own read path, so tests assert on what the API shows.
"""

from __future__ import annotations

import asyncio

import asyncpg
import redis

import cache
from agent.store.records import read_records
from cache import account_key, open_calls_keys


def client(redis_url: str) -> redis.Redis:
    """A synchronous client of `redis_url`: one server, or a Redis Cluster (redis+cluster://, cache/cluster.py)."""
    if cache.cluster.is_cluster(redis_url):
        from redis.cluster import ClusterNode, RedisCluster

        nodes = cache.cluster.parse(redis_url).nodes
        return RedisCluster(startup_nodes=[ClusterNode(host, port) for host, port in nodes], decode_responses=True)
    return redis.Redis.from_url(redis_url, decode_responses=True)


def _hash_int(redis_url: str, account_tag: str, tenant: str, field: str) -> int:
    connection = client(redis_url)
    try:
        return int(connection.hget(account_key(tenant, account_tag), field) or 0)
    finally:
        connection.close()


def balance(redis_url: str, account_tag: str, tenant: str = "default") -> int:
    """The live balance of an account."""
    return _hash_int(redis_url, account_tag, tenant, "balance")


def reserved(redis_url: str, account_tag: str, tenant: str = "default") -> int:
    """What the account's open calls hold of its balance."""
    return _hash_int(redis_url, account_tag, tenant, "reserved")


def open_calls(redis_url: str, account_tag: str, tenant: str = "default") -> int:
    """How many calls of the account are authorized or running."""
    connection = client(redis_url)
    try:
        return sum(connection.scard(key) for key in open_calls_keys(tenant, account_tag))
    finally:
        connection.close()


async def call_record_async(
    redis_url: str, database_url: str, transaction_tag: str, account_tag: str, tenant: str = "default"
) -> dict | None:
    connection = cache.connect(redis_url, 5.0)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        for record in await read_records(connection, pool, tenant, transaction_tag):
            if record["account_tag"] == account_tag:
                return record
        return None
    finally:
        await pool.close()
        await connection.aclose()


def call_record(
    redis_url: str, database_url: str, transaction_tag: str, account_tag: str, tenant: str = "default"
) -> dict | None:
    """The call record (Canyan's Transaction fields) of one account in one call, or None."""
    return asyncio.run(call_record_async(redis_url, database_url, transaction_tag, account_tag, tenant))

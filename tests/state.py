"""Reading the agent's live state from tests: balances and call records.

Thin synchronous wrappers over the agent's own read path, so tests assert on what the API shows.
"""

from __future__ import annotations

import asyncio

import asyncpg
import redis
import redis.asyncio as aioredis

from agent.store.records import read_records
from cache import account_key, open_calls_keys


def _hash_int(redis_url: str, account_tag: str, tenant: str, field: str) -> int:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return int(client.hget(account_key(tenant, account_tag), field) or 0)
    finally:
        client.close()


def balance(redis_url: str, account_tag: str, tenant: str = "default") -> int:
    """The live balance of an account."""
    return _hash_int(redis_url, account_tag, tenant, "balance")


def reserved(redis_url: str, account_tag: str, tenant: str = "default") -> int:
    """What the account's open calls hold of its balance."""
    return _hash_int(redis_url, account_tag, tenant, "reserved")


def open_calls(redis_url: str, account_tag: str, tenant: str = "default") -> int:
    """How many calls of the account are authorized or running."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return sum(client.scard(key) for key in open_calls_keys(tenant, account_tag))
    finally:
        client.close()


async def call_record_async(
    redis_url: str, database_url: str, transaction_tag: str, account_tag: str, tenant: str = "default"
) -> dict | None:
    client = aioredis.from_url(redis_url, decode_responses=True)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1)
    try:
        for record in await read_records(client, pool, tenant, transaction_tag):
            if record["account_tag"] == account_tag:
                return record
        return None
    finally:
        await pool.close()
        await client.aclose()


def call_record(
    redis_url: str, database_url: str, transaction_tag: str, account_tag: str, tenant: str = "default"
) -> dict | None:
    """The call record (Canyan's Transaction fields) of one account in one call, or None."""
    return asyncio.run(call_record_async(redis_url, database_url, transaction_tag, account_tag, tenant))

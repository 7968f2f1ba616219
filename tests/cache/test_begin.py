"""A begin is sent to Redis unplanned first: it begins the open call Redis holds from a few of its fields, and
answers `missing` when there is none, or one a new authorization may replace, so that the agent plans it."""

from __future__ import annotations

import cache
from cache import call as callstate
from tests.test_transaction import at, catalog, post, prepaid

_SETTINGS = "120000,100,14400,3600,30000"


def _begin_unplanned(redis, tag: str, moment: int):
    """The FCALL the agent sends first for a begin (agent/transaction.py, begin)."""
    return redis.execute_command(*cache.fcall(
        "rating_authorize", (cache.call_key("default", tag), cache.DEADLINES, cache.OUTBOX, cache.CATALOG),
        (moment, _SETTINGS, 1, "default", tag, "-", "{}", "", "", moment, 0, ""),
    ))


async def test_an_unplanned_begin_begins_the_open_call_and_changes_nothing_else(agent, stack):
    client = await agent(catalog(prepaid("a", 1000)))
    await post(client, "authorization", transaction_tag="c", account_tag="a", destination="39",
               timestamp_auth=at(0))
    key = cache.call_key("default", "c")
    before = await stack.redis.hgetall(key)
    reply = await _begin_unplanned(stack.redis, "c", 1_893_492_001_000)
    assert reply == [1, "begun", "", "", int(before[callstate.UNITS]), int(before[callstate.BALANCE])]
    after = await stack.redis.hgetall(key)
    changed = {name for name in after if after[name] != before.get(name)}
    assert {callstate.STATE, callstate.BEGUN_AT} <= changed <= {
        callstate.STATE, callstate.BEGUN_AT, callstate.CLOCK_S, callstate.CLOCK_US}
    assert after[callstate.BEGUN_AT] == "1893492001000"
    deadline = await stack.redis.zscore(cache.DEADLINES, key)
    assert deadline == 1_893_492_001_000 + int(before[callstate.UNITS]) * 1000 + 30_000
    assert await stack.redis.hget("rating:stats", "running") == "1"

    # repeated: answered as the first time, nothing moves
    again = await _begin_unplanned(stack.redis, "c", 1_893_492_002_000)
    assert again == reply
    assert await stack.redis.hgetall(key) == after
    assert await stack.redis.zscore(cache.DEADLINES, key) == deadline
    assert await stack.redis.hget("rating:stats", "running") == "1"

    await post(client, "end", transaction_tag="c", timestamp_end=at(3))
    assert (await _begin_unplanned(stack.redis, "c", 1_893_492_004_000))[:2] == [1, "ended"]


async def test_an_unplanned_begin_of_no_call_or_of_a_refused_one_is_missing_and_writes_nothing(agent, stack):
    client = await agent(catalog(prepaid("a", 1000), prepaid("broke", 0)))
    await post(client, "authorization", transaction_tag="no", account_tag="broke", destination="39")
    refused = await stack.redis.hgetall(cache.call_key("default", "no"))
    added = (await stack.redis.xinfo_stream(cache.OUTBOX))["entries-added"]
    assert (await _begin_unplanned(stack.redis, "nothing", 1_893_492_000_000))[:2] == [0, "missing"]
    assert (await _begin_unplanned(stack.redis, "no", 1_893_492_000_000))[:2] == [0, "missing"]
    assert not await stack.redis.exists(cache.call_key("default", "nothing"))
    assert await stack.redis.hgetall(cache.call_key("default", "no")) == refused
    assert (await stack.redis.xinfo_stream(cache.OUTBOX))["entries-added"] == added
    assert await stack.redis.zcard(cache.DEADLINES) == 0


async def test_a_begin_through_the_agent_plans_only_the_calls_redis_does_not_hold_open(agent, stack):
    client = await agent(catalog(prepaid("a", 1000)))
    # no authorization: the begin authorizes and begins the call
    assert (await post(client, "begin", transaction_tag="first", account_tag="a", destination="39",
                       timestamp_begin=at(0)))["ok"] is True
    state = await stack.redis.hgetall(cache.call_key("default", "first"))
    assert state[callstate.STATE] == "begun" and state[callstate.PARTIES].startswith("[{")
    await post(client, "end", transaction_tag="first", timestamp_end=at(2))
    # a tag whose call was refused is authorized afresh by its begin once the balance allows it
    await cache.move_balance(stack.redis, "default", "a", "set", 0, 0)
    await post(client, "authorization", transaction_tag="again", account_tag="a", destination="39")
    await cache.move_balance(stack.redis, "default", "a", "set", 1000, 0)
    assert (await post(client, "begin", transaction_tag="again", account_tag="a", destination="39",
                       timestamp_begin=at(0)))["ok"] is True
    assert (await stack.redis.hget(cache.call_key("default", "again"), callstate.STATE)) == "begun"

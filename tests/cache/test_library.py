"""The Redis function library prices exactly like the Python kernel (the formulas exist twice)."""

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cache
from agent.pricing.rate import Rate, fee, max_units

money = st.integers(min_value=0, max_value=10**12)
small = st.integers(min_value=0, max_value=10_000)


def test_library_loads_and_registers_every_function(redis_server):
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.execute_command("FUNCTION", "LOAD", "REPLACE", cache.LIBRARY)
    names = {f["name"] for lib in client.execute_command("FUNCTION", "LIST") for f in _functions(lib)}
    assert {"rating_authorize", "rating_finish", "rating_rollback", "rating_record", "rating_expire",
            "rating_balance", "rating_seed", "rating_price"} <= names


def _functions(library):
    entry = dict(zip(library[::2], library[1::2])) if isinstance(library, list) else library
    return [dict(zip(f[::2], f[1::2])) if isinstance(f, list) else f for f in entry["functions"]]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(connect_fee=small, rate=small, increment=st.integers(0, 3600), free=st.integers(0, 100),
       duration=st.integers(0, 200_000), available=money, share=st.integers(1, 100),
       cap=st.integers(1, 100_000))
def test_lua_fee_and_units_equal_the_kernel(redis_server, connect_fee, rate, increment, free, duration,
                                            available, share, cap):
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.execute_command("FUNCTION", "LOAD", "REPLACE", cache.LIBRARY)
    tariff = Rate("t", "p", "c", "39", connect_fee, rate, increment, free)
    lua_fee, lua_units = client.execute_command(
        "FCALL", "rating_price", 0, *tariff.tariff(), duration, available, share, cap)
    usable = available * share // 100
    assert lua_fee == fee(tariff, duration)
    assert lua_units == max_units(tariff, usable, cap)


def test_malformed_settings_are_refused_by_the_library(redis_server):
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.execute_command("FUNCTION", "LOAD", "REPLACE", cache.LIBRARY)
    with pytest.raises(redis.ResponseError, match="settings must be five integers"):
        client.execute_command("FCALL", "rating_authorize", 3, "rating:c:1:t:x", cache.DEADLINES, cache.OUTBOX,
                               1, "3600000,100", 0, "t", "x", "[]", "{}", "", "", 1)


async def test_a_call_planned_on_an_older_catalog_is_answered_stale_and_nothing_is_written(stack):
    import orjson

    client = stack.redis
    assert await cache.publish_catalog(client, 7) == 7
    assert await cache.publish_catalog(client, 5) == 7  # never moves back
    party = {"k": cache.account_key("t", "a"), "o": cache.open_calls_key("t", "a", False), "a": "a", "cr": 0,
             "mt": -1, "mi": -1, "mo": -1, "i": 0, "pr": 1, "c": 1, "r": [0, 1, 1, 0]}
    key = cache.call_key("t", "x")

    def authorize(version: int):
        return client.execute_command(*cache.fcall(
            "rating_authorize", (key, cache.DEADLINES, cache.OUTBOX, cache.CATALOG),
            (1, "120000,100,14400,3600,30000", 0, "t", "x", orjson.dumps([party]).decode(), "{}", "", "", 1,
             version, "c1")))

    assert await authorize(6) == [0, "stale", "", "", 0, 7]
    assert await client.exists(key, party["k"], cache.DEADLINES, cache.OUTBOX) == 0
    # an account without a live balance is not made one up: the agent must seed it first
    assert await authorize(7) == [0, "unseeded", "", "a", 1, 0]
    assert await client.exists(key, party["k"]) == 0
    await client.hset(party["k"], "balance", 100)
    reply = await authorize(7)
    assert reply[:2] == [1, "authorized"] and await client.exists(key) == 1


async def test_a_lost_balance_is_seeded_from_postgresql_or_from_the_newest_move_the_outbox_still_holds(stack):
    client = stack.redis
    key = cache.account_key("t", "a")

    async def move(tag: str, balance: int) -> int:  # a ledger entry as the library writes them
        entry = await client.xadd(cache.OUTBOX, {"e": "ledger", "tn": "t", "a": tag, "k": "charge", "amt": "-1",
                                                 "bal": str(balance), "tt": "x", "at": "1"})
        ms, seq = entry.split("-")
        return int(ms) * 1_000_000 + int(seq)

    assert await cache.seed_balance(client, "t", "a", 500, 0) == 500  # nothing pending: PostgreSQL's
    await client.hset(key, "balance", 7)
    assert await cache.seed_balance(client, "t", "a", 500, 0) == 7  # a live balance is never replaced
    await client.delete(key)
    applied = await move("a", 480)  # PostgreSQL already holds this one
    assert await cache.seed_balance(client, "t", "a", 480, applied) == 480
    await client.delete(key)
    await move("a", 470)
    await move("a", 460)  # the newest move of the account PostgreSQL has not applied yet
    await move("b", 1)
    assert await cache.seed_balance(client, "t", "a", 480, applied) == 460
    assert await client.hget(key, "balance") == "460"


async def test_a_call_the_expiry_cannot_finish_is_set_aside_and_counted_not_retried_or_dropped(stack):
    from agent.metrics import LiveState

    client = stack.redis
    key = cache.call_key("t", "broken")
    # a begun call whose party lost its account key: charging it fails half-way
    await client.hset(key, mapping={"st": "begun", "ci": "c", "tn": "t", "tt": "broken", "ta": 0, "u": 10, "bal": 0,
                                    "rv": "0", "p": '[{"a":"a","r":[0,1,1,0]}]', "tb": 0, "meta": "{}"})
    await client.zadd(cache.DEADLINES, {key: 1})
    assert await client.execute_command(*cache.fcall("rating_expire", (cache.DEADLINES, cache.OUTBOX),
                                                     (10**13, 3600, 100, 20000))) == 1
    assert await client.zcard(cache.DEADLINES) == 0
    assert await client.smembers(cache.BROKEN_CALLS) == {key}
    live = LiveState(client)
    await live.refresh()
    assert {m.name: m.samples[0].value for m in live.collect()}["rating_calls_broken"] == 1

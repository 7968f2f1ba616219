"""The Redis function library walks the kernel's price schedules and decides as the kernel does.

The formula lives in agent/pricing/rate.py (Rate.schedule); Redis only walks the schedule. The walks are held
to the kernel's on many schedules (`rating_price`), and the real `rating_authorize` and `rating_finish` are
driven against agent/pricing/decision.py on thousands of generated calls: reservations, linked accounts,
credit limits, the reservation share, concurrency limits, the --max-units cap and capped durations.
"""

import hashlib
import itertools
import time

import orjson
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cache
from agent.pricing.decision import Held, Standing, answered, charges, decide
from agent.pricing.rate import (LONGEST_CALL, MAX_SCALE, ROUNDINGS, Rate, duration_seconds, limit_error,
                                tariff_fee, tariff_numbers, timeline, timeline_exact, walk_fee, walk_fee_at,
                                walk_units, walk_units_at)

money = st.integers(min_value=0, max_value=10**12)
small = st.integers(min_value=0, max_value=10_000)
_SEEN = itertools.count()


@pytest.fixture
def lua(redis_server):
    """A client of the suite's Redis with the library loaded (once per test, not per generated example)."""
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.execute_command("FUNCTION", "LOAD", "REPLACE", cache.LIBRARY)
    yield client
    client.close()


def test_library_loads_and_registers_every_function(redis_server):
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.execute_command("FUNCTION", "LOAD", "REPLACE", cache.LIBRARY)
    names = {f["name"] for lib in client.execute_command("FUNCTION", "LIST") for f in _functions(lib)}
    plain = {"rating_authorize", "rating_finish", "rating_rollback", "rating_record", "rating_expire",
             "rating_balance", "rating_seed", "rating_price", "rating_publish", "rating_rerate_move"}
    assert set(cache.FUNCTIONS) == plain
    assert {name.replace("rating_", f"{cache.LIBRARY_NAME}_", 1) for name in plain} <= names


async def test_two_versions_of_the_library_rate_side_by_side_over_the_same_keys(stack):
    """A rolling upgrade: the next version (here: this library with one more comment line) is loaded beside
    this one, each agent calls its own functions, and both see one balance and one set of calls."""
    client = stack.redis
    source = cache._SOURCE + "\n-- the next release\n"
    version = hashlib.sha1(source.encode()).hexdigest()[:12]
    name = f"rating_{version}"
    await client.execute_command("FUNCTION", "LOAD", "REPLACE", source.replace(
        "#!lua name=rating\n", f"#!lua name={name}\n", 1).replace("function('rating_", f"function('{name}_").replace(
        "function_name = 'rating_", f"function_name = '{name}_"))
    await client.hset(cache.LIBRARIES, name, int(time.time() * 1000))  # as its agent notes it (load_library)
    party = {"k": cache.account_key("t", "a"), "o": cache.open_calls_key("t", "a", False), "a": "a", "cr": 0,
             "mt": 2, "mi": -1, "mo": -1, "i": 0, "pr": 1, "c": 1, "r": [0, 1, 1, 1, 1, 0, -1]}
    await client.hset(party["k"], "balance", 100)

    def authorize(function: str, tag: str):
        return client.execute_command(
            "FCALL", function, 7, *cache.call_keys("t", tag), *cache.party_keys([party]),
            1000, "120000,100,14400,3600,30000", 0, "t", tag, orjson.dumps([party]).decode(), "{}", "", "", 1000,
            0, f"id-{tag}")

    old, new = cache.FUNCTIONS["rating_authorize"], f"{name}_authorize"
    assert (await authorize(old, "x"))[:5] == [1, "authorized", "", "", 100]
    # the next version sees the reservation and the open call the first one made: 0 left, one slot left
    assert (await authorize(new, "y"))[:4] == [0, "refused", "BALANCE_INSUFFICIENT", "a"]
    assert (await client.execute_command("FCALL", f"{name}_rollback", 7, *cache.call_keys("t", "x"),
                                         *cache.party_keys([party]),
                                         2000, 3600))[:2] == [1, "rolledback"]
    assert (await authorize(old, "z"))[:5] == [1, "authorized", "", "", 100]
    # the sweep keeps every library an agent noted within the hour, and deletes the others
    assert await cache.sweep_libraries(client) == []
    await client.hset(cache.LIBRARIES, name, 1)  # last noted in 1970
    await client.execute_command("FUNCTION", "LOAD", "REPLACE", "#!lua name=rating\n"
                                 "redis.register_function('rating_authorize', function() return 0 end)")
    assert sorted(await cache.sweep_libraries(client)) == sorted([name, "rating"])
    listed = {(lib if isinstance(lib, dict) else dict(zip(lib[::2], lib[1::2])))["library_name"]
              for lib in await client.execute_command("FUNCTION", "LIST")}
    assert listed == {cache.LIBRARY_NAME}
    assert await client.hkeys(cache.LIBRARIES) == [cache.LIBRARY_NAME]


def _functions(library):
    entry = dict(zip(library[::2], library[1::2])) if isinstance(library, list) else library
    return [dict(zip(f[::2], f[1::2])) if isinstance(f, list) else f for f in entry["functions"]]


def scheme_rates(prices=small):
    """Rates with any billing scheme the import accepts (first block a multiple of the increment, amounts
    within rate.limit_error)."""
    return st.builds(
        lambda fee, price, increment, free, blocks, minimum, most: Rate(
            "t", "p", "c", "39", fee, price, increment, free,
            initial_increment=None if blocks is None else blocks * max(increment, 1), minimum_duration=minimum,
            maximum_cost=most),
        prices, prices, st.sampled_from([0, 1, 6, 30, 60]) | st.integers(1, 3600), st.integers(0, 100),
        st.none() | st.integers(1, 20), st.sampled_from([0, 0, 30, 60]) | st.integers(0, 7200),
        st.none() | st.none() | money,
    ).filter(lambda r: limit_error(r) is None)


PRICE = settings(max_examples=300, deadline=None, derandomize=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])


@PRICE
@given(tariff=scheme_rates(small | st.integers(0, 10**8 - 1)), duration=st.integers(0, 200_000),
       available=money | st.integers(-10**6, 2**60), share=st.integers(1, 100), cap=st.integers(1, 100_000))
def test_lua_walks_every_schedule_as_the_kernel(lua, tariff, duration, available, share, cap):
    client = lua
    schedule = tariff.schedule()
    lua_fee, lua_units = client.execute_command("FCALL", cache.FUNCTIONS["rating_price"], 0, *schedule, duration, available, share, cap)
    usable = available if share >= 100 or available <= 0 else available * share // 100
    assert lua_fee == walk_fee(schedule, duration)
    assert lua_units == walk_units(schedule, usable, cap)


def random_rate(rng, scaled: bool = False) -> Rate:
    """What `scheme_rates` draws, from a seeded generator: thousands of cases cost milliseconds, not the
    milliseconds each of a hypothesis example. `scaled`: with decimal prices (a scale and a rounding)."""
    while True:
        price = rng.choice([50, 10_000, 10**8 - 1])
        increment = rng.choice([0, 1, 6, 30, 60, rng.randint(1, 3600)])
        blocks = rng.choice([None, None, 1, 5, rng.randint(1, 20)])
        tariff = Rate("t", "p", "c", "39", rng.randint(0, price), rng.randint(0, price), increment,
                      rng.choice([0, 0, 1, rng.randint(0, 100)]),
                      initial_increment=None if blocks is None else blocks * max(increment, 1),
                      minimum_duration=rng.choice([0, 0, 30, 60, rng.randint(0, 7200)]),
                      maximum_cost=rng.choice([None, None, 0, rng.randint(0, 10**6), rng.randint(0, 10**12)]),
                      **({"scale": rng.randint(1, MAX_SCALE), "rounding": rng.choice(ROUNDINGS)} if scaled else {}))
        if limit_error(tariff) is None:
            return tariff


def test_lua_walks_twenty_thousand_schedules_as_the_kernel(lua):
    import random

    rng = random.Random(1515)
    cases = []
    for _ in range(20_000):
        schedule = random_rate(rng).schedule()
        cases.append((schedule, rng.choice([0, 1, rng.randint(0, 200_000)]),
                      rng.choice([0, -5, rng.randint(0, 10**6), rng.randint(0, 2**53), rng.randint(0, 2**62)]),
                      rng.choice([100, rng.randint(1, 100)]), rng.choice([14400, rng.randint(1, 100_000)])))
    pipe = lua.pipeline(transaction=False)
    for schedule, duration, available, share, cap in cases:
        pipe.execute_command("FCALL", cache.FUNCTIONS["rating_price"], 0, *schedule, duration, available, share, cap)
    for (schedule, duration, available, share, cap), answer in zip(cases, pipe.execute()):
        usable = available if share >= 100 or available <= 0 else available * share // 100
        assert answer == [walk_fee(schedule, duration), walk_units(schedule, usable, cap)], (schedule, duration,
                                                                                            available, share, cap)


# --- the decisions of the real functions -------------------------------------------------------------------------

parties = st.builds(
    lambda inbound, spends, credit, balance, reserved, rate, limits, counts: dict(
        inbound=inbound, spends=spends and not inbound, credit=credit if spends and not inbound else 0,
        balance=balance, reserved=reserved, rate=None if inbound else rate, limits=limits, counts=counts),
    st.booleans(), st.booleans() | st.just(True), st.sampled_from([0, 0, 0, 50, 10**4]),
    st.integers(-500, 5_000) | st.integers(0, 10**9) | st.integers(0, 2**53 - 1), st.sampled_from([0, 0, 7, 300]),
    scheme_rates(st.integers(0, 50) | st.integers(0, 10**8 - 1)),
    st.tuples(*[st.sampled_from([-1, -1, -1, 0, 1, 2])] * 3), st.tuples(st.integers(0, 2), st.integers(0, 2)))
calls = st.fixed_dictionaries(dict(
    parties=st.lists(parties, min_size=1, max_size=3), share=st.sampled_from([100, 100, 50, 25, 1, 99]),
    cap=st.sampled_from([14400, 60, 1, 3600]) | st.integers(1, 20_000), begun=st.booleans(),
    lost_begin=st.sampled_from([None, 0, 1500]), length=st.integers(0, 30_000_000)))
DECISIONS = settings(max_examples=200, deadline=None, derandomize=True,
                     suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                            HealthCheck.filter_too_much])


def _read(client, commands):
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    return pipe.execute()


def _fcall(client, name, keys, args):
    return client.execute_command(*cache.fcall(name, keys, args))


@DECISIONS
@given(call=calls)
def test_authorize_and_finish_in_redis_decide_and_charge_as_the_kernel(lua, call):
    check_call(lua, call)


def random_call(rng) -> dict:
    """What `calls` draws, from a seeded generator."""
    def party():
        inbound, spends = rng.random() < 0.3, rng.random() < 0.8
        spends = spends and not inbound
        return dict(inbound=inbound, spends=spends, credit=rng.choice([0, 0, 0, 50, 10**4]) if spends else 0,
                    balance=rng.choice([rng.randint(-500, 5_000), rng.randint(0, 10**9), rng.randint(0, 2**53 - 1)]),
                    reserved=rng.choice([0, 0, 7, 300]), rate=None if inbound else random_rate(rng),
                    limits=tuple(rng.choice([-1, -1, -1, 0, 1, 2]) for _ in range(3)),
                    counts=(rng.randint(0, 2), rng.randint(0, 2)))
    return dict(parties=[party() for _ in range(rng.choice([1, 1, 2, 3]))],
                share=rng.choice([100, 100, 50, 25, 1, 99]),
                cap=rng.choice([14400, 60, 1, 3600, rng.randint(1, 20_000)]), begun=rng.random() < 0.5,
                lost_begin=rng.choice([None, 0, 1500]), length=rng.choice([0, 999, rng.randint(0, 30_000_000)]))


def test_three_thousand_calls_in_redis_decide_and_charge_as_the_kernel(lua):
    import random

    rng = random.Random(15)
    for _ in range(3000):
        check_call(lua, random_call(rng))


def check_call(client, call: dict) -> None:
    """Sets the parties' live state, authorizes the call with the real rating_authorize, ends it with the
    real rating_finish, and holds every answer, reservation and charge to the kernel's (decision.py)."""
    number = next(_SEEN)
    tenant = f"k{number}"
    sent, standings = [], []
    setup = client.pipeline(transaction=False)
    for index, party in enumerate(call["parties"]):
        tag, inbound = f"a{index}", party["inbound"] and index > 0
        key = cache.account_key(tenant, tag)
        here, other = (cache.open_calls_key(tenant, tag, inbound), cache.open_calls_key(tenant, tag, not inbound))
        setup.hset(key, mapping={"balance": party["balance"], "reserved": party["reserved"]})
        for set_key, count in zip((here, other), party["counts"]):
            if count:
                setup.sadd(set_key, *[f"other{n}" for n in range(count)])
        total, in_limit, out_limit = party["limits"]
        schedule = None if party["rate"] is None or inbound else party.get("timeline") or party["rate"].schedule()
        lua = {"k": key, "o": here, "a": tag, "cr": party["credit"], "mt": total, "mi": in_limit, "mo": out_limit,
               "i": int(inbound), "pr": int(index == 0), "c": int(party["spends"] and not inbound),
               "r": None if schedule is None else tariff_numbers(schedule)}
        if total >= 0:
            lua["ox"] = other
        sent.append(lua)
        standings.append(Standing(party["balance"] - party["reserved"], party["credit"], lua["c"] == 1, schedule,
                                  inbound, party["counts"][0], party["counts"][1], total, in_limit, out_limit))
    setup.execute()
    share, cap = call["share"], call["cap"]
    at = call.get("at", 1_700_000_000_000)
    expected = decide(standings, share, cap, at=at, ttl=120_000)  # the settings' TTL: the answer seconds covered
    call_key = cache.call_key(tenant, "x")
    reply = _fcall(client, "rating_authorize", cache.call_keys(tenant, "x") + cache.party_keys(sent),
                   (at, f"120000,{share},{cap},3600,30000", int(call["begun"]), tenant, "x",
                    orjson.dumps(sent).decode(), "{}", "", "", at, 0, "c1"))
    refused_tag = "" if expected.refused < 0 else sent[expected.refused]["a"]
    assert reply == [0 if expected.reason else 1, "refused" if expected.reason else
                     ("begun" if call["begun"] else "authorized"), expected.reason, refused_tag, expected.units,
                     standings[0].available]
    held = [int(amount) for amount in _read(client, [("HGET", p["k"], "reserved") for p in sent])]
    assert held == [party["reserved"] + amount for party, amount in zip(call["parties"], expected.reserved)]
    assert all(amount <= max(s.available + s.credit, 0) for s, amount in zip(standings, expected.reserved)
               if s.spends and s.schedule is not None and tariff_fee(s.schedule, cap, at) > 0)
    if expected.reason:
        return
    # the end: begun at `at` (or, its begin lost, at the begin the end carries or at the authorization)
    begin = at if call["begun"] or call["lost_begin"] is None else at + call["lost_begin"]
    end = begin + call["length"]
    reply = _fcall(client, "rating_finish", cache.call_keys(tenant, "x") + cache.party_keys(sent),
                   (end, end, 3600, "" if call["begun"] or call["lost_begin"] is None else begin))
    # an end whose begin was lost checks the reservations against its answer (decision.answered)
    units, topups = answered([Held(s.schedule if s.spends else None, s.spends, r, s.available - r, s.credit)
                              for s, r in zip(standings, expected.reserved)], expected.units, begin)
    charged = charges([s.schedule for s in standings], units, duration_seconds(begin, end), begin)
    assert reply[:2] == [1, "ended"]
    after = _read(client, [("HMGET", p["k"], "balance", "reserved") for p in sent])
    for (balance, reserved), party, amount in zip(after, call["parties"], charged):
        assert (int(balance), int(reserved)) == (party["balance"] - amount, party["reserved"])  # and released
    assert all(amount <= held_amount + topup for amount, held_amount, topup, s in
               zip(charged, expected.reserved, topups, standings)
               if s.spends and tariff_fee(s.schedule, 0, begin) <= held_amount + topup)  # never more than the
    # reservation and what the answer topped up (tests/cache/test_begin.py: the one exception)


def test_an_agent_configured_beyond_the_longest_call_is_refused_by_the_library(redis_server):
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.execute_command("FUNCTION", "LOAD", "REPLACE", cache.LIBRARY)
    with pytest.raises(redis.ResponseError, match="max-units must be at most"):
        _fcall(client, "rating_authorize", cache.call_keys("t", "y"),
               (1, f"3600000,100,{LONGEST_CALL + 1},3600,30000", 0, "t", "y", "[]", "{}", "", "", 1, 0, "c"))


def test_malformed_settings_are_refused_by_the_library(redis_server):
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.execute_command("FUNCTION", "LOAD", "REPLACE", cache.LIBRARY)
    with pytest.raises(redis.ResponseError, match="settings must be five integers"):
        client.execute_command("FCALL", cache.FUNCTIONS["rating_authorize"], 5, *cache.call_keys("t", "x"),
                               1, "3600000,100", 0, "t", "x", "[]", "{}", "", "", 1)


async def test_a_call_planned_on_an_older_catalog_is_answered_stale_and_nothing_is_written(stack):
    import orjson

    client = stack.redis
    assert await cache.publish_catalog(client, 7) == 7
    assert await cache.publish_catalog(client, 5) == 7  # never moves back
    party = {"k": cache.account_key("t", "a"), "o": cache.open_calls_key("t", "a", False), "a": "a", "cr": 0,
             "mt": -1, "mi": -1, "mo": -1, "i": 0, "pr": 1, "c": 1, "r": [0, 1, 1, 1, 1, 0, -1]}
    key = cache.call_key("t", "x")

    def authorize(version: int):
        return client.execute_command(*cache.fcall(
            "rating_authorize", cache.call_keys("t", "x") + cache.party_keys([party]),
            (1, "120000,100,14400,3600,30000", 0, "t", "x", orjson.dumps([party]).decode(), "{}", "", "", 1,
             version, "c1")))

    assert await authorize(6) == [0, "stale", "", "", 0, 7]
    assert await client.exists(key, party["k"], cache.group_of("t").deadlines, cache.group_of("t").outbox) == 0
    # an account without a live balance is not made one up: the agent must seed it first
    assert await authorize(7) == [0, "unseeded", "", "a", 1, 0]
    assert await client.exists(key, party["k"]) == 0
    await client.hset(party["k"], "balance", 100)
    reply = await authorize(7)
    assert reply[:2] == [1, "authorized"] and await client.exists(key) == 1


async def test_a_change_of_one_account_makes_stale_only_the_calls_of_that_account(stack):
    import orjson

    client = stack.redis
    parties = {tag: {"k": cache.account_key("t", tag), "o": cache.open_calls_key("t", tag, False), "a": tag,
                     "cr": 0, "mt": -1, "mi": -1, "mo": -1, "i": 0, "pr": 1, "c": 1, "r": [0, 1, 1, 1, 1, 0, -1]}
               for tag in ("a", "b")}
    for party in parties.values():
        await client.hset(party["k"], "balance", 100)
    assert await cache.publish_catalog(client, 4) == 4
    # change 9 changed account a alone: the catalog key stays at 4, a's calls need a catalog of 9
    assert await cache.publish_catalog(client, 9, [("t", "a")]) == 4
    assert await cache.publish_catalog(client, 8, [("t", "a")]) == 4  # never moves back either
    assert await client.hget(parties["a"]["k"], "cv") == "9"

    def authorize(tag: str, version: int, refused: str = ""):
        keys = cache.call_keys("t", tag)
        sent = "[]" if refused else orjson.dumps([parties[tag]]).decode()
        return client.execute_command(*cache.fcall(
            "rating_authorize", keys + ((cache.account_key("t", refused),) if refused else
                                        cache.party_keys([parties[tag]])),
            (1, "120000,100,14400,3600,30000", 0, "t", tag, sent, "{}", "NOT_FOUND" if refused else "",
             refused, 1, version, "c1")))

    assert (await authorize("b", 4))[:2] == [1, "authorized"]
    assert await authorize("a", 8) == [0, "stale", "", "", 0, 9]
    assert await client.exists(cache.call_key("t", "a")) == 0
    assert (await authorize("a", 9))[:2] == [1, "authorized"]
    # an account the plan did not find, created by change 12 since: stale, not refused
    assert await cache.publish_catalog(client, 12, [("t", "new")]) == 4
    assert await authorize("new", 11, refused="new") == [0, "stale", "", "", 0, 12]
    assert (await authorize("new", 12, refused="new"))[:3] == [0, "refused", "NOT_FOUND"]


async def test_a_lost_balance_is_seeded_from_postgresql_or_from_the_newest_move_the_outbox_still_holds(stack):
    client = stack.redis
    key = cache.account_key("t", "a")

    async def move(tag: str, balance: int) -> int:  # a ledger entry as the library writes them
        entry = await client.xadd(cache.group_of("t").outbox, {"e": "ledger", "tn": "t", "a": tag, "k": "charge", "amt": "-1",
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
    # a call's moves, carried in its own entry (the newest of the account last)
    await client.delete(key)
    await client.xadd(cache.group_of("t").outbox, {"e": "txn", "doc": "{}", "meta": "{}", "tn": "t", "at": "2",
                                                   "mv": '[["a","charge",-5,455],["b","charge",-1,0],["a","charge",-5,450]]'})
    await client.xadd(cache.group_of("t").outbox, {"e": "txn", "doc": "{}", "meta": "{}", "tn": "u", "at": "3",
                                                   "mv": '[["a","charge",-5,1]]'})  # another tenant's account a
    assert await cache.seed_balance(client, "t", "a", 480, applied) == 450


async def test_a_call_the_expiry_cannot_finish_is_set_aside_and_counted_not_retried_or_dropped(stack):
    from agent.metrics import LiveState

    client = stack.redis
    key = cache.call_key("t", "broken")
    # a begun call whose party lost its account key: charging it fails half-way
    await client.hset(key, mapping={"st": "begun", "ci": "c", "tn": "t", "tt": "broken", "ta": 0, "u": 10, "bal": 0,
                                    "rv": "0", "p": '[{"a":"a","r":[0,1,1,0]}]', "tb": 0, "meta": "{}"})
    await client.zadd(cache.group_of("t").deadlines, {key: 1})
    assert (await client.execute_command(*cache.fcall("rating_expire", (*cache.expiry_keys(cache.group_of("t")), key),
                                                      (10**13, 3600, 20000))))[:2] == [0, "broken"]
    assert await client.zcard(cache.group_of("t").deadlines) == 0
    assert await client.smembers(cache.group_of("t").broken) == {key}
    live = LiveState(client)
    await live.refresh()
    assert {m.name: m.samples[0].value for m in live.collect()}["rating_calls_broken"] == 1


# --- time windows: timelines walked by the library as by the kernel ----------------------------------------------

def random_timeline(rng, at_ms: int, scaled: bool = False):
    """A timeline of 1-5 random schedules whose later pieces start within a few hours of `at_ms`, of rates of
    mixed scales when `scaled` (the kernel puts them in one unit)."""
    while True:
        starts = sorted({at_ms // 1000 + rng.choice([-5, 1, 59, 60, 61, rng.randint(1, 20_000)])
                         for _ in range(rng.randint(0, 4))})
        line = timeline([(at_ms // 1000, random_rate(rng, scaled and rng.random() < 0.7))] +
                        [(start, random_rate(rng, scaled and rng.random() < 0.7)) for start in starts])
        if timeline_exact(line):  # what the plan sends (rate.timeline_exact)
            return line


def test_lua_walks_twenty_thousand_timelines_as_the_kernel(lua):
    import random

    rng = random.Random(1516)
    cases = []
    for _ in range(20_000):
        at = 1_700_000_000_000 + rng.randint(0, 999)
        line = random_timeline(rng, at, scaled=rng.random() < 0.5)
        answer = at + rng.choice([0, 0, 1, 999, 1000, rng.randint(0, 30_000_000)])
        cases.append((line, rng.choice([0, 1, rng.randint(0, 30_000)]),
                      rng.choice([0, -5, rng.randint(0, 10**6), rng.randint(0, 2**53), rng.randint(0, 2**62)]),
                      rng.choice([100, rng.randint(1, 100)]), rng.choice([14400, rng.randint(1, 30_000)]), answer))
    pipe = lua.pipeline(transaction=False)
    for line, duration, available, share, cap, answer in cases:
        pipe.execute_command("FCALL", cache.FUNCTIONS["rating_price"], 0, orjson.dumps(tariff_numbers(line)).decode(),
                             duration, available, share, cap, answer)
    for (line, duration, available, share, cap, answer), found in zip(cases, pipe.execute()):
        usable = available if share >= 100 or available <= 0 else available * share // 100
        assert found == [walk_fee_at(line, duration, answer), walk_units_at(line, usable, cap, answer)], (
            line, duration, available, share, cap, answer)


def test_three_thousand_windowed_calls_in_redis_decide_and_charge_as_the_kernel(lua):
    """Parties priced by timelines: units and reservations walked from the authorization, charges from the
    answer (the begin, the begin a late end carries, or the authorization when the begin was lost)."""
    import random

    rng = random.Random(1517)
    for _ in range(3000):
        call = random_call(rng)
        call["at"] = 1_700_000_000_000 + rng.randint(0, 999)
        for party in call["parties"]:
            if party["rate"] is not None and rng.random() < 0.8:
                party["timeline"] = random_timeline(rng, call["at"], scaled=rng.random() < 0.3)
        call["lost_begin"] = rng.choice([None, 0, 1500, rng.randint(0, 20_000_000)])
        check_call(lua, call)

"""A begin is sent to Redis unplanned first: it begins the open call Redis holds from a few of its fields, and
answers `missing` when there is none, or one a new authorization may replace, so that the agent plans it."""

from __future__ import annotations

import orjson
import redis

import cache
from agent.pricing.decision import Held, Standing, answered, charges, decide, share_of
from agent.pricing.rate import Rate, duration_seconds, tariff_fee, tariff_numbers, timeline
from cache import call as callstate
from tests.test_transaction import at, catalog, post, prepaid

_SETTINGS = "120000,100,14400,3600,30000"


def _begin_unplanned(redis, tag: str, moment: int):
    """The FCALL the agent sends first for a begin (agent/transaction.py, begin)."""
    return redis.execute_command(*cache.fcall(
        "rating_authorize", cache.call_keys("default", tag),
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
    deadline = await stack.redis.zscore(cache.group_of("default").deadlines, key)
    assert deadline == 1_893_492_001_000 + int(before[callstate.UNITS]) * 1000 + 30_000
    assert await stack.redis.hget(cache.group_of("default").stats, "running") == "1"

    # repeated: answered as the first time, nothing moves
    again = await _begin_unplanned(stack.redis, "c", 1_893_492_002_000)
    assert again == reply
    assert await stack.redis.hgetall(key) == after
    assert await stack.redis.zscore(cache.group_of("default").deadlines, key) == deadline
    assert await stack.redis.hget(cache.group_of("default").stats, "running") == "1"

    await post(client, "end", transaction_tag="c", timestamp_end=at(3))
    assert (await _begin_unplanned(stack.redis, "c", 1_893_492_004_000))[:2] == [1, "ended"]


async def test_an_unplanned_begin_of_no_call_or_of_a_refused_one_is_missing_and_writes_nothing(agent, stack):
    client = await agent(catalog(prepaid("a", 1000), prepaid("broke", 0)))
    await post(client, "authorization", transaction_tag="no", account_tag="broke", destination="39")
    refused = await stack.redis.hgetall(cache.call_key("default", "no"))
    added = (await stack.redis.xinfo_stream(cache.group_of("default").outbox))["entries-added"]
    assert (await _begin_unplanned(stack.redis, "nothing", 1_893_492_000_000))[:2] == [0, "missing"]
    assert (await _begin_unplanned(stack.redis, "no", 1_893_492_000_000))[:2] == [0, "missing"]
    assert not await stack.redis.exists(cache.call_key("default", "nothing"))
    assert await stack.redis.hgetall(cache.call_key("default", "no")) == refused
    assert (await stack.redis.xinfo_stream(cache.group_of("default").outbox))["entries-added"] == added
    assert await stack.redis.zcard(cache.group_of("default").deadlines) == 0


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


# --- time windows: the answer may come in a dearer window than the authorization's moment -----------------------

_TTL = 120_000  # ms, the _SETTINGS' authorization TTL
_AT = 1_700_000_000_000  # a whole second: the answer offsets below are exact


def _window_rate(rng, per_second: bool = False) -> Rate:
    """A schedule of small prices, so that balances of a few calls make the units tight; `per_second`: 1/1
    (the walks then move linearly with the answer, and the fewest units may come between two kinks)."""
    if per_second:
        return Rate("t", "p", "c", "39", rng.choice([0, 0, rng.randint(0, 40)]), rng.randint(0, 20), 1)
    increment = rng.choice([1, 6, 60, rng.randint(1, 90)])
    return Rate("t", "p", "c", "39", rng.choice([0, 0, rng.randint(0, 40)]), rng.randint(0, 30), increment,
                rng.choice([0, 0, 1]), initial_increment=rng.choice([None, None, 5 * increment]),
                minimum_duration=rng.choice([0, 0, 30, rng.randint(0, 200)]),
                maximum_cost=rng.choice([None, None, None, rng.randint(0, 3000)]))


def _window_line(rng, at_ms: int):
    """1-4 schedules, the later ones starting around the authorization's TTL (the seconds it covers end there)."""
    second, per_second = at_ms // 1000, rng.random() < 0.3
    starts = sorted({second + rng.choice([1, 30, 59, 60, 61, 119, 120, 121, 122, 180, rng.randint(1, 7200)])
                     for _ in range(rng.randint(1, 3))})
    return timeline([(second, _window_rate(rng, per_second))] +
                    [(start, _window_rate(rng, per_second)) for start in starts])


def _answered_call(client, rng, number: int) -> None:
    """Authorizes a windowed call with the real rating_authorize, answers it at a random moment (within the TTL,
    after it, or before the authorization) by the unplanned begin or by an end carrying its begin (the begin
    lost), ends it with rating_finish, and holds every step to the kernel (decision.decide, answered, charges)
    and to the rule: no party is charged more than it reserved at the authorization plus what the answer
    topped up, and an answer within the TTL never needs a top-up."""
    tenant, tag = f"w{number}", "x"
    at = _AT + rng.choice([0, 0, rng.randint(0, 999)])
    share, cap = rng.choice([100, 100, 50]), rng.choice([14400, 600, rng.randint(1, 3000)])
    parties, standings, lines = [], [], []
    setup = client.pipeline(transaction=False)
    for index in range(rng.choice([1, 1, 2])):
        account = cache.account_key(tenant, f"a{index}")
        spends = index == 0 or rng.random() < 0.7
        balance = rng.choice([rng.randint(0, 300), rng.randint(0, 3000), 10**9])
        reserved, credit = rng.choice([0, 0, 25]), rng.choice([0, 0, 40]) if spends else 0
        line = _window_line(rng, at)
        setup.hset(account, mapping={"balance": balance, "reserved": reserved})
        parties.append({"k": account, "o": cache.open_calls_key(tenant, f"a{index}", False), "a": f"a{index}",
                        "cr": credit, "mt": -1, "mi": -1, "mo": -1, "i": 0, "pr": int(index == 0),
                        "c": int(spends), "r": tariff_numbers(line)})
        standings.append(Standing(balance - reserved, credit, spends, line))
        lines.append(line)
    setup.execute()
    keys = cache.call_keys(tenant, tag) + cache.party_keys(parties)
    settings = f"{_TTL},{share},{cap},3600,30000"
    expected = decide(standings, share, cap, at=at, ttl=_TTL)
    reply = client.execute_command(*cache.fcall("rating_authorize", keys, (
        at, settings, 0, tenant, tag, orjson.dumps(parties).decode(), "{}", "", "", at, 0, "c1")))
    assert reply[:5] == [0 if expected.reason else 1, "refused" if expected.reason else "authorized",
                         expected.reason, "" if expected.refused < 0 else parties[expected.refused]["a"],
                         expected.units]
    if expected.reason:
        return
    for standing, held in zip(standings, expected.reserved):  # the authorization never holds more than allowed
        if standing.spends:
            assert held <= max(share_of(standing.available + standing.credit, share), 0) or held == 0
    answer = at + rng.choice([0, 999, 1000, 59_000, 60_000, 61_500, 119_000, 119_999, _TTL - at % 1000 + 999,
                              rng.randint(0, _TTL - at % 1000 + 999),  # the last second the TTL covers
                              _TTL + 1000, _TTL + 2500, rng.randint(_TTL + 1000, 900_000), -1000, -61_000])
    other = rng.choice([0, 0, rng.randint(0, 500)])  # another call's reservation, made meanwhile
    if other:
        client.hincrby(parties[0]["k"], "reserved", other)
    live = [[int(v) for v in client.hmget(p["k"], "balance", "reserved")] for p in parties]
    held = [Held(s.schedule, s.spends, r, balance - reserved_now, s.credit)
            for s, r, (balance, reserved_now) in zip(standings, expected.reserved, live)]
    units, topups = answered(held, expected.units, answer)
    if at // 1000 <= answer // 1000 <= (at + _TTL) // 1000:
        assert (units, topups) == (expected.units, tuple(0 for _ in parties)), "an answer within the TTL is paid"
    length = rng.choice([0, 1500, rng.randint(0, 4_000_000)])
    lost = rng.random() < 0.4
    if not lost:
        begun = client.execute_command(*cache.fcall("rating_authorize", keys, (
            answer, settings, 1, tenant, tag, "-", "{}", "", "", answer, 0, "")))
        assert begun[:2] == [1, "begun"] and begun[4] == units
        assert [int(client.hget(p["k"], "reserved")) for p in parties] == [
            live_reserved + topup for (_, live_reserved), topup in zip(live, topups)]
        assert int(client.hget(keys[0], callstate.UNITS)) == units
        assert client.zscore(keys[1], keys[0]) == answer + units * 1000 + 30_000
    ended = client.execute_command(*cache.fcall("rating_finish", keys, (
        answer + length, answer + length, 3600, answer if lost else "")))
    assert ended[:2] == [1, "ended"]
    charged = charges(lines, units, duration_seconds(answer, answer + length), answer)
    for party, (balance, reserved_now), topup, amount, reserved_at, standing in zip(
            parties, live, topups, charged, expected.reserved, standings):
        assert [int(v) for v in client.hmget(party["k"], "balance", "reserved")] == [
            balance - amount, reserved_now - reserved_at]  # charged, and everything the call held released
        if standing.spends and tariff_fee(standing.schedule, 0, answer) <= reserved_at + topup:
            assert amount <= reserved_at + topup, "never charged more than reserved and topped up"


def test_windowed_calls_answered_anywhere_are_charged_within_their_reservation_as_the_kernel(redis_server):
    import random

    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.execute_command("FUNCTION", "LOAD", "REPLACE", cache.LIBRARY)
    rng = random.Random(1518)
    try:
        for number in range(2000):
            _answered_call(client, rng, number)
    finally:
        client.close()

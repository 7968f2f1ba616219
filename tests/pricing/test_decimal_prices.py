"""Decimal prices: a pricelist's money scale and rounding, in the kernel, in Redis and end to end.

The fee of a call is the exact amount in 10**-scale units rounded once to integer money; the units a balance
buys never cost more than the balance once rounded, and are the most it pays. The Redis library walks the
same scaled schedules: its walks and its decisions (the real rating_authorize / rating_finish) are held to
the kernel's on thousands of generated tariffs.
"""

import random
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_EVEN, Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cache
from agent.pricing import deck
from agent.pricing.rate import (LONGEST_CALL, MAX_SCALE, ROUNDINGS, Rate, Schedule, budget, fee, limit_error, money,
                                walk_amount, walk_fee, walk_units)
from tests.cache.test_library import check_call, lua, random_call, random_rate  # noqa: F401 (lua: the fixture)
from tests.test_transaction import at, post, records

DECIMAL_ROUNDING = {"up": ROUND_CEILING, "half_even": ROUND_HALF_EVEN, "down": ROUND_FLOOR}
PROPERTY = settings(max_examples=400, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])


def scaled_rates(prices=st.integers(0, 10**8 - 1)):
    """Rates of pricelists with a money scale, any billing scheme the import accepts."""
    return st.builds(
        lambda connect_fee, price, increment, free, blocks, minimum, most, scale, rounding: Rate(
            "t", "p", "c", "39", connect_fee, price, increment, free,
            initial_increment=None if blocks is None else blocks * max(increment, 1), minimum_duration=minimum,
            maximum_cost=most, scale=scale, rounding=rounding),
        prices | st.integers(0, 100), prices | st.integers(0, 100), st.sampled_from([0, 1, 6, 30, 60]) | st.integers(1, 3600),
        st.integers(0, 10), st.none() | st.integers(1, 20), st.sampled_from([0, 0, 30, 60]) | st.integers(0, 7200),
        st.none() | st.none() | st.integers(0, 10**12), st.integers(1, MAX_SCALE), st.sampled_from(ROUNDINGS),
    ).filter(lambda r: limit_error(r) is None)


def random_scaled_rate(rng) -> Rate:
    return random_rate(rng, scaled=True)


# --- the kernel ----------------------------------------------------------------------------------------------------

@PROPERTY
@given(amount=st.integers(0, 2**53 - 1) | st.integers(0, 10**7), scale=st.integers(0, MAX_SCALE),
       rounding=st.sampled_from(ROUNDINGS))
def test_an_amount_is_rounded_once_as_exact_decimal_arithmetic_rounds_it(amount, scale, rounding):
    expected = (Decimal(amount).scaleb(-scale)).quantize(Decimal(1), rounding=DECIMAL_ROUNDING[rounding])
    assert money(amount, 10**scale, ROUNDINGS.index(rounding)) == int(expected)


@PROPERTY
@given(available=st.integers(0, 10**12), scale=st.integers(0, MAX_SCALE), rounding=st.sampled_from(ROUNDINGS))
def test_the_budget_is_the_largest_amount_a_balance_pays_once_rounded(available, scale, rounding):
    unit, code = 10**scale, ROUNDINGS.index(rounding)
    most = budget(available, unit, code)
    assert money(most, unit, code) <= available < money(most + 1, unit, code)


@PROPERTY
@given(rate=scaled_rates(), first=st.integers(0, 200_000), more=st.integers(0, 200_000))
def test_the_fee_never_decreases_with_the_duration(rate, first, more):
    assert fee(rate, first) <= fee(rate, first + more)
    assert walk_amount(rate.schedule(), first) <= walk_amount(rate.schedule(), first + more)


@PROPERTY
@given(rate=scaled_rates(), duration=st.integers(0, 200_000))
def test_the_fee_is_the_exact_amount_rounded_once(rate, duration):
    exact = Decimal(walk_amount(rate.schedule(), duration)).scaleb(-rate.scale)
    assert fee(rate, duration) == int(exact.quantize(Decimal(1), rounding=DECIMAL_ROUNDING[rate.rounding]))


@PROPERTY
@given(rate=scaled_rates(), available=st.integers(-100, 10**6) | st.integers(0, 10**13),
       cap=st.integers(1, 100_000))
def test_the_units_a_balance_buys_never_cost_more_than_it_and_are_the_most_it_pays(rate, available, cap):
    schedule = rate.schedule()
    units = walk_units(schedule, available, cap)
    if schedule.cap == 0 or not (schedule.connect_fee or schedule.block_price or schedule.increment_price):
        assert units == cap  # nothing to pay
        return
    if units == 0:  # refused: not even the first second (the connect fee and the first block) is paid
        assert available <= 0 or walk_fee(schedule, 1) > available
        return
    assert 0 < units <= cap and walk_fee(schedule, units) <= available
    if units < cap:
        assert walk_fee(schedule, units + 1) > available  # the next second starts an increment it cannot pay


def test_a_worked_decimal_price_rounds_up_half_even_and_down():
    """The README's example: 0.0125 a second plus a connect fee of 0.5, at scale 4."""
    fees = {}
    for rounding in ROUNDINGS:
        rate = Rate("t", "p", "c", "39", connect_fee=5000, rate=125, rate_increment=1, scale=4, rounding=rounding)
        fees[rounding] = (fee(rate, 100), fee(rate, 160), walk_units(rate.schedule(), 10, 14400))
    # 100 s: 1.75; 160 s: 2.5 (a tie); 10 units of money buy 760, 800, 839 s
    assert fees == {"up": (2, 3, 760), "half_even": (2, 2, 800), "down": (1, 2, 839)}
    per_minute = {r: fee(Rate("t", "p", "c", "39", rate=85, rate_increment=60, scale=4, rounding=r), 61)
                  for r in ROUNDINGS}
    assert per_minute == {"up": 1, "half_even": 0, "down": 0}  # 2 minutes at 0.0085: 0.017


def test_a_pricelist_of_scale_0_rates_as_integer_money_and_sends_the_same_seven_numbers():
    plain = Rate("t", "p", "c", "39", 3, 7, 60, 1)
    assert plain.tariff() == [3, 60, 0, 60, 7, 0, -1]
    assert plain.snapshot() == {"pricelist_tag": "p", "carrier_tag": "c", "prefix": "39", "description": None,
                                "connect_fee": 3, "rate": 7, "rate_increment": 60, "interval_start": 1}
    assert [fee(plain, d) for d in (0, 60, 61, 121)] == [3, 3, 10, 17]
    scaled = Rate("t", "p", "c", "39", 3, 7, 60, 1, scale=2, rounding="half_even")
    assert scaled.tariff() == [3, 60, 0, 60, 7, 0, -1, 100, 1]
    assert scaled.snapshot()["scale"] == 2 and scaled.snapshot()["rounding"] == "half_even"


def test_the_exact_range_keeps_room_for_a_budget_above_the_longest_call():
    # a second costs 900 units of 10**-6: the longest call costs 9 * 10**9 units, far inside
    assert limit_error(Rate("t", "p", "c", "1", rate=900, scale=6)) is None
    # the longest call at 2**53 / LONGEST_CALL a second is out at every scale, and the budget's room counts
    per_second = (2**53 - 10**6) // LONGEST_CALL
    assert limit_error(Rate("t", "p", "c", "1", rate=per_second + 1, scale=6)) is not None
    assert limit_error(Rate("t", "p", "c", "1", rate=per_second, scale=0)) is None
    assert limit_error(Rate("t", "p", "c", "1", scale=7)) == ("scale", "scale must be between 0 and 6")
    assert limit_error(Rate("t", "p", "c", "1", scale=2, rounding="nearest"))[0] == "rounding"


@settings(max_examples=200, deadline=None)
@given(items=st.lists(st.builds(
    Rate, tenant=st.just("t"), pricelist_tag=st.just("p"), carrier_tag=st.just("c"), prefix=st.just("1"),
    connect_fee=st.sampled_from([0, 1, 10, 100, 1000]), rate=st.sampled_from([0, 1, 5, 10, 100, 1000]),
    rate_increment=st.sampled_from([1, 6, 60]), maximum_cost=st.none() | st.sampled_from([1, 10, 1000]),
    scale=st.integers(0, 3), rounding=st.sampled_from(ROUNDINGS)), max_size=12))
def test_rates_of_different_scales_are_compared_as_money_by_the_deck_as_by_the_kernel(items):
    keys = deck.price_keys([deck.tariff_of(r) for r in items])
    kernel = [r.order_key()[:5] for r in items]
    pairs = [(i, j) for i in range(len(items)) for j in range(len(items))]
    assert [keys[i] < keys[j] for i, j in pairs] == [kernel[i] < kernel[j] for i, j in pairs]
    assert [keys[i] == keys[j] for i, j in pairs] == [kernel[i] == kernel[j] for i, j in pairs]


def test_a_deck_keeps_every_rates_scale_and_rounding(tmp_path):
    rates = [Rate("t", "p4", "c", "39", 5000, 125, 1, scale=4, rounding="half_even"),
             Rate("t", "p0", "c", "39", 1, 2, 60), Rate("t", "p2", "c", "44", 0, 85, 60, scale=2, rounding="down")]
    built = deck.build(tmp_path / "d", "t", rates, covers=1)
    opened = deck.Deck(built.folder)
    found = {r.pricelist_tag: r for _, group in opened.number_matches("39") + opened.number_matches("44")
             for r in group}
    assert found == {r.pricelist_tag: r for r in rates}
    assert opened.number_matches("39")[0][1][0].pricelist_tag == "p4"  # 0.0125/s is cheaper than 2/60 s


async def test_a_deck_read_from_postgresql_carries_each_pricelists_scale_and_rounding(stack, tmp_path):
    """read_columns (COPY, TextRows) and read_rates join the pricelists: both give every rate its terms."""
    from tests.pricing.test_deck import compare_reads, random_rates, store

    rng = random.Random(8)
    for round_ in range(4):
        await store(stack.database, random_rates(rng, 300))
        for tag in [r["pricelist_tag"] for r in await stack.database.fetch("SELECT pricelist_tag FROM pricelists")]:
            await stack.database.execute("UPDATE pricelists SET scale = $1, rounding = $2 WHERE pricelist_tag = $3",
                                         rng.randint(0, MAX_SCALE), rng.choice(ROUNDINGS), tag)
        await compare_reads(stack.database, tmp_path / str(round_))
    from agent.store import decks

    terms = {r["pricelist_tag"]: (r["scale"], r["rounding"])
             for r in await stack.database.fetch("SELECT pricelist_tag, scale, rounding FROM pricelists")}
    stored = await decks.read_rates(stack.database, "t")
    assert stored and all((r.scale, r.rounding) == terms[r.pricelist_tag] for r in stored)
    assert len({scale for scale, _ in terms.values()}) > 1


# --- the Redis library ---------------------------------------------------------------------------------------------

@PROPERTY
@given(tariff=scaled_rates(), duration=st.integers(0, 200_000),
       available=st.integers(0, 10**12) | st.integers(-10**6, 2**60), share=st.integers(1, 100),
       cap=st.integers(1, 100_000))
def test_lua_walks_every_scaled_schedule_as_the_kernel(lua, tariff, duration, available, share, cap):
    schedule = tariff.schedule()
    assert len(tariff.tariff()) == 9
    answer = lua.execute_command("FCALL", cache.FUNCTIONS["rating_price"], 0, *schedule, duration, available, share, cap)
    usable = available if share >= 100 or available <= 0 else available * share // 100
    assert answer == [walk_fee(schedule, duration), walk_units(schedule, usable, cap)]


def test_lua_walks_twenty_thousand_scaled_schedules_as_the_kernel(lua):
    rng = random.Random(4242)
    cases = []
    for _ in range(20_000):
        schedule = random_scaled_rate(rng).schedule()
        cases.append((schedule, rng.choice([0, 1, rng.randint(0, 200_000), rng.randint(0, LONGEST_CALL)]),
                      rng.choice([0, -5, 1, rng.randint(0, 10**6), rng.randint(0, 2**53 // schedule.unit),
                                  rng.randint(0, 2**53), rng.randint(0, 2**62)]),
                      rng.choice([100, rng.randint(1, 100)]), rng.choice([14400, rng.randint(1, 100_000), LONGEST_CALL])))
    pipe = lua.pipeline(transaction=False)
    for schedule, duration, available, share, cap in cases:
        pipe.execute_command("FCALL", cache.FUNCTIONS["rating_price"], 0, *schedule, duration, available, share, cap)
    for (schedule, duration, available, share, cap), answer in zip(cases, pipe.execute()):
        usable = available if share >= 100 or available <= 0 else available * share // 100
        assert answer == [walk_fee(schedule, duration), walk_units(schedule, usable, cap)], (
            schedule, duration, available, share, cap)


def test_lua_rounds_amounts_near_two_to_the_53_exactly(lua):
    """The largest amounts the import lets through: fmod and the quotient stay exact in doubles."""
    for unit in (10, 100, 10**4, 10**6):
        for code in range(3):
            for amount in (2**53 - unit, 2**53 - unit - 1, 2**53 - 2 * unit + unit // 2, unit * 4503599627 + unit // 2):
                schedule = Schedule(amount, 1, 0, 1, 0, 0, -1, unit, code)
                assert lua.execute_command("FCALL", cache.FUNCTIONS["rating_price"], 0, *schedule, 0, 0, 100, 1)[0] == \
                    walk_fee(schedule, 0), (amount, unit, code)


def test_five_thousand_scaled_calls_in_redis_decide_reserve_and_charge_as_the_kernel(lua):
    """The real rating_authorize and rating_finish (reservations, linked accounts, credit limits, the share,
    concurrency limits, the cap, capped durations) on parties priced at scaled tariffs, some of them mixed
    with integer-money ones."""
    rng = random.Random(1508)
    for _ in range(5000):
        call = random_call(rng)
        for party in call["parties"]:
            if party["rate"] is not None and rng.random() < 0.8:
                party["rate"] = random_scaled_rate(rng)
        check_call(lua, call)


# --- end to end ----------------------------------------------------------------------------------------------------

def decimal_catalog() -> dict:
    """One scale-4 pricelist per rounding, each with 0.5 per call and 0.0125 a second to 39, one account each."""
    return {
        "carriers": [{"carrier_tag": "c1", "host": "10.0.0.1", "port": 5060, "protocol": "UDP"}],
        "pricelists": [{"pricelist_tag": f"p_{r}", "scale": 4, "rounding": r} for r in ROUNDINGS],
        "rates": [{"pricelist_tag": f"p_{r}", "carrier_tag": "c1", "prefix": "39", "connect_fee": "0.5",
                   "rate": "0.0125", "rate_increment": 1} for r in ROUNDINGS],
        "accounts": [{"account_tag": f"a_{r}", "type": "PREPAID", "balance": 10, "pricelist_tags": [f"p_{r}"]}
                     for r in ROUNDINGS],
    }


@pytest.mark.parametrize("rounding,units,fees", [("up", 760, (2, 3)), ("half_even", 800, (2, 2)),
                                                 ("down", 839, (1, 2))])
async def test_a_call_on_a_scale_4_pricelist_is_charged_the_exactly_rounded_fee(agent, stack, rounding, units, fees):
    client = await agent(decimal_catalog())
    account = f"a_{rounding}"
    balance = 10
    for number, (seconds, charged) in enumerate(zip((100, 160), fees)):
        tag = f"call-{number}"
        auth = await post(client, "authorization", transaction_tag=tag, account_tag=account,
                          source="sip:10.0.0.1:5060", destination="39040123123")
        assert auth["authorized"] is True
        if number == 0:
            assert auth["max_available_units"] == units  # the most seconds 10 pay once rounded
        await post(client, "begin", transaction_tag=tag, account_tag=account, source="sip:10.0.0.1:5060",
                   destination="39040123123", timestamp_begin=at(0))
        await post(client, "end", transaction_tag=tag, account_tag=account, timestamp_end=at(seconds))
        balance -= charged
        assert await stack.balance(account) == balance
        record = (await records(stack, client, tag))[account]
        assert record["fee"] == charged and record["duration"] == seconds
        assert record["destination_rate"]["scale"] == 4 and record["destination_rate"]["rounding"] == rounding
        assert (record["destination_rate"]["connect_fee"], record["destination_rate"]["rate"]) == (5000, 125)
    assert (await stack.account_state(account))["reserved"] == 0

"""The rate formulas: `fee`, `max_units` and `duration_seconds` (spec 2.5, 2.6 and the fixes #14-#17, #19)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from fractions import Fraction

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from agent.pricing.rate import (LONGEST_CALL, MONEY_LIMIT, Rate, best_first, duration_seconds, fee, limit_error,
                               max_units)

CAP = 14400
BEGIN = datetime(2024, 1, 1, 10, 0, 0, tzinfo=timezone.utc)


def rate(connect_fee=0, rate=0, rate_increment=1, interval_start=0, **extra) -> Rate:
    return Rate("t", "pl", "c", "39", connect_fee, rate, rate_increment, interval_start, **extra)


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def seconds_between(begin: datetime, end: datetime) -> int:
    return duration_seconds(ms(begin), ms(end))


# --- fee: spec 2.5 reference table -------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("connect_fee", "per_increment", "increment", "interval_start", "call", "expected"),
    [
        pytest.param(0, 1, 1, 0, timedelta(seconds=90), 90, id="per-second"),
        pytest.param(0, 1, 1, 30, timedelta(seconds=90), 60, id="30-free-seconds"),
        pytest.param(0, 100, 60, 0, timedelta(seconds=90), 200, id="per-minute-started-minutes"),
        pytest.param(0, 100, 60, 1, timedelta(seconds=90), 100, id="per-minute-first-minute-free"),
        pytest.param(100, 100, 60, 0, timedelta(seconds=90), 300, id="connect-fee-plus-minutes"),
        pytest.param(0, 100, 60, 2, timedelta(seconds=30), 0, id="30s-call-inside-free-increments"),
        pytest.param(0, 100, 0, 0, timedelta(seconds=-10), 0, id="end-before-begin-no-connect-fee"),
        pytest.param(100, 100, 0, 0, timedelta(seconds=-10), 100, id="end-before-begin-still-charges-connect-fee"),
        pytest.param(100, 100, 60, 0, timedelta(0), 100, id="zero-duration-charges-connect-fee"),
        pytest.param(0, 1, 1, 0, timedelta(days=1, seconds=10), 86410, id="days-are-billed"),
        pytest.param(0, 1, 1, 0, timedelta(seconds=60, milliseconds=500), 61, id="started-second-counts"),
    ],
)
def test_fee_matches_the_reference_table_with_fixed_zero_duration_and_days(
    connect_fee, per_increment, increment, interval_start, call, expected
):
    duration = seconds_between(BEGIN, BEGIN + call)
    assert fee(rate(connect_fee, per_increment, increment, interval_start), duration) == expected


def test_fee_charges_every_started_increment():
    per_minute = rate(0, 100, 60, 0)
    assert fee(per_minute, 1) == 100
    assert fee(per_minute, 60) == 100
    assert fee(per_minute, 61) == 200
    assert fee(per_minute, 120) == 200


def test_fee_for_zero_duration_is_the_connect_fee_only():
    assert fee(rate(25, 7, 60, 0), 0) == 25
    assert fee(rate(0, 7, 60, 0), 0) == 0


def test_fee_treats_negative_duration_as_zero():
    assert fee(rate(25, 7, 1, 0), -30) == 25


def test_fee_interval_start_counts_free_increments_not_seconds():
    # 2 free increments of 60 s = 120 free seconds; a 121 s call pays one increment.
    per_minute = rate(0, 10, 60, 2)
    assert fee(per_minute, 120) == 0
    assert fee(per_minute, 121) == 10


def test_fee_with_zero_or_missing_increment_bills_per_second():
    assert fee(rate(0, 3, 0, 0), 10) == 30
    assert fee(rate(0, 3, None, 0), 10) == 30
    assert rate(rate_increment=0).increment == 1
    assert rate(rate_increment=None).increment == 1
    assert rate(rate_increment=-5).increment == 1


def test_fee_ignores_negative_interval_start():
    assert fee(rate(0, 1, 1, -10), 5) == 5


def test_fee_connect_fee_is_charged_even_when_the_whole_call_is_free_time():
    assert fee(rate(50, 10, 60, 5), 30) == 50


# --- max_units: spec 2.6 reference values with our semantics ------------------------------------------------------

@pytest.mark.parametrize(
    ("available", "tariff", "expected"),
    [
        pytest.param(50, (0, 1, 1, 60), 110, id="free-increments-on-top-of-paid"),
        pytest.param(0, (0, 1, 1, 60), 0, id="zero-balance-refused-despite-free-time"),
        pytest.param(60, (10, 1, 1, 0), 50, id="connect-fee-deducted-first"),
        pytest.param(0, (0, 0, 1, 60), CAP, id="free-rate-gets-the-cap"),
        pytest.param(100, (0, 20, 60, 0), 300, id="tutorial"),
        pytest.param(10, (0, 20, 60, 0), 0, id="balance-below-one-increment-refused"),
        pytest.param(100, (10, 20, 60, 1), 300, id="interval-start-is-free-increments-bug14-fixed"),
        pytest.param(5, (10, 0, 1, 0), 0, id="connect-fee-not-covered-refused-bug15-fixed"),
        pytest.param(1_000_000, (0, 1, 1, 0), CAP, id="large-balance-capped"),
    ],
)
def test_max_units_matches_the_reference_values_with_fixed_semantics(available, tariff, expected):
    assert max_units(rate(*tariff), available, CAP) == expected


def test_free_increments_are_granted_on_top_of_paid_ones():
    # 1 paid minute + 2 free minutes.
    assert max_units(rate(0, 10, 60, 2), 10, CAP) == 180


def test_free_increments_are_granted_even_when_the_balance_pays_no_increment():
    # Bug #16 fixed: the balance covers the connect fee but no paid increment; the free time is still granted.
    assert max_units(rate(10, 20, 60, 1), 10, CAP) == 60
    assert max_units(rate(0, 20, 60, 2), 5, CAP) == 120


def test_max_units_refuses_a_non_free_rate_with_a_non_positive_balance():
    assert max_units(rate(0, 1, 1, 0), 0, CAP) == 0
    assert max_units(rate(0, 1, 1, 0), -100, CAP) == 0
    assert max_units(rate(5, 0, 1, 0), 0, CAP) == 0


def test_max_units_of_a_free_rate_is_the_cap_whatever_the_balance():
    assert max_units(rate(0, 0, 60, 0), -1000, CAP) == CAP
    assert max_units(rate(0, 0, 60, 0), 0, 777) == 777


def test_max_units_of_a_rate_without_per_increment_price_is_the_cap_once_the_connect_fee_is_covered():
    assert max_units(rate(10, 0, 1, 0), 10, CAP) == CAP
    assert max_units(rate(10, 0, 1, 0), 9, CAP) == 0


def test_max_units_is_a_whole_number_of_increments():
    assert max_units(rate(0, 20, 60, 0), 119, CAP) == 300  # 5 paid minutes, the 19 left buy nothing
    assert max_units(rate(0, 7, 30, 0), 20, CAP) == 60


def test_max_units_never_exceeds_the_cap():
    assert max_units(rate(0, 1, 1, 0), 10_000, 3600) == 3600
    assert max_units(rate(0, 1, 60, 100), 1, 3600) == 3600


def test_max_units_ignores_negative_interval_start():
    assert max_units(rate(0, 1, 1, -30), 10, CAP) == 10


# --- duration_seconds ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("begin_ms", "end_ms", "expected"),
    [
        pytest.param(0, 90_000, 90, id="whole-seconds"),
        pytest.param(0, 1, 1, id="one-millisecond-is-a-started-second"),
        pytest.param(0, 60_500, 61, id="fraction-rounds-up"),
        pytest.param(22_700, 23_900, 2, id="fraction-spanning-two-seconds"),
        pytest.param(0, 86_410_000, 86410, id="days-included"),
        pytest.param(0, 3 * 86_400_000, 259200, id="several-days"),
        pytest.param(5_000, 5_000, 0, id="equal-instants"),
        pytest.param(5_000, 4_000, 0, id="end-before-begin"),
    ],
)
def test_duration_seconds_counts_started_seconds_with_days_and_zero_when_not_after(begin_ms, end_ms, expected):
    assert duration_seconds(begin_ms, end_ms) == expected


# --- Rate helpers -------------------------------------------------------------------------------------------------

def test_rate_is_effective_from_start_inclusive_to_end_exclusive():
    start, end = BEGIN, BEGIN + timedelta(hours=1)
    windowed = rate(0, 1, datetime_start=start, datetime_end=end)
    assert windowed.effective_at(start)
    assert windowed.effective_at(end - timedelta(microseconds=1))
    assert not windowed.effective_at(start - timedelta(microseconds=1))
    assert not windowed.effective_at(end)
    assert rate(0, 1).effective_at(BEGIN)


def test_price_per_second_divides_the_rate_by_the_increment():
    assert rate(0, 100, 60).price_per_second() == Fraction(5, 3)
    assert rate(0, 3, 0).price_per_second() == 3


def test_tariff_is_the_schedule_the_redis_library_walks():
    # [connect_fee, block seconds, block price, increment, increment price, minimum, cap (-1: none)]
    assert rate(10, 20, 0, -3).tariff() == [10, 1, 20, 1, 20, 0, -1]
    assert rate(10, 20, 60, 2).tariff() == [10, 120, 0, 60, 20, 0, -1]  # two free increments: a free block
    assert rate(10, 2, 6, 0, initial_increment=30).tariff() == [10, 30, 10, 6, 2, 0, -1]
    assert rate(0, 2, 6, 1, initial_increment=30, minimum_duration=60, maximum_cost=500).tariff() == \
        [0, 30, 0, 6, 2, 60, 500]
    assert rate(0, 1, 1, 2**31 - 1, initial_increment=2**31 - 1).schedule().block == LONGEST_CALL


def test_snapshot_keeps_the_stored_rate_fields():
    snap = rate(1, 2, 60, 3, description="Italy").snapshot()
    assert snap == {
        "pricelist_tag": "pl", "carrier_tag": "c", "prefix": "39", "description": "Italy",
        "connect_fee": 1, "rate": 2, "rate_increment": 60, "interval_start": 3,
    }
    assert rate(1, 2, 6, initial_increment=30, minimum_duration=60, maximum_cost=9).snapshot() == {
        "pricelist_tag": "pl", "carrier_tag": "c", "prefix": "39", "description": None,
        "connect_fee": 1, "rate": 2, "rate_increment": 6, "interval_start": 0,
        "initial_increment": 30, "minimum_duration": 60, "maximum_cost": 9,
    }


def test_a_rate_is_free_only_without_connect_fee_and_per_increment_price():
    assert rate(0, 0).is_free
    assert not rate(1, 0).is_free
    assert not rate(0, 1).is_free


# --- properties ---------------------------------------------------------------------------------------------------

rates = st.builds(
    rate,
    connect_fee=st.integers(0, 500),
    rate=st.integers(0, 500),
    rate_increment=st.sampled_from([0, 1, 6, 30, 60]) | st.integers(1, 120),
    interval_start=st.integers(0, 20),
)
paying_rates = rates.filter(lambda r: not r.is_free)
balances = st.integers(-1000, 200_000)
caps = st.integers(0, 20_000)
PROPERTY = settings(max_examples=300, deadline=None)


@PROPERTY
@given(rates, st.integers(0, 100_000), st.integers(0, 100_000))
def test_fee_is_monotone_non_decreasing_in_duration(tariff, a, b):
    shorter, longer = sorted((a, b))
    assert fee(tariff, shorter) <= fee(tariff, longer)


@PROPERTY
@given(rates, st.integers(0, 100_000))
def test_fee_is_at_least_the_connect_fee(tariff, duration):
    assert fee(tariff, duration) >= tariff.connect_fee


@PROPERTY
@given(paying_rates, balances, caps)
def test_granted_units_never_cost_more_than_the_balance(tariff, available, cap):
    units = max_units(tariff, available, cap)
    assume(units > 0)
    assert fee(tariff, units) <= available


@PROPERTY
@given(paying_rates, balances)
def test_one_more_second_than_the_granted_units_costs_more_than_the_balance(tariff, available):
    assume(tariff.rate > 0)
    units = max_units(tariff, available, 10**9)
    assume(units > 0)
    assert fee(tariff, units + 1) > available


@PROPERTY
@given(rates, balances, balances, caps)
def test_max_units_is_monotone_in_the_available_balance(tariff, a, b, cap):
    poorer, richer = sorted((a, b))
    assert max_units(tariff, poorer, cap) <= max_units(tariff, richer, cap)


@PROPERTY
@given(rates, balances, caps)
def test_max_units_is_between_zero_and_the_cap(tariff, available, cap):
    assert 0 <= max_units(tariff, available, cap) <= cap


@PROPERTY
@given(rates, balances, caps)
def test_max_units_is_a_multiple_of_the_increment_unless_capped(tariff, available, cap):
    units = max_units(tariff, available, cap)
    if units < cap:
        assert units % tariff.increment == 0


@PROPERTY
@given(paying_rates, balances, caps)
def test_max_units_refuses_exactly_when_the_balance_cannot_pay_the_connect_fee_or_any_time(tariff, available, cap):
    assume(cap > 0)
    refused = max_units(tariff, available, cap) == 0
    misses_connect_fee = available <= 0 or available < tariff.connect_fee
    buys_no_time = tariff.interval_start == 0 and tariff.rate > 0 and available - tariff.connect_fee < tariff.rate
    assert refused == (misses_connect_fee or buys_no_time)


@PROPERTY
@given(st.integers(0, 10**13), st.integers(-10**9, 10**9))
def test_duration_seconds_is_the_ceiling_of_the_elapsed_seconds(begin_ms, delta_ms):
    seconds = duration_seconds(begin_ms, begin_ms + delta_ms)
    if delta_ms <= 0:
        assert seconds == 0
    else:
        assert (seconds - 1) * 1000 < delta_ms <= seconds * 1000


# --- billing schemes (README "How calls are rated": the worked examples) ------------------------------------------

@pytest.mark.parametrize(
    ("scheme", "duration", "expected"),
    [
        # 60/60 at 6 per minute (rate 6 per 60 s): every started minute
        pytest.param(dict(rate=6, rate_increment=60), 61, 12, id="60/60"),
        pytest.param(dict(rate=6, rate_increment=60), 1, 6, id="60/60-one-second"),
        # 30/6 at 1 per 6 s: 30 s first (5 increments' price), then 6 s steps
        pytest.param(dict(rate=1, rate_increment=6, initial_increment=30), 10, 5, id="30/6-short"),
        pytest.param(dict(rate=1, rate_increment=6, initial_increment=30), 31, 6, id="30/6-past-the-block"),
        pytest.param(dict(rate=1, rate_increment=6, initial_increment=30), 61, 11, id="30/6"),
        # 1/1 at 1 per second
        pytest.param(dict(rate=1, rate_increment=1), 61, 61, id="1/1"),
        # 60/1 at 1 per second: a started first minute is a whole one
        pytest.param(dict(rate=1, rate_increment=1, initial_increment=60), 10, 60, id="60/1-short"),
        pytest.param(dict(rate=1, rate_increment=1, initial_increment=60), 61, 61, id="60/1"),
        # a minimum duration of 60 s on 1/1: a 10 s call is billed 60 s, a longer one as it is
        pytest.param(dict(rate=1, rate_increment=1, minimum_duration=60), 10, 60, id="minimum-60s"),
        pytest.param(dict(rate=1, rate_increment=1, minimum_duration=60), 0, 60, id="minimum-0s-answered"),
        pytest.param(dict(rate=1, rate_increment=1, minimum_duration=60), 90, 90, id="minimum-longer-call"),
        # the connect fee comes on top; the cap bounds the total, connect fee included
        pytest.param(dict(connect_fee=10, rate=1, rate_increment=6, initial_increment=30), 61, 21, id="30/6+fee"),
        pytest.param(dict(connect_fee=10, rate=1, rate_increment=1, maximum_cost=100), 3600, 100, id="capped"),
        pytest.param(dict(connect_fee=10, rate=1, rate_increment=1, maximum_cost=100), 50, 60, id="below-cap"),
        # free increments count the block first: 30/6 with 1 free increment = the first 30 s free
        pytest.param(dict(rate=1, rate_increment=6, initial_increment=30, interval_start=1), 30, 0, id="30/6-free-block"),
        pytest.param(dict(rate=1, rate_increment=6, initial_increment=30, interval_start=2), 37, 1, id="30/6-2-free"),
        # the minimum is billed first, then the free increments apply to it
        pytest.param(dict(rate=1, rate_increment=60, interval_start=1, minimum_duration=120), 10, 1, id="min-then-free"),
    ],
)
def test_billing_schemes_price_as_documented(scheme, duration, expected):
    assert fee(Rate("t", "pl", "c", "39", **scheme), duration) == expected


def test_units_of_a_scheme_end_where_the_balance_stops_paying():
    thirty_six = rate(0, 1, 6, initial_increment=30)
    assert max_units(thirty_six, 4, CAP) == 0  # the block costs 5
    assert max_units(thirty_six, 5, CAP) == 30
    assert max_units(thirty_six, 7, CAP) == 42
    minimum = rate(0, 1, 1, minimum_duration=60)
    assert max_units(minimum, 59, CAP) == 0  # an answered call costs at least 60
    assert max_units(minimum, 60, CAP) == 60
    capped = rate(10, 1, 1, maximum_cost=100)
    assert max_units(capped, 99, CAP) == 89
    assert max_units(capped, 100, CAP) == CAP  # the cap pays any call
    assert max_units(rate(5, 1, 1, maximum_cost=0), 0, CAP) == CAP  # a cap of 0 is a free rate


def test_a_rate_whose_amounts_could_leave_the_exact_range_of_doubles_is_named():
    assert limit_error(rate(0, 10**8 - 1, 1, initial_increment=10**7 - 1)) is None
    assert limit_error(rate(MONEY_LIMIT, 0, 1)) == ("connect_fee", "connect_fee must be below 2**53")
    assert limit_error(rate(0, 10**9, 1))[0] == "rate"  # 10**9 per second over LONGEST_CALL seconds
    assert limit_error(rate(0, 10**9, 60)) is None
    assert limit_error(rate(0, 1, 1, maximum_cost=MONEY_LIMIT))[0] == "maximum_cost"


def canyan_fee(tariff: Rate, duration: int) -> int:
    """Canyan's formula, what every rate without the new fields must still charge."""
    increments = -(-max(duration, 0) // tariff.increment)
    return tariff.connect_fee + max(0, increments - max(tariff.interval_start, 0)) * tariff.rate


def canyan_units(tariff: Rate, available: int, cap: int) -> int:
    if tariff.is_free:
        return cap
    if available <= 0 or available < tariff.connect_fee:
        return 0
    if tariff.rate == 0:
        return cap
    return min((max(tariff.interval_start, 0) + (available - tariff.connect_fee) // tariff.rate) * tariff.increment,
               cap)


schemes = rates.flatmap(lambda r: st.builds(
    lambda first, minimum, most: Rate(r.tenant, r.pricelist_tag, r.carrier_tag, r.prefix, r.connect_fee, r.rate,
                                      r.rate_increment, r.interval_start, initial_increment=first,
                                      minimum_duration=minimum, maximum_cost=most),
    st.none() | st.integers(1, 10).map(lambda k: k * r.increment),
    st.sampled_from([0, 0, 1, 30, 60]) | st.integers(0, 600),
    st.none() | st.integers(0, 5000)))


@PROPERTY
@given(rates, st.integers(-10, 100_000), balances, caps)
def test_a_rate_without_the_new_fields_prices_exactly_as_canyan(tariff, duration, available, cap):
    assert fee(tariff, duration) == canyan_fee(tariff, duration)
    assert max_units(tariff, available, cap) == canyan_units(tariff, available, cap)


@settings(max_examples=1500, deadline=None)
@given(schemes, st.integers(0, 50_000), st.integers(0, 50_000))
def test_the_fee_of_any_scheme_never_decreases_with_duration(tariff, a, b):
    shorter, longer = sorted((a, b))
    assert fee(tariff, shorter) <= fee(tariff, longer)


@settings(max_examples=1500, deadline=None)
@given(schemes, balances, caps)
def test_units_of_any_scheme_never_cost_more_than_the_balance_and_one_second_more_would(tariff, available, cap):
    units = max_units(tariff, available, cap)
    assert 0 <= units <= cap
    if units > 0 and not tariff.is_free:
        assert fee(tariff, units) <= available
    if 0 < units < cap:  # the longest affordable call: one more second costs more than the balance
        assert fee(tariff, units + 1) > available
    if units == 0 and cap > 0 and not tariff.is_free:  # refused: no answered call of any length is affordable
        assert available <= 0 or fee(tariff, 1) > available or fee(tariff, 0) > available


@settings(max_examples=500, deadline=None)
@given(schemes, st.integers(0, 20_000))
def test_the_fee_is_the_connect_fee_plus_a_price_per_started_increment_bounded_by_the_cap(tariff, duration):
    amount = fee(tariff, duration)
    if tariff.maximum_cost is not None:
        assert amount <= tariff.maximum_cost
        uncapped = fee(Rate(**{**{f: getattr(tariff, f) for f in tariff.__slots__}, "maximum_cost": None}), duration)
        assert amount == min(uncapped, tariff.maximum_cost)
    else:
        assert amount >= tariff.connect_fee


competing = st.builds(  # rates of one key that tie on leading fields often, at every money scale
    Rate, tenant=st.just("t"), pricelist_tag=st.sampled_from(["p1", "p2"]), carrier_tag=st.sampled_from([None, "c1", "c2"]),
    prefix=st.sampled_from(["39", "+39"]), connect_fee=st.integers(0, 3) | st.integers(0, 10**9),
    rate=st.integers(0, 4) | st.integers(0, 10**12), rate_increment=st.sampled_from([0, 1, 6, 60]) | st.integers(1, 10**7),
    interval_start=st.integers(0, 2), initial_increment=st.sampled_from([None, 60, 120]),
    minimum_duration=st.sampled_from([0, 30]), maximum_cost=st.sampled_from([None, 0, 5]) | st.integers(0, 10**12),
    scale=st.integers(0, 6), source_prefix=st.sampled_from(["", "44"]), weekdays=st.sampled_from([0, 31]),
    time_start=st.sampled_from([None, 3600]), time_end=st.sampled_from([None, 7200]))


@settings(max_examples=500, deadline=None)
@given(st.lists(competing, max_size=12))
def test_best_first_orders_a_group_exactly_as_the_order_key_does(group):
    assert best_first(group) == tuple(sorted(group, key=Rate.order_key))

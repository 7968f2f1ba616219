"""Time windows (peak / off-peak / weekend): the window columns, which rate covers a moment (DST included),
routing at the call's moment, and the timeline of a call crossing a boundary, priced segment by segment.

The walks of a timeline are held to the Redis library's in tests/cache/test_library.py; here they are held
to the rule itself: the fee of a call split at any window boundary is the sum of its segments, each priced
by the plain walk of its own schedule (rate.walk_amount), and the usual properties of fees and grants.
"""

from __future__ import annotations

import random
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.pricing import deck, routing
from agent.pricing.account import Account
from agent.pricing.carrier import Carrier
from agent.pricing.catalog import Catalog
from agent.pricing.decision import Held, Standing, answered, charges, decide
from agent.pricing.plan import plan_call
from agent.pricing.quote import explain
from agent.pricing.rate import (DAY, Piece, Rate, Schedule, WindowError, clock_of, clock_text, in_force, money,
                                tariff_numbers, timeline, walk_amount, walk_amount_at, walk_fee, walk_fee_at,
                                walk_units_at, weekdays_of, weekdays_text, window_of)
from agent.pricing.table import RateTable

ROME = ZoneInfo("Europe/Rome")


def rome(*args) -> datetime:
    return datetime(*args, tzinfo=ROME)


def windowed(prefix: str, price: int, days: str | None, start: str | None, end: str | None, zone: str = "Europe/Rome",
             **extra) -> Rate:
    bits, since, until = window_of(days, start, end)
    return Rate("t", extra.pop("pricelist", "p1"), extra.pop("carrier", "c1"), prefix, extra.pop("connect_fee", 0),
                price, extra.pop("rate_increment", 60), weekdays=bits, time_start=since or None,
                time_end=None if until == DAY else until, timezone=zone, **extra)


# --- the columns ---------------------------------------------------------------------------------------------------

def test_weekdays_and_times_are_read_and_written_back_canonically():
    assert weekdays_of("mon-fri") == 0b0011111 and weekdays_text(0b0011111) == "mon-fri"
    assert weekdays_text(weekdays_of("SAT, sun")) == "sat,sun"
    assert weekdays_text(weekdays_of("fri-mon")) == "mon,fri-sun"  # a range may wrap over the week's end
    assert weekdays_of("") == weekdays_of(None) == 0
    assert window_of("mon-sun", "00:00", "24:00") == (0, 0, DAY)  # the whole week: no window
    assert window_of(None, "22:00", "00:00") == (0, 22 * 3600, DAY)  # 00:00 after a start: midnight
    assert window_of(None, "22:00", "06:00") == (0, 22 * 3600, 6 * 3600)  # wraps
    assert clock_of("18:30:15", "time_end") == 18 * 3600 + 30 * 60 + 15 and clock_text(66615) == "18:30:15"
    for days, start, end, column in (("funday", None, None, "weekdays"), ("mon-", None, None, "weekdays"),
                                     (None, "8:00", None, "time_start"), (None, "25:00", None, "time_start"),
                                     (None, "24:00", None, "time_start"), (None, "12:60", None, "time_start"),
                                     (None, "08:00", "08:00", "time_end"), (None, None, "00:00", "time_end")):
        with pytest.raises(WindowError) as raised:
            window_of(days, start, end)
        assert raised.value.column == column and column in str(raised.value)


def test_a_window_covers_its_local_weekdays_and_hours_end_exclusive_and_wraps_over_midnight():
    peak = windowed("39", 10, "mon-fri", "08:00", "18:00")
    assert peak.covers(rome(2026, 12, 1, 8, 0))  # a Tuesday
    assert not peak.covers(rome(2026, 12, 1, 7, 59, 59))
    assert not peak.covers(rome(2026, 12, 1, 18, 0))  # the end is exclusive
    assert not peak.covers(rome(2026, 12, 5, 12, 0))  # a Saturday
    assert peak.covers(datetime(2026, 12, 1, 16, 59, 59, tzinfo=timezone.utc))  # 17:59:59 in Rome (UTC+1)
    night = windowed("39", 1, "mon-fri", "22:00", "06:00")
    assert night.covers(rome(2026, 12, 4, 23, 0))  # Friday night
    assert not night.covers(rome(2026, 12, 5, 1, 0))  # Saturday's early hours: judged as Saturday
    assert night.covers(rome(2026, 12, 7, 5, 59, 59))  # Monday's early hours
    assert not windowed("39", 1, "sat,sun", None, None).covers(rome(2026, 12, 7, 0, 0))


def test_windows_follow_daylight_saving_time_in_the_pricelists_zone():
    peak = windowed("39", 10, None, "08:00", "18:00")
    winter, summer = rome(2026, 1, 15, 8, 0), rome(2026, 7, 15, 8, 0)
    assert winter.astimezone(timezone.utc).hour == 7 and summer.astimezone(timezone.utc).hour == 6
    assert peak.covers(winter) and peak.covers(summer)
    day = int(rome(2026, 3, 28, 12, 0).timestamp())
    starts = [datetime.fromtimestamp(m, timezone.utc) for m in peak.boundaries(day, day + 2 * 86400)]
    # Saturday 18:00 (+1), Sunday 08:00 and 18:00 (+2, summer time from 03:00), Monday 08:00
    assert [m.astimezone(ROME).strftime("%a %H:%M") for m in starts] == ["Sat 18:00", "Sun 08:00", "Sun 18:00",
                                                                       "Mon 08:00"]
    # a window starting at a local time the change skips starts at the change itself (03:00 local)
    early = windowed("39", 1, None, "02:30", "03:30")
    marks = early.boundaries(day, day + 86400)
    change = int(datetime(2026, 3, 29, 1, 0, tzinfo=timezone.utc).timestamp())
    assert change in marks and early.covers(datetime.fromtimestamp(change, timezone.utc))
    assert not early.covers(datetime.fromtimestamp(change - 1, timezone.utc))
    # every flip of `covers` over the week of the change is one of the boundaries
    for rate in (peak, early, windowed("39", 1, "sat,sun", None, None), windowed("39", 1, "fri", "22:00", "06:00")):
        begin = int(rome(2026, 3, 26, 0, 0).timestamp())
        found = set(rate.boundaries(begin, begin + 7 * 86400))
        covered = rate.covers(datetime.fromtimestamp(begin, timezone.utc))
        for second in range(begin + 60, begin + 7 * 86400, 60):
            now = rate.covers(datetime.fromtimestamp(second, timezone.utc))
            if now != covered:
                assert any(second - 60 < mark <= second for mark in found), datetime.fromtimestamp(second, ROME)
            covered = now


# --- routing at the call's moment ---------------------------------------------------------------------------------

ACCOUNT = Account("t", "a", pricelist_tags=("p1",))
CARRIERS = [Carrier("t", "c1", "h1"), Carrier("t", "c2", "h2")]
BASE = Rate("t", "p1", "c1", "39", 0, 2, 60)
PEAK = windowed("39", 10, "mon-fri", "08:00", "18:00")
WEEKEND = windowed("39", 1, "sat,sun", None, None)
DECK = [BASE, PEAK, WEEKEND, windowed("3906", 5, "mon-fri", "08:00", "18:00", carrier="c2"),
        Rate("t", "p1", "c2", "39", 0, 3, 60)]


@pytest.fixture(params=["memory", "deck"])
def windows(request, tmp_path_factory) -> Catalog:
    if request.param == "memory":
        return Catalog.of([ACCOUNT], CARRIERS, DECK)
    folder = tmp_path_factory.mktemp("deck") / "1"
    deck.build(folder, "t", DECK, 1)
    parts = Catalog.of([ACCOUNT], CARRIERS)
    return Catalog(parts.accounts, parts.carriers, {"t": RateTable().freeze().over(deck.Deck(folder), {})})


def test_the_most_specific_prefix_wins_then_the_rate_whose_window_covers_the_moment(windows):
    def price(moment, destination="39021234"):
        return routing.destination_rate(windows, ACCOUNT, destination, moment)

    assert windows.table("t").dated
    assert price(rome(2026, 12, 1, 12, 0)) == PEAK  # a windowed rate covering the moment beats the base rate
    assert price(rome(2026, 12, 1, 19, 0)) == BASE
    assert price(rome(2026, 12, 5, 12, 0)) == WEEKEND
    assert price(rome(2026, 12, 1, 12, 0), "39061234").prefix == "3906"  # the longer prefix, in its window
    assert price(rome(2026, 12, 1, 19, 0), "39061234") == BASE  # out of it: the shorter prefix prices
    # carriers: each at its own best rate at the moment (c1 at its peak 10, c2 at its 3)
    carriers = routing.least_cost_routing(windows, ACCOUNT, "39021234", rome(2026, 12, 1, 12, 0))
    assert [c.carrier_tag for c in carriers] == ["c2", "c1"]
    assert [c.carrier_tag for c in routing.least_cost_routing(windows, ACCOUNT, "39021234",
                                                              rome(2026, 12, 1, 19, 0))] == ["c1", "c2"]


def test_a_call_crossing_a_boundary_gets_the_timeline_of_the_rates_it_may_cross(windows):
    at = rome(2026, 12, 4, 17, 58)  # a Friday, two minutes before the end of the peak
    plan = plan_call(windows, "t", "a", None, "39021234", at, horizon=8 * 3600)
    party = plan.parties[0]
    assert party.rate == PEAK
    start = int(at.timestamp())
    assert [piece.start for piece in party.timeline] == [start, start + 120, start + 120 + 6 * 3600]
    # peak until 18:00, the base rate until Saturday 00:00, then the weekend rate
    assert [piece.schedule.increment_price for piece in party.timeline] == [10, 2, 1]
    assert party.tariff is party.timeline
    # three minutes answered at once: two peak minutes and one off-peak (README, "How calls are rated")
    assert walk_fee_at(party.timeline, 180, start * 1000) == 22
    assert charges([party.timeline], 3600, 180, start * 1000) == (22,)
    # answered 90 s later, the same three minutes: 30 s of peak (a whole minute, it starts at 17:59:30), two off
    assert walk_fee_at(party.timeline, 180, (start + 90) * 1000) == 10 + 2 + 2
    # the grant walks the segments: 25 pays the two peak minutes and two off-peak ones
    assert decide([Standing(25, schedule=party.timeline)], 100, 14400, at=start * 1000).units == 240
    # without a horizon (quotes of a single moment) or within one window: no timeline
    assert plan_call(windows, "t", "a", None, "39021234", at).parties[0].timeline is None
    assert plan_call(windows, "t", "a", None, "39021234", rome(2026, 12, 1, 9, 0),
                     horizon=3600).parties[0].timeline is None


def test_a_deck_without_windows_plans_and_sends_exactly_the_schedules_of_today():
    plain = Catalog.of([ACCOUNT], CARRIERS, [BASE, Rate("t", "p1", "c2", "39", 0, 3, 60)])
    assert not plain.table("t").dated
    party = plan_call(plain, "t", "a", None, "39021234", rome(2026, 12, 4, 17, 58), horizon=4 * 3600).parties[0]
    assert party.timeline is None and tariff_numbers(party.tariff) == BASE.tariff() == [0, 60, 2, 60, 2, 0, -1]


# --- the walks of a timeline ----------------------------------------------------------------------------------------

def schedules():
    return st.builds(
        lambda fee, price, increment, blocks, free, minimum, most: Rate(
            "t", "p", "c", "39", fee, price, increment, free,
            initial_increment=None if blocks is None else blocks * increment, minimum_duration=minimum,
            maximum_cost=most).schedule(),
        st.integers(0, 50), st.integers(0, 500), st.sampled_from([1, 6, 30, 60]), st.none() | st.integers(1, 5),
        st.sampled_from([0, 0, 1, 3]), st.sampled_from([0, 0, 30, 90]), st.none() | st.none() | st.integers(0, 5000))


T0 = 1_800_000_000
lines = st.builds(
    lambda first, later, offsets: timeline_of(
        [(T0, first)] + [(T0 + o, s) for o, s in zip(sorted(set(offsets)), later)]),
    schedules(), st.lists(schedules(), max_size=4), st.lists(st.integers(1, 2000), max_size=4))


def timeline_of(pieces) -> tuple[Piece, ...]:
    return tuple(Piece(start, schedule) for start, schedule in pieces)


def segments(line, duration: int, start_ms: int) -> int:
    """The rule: connect fee + each segment's seconds priced by the plain walk of its own schedule, minimum
    and cap of the schedule at the answer."""
    pieces = in_force(line, start_ms)
    head = pieces[0][1]
    billed = max(duration, head.minimum)
    total = head.connect_fee
    for index, (begin, schedule) in enumerate(pieces):
        end = min(billed, pieces[index + 1][0]) if index + 1 < len(pieces) else billed
        if begin < end:
            plain = schedule._replace(connect_fee=0, minimum=0, cap=-1)
            total += walk_amount(plain, end) - walk_amount(plain, begin)
    return min(total, head.cap) if head.cap >= 0 else total


@settings(max_examples=400, deadline=None, derandomize=True)
@given(line=lines, duration=st.integers(0, 5000), delay=st.integers(-10_000, 3_000_000),
       available=st.integers(-5, 10**5), cap=st.integers(1, 20_000))
def test_a_call_split_at_any_window_boundary_costs_the_sum_of_its_segments(line, duration, delay, available, cap):
    start = T0 * 1000 + delay
    assert walk_amount_at(line, duration, start) == segments(line, duration, start)
    # the fee never decreases with the duration
    assert walk_fee_at(line, duration, start) <= walk_fee_at(line, duration + 1, start)
    # the units granted never cost more than the balance (when the call costs anything)
    units = walk_units_at(line, available, cap, start)
    assert 0 <= units <= cap
    if units and walk_fee_at(line, cap, start) > 0:
        assert walk_fee_at(line, units, start) <= available
        if units < cap:  # and they are the most it pays: one more second costs more
            assert walk_fee_at(line, units + 1, start) > available


@settings(max_examples=200, deadline=None, derandomize=True)
@given(schedule=schedules(), offsets=st.lists(st.integers(1, 2000), max_size=4), duration=st.integers(0, 5000),
       available=st.integers(0, 10**5), cap=st.integers(1, 20_000))
def test_boundaries_that_change_nothing_change_no_fee_and_no_grant(schedule, offsets, duration, available, cap):
    line = timeline_of([(T0, schedule)] + [(T0 + o, schedule) for o in sorted(set(offsets))])
    assert walk_fee_at(line, duration, T0 * 1000) == walk_fee(schedule, duration)
    from agent.pricing.rate import walk_units
    assert walk_units_at(line, available, cap, T0 * 1000) == walk_units(schedule, available, cap)


def test_segments_are_counted_from_the_answer_each_second_in_the_window_it_starts_in():
    peak, off = Schedule(0, 60, 10, 60, 10, 0, -1), Schedule(0, 60, 2, 60, 2, 0, -1)
    line = timeline_of([(T0, peak), (T0 + 120, off)])
    assert in_force(line, T0 * 1000 + 500) == [(0, peak), (120, off)]  # second 119 starts at T0+119.5: peak
    assert in_force(line, (T0 + 120) * 1000) == [(0, off)]  # answered at the boundary: off-peak throughout
    assert walk_fee_at(line, 121, T0 * 1000) == 22 and walk_fee_at(line, 120, T0 * 1000) == 20


def test_rates_of_different_scales_add_up_in_the_finest_unit_rounded_once():
    coarse = Rate("t", "p1", "c1", "39", 0, 1, 60)  # 1 a minute, scale 0
    fine = Rate("t", "p2", "c1", "39", 0, 5000, 60, scale=4, rounding="half_even")  # 0.5000 a minute
    line = timeline([(T0, coarse), (T0 + 60, fine)])
    assert [p.schedule.unit for p in line] == [10**4, 10**4] and line[0].schedule.increment_price == 10**4
    assert walk_amount_at(line, 180, T0 * 1000) == 10**4 + 2 * 5000  # 2.0: one minute at 1, two at 0.5
    assert walk_fee_at(line, 120, T0 * 1000) == money(15000, 10**4, 1) == 2  # 1.5 rounds half to even: 2


def test_explain_shows_the_segments_per_window():
    at = rome(2026, 12, 4, 17, 58)
    catalog = Catalog.of([ACCOUNT], CARRIERS, DECK)
    party = plan_call(catalog, "t", "a", None, "39021234", at, horizon=3600).parties[0]
    found = explain(party.rate, 180, party.timeline, int(at.timestamp()) * 1000)
    assert found.fee == 22 and sum(s.amount for s in found.segments) == 22
    windows = [s for s in found.segments if s.kind == "window"]
    assert [(s.seconds, s.amount) for s in windows] == [(120, 20), (60, 2)]


def test_ten_thousand_random_timelines_keep_the_rule():
    rng = random.Random(15)
    for _ in range(10_000):
        pieces = [(T0, Rate("t", "p", "c", "39", rng.randint(0, 50), rng.randint(0, 500), rng.choice([1, 6, 60]),
                            rng.choice([0, 0, 2]), minimum_duration=rng.choice([0, 0, 60]),
                            maximum_cost=rng.choice([None, None, rng.randint(0, 3000)])))]
        for offset in sorted(rng.sample(range(1, 3000), rng.randint(0, 4))):
            pieces.append((T0 + offset, Rate("t", "p", "c", "39", 0, rng.randint(0, 500), rng.choice([1, 6, 60]))))
        line = timeline(pieces)
        start, duration = T0 * 1000 + rng.randint(-2000, 2_000_000), rng.randint(0, 4000)
        assert walk_amount_at(line, duration, start) == segments(line, duration, start)


# --- the answer delay: a call answered later, in a dearer window ----------------------------------------------------

def test_an_authorization_grants_and_reserves_for_any_answer_within_its_ttl():
    # off-peak 2 a minute until T0 + 60, then peak 10 a minute; 25 to spend, authorized at T0, TTL 120 s
    off, peak = Schedule(0, 60, 2, 60, 2, 0, -1), Schedule(0, 60, 10, 60, 10, 0, -1)
    line = timeline_of([(T0, off), (T0 + 60, peak)])
    at = T0 * 1000
    # walked from the authorization's moment alone: 2 + 10 + 10 = 22 pays 180 s, and those 180 s answered
    # at T0 + 60 (all peak) cost 30: more than the balance (what the library did before)
    assert decide([Standing(25, schedule=line)], 100, 14400, at=at) == ("", -1, 180, (22,))
    assert walk_fee_at(line, 180, (T0 + 60) * 1000) == 30
    # covering every answer second of the TTL: 120 s (what 25 pays answered at T0 + 60), holding their dearest
    found = decide([Standing(25, schedule=line)], 100, 14400, at=at, ttl=120_000)
    assert (found.units, found.reserved) == (120, (20,))
    assert max(walk_fee_at(line, 120, (T0 + delay) * 1000) for delay in range(121)) == 20


def test_a_begin_outside_the_covered_seconds_tops_up_or_cuts_the_units():
    off, peak = Schedule(0, 60, 2, 60, 2, 0, -1), Schedule(0, 60, 10, 60, 10, 0, -1)
    line = timeline_of([(T0, off), (T0 + 200, peak)])
    at = T0 * 1000
    # the fewest units 30 pays over the answers within 120 s: answered at T0 + 120, 2 off-peak minutes (the
    # second starts at T0 + 180) and 2 peak ones, 24; answered at T0, 4 off-peak and 2 peak minutes
    found = decide([Standing(30, schedule=line)], 100, 14400, at=at, ttl=120_000)
    assert (found.units, found.reserved) == (240, (24,))
    # answered at T0 + 140 (after the TTL, before the expiry): 1 off-peak minute and 3 peak ones, 32
    assert walk_fee_at(line, 240, (T0 + 140) * 1000) == 32
    # enough available: the reservation is topped up by 8, the units kept
    assert answered([Held(line, True, 24, 1000)], 240, (T0 + 140) * 1000) == (240, (8,))
    # 5 available: 29 pays 180 s from there (22), the units are cut, the reservation already pays them
    assert answered([Held(line, True, 24, 5)], 240, (T0 + 140) * 1000) == (180, (0,))
    # answered within the TTL: nothing changes
    assert answered([Held(line, True, 24, 0)], 240, (T0 + 120) * 1000 + 999) == (240, (0,))


@settings(max_examples=300, deadline=None, derandomize=True)
@given(line=lines, available=st.integers(0, 10**4), cap=st.integers(1, 20_000), ttl=st.sampled_from([0, 1, 60, 120]),
       late=st.integers(0, 999))
def test_no_answer_within_the_ttl_costs_more_than_the_authorization_reserved(line, available, cap, ttl, late):
    at = T0 * 1000 + late
    found = decide([Standing(available, schedule=line)], 100, cap, at=at, ttl=ttl * 1000)
    if found.reason:
        return
    (reserved,) = found.reserved
    assert reserved <= available or walk_fee_at(line, cap, at) == 0
    for second in range(T0, (at + ttl * 1000) // 1000 + 1):
        answer = max(at, second * 1000)
        assert walk_fee_at(line, found.units, answer) <= reserved
        assert answered([Held(line, True, reserved, 0)], found.units, answer) == (found.units, (0,))


# --- routing with windows, held to the rule over plain lists --------------------------------------------------------

WINDOWS = [(None, None, None), (None, None, None), ("mon-fri", "08:00", "18:00"), ("sat,sun", None, None),
           (None, "22:00", "06:00"), ("fri", None, "12:00"), (None, "17:59", "18:01")]


def random_deck(rng) -> list[Rate]:
    found = {}
    for _ in range(rng.randint(1, 12)):
        prefix, pricelist = rng.choice(["3", "39", "390", "44"]), rng.choice(["p1", "p1", "p2"])
        days, start, end = rng.choice(WINDOWS)
        rate = windowed(prefix, rng.randint(0, 9), days, start, end, zone=rng.choice(["Europe/Rome", "UTC"]),
                        pricelist=pricelist, carrier=rng.choice(["c1", "c2"]), rate_increment=rng.choice([1, 60]))
        found[(rate.pricelist_tag, rate.carrier_tag, rate.prefix, rate.weekdays, rate.time_start, rate.time_end)] = rate
    return list(found.values())  # one rate per identity, as the database keeps them


def reference(rates: list[Rate], account: Account, number: str, moment: datetime) -> Rate | None:
    """The rule: the longest prefix with a usable rate; in it, covering windowed rates first, then the order."""
    for length in range(len(number), 0, -1):
        usable = [r for r in rates if r.prefix == number[:length] and r.pricelist_tag in account.pricelist_tags
                  and r.covers(moment)]
        if usable:
            return sorted(usable, key=lambda r: (not r.windowed, r.order_key()))[0]
    return None


def test_routing_with_windows_follows_the_rule_in_memory_and_on_a_deck(tmp_path):
    rng = random.Random(1515)
    account = Account("t", "a", pricelist_tags=("p1",))
    moments = [rome(2026, 12, day, hour, minute) for day in (4, 5, 7) for hour, minute in
               ((7, 59), (8, 0), (12, 0), (17, 59), (18, 0), (18, 1), (22, 30), (3, 0))]
    for number in range(150):
        rates = random_deck(rng)
        catalogs = [Catalog.of([account], CARRIERS, rates)]
        if number % 5 == 0:
            deck.build(tmp_path / str(number), "t", rates, 1)
            parts = Catalog.of([account], CARRIERS)
            catalogs.append(Catalog(parts.accounts, parts.carriers,
                                    {"t": RateTable().freeze().over(deck.Deck(tmp_path / str(number)), {})}))
        for catalog in catalogs:
            for moment in moments:
                for destination in ("39012345", "4412", "3"):
                    assert routing.destination_rate(catalog, account, destination, moment) == reference(
                        rates, account, destination, moment), (rates, destination, moment)

"""The live half of an authorization and of an end, as pure code: what cache/rating.lua decides atomically
(`decide`, the reservations of `authorize`, the charges of `finish`) given the live state it reads.

The Redis library is the one that runs; this is its definition, and the property tests drive the real Redis
functions against it (tests/cache/test_library.py, tests/pricing/test_decimal_prices.py for scaled
tariffs). Money is integers only: a schedule with decimal prices is walked in its own units and every fee,
units' price and reservation here is already rounded to money by the walks (rate.walk_fee, walk_units); see
rate.py for the bounds that keep every amount exact in Redis. A party priced by time windows has a
timeline (rate.Timeline) instead of a schedule. The call may be answered in any second from its authorization
(`at`, ms) to the end of the authorization's TTL (`ttl`, ms), perhaps in a dearer window: such a party is
granted the fewest units its balance buys over those answer seconds and reserves the most those units cost
over them (covered_units, covered_fee), so no answer within the TTL costs more than was reserved. An end
prices the timeline from the call's answer (`begin`); a begin outside the covered seconds checks the
reservation again (`answered`). As the Redis library does.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

from .rate import Schedule, Tariff, tariff_fee, tariff_units, walk_fee_at, walk_units_at


class Standing(NamedTuple):
    """One party of a planned call as Redis sees it at the authorization."""

    available: int  # balance − reserved
    credit: int = 0  # how far below zero it may go (a POSTPAID credit limit)
    spends: bool = True  # balance-checked and reserved for (the agent's `c`)
    schedule: Tariff | None = None  # its rate's schedule or timeline (None: no rate)
    inbound: bool = False
    open_here: int = 0  # its open calls in this direction
    open_other: int = 0  # in the other one
    max_total: int = -1  # limits, -1: none
    max_inbound: int = -1
    max_outbound: int = -1


class Decision(NamedTuple):
    reason: str  # '' when authorized
    refused: int  # the index of the refused party, -1 when none (or refused by the plan)
    units: int  # seconds granted (0 when refused)
    reserved: tuple[int, ...]  # per party, what the authorization holds


def share_of(available: int, percent: int) -> int:
    """floor(available × percent / 100): what `--reservation-share` lets one call take."""
    if percent >= 100 or available <= 0:
        return available
    return available * percent // 100


def answer_seconds(at: int, ttl: int) -> range:
    """The epoch seconds a call authorized at `at` (ms) may be answered in within `ttl` ms: within one second
    the answer's milliseconds change no walk (rate.in_force)."""
    return range(at // 1000, (at + max(ttl, 0)) // 1000 + 1)


def _windowed(tariff: Tariff) -> bool:
    return not isinstance(tariff, Schedule) and len(tariff) > 1


def covered_units(tariff: Tariff, available: int, cap: int, at: int, ttl: int = 0) -> int:
    """The units `available` pays whatever second within the TTL the call is answered in."""
    if not _windowed(tariff) or ttl <= 0:
        return tariff_units(tariff, available, cap, at)
    return min(walk_units_at(tariff, available, cap, second * 1000) for second in answer_seconds(at, ttl))


def covered_fee(tariff: Tariff, units: int, at: int, ttl: int = 0) -> int:
    """The most `units` seconds cost whatever second within the TTL the call is answered in."""
    if not _windowed(tariff) or ttl <= 0:
        return tariff_fee(tariff, units, at)
    return max(walk_fee_at(tariff, units, second * 1000) for second in answer_seconds(at, ttl))


def decide(parties: Sequence[Standing], share: int, cap: int, reason: str = "", at: int = 0,
           ttl: int = 0) -> Decision:
    """The authorization of a call whose plan settled `reason` ('' unless the plan refused it): the first
    party over a limit or without the balance refuses it; otherwise every spending party reserves the fee of
    the fewest units any of them can pay (a timeline: over every answer second within `ttl` ms)."""
    units, refused = cap, -1
    for index, party in enumerate(parties):
        if reason:
            break
        limit = party.max_inbound if party.inbound else party.max_outbound
        if party.max_total >= 0 and party.open_here + party.open_other >= party.max_total:
            reason = "TOO_MANY_RUNNING_TRANSACTIONS"
        elif limit >= 0 and party.open_here >= limit:
            reason = ("TOO_MANY_RUNNING_INBOUND_TRANSACTIONS" if party.inbound
                      else "TOO_MANY_RUNNING_OUTBOUND_TRANSACTIONS")
        elif party.spends:
            granted = 0
            if party.schedule is not None:
                granted = covered_units(party.schedule, share_of(party.available + party.credit, share), cap, at,
                                        ttl)
            if granted <= 0:
                reason = "BALANCE_INSUFFICIENT"
            else:
                units = min(units, granted)
        if reason:
            refused = index
    if reason:
        return Decision(reason, refused, 0, tuple(0 for _ in parties))
    return Decision("", -1, units, tuple(
        covered_fee(p.schedule, units, at, ttl) if p.spends and p.schedule is not None else 0 for p in parties))


class Held(NamedTuple):
    """One party of an authorized call as Redis sees it when the call is answered."""

    schedule: Tariff | None
    spends: bool  # the agent's `c`
    reserved: int  # what the call holds for it
    available: int  # its balance − everything reserved (this call's reservation included)
    credit: int = 0


def answered(parties: Sequence[Held], units: int, answer: int) -> tuple[int, tuple[int, ...]]:
    """(units, top-ups) of an authorized call answered at `answer` (ms): when a spending party's timeline
    costs more from there than it reserved (answered outside the covered seconds), each such party tops its
    reservation up from its available balance, and the units are cut to what reservation and balance pay.
    Otherwise nothing changes."""
    windowed = [p.spends and p.schedule is not None and not isinstance(p.schedule, Schedule) for p in parties]
    if not any(w and tariff_fee(p.schedule, units, answer) > p.reserved for w, p in zip(windowed, parties)):
        return units, tuple(0 for _ in parties)
    granted = units
    spare = [max(p.available + p.credit, 0) for p in parties]
    for w, p, room in zip(windowed, parties, spare):
        if w:
            granted = min(granted, tariff_units(p.schedule, p.reserved + room, units, answer))
    return granted, tuple(
        min(max(tariff_fee(p.schedule, granted, answer) - p.reserved, 0), room) if w else 0
        for w, p, room in zip(windowed, parties, spare))


def charges(schedules: Sequence[Tariff | None], units: int, duration: int, begin: int = 0) -> tuple[int, ...]:
    """What an end charges each party: its fee for the call's seconds, capped at the granted units, the call
    answered at `begin` (ms)."""
    duration = min(max(duration, 0), units)
    return tuple(0 if s is None else tariff_fee(s, duration, begin) for s in schedules)

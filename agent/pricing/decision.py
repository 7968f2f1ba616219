"""The live half of an authorization and of an end, as pure code: what cache/rating.lua decides atomically
(`decide`, the reservations of `authorize`, the charges of `finish`) given the live state it reads.

The Redis library is the one that runs; this is its definition, and the property tests drive the real Redis
functions against it (tests/cache/test_library.py, tests/pricing/test_decimal_prices.py for scaled
tariffs). Money is integers only: a schedule with decimal prices is walked in its own units and every fee,
units' price and reservation here is already rounded to money by the walks (rate.walk_fee, walk_units); see
rate.py for the bounds that keep every amount exact in Redis. A party priced by time windows has a
timeline (rate.Timeline) instead of a schedule: the authorization walks it from its own moment (`at`, ms),
an end from the call's answer (`begin`), as the Redis library does.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

from .rate import Tariff, tariff_fee, tariff_units


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


def decide(parties: Sequence[Standing], share: int, cap: int, reason: str = "", at: int = 0) -> Decision:
    """The authorization of a call whose plan settled `reason` ('' unless the plan refused it): the first
    party over a limit or without the balance refuses it; otherwise every spending party reserves the fee of
    the fewest units any of them can pay."""
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
                granted = tariff_units(party.schedule, share_of(party.available + party.credit, share), cap, at)
            if granted <= 0:
                reason = "BALANCE_INSUFFICIENT"
            else:
                units = min(units, granted)
        if reason:
            refused = index
    if reason:
        return Decision(reason, refused, 0, tuple(0 for _ in parties))
    return Decision("", -1, units, tuple(
        tariff_fee(p.schedule, units, at) if p.spends and p.schedule is not None else 0 for p in parties))


def charges(schedules: Sequence[Tariff | None], units: int, duration: int, begin: int = 0) -> tuple[int, ...]:
    """What an end charges each party: its fee for the call's seconds, capped at the granted units, the call
    answered at `begin` (ms)."""
    duration = min(max(duration, 0), units)
    return tuple(0 if s is None else tariff_fee(s, duration, begin) for s in schedules)

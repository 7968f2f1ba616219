"""What a call would cost and why, and what a finished call costs on today's catalog: the kernel's own plan,
decision and walks, read without Redis writing anything.

* `quote` plans the call exactly as an authorization does (plan.plan_call), prices every party with the
  charges an end makes (decision.charges) and, given the live standings, grants the units an authorization
  would (decision.decide).
* `explain` itemizes a fee into segments (connect fee, first block, increments, cap). Every amount is a
  difference of the kernel's walk (rate.walk_fee) between two billed lengths, so the segments add up to the
  fee by construction: there is no second formula to drift from the first.
* `reprice` is the fee a finished call of an account gets from the current catalog (rerating).

A party priced by time windows (plan.Party.timeline) is priced and explained on its timeline from the
call's answer: its segments are one per window crossed (`window`, the seconds in it and their amount),
measured on the same walk (rate.walk_fee_at), and the timeline is kept with the call's rate
(`timeline_of_snapshot`) so that its record explains the very fee it was charged.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from .catalog import Catalog
from .decision import Decision, Standing, charges, decide
from .plan import Party, Plan, plan_call
from .rate import Piece, Rate, Schedule, Timeline, in_force, stored_window, walk_fee, walk_fee_at, window_of
from .routing import destination_rate, timeline_of


class Segment(NamedTuple):
    """One priced part of a call: `count` units of `unit_seconds` seconds at `unit_price` each."""

    kind: str  # connect_fee, block (the first block, free increments included), increments, maximum_cost
    seconds: int
    count: int
    unit_seconds: int | None
    unit_price: int | None
    amount: int


class Explanation(NamedTuple):
    rate: Rate
    duration: int  # seconds of the call
    billed_seconds: int  # after the rate's minimum duration
    segments: tuple[Segment, ...]
    fee: int


def explain(rate: Rate, duration: int, line: Timeline | None = None, start_ms: int = 0) -> Explanation:
    """The fee of an answered call of `duration` seconds on `rate`, segment by segment; on a timeline
    (`line`, the call answered at `start_ms`), one segment per window crossed."""
    if line is not None:
        return _explain_windows(rate, duration, line, start_ms)
    schedule = rate.schedule()
    connect_fee, block, block_price, increment, increment_price, minimum, cap = schedule[:7]
    billed = max(duration, minimum, 0)
    # the plain walk, measured between billed lengths; with decimal prices each length's fee is rounded, so
    # the segments are money and add up to the fee rounded once
    uncapped = schedule._replace(minimum=0, cap=-1)

    def walk(seconds: int) -> int:
        return walk_fee(uncapped, seconds)

    segments = [Segment("connect_fee", 0, 1, None, connect_fee, walk(0))]
    if billed > 0:
        segments.append(Segment("block", block, 1, block, block_price, walk(min(billed, block)) - walk(0)))
    if billed > block:
        count = -(-(billed - block) // increment)
        segments.append(Segment("increments", count * increment, count, increment, increment_price,
                                walk(block + count * increment) - walk(block)))
    total = walk_fee(schedule, duration)
    if total != walk(billed):  # the maximum cost took over
        segments.append(Segment("maximum_cost", 0, 1, None, cap, total - walk(billed)))
    return Explanation(rate, max(duration, 0), billed, tuple(segments), total)


def _explain_windows(rate: Rate, duration: int, line: Timeline, start_ms: int) -> Explanation:
    pieces = in_force(line, start_ms)
    head = pieces[0][1]
    billed = max(duration, head.minimum, 0)
    uncapped = tuple(Piece(start, s._replace(minimum=0, cap=-1) if i == 0 else s) for i, (start, s) in enumerate(line))

    def walk(seconds: int) -> int:
        return walk_fee_at(uncapped, seconds, start_ms)

    segments = [Segment("connect_fee", 0, 1, None, head.connect_fee, walk(0))]
    for index, (begin, schedule) in enumerate(pieces):
        if begin >= billed:
            break
        end = min(billed, pieces[index + 1][0]) if index + 1 < len(pieces) else billed
        segments.append(Segment("window", end - begin, 1, schedule.increment, schedule.increment_price,
                                walk(end) - walk(begin)))
    total = walk_fee_at(line, duration, start_ms)
    if total != walk(billed):  # the maximum cost took over
        segments.append(Segment("maximum_cost", 0, 1, None, head.cap, total - walk(billed)))
    return Explanation(rate, max(duration, 0), billed, tuple(segments), total)


def timeline_of_snapshot(snapshot: dict | None) -> Timeline | None:
    """The timeline a windowed call's rate snapshot keeps (`timeline`: [start, nine numbers] per piece)."""
    found = snapshot.get("timeline") if isinstance(snapshot, dict) else None
    if not found:
        return None
    return tuple(Piece(int(piece[0]), Schedule(*(int(n) for n in piece[1:]))) for piece in found)


class PartyQuote(NamedTuple):
    party: Party
    fee: int | None  # None: the party has no rate (it is not charged)
    explanation: Explanation | None


class Quote(NamedTuple):
    plan: Plan
    parties: tuple[PartyQuote, ...]
    decision: Decision | None  # None when the plan refused the call, or no live standing was given

    @property
    def fee(self) -> int | None:
        return self.parties[0].fee if self.parties else None

    @property
    def reason(self) -> str | None:
        if self.plan.refusal is not None:
            return self.plan.refusal.value
        return (self.decision.reason or None) if self.decision is not None else None


def quote(catalog: Catalog, tenant: str, account_tag: str, destination: str, duration: int, at: datetime,
          standings: list[Standing] | None = None, share: int = 100, cap: int = 0,
          source: str | None = None) -> Quote:
    """The call (from caller `source`) as an authorization at `at` would plan it and an end after
    `duration` seconds would charge it (answered at `at`: time windows crossed meanwhile are priced as
    such); with the parties' live `standings` (one per planned party), the authorization's decision too."""
    plan = plan_call(catalog, tenant, account_tag, None, destination, at, source, max(duration, cap))
    return priced(plan, duration, standings, share, cap, int(at.timestamp() * 1000))


def priced(plan: Plan, duration: int, standings: list[Standing] | None = None, share: int = 100,
           cap: int = 0, at_ms: int = 0, ttl: int = 0) -> Quote:
    """`quote` of a call already planned (plan.plan_call): the live standings depend on its parties. A
    party with a timeline is priced from `at_ms` (ms), the call's moment; its decision covers the answer
    seconds within `ttl` ms as an authorization's does."""
    if plan.refusal is not None:
        return Quote(plan, (), None)
    fees = charges([p.tariff for p in plan.parties], duration, duration, at_ms)
    parties = tuple(
        PartyQuote(party, fee if party.rate is not None else None,
                   explain(party.rate, duration, party.timeline, at_ms) if party.rate is not None else None)
        for party, fee in zip(plan.parties, fees))
    decision = None if standings is None else decide(standings, share, cap, at=at_ms, ttl=ttl)
    return Quote(plan, parties, decision)


def standing_of(party: Party, available: int, open_here: int = 0, open_other: int = 0) -> Standing:
    """A planned party as the authorization's decision sees it, given what Redis holds of it."""
    account = party.account
    return Standing(
        available=available, credit=account.credit, spends=party.spends_balance,
        schedule=party.tariff, inbound=party.inbound,
        open_here=open_here, open_other=open_other,
        max_total=_limit(account.max_concurrent_transactions), max_inbound=_limit(account.max_inbound_transactions),
        max_outbound=_limit(account.max_outbound_transactions))


def _limit(value: int | None) -> int:
    return -1 if value is None else value


def reprice(catalog: Catalog, tenant: str, account_tag: str, destination: str | None, at: datetime,
            duration: int, source: str | None = None, begin: datetime | None = None) -> tuple[Rate, int] | None:
    """(rate, fee) a finished outbound call of `duration` billed seconds gets from `catalog`: the rate the
    account's authorization at `at` would use, charged as an end charges. None: the account is unknown or
    the destination has no rate for it any more."""
    account = catalog.account(tenant, account_tag)
    if account is None:
        return None
    rate = destination_rate(catalog, account, destination, at, source)
    if rate is None:
        return None
    # time windows: the rates from the authorization on, walked from the answer (`begin`), as Redis does
    answer = at if begin is None else max(begin, at)
    line = timeline_of(catalog, account, destination, at, int((answer - at).total_seconds()) + duration + 1, rate,
                       source)
    return rate, charges((rate.schedule() if line is None else line,), duration, duration,
                         int(answer.timestamp() * 1000))[0]


def rate_of_snapshot(tenant: str, snapshot: dict) -> Rate | None:
    """The rate a call record keeps (`destination_rate`, Rate.snapshot) as a Rate, or None if it holds none."""
    if not isinstance(snapshot, dict) or snapshot.get("prefix") is None:
        return None
    return Rate(
        tenant=tenant, pricelist_tag=snapshot.get("pricelist_tag") or "", carrier_tag=snapshot.get("carrier_tag"),
        prefix=snapshot["prefix"], connect_fee=int(snapshot.get("connect_fee") or 0),
        rate=int(snapshot.get("rate") or 0), rate_increment=int(snapshot.get("rate_increment") or 1),
        interval_start=int(snapshot.get("interval_start") or 0), description=snapshot.get("description"),
        initial_increment=snapshot.get("initial_increment"),
        minimum_duration=int(snapshot.get("minimum_duration") or 0), maximum_cost=snapshot.get("maximum_cost"),
        scale=int(snapshot.get("scale") or 0), rounding=snapshot.get("rounding") or "up",
        source_prefix=snapshot.get("source_prefix") or "",
        **_window_of_snapshot(snapshot))


def _window_of_snapshot(snapshot: dict) -> dict:
    """A snapshot's window (Rate.snapshot writes it as text) as a Rate's fields; none: {}."""
    if not any(snapshot.get(name) for name in ("weekdays", "time_start", "time_end")):
        return {}
    bits, start, end = stored_window(*window_of(snapshot.get("weekdays"), snapshot.get("time_start"),
                                                snapshot.get("time_end")))
    return {"weekdays": bits, "time_start": start, "time_end": end, "timezone": snapshot.get("timezone") or "UTC"}

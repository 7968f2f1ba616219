"""What a call would cost and why, and what a finished call costs on today's catalog: the kernel's own plan,
decision and walks, read without Redis writing anything.

* `quote` plans the call exactly as an authorization does (plan.plan_call), prices every party with the
  charges an end makes (decision.charges) and, given the live standings, grants the units an authorization
  would (decision.decide).
* `explain` itemizes a fee into segments (connect fee, first block, increments, cap). Every amount is a
  difference of the kernel's walk (rate.walk_fee) between two billed lengths, so the segments add up to the
  fee by construction: there is no second formula to drift from the first.
* `reprice` is the fee a finished call of an account gets from the current catalog (rerating).
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from .catalog import Catalog
from .decision import Decision, Standing, charges, decide
from .plan import Party, Plan, plan_call
from .rate import Rate, walk_fee
from .routing import destination_rate


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


def explain(rate: Rate, duration: int) -> Explanation:
    """The fee of an answered call of `duration` seconds on `rate`, segment by segment."""
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
    `duration` seconds would charge it; with the parties' live `standings` (one per planned party), the
    authorization's decision too."""
    return priced(plan_call(catalog, tenant, account_tag, None, destination, at, source), duration, standings, share,
                  cap)


def priced(plan: Plan, duration: int, standings: list[Standing] | None = None, share: int = 100,
           cap: int = 0) -> Quote:
    """`quote` of a call already planned (plan.plan_call): the live standings depend on its parties."""
    if plan.refusal is not None:
        return Quote(plan, (), None)
    schedules = [p.rate.schedule() if p.rate is not None else None for p in plan.parties]
    fees = charges(schedules, duration, duration)
    parties = tuple(
        PartyQuote(party, fee if party.rate is not None else None,
                   explain(party.rate, duration) if party.rate is not None else None)
        for party, fee in zip(plan.parties, fees))
    decision = None if standings is None else decide(standings, share, cap)
    return Quote(plan, parties, decision)


def standing_of(party: Party, available: int, open_here: int = 0, open_other: int = 0) -> Standing:
    """A planned party as the authorization's decision sees it, given what Redis holds of it."""
    account = party.account
    return Standing(
        available=available, credit=account.credit, spends=party.spends_balance,
        schedule=party.rate.schedule() if party.rate is not None else None, inbound=party.inbound,
        open_here=open_here, open_other=open_other,
        max_total=_limit(account.max_concurrent_transactions), max_inbound=_limit(account.max_inbound_transactions),
        max_outbound=_limit(account.max_outbound_transactions))


def _limit(value: int | None) -> int:
    return -1 if value is None else value


def reprice(catalog: Catalog, tenant: str, account_tag: str, destination: str | None, at: datetime,
            duration: int, source: str | None = None) -> tuple[Rate, int] | None:
    """(rate, fee) a finished outbound call of `duration` billed seconds gets from `catalog`: the rate the
    account's authorization at `at` would use, charged as an end charges. None: the account is unknown or
    the destination has no rate for it any more."""
    account = catalog.account(tenant, account_tag)
    if account is None:
        return None
    rate = destination_rate(catalog, account, destination, at, source)
    if rate is None:
        return None
    return rate, charges((rate.schedule(),), duration, duration)[0]


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
        source_prefix=snapshot.get("source_prefix") or "")

"""Who takes part in a call and at which rate: the catalog half of an authorization.

The plan settles everything that does not depend on live state: unknown or inactive accounts, an
unreachable destination, the rate of every party and the carrier list. What depends on live balances and
running calls (limits, units, reservations) is settled atomically in Redis from the plan's parties.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import NamedTuple

from .account import Account
from .carrier import Carrier
from .catalog import Catalog
from .rate import Rate, Timeline
from .routing import destination_rate, route, timeline_of


class Reason(str, Enum):
    NOT_FOUND = "NOT_FOUND"
    NOT_ACTIVE = "NOT_ACTIVE"
    UNREACHEABLE_DESTINATION = "UNREACHEABLE_DESTINATION"
    TOO_MANY_RUNNING_TRANSACTIONS = "TOO_MANY_RUNNING_TRANSACTIONS"
    TOO_MANY_RUNNING_INBOUND_TRANSACTIONS = "TOO_MANY_RUNNING_INBOUND_TRANSACTIONS"
    TOO_MANY_RUNNING_OUTBOUND_TRANSACTIONS = "TOO_MANY_RUNNING_OUTBOUND_TRANSACTIONS"
    BALANCE_INSUFFICIENT = "BALANCE_INSUFFICIENT"


class Party(NamedTuple):
    """One account charged or counted for a call: the caller, the callee, or one of their linked accounts.

    Plans are made per request: a named tuple is immutable and cheaper to build than a frozen dataclass."""

    account: Account
    inbound: bool
    primary: bool
    rate: Rate | None  # the rate at the call's moment
    timeline: Timeline | None = None  # time windows: the rates in force over the call's horizon (None: `rate`)

    @property
    def tariff(self):
        """What prices the party (rate.Tariff): its timeline, else its rate's schedule; None without a rate."""
        if self.timeline is not None:
            return self.timeline
        return None if self.rate is None else self.rate.schedule()

    @property
    def spends_balance(self) -> bool:
        """Outbound parties that pay from a balance are checked and reserved for."""
        return not self.inbound and self.account.spends_balance


class Plan(NamedTuple):
    parties: tuple[Party, ...] = ()
    carriers: tuple[Carrier, ...] = ()
    refusal: Reason | None = None
    refused_tag: str | None = None


def _side(catalog: Catalog, main: Account, inbound: bool, destination: str | None, at: datetime,
          main_rate: Rate | None = None, source: str | None = None, horizon: int = 0):
    """[main] + its linked accounts (one level, unknown tags ignored), or a refusal. `horizon`: the seconds
    of time windows a party's timeline covers (0: none)."""
    parties = [Party(main, inbound, True, main_rate,
                     timeline_of(catalog, main, destination, at, horizon, main_rate, source) if horizon else None)]
    if not main.linked_accounts:
        return parties, None
    seen = {main.account_tag}
    for tag in main.linked_accounts:
        if tag in seen:
            continue
        seen.add(tag)
        linked = catalog.account(main.tenant, tag)
        if linked is None:
            continue
        if not linked.active:
            return Reason.NOT_ACTIVE, linked.account_tag
        rate = None if inbound else destination_rate(catalog, linked, destination, at, source)
        parties.append(Party(linked, inbound, False, rate,
                             timeline_of(catalog, linked, destination, at, horizon, rate, source) if horizon else None))
    return parties, None


def _usable(catalog: Catalog, tenant: str, tag: str) -> Account | Plan:
    """The account named by a request, or the refusal when it is unknown or inactive."""
    account = catalog.account(tenant, tag)
    if account is None:
        return Plan(refusal=Reason.NOT_FOUND, refused_tag=tag)
    if not account.active:
        return Plan(refusal=Reason.NOT_ACTIVE, refused_tag=tag)
    return account


def plan_call(
    catalog: Catalog,
    tenant: str,
    account_tag: str | None,
    destination_account_tag: str | None,
    destination: str | None,
    at: datetime,
    source: str | None = None,
    horizon: int = 0,
) -> Plan:
    """The parties of a call and its carriers, or the reason it cannot be rated at all; `source` is the
    caller (the authorization's `source`), matched against the rates' source prefixes. `horizon`: how many
    seconds from `at` a call may last, answer delay included: a party whose rate changes with time windows
    within them is given its timeline (a tenant without windows: never)."""
    if not account_tag and not destination_account_tag:
        return Plan(refusal=Reason.NOT_FOUND, refused_tag=None)
    parties: list[Party] = []
    carriers: tuple[Carrier, ...] = ()
    if account_tag:
        account = _usable(catalog, tenant, account_tag)
        if isinstance(account, Plan):
            return account
        rate, routes = route(catalog, account, destination, at, source=source)
        outbound, failed_tag = _side(catalog, account, False, destination, at, rate, source, horizon)
        if failed_tag is not None:
            return Plan(refusal=outbound, refused_tag=failed_tag)
        if rate is None:
            return Plan(refusal=Reason.UNREACHEABLE_DESTINATION, refused_tag=account_tag)
        parties.extend(outbound)
        carriers = tuple(routes)
    if destination_account_tag:
        callee = _usable(catalog, tenant, destination_account_tag)
        if isinstance(callee, Plan):
            return callee
        inbound, failed_tag = _side(catalog, callee, True, destination, at)
        if failed_tag is not None:
            return Plan(refusal=inbound, refused_tag=failed_tag)
        parties.extend(inbound)
    return Plan(parties=tuple(parties), carriers=carriers)

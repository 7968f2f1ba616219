"""Which rate prices a call and which carriers carry it (least-cost routing).

A rate is *eligible* for an account when it is effective at the call's time, belongs to one of the
account's pricelists (any pricelist of the tenant when the account lists none), and its carrier exists,
is active and is allowed by the account's `carrier_tags` (none listed: all carriers allowed).

* The call is priced at the eligible rate with the longest prefix; among equally long prefixes the
  cheapest per second wins, then the lower connect fee, then pricelist and carrier tag, then the prefix
  as written (`39` before `sip:39`), so the choice never depends on load order.
* Each carrier is offered at its own best eligible rate (same choice, per carrier); carriers are ordered
  by that rate's price per second, its connect fee, the longer prefix, then carrier tag. Every carrier
  appears at most once.
* `carrier_tags_override` replaces the routing: exactly those carriers, existing and active, in the
  order given. The price is still the account's own best eligible rate.
"""

from __future__ import annotations

import math
from datetime import datetime

from .account import Account
from .carrier import Carrier
from .catalog import Catalog
from .rate import Rate


def _forced(catalog: Catalog, account: Account) -> list[Carrier]:
    seen: set[str] = set()
    forced = []
    for tag in account.carrier_tags_override:
        carrier = catalog.carrier(account.tenant, tag)
        if carrier is not None and carrier.active and tag not in seen:
            seen.add(tag)
            forced.append(carrier)
    return forced


_ROUTES_LIMIT = 200_000  # remembered routing results per catalog snapshot


def route(
    catalog: Catalog, account: Account, destination: str | None, at: datetime, carriers: bool = True
) -> tuple[Rate | None, tuple[Carrier, ...]]:
    """The rate pricing the call and its carriers, cheapest first, in one pass over the matches.

    The table keeps each prefix's rates best first, so the first usable rate met is the price and the
    first usable rate met per carrier is that carrier's offer. The result depends only on the account's
    routing profile (tenant, pricelists, carrier filter and override) and on the destination's longest
    matching prefix, so the snapshot remembers it per pair, unless a rate met has effective dates.
    """
    if not destination:
        return None, tuple(_forced(catalog, account)) if carriers and account.carrier_tags_override else ()
    tenant = account.tenant
    table = catalog.table(tenant)
    longest = table.longest(destination)
    key = None
    if longest is not None:
        key = (tenant, longest[0], account.pricelist_tags, account.carrier_tags, account.carrier_tags_override,
               carriers)
        found = catalog.routes.get(key)
        if found is not None:
            return found
    price: Rate | None = None
    offers: dict[str, tuple[Rate, int, Carrier]] = {}
    routing = carriers and not account.carrier_tags_override
    dated = False
    # Eligibility (module docstring) checked inline: this loop runs for every rate of every matching prefix.
    pricelists, allowed, known = account.pricelist_tags, account.carrier_tags, catalog.carriers
    for specificity, rates in table.matches(destination):
        for rate in rates:
            if pricelists and rate.pricelist_tag not in pricelists:
                continue
            if allowed and rate.carrier_tag not in allowed:
                continue
            if rate.datetime_start is not None or rate.datetime_end is not None:
                dated = True
                if not rate.effective_at(at):
                    continue
            carrier = known.get((tenant, rate.carrier_tag))
            if carrier is None or not carrier.active:
                continue
            if price is None:
                price = rate
                if not routing:
                    break
            if carrier.carrier_tag not in offers:
                offers[carrier.carrier_tag] = (rate, specificity, carrier)
        if price is not None and not routing:
            break
    if not carriers:
        result: tuple[Rate | None, tuple[Carrier, ...]] = (price, ())
    elif account.carrier_tags_override:
        result = (price, tuple(_forced(catalog, account)))
    else:
        # Prices per second compared exactly as integers over a common denominator (no Fraction per request).
        scale = math.lcm(*(rate.increment for rate, _, _ in offers.values())) if offers else 1
        ordered = sorted(offers.values(), key=lambda item: (
            item[0].rate * (scale // item[0].increment), item[0].connect_fee, -item[1], item[2].carrier_tag))
        result = (price, tuple(carrier for _, _, carrier in ordered))
    if key is not None and not dated:
        if len(catalog.routes) >= _ROUTES_LIMIT:
            catalog.routes.clear()
        catalog.routes[key] = result
    return result


def destination_rate(catalog: Catalog, account: Account, destination: str | None, at: datetime) -> Rate | None:
    """The rate that prices a call from `account` to `destination`, or None (unreachable)."""
    return route(catalog, account, destination, at, carriers=False)[0]


def least_cost_routing(
    catalog: Catalog, account: Account, destination: str | None, at: datetime
) -> list[Carrier]:
    """The carriers for this call, cheapest first."""
    return list(route(catalog, account, destination, at)[1])

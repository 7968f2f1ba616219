"""Which rate prices a call and which carriers carry it (least-cost routing).

A rate is *eligible* for an account when it is effective at the call's time, belongs to one of the
account's pricelists (any pricelist of the tenant when the account lists none), and its carrier exists,
is active and is allowed by the account's `carrier_tags` (none listed: all carriers allowed).

* The call is priced at the eligible rate with the longest prefix; among equally long prefixes the
  cheapest per second wins (the price of an increment over its seconds), then the lower connect fee, then
  the billing scheme (lower minimum duration, shorter first block beyond one increment, lower maximum
  cost, none last: `Rate.scheme_key`), then pricelist and carrier tag, then the prefix as written (`39`
  before `sip:39`), so the choice never depends on load order.
* Each carrier is offered at its own best eligible rate (same choice, per carrier); carriers are ordered
  by that rate's price per second, its connect fee, its scheme, the longer prefix, then carrier tag. Every
  carrier appears at most once.
* Origin: a rate with a `source_prefix` serves only callers whose number (`number_of(source)`) starts
  with it. The most specific destination prefix still wins first; among the rates of one destination
  prefix, those of the longest matching source prefix come first (a matching source prefix beats none),
  then the order above. A deck without source prefixes routes exactly as before.
* Time windows: a rate with `weekdays` or `time_start`/`time_end` is eligible only at the moments its
  window covers (`Rate.covers`, in its pricelist's time zone). The most specific prefix still wins first;
  among the rates of one prefix (and source prefix), a covering windowed rate comes before the rates without
  a window, so a deck of a base price and a peak price per prefix prices the peak at peak times. A table
  with windows is `dated`: its calls are routed at their moment, and `timeline_of` gives a call the rates
  in force at each window boundary it may cross (where no rate covers a moment, the previous one goes on).
* `carrier_tags_override` replaces the routing: exactly those carriers, existing and active, in the
  order given. The price is still the account's own best eligible rate.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from .account import Account
from .carrier import Carrier
from .catalog import Catalog
from .destination import number_of
from .rate import Rate, Timeline, timeline, timeline_exact

if TYPE_CHECKING:
    from .deck import Deck

Result = tuple[Rate | None, tuple[Carrier, ...]]


def _eligible(catalog: Catalog, account: Account, pricelist: str, carrier_tag: str | None) -> Carrier | None:
    """The carrier of a rate of this pricelist and carrier when the account may use it (dates aside)."""
    if account.pricelist_tags and pricelist not in account.pricelist_tags:
        return None
    if account.carrier_tags and carrier_tag not in account.carrier_tags:
        return None
    carrier = catalog.carrier(account.tenant, carrier_tag)
    return carrier if carrier is not None and carrier.active else None


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
_UNSEEN = object()


def route(catalog: Catalog, account: Account, destination: str | None, at: datetime, carriers: bool = True,
          source: str | None = None) -> Result:
    """The rate pricing the call and its carriers, cheapest first.

    The table keeps each prefix's rates best first, so the first usable rate met is the price and the
    first usable rate met per carrier is that carrier's offer. The result depends only on the account's
    routing profile (tenant, pricelists, carrier filter and override) and on the destination's longest
    matching prefix, so the snapshot remembers it per pair, unless a rate met has effective dates.

    On a deck without dates or source prefixes whose columns hold every match (no change laid over them,
    no URI prefixes), `_route_columns` reads the columns instead of `Rate` objects; `_route_rates` is the
    reference it equals (tests/pricing/test_routing_columns.py). `source`: the caller (origin rating).
    """
    if not destination:
        return None, tuple(_forced(catalog, account)) if carriers and account.carrier_tags_override else ()
    table = catalog.table(account.tenant)
    number = number_of(destination)
    walk = table.deck_keys(number)  # None: the table has raw keys, dates or changes matching here
    if walk is None:
        return _route_rates(catalog, account, destination, at, carriers, source, number)
    deck, slot = walk
    if slot < 0:
        return None, tuple(_forced(catalog, account)) if carriers and account.carrier_tags_override else ()
    profile = _profile(catalog, account, deck)
    results = profile.routes if carriers else profile.prices
    result = results.get(slot)
    if result is None:
        result = _route_columns(catalog, account, deck, number, slot, carriers, profile)
        _remember_route(catalog, results, slot, result)
    return result


def _remember(catalog: Catalog, key: tuple, result: object) -> None:
    if len(catalog.routes) >= _ROUTES_LIMIT:
        catalog.routes.clear()
    catalog.routes[key] = result


_COUNT = object()  # key of catalog.routes: how many results its profiles remember


def _remember_route(catalog: Catalog, results: dict, key: int, result: Result) -> None:
    """Remembers a columns route in its profile's `results`, within _ROUTES_LIMIT for the whole snapshot."""
    count = catalog.routes.get(_COUNT, 0)
    if count >= _ROUTES_LIMIT:
        catalog.routes.clear()  # the profiles too: made again on their next use
        count = 0
    else:
        results[key] = result
    catalog.routes[_COUNT] = count + 1


class _Profile:
    """An account's routing profile over a deck's sources (`_profile`), and the routes remembered for it."""

    __slots__ = ("usable", "carriers", "ineligible", "routes", "prices")

    def __init__(self, usable: list[int], carriers: list[Carrier | None], ineligible: bytes | None) -> None:
        self.usable = usable  # per source: a number of its carrier (one per carrier), -1 when not eligible
        self.carriers = carriers  # per source: its carrier when eligible
        # The sources not eligible, as bytes, when no carrier has two eligible sources and a byte holds a
        # source: an account's offers are then every eligible entry of a chain, in its order.
        self.ineligible = ineligible
        self.routes: dict[int, Result] = {}  # the longest key's slot -> route, with carriers
        self.prices: dict[int, Result] = {}  # the longest key's slot -> route, price only


def _profile(catalog: Catalog, account: Account, deck: Deck) -> _Profile:
    """The routing profile of `account` on `deck` (pricelists, carrier filter and override), once per
    snapshot. Found first by the account object itself (an int key: no tuple to hash per call; the entry
    holds the account, so its id is not reused meanwhile), else by value."""
    mine = catalog.routes.get(id(account))
    if mine is not None and mine[0] is account and mine[1] is deck:
        return mine[2]
    key = (deck, account.pricelist_tags, account.carrier_tags, account.carrier_tags_override)
    found = catalog.routes.get(key)
    if found is None:
        numbers: dict[str, int] = {}
        usable, carriers = [], []
        for pricelist, carrier_tag in deck.sources:
            carrier = _eligible(catalog, account, pricelist, carrier_tag)
            usable.append(-1 if carrier is None else numbers.setdefault(carrier.carrier_tag, len(numbers)))
            carriers.append(carrier)
        eligible = [number for number in usable if number >= 0]
        single = len(eligible) == len(set(eligible)) and len(usable) <= 256
        found = _Profile(usable, carriers, bytes(s for s, n in enumerate(usable) if n < 0) if single else None)
        _remember(catalog, key, found)
    _remember(catalog, id(account), (account, deck, found))
    return found


def _route_columns(catalog: Catalog, account: Account, deck: Deck, number: str, longest: int, carriers: bool,
                   profile: _Profile | None = None) -> Result:
    """`_route_columns_python` in one native call (deck.native.route, _route.c): the walk along the chain, the
    price's `Rate`, the offers."""
    if profile is None:
        profile = _profile(catalog, account, deck)
    if carriers and account.carrier_tags_override:
        return deck.native.route(profile.usable, profile.carriers, longest, False, number)[0], \
            tuple(_forced(catalog, account))
    return deck.native.route(profile.usable, profile.carriers, longest, carriers, number)


def _route_columns_python(catalog: Catalog, account: Account, deck: Deck, number: str, longest: int,
                          carriers: bool, profile: _Profile | None = None) -> Result:
    """`_route_rates` over a deck's columns (`longest`: the slot of the longest key `number` starts with,
    Deck.longest_slot; its prefix keys follow by Deck.parent), making a `Rate` of the price only: the
    definition of `_route_columns` (tests compare them).

    Eligibility depends on a rate's source alone here (no dates), so the price is the first rate of an
    eligible source, most specific key first, and the offers are the eligible entries of the longest key's
    chain in its order (deck._chains), each carrier at its entry of least depth (the most specific key).
    """
    if profile is None:
        profile = _profile(catalog, account, deck)
    usable, offsets, source, parent = profile.usable, deck.offsets, deck.source, deck.parent
    price = None
    slot = longest
    while slot >= 0:
        for i in range(offsets[slot], offsets[slot + 1]):
            pair = source[i]  # its pricelist and carrier, as a number
            if usable[pair] >= 0:
                price = deck.rate(i, deck.key_of(number, slot), pair, True)  # the key: what the number starts with
                break
        else:
            slot = parent[slot]
            continue
        break
    if not carriers:
        return price, ()
    if account.carrier_tags_override:
        return price, tuple(_forced(catalog, account))
    if price is None:  # no eligible rate: no offer either
        return None, ()
    start, end = deck.chain_offsets[longest], deck.chain_offsets[longest + 1]
    at = deck.chain_bytes
    if profile.ineligible is not None and at is not None:  # a byte per entry: read as bytes (Deck.chain_of)
        eligible, entries = profile.carriers, deck.map[at + start:at + end].translate(None, profile.ineligible)
        return price, tuple([eligible[entry] for entry in entries])
    entries, depth = deck.chain[start:end], deck.chain_depth[start:end]
    best: dict[int, tuple[int, int]] = {}  # carrier number -> (depth, position) of its offer
    for position, entry in enumerate(entries):
        carrier = usable[entry]
        if carrier >= 0:
            held = best.get(carrier)
            if held is None or depth[position] < held[0]:
                best[carrier] = (depth[position], position)
    return price, tuple([profile.carriers[entries[position]] for position in sorted(p for _, p in best.values())])


def _for_caller(rates: tuple[Rate, ...], caller: str) -> tuple[Rate, ...] | list[Rate]:
    """The rates of one destination prefix that serve `caller`, longest source prefix first, each length in
    the group's order (the sort is stable)."""
    if not any(rate.source_prefix for rate in rates):
        return rates
    serving = [rate for rate in rates if rate.serves(caller)]
    serving.sort(key=lambda rate: -len(rate.source_prefix))
    return serving


def _in_window(rates: tuple[Rate, ...] | list[Rate], at: datetime) -> tuple[Rate, ...] | list[Rate]:
    """The rates of one prefix usable at `at`: the windowed ones covering it, before those without a window
    of the same source prefix length (the rates come longest source prefix first; the sort is stable)."""
    if not any(rate.windowed for rate in rates):
        return rates
    kept = [rate for rate in rates if not rate.windowed or rate.covers(at)]
    kept.sort(key=lambda rate: (-len(rate.source_prefix), not rate.windowed))
    return kept


def _route_rates(catalog: Catalog, account: Account, destination: str, at: datetime, carriers: bool,
                 source: str | None = None, number: str | None = None) -> Result:
    """`route` over `Rate` objects, in one pass over the matches: the reference. `number`: the destination's
    `number_of`, when the caller has it."""
    tenant = account.tenant
    table = catalog.table(tenant)
    origins = table.origins
    caller = number_of(source) if origins and source else ""
    longest = table.longest(destination, number)
    key = None
    if longest is not None:
        key = (tenant, longest[0], account.pricelist_tags, account.carrier_tags, account.carrier_tags_override,
               carriers)
        if origins:  # the longest source prefix the caller matches decides which rates serve it
            key += (origins.longest(caller),)
        found = catalog.routes.get(key)
        if found is not None:
            return found
    price: Rate | None = None
    offers: dict[str, tuple[Rate, int, Carrier]] = {}
    routing = carriers and not account.carrier_tags_override
    dated = False
    sources: dict[tuple[str, str | None], Carrier | None] = {}  # _eligible per (pricelist, carrier) met
    for specificity, rates in table.matches(destination, number):
        if origins:
            rates = _for_caller(rates, caller)
        if table.dated:
            windows = _in_window(rates, at)
            if windows is not rates:
                dated, rates = True, windows
        for rate in rates:
            pair = (rate.pricelist_tag, rate.carrier_tag)
            carrier = sources.get(pair, _UNSEEN)
            if carrier is _UNSEEN:
                carrier = sources[pair] = _eligible(catalog, account, *pair)
            if carrier is None:
                continue
            if rate.datetime_start is not None or rate.datetime_end is not None:
                dated = True
                if not rate.effective_at(at):
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
        result: Result = (price, ())
    elif account.carrier_tags_override:
        result = (price, tuple(_forced(catalog, account)))
    else:
        # Prices per second compared exactly as integers over a common denominator (no Fraction per request).
        scale = math.lcm(*(rate.increment for rate, _, _ in offers.values())) if offers else 1
        ordered = sorted(offers.values(), key=lambda item: (
            item[0].rate * (scale // item[0].increment), item[0].connect_fee, *item[0].scheme_key(), -item[1],
            item[2].carrier_tag))
        result = (price, tuple(carrier for _, _, carrier in ordered))
    if key is not None and not dated:
        _remember(catalog, key, result)
    return result


def destination_rate(catalog: Catalog, account: Account, destination: str | None, at: datetime,
                     source: str | None = None) -> Rate | None:
    """The rate that prices a call from `account` (caller `source`) to `destination`, or None (unreachable)."""
    return route(catalog, account, destination, at, carriers=False, source=source)[0]


def least_cost_routing(
    catalog: Catalog, account: Account, destination: str | None, at: datetime, source: str | None = None
) -> list[Carrier]:
    """The carriers for this call, cheapest first."""
    return list(route(catalog, account, destination, at, source=source)[1])


def timeline_of(catalog: Catalog, account: Account, destination: str | None, at: datetime, horizon: int,
                rate: Rate | None, source: str | None = None) -> Timeline | None:
    """The rates pricing a call of `account` from `at` (aware) over the next `horizon` seconds, as a timeline
    (rate.timeline), when windows change its rate meanwhile; None when `rate` (the rate at `at`) prices it
    throughout, or when the timeline's amounts would leave the exact range (rate.timeline_exact: then `rate`
    prices it alone). Candidate moments are the window boundaries of the rates matching the destination;
    at each the routing is asked again."""
    if rate is None or not destination or horizon <= 0 or not catalog.table(account.tenant).dated:
        return None
    begin = int(at.timestamp())
    marks: set[int] = set()
    for _, rates in catalog.table(account.tenant).matches(destination):
        for candidate in rates:
            if candidate.windowed:
                marks.update(candidate.boundaries(begin, begin + horizon))
    pieces = [(begin, rate)]
    for mark in sorted(marks):
        found = destination_rate(catalog, account, destination, datetime.fromtimestamp(mark, timezone.utc), source)
        if found is not None and found != pieces[-1][1]:
            pieces.append((mark, found))
    if len(pieces) == 1:
        return None
    line = timeline(pieces)
    return line if timeline_exact(line) else None

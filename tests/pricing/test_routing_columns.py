"""Routing over a deck's columns (routing._route_columns, its column work in C; routing._route_columns_python,
its definition) equals the reference over `Rate` objects (routing._route_rates on an in-memory table of the
same rates), for decks alone and with changes laid over them, on random catalogs, accounts, destinations and
times."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.pricing import deck, routing
from agent.pricing.account import Account
from agent.pricing.carrier import Carrier
from agent.pricing.catalog import Catalog
from agent.pricing.destination import number_of
from agent.pricing.rate import Rate
from agent.pricing.table import Layered, RateTable, key_of

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
CARRIERS = ["c1", "c2", "c3", "c4"]
KNOWN = CARRIERS[:3]  # c4 has rates but no carrier record
# Keys of ASCII digits up to 17 long are found by their codes (deck._number_index); a deck with a longer key
# or one of letters (a number prefix such as `1ab`) by its trie: both kinds come up.
DIGITS = ["", "3", "39", "390", "3904", "39040", "4", "44", "1", "1ab", "390401234567890123"]
SPELLINGS = ["{}", "+{}", "{}-", "tel:+{}"]  # number prefixes, some written around their key

rates = st.builds(
    lambda spelling, digits, pricelist, carrier, fee, price, increment, free, text, scheme: Rate(
        "t", pricelist, carrier, spelling.format(digits), fee, price, increment, free, text,
        initial_increment=None if scheme[0] is None else scheme[0] * max(increment, 1), minimum_duration=scheme[1],
        maximum_cost=scheme[2]),
    st.sampled_from(SPELLINGS), st.sampled_from(DIGITS), st.sampled_from(["p1", "p2", "p3"]),
    st.sampled_from([*CARRIERS, None]), st.integers(0, 2), st.integers(0, 6), st.sampled_from([0, 1, 2, 6, 60]),
    st.integers(0, 1), st.sampled_from([None, "Italy"]),
    # billing schemes (first block in increments, minimum, cap), mostly none: ties broken by them too
    st.sampled_from([(None, 0, None)] * 3 + [(1, 0, None), (5, 0, None), (None, 30, None), (None, 0, 7),
                                             (2, 60, 50), (None, 0, 0)]))
rate_lists = st.lists(rates, max_size=25, unique_by=lambda r: (r.pricelist_tag, r.carrier_tag, r.prefix))
accounts = st.builds(
    lambda pricelists, allowed, override: Account("t", "a", pricelist_tags=pricelists, carrier_tags=allowed,
                                                  carrier_tags_override=override),
    st.sampled_from([(), ("p1",), ("p3", "p2"), ("nope",)]), st.sampled_from([(), ("c1", "c3"), ("c2",), ("c4",)]),
    st.sampled_from([(), (), ("c2", "c9", "c1")]))
inactive = st.sets(st.sampled_from(KNOWN), max_size=2)
destinations = st.builds(lambda spelling, digits: spelling.format(digits),
                         st.sampled_from(["{}", "+{}", "sip:{}@example.com:5060", "tel:+{}"]),
                         st.sampled_from(["39040123", "3904", "390", "3", "44123", "4", "1", "5", "0", "",
                                          "3-904", "1ab9", "1a", "390401234567890123456", "39040123456789012",
                                          "3904\u0663"]))


def carriers_of(off: set[str]) -> list[Carrier]:
    return [Carrier("t", tag, f"h-{tag}", 5060, "UDP", tag not in off) for tag in KNOWN]


def mapped(tmp_path_factory, items: list[Rate]) -> deck.Deck:
    folder = tmp_path_factory.mktemp("deck") / "1"
    deck.build(folder, "t", items, 1)
    return deck.Deck(folder)


def effective(items: list[Rate], changes: dict[tuple[bool, str], tuple[Rate, ...]]) -> list[Rate]:
    """The rates a layer of `changes` over a deck of `items` shows."""
    kept = [r for r in items if key_of(r.prefix) not in changes]
    return kept + [r for group in changes.values() for r in group]


def both(catalog: Catalog, reference: Catalog, account: Account, destination: str, at: datetime) -> None:
    """route on `catalog` (over a deck) equals the reference on `reference`, with and without carriers; and
    the columns, when they decide, equal the rates."""
    assert not reference.table("t").deck_keys("39")  # the reference routes over Rate objects
    for carriers in (True, False):
        expected = routing.route(reference, account, destination, at, carriers)
        assert routing.route(catalog, account, destination, at, carriers) == expected
        assert routing.route(catalog, account, destination, at, carriers) == expected  # remembered
        table = catalog.table("t")
        number = number_of(destination) if destination else ""
        walk = None if table.has_raw or not destination else table.deck_keys(number)
        if walk is not None and walk[1] >= 0:  # the column work in C (_route.c), and its definition in Python
            assert routing._route_columns(catalog, account, walk[0], number, walk[1], carriers) == expected
            assert routing._route_columns_python(catalog, account, walk[0], number, walk[1], carriers) == expected


@settings(max_examples=300, deadline=None)
@given(items=rate_lists, account=accounts, off=inactive, probes=st.lists(destinations, min_size=1, max_size=5))
def test_routing_over_a_decks_columns_equals_routing_over_its_rates(tmp_path_factory, items, account, off, probes):
    carriers = carriers_of(off)
    base = mapped(tmp_path_factory, items)
    catalog = Catalog.of([account], carriers)
    catalog = Catalog(catalog.accounts, catalog.carriers, {"t": RateTable().freeze().over(base, {})})
    reference = Catalog.of([account], carriers, items)
    assert not base.dated and (base.deck_keys("39") is not None or base.has_raw)  # `tel:+1ab` is a raw key
    for destination in probes:
        both(catalog, reference, account, destination, NOW)


changed_keys = st.dictionaries(
    st.sampled_from(DIGITS[1:]),
    st.lists(st.builds(lambda pricelist, carrier, price: Rate("t", pricelist, carrier, "", 0, price),
                       st.sampled_from(["p1", "p2"]), st.sampled_from(CARRIERS), st.integers(0, 6)),
             max_size=3, unique_by=lambda r: (r.pricelist_tag, r.carrier_tag)),
    max_size=3)


@settings(max_examples=200, deadline=None)
@given(items=rate_lists, changed=changed_keys, account=accounts, off=inactive,
       probes=st.lists(destinations, min_size=1, max_size=5))
def test_routing_over_changes_laid_over_a_deck_equals_routing_over_the_rates_they_show(
        tmp_path_factory, items, changed, account, off, probes):
    changes = {(False, key): tuple(sorted((Rate(r.tenant, r.pricelist_tag, r.carrier_tag, key, r.connect_fee, r.rate)
                                           for r in group), key=Rate.order_key))
               for key, group in changed.items()}  # an empty group removes the key
    carriers = carriers_of(off)
    table = RateTable().freeze().over(mapped(tmp_path_factory, items), changes)
    assert isinstance(table, Layered)
    catalog = Catalog(Catalog.of([account], carriers).accounts, Catalog.of([], carriers).carriers, {"t": table})
    reference = Catalog.of([account], carriers, effective(items, changes))
    for destination in probes:
        both(catalog, reference, account, destination, NOW)


@settings(max_examples=150, deadline=None)
@given(items=rate_lists, dated=st.lists(st.tuples(st.integers(0, 24), st.sampled_from([None, -2, 0, 3]),
                                                  st.sampled_from([None, -1, 0, 2])), min_size=1, max_size=6),
       account=accounts, off=inactive, probes=st.lists(destinations, min_size=1, max_size=4),
       moments=st.lists(st.integers(-3, 3), min_size=1, max_size=3))
def test_a_deck_with_dates_or_uri_prefixes_routes_as_its_rates(tmp_path_factory, items, dated, account, off, probes,
                                                                moments):
    """Such decks route over `Rate` objects (their columns are not read): the same results."""
    items = list(items)
    for index, start, end in dated:
        if index < len(items):
            r = items[index]
            items[index] = Rate(r.tenant, r.pricelist_tag, r.carrier_tag, r.prefix, r.connect_fee, r.rate,
                                r.rate_increment, r.interval_start, r.description,
                                None if start is None else NOW + timedelta(hours=start),
                                None if end is None else NOW + timedelta(hours=end))
    items.append(Rate("t", "p1", "c1", "sip:3904@", rate=1))
    carriers = carriers_of(off)
    catalog = Catalog(Catalog.of([account], carriers).accounts, Catalog.of([], carriers).carriers,
                      {"t": RateTable().freeze().over(mapped(tmp_path_factory, items), {})})
    reference = Catalog.of([account], carriers, items)
    for destination in probes:
        for hours in moments:
            at = NOW + timedelta(hours=hours, microseconds=hours % 2)
            for carriers_wanted in (True, False):
                assert routing.route(catalog, account, destination, at, carriers_wanted) == \
                    routing.route(reference, account, destination, at, carriers_wanted)


@settings(max_examples=100, deadline=None)
@given(items=rate_lists)
def test_each_chain_holds_the_first_rate_of_each_source_along_its_keys_prefixes_in_offer_order(tmp_path_factory,
                                                                                                 items):
    mapped_deck = mapped(tmp_path_factory, items)
    table = RateTable.build(items)
    for key in table.numbers:
        first: dict[int, tuple] = {}  # source -> its first rate along the prefixes: (offer order, depth)
        for depth, (found, group) in enumerate(table.number_matches(key)):
            for rate in group:
                source = mapped_deck.sources.index((rate.pricelist_tag, rate.carrier_tag))
                first.setdefault(source, ((rate.price_per_second(), rate.connect_fee, *rate.scheme_key(), -len(found),
                                           rate.carrier_tag or "", rate.pricelist_tag), depth))
        expected = sorted(first.items(), key=lambda item: item[1][0])
        slot = mapped_deck.slot(key)
        start, end = mapped_deck.chain_offsets[slot], mapped_deck.chain_offsets[slot + 1]
        assert list(mapped_deck.chain_of(slot)) == [source for source, _ in expected]
        assert mapped_deck.chain_depth[start:end].tolist() == [depth for _, (_, depth) in expected]


def test_a_deck_of_more_than_256_sources_keeps_its_chains_in_wider_integers(tmp_path_factory):
    items = [Rate("t", f"p{n:03}", "c1", "39", rate=300 - n) for n in range(290)] + [
        Rate("t", "p1", "c2", "3904", rate=1), Rate("t", "p1", "c3", "3", rate=0)]
    wide = mapped(tmp_path_factory, items)
    assert wide.chain.format == "H" and type(wide.chain_of(wide.slot("3904"))) is memoryview
    carriers = carriers_of(set())
    for account in (Account("t", "a"), Account("t", "a", pricelist_tags=("p1", "p007"))):
        catalog = Catalog({}, Catalog.of([], carriers).carriers, {"t": wide})
        reference = Catalog.of([account], carriers, items)
        both(catalog, reference, account, "390401", NOW)
        assert [c.carrier_tag for c in routing.route(catalog, account, "390401", NOW)[1]] == ["c3", "c2", "c1"]


def test_a_rate_made_from_the_columns_is_a_plain_frozen_rate(tmp_path_factory):
    import dataclasses

    import pytest

    items = [Rate("t", "p", "c1", "+39", 1, 2, 60, 1, "Italy", initial_increment=120, maximum_cost=9)]
    deck_of_it = mapped(tmp_path_factory, items)
    found = deck_of_it.group(False, "39")
    assert found == tuple(items) and type(found[0]) is Rate and hash(found[0]) == hash(items[0])
    with pytest.raises(dataclasses.FrozenInstanceError):
        found[0].rate = 0  # type: ignore[misc]
    # the price of a route, made in C (_route.c), is the same plain frozen Rate
    catalog = Catalog({}, Catalog.of([], carriers_of(set())).carriers, {"t": deck_of_it})
    priced = routing._route_columns(catalog, Account("t", "a"), deck_of_it, "3904", deck_of_it.slot("39"), True)[0]
    assert priced == items[0] and type(priced) is Rate and hash(priced) == hash(items[0])
    assert dataclasses.astuple(priced) == dataclasses.astuple(items[0])
    with pytest.raises(dataclasses.FrozenInstanceError):
        priced.rate = 0  # type: ignore[misc]


def test_a_carrier_is_offered_at_its_first_eligible_rate_along_the_chain_whatever_its_pricelist(tmp_path_factory):
    items = [Rate("t", "p1", "c1", "3904", rate=5), Rate("t", "p2", "c1", "3", rate=1), Rate("t", "p1", "c2", "39", rate=3),
             Rate("t", "p2", "c3", "390", rate=4), Rate("t", "p1", "c3", "390", rate=9)]
    carriers = carriers_of(set())
    for account, expected in ((Account("t", "a"), ["c2", "c3", "c1"]), (Account("t", "a", pricelist_tags=("p2",)),
                                                                       ["c1", "c3"])):
        catalog = Catalog({}, Catalog.of([], carriers).carriers, {"t": mapped(tmp_path_factory, items)})
        assert [c.carrier_tag for c in routing.route(catalog, account, "3904011", NOW)[1]] == expected
        both(catalog, Catalog.of([account], carriers, items), account, "3904011", NOW)

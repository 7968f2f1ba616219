"""Origin rating: a rate's `source_prefix` matched against the caller's number.

The reference here is written from the rule alone (routing's docstring), over plain lists: the most
specific destination prefix first, then the longest matching source prefix (a matching one beats none),
then `Rate.order_key`; each carrier at its own best rate. Routing over in-memory tables and over decks,
remembered results included, must equal it for every caller; a deck without source prefixes still routes
by its columns, and a caller changes nothing there.
"""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.pricing import deck, routing
from agent.pricing.account import Account
from agent.pricing.carrier import Carrier
from agent.pricing.catalog import Catalog
from agent.pricing.destination import number_of, source_prefix_of
from agent.pricing.plan import plan_call
from agent.pricing.rate import Rate
from agent.pricing.table import Layered, RateTable, key_of

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
CARRIERS = ["c1", "c2", "c3", "c4"]
KNOWN = CARRIERS[:3]  # c4 has rates but no carrier record
ORIGINS = ["", "", "", "3", "39", "3906", "06", "0612", "44"]
CALLERS = [None, "", "390612345", "sip:+39061234@host;user=phone", "39", "3", "061234", "tel:+44 20", "anonymous",
           "sip:alice@example.com", "5"]

rates = st.builds(
    lambda digits, spelling, origin, pricelist, carrier, fee, price, increment: Rate(
        "t", pricelist, carrier, spelling.format(digits), fee, price, increment, source_prefix=origin),
    st.sampled_from(["", "3", "39", "390", "3904", "4", "44"]), st.sampled_from(["{}", "+{}"]),
    st.sampled_from(ORIGINS), st.sampled_from(["p1", "p2"]), st.sampled_from([*CARRIERS, None]), st.integers(0, 2),
    st.integers(0, 6), st.sampled_from([1, 6, 60]))
# the database's identity: one rate per (pricelist, carrier, prefix, source prefix)
rate_lists = st.lists(rates, max_size=25,
                      unique_by=lambda r: (r.pricelist_tag, r.carrier_tag, key_of(r.prefix), r.source_prefix))
accounts = st.builds(lambda pricelists, allowed: Account("t", "a", pricelist_tags=pricelists, carrier_tags=allowed),
                     st.sampled_from([(), ("p1",), ("p2", "p1")]), st.sampled_from([(), ("c1", "c3"), ("c2",)]))
inactive = st.sets(st.sampled_from(KNOWN), max_size=2)
destinations = st.sampled_from(["39040123", "sip:390612@example.com", "3904", "44123", "4", "5", ""])
probes = st.lists(st.tuples(destinations, st.sampled_from(CALLERS)), min_size=1, max_size=8)


def carriers_of(off: set[str]) -> list[Carrier]:
    return [Carrier("t", tag, f"h-{tag}", 5060, "UDP", tag not in off) for tag in KNOWN]


def reference(items: list[Rate], carriers: list[Carrier], account: Account, destination: str,
              source: str | None) -> tuple[Rate | None, tuple[Carrier, ...]]:
    if not destination:
        return None, ()
    number, caller = number_of(destination), number_of(source) if source else ""
    active = {c.carrier_tag: c for c in carriers if c.active}
    ranked = []
    for rate in items:
        key = key_of(rate.prefix)[1]
        if not number.startswith(key) or not caller.startswith(rate.source_prefix):
            continue
        if account.pricelist_tags and rate.pricelist_tag not in account.pricelist_tags:
            continue
        if account.carrier_tags and rate.carrier_tag not in account.carrier_tags or rate.carrier_tag not in active:
            continue
        ranked.append(((-len(key), -len(rate.source_prefix), rate.order_key()), rate))
    ranked.sort(key=lambda item: item[0])
    if not ranked:
        return None, ()
    offers: dict[str, tuple] = {}
    for rank, rate in ranked:
        offers.setdefault(rate.carrier_tag, (rate.price_per_second(), rate.connect_fee, *rate.scheme_key(), rank[0],
                                             rate.carrier_tag))
    return ranked[0][1], tuple(active[tag] for tag in sorted(offers, key=offers.__getitem__))


def on_deck(tmp_path_factory, items: list[Rate], account: Account, carriers: list[Carrier],
            changes: dict | None = None) -> Catalog:
    folder = tmp_path_factory.mktemp("deck") / "1"
    deck.build(folder, "t", items, 1)
    base = deck.Deck(folder)
    parts = Catalog.of([account], carriers)
    return Catalog(parts.accounts, parts.carriers, {"t": RateTable().freeze().over(base, changes or {})})


def check(catalog: Catalog, items, carriers, account, pairs) -> None:
    for _ in range(2):  # the second round reads remembered results
        for destination, source in pairs:
            expected = reference(items, carriers, account, destination, source)
            assert routing.route(catalog, account, destination, NOW, source=source) == expected
            assert routing.route(catalog, account, destination, NOW, carriers=False, source=source)[0] == expected[0]


@settings(max_examples=300, deadline=None)
@given(items=rate_lists, account=accounts, off=inactive, pairs=probes)
def test_routing_by_origin_follows_the_rule_in_memory_and_on_a_deck(tmp_path_factory, items, account, off, pairs):
    carriers = carriers_of(off)
    check(Catalog.of([account], carriers, items), items, carriers, account, pairs)
    check(on_deck(tmp_path_factory, items, account, carriers), items, carriers, account, pairs)


@settings(max_examples=150, deadline=None)
@given(items=rate_lists, account=accounts, off=inactive, pairs=probes,
       changed=st.lists(rates, max_size=4, unique_by=lambda r: (r.pricelist_tag, r.carrier_tag, key_of(r.prefix),
                                                               r.source_prefix)))
def test_routing_by_origin_over_changes_laid_over_a_deck(tmp_path_factory, items, account, off, pairs, changed):
    keys = {key_of(r.prefix) for r in changed}
    changes = {k: tuple(sorted((r for r in changed if key_of(r.prefix) == k), key=Rate.order_key)) for k in keys}
    shown = [r for r in items if key_of(r.prefix) not in keys] + changed
    carriers = carriers_of(off)
    catalog = on_deck(tmp_path_factory, items, account, carriers, changes)
    assert isinstance(catalog.table("t"), Layered)
    check(catalog, shown, carriers, account, pairs)


@settings(max_examples=100, deadline=None)
@given(items=rate_lists, account=accounts, off=inactive, pairs=probes)
def test_a_deck_without_source_prefixes_routes_by_its_columns_whoever_calls(tmp_path_factory, items, account, off,
                                                                             pairs):
    items = [Rate(r.tenant, r.pricelist_tag, r.carrier_tag, r.prefix, r.connect_fee, r.rate, r.rate_increment)
             for r in items if not r.source_prefix]
    carriers = carriers_of(off)
    catalog = on_deck(tmp_path_factory, items, account, carriers)
    assert not catalog.table("t").origins and catalog.table("t").deck_keys("39") is not None
    for destination, source in pairs:
        assert routing.route(catalog, account, destination, NOW, source=source) == \
            routing.route(catalog, account, destination, NOW) == reference(items, carriers, account, destination, None)


@settings(max_examples=100, deadline=None)
@given(items=rate_lists)
def test_a_deck_keeps_each_rates_source_prefix(tmp_path_factory, items):
    folder = tmp_path_factory.mktemp("deck") / "1"
    deck.build(folder, "t", items, 1)
    mapped, table = deck.Deck(folder), RateTable.build(items)
    assert mapped.origins == table.origins
    assert (mapped.deck_keys("39") is None) == bool(table.origins)
    for key, group in table.numbers.items():
        assert mapped.group(False, key) == group


def test_a_matching_source_prefix_beats_none_but_the_destination_prefix_comes_first():
    items = [Rate("t", "p", "c1", "39", rate=5), Rate("t", "p", "c1", "39", rate=9, source_prefix="3906"),
             Rate("t", "p", "c2", "39", rate=7, source_prefix="39"), Rate("t", "p", "c1", "3904", rate=8)]
    account = Account("t", "a")
    catalog = Catalog.of([account], carriers_of(set()), items)

    def priced(destination, source):
        found = routing.destination_rate(catalog, account, destination, NOW, source)
        return found.rate, found.source_prefix

    assert priced("39061", "sip:39061234@host") == (9, "3906")  # the longest source prefix
    assert priced("39061", "+39021234") == (7, "39")  # a shorter one still beats none, though dearer
    assert priced("39061", "4420") == (5, "")
    assert priced("39061", None) == (5, "")
    assert priced("39040", "39061234") == (8, "")  # the longer destination prefix first
    # the caller takes part in the remembered result: the same destination, another caller, another answer
    assert priced("39061", "sip:39061234@host") == (9, "3906")
    carriers = routing.least_cost_routing(catalog, account, "39061", NOW, "39021234")
    assert [c.carrier_tag for c in carriers] == ["c1", "c2"]  # c1 offered at 5 (it serves any origin)


def test_a_call_is_planned_with_its_callers_rate_for_the_caller_and_its_linked_accounts():
    items = [Rate("t", "p", "c1", "39", rate=5), Rate("t", "p", "c1", "39", rate=9, source_prefix="3906")]
    main = Account("t", "a", linked_accounts=("b",))
    catalog = Catalog.of([main, Account("t", "b")], carriers_of(set()), items)
    plan = plan_call(catalog, "t", "a", None, "390612", NOW, "sip:39061234@10.0.0.1")
    assert [p.rate.rate for p in plan.parties] == [9, 9]
    plan = plan_call(catalog, "t", "a", None, "390612", NOW, "sip:44@10.0.0.1")
    assert [p.rate.rate for p in plan.parties] == [5, 5]


def test_a_source_prefix_is_normalized_as_number_prefixes_are():
    assert [source_prefix_of(text, 16) for text in ("+39", "sip:39", "tel:+39-06", " 3906 ", "", None)] == \
        ["39", "39", "3906", "3906", "", ""]
    for bad in ("sip:alice@", "abc", "39x", "1" * 17):
        with pytest.raises(ValueError, match="source_prefix"):
            source_prefix_of(bad, 16)


def test_a_rate_snapshot_names_its_source_prefix_only_when_it_has_one():
    from agent.pricing.quote import rate_of_snapshot

    plain, origin = Rate("t", "p", "c", "39", rate=1), Rate("t", "p", "c", "39", rate=1, source_prefix="3906")
    assert "source_prefix" not in plain.snapshot()
    assert origin.snapshot()["source_prefix"] == "3906"
    assert rate_of_snapshot("t", origin.snapshot()) == origin and rate_of_snapshot("t", plain.snapshot()) == plain

"""Rate selection and least-cost routing (fixes #3-#11)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.pricing.account import Account
from agent.pricing.carrier import Carrier
from agent.pricing.catalog import Catalog
from agent.pricing.rate import Rate
from agent.pricing.routing import destination_rate, least_cost_routing

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
DEST = "sip:39040123456@anotherdomain.com:5060"


def r(prefix, carrier, price=1, *, pricelist="pl", connect_fee=0, increment=1, free=0, tenant="t", **extra) -> Rate:
    return Rate(tenant, pricelist, carrier, prefix, connect_fee, price, increment, free, **extra)


def carrier(tag, tenant="t", active=True, host=None, port=5060, protocol="UDP") -> Carrier:
    return Carrier(tenant, tag, host or f"h-{tag}", port, protocol, active)


def catalog(rates, accounts=(), carriers=None) -> Catalog:
    """Rates grouped into per-tenant tables; every carrier a rate names exists and is active unless given."""
    if carriers is None:
        carriers = [carrier(x.carrier_tag, x.tenant) for x in rates if x.carrier_tag]
    return Catalog.of(accounts, carriers, rates)


def account(tag="a", tenant="t", **fields) -> Account:
    return Account(tenant, tag, **fields)


def price(cat, acc, destination=DEST, at=NOW):
    found = destination_rate(cat, acc, destination, at)
    return None if found is None else (found.prefix, found.carrier_tag, found.pricelist_tag)


def lcr(cat, acc, destination=DEST, at=NOW) -> list[str]:
    return [c.carrier_tag for c in least_cost_routing(cat, acc, destination, at)]


# --- destination_rate ---------------------------------------------------------------------------------------------

def test_the_longest_matching_prefix_prices_the_call_even_when_dearer():
    cat = catalog([r("39", "c1", 1), r("3904", "c2", 50)])
    assert price(cat, account()) == ("3904", "c2", "pl")


def test_among_equally_long_prefixes_the_cheapest_per_second_prices_the_call():
    cat = catalog([r("39", "c1", 120, increment=60), r("39", "c2", 3, increment=1), r("39", "c3", 90, increment=60)])
    assert price(cat, account()) == ("39", "c3", "pl")


def test_equal_price_per_second_is_decided_by_the_lower_connect_fee():
    cat = catalog([r("39", "c1", 1, connect_fee=10), r("39", "c2", 60, increment=60, connect_fee=5)])
    assert price(cat, account()) == ("39", "c2", "pl")


def test_equal_cost_is_decided_by_pricelist_then_carrier_tag_regardless_of_insertion_order():
    rates = [r("39", "c2", pricelist="b"), r("39", "c9", pricelist="a"), r("39", "c1", pricelist="b")]
    for order in (rates, rates[::-1]):
        assert price(catalog(order), account()) == ("39", "c9", "a")
    cat = catalog([r("39", "c2"), r("39", "c1")])
    assert price(cat, account()) == ("39", "c1", "pl")


def test_no_matching_prefix_means_unreachable():
    assert destination_rate(catalog([r("49", "c1")]), account(), DEST, NOW) is None


@pytest.mark.parametrize("destination", [None, ""])
def test_a_missing_destination_has_no_rate(destination):
    assert destination_rate(catalog([r("", "c1")]), account(), destination, NOW) is None


def test_a_rate_starts_at_datetime_start_inclusive():
    cat = catalog([r("39", "c1", datetime_start=NOW)])
    assert price(cat, account(), at=NOW) is not None
    assert price(cat, account(), at=NOW - timedelta(microseconds=1)) is None


def test_a_rate_stops_at_datetime_end_exclusive():
    cat = catalog([r("39", "c1", datetime_end=NOW)])
    assert price(cat, account(), at=NOW) is None
    assert price(cat, account(), at=NOW - timedelta(microseconds=1)) is not None


def test_an_expired_specific_rate_falls_back_to_the_shorter_prefix():
    cat = catalog([r("39", "c1"), r("3904", "c2", datetime_end=NOW), r("390", "c3", datetime_start=NOW + timedelta(1))])
    assert price(cat, account()) == ("39", "c1", "pl")


def test_a_rate_of_another_pricelist_is_not_used_when_the_account_lists_pricelists():
    cat = catalog([r("3904", "c1", pricelist="other"), r("39", "c2", pricelist="mine")])
    assert price(cat, account(pricelist_tags=("mine",))) == ("39", "c2", "mine")


def test_an_account_without_pricelists_uses_every_pricelist_of_its_tenant():
    cat = catalog([r("3904", "c1", pricelist="other"), r("39", "c2", pricelist="mine")])
    assert price(cat, account()) == ("3904", "c1", "other")


def test_carrier_tags_restrict_the_rate():
    cat = catalog([r("3904", "c1", 1), r("39", "c2", 9)])
    assert price(cat, account(carrier_tags=("c2",))) == ("39", "c2", "pl")


def test_empty_carrier_tags_mean_unrestricted_for_the_rate():
    cat = catalog([r("3904", "c1", 1), r("39", "c2", 9)])
    assert price(cat, account(carrier_tags=())) == ("3904", "c1", "pl")


def test_a_rate_whose_carrier_is_inactive_or_missing_is_not_eligible():
    cat = catalog(
        [r("39040", "gone"), r("3904", "off"), r("39", "on"), r("390", None)],
        carriers=[carrier("off", active=False), carrier("on")],
    )
    assert price(cat, account()) == ("39", "on", "pl")


def test_carrier_tags_override_does_not_change_which_rate_prices_the_call():
    cat = catalog([r("3904", "c1"), r("39", "c2")], carriers=[carrier("c1"), carrier("c2"), carrier("x")])
    assert price(cat, account(carrier_tags_override=("x",))) == ("3904", "c1", "pl")
    assert price(cat, account(carrier_tags=("c2",), carrier_tags_override=("c1",))) == ("39", "c2", "pl")


def test_rates_and_carriers_of_another_tenant_are_invisible():
    cat = catalog(
        [r("3904", "c1", tenant="other"), r("39", "c1", tenant="t")],
        carriers=[carrier("c1", tenant="t", host="mine"), carrier("c1", tenant="other", host="theirs")],
    )
    assert price(cat, account(tenant="t")) == ("39", "c1", "pl")
    assert [c.host for c in least_cost_routing(cat, account(tenant="t"), DEST, NOW)] == ["mine"]
    assert price(cat, account(tenant="nobody")) is None
    assert lcr(cat, account(tenant="nobody")) == []


def test_a_rate_is_not_priced_through_another_tenants_carrier():
    cat = catalog([r("39", "c1", tenant="t")], carriers=[carrier("c1", tenant="other")])
    assert price(cat, account(tenant="t")) is None
    assert lcr(cat, account(tenant="t")) == []


def test_canyan_style_sip_prefixes_price_bare_numbers_and_uris_alike():
    cat = catalog([r("sip:39", "c1")])
    assert price(cat, account(), "39040123123") == ("sip:39", "c1", "pl")
    assert price(cat, account(), DEST) == ("sip:39", "c1", "pl")


def test_equally_specific_raw_and_number_prefixes_compete_on_price():
    # "sip:abcd" (raw, 4 characters after the scheme) and "abcd" (user prefix, 4 characters) both match.
    cat = catalog([r("sip:abcd", "cheap", 1), r("abcd", "dear", 5)])
    assert price(cat, account(), "sip:abcd@example.com") == ("sip:abcd", "cheap", "pl")


def test_rate_choice_between_spellings_of_one_prefix_does_not_depend_on_load_order():
    plain = r("39", "c1", 1, free=0)
    spelt = r("sip:39", "c1", 1, free=30)
    first = destination_rate(catalog([plain, spelt]), account(), DEST, NOW)
    second = destination_rate(catalog([spelt, plain]), account(), DEST, NOW)
    assert first == second


# --- least_cost_routing -------------------------------------------------------------------------------------------

def test_lcr_orders_carriers_by_price_per_second():
    cat = catalog([r("39", "c1", 120, increment=60), r("39", "c2", 3), r("39", "c3", 1)])
    assert lcr(cat, account()) == ["c3", "c1", "c2"]


def test_lcr_compares_price_per_second_not_price_per_increment():
    cat = catalog([r("39", "c1", 30, increment=60), r("39", "c2", 1, increment=1)])
    assert lcr(cat, account()) == ["c1", "c2"]


def test_lcr_breaks_equal_price_per_second_by_connect_fee():
    cat = catalog([r("39", "c1", 1, connect_fee=9), r("39", "c2", 60, increment=60, connect_fee=1)])
    assert lcr(cat, account()) == ["c2", "c1"]


def test_lcr_breaks_equal_cost_by_the_longer_prefix():
    cat = catalog([r("39", "c1", 2), r("3904", "c2", 2)])
    assert lcr(cat, account()) == ["c2", "c1"]


def test_lcr_breaks_equal_cost_and_prefix_by_carrier_tag():
    cat = catalog([r("39", "zz"), r("39", "aa"), r("39", "mm")])
    assert lcr(cat, account()) == ["aa", "mm", "zz"]


def test_lcr_offers_each_carrier_at_its_own_longest_prefix_rate():
    # c1's specific rate (10) counts, not its cheap generic one (1): c2 at 5 comes first.
    cat = catalog([r("39", "c1", 1), r("3904", "c1", 10), r("39", "c2", 5)])
    assert lcr(cat, account()) == ["c2", "c1"]


def test_a_cheap_generic_prefix_of_another_carrier_still_competes_on_price():
    cat = catalog([r("sip:3", "c2", 1), r("sip:39", "c1", 5), r("sip:390", "c3", 7)])
    assert lcr(cat, account()) == ["c2", "c1", "c3"]


def test_lcr_lists_a_carrier_once_even_with_several_matching_rates():
    cat = catalog([r("3", "c1", 1), r("39", "c1", 2), r("390", "c1", 3), r("39", "c1", 1, pricelist="other"), r("39", "c2")])
    tags = lcr(cat, account())
    assert sorted(tags) == ["c1", "c2"]
    assert len(tags) == 2


def test_lcr_per_carrier_ties_on_the_same_prefix_use_the_cheaper_rate():
    cat = catalog([r("39", "c1", 9, pricelist="a"), r("39", "c1", 1, pricelist="b"), r("39", "c2", 5)])
    assert lcr(cat, account()) == ["c1", "c2"]


def test_lcr_drops_inactive_and_missing_carriers():
    cat = catalog([r("39", "off", 0), r("39", "gone", 0), r("39", "on", 9)], carriers=[carrier("off", active=False), carrier("on")])
    assert lcr(cat, account()) == ["on"]


def test_lcr_uses_only_the_accounts_pricelists():
    cat = catalog([r("39", "c1", 1, pricelist="other"), r("39", "c2", 5, pricelist="mine")])
    assert lcr(cat, account(pricelist_tags=("mine",))) == ["c2"]
    assert lcr(cat, account()) == ["c1", "c2"]


def test_lcr_carrier_tags_restrict_the_carriers():
    cat = catalog([r("sip:3", "c2", 1), r("sip:39", "c1", 5)])
    assert lcr(cat, account(carrier_tags=("c1",))) == ["c1"]


def test_lcr_empty_carrier_tags_mean_unrestricted_like_the_rate():
    cat = catalog([r("sip:3", "c2", 1), r("sip:39", "c1", 5)])
    acc = account(carrier_tags=())
    assert lcr(cat, acc) == ["c2", "c1"]
    assert price(cat, acc) == ("sip:39", "c1", "pl")


def test_carrier_tags_restriction_is_applied_identically_to_rate_and_routing():
    cat = catalog([r("3904", "c1", 1), r("39", "c2", 2), r("39", "c3", 3)])
    acc = account(carrier_tags=("c2", "c3"))
    assert price(cat, acc)[1] in lcr(cat, acc)
    assert set(lcr(cat, acc)) == {"c2", "c3"}


def test_lcr_ignores_rates_outside_their_effective_dates():
    cat = catalog([
        r("39", "early", 0, datetime_start=NOW + timedelta(seconds=1)),
        r("39", "late", 0, datetime_end=NOW),
        r("39", "now", 5, datetime_start=NOW, datetime_end=NOW + timedelta(seconds=1)),
    ])
    assert lcr(cat, account()) == ["now"]


def test_lcr_carrier_tags_override_forces_the_set_and_order():
    cat = catalog([r("39", "c1", 1), r("39", "c2", 2)], carriers=[carrier("c1"), carrier("c2"), carrier("c3")])
    assert lcr(cat, account(carrier_tags_override=("c3", "c2"))) == ["c3", "c2"]


def test_lcr_override_drops_unknown_and_inactive_carriers_and_repeats():
    cat = catalog([r("39", "c1")], carriers=[carrier("c1"), carrier("c2"), carrier("off", active=False)])
    acc = account(carrier_tags_override=("c2", "nope", "off", "c1", "c2"))
    assert lcr(cat, acc) == ["c2", "c1"]


def test_lcr_override_applies_without_destination_and_ignores_carrier_tags():
    cat = catalog([], carriers=[carrier("c1"), carrier("c2")])
    acc = account(carrier_tags=("c1",), carrier_tags_override=("c2",))
    assert lcr(cat, acc, destination=None) == ["c2"]


@pytest.mark.parametrize("destination", [None, ""])
def test_lcr_without_destination_is_empty(destination):
    assert lcr(catalog([r("", "c1")]), account(), destination) == []


def test_lcr_without_matching_rate_is_empty():
    assert lcr(catalog([r("49", "c1")]), account()) == []


def test_canyan_lcr_example_is_fixed():
    # Spec 2.3: the original returned ["UDP:h3:5080","TCP:h2:5070","UDP:h1:5060","TCP:h2:5070"].
    cat = catalog(
        [r("sip:3", "c3", 0), r("sip:3", "c2", 1), r("sip:39", "c1", 5), r("sip:390", "c2", 7)],
        carriers=[
            carrier("c1", host="h1", port=5060, protocol="UDP"),
            carrier("c2", host="h2", port=5070, protocol="TCP"),
            carrier("c3", host="h3", port=5080, protocol="UDP", active=False),
        ],
    )
    acc = account()
    # c2 is offered at its longest prefix (sip:390, rate 7): c1 (5) first.
    assert [c.address for c in least_cost_routing(cat, acc, DEST, NOW)] == ["UDP:h1:5060", "TCP:h2:5070"]
    assert [c.address for c in least_cost_routing(cat, account(carrier_tags=("c1",)), DEST, NOW)] == ["UDP:h1:5060"]
    assert [c.address for c in least_cost_routing(cat, account(carrier_tags=()), DEST, NOW)] == [
        "UDP:h1:5060", "TCP:h2:5070",
    ]


@pytest.mark.parametrize(
    ("kwargs", "address"),
    [
        ({"host": "carrier", "port": 5060}, "UDP:carrier:5060"),
        ({"host": "h2", "port": 5070, "protocol": "TCP"}, "TCP:h2:5070"),
        ({"host": "carrier", "port": None}, "UDP:carrier"),
        ({"host": "2001:db8::1", "port": 5060}, "UDP:[2001:db8::1]:5060"),
        ({"host": "[2001:db8::1]", "port": 5060}, "UDP:[2001:db8::1]:5060"),
    ],
)
def test_carrier_address_is_protocol_host_port(kwargs, address):
    assert Carrier("t", "c", **kwargs).address == address


# --- properties ---------------------------------------------------------------------------------------------------

CARRIERS = ["c1", "c2", "c3", "c4"]
PRICELISTS = ["p1", "p2"]
PROPERTY = settings(max_examples=150, deadline=None)

rate_rows = st.lists(
    st.tuples(
        st.sampled_from(PRICELISTS),
        st.sampled_from(CARRIERS),
        st.sampled_from(["", "3", "39", "390", "3904", "4", "sip:alice@", "sip:39040123456@"]),
        st.integers(0, 5),   # connect fee
        st.integers(0, 60),  # rate
        st.sampled_from([1, 30, 60]),
        st.integers(0, 2),
    ),
    max_size=20,
    unique_by=lambda row: row[:3],  # the database's UNIQUE(tenant, pricelist_tag, prefix, carrier_tag)
)
accounts = st.builds(
    account,
    pricelist_tags=st.sampled_from([(), ("p1",), ("p2", "p1")]),
    carrier_tags=st.sampled_from([(), ("c1", "c3"), ("c2",)]),
)
inactive = st.sets(st.sampled_from(CARRIERS), max_size=2)
routed_destinations = st.sampled_from([DEST, "39040123123", "tel:+39-040", "sip:alice@example.com", "4930"])


def build(rows, off):
    rates = [r(prefix, c, price, pricelist=pl, connect_fee=cf, increment=inc, free=free)
             for pl, c, prefix, cf, price, inc, free in rows]
    carriers = [carrier(tag, active=tag not in off) for tag in CARRIERS]
    return rates, carriers


@PROPERTY
@given(rate_rows, accounts, inactive, routed_destinations, st.randoms(use_true_random=False))
def test_routing_is_independent_of_rate_insertion_order_and_lists_each_carrier_once(rows, acc, off, dest, rnd):
    rates, carriers = build(rows, off)
    shuffled = list(rates)
    rnd.shuffle(shuffled)
    one, other = catalog(rates, carriers=carriers), catalog(shuffled, carriers=carriers)
    routed = lcr(one, acc, dest)
    assert routed == lcr(other, acc, dest)
    assert len(routed) == len(set(routed))
    assert destination_rate(one, acc, dest, NOW) == destination_rate(other, acc, dest, NOW)


@PROPERTY
@given(rate_rows, accounts, inactive, routed_destinations)
def test_routing_offers_only_active_allowed_carriers_and_the_priced_carrier_is_among_them(rows, acc, off, dest):
    rates, carriers = build(rows, off)
    cat = catalog(rates, carriers=carriers)
    routed = lcr(cat, acc, dest)
    assert not set(routed) & off
    if acc.carrier_tags:
        assert set(routed) <= set(acc.carrier_tags)
    priced = destination_rate(cat, acc, dest, NOW)
    assert (priced is None) == (routed == [])
    if priced is not None:
        assert priced.carrier_tag in routed
        assert priced.pricelist_tag in (acc.pricelist_tags or PRICELISTS)


# --- remembered routing results -----------------------------------------------------------------------------------

def test_numbers_sharing_their_longest_prefix_share_one_remembered_result():
    cat = catalog([r("39", "c1", 2), r("3904", "c2", 1), r("3904", "c1", 3), r("44", "c3")])
    acc = account()
    first = lcr(cat, acc, "sip:39040111@example.com")
    assert first == ["c2", "c1"] and len(cat.routes) == 1
    assert lcr(cat, acc, "390409999") == first and len(cat.routes) == 1
    assert lcr(cat, acc, "3905") == ["c1"] and len(cat.routes) == 2
    assert lcr(cat, account("b", carrier_tags=("c1",)), "39040") == ["c1"]  # another profile, its own result
    assert price(cat, acc, "39041") == ("3904", "c2", "pl")


def test_results_that_depend_on_effective_dates_are_not_remembered():
    cat = catalog([r("39", "late", 1, datetime_start=NOW + timedelta(seconds=1)), r("39", "always", 5)])
    acc = account()
    assert lcr(cat, acc, at=NOW) == ["always"]
    assert lcr(cat, acc, at=NOW + timedelta(seconds=1)) == ["late", "always"]
    assert lcr(cat, acc, at=NOW) == ["always"] and not cat.routes


def test_tables_with_uri_prefixes_are_not_remembered_by_number():
    cat = catalog([r("39", "c1"), r("sip:alice@", "c2")])
    assert lcr(cat, account(), "sip:alice@example.com") == ["c2"]
    assert lcr(cat, account(), "39040") == ["c1"] and not cat.routes


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["3", "39", "390", "3904", "44"]), st.sampled_from(["c1", "c2", "c3"]),
                          st.integers(0, 5), st.integers(1, 3)), min_size=1, max_size=12),
       st.lists(st.sampled_from(["39040", "3904", "390", "3", "44", "4", "5"]), min_size=1, max_size=8))
def test_remembered_results_equal_freshly_computed_ones(rows, numbers):
    rates = [r(prefix, c, price, increment=inc) for prefix, c, price, inc in rows]
    remembered = catalog(rates)
    for number in numbers:
        fresh = catalog(rates)
        assert lcr(remembered, account(), number) == lcr(fresh, account(), number)
        assert price(remembered, account(), number) == price(fresh, account(), number)


def test_a_route_over_a_table_without_a_deck_reads_the_destinations_number_once(monkeypatch):
    from agent.pricing import routing, table

    read = []
    real = routing.number_of

    def counted(destination: str) -> str:
        read.append(destination)
        return real(destination)

    monkeypatch.setattr(routing, "number_of", counted)
    monkeypatch.setattr(table, "number_of", counted)
    account = Account("t", "a")
    cat = catalog([r("39", "c1"), r("3904", "c2", 2)], [account])
    for _ in range(2):  # the route made, then remembered
        read.clear()
        assert [c.carrier_tag for c in least_cost_routing(cat, account, DEST, NOW)] == ["c1", "c2"]
        assert read == [DEST]

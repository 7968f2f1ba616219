"""The catalog half of an authorization: refusals, parties and carriers (spec 2.4, 2.7, 2.8, 2.8a; fixes #24, #25)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from agent.pricing.account import Account, AccountType
from agent.pricing.carrier import Carrier
from agent.pricing.catalog import Catalog
from agent.pricing.plan import Plan, Reason, plan_call
from agent.pricing.rate import Rate

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
DEST = "sip:39040123456@anotherdomain.com:5060"
T = "t"


def rate(prefix, carrier, price=1, pricelist="pl", tenant=T) -> Rate:
    return Rate(tenant, pricelist, carrier, prefix, 0, price, 1, 0)


def account(tag, tenant=T, **fields) -> Account:
    return Account(tenant, tag, **fields)


def catalog(*accounts: Account, rates=None, carriers=None) -> Catalog:
    if rates is None:
        rates = [rate("39", "c1", 2, "pl"), rate("3904", "c2", 5, "special")]
    if carriers is None:
        carriers = [Carrier(x.tenant, x.carrier_tag, f"h-{x.carrier_tag}", 5060) for x in rates]
    return Catalog.of(accounts, carriers, rates)


def plan(cat, account_tag=None, destination_account_tag=None, destination=DEST, tenant=T) -> Plan:
    return plan_call(cat, tenant, account_tag, destination_account_tag, destination, NOW)


def refusal(p: Plan):
    return p.refusal, p.refused_tag


def parties(p: Plan):
    return [(x.account.account_tag, x.inbound, x.primary, x.rate and x.rate.prefix) for x in p.parties]


# --- refusals -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("caller", "callee"), [(None, None), ("", None), (None, ""), ("", "")])
def test_neither_tag_is_refused_as_not_found(caller, callee):
    p = plan(catalog(account("a")), caller, callee)
    assert p.refusal is Reason.NOT_FOUND
    assert p.parties == () and p.carriers == ()


def test_unknown_account_is_not_found_with_its_tag():
    assert refusal(plan(catalog(account("a")), "ghost")) == (Reason.NOT_FOUND, "ghost")


def test_an_empty_account_tag_counts_as_absent_and_rates_the_callee_only():
    p = plan(catalog(account("a"), account("b")), "", "b")
    assert p.refusal is None
    assert parties(p) == [("b", True, True, None)]
    assert p.carriers == ()


def test_account_of_another_tenant_is_not_found():
    cat = catalog(account("a", tenant="other"))
    assert refusal(plan(cat, "a")) == (Reason.NOT_FOUND, "a")


def test_inactive_account_is_not_active_with_its_tag():
    assert refusal(plan(catalog(account("a", active=False)), "a")) == (Reason.NOT_ACTIVE, "a")


def test_not_active_is_decided_before_the_destination_is_looked_at():
    assert refusal(plan(catalog(account("a", active=False)), "a", destination=None)) == (Reason.NOT_ACTIVE, "a")


def test_destination_without_rate_is_unreachable():
    assert refusal(plan(catalog(account("a")), "a", destination="4930123")) == (
        Reason.UNREACHEABLE_DESTINATION, "a",
    )


@pytest.mark.parametrize("destination", [None, ""])
def test_a_missing_destination_is_unreachable_instead_of_crashing(destination):
    assert refusal(plan(catalog(account("a")), "a", destination=destination)) == (
        Reason.UNREACHEABLE_DESTINATION, "a",
    )


def test_a_rate_outside_the_accounts_pricelists_makes_the_destination_unreachable():
    cat = catalog(account("a", pricelist_tags=("nothing-matches",)))
    assert refusal(plan(cat, "a")) == (Reason.UNREACHEABLE_DESTINATION, "a")


def test_unknown_destination_account_is_not_found_with_its_tag():
    assert refusal(plan(catalog(account("a")), "a", "ghost")) == (Reason.NOT_FOUND, "ghost")


def test_inactive_destination_account_is_not_active_with_its_tag():
    cat = catalog(account("a"), account("b", active=False))
    assert refusal(plan(cat, "a", "b")) == (Reason.NOT_ACTIVE, "b")
    assert refusal(plan(cat, None, "b")) == (Reason.NOT_ACTIVE, "b")


@pytest.mark.parametrize(
    ("caller", "destination", "expected"),
    [
        pytest.param(None, DEST, (Reason.NOT_FOUND, "a"), id="missing-caller"),
        pytest.param({"active": False}, DEST, (Reason.NOT_ACTIVE, "a"), id="inactive-caller"),
        pytest.param({}, "4930", (Reason.UNREACHEABLE_DESTINATION, "a"), id="unreachable-caller"),
    ],
)
def test_the_callers_refusal_comes_before_the_destination_accounts(caller, destination, expected):
    accounts = [] if caller is None else [account("a", **caller)]
    for callee in ([], [account("b", active=False)]):  # callee missing, then inactive
        assert refusal(plan(catalog(*accounts, *callee), "a", "b", destination)) == expected


# --- parties ------------------------------------------------------------------------------------------------------

def test_an_outbound_call_has_the_caller_as_primary_party_with_its_rate_and_carriers():
    p = plan(catalog(account("a")), "a")
    assert p.refusal is None and p.refused_tag is None
    assert parties(p) == [("a", False, True, "3904")]
    assert [c.carrier_tag for c in p.carriers] == ["c1", "c2"]


def test_an_inbound_only_call_has_the_callee_without_rate_nor_carriers():
    p = plan(catalog(account("b")), None, "b")
    assert parties(p) == [("b", True, True, None)]
    assert p.carriers == ()


def test_an_inbound_only_call_needs_no_destination():
    assert parties(plan(catalog(account("b")), None, "b", destination=None)) == [("b", True, True, None)]


def test_both_sides_give_caller_parties_then_callee_parties():
    cat = catalog(account("a", linked_accounts=("la",)), account("la"), account("b", linked_accounts=("lb",)), account("lb"))
    assert parties(plan(cat, "a", "b")) == [
        ("a", False, True, "3904"),
        ("la", False, False, "3904"),
        ("b", True, True, None),
        ("lb", True, False, None),
    ]


def test_carriers_come_from_the_callers_routing():
    cat = catalog(account("a", carrier_tags=("c1",)), account("b", carrier_tags=("c2",)))
    assert [c.carrier_tag for c in plan(cat, "a", "b").carriers] == ["c1"]


def test_carrier_override_drives_the_plans_carriers():
    cat = catalog(account("a", carrier_tags_override=("c2", "c1")))
    assert [c.address for c in plan(cat, "a").carriers] == ["UDP:h-c2:5060", "UDP:h-c1:5060"]


# --- linked accounts ----------------------------------------------------------------------------------------------

def test_each_linked_account_is_priced_at_its_own_rate():
    cat = catalog(
        account("a", pricelist_tags=("pl",), linked_accounts=("l1", "l2")),
        account("l1"),
        account("l2", carrier_tags=("c1",)),
    )
    p = plan(cat, "a")
    assert parties(p) == [("a", False, True, "39"), ("l1", False, False, "3904"), ("l2", False, False, "39")]


def test_a_linked_account_without_matching_rate_is_kept_with_no_rate():
    cat = catalog(account("a", linked_accounts=("l",)), account("l", pricelist_tags=("none",)))
    p = plan(cat, "a")
    assert p.refusal is None
    assert parties(p) == [("a", False, True, "3904"), ("l", False, False, None)]


def test_unknown_linked_accounts_are_ignored():
    cat = catalog(account("a", linked_accounts=("ghost", "l")), account("l"))
    assert [x.account.account_tag for x in plan(cat, "a").parties] == ["a", "l"]


def test_linked_accounts_of_another_tenant_are_ignored():
    cat = catalog(account("a", linked_accounts=("l",)), account("l", tenant="other"))
    assert [x.account.account_tag for x in plan(cat, "a").parties] == ["a"]


def test_self_links_and_duplicate_links_are_ignored():
    cat = catalog(account("a", linked_accounts=("a", "l", "l", "a")), account("l"))
    assert [x.account.account_tag for x in plan(cat, "a").parties] == ["a", "l"]


def test_linked_accounts_keep_their_listed_order():
    cat = catalog(account("a", linked_accounts=("z", "m", "b")), account("b"), account("m"), account("z"))
    assert [x.account.account_tag for x in plan(cat, "a").parties] == ["a", "z", "m", "b"]


def test_linked_accounts_are_followed_one_level_only():
    cat = catalog(account("a", linked_accounts=("l",)), account("l", linked_accounts=("deep",)), account("deep"))
    assert [x.account.account_tag for x in plan(cat, "a").parties] == ["a", "l"]


def test_an_inactive_linked_account_refuses_the_call_as_not_active_with_its_tag():
    cat = catalog(account("a", linked_accounts=("l",)), account("l", active=False))
    assert refusal(plan(cat, "a")) == (Reason.NOT_ACTIVE, "l")


def test_an_inactive_linked_account_of_the_callee_refuses_the_call_with_its_tag():
    cat = catalog(account("a"), account("b", linked_accounts=("lb",)), account("lb", active=False))
    assert refusal(plan(cat, "a", "b")) == (Reason.NOT_ACTIVE, "lb")
    assert plan(cat, "a", "b").parties == ()


def test_an_inactive_linked_account_of_the_callee_is_checked_after_the_caller():
    cat = catalog(account("b", linked_accounts=("lb",)), account("lb", active=False))
    assert refusal(plan(cat, "a", "b")) == (Reason.NOT_FOUND, "a")


def test_linked_accounts_of_the_callee_are_inbound_without_rate():
    cat = catalog(account("b", linked_accounts=("lb",)), account("lb"))
    p = plan(cat, None, "b")
    assert parties(p) == [("b", True, True, None), ("lb", True, False, None)]
    assert not any(x.spends_balance for x in p.parties)


# --- who spends balance -------------------------------------------------------------------------------------------

def test_an_outbound_prepaid_party_spends_balance():
    p = plan(catalog(account("a", type=AccountType.PREPAID)), "a")
    assert p.parties[0].spends_balance


def test_an_inbound_party_never_spends_balance_even_when_prepaid():
    p = plan(catalog(account("a"), account("b", type=AccountType.PREPAID)), "a", "b")
    callee = p.parties[-1]
    assert callee.inbound and callee.rate is None and not callee.spends_balance


def test_postpaid_without_credit_limit_does_not_spend_balance():
    acc = account("a", type=AccountType.POSTPAID, balance=-500)
    assert not acc.spends_balance
    assert acc.credit == 0
    assert not plan(catalog(acc), "a").parties[0].spends_balance


@pytest.mark.parametrize("limit", [0, 1000])
def test_postpaid_with_a_credit_limit_spends_balance_down_to_the_limit(limit):
    acc = account("a", type=AccountType.POSTPAID, credit_limit=limit)
    assert acc.spends_balance
    assert acc.credit == limit
    assert plan(catalog(acc), "a").parties[0].spends_balance


def test_prepaid_has_no_credit_even_with_a_credit_limit():
    acc = account("a", type=AccountType.PREPAID, credit_limit=1000)
    assert acc.spends_balance
    assert acc.credit == 0


def test_linked_parties_spend_balance_by_their_own_type():
    cat = catalog(
        account("a", type=AccountType.POSTPAID, linked_accounts=("pre", "post", "capped")),
        account("pre", type=AccountType.PREPAID),
        account("post", type=AccountType.POSTPAID),
        account("capped", type=AccountType.POSTPAID, credit_limit=10),
    )
    spends = {x.account.account_tag: x.spends_balance for x in plan(cat, "a").parties}
    assert spends == {"a": False, "pre": True, "post": False, "capped": True}


# --- catalog lookups used by the plan -----------------------------------------------------------------------------

def test_catalog_treats_empty_or_missing_tags_as_absent():
    cat = catalog(account(""), account("a"))
    assert cat.account(T, "") is None
    assert cat.account(T, None) is None
    assert cat.carrier(T, None) is None
    assert cat.account(T, "a") is not None


def test_catalog_of_an_unknown_tenant_has_an_empty_table():
    cat = catalog(account("a"))
    assert list(cat.table("nobody").matches(DEST)) == []
    assert cat.rate_count == 2

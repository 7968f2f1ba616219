"""Origin rating end to end: rates with a `source_prefix` written through GraphQL and the JSON catalog, and
authorizations from two callers to one destination priced differently (REST)."""

from __future__ import annotations

from tests.test_transaction import at, catalog, post, prepaid, records

FIELDS = "prefix source_prefix rate"
KEY = 'pricelist_tag:"p1", carrier_tag:"c1", prefix:"39"'


async def call(client, tag: str, source: str, seconds: int) -> dict:
    """Authorizes, begins and ends a call of account `a` from `source` to 39061234567; the authorization."""
    answer = await post(client, "authorization", transaction_tag=tag, account_tag="a", source=source,
                        destination="sip:39061234567@example.com")
    assert answer["authorized"] is True, answer
    await post(client, "begin", transaction_tag=tag, account_tag="a", source=source,
               destination="sip:39061234567@example.com", timestamp_begin=at(0))
    assert (await post(client, "end", transaction_tag=tag, timestamp_end=at(seconds)))["ok"] is True
    return answer


async def test_two_callers_to_one_destination_are_priced_by_their_origin(agent, stack):
    client = await agent(catalog(prepaid("a", 10_000), rates=[
        {"pricelist_tag": "p1", "carrier_tag": "c1", "prefix": "39", "rate": 1},
        {"pricelist_tag": "p1", "carrier_tag": "c1", "prefix": "39", "rate": 3, "source_prefix": "+3906"},
        {"pricelist_tag": "p1", "carrier_tag": "c2", "prefix": "39", "rate": 2},
    ]))
    rome = await call(client, "rome", "sip:390612345@10.0.0.9", 10)
    # each carrier at its own best rate for this caller: c1's is its Rome rate (3), c2's its only one (2)
    assert rome["carriers"] == ["TCP:gw.example.com:5061", "UDP:10.0.0.1:5060"]
    assert await stack.balance("a") == 10_000 - 30  # the Rome callers' rate, 3 a second
    milan = await call(client, "milan", "sip:+390212345@10.0.0.9", 10)
    assert await stack.balance("a") == 10_000 - 30 - 10  # any origin: 1 a second
    assert milan["carriers"] == ["UDP:10.0.0.1:5060", "TCP:gw.example.com:5061"]  # 1, then 2
    anonymous = await post(client, "authorization", transaction_tag="anon", account_tag="a",
                           destination="39061234567")  # no source: the rates for any origin
    assert anonymous["authorized"] is True
    assert (await post(client, "rollback", transaction_tag="anon"))["ok"] is True
    stored = await records(stack, client, "rome")
    assert stored["a"]["destination_rate"]["source_prefix"] == "3906"
    assert stored["a"]["fee"] == 30
    assert "source_prefix" not in (await records(stack, client, "milan"))["a"]["destination_rate"]


async def test_rates_of_two_origins_are_written_read_and_deleted_by_their_source_prefix(gql, agent, stack):
    api = await gql(catalog(prepaid("a", 10_000), rates=[
        {"pricelist_tag": "p1", "carrier_tag": "c1", "prefix": "39", "rate": 1}]))
    data = await api(f'mutation {{ createPricelistRate({KEY}, rate:3, source_prefix:"+39 06") {{ {FIELDS} }} }}')
    assert data["createPricelistRate"] == {"prefix": "39", "source_prefix": "3906", "rate": 3}
    # the key alone names the rate for any origin; with a source prefix, that origin's
    data = await api(f'{{ PricelistRate({KEY}) {{ {FIELDS} }} origin: PricelistRate({KEY}, source_prefix:"3906")'
                     f' {{ {FIELDS} }} none: PricelistRate({KEY}, source_prefix:"44") {{ rate }} }}')
    assert data == {"PricelistRate": {"prefix": "39", "source_prefix": "", "rate": 1},
                    "origin": {"prefix": "39", "source_prefix": "3906", "rate": 3}, "none": None}
    await api(f'mutation {{ updatePricelistRate({KEY}, source_prefix:"3906", rate:4) {{ rate }} }}')
    await api(f'mutation {{ upsertPricelistRate({KEY}, rate:2) {{ rate }} }}')
    data = await api('{ allPricelistRates(sortField:"source_prefix") { source_prefix rate } '
                     ' only: allPricelistRates(filter:{source_prefix:"3906"}) { rate } }')
    assert data == {"allPricelistRates": [{"source_prefix": "", "rate": 2}, {"source_prefix": "3906", "rate": 4}],
                    "only": [{"rate": 4}]}
    # the rate just written prices the next call from a Rome number (the change laid over the deck)
    answer = await post(api.client, "authorization", transaction_tag="t1", account_tag="a",
                        source="sip:39061@h", destination="3906")
    assert answer["max_available_units"] == 10_000 // 4
    assert (await post(api.client, "rollback", transaction_tag="t1"))["ok"] is True
    answer = await post(api.client, "authorization", transaction_tag="t2", account_tag="a",
                        source="sip:44@h", destination="3906")
    assert answer["max_available_units"] == 10_000 // 2
    data = await api(f'mutation {{ deletePricelistRate({KEY}, source_prefix:"3906") {{ {FIELDS} }} }}')
    assert data["deletePricelistRate"]["source_prefix"] == "3906"
    data = await api("{ allPricelistRates { source_prefix rate } }")
    assert data["allPricelistRates"] == [{"source_prefix": "", "rate": 2}]


async def test_a_bad_or_repeated_source_prefix_is_refused_naming_the_field(gql):
    api = await gql(catalog(prepaid("a")))
    for value, message in (("sip:alice@", "source_prefix must be digits (a number prefix such as 39 or +39), got"
                                          " 'sip:alice@'!"),
                           ("1" * 17, f"source_prefix must be at most 16 digits, got '{'1' * 17}'!")):
        _, errors = await api.error(f'mutation {{ createPricelistRate({KEY}, source_prefix:"{value}") {{ rate }} }}')
        assert errors == [message]
    await api(f'mutation {{ createPricelistRate({KEY}, id:"00000000-0000-4000-8000-000000000001", rate:1,'
              ' source_prefix:"3906") { rate } }')
    _, errors = await api.error('mutation { updatePricelistRate(id:"00000000-0000-4000-8000-000000000001",'
                                ' source_prefix:"") { rate } }')  # the rate for any origin exists
    assert errors == ["PricelistRate with the same tenant and pricelist_tag, carrier_tag, prefix already exists!"]

"""`quote` and `Transaction.explain`: the kernel's own plan, decision and walks, nothing reserved or written."""

from __future__ import annotations

import random

from agent.pricing.quote import explain
from agent.pricing.rate import Rate, fee

T0 = "2030-01-01T10:00:00Z"


def at(seconds: float) -> str:
    from datetime import datetime, timedelta, timezone

    return (datetime(2030, 1, 1, 10, tzinfo=timezone.utc) + timedelta(seconds=seconds)).isoformat()


# 30/6 with a connect fee on the cheap carrier; a dearer carrier second in routing order
CATALOG = {
    "carriers": [{"carrier_tag": "c1", "host": "10.0.0.1", "port": 5060},
                 {"carrier_tag": "c2", "host": "10.0.0.2", "port": 5060, "protocol": "TCP"}],
    "pricelists": [{"pricelist_tag": "p1"}],
    "rates": [
        {"pricelist_tag": "p1", "carrier_tag": "c1", "prefix": "39", "connect_fee": 10, "rate": 1,
         "rate_increment": 6, "initial_increment": 30},
        {"pricelist_tag": "p1", "carrier_tag": "c2", "prefix": "39", "rate": 3, "rate_increment": 6},
        {"pricelist_tag": "p1", "carrier_tag": "c1", "prefix": "3904", "rate": 1, "rate_increment": 1,
         "minimum_duration": 60, "maximum_cost": 100},
    ],
    "accounts": [{"account_tag": "100", "type": "PREPAID", "balance": 1000, "pricelist_tags": ["p1"]}],
}

QUOTE = """query ($account: String!, $destination: String!, $duration: Int!, $at: DateTime) {
  quote(account_tag: $account, destination: $destination, duration: $duration, at: $at) {
    fee carriers carrier_tags max_available_units balance unauthorized_reason
    rate { prefix pricelist_tag carrier_tag connect_fee rate rate_increment initial_increment }
    explain { prefix duration billed_seconds fee segments { kind seconds count unit_seconds unit_price amount } }
    parties { account_tag primary fee }
  }
}"""


async def rest(client, operation: str, **body) -> dict:
    path = "/v1/authorization" if operation == "authorization" else f"/v1/{operation}_transaction"
    reply = await client.post(path, json=body)
    assert reply.status == 200, await reply.text()
    return await reply.json()


async def test_a_quote_equals_what_an_authorized_and_ended_call_of_that_duration_is_charged(gql, stack):
    api = await gql(CATALOG)
    for number, (destination, duration) in enumerate(
            [("39061234", 0), ("39061234", 10), ("39061234", 61), ("39061234", 125), ("390401234", 5),
             ("390401234", 90), ("390401234", 200)]):
        quoted = (await api(QUOTE, account="100", destination=destination, duration=duration, at=T0))["quote"]
        balance = await stack.balance("100")
        tag = f"call-{number}"
        auth = await rest(api.client, "authorization", transaction_tag=tag, account_tag="100",
                          destination=destination, timestamp_auth=T0)
        # the quote answers what the authorization answers, before it reserved anything
        assert quoted["carriers"] == auth["carriers"]
        assert quoted["max_available_units"] == auth["max_available_units"]
        assert quoted["balance"] == auth["balance"] == balance
        await rest(api.client, "begin", transaction_tag=tag, account_tag="100", timestamp_begin=at(0))
        await rest(api.client, "end", transaction_tag=tag, account_tag="100", timestamp_end=at(duration))
        charged = balance - await stack.balance("100")
        record = (await api('query ($tag: String) { Transaction(transaction_tag: $tag, account_tag: "100")'
                            ' { fee duration explain { fee prefix segments { amount } } } }', tag=tag))["Transaction"]
        assert quoted["fee"] == charged == record["fee"], (destination, duration)
        assert record["duration"] == duration
        assert record["explain"]["fee"] == record["fee"]
        assert record["explain"]["prefix"] == quoted["explain"]["prefix"] == quoted["rate"]["prefix"]
        assert sum(s["amount"] for s in quoted["explain"]["segments"]) == quoted["fee"]
        assert quoted["parties"] == [{"account_tag": "100", "primary": True, "fee": quoted["fee"]}]


async def test_a_quote_explains_the_block_the_increments_and_the_routing(gql):
    api = await gql(CATALOG)
    quoted = (await api(QUOTE, account="100", destination="sip:39061234@example.com", duration=61))["quote"]
    assert quoted["fee"] == 21  # connect fee 10, the 30 s block 5, six 6 s increments 6
    assert quoted["carrier_tags"] == ["c1", "c2"] and quoted["carriers"] == ["UDP:10.0.0.1:5060", "TCP:10.0.0.2:5060"]
    assert quoted["rate"] == {"prefix": "39", "pricelist_tag": "p1", "carrier_tag": "c1", "connect_fee": 10, "rate": 1,
                              "rate_increment": 6, "initial_increment": 30}
    assert quoted["explain"] == {"prefix": "39", "duration": 61, "billed_seconds": 61, "fee": 21, "segments": [
        {"kind": "connect_fee", "seconds": 0, "count": 1, "unit_seconds": None, "unit_price": 10, "amount": 10},
        {"kind": "block", "seconds": 30, "count": 1, "unit_seconds": 30, "unit_price": 5, "amount": 5},
        {"kind": "increments", "seconds": 36, "count": 6, "unit_seconds": 6, "unit_price": 1, "amount": 6}]}
    # 1,000 buys the connect fee and the block (15), then 985 increments of 6 s: 30 + 5,910 s
    assert quoted["max_available_units"] == 5940 and quoted["unauthorized_reason"] is None
    # minimum duration and maximum cost show as such
    short = (await api(QUOTE, account="100", destination="390401234", duration=5))["quote"]
    assert (short["fee"], short["explain"]["billed_seconds"]) == (60, 60)
    long = (await api(QUOTE, account="100", destination="390401234", duration=3600))["quote"]
    assert long["fee"] == 100
    assert long["explain"]["segments"][-1] == {"kind": "maximum_cost", "seconds": 0, "count": 1, "unit_seconds": None,
                                               "unit_price": 100, "amount": -3500}


async def drained(stack, timeout: float = 10.0) -> None:
    """Waits for the agent's outbox writer to have carried every entry to PostgreSQL."""
    import asyncio

    from cache import GROUPS

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while sum([await stack.redis.xlen(group.outbox) for group in GROUPS]):
        assert loop.time() < deadline, "outbox not drained in time"
        await asyncio.sleep(0.02)


async def test_a_quote_reserves_and_writes_nothing(gql, stack):
    api = await gql(CATALOG)

    async def state():
        keys = sorted(await stack.redis.keys("*"))
        values = {}
        for key in keys:
            kind = await stack.redis.type(key)
            if kind == "hash":
                values[key] = await stack.redis.hgetall(key)
            elif kind == "stream":
                values[key] = await stack.redis.xlen(key)
            elif kind == "string":
                values[key] = await stack.redis.get(key)
        tables = {table: await stack.database.fetchval(f"SELECT count(*) FROM {table}")
                  for table in ("transactions", "ledger", "catalog_changes", "accounts", "rerates")}
        return values, tables

    await drained(stack)  # the import's balance moves, carried by the agent's outbox writer
    before = await state()
    for duration in (0, 61, 14400):
        await api(QUOTE, account="100", destination="39061234", duration=duration, at=T0)
    assert await state() == before


async def test_a_quote_names_the_field_it_refuses(gql):
    api = await gql(CATALOG)
    cases = [
        ({"account": "100", "destination": "39061234", "duration": -1},
         "duration: must be between 0 and 14400 seconds (--max-units)"),
        ({"account": "100", "destination": "39061234", "duration": 14401},
         "duration: must be between 0 and 14400 seconds (--max-units)"),
        ({"account": "nobody", "destination": "39061234", "duration": 60},
         "account_tag: Account with tag = nobody not found in tenant default!"),
        ({"account": "100", "destination": "", "duration": 60}, "destination: must not be empty"),
    ]
    for variables, message in cases:
        _, errors = await api.error(QUOTE, **variables)
        assert errors == [message], variables


async def test_a_quote_says_why_the_agent_would_refuse_the_call(gql):
    api = await gql({**CATALOG, "accounts": [
        {"account_tag": "100", "type": "PREPAID", "balance": 1000, "pricelist_tags": ["p1"]},
        {"account_tag": "poor", "type": "PREPAID", "balance": 5, "pricelist_tags": ["p1"]}]})
    unreachable = (await api(QUOTE, account="100", destination="44123", duration=60))["quote"]
    assert (unreachable["fee"], unreachable["unauthorized_reason"], unreachable["carriers"]) == (
        None, "UNREACHEABLE_DESTINATION", [])
    poor = (await api(QUOTE, account="poor", destination="39061234", duration=60))["quote"]
    assert (poor["fee"], poor["unauthorized_reason"], poor["max_available_units"], poor["balance"]) == (
        20, "BALANCE_INSUFFICIENT", 0, 5)


def test_explanation_segments_add_up_to_the_kernel_fee():
    generator = random.Random(15)
    for _ in range(20_000):
        increment = generator.choice([1, 6, 30, 60])
        rate = Rate("t", "p", "c", "39", connect_fee=generator.choice([0, 0, 7, 100]), rate=generator.randint(0, 50),
                    rate_increment=increment, interval_start=generator.choice([0, 0, 1, 4]),
                    initial_increment=generator.choice([None, increment * generator.randint(1, 10)]),
                    minimum_duration=generator.choice([0, 0, 30, 600]),
                    maximum_cost=generator.choice([None, None, 0, 40, 5000]))
        duration = generator.randint(0, 20_000)
        found = explain(rate, duration)
        assert sum(segment.amount for segment in found.segments) == found.fee == fee(rate, duration), (rate, duration)
        assert found.billed_seconds == max(duration, rate.minimum_duration)

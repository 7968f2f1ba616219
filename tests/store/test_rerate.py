"""Rerating's exactly-once settlement (agent/store/rerate.py): an apply stopped between PostgreSQL and Redis is
finished by the next one, each adjustment made once; Redis's copy of a rerated call agrees with PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from agent.keys import CATALOG, DATABASE
from agent.store import rerate as rerating
from agent.store.writer import catch_up

START = datetime(2030, 1, 1, 10, tzinfo=timezone.utc)


def at(seconds: float) -> str:
    return (START + timedelta(seconds=seconds)).isoformat()


DOCUMENT = {
    "carriers": [{"carrier_tag": "c1", "host": "10.0.0.1", "port": 5060}],
    "pricelists": [{"pricelist_tag": "p1"}],
    "rates": [{"pricelist_tag": "p1", "carrier_tag": "c1", "prefix": "39", "rate": 2, "rate_increment": 1}],
    "accounts": [{"account_tag": "100", "type": "PREPAID", "balance": 1000, "pricelist_tags": ["p1"]}],
}


async def post(client, path: str, **body) -> dict:
    reply = await client.post(path, json=body)
    assert reply.status == 200, await reply.text()
    return await reply.json()


async def ended_call(client, tag: str, seconds: int) -> None:
    await post(client, "/v1/authorization", transaction_tag=tag, account_tag="100", destination="39040",
               timestamp_auth=at(0))
    await post(client, "/v1/begin_transaction", transaction_tag=tag, account_tag="100", timestamp_begin=at(0))
    await post(client, "/v1/end_transaction", transaction_tag=tag, account_tag="100", timestamp_end=at(seconds))


async def corrected(client):
    """The deck's rate corrected from 2 to 1 a second; the catalog the rerate prices with."""
    reply = await post(client, "/graphql", query='mutation { updatePricelistRate(pricelist_tag: "p1",'
                                                 ' carrier_tag: "c1", prefix: "39", rate: 1) { rate } }')
    assert reply == {"data": {"updatePricelistRate": {"rate": 1}}}
    return await client.app[CATALOG].catch_up()


async def ledger_total(stack, client) -> int:
    async with client.app[DATABASE].acquire() as connection:
        await catch_up(stack.redis, connection)
    return await stack.database.fetchval("SELECT coalesce(sum(amount), 0) FROM ledger WHERE account_tag = '100'")


async def apply(client, stack, catalog) -> rerating.Rerate:
    return await rerating.rerate(client.app[DATABASE], stack.redis, catalog, "default", None, START,
                                 START + timedelta(hours=1), dry_run=False)


async def test_an_apply_stopped_before_redis_is_settled_once_by_the_next_apply(agent, stack, monkeypatch):
    client = await agent(DOCUMENT)
    await ended_call(client, "a", 10)
    await ended_call(client, "b", 20)
    assert await stack.balance("100") == 940
    catalog = await corrected(client)

    settle = rerating.settle_pending
    calls = []

    async def stopping(*args):
        calls.append(args)
        if len(calls) > 1:  # the first settles earlier rerates; the stop comes after the batch's commit
            raise RuntimeError("stopped")
        return await settle(*args)

    monkeypatch.setattr(rerating, "settle_pending", stopping)
    with pytest.raises(RuntimeError):
        await apply(client, stack, catalog)
    monkeypatch.setattr(rerating, "settle_pending", settle)

    # PostgreSQL has the new fees and two pending adjustments; Redis has moved nothing yet
    fees = dict(await stack.database.fetch("SELECT transaction_tag, fee FROM transactions ORDER BY 1"))
    assert fees == {"a": 10, "b": 20}
    pending = await stack.database.fetch(rerating._PENDING, "default")
    assert sorted((row["old_fee"], row["new_fee"]) for row in pending) == [(20, 10), (40, 20)]
    assert await stack.balance("100") == 940
    # as if the stop had come after Redis made the first move and before PostgreSQL recorded it
    await rerating._move(stack.redis, pending[0])
    first = pending[0]["old_fee"] - pending[0]["new_fee"]
    assert await stack.balance("100") == 940 + first

    again = await apply(client, stack, catalog)
    assert (again.settled, again.examined, again.changed, again.delta) == (2, 2, 0, 0)
    assert await stack.balance("100") == 970  # 1000 - 10 - 20: each adjustment made exactly once
    assert await ledger_total(stack, client) == 970
    assert await stack.database.fetchval("SELECT count(*) FROM rerate_adjustments WHERE applied_at IS NULL") == 0
    assert not await stack.redis.keys("rating:*rerate:*")  # the markers go once every adjustment is applied

    third = await apply(client, stack, catalog)
    assert (third.settled, third.changed) == (0, 0) and await stack.balance("100") == 970


async def test_a_rerated_recorded_call_rolled_back_gives_back_exactly_its_new_fee(agent, stack):
    client = await agent(DOCUMENT)
    await post(client, "/v1/record_transaction", transaction_tag="r", account_tag="100", destination="39040",
               timestamp_begin=at(0), timestamp_end=at(30))
    assert await stack.balance("100") == 940
    catalog = await corrected(client)
    done = await apply(client, stack, catalog)
    assert (done.changed, done.delta) == (1, -30)
    assert await stack.balance("100") == 970
    # Redis still holds the recorded call: its rollback refunds the fee as rerated, not the first one
    assert (await post(client, "/v1/rollback_transaction", transaction_tag="r", account_tag="100"))["ok"] is True
    assert await stack.balance("100") == 1000
    assert await ledger_total(stack, client) == 1000
    assert await stack.database.fetchval("SELECT count(*) FROM transactions") == 0


async def test_a_dry_run_locks_and_writes_nothing(agent, stack):
    client = await agent(DOCUMENT)
    await ended_call(client, "a", 10)
    catalog = await corrected(client)
    found = await rerating.rerate(client.app[DATABASE], stack.redis, catalog, "default", "100", START,
                                  START + timedelta(hours=1), dry_run=True)
    assert (found.id, found.examined, found.changed, found.delta) == (None, 1, 1, -10)
    assert found.calls[0]["old_fee"] == 20 and found.calls[0]["new_fee"] == 10
    assert await stack.database.fetchval("SELECT fee FROM transactions") == 20
    for table in ("rerates", "rerate_adjustments"):
        assert await stack.database.fetchval(f"SELECT count(*) FROM {table}") == 0
    assert await stack.balance("100") == 980

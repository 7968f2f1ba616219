"""Rerating's exactly-once settlement (agent/store/rerate.py): an apply stopped between PostgreSQL and Redis is
finished by the next one, each adjustment made once; Redis's copy of a rerated call agrees with PostgreSQL.
The settlement runs on one server and on a Redis Cluster alike (one FCALL, rating_rerate_move)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from agent.keys import CATALOG, DATABASE
from agent.store import rerate as rerating
from agent.store.writer import catch_up

START = datetime(2030, 1, 1, 10, tzinfo=timezone.utc)
both_kinds = pytest.mark.parametrize("redis_kind", ["single", "cluster"])


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


async def stopped_apply(client, stack, catalog, monkeypatch) -> list:
    """An apply stopped after PostgreSQL committed its batch and before Redis made a move; its pending
    adjustments."""
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
    return await stack.database.fetch(rerating._PENDING, "default")


@both_kinds
async def test_an_apply_stopped_before_redis_is_settled_once_by_the_next_apply(agent, stack, monkeypatch, redis_kind):
    client = await agent(DOCUMENT)
    await ended_call(client, "a", 10)
    await ended_call(client, "b", 20)
    assert await stack.balance("100") == 940
    catalog = await corrected(client)
    pending = await stopped_apply(client, stack, catalog, monkeypatch)

    # PostgreSQL has the new fees and two pending adjustments; Redis has moved nothing yet
    fees = dict(await stack.database.fetch("SELECT transaction_tag, fee FROM transactions ORDER BY 1"))
    assert fees == {"a": 10, "b": 20}
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


@both_kinds
async def test_a_rerated_recorded_call_rolled_back_gives_back_exactly_its_new_fee(agent, stack, redis_kind):
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


@both_kinds
async def test_a_move_finds_the_call_changed_since_its_read_and_a_call_rolled_back_first_is_not_adjusted(
        agent, stack, monkeypatch, redis_kind):
    """A recorded call's rollback lands between the move's read of the call and the move (the interleaving a
    WATCH guarded): the move finds the call changed and does nothing, reads it again, and moves no money, since
    the rollback gave back the whole first fee; its marker is set, so the next apply settles it as made."""
    client = await agent(DOCUMENT)
    await post(client, "/v1/record_transaction", transaction_tag="r", account_tag="100", destination="39040",
               timestamp_begin=at(0), timestamp_end=at(30))
    assert await stack.balance("100") == 940
    catalog = await corrected(client)
    pending = await stopped_apply(client, stack, catalog, monkeypatch)
    assert [(row["old_fee"], row["new_fee"]) for row in pending] == [(60, 30)]

    read = stack.redis.hmget
    reads = []

    async def read_then_rolled_back(*args):
        found = await read(*args)
        reads.append(found)
        if len(reads) == 1:
            assert (await post(client, "/v1/rollback_transaction", transaction_tag="r", account_tag="100"))["ok"]
        return found

    monkeypatch.setattr(stack.redis, "hmget", read_then_rolled_back)
    await rerating._move(stack.redis, pending[0])
    monkeypatch.setattr(stack.redis, "hmget", read)
    assert len(reads) == 2 and reads[0] != reads[1]  # the first read was stale: the move looked again
    assert await stack.balance("100") == 1000  # 940 + 60 (the rollback's refund); no move of 30 on top
    marker = rerating.markers_key("default", pending[0]["rerate_id"])
    assert await stack.redis.hexists(marker, str(pending[0]["id"]))

    again = await apply(client, stack, catalog)
    assert again.settled == 1 and await stack.balance("100") == 1000
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

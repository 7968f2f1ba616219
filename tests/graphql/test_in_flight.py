"""At most `graphql_max_in_flight` GraphQL documents run at once in the process serving GraphQL; beyond, an
immediate 503 with Retry-After; documents of only the call mutations are outside the bound.

Documents are held in flight for real: a listing that counts `transactions` while the test holds an
exclusive lock on that table in PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib

from agent.graphql.endpoint import IN_FLIGHT
from tests.conftest import until
from tests.test_serve import metric

COUNT = "{ _allTransactionsMeta { count } }"
AUTHORIZE = 'mutation { authorization(transaction_tag:"%s", account_tag:"100", destination:"39") { authorized unauthorized_reason } }'


@contextlib.asynccontextmanager
async def _transactions_locked(database):
    """The transactions table locked for the block: a listing of it waits, in flight, until the block ends."""
    lock = database.transaction()
    await lock.start()
    try:
        await database.execute("LOCK TABLE transactions IN ACCESS EXCLUSIVE MODE")
        yield
    finally:
        await lock.rollback()


async def _shed(client) -> float:
    async with client.get("/metrics") as reply:
        return metric(await reply.text(), "rating_graphql_shed_total")


async def _waiting_on_lock(database, count: int) -> bool:
    """Whether `count` sessions wait for the transactions table's lock."""
    return await database.fetchval("SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
                                   " WHERE c.relname = 'transactions' AND NOT l.granted") >= count


async def test_documents_beyond_the_bound_are_refused_at_once_with_503_and_retry_after(gql, stack, tutorial):
    api = await gql(tutorial, graphql_max_in_flight=2)
    shed_before = await _shed(api.client)
    async with _transactions_locked(stack.database):
        held = [asyncio.create_task(api.raw(COUNT)) for _ in range(2)]
        await until(lambda: api.client.app[IN_FLIGHT].running == 2)
        await until(lambda: _waiting_on_lock(stack.database, 2))  # both blocked in PostgreSQL, not merely started
        reply = await api.client.post("/graphql", json={"query": COUNT})
        assert reply.status == 503 and reply.headers["Retry-After"] == "1"
        assert await reply.json() == {"data": None, "errors": [
            {"message": "Too many GraphQL documents running (at most 2); try again"}]}
        assert await _shed(api.client) == shed_before + 1
        assert not any(task.done() for task in held)
    assert [await task for task in held] == [(200, {"data": {"_allTransactionsMeta": {"count": 0}}})] * 2
    assert api.client.app[IN_FLIGHT].running == 0
    assert await api(COUNT) == {"_allTransactionsMeta": {"count": 0}}  # the bound is free again


async def test_call_mutations_are_answered_while_management_documents_fill_the_bound(gql, stack, tutorial):
    tutorial["accounts"][0].update(balance=10**6, max_concurrent_transactions=10)
    api = await gql(tutorial, graphql_max_in_flight=1)
    async with _transactions_locked(stack.database):
        held = asyncio.create_task(api.raw(COUNT))
        await until(lambda: api.client.app[IN_FLIGHT].running == 1)
        assert (await api.client.post("/graphql", json={"query": COUNT})).status == 503
        for n in range(3):
            assert await api(AUTHORIZE % f"t{n}") == {"authorization": {"authorized": True, "unauthorized_reason": None}}
        assert await api("{ version }") == {"version": 1}
        assert api.client.app[IN_FLIGHT].running == 1 and not held.done()
    assert (await held)[0] == 200


async def test_no_bound_when_graphql_max_in_flight_is_zero(gql, stack, tutorial):
    api = await gql(tutorial, graphql_max_in_flight=0)
    async with _transactions_locked(stack.database):
        held = [asyncio.create_task(api.raw(COUNT)) for _ in range(20)]
        await until(lambda: api.client.app[IN_FLIGHT].running == 20)
    assert {(await task)[0] for task in held} == {200}

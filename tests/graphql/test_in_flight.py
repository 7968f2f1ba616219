"""At most `graphql_max_in_flight` GraphQL documents run at once in the process serving GraphQL; beyond, an
immediate 503 with Retry-After; documents of only the call mutations are outside the bound.

Documents are held in flight for real: a listing that counts `transactions` while the test holds an
exclusive lock on that table in PostgreSQL.
"""

from __future__ import annotations

import asyncio

from agent.graphql.endpoint import IN_FLIGHT
from tests.test_serve import metric

COUNT = "{ _allTransactionsMeta { count } }"
AUTHORIZE = 'mutation { authorization(transaction_tag:"%s", account_tag:"100", destination:"39") { authorized unauthorized_reason } }'


async def _until(predicate, timeout: float = 20.0) -> None:
    """Polls `predicate`, bounded only against a hang."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "state not reached in time"
        await asyncio.sleep(0.01)


async def _shed(client) -> float:
    async with client.get("/metrics") as reply:
        return metric(await reply.text(), "rating_graphql_shed_total")


async def _waiting_on_lock(database) -> int:
    return await database.fetchval("SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
                                   " WHERE c.relname = 'transactions' AND NOT l.granted")


async def test_documents_beyond_the_bound_are_refused_at_once_with_503_and_retry_after(gql, stack, tutorial):
    api = await gql(tutorial, graphql_max_in_flight=2)
    shed_before = await _shed(api.client)
    lock = stack.database.transaction()
    await lock.start()
    await stack.database.execute("LOCK TABLE transactions IN ACCESS EXCLUSIVE MODE")
    held = [asyncio.create_task(api.raw(COUNT)) for _ in range(2)]
    try:
        await _until(lambda: api.client.app[IN_FLIGHT].running == 2)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 20
        while await _waiting_on_lock(stack.database) < 2:  # both blocked in PostgreSQL, not merely started
            assert loop.time() < deadline
            await asyncio.sleep(0.01)
        reply = await api.client.post("/graphql", json={"query": COUNT})
        assert reply.status == 503 and reply.headers["Retry-After"] == "1"
        assert await reply.json() == {"data": None, "errors": [
            {"message": "Too many GraphQL documents running (at most 2); try again"}]}
        assert await _shed(api.client) == shed_before + 1
        assert not any(task.done() for task in held)
    finally:
        await lock.rollback()
    assert [await task for task in held] == [(200, {"data": {"_allTransactionsMeta": {"count": 0}}})] * 2
    assert api.client.app[IN_FLIGHT].running == 0
    assert await api(COUNT) == {"_allTransactionsMeta": {"count": 0}}  # the bound is free again


async def test_call_mutations_are_answered_while_management_documents_fill_the_bound(gql, stack, tutorial):
    tutorial["accounts"][0].update(balance=10**6, max_concurrent_transactions=10)
    api = await gql(tutorial, graphql_max_in_flight=1)
    lock = stack.database.transaction()
    await lock.start()
    await stack.database.execute("LOCK TABLE transactions IN ACCESS EXCLUSIVE MODE")
    held = asyncio.create_task(api.raw(COUNT))
    try:
        await _until(lambda: api.client.app[IN_FLIGHT].running == 1)
        assert (await api.client.post("/graphql", json={"query": COUNT})).status == 503
        for n in range(3):
            assert await api(AUTHORIZE % f"t{n}") == {"authorization": {"authorized": True, "unauthorized_reason": None}}
        assert await api("{ version }") == {"version": 1}
        assert api.client.app[IN_FLIGHT].running == 1 and not held.done()
    finally:
        await lock.rollback()
    assert (await held)[0] == 200


async def test_no_bound_when_graphql_max_in_flight_is_zero(gql, stack, tutorial):
    api = await gql(tutorial, graphql_max_in_flight=0)
    lock = stack.database.transaction()
    await lock.start()
    await stack.database.execute("LOCK TABLE transactions IN ACCESS EXCLUSIVE MODE")
    held = [asyncio.create_task(api.raw(COUNT)) for _ in range(20)]
    try:
        await _until(lambda: api.client.app[IN_FLIGHT].running == 20)
    finally:
        await lock.rollback()
    assert {(await task)[0] for task in held} == {200}

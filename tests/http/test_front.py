"""The front door: call operations skip the application's router, everything else still goes through it;
past --max-in-flight new calls are refused at once."""

import asyncio

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import REGISTRY

from agent.app import create_app
from agent.config import Settings
from agent.http import front
from agent.metrics import ENDPOINTS
from tests.conftest import until

AUTH = {"transaction_tag": "front-1", "account_tag": "100", "destination": "39040123123"}


async def _client_counting_app_requests(stack, document) -> tuple[TestClient, list[str]]:
    """A started agent whose application handler records the paths it is given, behind the front door."""
    await stack.load(document)
    app = create_app(Settings(redis_url=stack.redis_url, database_url=stack.database_url))
    client = TestClient(TestServer(app))
    await client.start_server()
    server = client.server.runner.server
    through_app = server.request_handler
    seen: list[str] = []

    async def counting(request):
        seen.append(f"{request.method} {request.path}")
        return await through_app(request)

    server.request_handler = counting
    front.install(server, app)
    return client, seen


async def test_call_operations_are_served_without_the_application_router(stack, tutorial):
    client, seen = await _client_counting_app_requests(stack, tutorial)
    try:
        reply = await client.post("/v1/authorization", json=AUTH)
        assert reply.status == 200
        assert (await reply.json())["authorized"] is True
        for path in ("/v1/begin_transaction", "/v1/end_transaction", "/v1/rollback_transaction"):
            assert (await client.post(path, json={"transaction_tag": "front-1"})).status == 200
        assert (await client.post("/v1/authorization", data=b"{bad")).status == 400
        assert seen == []
    finally:
        await client.close()


async def test_everything_else_goes_through_the_application(stack, tutorial):
    client, seen = await _client_counting_app_requests(stack, tutorial)
    try:
        assert (await client.get("/status")).status == 204
        reply = await client.get("/v1/authorization")  # not POST: the router's 405 with its Allow header
        assert reply.status == 405
        assert reply.headers["Allow"] == "POST"
        assert (await client.post("/v1/authorization/", json=AUTH)).status == 404
        reply = await client.post("/graphql", json={"query": "{ __typename }"})
        assert reply.status in (200, 401, 403)  # answered by the GraphQL view, whatever its access rule
        assert seen == ["GET /status", "GET /v1/authorization", "POST /v1/authorization/", "POST /graphql"]
    finally:
        await client.close()


# ---- overload: --max-in-flight ----


def _shed(endpoint: str) -> float:
    ENDPOINTS.flush()
    return REGISTRY.get_sample_value("rating_requests_shed_total", {"endpoint": endpoint}) or 0.0


async def test_past_max_in_flight_new_calls_get_503_at_once_and_follow_ups_are_still_taken(stack, tutorial,
                                                                                            deck_dir):
    """Redis paused for writes (CLIENT PAUSE WRITE: every FCALL waits) holds the agent's requests open. With
    two in flight, a third authorization is refused at once while the two still wait; a rollback is taken
    all the same; once Redis goes on, everything held is answered and new calls are served again."""
    tutorial["accounts"][0].update(max_concurrent_transactions=10, balance=100_000)
    await stack.load(tutorial)
    app = create_app(Settings(redis_url=stack.redis_url, database_url=stack.database_url, deck_dir=deck_dir,
                              max_in_flight=2, redis_timeout=30.0))
    client = TestClient(TestServer(app))
    await client.start_server()
    flight = front.install(client.server.runner.server, app)
    assert (await client.post("/v1/authorization", json={**AUTH, "transaction_tag": "warm"})).status == 200
    shed_before = {op: _shed(op) for op in ("authorization", "record", "rollback")}
    paused = False
    held: list[asyncio.Task] = []
    try:
        # a bound on the pause too, so a failing test cannot leave the session's Redis paused
        await stack.redis.execute_command("CLIENT", "PAUSE", 30000, "WRITE")
        paused = True
        held = [asyncio.create_task(client.post("/v1/authorization", json={**AUTH, "transaction_tag": f"held-{n}"}))
                for n in range(2)]
        await until(lambda: flight.count == 2)

        refused = await client.post("/v1/authorization", json={**AUTH, "transaction_tag": "one-too-many"})
        assert refused.status == 503
        assert "overloaded" in (await refused.json())["detail"]
        refused = await client.post("/v1/record_transaction", json={**AUTH, "transaction_tag": "record-1"})
        assert refused.status == 503
        assert not any(task.done() for task in held), "refused while the others were still held"

        # a follow-up of an admitted call is taken beyond the bound (and waits for Redis like the others)
        held.append(asyncio.create_task(client.post("/v1/rollback_transaction", json={"transaction_tag": "held-0"})))
        await until(lambda: flight.count == 3)
        assert not any(task.done() for task in held)

        await stack.redis.execute_command("CLIENT", "UNPAUSE")
        paused = False
        replies = await asyncio.gather(*held)
        assert [r.status for r in replies] == [200, 200, 200]
        assert [(await r.json())["authorized"] for r in replies[:2]] == [True, True]
        assert (await replies[2].json())["ok"] is True
        assert flight.count == 0

        again = await client.post("/v1/authorization", json={**AUTH, "transaction_tag": "after"})
        assert again.status == 200 and (await again.json())["authorized"] is True
        assert _shed("authorization") == shed_before["authorization"] + 1
        assert _shed("record") == shed_before["record"] + 1
        assert _shed("rollback") == shed_before["rollback"]
        metrics = await (await client.get("/metrics")).text()
        assert 'rating_requests_shed_total{endpoint="authorization"}' in metrics
    finally:
        if paused:
            await stack.redis.execute_command("CLIENT", "UNPAUSE")
        for task in held:
            task.cancel()
        await client.close()


def test_max_in_flight_is_a_setting_and_cannot_be_negative():
    assert Settings().max_in_flight == 256
    assert Settings.from_args(["--max-in-flight", "0"]).max_in_flight == 0
    assert Settings.load(environ={"RATING_MAX_IN_FLIGHT": "7"}).max_in_flight == 7
    with pytest.raises(ValueError, match="max_in_flight"):
        Settings(max_in_flight=-1)

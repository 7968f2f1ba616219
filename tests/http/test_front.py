"""The front door: call operations skip the application's router, everything else still goes through it."""

from aiohttp.test_utils import TestClient, TestServer

from agent.app import create_app
from agent.config import Settings
from agent.http import front

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

"""GraphQL test helpers: an in-process agent and a `gql(query, **variables)` caller."""

from __future__ import annotations

import pytest


class GraphQL:
    def __init__(self, client, token: str | None = None) -> None:
        self.client = client
        self.token = token

    async def raw(self, query: str, variables: dict | None = None, headers: dict | None = None):
        headers = dict(headers or {})
        if self.token and "Authorization" not in headers:
            headers["Authorization"] = f"Bearer {self.token}"
        reply = await self.client.post("/graphql", json={"query": query, "variables": variables}, headers=headers)
        return reply.status, await reply.json()

    async def __call__(self, query: str, **variables) -> dict:
        """The `data` of a successful request (HTTP 200, no `errors` key)."""
        status, body = await self.raw(query, variables or None)
        assert status == 200 and "errors" not in body, body
        return body["data"]

    async def error(self, query: str, **variables) -> tuple[dict | None, list[str]]:
        """(data, error messages) of a failed request (HTTP 400)."""
        status, body = await self.raw(query, variables or None)
        assert status == 400 and body["errors"], body
        return body["data"], [e["message"] for e in body["errors"]]


@pytest.fixture
async def gql(agent, stack):
    """Starts an in-process agent (keyword arguments are settings) and returns a GraphQL caller."""
    await stack.database.execute("TRUNCATE customers, sellers, invoices CASCADE")

    async def start(document: dict | None = None, token: str | None = None, **settings) -> GraphQL:
        if token is not None:
            settings["management_token"] = token
        client = await agent(document, **settings)
        return GraphQL(client, token)

    return start


async def wait_catalog(client, predicate, timeout: float = 5.0) -> None:
    """Waits until the agent's in-memory catalog satisfies `predicate` (the reload after a change)."""
    import asyncio

    from agent.keys import CATALOG

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate(client.app[CATALOG].get()):
        assert loop.time() < deadline, "catalog not reloaded in time"
        await asyncio.sleep(0.01)

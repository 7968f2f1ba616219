"""Schemathesis against a served agent (`serve`, 2 workers, real Redis and PostgreSQL): generated requests for
every call endpoint (from /v1/openapi.json, valid and invalid ones) and every GraphQL field. None may be
answered 5xx or hang; afterwards a valid call is still written to PostgreSQL and nothing was refused by it.

RATING_FUZZ_EXAMPLES sets the examples per call endpoint, a tenth of it per GraphQL field (50 in the suite: the
examples are derandomized, the same every run, and hypothesis' generation, not the agent, takes most of the
time; a longer run: `make fuzz`, 1,000).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings

from agent.http.openapi import document
from agent.http.rest import ENDPOINTS_BY_PATH
from devstack import AgentProcess
from tests.conftest import ROOT, run_cli

EXAMPLES = int(os.environ.get("RATING_FUZZ_EXAMPLES", "50"))  # per call endpoint
GRAPHQL_EXAMPLES = max(1, EXAMPLES // 10)  # per GraphQL field: there are about 70
TIMEOUT = 10.0  # seconds a request may take: past it, a hang
SEEN: Counter = Counter()  # answers by status, every fuzzed request

openapi = schemathesis.openapi.from_dict(document(ENDPOINTS_BY_PATH))  # as GET /v1/openapi.json serves it
graphql = schemathesis.graphql.from_path(ROOT / "agent" / "graphql" / "schema.graphql")
_SETTINGS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def served(redis_server, postgres_server, tmp_path_factory):
    import redis

    redis.Redis.from_url(redis_server.url).flushall()
    folder = tmp_path_factory.mktemp("fuzz")
    document = folder / "catalog.json"
    document.write_text((ROOT / "demo" / "catalog.json").read_text())
    run_cli("import", "catalog", str(document), "--set-balances", redis_url=redis_server.url,
            database_url=postgres_server.url)
    agent = AgentProcess(redis_server.url, postgres_server.url, folder, workers=2).start()
    session = requests.Session()
    yield agent, session
    session.close()
    agent.stop()


def _sent(response) -> None:
    SEEN[response.status_code] += 1
    assert response.status_code < 500, f"{response.status_code}: {response.text[:500]}"


@openapi.parametrize()
@settings(max_examples=EXAMPLES, **_SETTINGS)
def test_no_call_endpoint_request_is_answered_5xx_or_hangs(served, case):
    agent, session = served
    _sent(case.call(base_url=agent.url, session=session, timeout=TIMEOUT))


@graphql.parametrize()
@settings(max_examples=GRAPHQL_EXAMPLES, **_SETTINGS)
def test_no_graphql_request_is_answered_5xx_or_hangs(served, case):
    agent, session = served
    _sent(case.call(base_url=agent.url + "/graphql", session=session, timeout=TIMEOUT))


def test_after_the_fuzzing_a_valid_call_is_still_written_to_postgresql(served, redis_server, postgres_server):
    import asyncpg

    agent, session = served
    print(f"\n[fuzz] {sum(SEEN.values())} requests, answers by status: {dict(sorted(SEEN.items()))}")
    tag = "after-fuzz"
    call = {"transaction_tag": tag, "account_tag": "100", "destination": "sip:39040123123@127.0.0.1"}
    for path, extra in (("authorization", {}), ("begin_transaction", {"timestamp_begin": "2030-01-01T10:00:00Z"}),
                        ("end_transaction", {"timestamp_end": "2030-01-01T10:01:00Z"})):
        reply = session.post(f"{agent.url}/v1/{path}", json={**call, **extra}, timeout=TIMEOUT)
        assert reply.status_code == 200, reply.text

    async def written() -> str | None:
        connection = await asyncpg.connect(postgres_server.url)
        try:
            for _ in range(200):  # bounded: 10 s
                state = await connection.fetchval(
                    "SELECT state FROM transactions WHERE transaction_tag = $1 AND account_tag = '100'", tag)
                if state == "ended":
                    break
                await asyncio.sleep(0.05)
            return state
        finally:
            await connection.close()

    assert asyncio.run(written()) == "ended"
    import redis

    client = redis.Redis.from_url(redis_server.url)
    assert sum(client.xlen(group.dead) for group in __import__("cache").GROUPS) == 0  # nothing the validation let through was refused by PostgreSQL
    served_document = session.get(f"{agent.url}/v1/openapi.json", timeout=TIMEOUT).json()
    assert served_document == json.loads(json.dumps(document(ENDPOINTS_BY_PATH)))

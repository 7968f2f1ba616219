"""Failure behaviour with real servers stopped and restarted (issue: fail closed on Redis, queue on PostgreSQL)."""

import asyncio
import json
import signal
import time
import urllib.request

import asyncpg
import pytest

from devstack import PostgresServer, RedisServer
from tests.conftest import AgentProcess, run_cli
from tests.test_transaction import catalog, post, prepaid


def http_post(url: str, body: dict, timeout: float = 5.0) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def test_redis_down_fails_fast_with_503_and_recovers_by_itself(agent, stack, tmp_path):
    own = RedisServer(tmp_path / "redis").start()
    try:
        await stack.load(catalog(prepaid("a", 1000)))
        from agent.app import create_app
        from agent.config import Settings
        from aiohttp.test_utils import TestClient, TestServer

        client = TestClient(TestServer(create_app(Settings(redis_url=own.url, database_url=stack.database_url))))
        await client.start_server()
        try:
            assert (await post(client, "authorization", transaction_tag="before", account_tag="a",
                               destination="39"))["authorized"] is True
            own.stop()
            started = time.monotonic()
            reply = await client.post("/v1/authorization", json={
                "transaction_tag": "during", "account_tag": "a", "destination": "39"})
            assert reply.status == 503
            assert "not available" in (await reply.json())["detail"]
            assert time.monotonic() - started < 1.5
            reply = await client.post("/v1/end_transaction", json={"transaction_tag": "before"})
            assert reply.status == 503

            own.start()
            for _ in range(50):
                reply = await client.post("/v1/authorization", json={
                    "transaction_tag": "after", "account_tag": "a", "destination": "39"})
                if reply.status == 200:
                    break
                await asyncio.sleep(0.1)
            assert reply.status == 200
            # The reservation made before the outage survived it (append-only file).
            assert (await reply.json())["unauthorized_reason"] == "BALANCE_INSUFFICIENT"
            assert (await post(client, "rollback", transaction_tag="before"))["ok"] is True
        finally:
            await client.close()
    finally:
        own.stop()


def _call(agent: AgentProcess, tag: str, account: str) -> None:
    status, answer = http_post(agent.url + "/v1/authorization",
                               {"transaction_tag": tag, "account_tag": account, "destination": "39"})
    assert status == 200 and answer["authorized"], answer
    for step, stamp in (("begin", "2030-01-01T10:00:00Z"), ("end", "2030-01-01T10:00:01Z")):
        status, answer = http_post(agent.url + f"/v1/{step}_transaction",
                                   {"transaction_tag": tag, f"timestamp_{step}": stamp})
        assert status == 200 and answer["ok"], (step, answer)


async def _database_state(url: str) -> tuple[int, int, int, int]:
    connection = await asyncpg.connect(url)
    try:
        ended = await connection.fetchval("SELECT count(*) FROM transactions WHERE state = 'ended'")
        charges = await connection.fetchval("SELECT count(*) FROM ledger WHERE kind = 'charge'")
        total = await connection.fetchval("SELECT coalesce(sum(amount), 0) FROM ledger WHERE kind = 'charge'")
        balance = await connection.fetchval("SELECT balance FROM accounts WHERE account_tag = 'a'")
        return ended, charges, total, balance
    finally:
        await connection.close()


async def _eventually(url: str, expected: tuple, timeout: float = 20.0) -> tuple:
    deadline = time.monotonic() + timeout
    while True:
        state = await _database_state(url)
        if state == expected or time.monotonic() > deadline:
            return state
        await asyncio.sleep(0.2)


async def test_postgresql_down_rating_goes_on_and_the_outbox_drains_after_restarts(tmp_path):
    redis_server = RedisServer(tmp_path / "redis").start()
    postgres = PostgresServer(tmp_path / "pg").start()
    document = tmp_path / "catalog.json"
    document.write_text(json.dumps(catalog(prepaid("a", 100_000))))
    run_cli("import", "catalog", str(document), redis_url=redis_server.url, database_url=postgres.url)
    first = AgentProcess(redis_server.url, postgres.url, tmp_path, outbox_claim_idle=1).start()
    second = None
    try:
        # 1. PostgreSQL stops while the agent runs: calls are still rated and charged.
        postgres.stop()
        for i in range(10):
            _call(first, f"down-{i}", "a")
        import redis

        live = redis.Redis.from_url(redis_server.url)
        assert live.xlen(__import__("cache").group_of("default").outbox) > 0
        postgres.start()
        assert await _eventually(postgres.url, (10, 10, -10, 100_000 - 10)) == (10, 10, -10, 100_000 - 10)

        # 2. PostgreSQL stops again and the agent dies with entries it read but never wrote.
        postgres.stop()
        for i in range(10):
            _call(first, f"dead-{i}", "a")
        for _ in range(200):  # until the writer holds the entries it cannot write (bounded)
            if live.xpending(__import__("cache").group_of("default").outbox, "pg-writer")["pending"] >= 1:
                break
            time.sleep(0.05)
        assert live.xpending(__import__("cache").group_of("default").outbox, "pg-writer")["pending"] >= 1
        first.process.send_signal(signal.SIGKILL)
        first.process.wait()
        postgres.start()
        second = AgentProcess(redis_server.url, postgres.url, tmp_path, outbox_claim_idle=1).start()
        assert await _eventually(postgres.url, (20, 20, -20, 100_000 - 20)) == (20, 20, -20, 100_000 - 20)
        assert live.xlen(__import__("cache").group_of("default").outbox) == 0
        assert int(live.hget(__import__("cache").account_key("default", "a"), "balance")) == 100_000 - 20
    finally:
        first.stop()
        if second is not None:
            second.stop()
        postgres.stop("immediate")
        redis_server.stop()

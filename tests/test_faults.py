"""Faults under a load of whole calls, with real processes: after each, every call answered as ended is charged
once, PostgreSQL holds exactly one final record per call and a ledger that adds up to the balance change, and
nothing is left open in Redis."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import AgentProcess, run_cli
from tests.test_transaction import catalog, prepaid

INITIAL = 10**9
CALLS = 120


def _process(agent: AgentProcess, command: str) -> int:
    return next(pid for pid in agent.pids() if Path(f"/proc/{pid}/comm").read_text().strip() == command)


async def _step(session, url: str, path: str, body: dict, attempts: int = 100) -> dict:
    """One request, sent again (it is idempotent) while the agent answers 503 or drops the connection."""
    for _ in range(attempts):
        try:
            async with session.post(url + path, json=body) as reply:
                if reply.status == 200:
                    return await reply.json()
                assert reply.status == 503, await reply.text()
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError):
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} never answered for {body['transaction_tag']}")


async def _call(session, url: str, n: int) -> str:
    tag = f"fault-{n}"
    answer = await _step(session, url, "/v1/authorization", {"transaction_tag": tag, "account_tag": "a",
                                                               "destination": "39"})
    assert answer["authorized"]
    await _step(session, url, "/v1/begin_transaction", {"transaction_tag": tag,
                                                          "timestamp_begin": "2030-01-01T10:00:00Z"})
    seconds = 1 + n % 7
    answer = await _step(session, url, "/v1/end_transaction", {"transaction_tag": tag,
                                                                 "timestamp_end": f"2030-01-01T10:00:{seconds:02d}Z"})
    assert answer["ok"]
    return tag


@pytest.mark.parametrize("victims", [("rating-worker-0",), ("rating-keeper",), ("rating-worker-1", "rating-keeper")])
async def test_kill_9_of_workers_and_the_housekeeper_loses_and_invents_nothing(stack, tmp_path, victims):
    document = tmp_path / "catalog.json"
    document.write_text(json.dumps(catalog(prepaid("a", INITIAL))))
    run_cli("import", "catalog", str(document), redis_url=stack.redis_url, database_url=stack.database_url)
    agent = AgentProcess(stack.redis_url, stack.database_url, tmp_path, workers=2, outbox_claim_idle=1).start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            tasks = []
            for n in range(CALLS):
                tasks.append(asyncio.create_task(_call(session, agent.url, n)))
                if n == CALLS // 3:
                    for victim in victims:
                        os.kill(_process(agent, victim), signal.SIGKILL)
                await asyncio.sleep(0.01)
            ended = await asyncio.gather(*tasks)
        for _ in range(400):  # the outbox drains into PostgreSQL (bounded wait)
            if await stack.redis.xlen("rating:outbox") == 0 and await stack.redis.zcard("rating:deadlines") == 0:
                break
            await asyncio.sleep(0.05)
    finally:
        agent.stop()
    fees = sum(1 + n % 7 for n in range(CALLS))  # 1 per second, every started second
    assert await stack.balance("a") == INITIAL - fees
    assert await stack.redis.xlen("rating:outbox") == 0 and await stack.redis.zcard("rating:deadlines") == 0
    rows = await stack.database.fetch("SELECT transaction_tag, state, fee FROM transactions WHERE account_tag = 'a'")
    assert sorted(r["transaction_tag"] for r in rows) == sorted(ended)  # one record per call
    assert {r["state"] for r in rows} == {"ended"} and sum(r["fee"] for r in rows) == fees
    charged = await stack.database.fetchval(
        "SELECT -sum(amount) FROM ledger WHERE account_tag = 'a' AND kind = 'charge'")
    assert charged == fees
    assert await stack.database.fetchval("SELECT balance FROM accounts WHERE account_tag = 'a'") == INITIAL - fees

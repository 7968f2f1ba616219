"""Real servers for the test suite: one redis-server and one PostgreSQL per session, on free loopback ports.

Tests that need a clean slate use the `stack` fixture, which empties Redis and the database between tests
instead of restarting the servers (restarting PostgreSQL costs about a second).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from devstack import AgentProcess, PostgresServer, RedisServer, free_port  # noqa: F401 (AgentProcess: for tests)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    server = PostgresServer(tmp_path_factory.mktemp("postgres")).start()
    yield server
    server.stop("immediate")


def run_cli(*argv: str, redis_url: str, database_url: str, check: bool = True) -> subprocess.CompletedProcess:
    """Runs `python -m agent ARGV...` against the given servers."""
    env = {**os.environ, "RATING_REDIS_URL": redis_url, "RATING_DATABASE_URL": database_url}
    done = subprocess.run(
        [sys.executable, "-m", "agent", *argv], cwd=ROOT, env=env, capture_output=True, text=True
    )
    if check and done.returncode != 0:
        raise AssertionError(f"agent {' '.join(argv)} failed:\n{done.stdout}\n{done.stderr}")
    return done


class Stack:
    """Clean Redis + PostgreSQL for one test, with helpers to load catalog data."""

    def __init__(self, redis_url: str, database_url: str, redis, database) -> None:
        self.redis_url = redis_url
        self.database_url = database_url
        self.redis = redis
        self.database = database

    async def load(self, document: dict) -> dict:
        """Imports a catalog document the way `python -m agent import catalog` does."""
        import cache
        from agent.store.importer import import_catalog
        from agent.transaction import now_ms

        summary = await import_catalog(self.database, document, set_balances=True)
        for tenant, tag, amount in summary["balances"]:
            await cache.move_balance(self.redis, tenant, tag, "set", amount, now_ms(), "test")
        return summary

    async def balance(self, account_tag: str, tenant: str = "default") -> int:
        from cache import account_key

        return int(await self.redis.hget(account_key(tenant, account_tag), "balance") or 0)

    async def account_state(self, account_tag: str, tenant: str = "default") -> dict[str, int]:
        """The account's live hash (balance, reserved) and its open calls: n (all), ni / no (by direction)."""
        from cache import account_key, open_calls_keys

        raw = await self.redis.hgetall(account_key(tenant, account_tag))
        inbound, outbound = [await self.redis.scard(key) for key in open_calls_keys(tenant, account_tag)]
        return {**{k: int(v) for k, v in raw.items()}, "n": inbound + outbound, "ni": inbound, "no": outbound}


@pytest.fixture
async def stack(redis_server, postgres_server):
    import asyncpg
    import cache
    from agent.store.database import migrate

    client = cache.connect(redis_server.url, 5.0)
    await client.flushall()
    await cache.load_library(client)
    connection = await asyncpg.connect(postgres_server.url)
    await migrate(connection)
    await connection.execute(
        "TRUNCATE carriers, pricelists, pricelist_rates, accounts, transactions, ledger, catalog_changes, rerates,"
        " rerate_adjustments CASCADE"
    )
    yield Stack(redis_server.url, postgres_server.url, client, connection)
    await connection.close()
    await client.aclose()


@pytest.fixture(scope="session")
def deck_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("decks"))


@pytest.fixture
async def agent(stack, deck_dir):
    """Starts the agent in-process (after loading `document`, if given) and returns a test client."""
    from aiohttp.test_utils import TestClient, TestServer

    from agent.app import create_app
    from agent.config import Settings
    from agent.http import front

    clients = []

    async def start(document: dict | None = None, **settings):
        if document is not None:
            await stack.load(document)
        settings.setdefault("deck_dir", deck_dir)
        app = create_app(Settings(redis_url=stack.redis_url, database_url=stack.database_url, **settings))
        client = TestClient(TestServer(app))
        await client.start_server()
        front.install(client.server.runner.server, app)  # served as `python -m agent serve` serves it
        clients.append(client)
        return client

    yield start
    for client in reversed(clients):
        await client.close()


TUTORIAL = {
    "carriers": [{"carrier_tag": "carrier1", "host": "localhost", "port": 5061, "protocol": "UDP", "active": True}],
    "pricelists": [{"pricelist_tag": "pricelist1", "name": "First pricelist", "currency": "EUR"}],
    "rates": [{"pricelist_tag": "pricelist1", "carrier_tag": "carrier1", "prefix": "39", "connect_fee": 0,
               "rate": 20, "rate_increment": 60, "interval_start": 0, "description": "Italy"}],
    "accounts": [{"account_tag": "100", "type": "PREPAID", "balance": 100, "max_concurrent_transactions": 2,
                  "name": "My first account", "active": True, "pricelist_tags": ["pricelist1"]}],
}


@pytest.fixture
def tutorial() -> dict:
    """The catalog of Canyan's tutorial (spec section 4.1)."""
    import copy

    return copy.deepcopy(TUTORIAL)

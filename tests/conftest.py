"""Real servers for the test suite: one redis-server and one PostgreSQL per session, on free loopback ports.

Tests that need a clean slate use the `stack` fixture, which empties Redis and the database between tests
instead of restarting the servers (restarting PostgreSQL costs about a second).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devstack import (  # noqa: F401 (AgentProcess, free_port: for tests)
    AgentProcess, PostgresServer, RedisServer, free_port, free_ports,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


class RedisClusterServers:
    """A Redis Cluster of `masters` masters with `replicas` replicas each, on loopback ports (cache/cluster.py)."""

    def __init__(self, directory: Path, masters: int = 3, replicas: int = 1) -> None:
        self.directory = directory
        count = masters * (1 + replicas)
        ports = free_ports(2 * count)  # each node's port and cluster bus port, all distinct
        self.servers = [self._server(directory / f"node{n}", ports[2 * n], ports[2 * n + 1]) for n in range(count)]
        self.masters, self.replicas = masters, replicas

    @staticmethod
    def _server(directory: Path, port: int, bus_port: int) -> RedisServer:
        return RedisServer(directory, port, options=(
            "--cluster-enabled", "yes", "--cluster-config-file", str(directory / "nodes.conf"),
            "--cluster-port", str(bus_port),  # not port + 10000, which may be beyond 65535
            "--cluster-node-timeout", "1000",  # a lost master is replaced within about two seconds
            "--repl-diskless-sync-delay", "0",
        ))

    @staticmethod
    def _bus_port(server: RedisServer) -> int:
        return int(server.options[server.options.index("--cluster-port") + 1])

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{server.port}" for server in self.servers)

    def start(self) -> "RedisClusterServers":
        for n, server in enumerate(self.servers):
            for attempt in range(3):  # a port free when chosen may have been taken by another process since
                try:
                    server.start()
                    break
                except RuntimeError:
                    if attempt == 2:
                        raise
                    taken = {p for s in self.servers for p in (s.port, self._bus_port(s))}
                    port, bus_port = [p for p in free_ports(len(taken) + 2) if p not in taken][:2]
                    server = self.servers[n] = self._server(server.directory, port, bus_port)
        subprocess.run(["redis-cli", "--cluster", "create", *(f"127.0.0.1:{s.port}" for s in self.servers),
                        "--cluster-replicas", str(self.replicas), "--cluster-yes"], check=True, capture_output=True,
                       timeout=60)
        self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until every live node sees every slot served and every master has a replica in sync."""
        import time

        import redis

        deadline = time.monotonic() + timeout
        while True:
            problems = []
            for server in self.servers:
                if server.process is None:
                    continue
                client = redis.Redis(port=server.port, decode_responses=True, socket_timeout=2)
                try:
                    if client.cluster("info")["cluster_state"] != "ok":
                        problems.append(f"{server.port}: cluster not ok")
                    info = client.info("replication")
                    if info["role"] == "master" and info.get("connected_slaves", 0) < self.replicas \
                            and self._serves(client):
                        problems.append(f"{server.port}: no replica")
                    if info["role"] == "slave" and info.get("master_link_status") != "up":
                        problems.append(f"{server.port}: replica not in sync")
                except redis.RedisError as exc:
                    problems.append(f"{server.port}: {exc}")
                finally:
                    client.close()
            if not problems:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"Redis Cluster not ready: {problems}")
            time.sleep(0.05)

    @staticmethod
    def _serves(client) -> bool:
        node = next(line for line in client.execute_command("CLUSTER", "NODES").splitlines() if "myself" in line)
        return len(node.split()) > 8  # a master with slots lists them after the eighth field

    def master_of(self, key: str) -> RedisServer:
        """The server that is the master of `key`'s slot now."""
        import redis

        for server in self.servers:
            if server.process is None:
                continue
            client = redis.Redis(port=server.port, decode_responses=True, socket_timeout=2)
            try:
                slot = client.cluster("keyslot", key)
                for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if start <= slot <= end:
                        return next(s for s in self.servers if s.port == int(master[1]))
            finally:
                client.close()
        raise AssertionError("no live cluster node")

    def master_of_port(self, port: int) -> bool:
        """Whether the server on `port` is a master serving slots now."""
        import redis

        client = redis.Redis(port=port, decode_responses=True, socket_timeout=2)
        try:
            return client.info("replication")["role"] == "master" and self._serves(client)
        finally:
            client.close()

    def stop(self) -> None:
        for server in self.servers:
            if server.process is not None:
                server.process.kill()
                server.process.wait()
                server.process = None


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory):
    """A 3-master, 3-replica Redis Cluster for the session (started by the first test that asks for it)."""
    servers = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster")).start()
    yield servers
    servers.stop()


@pytest.fixture
def redis_kind() -> str:
    """The Redis the `stack` of a test uses: "single" (one server), or "cluster" for a test parametrized
    `@pytest.mark.parametrize("redis_kind", ["single", "cluster"])`."""
    return "single"


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory):
    server = PostgresServer(tmp_path_factory.mktemp("postgres")).start()
    yield server
    server.stop("immediate")


async def until(probe, timeout: float = 20.0) -> None:
    """Waits until `probe()` (a function, or a coroutine function) is true: a state, not a guessed time; the
    timeout only guards against a hang."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        found = probe()
        if inspect.isawaitable(found):
            found = await found
        if found:
            return
        assert loop.time() < deadline, "state not reached in time"
        await asyncio.sleep(0.01)


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
async def stack(request, redis_kind, postgres_server):
    import asyncpg
    import cache
    from agent.store.database import migrate

    redis_url = (request.getfixturevalue("redis_cluster") if redis_kind == "cluster"
                 else request.getfixturevalue("redis_server")).url
    client = cache.connect(redis_url, 5.0)
    await client.flushall()
    await cache.load_library(client)
    connection = await asyncpg.connect(postgres_server.url)
    await migrate(connection)
    await connection.execute(
        "TRUNCATE carriers, pricelists, pricelist_rates, accounts, transactions, ledger, catalog_changes, rerates,"
        " rerate_adjustments CASCADE"
    )
    yield Stack(redis_url, postgres_server.url, client, connection)
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

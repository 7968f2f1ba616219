"""Faults under a load of whole calls, with real processes.

Every call goes authorization, begin, end; a request answered 503 or with a broken connection is sent
again, as Kamailio's configuration retries (they are idempotent), and the end carries the call's start as
Kamailio sends it. After the load, with the outbox drained:
* every call answered as ended is charged once: the balance moved by the sum of their fees;
* PostgreSQL holds exactly one final record per call, and a ledger that adds up to the balance change;
* nothing is left open in Redis; no request was answered anything but 200 or 503.
Redis restarted without its data is the one fault that loses something: what the outbox held when it was
wiped (calls already ended, not yet in PostgreSQL). Those calls have neither record nor charge, so the money
still adds up; every call that ended after the wipe is charged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections import Counter
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Awaitable, Callable

import aiohttp
import asyncpg
import pytest

import cache
from devstack import PostgresServer, RedisServer
from tests.conftest import AgentProcess, run_cli
from tests.test_transaction import catalog, prepaid

INITIAL = 10**9
CALLS = 120
BEGIN = "2030-01-01T10:00:00Z"
HOLD = 0.3  # seconds each call stays up (wall clock) between its begin and its end
PG_OUTAGE = float(os.environ.get("RATING_FAULT_PG_OUTAGE", "10"))  # seconds PostgreSQL is stopped (make test-long: 60)


def _process(agent: AgentProcess, command: str) -> int:
    return next(pid for pid in agent.pids() if Path(f"/proc/{pid}/comm").read_text().strip() == command)


def _seconds(n: int) -> int:
    return 1 + n % 7  # the n-th call's duration; its fee at 1 per second


@dataclass
class Load:
    """The calls of one run: which ended (and when, monotonic clock), and what the client saw."""

    ended: dict[str, float] = field(default_factory=dict)
    statuses: Counter = field(default_factory=Counter)  # answers by status; 0: connection refused or dropped
    longest: float = 0.0  # the longest a request took to be answered 200, retries included

    def report(self, name: str) -> None:
        """What the client saw, for README's failure table (pytest -s shows it)."""
        print(f"\n[fault] {name}: answers {dict(sorted(self.statuses.items()))}, longest wait {self.longest:.2f} s")


async def _step(session, url: str, path: str, body: dict, load: Load, attempts: int = 600) -> dict:
    """One request, sent again while the agent answers 503 or drops the connection (bounded: 60 s)."""
    started = time.monotonic()
    for _ in range(attempts):
        try:
            async with session.post(url + path, json=body) as reply:
                load.statuses[reply.status] += 1
                if reply.status == 200:
                    load.longest = max(load.longest, time.monotonic() - started)
                    return await reply.json()
                assert reply.status == 503, await reply.text()
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError):
            load.statuses[0] += 1
        await asyncio.sleep(0.1)
    raise AssertionError(f"{path} never answered for {body['transaction_tag']}")


async def _call(session, url: str, n: int, load: Load) -> None:
    tag = f"fault-{n}"
    call = {"transaction_tag": tag, "account_tag": "a", "destination": "39"}
    answer = await _step(session, url, "/v1/authorization", call, load)
    assert answer["authorized"], answer
    await _step(session, url, "/v1/begin_transaction", {**call, "timestamp_begin": BEGIN}, load)
    await asyncio.sleep(HOLD)  # the call is talking: about HOLD / spacing calls are open when the fault strikes
    end = f"2030-01-01T10:00:{_seconds(n):02d}Z"
    answer = await _step(session, url, "/v1/end_transaction",
                         {**call, "timestamp_begin": BEGIN, "timestamp_end": end}, load)
    assert answer["ok"], answer
    load.ended[tag] = time.monotonic()


async def _run(url: str, fault: Callable[[Load], Awaitable[None]], spacing: float = 0.01) -> Load:
    """Starts a call every `spacing` seconds, and `fault` (given the load so far) a third of the way in,
    beside the calls; returns once every call and the fault are over."""
    load = Load()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        tasks = []
        for n in range(CALLS):
            tasks.append(asyncio.create_task(_call(session, url, n, load)))
            if n == CALLS // 3:
                tasks.append(asyncio.create_task(fault(load)))
            await asyncio.sleep(spacing)
        await asyncio.gather(*tasks)
    return load


async def _drained(redis) -> None:
    group = cache.group_of("default")  # every call of the load is the default tenant's
    for _ in range(600):  # the outbox drains into PostgreSQL and no call stays open (bounded: 30 s)
        if await redis.xlen(group.outbox) == 0 and await redis.zcard(group.deadlines) == 0:
            pending = await redis.xpending(group.outbox, cache.OUTBOX_GROUP) if await redis.exists(group.outbox) \
                else {"pending": 0}
            if pending["pending"] == 0:
                return
        await asyncio.sleep(0.05)
    raise AssertionError("the outbox never drained")


async def _balance(redis) -> int:
    return int(await redis.hget(cache.account_key("default", "a"), "balance") or 0)


async def _check(redis, database: asyncpg.Connection, load: Load, lost: set[str] = frozenset()) -> None:
    """The invariants of the module docstring; `lost`: calls allowed to have neither record nor charge."""
    load.report(os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0])
    assert set(load.statuses) <= {0, 200, 503}, load.statuses
    assert len(load.ended) == CALLS
    assert await redis.zcard(cache.group_of("default").deadlines) == 0
    rows = await database.fetch("SELECT transaction_tag, state, fee FROM transactions WHERE account_tag = 'a'")
    tags = [row["transaction_tag"] for row in rows]
    assert len(tags) == len(set(tags)), "a call has two records"
    missing = set(load.ended) - set(tags)
    print(f"[fault] calls without a record: {len(missing)} (may be: {len(lost)})")
    assert missing <= lost
    assert {row["state"] for row in rows} == {"ended"}
    fees = {row["transaction_tag"]: row["fee"] for row in rows}
    assert all(fees[f"fault-{n}"] == _seconds(n) for n in range(CALLS) if f"fault-{n}" in fees)
    charged = sum(fees.values())
    assert await _balance(redis) == INITIAL - charged
    assert await database.fetchval(
        "SELECT -sum(amount) FROM ledger WHERE account_tag = 'a' AND kind = 'charge'") == charged
    assert await database.fetchval("SELECT balance FROM accounts WHERE account_tag = 'a'") == INITIAL - charged


def _agent(redis_url: str, database_url: str, folder: Path, **settings) -> AgentProcess:
    document = folder / "catalog.json"
    document.write_text(json.dumps(catalog(prepaid("a", INITIAL))))
    run_cli("import", "catalog", str(document), redis_url=redis_url, database_url=database_url)
    return AgentProcess(redis_url, database_url, folder, workers=2, outbox_claim_idle=1, **settings)


@pytest.mark.parametrize("victims", [("rating-worker-0",), ("rating-keeper",), ("rating-worker-1", "rating-keeper")])
async def test_kill_9_of_workers_and_the_housekeeper_loses_and_invents_nothing(stack, tmp_path, victims):
    agent = _agent(stack.redis_url, stack.database_url, tmp_path).start()

    async def fault(_load):
        for victim in victims:
            os.kill(_process(agent, victim), signal.SIGKILL)

    try:
        load = await _run(agent.url, fault)
        await _drained(stack.redis)
    finally:
        agent.stop()
    await _check(stack.redis, stack.database, load)


def _refused(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return True
    return False


async def test_kill_9_of_the_supervisor_then_a_restart_loses_and_invents_nothing(stack, tmp_path):
    """Its workers and housekeeper stop with it; a service manager then starts the agent again."""
    agent = _agent(stack.redis_url, stack.database_url, tmp_path).start()

    async def fault(_load):
        agent.process.kill()
        await asyncio.to_thread(agent.process.wait)
        for _ in range(300):  # bounded: its workers let the port go once they stop
            if _refused(agent.port):
                break
            await asyncio.sleep(0.05)
        await asyncio.to_thread(agent.start)

    try:
        load = await _run(agent.url, fault)
        await _drained(stack.redis)
    finally:
        agent.stop()
    await _check(stack.redis, stack.database, load)


@pytest.mark.parametrize("keep_data", [True, False], ids=["from-its-aof", "empty"])
async def test_redis_killed_and_restarted_under_load(stack, tmp_path, keep_data):
    """kill -9 of Redis, then a restart: from its append-only file (nothing acknowledged is lost: Redis
    writes it before it answers), or empty (only what the outbox held at that moment is lost)."""
    server = RedisServer(tmp_path / "redis").start()
    redis = cache.connect(server.url, 5.0)
    agent = _agent(server.url, stack.database_url, tmp_path).start()
    ended_before: set[str] = set()
    opened: list[int] = []

    async def fault(load):
        server.process.kill()
        await asyncio.to_thread(server.process.wait)
        ended_before.update(load.ended)
        if not keep_data:
            shutil.rmtree(server.directory)
        await asyncio.to_thread(server.start)
        opened.append(CALLS // 3 + 1 - len(ended_before))

    try:
        load = await _run(agent.url, fault)
        await _drained(redis)
        assert opened[0] >= 10  # calls were open (or being set up) when Redis went
        await _check(redis, stack.database, load, lost=set() if keep_data else ended_before)
    finally:
        agent.stop()
        await redis.aclose()
        server.stop()


async def test_postgresql_stopped_under_load_delays_records_and_loses_nothing(tmp_path):
    """Rating goes on while PostgreSQL is down (RATING_FAULT_PG_OUTAGE seconds: 10 in make test, 60 in make
    test-long): records and the ledger wait in the outbox and arrive once it is back."""
    server = RedisServer(tmp_path / "redis").start()
    database = PostgresServer(tmp_path / "postgres").start()
    redis = cache.connect(server.url, 5.0)
    agent = _agent(server.url, database.url, tmp_path).start()
    during: list[int] = []
    ready: list[tuple[int, bool]] = []

    async def fault(load):
        await asyncio.to_thread(database.stop, "fast")
        before = len(load.ended)
        async with aiohttp.ClientSession() as session, session.get(agent.url + "/ready") as reply:
            # degraded, not unready: a readiness probe must keep an agent that still rates in rotation
            ready.append((reply.status, (await reply.json())["degraded"]))
        await asyncio.sleep(PG_OUTAGE)
        during.append(len(load.ended) - before)
        await asyncio.to_thread(database.start)

    connection = None
    try:
        # calls spread over the outage: most of them are rated while PostgreSQL is away
        load = await _run(agent.url, fault, spacing=PG_OUTAGE * 1.2 / CALLS)
        assert during[0] >= CALLS // 3
        assert ready == [(200, True)]
        await _drained(redis)
        connection = await asyncpg.connect(database.url)
        await _check(redis, connection, load)
    finally:
        if connection is not None:
            await connection.close()
        agent.stop()
        await redis.aclose()
        server.stop()
        database.stop("immediate")


async def _disordered_call(session, url: str, n: int, load: Load) -> None:
    """The n-th call with its events as a network or a retrying client may deliver them (n % 5): in order;
    every event sent twice at once; the end before the begin; the begin lost; the authorization sent twice
    at once. Each one's end carries the start, as Kamailio's does."""
    tag = f"fault-{n}"
    call = {"transaction_tag": tag, "account_tag": "a", "destination": "39"}
    begin = {**call, "timestamp_begin": BEGIN}
    end = {**begin, "timestamp_end": f"2030-01-01T10:00:{_seconds(n):02d}Z"}

    async def send(path: str, body: dict, times: int = 1) -> list[dict]:
        return await asyncio.gather(*(_step(session, url, path, body, load) for _ in range(times)))

    kind = n % 5
    answers = await send("/v1/authorization", call, 2 if kind in (1, 4) else 1)
    assert all(answer["authorized"] for answer in answers), answers
    assert len({answer["max_available_units"] for answer in answers}) == 1
    if kind == 2:
        ends = await send("/v1/end_transaction", end)
        await send("/v1/begin_transaction", begin)
    else:
        if kind != 3:
            await send("/v1/begin_transaction", begin, 2 if kind == 1 else 1)
        ends = await send("/v1/end_transaction", end, 2 if kind in (1, 4) else 1)
    assert all(answer["ok"] for answer in ends), ends
    load.ended[tag] = time.monotonic()


async def test_duplicated_reordered_and_lost_events_charge_each_call_once(stack, tmp_path):
    agent = _agent(stack.redis_url, stack.database_url, tmp_path).start()
    load = Load()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            await asyncio.gather(*(_disordered_call(session, agent.url, n, load) for n in range(CALLS)))
        await _drained(stack.redis)
    finally:
        agent.stop()
    await _check(stack.redis, stack.database, load)


@dataclass
class Sentinels:
    """A master, its two replicas and three sentinels watching them (master name `rating`), on loopback."""

    folder: Path
    master: RedisServer = None
    replicas: list = field(default_factory=list)
    processes: list = field(default_factory=list)
    ports: list = field(default_factory=list)

    @property
    def url(self) -> str:
        from cache import sentinel

        return sentinel.url_of(",".join(f"127.0.0.1:{port}" for port in self.ports), "rating")

    def start(self) -> "Sentinels":
        import subprocess

        from devstack import free_port, wait_for_port

        quick = ("--repl-diskless-sync-delay", "0")  # replicas synced at once, not after 5 s
        self.master = RedisServer(self.folder / "master", options=quick).start()
        self.replicas = [RedisServer(self.folder / f"replica-{n}",
                                     options=(*quick, "--replicaof", "127.0.0.1", str(self.master.port))).start()
                         for n in range(2)]
        for n in range(3):
            port, folder = free_port(), self.folder / f"sentinel-{n}"
            folder.mkdir(parents=True)
            (folder / "sentinel.conf").write_text(
                f"port {port}\nbind 127.0.0.1\ndir {folder}\nlogfile {folder / 'sentinel.log'}\n"
                f"sentinel monitor rating 127.0.0.1 {self.master.port} 2\n"
                "sentinel down-after-milliseconds rating 1000\nsentinel failover-timeout rating 10000\n")
            self.processes.append(subprocess.Popen(
                [shutil.which("redis-server") or "redis-server", str(folder / "sentinel.conf"), "--sentinel"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            self.ports.append(port)
            wait_for_port(port)
        return self

    def master_port(self) -> int:
        import redis

        with redis.Redis(port=self.ports[0], decode_responses=True) as client:
            return int(client.execute_command("SENTINEL", "get-master-addr-by-name", "rating")[1])

    def replicas_known(self) -> bool:
        import redis

        with redis.Redis(port=self.ports[0], decode_responses=True) as client:
            known = str(client.execute_command("SENTINEL", "replicas", "rating"))
        return all(str(replica.port) in known for replica in self.replicas) and "s_down" not in known

    def stop(self) -> None:
        from devstack import stop_process

        for process in self.processes:
            stop_process(process, 10)
        for server in (*self.replicas, self.master):  # throwaway data: no graceful shutdown to wait for
            if server is not None and server.process is not None:
                server.process.kill()
                server.process.wait()


async def test_a_redis_master_killed_under_load_is_replaced_by_sentinel_and_rating_resumes(stack, tmp_path):
    """kill -9 of the master: Sentinel promotes a replica (after --down-after 1 s and its vote), the agent
    finds the new master through the sentinels and the calls go on; every call is charged once. With
    --redis-replicas 1 no request is answered before a replica has its writes, so the failover loses none of
    them (replication is asynchronous: without it, the last writes before the kill may be lost); the second
    replica is the one the new master's writes wait for."""
    servers = Sentinels(tmp_path / "redis").start()
    redis = None
    try:
        for _ in range(200):  # bounded: the sentinels find the replica through the master (INFO)
            if servers.replicas_known():
                break
            await asyncio.sleep(0.05)
        assert servers.replicas_known()
        redis = cache.connect(servers.url, 5.0)
        agent = _agent(servers.url, stack.database_url, tmp_path, redis_timeout=1.0, redis_replicas=1).start()
        old = servers.master.port

        async def fault(_load):
            servers.master.process.kill()
            await asyncio.to_thread(servers.master.process.wait)
            for _ in range(600):  # bounded: 30 s
                if servers.master_port() != old:
                    return
                await asyncio.sleep(0.05)
            raise AssertionError("no failover")

        try:
            load = await _run(agent.url, fault, spacing=0.05)
            await _drained(redis)
            assert servers.master_port() in {replica.port for replica in servers.replicas}
            await _check(redis, stack.database, load)
            assert load.statuses[503] > 0  # rating did stop for the failover, and resumed by itself
        finally:
            agent.stop()
    finally:
        if redis is not None:
            await redis.aclose()
        servers.stop()


@pytest.mark.long  # ~30-40 s: make test-long
async def test_a_redis_cluster_master_killed_under_load_is_replaced_by_its_replica_and_rating_resumes(
        redis_cluster, postgres_server, tmp_path):
    """kill -9 of the master of the default tenant's slot group: the cluster promotes its replica (after
    --cluster-node-timeout 1 s and the other masters' vote), the agent's hot path follows the new slot map
    (connection errors, then MOVED) and the calls go on; every call is charged once. With --redis-replicas 1
    every answered request's writes are on the replica when the master dies (WAIT), so nothing answered is
    lost; the killed node restarts and rejoins as the new master's replica, which the writes wait for
    again."""
    from agent.store.database import migrate

    group = cache.group_of("default")
    redis = cache.connect(redis_cluster.url, 5.0)
    database = await asyncpg.connect(postgres_server.url)
    try:
        await redis.flushall()
        await migrate(database)
        await database.execute("TRUNCATE carriers, pricelists, pricelist_rates, accounts, transactions, ledger,"
                               " catalog_changes, rerates, rerate_adjustments CASCADE")
        agent = _agent(redis_cluster.url, postgres_server.url, tmp_path, redis_timeout=1.0, redis_replicas=1)
        # configured as an operator does: seed nodes (the URL then gives only a password, here none)
        agent.env["RATING_REDIS_URL"] = "redis://127.0.0.1:6379/0"
        agent.env["RATING_REDIS_CLUSTER"] = redis_cluster.url.split("://", 1)[1]
        agent.start()
        victim = redis_cluster.master_of(group.outbox)

        async def fault(_load):
            await _kill(victim)
            await _promoted(redis_cluster, group.outbox, victim)
            victim.start()  # back as the new master's replica (from this thread: it dies with its starter's)
            await asyncio.to_thread(redis_cluster.wait_ready)

        try:
            load = await _run(agent.url, fault, spacing=0.05)
            await redis.aclose()
            redis = cache.connect(redis_cluster.url, 5.0)  # a client that never knew the killed master
            await _drained(redis)
            assert redis_cluster.master_of(group.outbox) is not victim
            await _check(redis, database, load)
            assert load.statuses[503] + load.statuses[0] > 0  # rating did stop for the failover, and resumed
        finally:
            agent.stop()
    finally:
        await database.close()
        await redis.aclose()


async def _kill(server) -> None:
    """SIGKILL, as a host that is lost; the server's process forgotten, so that `start` makes a new one."""
    server.process.kill()
    await asyncio.to_thread(server.process.wait)
    server.process = None


@contextlib.asynccontextmanager
async def _replica_behind(master, replica, group):
    """The replica frozen (SIGSTOP) behind more than the kernel's socket buffers hold (a few MB on loopback):
    what the master writes in the block stays in the master's own output buffer, and dies with it if the master
    is killed before the block ends (the replica is let go then)."""
    replica.process.send_signal(signal.SIGSTOP)
    try:
        async with redis_direct(master) as direct:
            await direct.set(f"{group.prefix}ballast", b"x" * (32 << 20))
        yield
    finally:
        replica.process.send_signal(signal.SIGCONT)


async def _promoted(redis_cluster, key: str, killed) -> None:
    """Waits (bounded: 30 s) until the cluster serves `key`'s slot from another node than the `killed` master."""
    for _ in range(600):
        if redis_cluster.master_of(key) is not killed:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no failover")


def _replication_offset(port: int) -> int:
    """What the server on `port` has of its replication stream: a master's offset, a replica's processed one."""
    import redis

    with redis.Redis(port=port, decode_responses=True, socket_timeout=2) as client:
        info = client.info("replication")
        return int(info["master_repl_offset"] if info["role"] == "master" else info["slave_repl_offset"])


def _replica_of(servers, master):
    """The cluster node replicating `master` now."""
    import redis

    with redis.Redis(port=master.port, decode_responses=True, socket_timeout=2) as client:
        port = int(client.info("replication")["slave0"]["port"])
    return next(server for server in servers.servers if server.port == port)


def redis_direct(server):
    """A client of one cluster node alone (not following the cluster's redirections)."""
    import redis.asyncio as aioredis

    return aioredis.Redis(port=server.port, socket_timeout=30)


async def _answered(client, operation: str, attempts: int = 50, **body) -> dict:
    """tests.test_transaction.post as Kamailio sends it: again while answered 503. With --redis-replicas a
    request is answered 503 when the replica does not acknowledge its writes within half the timeout, which a
    replica starved of CPU on a loaded host can miss (a WAIT took up to a second at load 12 here)."""
    path = "/v1/authorization" if operation == "authorization" else f"/v1/{operation}_transaction"
    for _ in range(attempts):  # bounded: attempts x 0.1 s and more
        reply = await client.post(path, json=body)
        if reply.status != 503:
            break
        await asyncio.sleep(0.1)
    assert reply.status == 200, await reply.text()
    return await reply.json()


async def _pending(redis, stream: str) -> int:
    """Entries read and not yet acknowledged: 0 while the writer has not made its consumer group yet (a loaded
    host can start the in-process writer after the test's first entries)."""
    from redis.exceptions import ResponseError

    try:
        return (await redis.xpending(stream, cache.OUTBOX_GROUP))["pending"]
    except ResponseError as exc:
        if "NOGROUP" not in str(exc):
            raise
        return 0


class _NoDialogs:
    """The listing of the Kamailios (agent/reconcile.py): the Call-IDs given, as test_reconcile's does."""

    def __init__(self) -> None:
        self.calls: set[str] = set()

    async def __call__(self, session, url: str) -> set[str]:
        return set(self.calls)


@pytest.mark.long  # ~15 s each, a failover of the session's cluster: make test-long
@pytest.mark.parametrize("redis_kind", ["cluster"])
@pytest.mark.parametrize("replicas", [0, 1])
async def test_a_write_a_failover_lost_is_reconciled_and_charged_once(agent, stack, redis_cluster, redis_kind,
                                                                        replicas):
    """A real lost write: the replica of the default tenant's master is frozen (SIGSTOP: it reads nothing of
    the replication stream), a call's end is written on the master, the master is killed, the replica
    resumes and is promoted without the end. The outbox writer is kept from carrying the end meanwhile (it
    waits on PostgreSQL's locked records with an earlier entry in hand), so PostgreSQL never learns it either.
    Without --redis-replicas the end was answered 200 and is lost: the call is open again in Redis, and the
    reconciliation with Kamailio (no Kamailio lists it) ends it at the moment it was last listed alive, never
    later than its real end. With --redis-replicas 1 the end was answered 503 (no replica took it), so
    Kamailio's retry, once the promoted master has a replica again (the old one, back), charges the real
    duration. Either way: one ended record, the ledger's charge equal to the balance's change, PostgreSQL's
    balance equal to Redis's, nothing reserved or open."""
    from agent.config import Settings
    from agent.reconcile import Reconciler
    from agent.transaction import now_ms

    group = cache.group_of("default")
    client = await agent(catalog(prepaid("a", INITIAL), prepaid("poor", 0)),
                         redis_replicas=replicas)
    begin = now_ms() - 10_000
    await _answered(client, "authorization", transaction_tag="x", account_tag="a", destination="39",
                    timestamp_auth=str(begin / 1000))
    await _answered(client, "begin", transaction_tag="x", account_tag="a", timestamp_begin=str(begin / 1000))
    kamailio = _NoDialogs()
    kamailio.calls = {"x"}
    reconcile_settings = Settings(redis_url=stack.redis_url, database_url=stack.database_url,
                                  kamailio_rpc="http://kamailio.invalid/rpc", kamailio_reconcile_after=0.0)
    await Reconciler(reconcile_settings, stack.redis, kamailio).run_once(None)  # listed alive now
    seen = int(await stack.redis.hget("rating:kamailio:seen", cache.call_key("default", "x")))

    master = redis_cluster.master_of(group.outbox)
    replica = _replica_of(redis_cluster, master)
    lock = await asyncpg.connect(stack.database_url)
    try:
        locked = lock.transaction()
        await locked.start()
        await lock.execute("LOCK TABLE transactions, ledger IN EXCLUSIVE MODE")
        # an earlier entry (a refused call's record) the writer takes and waits with at the lock
        refused = await _answered(client, "authorization", transaction_tag="r", account_tag="poor", destination="39")
        assert refused["authorized"] is False
        for _ in range(400):  # bounded: 20 s
            if await _pending(stack.redis, group.outbox) > 0:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the writer never took the refused call's entry")
        for _ in range(200):  # the replica has everything so far, then takes nothing more
            if _replication_offset(replica.port) == _replication_offset(master.port):
                break
            await asyncio.sleep(0.05)
        async with _replica_behind(master, replica, group):
            end = {"transaction_tag": "x", "account_tag": "a", "timestamp_end": str(now_ms() / 1000),
                   "timestamp_begin": str(begin / 1000)}
            reply = await client.post("/v1/end_transaction", json=end)
            assert reply.status == (503 if replicas else 200), await reply.text()
            await _kill(master)
        await _promoted(redis_cluster, group.outbox, master)
        await locked.rollback()
    finally:
        await lock.close()
    # back as the new master's replica (its lost end discarded); started from this thread, not to_thread's:
    # a server dies with the thread that started it (devstack's PDEATHSIG), and the next tests need it
    master.start()
    await asyncio.to_thread(redis_cluster.wait_ready)
    redis = cache.connect(redis_cluster.url, 5.0)  # a client that never knew the killed master
    try:
        # the end is lost: the call is running again
        assert cache.call_key("default", "x") in await Reconciler(reconcile_settings, redis, kamailio).running_calls()
        if replicas:
            await _answered(client, "end", attempts=100, **end)  # Kamailio's retries, same body
        else:
            kamailio.calls = set()  # the call is on no Kamailio any more
            ended = await Reconciler(reconcile_settings, redis, kamailio).run_once(None)
            assert ended == [cache.call_key("default", "x")]
        await _drained(redis)
        rows = await stack.database.fetch("SELECT transaction_tag, state, fee, duration FROM transactions"
                                          " WHERE account_tag = 'a'")
        assert [(row["transaction_tag"], row["state"]) for row in rows] == [("x", "ended")]
        real = round(float(end["timestamp_end"]) * 1000) - begin  # ms

        def fee_of(ms: int) -> set[int]:  # 1 a second, the last one whole; a millisecond either way of parsing
            return {math.ceil((ms - 1) / 1000), math.ceil((ms + 1) / 1000)}

        if replicas:  # the real duration
            assert rows[0]["fee"] in fee_of(real), (rows[0], real)
        else:  # up to its last listing alive: never past its real end
            assert rows[0]["fee"] in fee_of(seen - begin) and seen <= begin + real, (rows[0], seen - begin, real)
        charged = rows[0]["fee"]
        assert await _balance(redis) == INITIAL - charged
        assert await stack.database.fetchval(
            "SELECT -sum(amount) FROM ledger WHERE account_tag = 'a' AND kind = 'charge'") == charged
        assert await stack.database.fetchval("SELECT balance FROM accounts WHERE account_tag = 'a'") \
            == INITIAL - charged
        assert int(await redis.hget(cache.account_key("default", "a"), "reserved") or 0) == 0
        assert await redis.zcard(group.deadlines) == 0
        assert await stack.database.fetchval("SELECT state FROM transactions WHERE transaction_tag = 'r'") \
            == "refused"
    finally:
        await redis.aclose()


@pytest.mark.long  # ~15 s, a failover of the session's cluster: make test-long
@pytest.mark.parametrize("redis_kind", ["cluster"])
async def test_an_outbox_entry_no_replica_holds_is_not_written_to_postgresql_before_a_failover_loses_it(
        agent, stack, redis_cluster, redis_kind):
    """With --redis-replicas 1 the outbox writer writes an entry to PostgreSQL only once a replica of its
    master holds it. The replica is frozen (SIGSTOP), a call's end is written on the master (answered 503: no
    replica took it), and the writer, free to carry it this time, reads the entry but does not write it; the
    master is killed, the replica promoted without the end, and Kamailio's retry ends the call on the new
    master. PostgreSQL then holds one charge for the call: without the writer's check it would hold two (the
    lost entry's and the retry's), the ledger adding up to more than the balance moved."""
    from agent.store.writer import stream_order
    from agent.transaction import now_ms

    group = cache.group_of("default")
    client = await agent(catalog(prepaid("a", INITIAL)), redis_replicas=1)
    begin = now_ms() - 10_000
    await _answered(client, "authorization", transaction_tag="x", account_tag="a", destination="39",
                    timestamp_auth=str(begin / 1000))
    await _answered(client, "begin", transaction_tag="x", account_tag="a", timestamp_begin=str(begin / 1000))
    master = redis_cluster.master_of(group.outbox)
    replica = _replica_of(redis_cluster, master)

    async def charges() -> int:
        return await stack.database.fetchval(
            "SELECT count(*) FROM ledger WHERE account_tag = 'a' AND kind = 'charge'")

    async with redis_direct(master) as direct:
        # the writer has carried everything so far (the account's seeding is a ledger entry) and the replica has
        # it all; then the replica takes nothing more (bounded: 20 s)
        for _ in range(400):
            if await direct.xlen(group.outbox) == 0 \
                    and _replication_offset(replica.port) == _replication_offset(master.port):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the outbox never drained before the replica was frozen")
    async with _replica_behind(master, replica, group):
        async with redis_direct(master) as direct:
            end = {"transaction_tag": "x", "account_tag": "a", "timestamp_end": str(now_ms() / 1000),
                   "timestamp_begin": str(begin / 1000)}
            reply = await client.post("/v1/end_transaction", json=end)
            assert reply.status == 503, await reply.text()
            # the end's entry (already deleted if a writer wrote it)
            entry_id = (await direct.xinfo_stream(group.outbox))["last-generated-id"]
            for _ in range(400):  # the writer read it and asked the replica (its marker), or wrote it (bounded: 20 s)
                read = await direct.get(group.read)
                pending = [p["message_id"] for p in await direct.xpending_range(
                    group.outbox, cache.OUTBOX_GROUP, min="-", max="+", count=10)]
                if await charges() or (entry_id in pending and read
                                       and stream_order(read.decode()) >= stream_order(entry_id.decode())):
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"the writer never read the end's entry {entry_id!r}: pending {pending},"
                                     f" marker {read!r}")
            assert await charges() == 0  # read, not written: no replica holds it
        await _kill(master)
    await _promoted(redis_cluster, group.outbox, master)
    master.start()  # back as the new master's replica; from this thread (see the test above)
    await asyncio.to_thread(redis_cluster.wait_ready)
    redis = cache.connect(redis_cluster.url, 5.0)
    try:
        await _answered(client, "end", attempts=100, **end)  # Kamailio's retries, same body
        await _drained(redis)
        rows = await stack.database.fetch("SELECT state, fee FROM transactions WHERE account_tag = 'a'")
        assert [row["state"] for row in rows] == ["ended"]
        charged = rows[0]["fee"]
        assert charged > 0
        assert await charges() == 1
        assert await stack.database.fetchval(
            "SELECT -sum(amount) FROM ledger WHERE account_tag = 'a' AND kind = 'charge'") == charged
        assert await _balance(redis) == INITIAL - charged
        assert await stack.database.fetchval("SELECT balance FROM accounts WHERE account_tag = 'a'") \
            == INITIAL - charged
        assert int(await redis.hget(cache.account_key("default", "a"), "reserved") or 0) == 0
    finally:
        await redis.aclose()


@pytest.mark.parametrize("redis_kind", ["single", "cluster"])
async def test_the_outbox_writer_writes_no_entry_fewer_replicas_than_required_hold_and_keeps_it_pending(
        stack, redis_kind):
    """--redis-replicas N: an entry is written to PostgreSQL only once N replicas of its master acknowledged
    it (agent/store/writer.py replicated). The suite's servers have one replica per master on the cluster and
    none on one server: asking for more than there are writes nothing and leaves the entry pending, unwritten;
    asking for what there is writes it. A listing's catch_up leaves it to the writer likewise."""
    from agent.store.database import create_pool
    from agent.store.writer import OutboxWriter, Unreplicated, catch_up, ensure_group

    group = cache.group_of("default")
    there = 1 if redis_kind == "cluster" else 0
    pool = await create_pool(stack.database_url, max_size=1)

    async def pool_factory():
        return pool

    async def rows() -> int:
        return await stack.database.fetchval("SELECT count(*) FROM ledger WHERE transaction_tag = 'w'")

    try:
        await ensure_group(stack.redis)
        await stack.redis.xadd(group.outbox, {"e": "ledger", "tn": "default", "a": "a", "k": "set", "amt": "1",
                                              "bal": "1", "tt": "w", "at": "0"})
        assert await catch_up(stack.redis, stack.database, replicas=there + 1, replica_timeout_ms=10) == 0
        waiting = OutboxWriter(stack.redis, pool_factory, replicas=there + 1, replica_timeout=0.01)
        for _ in range(2):  # read, then read again from its pending entries: neither written
            with pytest.raises(Unreplicated):
                await waiting.drain_once()
        assert await rows() == 0
        assert (await stack.redis.xpending(group.outbox, cache.OUTBOX_GROUP))["pending"] == 1
        waiting.replicas = there  # the cluster's one replica per master; one server: no check
        assert await waiting.drain_once() == 1
        assert await rows() == 1
        assert await stack.redis.xlen(group.outbox) == 0
    finally:
        await pool.close()

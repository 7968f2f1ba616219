"""Serving with several worker processes: shared port, summed metrics, graceful shutdown under load."""

import asyncio
import json
import re
import signal
import time

import aiohttp
import pytest

from agent import serve
from agent.metrics import FLUSH_INTERVAL
from tests.conftest import ROOT, AgentProcess, run_cli, until
from tests.test_transaction import catalog, prepaid


@pytest.fixture
def loaded(stack, tmp_path):
    document = tmp_path / "catalog.json"
    document.write_text(json.dumps(catalog(prepaid("a", 10**9), prepaid("b", 10**9))))
    run_cli("import", "catalog", str(document), redis_url=stack.redis_url, database_url=stack.database_url)
    return stack


async def _post(session, url, path, body):
    async with session.post(url + path, json=body, headers={"Connection": "close"}) as reply:
        return reply.status, await reply.json()


def metric(text: str, name: str, **labels) -> float:
    """The value of one sample of the exposition text (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = re.match(r'^([a-zA-Z_:][\w:]*)(\{([^}]*)\})?\s+(\S+)', line)
        if not match or match.group(1) != name:
            continue
        found = ",".join(sorted(part for part in (match.group(3) or "").split(",") if part))
        if found == wanted:
            return float(match.group(4))
    return 0.0


async def _scripted_calls(url: str) -> None:
    async with aiohttp.ClientSession() as session:
        for tag in ("m1", "m2"):
            status, answer = await _post(session, url, "/v1/authorization",
                                         {"transaction_tag": tag, "account_tag": "a", "destination": "39"})
            assert answer["authorized"]
            await _post(session, url, "/v1/begin_transaction",
                        {"transaction_tag": tag, "timestamp_begin": "2030-01-01T10:00:00Z"})
            await _post(session, url, "/v1/end_transaction",
                        {"transaction_tag": tag, "timestamp_end": "2030-01-01T10:00:10Z"})
        status, answer = await _post(session, url, "/v1/authorization",
                                     {"transaction_tag": "m3", "account_tag": "ghost", "destination": "39"})
        assert answer["unauthorized_reason"] == "NOT_FOUND"
        status, _ = await _post(session, url, "/v1/end_transaction", {})
        assert status == 422


@pytest.mark.parametrize("workers", [1, 2])
async def test_metrics_count_exactly_what_was_done(loaded, tmp_path, workers):
    agent = AgentProcess(loaded.redis_url, loaded.database_url, tmp_path, workers=workers).start()
    try:
        await _scripted_calls(agent.url)
        async with aiohttp.ClientSession() as session:
            # Until every worker's counts reach the shared files: each request went on its own connection, so
            # to either worker, and a worker that answered only begins flushes on its own schedule.
            requests = {("authorization", "200"): 3, ("begin", "200"): 2, ("end", "200"): 2, ("end", "422"): 1}
            for _ in range(int(20 / FLUSH_INTERVAL)):
                async with session.get(agent.url + "/metrics") as reply:
                    assert reply.status == 200
                    text = await reply.text()
                if all(metric(text, "rating_requests_total", endpoint=endpoint, status=status) >= count
                       for (endpoint, status), count in requests.items()):
                    break
                await asyncio.sleep(FLUSH_INTERVAL / 4)
        assert metric(text, "rating_requests_total", endpoint="authorization", status="200") == 3
        assert metric(text, "rating_requests_total", endpoint="begin", status="200") == 2
        assert metric(text, "rating_requests_total", endpoint="end", status="200") == 2
        assert metric(text, "rating_requests_total", endpoint="end", status="422") == 1
        assert metric(text, "rating_authorizations_total", outcome="authorized", reason="") == 2
        assert metric(text, "rating_authorizations_total", outcome="refused", reason="NOT_FOUND") == 1
        assert metric(text, "rating_request_duration_seconds_count", endpoint="authorization") == 3
        assert metric(text, "rating_charges_total") == 2
        assert metric(text, "rating_charged_amount_total") == 20
        assert metric(text, "rating_calls_open") == 0
        assert metric(text, "rating_rate_table_prefixes") == 3
        assert metric(text, "rating_build_info", version="0.1.0", python=__import__("platform").python_version()) == 1
        assert "rating_outbox_backlog" in text and "rating_redis_round_trip_seconds_bucket" in text
        dashboard = (ROOT / "monitoring" / "grafana" / "dashboards" / "rating-agent.json").read_text()
        for name in set(re.findall(r"rating_[a-z_]+", dashboard)):
            assert name in text, f"the dashboard uses {name}, which /metrics does not serve"
    finally:
        agent.stop()


async def test_several_workers_share_the_port(loaded, tmp_path):
    agent = AgentProcess(loaded.redis_url, loaded.database_url, tmp_path, workers=2).start()
    try:
        pids = set()
        async with aiohttp.ClientSession() as session:
            for _ in range(60):
                async with session.get(agent.url + "/ready", headers={"Connection": "close"}) as reply:
                    body = await reply.json()
                    if reply.status == 200:
                        pids.add(body["pid"])
                if len(pids) > 1:
                    break
                await asyncio.sleep(0.05)
        assert len(pids) > 1
    finally:
        agent.stop()


async def test_sigterm_under_load_loses_no_answered_request_and_no_charge(loaded, tmp_path):
    agent = AgentProcess(loaded.redis_url, loaded.database_url, tmp_path, workers=2).start()
    ended: list[str] = []
    reset: dict[str, str] = {}  # tag -> the state the call must still be in if the request had no effect
    refused_connections = 0

    async def one_call(session, index: int) -> None:
        nonlocal refused_connections
        tag = f"sig-{index}"
        step = "missing"
        try:
            status, answer = await _post(session, agent.url, "/v1/authorization",
                                         {"transaction_tag": tag, "account_tag": "b", "destination": "39"})
            assert status == 200 and answer["authorized"]
            step = "authorized"
            status, answer = await _post(session, agent.url, "/v1/begin_transaction",
                                         {"transaction_tag": tag, "timestamp_begin": "2030-01-01T10:00:00Z"})
            assert status == 200 and answer["ok"]
            step = "begun"
            status, answer = await _post(session, agent.url, "/v1/end_transaction",
                                         {"transaction_tag": tag, "timestamp_end": "2030-01-01T10:00:01Z"})
            assert status == 200 and answer["ok"]
            ended.append(tag)
        except aiohttp.ClientConnectorError:
            refused_connections += 1  # not accepted: the caller knows and may retry elsewhere
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
            # A connection reset while the server closed its listening sockets: the request must not
            # have been processed (the call is still where the last answer left it), so a retry is safe.
            reset[tag] = step

    try:
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 20
            tasks = []
            for index in range(400):
                if time.monotonic() > deadline:
                    break
                tasks.append(asyncio.create_task(one_call(session, index)))
                if index == 150:
                    agent.process.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.005)
            await asyncio.gather(*tasks)
        assert agent.process.wait(30) == 0
    finally:
        agent.stop()
    from cache.call import decode as decode_call
    from cache import call_key

    for tag, state in reset.items():
        fields = await loaded.redis.hgetall(call_key("default", tag))
        actual = decode_call(fields)[0].get("st") if fields else "missing"
        assert actual == state, f"{tag}: reset after processing ({state} -> {actual})"
    assert len(reset) <= 20
    assert len(ended) >= 100
    # Every call answered as ended was charged exactly once (1 s at rate 1), and the workers flushed the
    # outbox before exiting: PostgreSQL already holds every charge.
    assert 10**9 - await loaded.balance("b") == len(ended)
    assert await loaded.redis.xlen(__import__("cache").group_of("default").outbox) == 0
    rows = await loaded.database.fetchval("SELECT count(*) FROM ledger WHERE account_tag = 'b' AND kind = 'charge'")
    assert rows == len(ended)


def test_a_worker_passes_graphql_and_deck_uploads_to_the_manager_instead_of_serving_them():
    from agent.app import Role, create_app
    from agent.config import Settings
    from agent.http.forward import forward

    worker = create_app(Settings(), Role.WORKER, "/nonexistent.sock")
    handlers = {route.resource.canonical: route.handler for route in worker.router.routes()}
    assert handlers["/graphql"] is forward and handlers["/management/{tail}"] is forward
    manager = create_app(Settings(), Role.MANAGER)
    assert all(route.handler is not forward for route in manager.router.routes())


async def test_a_management_request_sent_before_the_manager_listens_waits_for_it_instead_of_a_503(loaded, tmp_path):
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from agent.app import Role, create_app
    from agent.config import Settings
    from agent.http.forward import STATE

    socket_path = str(tmp_path / "manager.sock")
    settings = Settings(redis_url=loaded.redis_url, database_url=loaded.database_url)
    worker = TestClient(TestServer(create_app(settings, Role.WORKER, socket_path)))
    await worker.start_server()
    manager = web.AppRunner(create_app(settings, Role.MANAGER))
    try:
        pending = asyncio.ensure_future(worker.post("/graphql", json={"query": '{ Account(account_tag:"a") { account_tag } }'}))
        for _ in range(2000):  # until the worker holds it, the manager not started yet (bounded)
            if worker.app[STATE].waiting or pending.done():
                break
            await asyncio.sleep(0.01)
        assert worker.app[STATE].waiting == 1 and not pending.done()
        await manager.setup()
        await web.UnixSite(manager, socket_path).start()
        reply = await asyncio.wait_for(pending, 60)
        assert (reply.status, await reply.json()) == (200, {"data": {"Account": {"account_tag": "a"}}})
        assert worker.app[STATE].waiting == 0
    finally:
        await worker.close()
        await manager.cleanup()


async def test_metrics_are_served_while_another_process_is_creating_its_metrics_file(loaded, tmp_path):
    folder = tmp_path / "metrics"
    folder.mkdir()
    agent = AgentProcess(loaded.redis_url, loaded.database_url, tmp_path)
    agent.env["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    agent.start()
    try:
        (folder / "gauge_max_999999.db").touch()  # as prometheus-client leaves it before sizing it
        async with aiohttp.ClientSession() as session:
            async with session.get(agent.url + "/metrics") as reply:
                assert reply.status == 200 and "rating_catalog_load_seconds" in await reply.text()
    finally:
        agent.stop()


def _commands(agent: AgentProcess) -> list[str]:
    from pathlib import Path

    return sorted(Path(f"/proc/{pid}/comm").read_text().strip() for pid in agent.pids())


def _niceness(agent: AgentProcess) -> dict[str, int]:
    from pathlib import Path

    found = {}
    for pid in agent.pids():
        stat = Path(f"/proc/{pid}/stat").read_text()
        found[Path(f"/proc/{pid}/comm").read_text().strip()] = int(stat[stat.rindex(")") + 2:].split()[16])
    return found


async def test_the_manager_answers_graphql_on_the_agent_port_and_on_its_own(loaded, tmp_path):
    from devstack import free_port

    port = free_port()
    agent = AgentProcess(loaded.redis_url, loaded.database_url, tmp_path, workers=1, management_port=port).start()
    try:
        assert _commands(agent) == ["rating-keeper", "rating-manager", "rating-super", "rating-worker-0"]
        # on a busy host the kernel serves the worker first (the deck builds the manager starts inherit it)
        nice = _niceness(agent)
        assert nice["rating-worker-0"] == nice["rating-super"]
        assert nice["rating-manager"] == min(19, nice["rating-worker-0"] + serve._NICE["manager"])
        async with aiohttp.ClientSession() as session:
            for url in (agent.url, f"http://127.0.0.1:{port}"):
                status, answer = await _post(session, url, "/graphql", {"query": '{ Account(account_tag:"a") { account_tag } }'})
                assert (status, answer) == (200, {"data": {"Account": {"account_tag": "a"}}})
            reply = await session.post(agent.url + "/management/pricelists/p1/rates?carrier_tag=c1",
                                       data=b"prefix,rate\n44,1\n", headers={"Content-Type": "text/csv"})
            assert reply.status == 200 and (await reply.json())["rows"] == 1
            # the deck is live when the upload answers
            status, answer = await _post(session, agent.url, "/v1/authorization",
                                         {"transaction_tag": "uk", "account_tag": "a", "destination": "44207"})
            assert answer["authorized"] and answer["carriers"] == ["UDP:10.0.0.1:5060"]
    finally:
        agent.stop()


@pytest.mark.parametrize("networks, allowed", [("10.0.0.0/8", False), ("127.0.0.0/8", True)])
async def test_the_manager_applies_agent_networks_to_the_address_the_worker_saw(loaded, tmp_path, networks, allowed):
    agent = AgentProcess(loaded.redis_url, loaded.database_url, tmp_path, agent_networks=networks,
                         management_token="secret").start()
    try:
        async with aiohttp.ClientSession() as session:
            status, answer = await _post(session, agent.url, "/graphql", {"query": """mutation {
                authorization(transaction_tag:"g1", account_tag:"a", destination:"39") { authorized } }"""})
        assert (status, answer.get("data")) == ((200, {"authorization": {"authorized": True}}) if allowed
                                                else (403, None))
    finally:
        agent.stop()


def _exit_of(agent: AgentProcess, timeout: float = 30) -> tuple[int, str]:
    import subprocess
    import sys

    with open(agent.log_path, "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "agent", "serve"], cwd=ROOT, env=agent.env,
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return process.wait(timeout), agent.log_path.read_text()


async def test_a_second_agent_on_a_busy_port_refuses_to_start(loaded, tmp_path):
    first = AgentProcess(loaded.redis_url, loaded.database_url, tmp_path).start()
    try:
        second = AgentProcess(loaded.redis_url, loaded.database_url, tmp_path / "..")
        second.env["RATING_PORT"] = str(first.port)
        code, log = _exit_of(second)
        assert code == 2 and f"127.0.0.1:{first.port} is in use" in log
    finally:
        first.stop()


async def test_an_evicting_redis_is_refused_at_start(loaded, tmp_path):
    await loaded.redis.config_set("maxmemory-policy", "allkeys-lru")
    try:
        code, log = _exit_of(AgentProcess(loaded.redis_url, loaded.database_url, tmp_path))
    finally:
        await loaded.redis.config_set("maxmemory-policy", "noeviction")
    assert code == 2 and "maxmemory-policy allkeys-lru" in log


async def test_an_agent_waiting_for_redis_at_start_stops_on_sigterm(stack, tmp_path):
    import subprocess
    import sys

    from devstack import free_port

    agent = AgentProcess(f"redis://127.0.0.1:{free_port()}/0", stack.database_url, tmp_path)
    with open(agent.log_path, "ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "agent", "serve"], cwd=ROOT, env=agent.env,
                                   stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        for _ in range(300):  # until it says it waits (bounded)
            if "waiting for Redis" in agent.log_path.read_text():
                break
            await asyncio.sleep(0.05)
        assert "waiting for Redis" in agent.log_path.read_text()
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) != 0
    finally:
        process.kill()


async def test_a_blocked_event_loop_is_observed_as_late_with_what_the_worker_was_doing(caplog):
    from agent.serve import watch_loop

    seen: list[float] = []
    watching = asyncio.ensure_future(watch_loop(seen.append, lambda: " (catching up)", tick=0.001))
    await until(lambda: len(seen) >= 3)
    with caplog.at_level("INFO", logger="agent.serve"):
        time.sleep(0.08)  # the loop held, as a long step on it would
        count = len(seen)
        await until(lambda: len(seen) > count)
    watching.cancel()
    assert max(seen[count:]) >= 0.07
    assert any("late (catching up)" in record.getMessage() for record in caplog.records)

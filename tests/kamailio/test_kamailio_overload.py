"""Overload through a real Kamailio, SIPp and the real agent: a saturated or slow agent gives quick SIP refusals,
not timeouts.

The agent runs one worker with --max-in-flight 1 over a Redis of its own. Pausing that Redis for writes
(CLIENT PAUSE WRITE: every FCALL waits until it goes on) holds a request open in the agent for as long as
the test wants; the agent's /metrics shows when it is in flight. Nothing here depends on timing: the test
asserts on SIP answer codes, on which agent requests were made, and on what was still held when the call
was refused. The refusal times are printed (pytest -s) for the record, not asserted.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

# tests/ (state.py, conftest.py) and this folder (kamailio_harness.py) as import roots
sys.path[:0] = [p for p in (str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent))
                if p not in sys.path]

import state  # noqa: E402
from conftest import AgentProcess  # noqa: E402
from kamailio_harness import (  # noqa: E402
    Carrier, Kamailio, add_subscriber, import_catalog, rig_base, run_callers, subscriber_password, wait_for,
)

pytestmark = pytest.mark.kamailio

ACCOUNT = "o-caller"
NUMBER = "39050000001"
AUTHORIZATION_TIMEOUT_MS = 1000
AGENT_TIMEOUT_MS = 5000  # begin, end, rollback: far longer than the authorization's, so the two cannot mix


def build_catalog(carrier_port: int) -> dict:
    return {
        "carriers": [{"carrier_tag": "o-answer", "host": "127.0.0.1", "port": carrier_port, "protocol": "UDP",
                      "active": True}],
        "pricelists": [{"pricelist_tag": "o-main", "name": "o-main", "currency": "EUR"}],
        "rates": [{"pricelist_tag": "o-main", "carrier_tag": "o-answer", "prefix": "3905", "connect_fee": 0,
                   "rate": 1, "rate_increment": 1, "interval_start": 0, "description": "overload"}],
        "accounts": [{"account_tag": ACCOUNT, "type": "PREPAID", "balance": 1_000_000,
                      "max_concurrent_transactions": 10, "pricelist_tags": ["o-main"], "active": True}],
    }


@dataclass
class Rig:
    workdir: Path
    redis_url: str
    agent: AgentProcess
    kamailio: Kamailio
    redis: redis.Redis

    def call(self, name: str):
        run = run_callers(self.workdir / name, self.kamailio.port, NUMBER, ACCOUNT, hold_ms=200, timeout=30,
                          password=subscriber_password(ACCOUNT))
        assert len(run.results) == 1, run.output
        (result,) = run.results.values()
        return result, run

    def metric(self, name: str, **labels) -> float:
        """One sample of the agent's /metrics (its single worker answers, after counting its own)."""
        with urllib.request.urlopen(self.agent.url + "/metrics", timeout=5) as reply:
            text = reply.read().decode()
        wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
        pattern = "^" + re.escape(name + (f"{{{wanted}}}" if wanted else "")) + r" (\S+)$"
        found = re.search(pattern, text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0

    def post(self, operation: str, body: dict) -> dict:
        request = urllib.request.Request(f"{self.agent.url}/v1/{operation}", data=json.dumps(body).encode(),
                                         method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as reply:
            return json.loads(reply.read())

    def pause_writes(self) -> None:
        # bounded, so a failing test cannot leave the agent's Redis paused
        self.redis.execute_command("CLIENT", "PAUSE", 60000, "WRITE")

    def go_on(self) -> None:
        self.redis.execute_command("CLIENT", "UNPAUSE")


@pytest.fixture(scope="module")
def rig(tmp_path_factory, postgres_server):
    start = rig_base(tmp_path_factory, postgres_server.url, "overload")
    base, redis_server, database_url, auth_db = start.base, start.redis, start.database_url, start.auth_db
    add_subscriber(auth_db, ACCOUNT)
    carrier = Carrier(base / "carriers", "uas.xml", "UDP")
    agent = kamailio = None
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        carrier.start()
        (base / "catalog.json").write_text(json.dumps(build_catalog(carrier.port)))
        import_catalog(base / "catalog.json", redis_server.url, database_url, base / "decks")
        # one worker, one request in flight at most; a Redis timeout longer than any pause of the tests (held
        # requests wait, they do not fail); no expiry scans, whose FCALLs would wait in the pause too
        agent = AgentProcess(redis_server.url, database_url, base, max_in_flight=1, redis_timeout=60.0,
                             reaper_interval=3600.0).start()
        kamailio = Kamailio(
            base / "kamailio", auth_db=auth_db,
            defines={"WITH_RATING": None, "RATING_AGENT_URL": f'"{agent.url}"',
                     "RATING_AGENT_TIMEOUT": AGENT_TIMEOUT_MS,
                     "RATING_AUTHORIZATION_TIMEOUT": AUTHORIZATION_TIMEOUT_MS, "TM_FR_TIMER": 2000},
        ).start()
        yield Rig(base, redis_server.url, agent, kamailio, client)
    finally:
        try:
            client.execute_command("CLIENT", "UNPAUSE")
        except redis.RedisError:
            pass
        if kamailio:
            kamailio.stop()
        if agent:
            agent.stop()
        carrier.stop()
        client.close()
        redis_server.stop()


class HeldAuthorization(threading.Thread):
    """An authorization sent straight to the agent, in the background: it stays in flight while Redis waits."""

    def __init__(self, url: str, tag: str) -> None:
        super().__init__(daemon=True)
        self.request = urllib.request.Request(
            url + "/v1/authorization", method="POST", headers={"Content-Type": "application/json"},
            data=json.dumps({"transaction_tag": tag, "account_tag": ACCOUNT, "destination": NUMBER}).encode())
        self.tag = tag
        self.status: int | None = None
        self.answer: dict | None = None

    def run(self) -> None:
        with urllib.request.urlopen(self.request, timeout=120) as reply:
            self.status, self.answer = reply.status, json.loads(reply.read())


def test_a_saturated_agent_refuses_new_calls_at_once_with_503(rig):
    shed_before = rig.metric("rating_requests_shed_total", endpoint="authorization")
    rig.pause_writes()
    held = HeldAuthorization(rig.agent.url, f"held-{uuid.uuid4().hex[:8]}")
    try:
        held.start()
        assert wait_for(lambda: rig.metric("rating_requests_in_flight") == 1, 10.0), "the request is not held"

        result, run = rig.call("callers-saturated")

        # refused by the agent's shedding (the only path that answers 503 "Rating is overloaded"), while the
        # request in flight was still held: the call did not wait for anything
        assert (result.code, result.phrase) == (503, "Rating is overloaded"), run.output
        assert held.is_alive(), "the held authorization was answered before the call was refused"
        print(f"\nsaturated agent: SIP 503 after {1000 * run.elapsed:.0f} ms, SIPp's start and exit included "
              f"(authorization timeout {AUTHORIZATION_TIMEOUT_MS} ms)")
    finally:
        rig.go_on()
    held.join(30)
    assert held.status == 200 and held.answer["authorized"] is True, held.answer
    rig.post("rollback_transaction", {"transaction_tag": held.tag})  # its call never comes
    assert rig.metric("rating_requests_shed_total", endpoint="authorization") == shed_before + 1
    lines = [line for line in rig.kamailio.log().splitlines() if result.call_id in line]
    assert any("agent overloaded" in line for line in lines), lines
    assert not any("unreachable" in line for line in lines), "the authorization timed out instead"

    # the agent serves calls again once its request in flight is answered
    answered, run = rig.call("callers-after")
    assert answered.code == 200 and answered.bye == 200, run.output
    # nothing was reserved for the refused call, so Kamailio sent no rollback: the only one is the test's own
    assert rig.metric("rating_requests_total", endpoint="rollback", status="200") == 1


def test_a_slow_agent_gives_500_after_the_authorization_timeout_and_the_late_reservation_is_released(rig):
    """Nothing in flight, so the call's authorization is admitted, then waits for Redis past Kamailio's
    authorization timeout: a 500 (not tm's 408, not a wait for the ends' longer timeout), and the rollback
    Kamailio sends releases what the agent reserved once Redis goes on."""
    rollbacks = rig.metric("rating_requests_total", endpoint="rollback", status="200")
    rig.pause_writes()
    try:
        result, run = rig.call("callers-slow")
        assert (result.code, result.phrase) == (500, "Rating is not available"), run.output
        print(f"\nslow agent: SIP 500 after {1000 * run.elapsed:.0f} ms, SIPp's start and exit included "
              f"(authorization timeout {AUTHORIZATION_TIMEOUT_MS} ms, other requests {AGENT_TIMEOUT_MS} ms)")
    finally:
        rig.go_on()
    lines = [line for line in rig.kamailio.log().splitlines() if result.call_id in line]
    assert any("agent unreachable" in line for line in lines), lines
    assert wait_for(lambda: rig.metric("rating_requests_total", endpoint="rollback", status="200") > rollbacks,
                    20.0)
    assert wait_for(lambda: state.reserved(rig.redis_url, ACCOUNT) == 0
                    and state.open_calls(rig.redis_url, ACCOUNT) == 0, 10.0), "the late reservation is held"

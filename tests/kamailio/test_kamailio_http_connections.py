"""Kamailio keeps its connections to the agent: http_async_client's curl connection cache (RATING_HTTP_MAXCONNECTS,
the parameter added by build-http-async-client.sh's patch) holds every connection a burst of calls opened, and
the next burst reuses them instead of opening new ones.

A stub agent (HTTP/1.1 keep-alive, one thread per connection) counts the connections it accepts and closes.
It holds every authorization until BURST of them are in flight at once, so one HTTP worker needs exactly BURST
connections for them (curl sends one request at a time per connection). Nothing depends on timing: curl's own
cache, without the parameter, keeps at most 4 connections per transfer still running, so once the calls are
over it would have closed all but a few.
"""

from __future__ import annotations

import json
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

sys.path[:0] = [p for p in (str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent))
                if p not in sys.path]

from kamailio_harness import (  # noqa: E402
    Carrier, Kamailio, add_subscriber, rig_base, run_callers, subscriber_password, wait_for,
)

pytestmark = pytest.mark.kamailio

ACCOUNT = "c-caller"
NUMBER = "39060000001"
BURST = 12


class StubAgent(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, carrier: str) -> None:
        super().__init__(("127.0.0.1", 0), StubHandler)
        self.carrier = carrier
        self.lock = threading.Condition()
        self.opened = self.closed = 0
        self.held = 0  # authorizations waiting for the burst to be complete
        self.released = 0
        self.requests: dict[str, int] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def hold_until_burst(self) -> None:
        """Holds an authorization until BURST of them wait together (10 s at most: then the test fails on its
        assertions instead of hanging)."""
        with self.lock:
            self.held += 1
            if self.held >= BURST * (self.released + 1):
                self.released += 1
                self.lock.notify_all()
            else:
                target = self.released + 1
                self.lock.wait_for(lambda: self.released >= target, timeout=10)


class StubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.opened += 1

    def finish(self) -> None:
        super().finish()
        with self.server.lock:
            self.server.closed += 1

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        operation = self.path.rsplit("/", 1)[-1]
        with self.server.lock:
            self.server.requests[operation] = self.server.requests.get(operation, 0) + 1
        tag = body.get("transaction_tag")
        if operation == "authorization":
            self.server.hold_until_burst()
            answer = {"tenant": "default", "transaction_tag": tag, "account_tag": ACCOUNT, "authorized": True,
                      "unauthorized_reason": None, "max_available_units": 60, "carriers": [self.server.carrier]}
        else:
            answer = {"ok": True, "tenant": "default", "transaction_tag": tag}
        data = json.dumps(answer, separators=(",", ":")).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@dataclass
class Rig:
    workdir: Path
    agent: StubAgent
    kamailio: Kamailio

    def burst(self, name: str) -> None:
        run = run_callers(self.workdir / name, self.kamailio.port, NUMBER, ACCOUNT, calls=BURST, rate=200,
                          hold_ms=200, timeout=30, password=subscriber_password(ACCOUNT))
        assert run.stats.get("SuccessfulCall(C)") == BURST, run.output


@pytest.fixture(scope="module")
def rig(tmp_path_factory, postgres_server):
    start = rig_base(tmp_path_factory, postgres_server.url, "connections")
    add_subscriber(start.auth_db, ACCOUNT)
    carrier = Carrier(start.base / "carriers", "uas.xml", "UDP")
    agent = kamailio = None
    try:
        carrier.start()
        agent = StubAgent(carrier.carrier_string)
        threading.Thread(target=agent.serve_forever, daemon=True).start()
        # one HTTP worker: all the connections are in one curl cache; the authorizations held until the burst
        # is complete must not time out first on a loaded host (SIPp's 12 INVITEs may take over a second)
        kamailio = Kamailio(start.base / "kamailio", auth_db=start.auth_db,
                            defines={"WITH_RATING": None, "RATING_AGENT_URL": f'"{agent.url}"',
                                     "RATING_HTTP_WORKERS": 1, "RATING_AUTHORIZATION_TIMEOUT": 10000}).start()
        yield Rig(start.base, agent, kamailio)
    finally:
        if kamailio:
            kamailio.stop()
        if agent:
            agent.shutdown()
            agent.server_close()
        carrier.stop()
        start.redis.stop()


def test_connections_opened_by_a_burst_stay_open_and_the_next_burst_reuses_them(rig):
    rig.burst("first")
    agent = rig.agent
    # every call's end has been answered: nothing is in flight any more
    assert wait_for(lambda: agent.requests.get("end_transaction", 0) == BURST, 10), agent.requests
    with agent.lock:
        opened, still_open = agent.opened, agent.opened - agent.closed
    assert opened == BURST, f"{BURST} authorizations in flight at once need {BURST} connections: {opened}"
    assert still_open == BURST, f"curl closed {BURST - still_open} of the {BURST} connections after the burst"

    rig.burst("second")
    assert wait_for(lambda: agent.requests.get("end_transaction", 0) == 2 * BURST, 10), agent.requests
    with agent.lock:
        assert agent.opened == BURST, f"the second burst opened {agent.opened - BURST} new connections"
        assert agent.opened - agent.closed == BURST
    assert agent.requests == {"authorization": 2 * BURST, "begin_transaction": 2 * BURST,
                              "end_transaction": 2 * BURST}

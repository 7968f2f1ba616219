"""End to end through a real Kamailio: SIPp callers -> Kamailio (kamailio/kamailio.cfg + rating.cfg)
-> SIPp carriers, with the real agent (own Redis, own PostgreSQL database) rating every call.

One agent and one Kamailio serve the whole module; each test uses its own accounts and its own
destination prefix, so tests do not see each other's calls. Carriers listen on free loopback ports:
two answering (UDP and TCP), one busy (486), one broken (503), and two ports where nothing listens
(a silent UDP carrier and a TLS carrier Kamailio has no socket for).
"""

from __future__ import annotations

import json
import math
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

# tests/ (state.py, conftest.py) and this folder (kamailio_harness.py) as import roots
sys.path[:0] = [p for p in (str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent))
                if p not in sys.path]

import state  # noqa: E402
from conftest import AgentProcess, run_cli  # noqa: E402
from devstack import RedisServer, wait_for_port  # noqa: E402
from kamailio_harness import (  # noqa: E402
    Carrier, Kamailio, add_subscriber, import_catalog, free_port, rig_base, run_callers, subscriber_password,
    wait_for,
)

pytestmark = pytest.mark.kamailio

AGENT_TOKEN = "k4m-t0ken"  # the rig's agent requires it (--agent-token); Kamailio sends it (RATING_AGENT_TOKEN)
FR_TIMER_MS = 1000  # a silent carrier is abandoned after this, then the next one is tried
MAIN_RATE = {"connect_fee": 7, "rate": 2, "rate_increment": 1, "interval_start": 0}
CUTOFF_SECONDS = 3

REFUSALS = [
    # (account, dialed number, unauthorized_reason, SIP reason phrase of the 403)
    ("k-ghost", "39020000001", "NOT_FOUND", "Rating: Forbidden -- rating account not found"),
    ("k-inactive", "39020000002", "NOT_ACTIVE", "Forbidden -- rating account not active"),
    ("k-nodest", "39990000003", "UNREACHEABLE_DESTINATION", "Forbidden -- unreacheable rating destination"),
    ("k-toomany", "39020000004", "TOO_MANY_RUNNING_TRANSACTIONS", "Forbidden -- too many ongoing calls"),
    ("k-broke", "39020000005", "BALANCE_INSUFFICIENT", "Forbidden -- insufficient balance"),
]



def _rate(pricelist: str, carrier: str, prefix: str, rate: int = 1, **extra) -> dict:
    return {"pricelist_tag": pricelist, "carrier_tag": carrier, "prefix": prefix, "connect_fee": 0,
            "rate": rate, "rate_increment": 1, "interval_start": 0, "description": f"test {prefix}", **extra}


def _account(tag: str, pricelist: str, balance: int = 100_000, **extra) -> dict:
    return {"account_tag": tag, "type": "PREPAID", "balance": balance, "max_concurrent_transactions": 10,
            "pricelist_tags": [pricelist], "active": True, **extra}


def build_catalog(ports: dict[str, int]) -> dict:
    def carrier(tag: str, protocol: str) -> dict:
        return {"carrier_tag": tag, "host": "127.0.0.1", "port": ports[tag], "protocol": protocol, "active": True}

    pricelists = ["k-main", "k-refuse", "k-fo", "k-cut", "k-reinv", "k-busy", "k-conc", "k-3006", "k-win"]
    return {
        "carriers": [
            carrier("k-answer", "UDP"), carrier("k-answer-tcp", "TCP"), carrier("k-answer-cut", "UDP"),
            carrier("k-busy", "UDP"),
            carrier("k-error", "UDP"), carrier("k-dead", "UDP"), carrier("k-tls", "TLS"),
        ],
        "pricelists": [{"pricelist_tag": tag, "name": tag, "currency": "EUR"} for tag in pricelists],
        "rates": [
            _rate("k-main", "k-answer", "3901", **MAIN_RATE),
            _rate("k-refuse", "k-answer", "3902"),
            # failover: cheapest first; dead (timeout), then 503, then TLS (no socket), then TCP answers
            _rate("k-fo", "k-dead", "3903", rate=1),
            _rate("k-fo", "k-error", "3903", rate=2),
            _rate("k-fo", "k-tls", "3903", rate=3),
            _rate("k-fo", "k-answer-tcp", "3903", rate=4),
            _rate("k-cut", "k-answer-cut", "3904", rate=1),
            _rate("k-reinv", "k-answer", "3907", rate=1),
            _rate("k-busy", "k-busy", "3905", rate=1),
            _rate("k-conc", "k-answer", "3906", rate=1),
            # billed 30/6: a first block of 30 s, then 6 s steps, 6 per step
            _rate("k-3006", "k-answer", "3908", rate=6, rate_increment=6, initial_increment=30),
        ],
        "accounts": [
            _account("k-ok", "k-main"),
            _account("k-inactive", "k-refuse", active=False),
            _account("k-nodest", "k-refuse"),
            _account("k-toomany", "k-refuse", max_concurrent_transactions=0),
            _account("k-broke", "k-refuse", balance=0),
            _account("k-fo", "k-fo"),
            _account("k-cut", "k-cut", balance=CUTOFF_SECONDS),
            _account("k-reinv", "k-reinv", balance=CUTOFF_SECONDS),
            _account("k-busy", "k-busy"),
            _account("k-conc", "k-conc", max_concurrent_transactions=3),
            _account("k-3006", "k-3006"),
            _account("k-win", "k-win"),  # its peak and off-peak rates: imported by the test (a boundary ahead)
        ],
    }



@dataclass
class Rig:
    workdir: Path
    redis_url: str
    database_url: str
    agent: AgentProcess
    kamailio: Kamailio
    ports: dict[str, int]
    carriers: dict[str, Carrier]
    auth_db: str

    def call(self, number: str, account: str, **options):
        """A call from `account`, digest-authenticated as that account (every test account is a subscriber)."""
        options.setdefault("password", subscriber_password(account))
        return run_callers(self.workdir / "callers", self.kamailio.port, number, account, **options)

    def to_uri(self, number: str) -> str:
        return f"sip:{number}@127.0.0.1:{self.kamailio.port}"

    def record(self, call_id: str, account: str) -> dict | None:
        return state.call_record(self.redis_url, self.database_url, call_id, account)

    def ended_record(self, call_id: str, account: str, timeout: float = 5.0) -> dict:
        """The call record once the end of the call has been processed (end is sent asynchronously
        after the BYE, so it may land a few milliseconds after the caller saw the BYE's 200)."""
        record = wait_for(
            lambda: (r := self.record(call_id, account)) and r.get("timestamp_end") and r, timeout
        )
        assert record, f"no ended call record for {call_id}: {self.record(call_id, account)}"
        return record

    def kamailio_lines(self, call_id: str) -> list[str]:
        return [line for line in self.kamailio.log().splitlines() if call_id in line]


@pytest.fixture(scope="module")
def rig(tmp_path_factory, postgres_server):
    start = rig_base(tmp_path_factory, postgres_server.url, "e2e")
    base, redis, database_url, auth_db = start.base, start.redis, start.database_url, start.auth_db
    # callers authenticate by digest (WITH_AUTH): every account of the tests, and k-ghost (no rating
    # account), is a subscriber

    carriers = {
        "k-answer": Carrier(base / "carriers", "uas.xml", "UDP"),
        "k-answer-tcp": Carrier(base / "carriers", "uas.xml", "TCP"),
        "k-answer-cut": Carrier(base / "carriers", "uas.xml", "UDP", calls=1),
        "k-busy": Carrier(base / "carriers", "uas_busy.xml", "UDP"),
        "k-error": Carrier(base / "carriers", "uas_error.xml", "UDP"),
    }
    ports = {tag: c.port for tag, c in carriers.items()}
    ports["k-dead"] = free_port()
    ports["k-tls"] = free_port()

    started: list = []
    agent = None
    kamailio = None
    try:
        for c in carriers.values():
            started.append(c.start())
        catalog = build_catalog(ports)
        for account in {a["account_tag"] for a in catalog["accounts"]} | {r[0] for r in REFUSALS}:
            add_subscriber(auth_db, account)
        catalog_file = base / "catalog.json"
        catalog_file.write_text(json.dumps(catalog))
        import_catalog(catalog_file, redis.url, database_url, base / "decks")
        # a generous Redis timeout: the machine may be busy with other work while these tests run
        agent = AgentProcess(redis.url, database_url, base, authorization_ttl=60, call_grace=5,
                             redis_timeout=2.0, agent_token=AGENT_TOKEN).start()
        sip_port = free_port()
        kamailio = Kamailio(
            base / "kamailio",
            port=sip_port,
            auth_db=auth_db,
            defines={
                "WITH_RATING": None,
                "RATING_AGENT_URL": f'"{agent.url}"',
                "RATING_AGENT_TIMEOUT": 1000,
                "RATING_AGENT_TOKEN": f'"{AGENT_TOKEN}"',  # every request of these tests carries it
                "SIP_LISTEN_TCP": f"tcp:127.0.0.1:{sip_port}",
                "TM_FR_TIMER": FR_TIMER_MS,
                "TM_FR_INV_TIMER": 10000,
            },
        ).start()
        yield Rig(base, redis.url, database_url, agent, kamailio, ports, carriers, auth_db)
    finally:
        if kamailio:
            kamailio.stop()
        if agent:
            agent.stop()
        for c in started:
            c.stop()
        redis.stop()


def test_authorized_call_is_charged_its_fee(rig):
    number = "39010000001"
    before = state.balance(rig.redis_url, "k-ok")

    run = rig.call(number, "k-ok", hold_ms=2000)

    assert len(run.results) == 1, run.output
    (result,) = run.results.values()
    assert (result.code, result.bye) == (200, 200), (result, run.output)
    record = rig.ended_record(result.call_id, "k-ok")
    assert record["authorized"] is True
    assert record["destination"] == rig.to_uri(number)
    assert record["source"].startswith("sip:k-ok@127.0.0.1:")
    assert 2 <= record["duration"] <= 4, record
    expected_fee = MAIN_RATE["connect_fee"] + math.ceil(record["duration"] / MAIN_RATE["rate_increment"]) * MAIN_RATE["rate"]
    assert record["fee"] == expected_fee, record
    assert before - state.balance(rig.redis_url, "k-ok") == record["fee"]
    assert state.reserved(rig.redis_url, "k-ok") == 0


def test_a_call_billed_30_6_pays_its_whole_first_block(rig):
    run = rig.call("39080000001", "k-3006", hold_ms=2000)
    (result,) = run.results.values()
    assert (result.code, result.bye) == (200, 200), (result, run.output)
    record = rig.ended_record(result.call_id, "k-3006")
    assert 2 <= record["duration"] <= 4 and record["fee"] == 30, record  # 30 s at 6 per 6 s, not 2-4 s of it


def test_a_call_across_the_end_of_the_peak_is_priced_per_segment(rig):
    """The peak (5 a second) ends a few seconds after the call is answered, then the off-peak rate (1 a
    second) prices it: the boundary is set ahead by the test, in the deck it imports while the rig runs
    (the agent takes the change at its next authorization), and the fee is held to the record's answer."""
    from datetime import datetime, timedelta, timezone

    boundary = (datetime.now(timezone.utc) + timedelta(seconds=12)).replace(microsecond=0)
    if boundary.date() != datetime.now(timezone.utc).date():
        pytest.skip("the boundary would fall after midnight UTC")
    deck = rig.workdir / "windows.csv"
    deck.write_text("prefix,rate,rate_increment,weekdays,time_start,time_end\n"
                    f"3909,5,1,,00:00,{boundary:%H:%M:%S}\n3909,1,1,,,\n")
    run_cli("import", "rates", str(deck), "--pricelist", "k-win", "--carrier", "k-answer", "--quiet",
            redis_url=rig.redis_url, database_url=rig.database_url)
    ahead = (boundary - datetime.now(timezone.utc)).total_seconds()
    assert ahead > 2, "the import took the seconds meant for the call"
    run = rig.call("39090000001", "k-win", hold_ms=int((ahead + 4) * 1000))
    (result,) = run.results.values()
    assert (result.code, result.bye) == (200, 200), (result, run.output)
    record = rig.ended_record(result.call_id, "k-win")
    begun = record["timestamp_begin"]
    peak = min(record["duration"], math.ceil((boundary - begun).total_seconds()))  # seconds begun before it
    assert 0 < peak < record["duration"], record  # the call crossed the boundary
    assert record["fee"] == 5 * peak + 1 * (record["duration"] - peak), record
    assert record["destination_rate"]["time_end"] == f"{boundary:%H:%M:%S}".removesuffix(":00")


@pytest.mark.parametrize("account,number,reason,phrase", REFUSALS, ids=[r[2] for r in REFUSALS])
def test_refusal_gives_403_with_reason_and_is_recorded(rig, account, number, reason, phrase):
    run = rig.call(number, account)

    (result,) = run.results.values()
    assert (result.code, result.phrase) == (403, phrase), run.output
    # readable as soon as the caller has the 403: no waiting
    record = rig.record(result.call_id, account)
    assert record is not None, f"no authorization record for refused call {result.call_id}"
    assert record["authorized"] is False
    assert record["unauthorized_reason"] == reason
    assert record["destination"] == rig.to_uri(number)


def test_failover_walks_every_carrier_until_one_answers(rig):
    before = state.balance(rig.redis_url, "k-fo")

    run = rig.call("39030000001", "k-fo", hold_ms=500)

    (result,) = run.results.values()
    assert (result.code, result.bye) == (200, 200), (result, run.output)
    lines = "\n".join(rig.kamailio_lines(result.call_id))
    p = rig.ports
    # 1st: silent UDP carrier, abandoned after fr_timer; 2nd: 503; 3rd: TLS, no TLS socket here;
    # 4th: TCP carrier answers
    assert f"carrier UDP:127.0.0.1:{p['k-dead']} failed (408)" in lines, lines
    assert f"carrier UDP:127.0.0.1:{p['k-error']} failed (503)" in lines, lines
    assert f"-> sip:127.0.0.1:{p['k-tls']};transport=tls" in lines, lines
    assert f"-> sip:127.0.0.1:{p['k-answer-tcp']};transport=tcp" in lines, lines
    record = rig.ended_record(result.call_id, "k-fo")
    assert record["authorized"] is True and record["duration"] >= 1
    assert before - state.balance(rig.redis_url, "k-fo") == record["fee"]
    assert state.reserved(rig.redis_url, "k-fo") == 0


def test_prepaid_call_is_cut_off_when_the_balance_runs_out(rig):
    run = rig.call("39040000001", "k-cut", scenario="uac_cutoff.xml", timeout=40)

    (result,) = run.results.values()
    assert result.code == 200, (result, run.output)
    assert result.cut_off, f"Kamailio never sent the caller a BYE: {run.output}"
    assert run.elapsed < CUTOFF_SECONDS + 3, run.elapsed
    # the carrier of this test takes one call and exits once it got the BYE
    carrier = rig.carriers["k-answer-cut"]
    assert carrier.wait(5.0), "the carrier never got the BYE of the cut-off"
    assert f"BYE {result.call_id}" in carrier.log_path.read_text()
    record = rig.ended_record(result.call_id, "k-cut")
    assert CUTOFF_SECONDS <= record["duration"] <= CUTOFF_SECONDS + 1, record
    assert state.balance(rig.redis_url, "k-cut") >= 0
    assert state.reserved(rig.redis_url, "k-cut") == 0


def test_reinvite_does_not_push_the_cut_off_back(rig):
    run = rig.call("39070000001", "k-reinv", scenario="uac_cutoff_reinvite.xml", timeout=40)

    (result,) = run.results.values()
    assert result.code == 200, (result, run.output)
    assert result.reinvited, f"the re-INVITE (2.5 s into the call) was not answered: {run.output}"
    assert result.cut_off, f"Kamailio never sent the caller a BYE: {run.output}"
    # a timer restarted by the re-INVITE would cut at 2.5 + 3 s
    assert run.elapsed < CUTOFF_SECONDS + 1.5, run.elapsed
    record = rig.ended_record(result.call_id, "k-reinv")
    assert CUTOFF_SECONDS <= record["duration"] <= CUTOFF_SECONDS + 1, record
    assert state.balance(rig.redis_url, "k-reinv") >= 0


def test_rejected_call_is_not_charged_and_releases_its_reservation(rig):
    before = state.balance(rig.redis_url, "k-busy")

    run = rig.call("39050000001", "k-busy")

    (result,) = run.results.values()
    assert result.code == 486, (result, run.output)
    assert wait_for(lambda: state.reserved(rig.redis_url, "k-busy") == 0, 3.0), "reservation still held"
    assert state.balance(rig.redis_url, "k-busy") == before
    record = rig.record(result.call_id, "k-busy")
    assert record is None or not record.get("fee"), record


@pytest.mark.parametrize("failure", ["refused", "hung", "error", "wrong-token"])
def test_agent_down_gives_500_rating_not_available(rig, failure):
    """refused: nothing listens at the agent URL; hung: the agent process is frozen (SIGSTOP), so
    the HTTP request times out (RATING_AGENT_TIMEOUT), which must not turn into tm's 408;
    error: the agent's Redis is gone, so the agent answers an HTTP error (503);
    wrong-token: Kamailio sends a token the agent (--agent-token) does not accept (401)."""
    agent = redis = None
    defines = {}
    if failure == "wrong-token":
        agent_url, defines = rig.agent.url, {"RATING_AGENT_TOKEN": '"not-the-token"'}
    elif failure == "refused":
        agent_url = f"http://127.0.0.1:{free_port()}"
    elif failure == "hung":
        agent = AgentProcess(rig.redis_url, rig.database_url, rig.workdir).start()
        agent_url = agent.url
    else:
        redis = RedisServer(rig.workdir / "redis-doomed").start()
        agent = AgentProcess(redis.url, rig.database_url, rig.workdir, redis_timeout=0.3).start()
        agent_url = agent.url
    kamailio = Kamailio(
        rig.workdir / f"kamailio-agent-{failure}", auth_db=rig.auth_db,
        defines={"WITH_RATING": None, "RATING_AGENT_URL": f'"{agent_url}"', "RATING_AGENT_TIMEOUT": 1000,
                 "TM_FR_TIMER": 1000, **defines},
    )
    try:
        kamailio.start()
        if failure == "hung":
            agent.signal_all(signal.SIGSTOP)
        elif failure == "error":
            redis.stop()
        run = run_callers(rig.workdir / f"callers-agent-{failure}", kamailio.port, "39010000002", "k-ok",
                          password=subscriber_password("k-ok"))
    finally:
        kamailio.stop()
        if agent:
            if failure == "hung":
                agent.signal_all(signal.SIGCONT)
            agent.stop()
        if redis:
            redis.stop()

    (result,) = run.results.values()
    assert (result.code, result.phrase) == (500, "Rating is not available"), run.output
    if failure == "error":
        assert "agent answered HTTP 5" in kamailio.log(), "the agent did not answer an HTTP error"
    if failure == "wrong-token":
        assert "agent answered HTTP 401" in kamailio.log()


_GARBAGE_AGENT = """
import http.server, sys

class Garbage(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = b"<html>not the agent</html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Garbage).serve_forever()
"""


def test_an_answer_that_is_not_an_authorization_gives_480(rig):
    """Something else answers at the agent's URL with 200 and a body that is not an authorization."""
    import subprocess

    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", _GARBAGE_AGENT, str(port)])
    kamailio = Kamailio(
        rig.workdir / "kamailio-agent-garbage", auth_db=rig.auth_db,
        defines={"WITH_RATING": None, "RATING_AGENT_URL": f'"http://127.0.0.1:{port}"', "RATING_AGENT_TIMEOUT": 1000,
                 "TM_FR_TIMER": 1000},
    )
    try:
        wait_for_port(port)
        kamailio.start()
        run = run_callers(rig.workdir / "callers-agent-garbage", kamailio.port, "39010000002", "k-ok",
                          password=subscriber_password("k-ok"))
    finally:
        kamailio.stop()
        server.terminate()
        server.wait(5)

    (result,) = run.results.values()
    assert (result.code, result.phrase) == (480, "Temporarily Unavailable"), run.output
    assert "unusable authorization answer" in kamailio.log()


def test_concurrent_calls_beyond_the_account_limit_are_refused(rig):
    limit, extra = 3, 3

    run = rig.call("39060000001", "k-conc", calls=limit + extra, rate=200, hold_ms=2500)

    results = list(run.results.values())
    assert len(results) == limit + extra, run.output
    answered = [r for r in results if r.code == 200]
    refused = [r for r in results if r.code == 403]
    assert len(answered) == limit, [(r.code, r.phrase) for r in results]
    assert len(refused) == extra, [(r.code, r.phrase) for r in results]
    assert all(r.phrase == "Forbidden -- too many ongoing calls" for r in refused)
    assert all(r.bye == 200 for r in answered)
    for r in answered:
        rig.ended_record(r.call_id, "k-conc")
    assert wait_for(lambda: state.reserved(rig.redis_url, "k-conc") == 0, 3.0)

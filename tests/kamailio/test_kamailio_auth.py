"""Caller authentication through a real Kamailio, SIPp and the real agent: who may call, and on which account.

The module's Kamailio has WITH_RATING, WITH_AUTH (digest against the subscriber table of its own PostgreSQL
database) and WITH_IPAUTH (trusted peers of the address table of that database). Every SIPp caller is on
127.0.0.1: a trusted peer is told apart by its source port.

- a digest-authenticated call is billed to the authenticated user;
- a wrong password is challenged again and never reaches the agent;
- a call authenticated as one account with another account's From is refused, neither account is touched;
- a trusted peer is billed to its address row's tag, whatever From it sends;
- an untrusted address without credentials is challenged (WITH_AUTH) or refused (WITH_IPAUTH only);
- without WITH_AUTH and WITH_IPAUTH (the default) every call is refused;
- pike drops a flooding source, not a trusted peer;
- a forged in-dialog INVITE (a Route naming Kamailio, no dialog) is not relayed to a carrier.

Every wait is on a condition with a bound.
"""

from __future__ import annotations

import json
import socket
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

# tests/ (state.py, conftest.py) and this folder (kamailio_harness.py) as import roots
sys.path[:0] = [p for p in (str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent))
                if p not in sys.path]

import state  # noqa: E402
from conftest import AgentProcess  # noqa: E402
from kamailio_harness import (  # noqa: E402
    Carrier, Kamailio, add_subscriber, import_catalog, add_trusted_peer, free_low_port, rig_base, run_callers,
    subscriber_password, wait_for,
)

pytestmark = pytest.mark.kamailio

NUMBER = "39090000001"
RATE = {"connect_fee": 3, "rate": 1, "rate_increment": 1, "interval_start": 0}
# a-alice and a-bob are subscribers (digest); a-peer is the account of the trusted peer
ACCOUNTS = ("a-alice", "a-bob", "a-peer")
SUBSCRIBERS = ("a-alice", "a-bob")



def build_catalog(carrier_port: int) -> dict:
    return {
        "carriers": [{"carrier_tag": "a-answer", "host": "127.0.0.1", "port": carrier_port, "protocol": "UDP",
                      "active": True}],
        "pricelists": [{"pricelist_tag": "a-main", "name": "a-main", "currency": "EUR"}],
        "rates": [{"pricelist_tag": "a-main", "carrier_tag": "a-answer", "prefix": "3909", "description": "auth",
                   **RATE}],
        "accounts": [{"account_tag": tag, "type": "PREPAID", "balance": 100_000, "max_concurrent_transactions": 10,
                      "pricelist_tags": ["a-main"], "active": True} for tag in ACCOUNTS],
    }



@dataclass
class Rig:
    workdir: Path
    redis_url: str
    database_url: str
    auth_db: str
    agent: AgentProcess
    kamailio: Kamailio
    carrier: Carrier
    peer_port: int  # trusted peer billed to a-peer
    tagless_port: int  # trusted peer with no account (tag NULL)
    pinger_port: int  # trusted peer, for the OPTIONS of the pike test

    def call(self, account: str, kamailio: Kamailio | None = None, **options):
        """One call with `account` as the From user; `options` as run_callers' (password, auth_user...)."""
        run = run_callers(self.workdir / "callers", (kamailio or self.kamailio).port, NUMBER, account,
                          hold_ms=1000, timeout=30, **options)
        assert len(run.results) == 1, run.output
        (result,) = run.results.values()
        return result

    def record(self, call_id: str, account: str) -> dict | None:
        return state.call_record(self.redis_url, self.database_url, call_id, account)

    def ended_record(self, call_id: str, account: str, timeout: float = 5.0) -> dict:
        record = wait_for(lambda: (r := self.record(call_id, account)) and r.get("timestamp_end") and r, timeout)
        assert record, f"no ended call record for {call_id}: {self.record(call_id, account)}"
        return record

    def balances(self) -> dict[str, int]:
        return {account: state.balance(self.redis_url, account) for account in ACCOUNTS}

    def assert_never_rated(self, call_id: str) -> None:
        """The agent never heard of the call, on any account."""
        for account in ACCOUNTS:
            assert self.record(call_id, account) is None, (account, self.record(call_id, account))
        assert call_id not in self.agent.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def rig(tmp_path_factory, postgres_server):
    start = rig_base(tmp_path_factory, postgres_server.url, "auth")
    base, redis_server, database_url, auth_db = start.base, start.redis, start.database_url, start.auth_db
    for account in SUBSCRIBERS:
        add_subscriber(auth_db, account)
    peer_port, tagless_port, pinger_port = free_low_port(), free_low_port(), free_low_port()
    add_trusted_peer(auth_db, "a-peer", port=peer_port)
    add_trusted_peer(auth_db, None, port=tagless_port)
    add_trusted_peer(auth_db, "a-peer", port=pinger_port)

    carrier = Carrier(base / "carriers", "uas.xml", "UDP")
    agent = kamailio = None
    try:
        carrier.start()
        (base / "catalog.json").write_text(json.dumps(build_catalog(carrier.port)))
        import_catalog(base / "catalog.json", redis_server.url, database_url, base / "decks")
        agent = AgentProcess(redis_server.url, database_url, base, redis_timeout=2.0).start()
        kamailio = Kamailio(
            base / "kamailio", auth_db=auth_db, ip_auth=True,
            defines={"WITH_RATING": None, "RATING_AGENT_URL": f'"{agent.url}"', "RATING_AGENT_TIMEOUT": 1000,
                     "TM_FR_TIMER": 1000},
        ).start()
        yield Rig(base, redis_server.url, database_url, auth_db, agent, kamailio, carrier, peer_port,
                  tagless_port, pinger_port)
    finally:
        if kamailio:
            kamailio.stop()
        if agent:
            agent.stop()
        carrier.stop()
        redis_server.stop()


def _assert_charged(rig: Rig, result, account: str, before: dict[str, int]) -> None:
    record = rig.ended_record(result.call_id, account)
    assert record["authorized"] is True and record["fee"] > 0, record
    after = rig.balances()
    assert before[account] - after[account] == record["fee"], (before, after, record)
    others = {a: b for a, b in before.items() if a != account}
    assert others == {a: after[a] for a in others}, (before, after)


def test_a_digest_authenticated_call_is_billed_to_the_authenticated_user(rig):
    before = rig.balances()

    result = rig.call("a-alice", password=subscriber_password("a-alice"))

    assert (result.code, result.bye, result.challenged) == (200, 200, 1), result
    _assert_charged(rig, result, "a-alice", before)
    lines = [line for line in rig.kamailio.log().splitlines() if result.call_id in line]
    assert any("authenticated, account a-alice" in line for line in lines), lines
    # the carrier never sees the caller's credentials
    carrier_log = rig.carrier.log_path.read_text(errors="replace")
    assert "Proxy-Authorization" not in carrier_log


def test_a_wrong_password_is_challenged_again_and_never_rated(rig):
    before = rig.balances()

    result = rig.call("a-alice", password="not-the-password")

    assert (result.code, result.phrase) == (407, "Proxy Authentication Required"), result
    assert result.challenged == 2, result
    assert wait_for(lambda: any(result.call_id in line and "failed digest authentication as a-alice" in line
                                for line in rig.kamailio.log().splitlines()), 5), rig.kamailio.log()[-3000:]
    rig.assert_never_rated(result.call_id)
    assert rig.balances() == before


def test_a_call_authenticated_as_one_account_with_the_from_of_another_is_refused(rig):
    """a-alice knows her own password and writes a-bob in From: refused, nobody is billed."""
    before = rig.balances()

    result = rig.call("a-bob", auth_user="a-alice", password=subscriber_password("a-alice"))

    assert (result.code, result.phrase) == (403, "Forbidden -- From user is not the authenticated user"), result
    assert result.challenged == 1, result
    rig.assert_never_rated(result.call_id)
    assert rig.balances() == before


def test_a_trusted_peer_is_billed_to_its_account_whatever_its_from(rig):
    """The peer's From names a-bob: the call is a-peer's all the same, with no challenge."""
    before = rig.balances()

    result = rig.call("a-bob", local_port=rig.peer_port)

    assert (result.code, result.bye, result.challenged) == (200, 200, 0), result
    _assert_charged(rig, result, "a-peer", before)
    assert rig.record(result.call_id, "a-bob") is None


def test_an_untrusted_address_without_credentials_is_challenged_and_never_rated(rig):
    """A From naming an existing account is no credential: the caller gets 407 and no call."""
    before = rig.balances()

    result = rig.call("a-bob")

    assert (result.code, result.challenged) == (407, 2), result
    rig.assert_never_rated(result.call_id)
    assert rig.balances() == before


def test_a_trusted_peer_without_an_account_is_refused(rig):
    result = rig.call("a-bob", local_port=rig.tagless_port)

    assert (result.code, result.phrase) == (403, "Forbidden -- trusted peer without account"), result
    rig.assert_never_rated(result.call_id)


def test_with_ip_authentication_only_an_untrusted_address_is_refused(rig):
    kamailio = Kamailio(
        rig.workdir / "kamailio-ipauth", auth_db=rig.auth_db, ip_auth=True,
        defines={"WITH_AUTH": False, "WITH_RATING": None, "RATING_AGENT_URL": f'"{rig.agent.url}"',
                 "RATING_AGENT_TIMEOUT": 1000, "TM_FR_TIMER": 1000},
    )
    before = rig.balances()
    try:
        kamailio.start()
        refused = rig.call("a-alice", kamailio=kamailio, password=subscriber_password("a-alice"))
        trusted = rig.call("a-bob", kamailio=kamailio, local_port=rig.peer_port)
    finally:
        kamailio.stop()

    assert (refused.code, refused.phrase, refused.challenged) == \
        (403, "Forbidden -- source address not trusted", 0), refused
    rig.assert_never_rated(refused.call_id)
    assert (trusted.code, trusted.bye) == (200, 200), trusted
    _assert_charged(rig, trusted, "a-peer", before)


def test_the_default_configuration_refuses_every_call(rig):
    """kamailio.cfg with neither WITH_AUTH nor WITH_IPAUTH: nobody is known, so nobody may call."""
    kamailio = Kamailio(
        rig.workdir / "kamailio-default",
        defines={"WITH_RATING": None, "RATING_AGENT_URL": f'"{rig.agent.url}"', "RATING_AGENT_TIMEOUT": 1000},
    )
    try:
        kamailio.start()
        result = rig.call("a-alice", kamailio=kamailio, password=subscriber_password("a-alice"))
    finally:
        kamailio.stop()

    assert (result.code, result.phrase, result.challenged) == \
        (403, "Forbidden -- caller authentication not configured", 0), result
    rig.assert_never_rated(result.call_id)
    assert "neither WITH_AUTH nor WITH_IPAUTH is defined" in kamailio.log()


def test_a_forged_in_dialog_invite_is_not_relayed(rig):
    """An INVITE with a To-tag and a Route naming Kamailio, for a dialog Kamailio never had: without the
    dialog check, loose routing would send it to the carrier with no authentication and no rating."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        local = sock.getsockname()[1]
        call_id = f"forged-{uuid.uuid4().hex}"
        kamailio = rig.kamailio.port
        message = (
            f"INVITE sip:{NUMBER}@127.0.0.1:{rig.carrier.port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK{uuid.uuid4().hex[:16]};rport\r\n"
            f"Route: <sip:127.0.0.1:{kamailio};lr>\r\n"
            f"From: <sip:a-bob@127.0.0.1:{local}>;tag=forged1\r\n"
            f"To: <sip:{NUMBER}@127.0.0.1>;tag=forged2\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 2 INVITE\r\nMax-Forwards: 70\r\n"
            f"Contact: <sip:a-bob@127.0.0.1:{local}>\r\nContent-Length: 0\r\n\r\n"
        )
        sock.sendto(message.encode(), ("127.0.0.1", kamailio))
        sock.settimeout(3)
        data, _ = sock.recvfrom(65535)

    assert data.startswith(b"SIP/2.0 481"), data
    assert wait_for(lambda: any(call_id in line and "matches no known dialog" in line
                                for line in rig.kamailio.log().splitlines()), 5)
    assert call_id not in rig.carrier.log_path.read_text(errors="replace")
    rig.assert_never_rated(call_id)


def _options(sock: socket.socket, port: int, sequence: int) -> None:
    local = sock.getsockname()[1]
    call_id = uuid.uuid4().hex
    message = (
        f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{local};branch=z9hG4bK{call_id[:16]};rport\r\n"
        f"From: <sip:flood@127.0.0.1:{local}>;tag={call_id[:8]}\r\n"
        f"To: <sip:127.0.0.1:{port}>\r\n"
        f"Call-ID: {call_id}\r\nCSeq: {sequence} OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    sock.sendto(message.encode(), ("127.0.0.1", port))


def _answers(sock: socket.socket, within: float) -> int:
    """How many SIP answers arrive on `sock` until none came for `within` seconds."""
    count = 0
    sock.settimeout(within)
    while True:
        try:
            data, _ = sock.recvfrom(65535)
        except OSError:
            return count
        if data.startswith(b"SIP/2.0 200"):
            count += 1


def test_pike_drops_a_flooding_source_but_not_a_trusted_peer(rig):
    density = 5  # per second: pike blocks somewhere between 5 and 15 requests in a second
    kamailio = Kamailio(
        rig.workdir / "kamailio-pike", auth_db=rig.auth_db, ip_auth=True,
        defines={"PIKE_SAMPLING_TIME": 1, "PIKE_DENSITY": density, "PIKE_REMOVE_LATENCY": 5},
    )
    flood = 100
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as attacker, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        attacker.bind(("127.0.0.1", 0))
        peer.bind(("127.0.0.1", rig.pinger_port))
        try:
            kamailio.start()
            for i in range(flood):
                _options(attacker, kamailio.port, i + 1)
            answered = _answers(attacker, 0.5)
            # blocked after 5 to 15 of them (a burst straddling two sampling periods stays blocked)
            assert answered < flood // 2, f"{answered} of {flood} flooding requests answered"
            assert wait_for(lambda: "pike: flood from 127.0.0.1" in kamailio.log(), 5), kamailio.log()[-3000:]

            # the same IP, but a trusted peer's address and port: not limited
            for i in range(20):
                _options(peer, kamailio.port, i + 1)
            assert _answers(peer, 0.5) == 20

            # the flood over, the source is let through again within a few sampling periods
            def answered_again() -> bool:
                _options(attacker, kamailio.port, 1)
                return _answers(attacker, 0.4) > 0

            assert wait_for(answered_again, 10, interval=0.1), kamailio.log()[-3000:]
        finally:
            kamailio.stop()

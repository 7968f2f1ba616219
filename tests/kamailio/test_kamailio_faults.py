"""Lost ends and Kamailio restarts, through a real Kamailio, SIPp and the real agent.

- an end the agent could not take (agent down for a moment) is retried by Kamailio with the same body, and
  the call is charged its real duration;
- a Kamailio killed mid-call and started again loads its dialogs from PostgreSQL (WITH_DIALOG_DB) and still
  ends the call, charged its real duration;
- a Kamailio killed and started again without its dialogs: the agent's reconciliation (dlg.briefing over
  Kamailio's JSON-RPC) ends the call, charged up to when it was last seen alive, not its grant.

Every wait is on a condition with a bound; no test relies on a sleep outracing a server.
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

# tests/ (state.py, conftest.py) and this folder (kamailio_harness.py) as import roots
sys.path[:0] = [p for p in (str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent))
                if p not in sys.path]

import state  # noqa: E402
from cache import call_key, open_calls_key  # noqa: E402
from conftest import AgentProcess  # noqa: E402
from kamailio_harness import (  # noqa: E402
    Carrier, Kamailio, add_subscriber, import_catalog, create_dialog_database, free_port, rig_base, run_callers,
    subscriber_password, wait_for,
)

pytestmark = pytest.mark.kamailio

RATE = {"connect_fee": 5, "rate": 1, "rate_increment": 1, "interval_start": 0}
ACCOUNTS = ("f-retry", "f-restart", "f-reconcile")
SEEN = "rating:kamailio:seen"



def build_catalog(carrier_port: int) -> dict:
    return {
        "carriers": [{"carrier_tag": "f-answer", "host": "127.0.0.1", "port": carrier_port, "protocol": "UDP",
                      "active": True}],
        "pricelists": [{"pricelist_tag": "f-main", "name": "f-main", "currency": "EUR"}],
        "rates": [{"pricelist_tag": "f-main", "carrier_tag": "f-answer", "prefix": "3908", "description": "faults",
                   **RATE}],
        # a balance that grants the longest call (--max-units): a charge of the whole grant would show
        "accounts": [{"account_tag": tag, "type": "PREPAID", "balance": 1_000_000, "max_concurrent_transactions": 10,
                      "pricelist_tags": ["f-main"], "active": True} for tag in ACCOUNTS],
    }



async def _dialog_state(database_url: str, call_id: str) -> tuple[int | None, set[str]]:
    """The state of the dialog Kamailio keeps in PostgreSQL for `call_id`, and the names of its variables."""
    import asyncpg

    connection = await asyncpg.connect(database_url.replace("postgres://", "postgresql://", 1))
    try:
        row = await connection.fetchrow("SELECT state, hash_entry, hash_id FROM dialog WHERE callid = $1", call_id)
        if row is None:
            return None, set()
        names = await connection.fetch("SELECT dialog_key FROM dialog_vars WHERE hash_entry = $1 AND hash_id = $2",
                                       row["hash_entry"], row["hash_id"])
        return row["state"], {r["dialog_key"] for r in names}
    finally:
        await connection.close()


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Caller(threading.Thread):
    """One SIPp call in the background (run_callers blocks until the call is over)."""

    def __init__(self, workdir: Path, port: int, account: str, hold_ms: int) -> None:
        super().__init__(daemon=True)
        self.args = (workdir, port, "39080000001", account)
        self.hold_ms = hold_ms
        self.run_result = None

    def run(self) -> None:
        self.run_result = run_callers(*self.args, hold_ms=self.hold_ms, timeout=60,
                                      password=subscriber_password(self.args[3]))

    def result(self, timeout: float):
        self.join(timeout)
        assert not self.is_alive(), "the SIPp caller did not finish"
        assert len(self.run_result.results) == 1, self.run_result.output
        (result,) = self.run_result.results.values()
        return result


@dataclass
class Rig:
    workdir: Path
    redis_url: str
    database_url: str
    dialog_db: str
    auth_db: str
    agent: AgentProcess
    kamailio: Kamailio
    redis: redis.Redis

    def running_call(self, account: str, timeout: float = 10.0) -> tuple[str, int]:
        """(Call-ID, begin ms) of the account's one call, once the agent holds it as begun."""
        def begun():
            for key in self.redis.smembers(open_calls_key("default", account, False)):
                st, tt, tb = self.redis.hmget(key, "st", "tt", "tb")
                if st == "begun" and tb:
                    return tt, int(tb)
            return None

        found = wait_for(begun, timeout)
        assert found, f"no begun call of {account} in Redis"
        return found

    def ended_record(self, call_id: str, account: str, timeout: float) -> dict:
        record = wait_for(lambda: (r := state.call_record(self.redis_url, self.database_url, call_id, account))
                          and r.get("timestamp_end") and r, timeout, interval=0.2)
        assert record, f"no ended call record for {call_id}: " \
                       f"{state.call_record(self.redis_url, self.database_url, call_id, account)}"
        return record

    def state_of(self, call_id: str) -> str | None:
        return self.redis.hget(call_key("default", call_id), "st")


@pytest.fixture(scope="module")
def rig(tmp_path_factory, postgres_server):
    start = rig_base(tmp_path_factory, postgres_server.url, "faults")
    base, redis_server, database_url, auth_db = start.base, start.redis, start.database_url, start.auth_db
    dialog_db = asyncio.run(create_dialog_database(postgres_server.url, f"kamailio_dialogs_{uuid.uuid4().hex[:8]}"))
    for account in ACCOUNTS:
        add_subscriber(auth_db, account)
    carrier = Carrier(base / "carriers", "uas.xml", "UDP")
    agent = kamailio = None
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        carrier.start()
        (base / "catalog.json").write_text(json.dumps(build_catalog(carrier.port)))
        import_catalog(base / "catalog.json", redis_server.url, database_url, base / "decks")
        agent = AgentProcess(redis_server.url, database_url, base, redis_timeout=2.0).start()
        kamailio = Kamailio(
            base / "kamailio", rpc_port=free_port(), dialog_db=dialog_db, auth_db=auth_db,
            defines={"WITH_RATING": None, "RATING_AGENT_URL": f'"{agent.url}"', "RATING_AGENT_TIMEOUT": 1000,
                     "RATING_RETRY_DELAY": 1, "RATING_RETRY_MAX": 5, "TM_FR_TIMER": 1000},
        ).start()
        yield Rig(base, redis_server.url, database_url, dialog_db, auth_db, agent, kamailio, client)
    finally:
        if kamailio:
            kamailio.stop()
        if agent:
            agent.stop()
        carrier.stop()
        client.close()
        redis_server.stop()


def _assert_real_duration(record: dict, seconds: float) -> None:
    """Charged the call's real length (SIPp's hold), not its grant."""
    assert seconds <= record["duration"] <= seconds + 1.5, record
    assert record["fee"] == RATE["connect_fee"] + math.ceil(record["duration"]) * RATE["rate"], record


def test_an_end_the_agent_missed_is_retried_and_charged_its_real_duration(rig):
    hold = 4.0
    caller = Caller(rig.workdir / "callers-retry", rig.kamailio.port, "f-retry", int(hold * 1000))
    before = state.balance(rig.redis_url, "f-retry")
    caller.start()
    call_id, _ = rig.running_call("f-retry")
    # the agent dies at once (SIGKILL): the BYE comes while nothing listens at the agent's URL
    rig.agent.signal_all(signal.SIGKILL)
    rig.agent.process.wait(10)
    rig.agent.process = None
    assert wait_for(lambda: not _listening(rig.agent.port), 10), "the killed agent's port still answers"
    try:
        assert caller.is_alive(), "the call ended before the agent was down"
        result = caller.result(30)
        assert (result.code, result.bye) == (200, 200), caller.run_result.output
        assert wait_for(lambda: f"agent unreachable for {call_id}" in rig.kamailio.log(), 10), \
            rig.kamailio.log()[-3000:]
        assert rig.state_of(call_id) == "begun"
    finally:
        rig.agent.start()  # the same port: Kamailio's retries find it there
    record = rig.ended_record(call_id, "f-retry", timeout=20)
    _assert_real_duration(record, hold)
    assert f"retrying end_transaction for {call_id}" in rig.kamailio.log()
    assert before - state.balance(rig.redis_url, "f-retry") == record["fee"]
    assert state.reserved(rig.redis_url, "f-retry") == 0


def test_a_restarted_kamailio_still_ends_the_calls_it_had(rig):
    hold = 6.0
    caller = Caller(rig.workdir / "callers-restart", rig.kamailio.port, "f-restart", int(hold * 1000))
    caller.start()
    call_id, _ = rig.running_call("f-restart")
    # written at once (db_mode 1): the confirmed dialog with the rating variables set when it was answered
    stored = wait_for(lambda: (s := asyncio.run(_dialog_state(rig.dialog_db, call_id)))[0] == 4
                      and "rating_begun" in s[1] and s, 5)
    assert stored, asyncio.run(_dialog_state(rig.dialog_db, call_id))
    rig.kamailio.kill()
    rig.kamailio.start()
    assert call_id in {d.get("call-id") for d in rig.kamailio.rpc("dlg.briefing", "cs") or []}, \
        "the restarted Kamailio did not load the dialog"

    result = caller.result(30)
    assert (result.code, result.bye) == (200, 200), caller.run_result.output
    record = rig.ended_record(result.call_id, "f-restart", timeout=10)
    _assert_real_duration(record, hold)
    assert state.reserved(rig.redis_url, "f-restart") == 0


def test_reconciliation_ends_a_call_kamailio_lost_at_when_it_was_last_seen(rig):
    """A Kamailio without its dialogs in a database is killed mid-call and started again: it sends no end
    for the call it no longer knows (the caller's BYE passes through it statelessly). The agent sees the call
    missing from its dialogs and ends it, charged up to the last listing that had it."""
    kamailio = Kamailio(
        rig.workdir / "kamailio-volatile", rpc_port=free_port(), auth_db=rig.auth_db,
        defines={"WITH_RATING": None, "RATING_AGENT_URL": f'"{rig.agent.url}"', "RATING_AGENT_TIMEOUT": 1000,
                 "TM_FR_TIMER": 1000},
    )
    # a second agent on the same Redis and database, reconciling with that Kamailio (the module's agent
    # lists none: its Kamailio keeps its dialogs)
    reconciler = AgentProcess(rig.redis_url, rig.database_url, rig.workdir, kamailio_rpc=kamailio.rpc_url,
                              kamailio_reconcile_interval=0.3, kamailio_reconcile_after=0.5)
    hold = 8.0
    try:
        kamailio.start()
        reconciler.start()
        caller = Caller(rig.workdir / "callers-reconcile", kamailio.port, "f-reconcile", int(hold * 1000))
        caller.start()
        call_id, begun_at = rig.running_call("f-reconcile")
        key = call_key("default", call_id)
        # listed alive, and not ended for being listed, for more than a second
        assert wait_for(lambda: int(rig.redis.hget(SEEN, key) or 0) > begun_at + 1000, 10), \
            reconciler.log_path.read_text()[-3000:]
        assert rig.state_of(call_id) == "begun"
        seen_before = int(rig.redis.hget(SEEN, key))
        killed_at = time.time_ns() // 1_000_000
        kamailio.kill()
        kamailio.start()

        record = rig.ended_record(call_id, "f-reconcile", timeout=15)
        lower = math.floor((seen_before - begun_at) / 1000)
        upper = math.ceil((killed_at - begun_at) / 1000)
        assert lower <= record["duration"] <= upper, (record, lower, upper)
        assert record["duration"] < hold - 2, record  # not the call's length either: its end never came
        assert record["fee"] == RATE["connect_fee"] + record["duration"] * RATE["rate"], record
        # the housekeeper logs it right after ending the call: the record may be readable a moment earlier
        assert wait_for(lambda: "is on no Kamailio any more" in reconciler.log_path.read_text(), 5), \
            reconciler.log_path.read_text()[-3000:]

        result = caller.result(30)
        assert result.code == 200, caller.run_result.output
        # the caller's BYE went through the new Kamailio, which had no dialog: nothing changed the charge
        again = state.call_record(rig.redis_url, rig.database_url, call_id, "f-reconcile")
        assert (again["duration"], again["fee"]) == (record["duration"], record["fee"]), again
        assert state.reserved(rig.redis_url, "f-reconcile") == 0
        assert rig.redis.hget(SEEN, key) is None or wait_for(lambda: rig.redis.hget(SEEN, key) is None, 5)
    finally:
        kamailio.stop()
        reconciler.stop()

"""Several agent hosts behind one Kamailio (WITH_RATING_DISPATCHER), one of them killed mid-load or hung.

Two agents with their own folders, deck folders and ports rate against one Redis and one PostgreSQL;
Kamailio's dispatcher spreads every request (authorization, begin, end, rollback, retries) over both, round
robin. Agent A is SIGKILLed while calls are being set up and torn down, and while its outbox writer holds a
batch it has not written (PostgreSQL's records table is locked around the kill). By design no caller
notices: an authorization A refused or dropped is sent to B (the agents share the call state in Redis, so one
that A had already reserved is answered as it stands), A is marked inactive at its first failure, ends A
missed are retried on B, and B's housekeeper claims and writes the outbox entries A had read. Then every
invariant is checked: each answered call has exactly one record in PostgreSQL, the balance is the initial one
minus those records' fees (PostgreSQL's ledger and balance agree), nothing is left reserved or open, calls
placed while A is dead go through B, and A, started again, is back in the selection once its /ready answers.

The whole module runs twice: on one redis-server, and (make test-long) on a Redis Cluster of 3 masters and
3 replicas, both agents given its seed nodes (README "Scaling out").

Every wait is on a condition with a bound; nothing relies on a sleep outracing a server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import socket
import sys
import threading
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

# tests/ (state.py, conftest.py) and this folder (kamailio_harness.py) as import roots
sys.path[:0] = [p for p in (str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent))
                if p not in sys.path]

import state  # noqa: E402
from conftest import AgentProcess  # noqa: E402
from kamailio_harness import (  # noqa: E402
    Carrier, Kamailio, add_subscriber, import_catalog, rig_base, run_callers, subscriber_password, wait_for,
    write_agent_list,
)

pytestmark = pytest.mark.kamailio

ACCOUNT = "h-caller"
NUMBER = "39060000001"
BALANCE = 10_000_000
RATE = {"connect_fee": 5, "rate": 1, "rate_increment": 1, "interval_start": 0}
LOAD_CALLS, LOAD_RATE, HOLD_MS = 80, 20, 1500
# calls placed while agent A is dead, and after it is back
LATER_CALLS = 12
# failed calls allowed in the failover window: none, since an authorization A could not take is sent to B
FAILOVER_FAILURES = 0
# seconds before an outbox entry a writer read and did not acknowledge may be claimed by another (30 s by
# default): short, so B's housekeeper takes over what the killed A held within the test
CLAIM_IDLE = 2


def build_catalog(carrier_port: int) -> dict:
    return {
        "carriers": [{"carrier_tag": "h-answer", "host": "127.0.0.1", "port": carrier_port, "protocol": "UDP",
                      "active": True}],
        "pricelists": [{"pricelist_tag": "h-main", "name": "h-main", "currency": "EUR"}],
        "rates": [{"pricelist_tag": "h-main", "carrier_tag": "h-answer", "prefix": "3906", "description": "hosts",
                   **RATE}],
        "accounts": [{"account_tag": ACCOUNT, "type": "PREPAID", "balance": BALANCE,
                      "max_concurrent_transactions": 1000, "pricelist_tags": ["h-main"], "active": True}],
    }


def _metric(agent: AgentProcess, pattern: str) -> int:
    """The sum of the agent's /metrics samples whose name and labels match `pattern`."""
    with urllib.request.urlopen(agent.url + "/metrics", timeout=5) as reply:
        text = reply.read().decode()
    return int(sum(float(v) for v in re.findall(rf"^{pattern} (\S+)$", text, re.M)))


def authorizations(agent: AgentProcess) -> int:
    """Authorizations the agent has answered."""
    return _metric(agent, r"rating_authorizations_total\{[^}]*\}")


def begins(agent: AgentProcess) -> int:
    """Begins the agent has answered."""
    return _metric(agent, r'rating_requests_total\{endpoint="[^"]*begin[^"]*"[^}]*\}')


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


async def _records(redis_url: str, database_url: str, call_ids: list[str]) -> dict[str, list[dict]]:
    """The call records of ACCOUNT for each Call-ID (the agent's own read path: Redis, then PostgreSQL)."""
    import asyncpg

    import cache
    from agent.store.records import read_records

    client = cache.connect(redis_url, 5.0)
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        found = {}
        for call_id in call_ids:
            found[call_id] = [r for r in await read_records(client, pool, "default", call_id)
                              if r["account_tag"] == ACCOUNT]
        return found
    finally:
        await pool.close()
        await client.aclose()


@dataclass
class Rig:
    workdir: Path
    redis_url: str
    database_url: str
    agents: tuple[AgentProcess, AgentProcess]
    kamailio: Kamailio
    redis_kind: str

    def callers(self, name: str, calls: int):
        return run_callers(self.workdir / name, self.kamailio.port, NUMBER, ACCOUNT, calls=calls, rate=LOAD_RATE,
                           hold_ms=HOLD_MS, timeout=60, password=subscriber_password(ACCOUNT))


@pytest.fixture(scope="module", params=["single", pytest.param("cluster", marks=pytest.mark.long)])
def rig(request, tmp_path_factory, postgres_server):
    start = rig_base(tmp_path_factory, postgres_server.url, "hosts", redis_kind=request.param)
    base, redis_server, database_url, auth_db = start.base, start.redis, start.database_url, start.auth_db
    add_subscriber(auth_db, ACCOUNT)
    carrier = Carrier(base / "carriers", "uas.xml", "UDP")
    agents: list[AgentProcess] = []
    kamailio = None
    try:
        carrier.start()
        (base / "catalog.json").write_text(json.dumps(build_catalog(carrier.port)))
        import_catalog(base / "catalog.json", redis_server.url, database_url, base / "decks")
        for name in ("agent-a", "agent-b"):
            # its own folder: its log, and its own deck folder (RATING_DECK_DIR), as on a host of its own
            (base / name).mkdir()
            # one after the other, from this thread: an agent dies with the thread that started it (PDEATHSIG)
            agents.append(AgentProcess(redis_server.url, database_url, base / name,
                                       outbox_claim_idle=CLAIM_IDLE).start())
        listed = write_agent_list(base / "agents.list", [agent.port for agent in agents])
        kamailio = Kamailio(
            base / "kamailio", auth_db=auth_db,
            defines={"WITH_RATING": None, "WITH_RATING_DISPATCHER": None,
                     "RATING_DISPATCHER_LIST": f'"{listed}"', "RATING_AGENT_TIMEOUT": 1000,
                     "RATING_RETRY_DELAY": 1, "RATING_RETRY_MAX": 5, "TM_FR_TIMER": 2000},
        ).start()
        yield Rig(base, redis_server.url, database_url, (agents[0], agents[1]), kamailio, request.param)
    finally:
        if kamailio:
            kamailio.stop()
        for agent in agents:
            agent.stop()
        carrier.stop()
        redis_server.stop()


def kill(agent: AgentProcess) -> None:
    """SIGKILL to every process of the agent (supervisor, worker, housekeeper): nothing said on the way out."""
    agent.signal_all(signal.SIGKILL)
    agent.process.wait(10)
    agent.process = None
    assert wait_for(lambda: not _listening(agent.port), 10), "the killed agent's port still answers"


def start_again(rig: Rig, agent: AgentProcess) -> None:
    """Starts a killed agent again, on its port (as listed), and, when Kamailio had marked it down, waits until
    its readiness check (every second) has put it back in the selection."""
    if agent.process is not None:
        return
    down, back = (f"agent sip:127.0.0.1:{agent.port} is down", f"agent sip:127.0.0.1:{agent.port} is ready again")
    log = rig.kamailio.log()
    # marked when its last "down" is later than its last "back" (two requests may both log a "down")
    seen, marked = log.count(back), log.rfind(down) > log.rfind(back)
    agent.start()
    assert not marked or wait_for(lambda: rig.kamailio.log().count(back) > seen, 15), rig.kamailio.log()[-3000:]


@contextlib.contextmanager
def records_locked(database_url: str):
    """PostgreSQL's records table locked against writes (reads go on) for the block: an outbox writer that has
    read entries waits in its batch with them unacknowledged, as it does on a slow or stalled database."""
    import asyncpg

    locked, release, failed = threading.Event(), threading.Event(), []

    async def hold():
        connection = await asyncpg.connect(database_url)
        try:
            async with connection.transaction():
                await connection.execute("LOCK TABLE transactions IN EXCLUSIVE MODE")
                locked.set()
                await asyncio.to_thread(release.wait)
        finally:
            await connection.close()

    def run():
        try:
            asyncio.run(hold())
        except BaseException as exc:  # noqa: BLE001 (reported by the test's thread)
            failed.append(exc)
            locked.set()

    holder = threading.Thread(target=run, daemon=True)
    holder.start()
    assert locked.wait(10) and not failed, failed
    try:
        yield
    finally:
        release.set()
        holder.join(10)


def consumers_of(agent: AgentProcess) -> set[str]:
    """The outbox consumer names the agent's processes may use (agent/store/writer.consumer_name)."""
    return {f"{socket.gethostname()}-{pid}" for pid in agent.pids()}


def held_entries(rig: Rig, consumers: set[str]) -> dict[str, dict]:
    """The outbox entries of the default tenant's group that `consumers` have read and not acknowledged, by id,
    with their fields."""
    from cache import OUTBOX_GROUP, group_of

    stream = group_of("default").outbox
    client = state.client(rig.redis_url)
    try:
        held = [entry["message_id"] for entry in client.xpending_range(stream, OUTBOX_GROUP, "-", "+", 10_000)
                if entry["consumer"] in consumers]
        return {entry_id: fields for entry_id in held for _, fields in client.xrange(stream, entry_id, entry_id)}
    finally:
        client.close()


def outbox_drained(rig: Rig) -> bool:
    """Every entry of the default tenant's group written to PostgreSQL: none left, none read and unwritten."""
    from cache import OUTBOX_GROUP, group_of

    stream = group_of("default").outbox
    client = state.client(rig.redis_url)
    try:
        return client.xlen(stream) == 0 and client.xpending(stream, OUTBOX_GROUP)["pending"] == 0
    finally:
        client.close()


async def _stored(database_url: str, call_ids: list[str]) -> dict:
    """What PostgreSQL holds of ACCOUNT's calls `call_ids`: their records, the ledger's charges for them and the
    account's balance."""
    import asyncpg

    connection = await asyncpg.connect(database_url)
    try:
        rows = await connection.fetch(
            "SELECT transaction_tag, state, fee FROM transactions WHERE account_tag = $1"
            " AND transaction_tag = ANY($2::text[])", ACCOUNT, call_ids)
        charged = await connection.fetchval(
            "SELECT coalesce(-sum(amount), 0) FROM ledger WHERE account_tag = $1 AND kind = 'charge'"
            " AND transaction_tag = ANY($2::text[])", ACCOUNT, call_ids)
        balance = await connection.fetchval("SELECT balance FROM accounts WHERE account_tag = $1", ACCOUNT)
        return {"rows": rows, "charged": charged, "balance": balance}
    finally:
        await connection.close()


def test_an_agent_killed_mid_load_loses_and_doubles_nothing(rig):
    a, b = rig.agents
    start_again(rig, a)
    before = state.balance(rig.redis_url, ACCOUNT)

    load: dict = {}
    caller = threading.Thread(target=lambda: load.setdefault("run", rig.callers("callers-load", LOAD_CALLS)),
                              daemon=True)
    caller.start()
    # mid-load: both agents have taken authorizations, and most calls are still to come
    assert wait_for(lambda: min(authorizations(a), authorizations(b)) >= 5, 20, interval=0.1), \
        (authorizations(a), authorizations(b), rig.kamailio.log()[-3000:])
    consumers = consumers_of(a)
    with records_locked(rig.database_url):
        # calls end meanwhile: A's writer reads some of their entries and waits with them in hand
        assert wait_for(lambda: held_entries(rig, consumers), 20, interval=0.1), "agent A's writer read nothing"
        taken_by_a = authorizations(a)
        kill(a)
        held = held_entries(rig, consumers)  # what A read and never wrote: B's housekeeper must
    assert held
    caller.join(90)
    assert not caller.is_alive(), "the SIPp callers did not finish"
    run = load["run"]
    assert len(run.results) == LOAD_CALLS, run.output
    failed = [r for r in run.results.values() if (r.code, r.bye) != (200, 200)]
    assert len(failed) <= FAILOVER_FAILURES, (failed, rig.kamailio.log()[-5000:])
    log = rig.kamailio.log()
    assert f"agent sip:127.0.0.1:{a.port} is down" in log, log[-5000:]

    # while A is dead, every call goes through B
    while_dead = rig.callers("callers-dead", LATER_CALLS)
    assert [r.code for r in while_dead.results.values()] == [200] * LATER_CALLS, while_dead.output
    assert all(r.bye == 200 for r in while_dead.results.values()), while_dead.output

    # every end reached an agent (some of them retried on B): nothing held, nothing open
    assert wait_for(lambda: state.open_calls(rig.redis_url, ACCOUNT) == 0
                    and state.reserved(rig.redis_url, ACCOUNT) == 0, 30, interval=0.2), \
        (state.open_calls(rig.redis_url, ACCOUNT), state.reserved(rig.redis_url, ACCOUNT), log[-5000:])

    answered = [r.call_id for r in [*run.results.values(), *while_dead.results.values()] if r.code == 200]
    records = asyncio.run(_records(rig.redis_url, rig.database_url, answered))
    twice = {call_id: found for call_id, found in records.items() if len(found) != 1}
    assert not twice, twice
    ended = [found[0] for found in records.values()]
    assert all(r["timestamp_end"] and r["fee"] >= RATE["connect_fee"] for r in ended), ended
    charged = sum(r["fee"] for r in ended)
    assert before - state.balance(rig.redis_url, ACCOUNT) == charged

    # PostgreSQL, once B's housekeeper has written everything (what A held too, claimed after CLAIM_IDLE):
    # one ended record per call, the ledger's charges and the account's balance agree with Redis
    assert wait_for(lambda: outbox_drained(rig), 30, interval=0.2), held
    assert not held_entries(rig, consumers)
    stored = asyncio.run(_stored(rig.database_url, answered))
    tags = [row["transaction_tag"] for row in stored["rows"]]
    assert sorted(tags) == sorted(answered) and {row["state"] for row in stored["rows"]} == {"ended"}
    assert sum(row["fee"] for row in stored["rows"]) == charged == stored["charged"]
    assert stored["balance"] == state.balance(rig.redis_url, ACCOUNT)
    # the calls whose entries A held are among them: B wrote them (A is still dead)
    from cache import call as callstate

    held_calls = {callstate.identity(callstate.decode(fields)[0])[1] for fields in held.values()
                  if fields.get(callstate.ENTRY) == callstate.TXN}
    assert held_calls <= set(tags), held_calls - set(tags)

    print(f"\n[{rig.redis_kind}] {LOAD_CALLS} calls under load, agent A killed after {taken_by_a} authorizations"
          f" holding {len(held)} outbox entries unwritten ({len(held_calls)} calls); failed: {len(failed)};"
          f" {LATER_CALLS} more while A was dead, all answered; charged {charged}")


def test_a_killed_agent_started_again_is_back_in_the_selection(rig):
    a, b = rig.agents
    if a.process is not None:  # run on its own: the first test did not kill A
        kill(a)
        rig.callers("callers-dead-again", LATER_CALLS)  # some go to A: Kamailio marks it
    assert f"agent sip:127.0.0.1:{a.port} is down" in rig.kamailio.log()
    start_again(rig, a)
    taken_by_b = authorizations(b)
    run = rig.callers("callers-back", LATER_CALLS)
    assert [r.code for r in run.results.values()] == [200] * LATER_CALLS, run.output
    # both take calls again (A counts from 0: it was started again)
    assert authorizations(a) > 0 and authorizations(b) > taken_by_b
    assert wait_for(lambda: state.open_calls(rig.redis_url, ACCOUNT) == 0
                    and state.reserved(rig.redis_url, ACCOUNT) == 0, 30, interval=0.2)


def test_ends_an_agent_killed_mid_call_missed_are_retried_on_the_other(rig):
    """Calls up and running, no request in flight: agent A dies, and the ends of the calls it took (hashed to it)
    find it gone. Each is kept and retried, on B, and charged the call's real length."""
    a, b = rig.agents
    start_again(rig, a)
    calls, hold_ms = 16, 3000
    before = state.balance(rig.redis_url, ACCOUNT)
    retries_before = rig.kamailio.log().count("retrying end_transaction for")
    begun_by_a = begins(a)
    load: dict = {}
    caller = threading.Thread(target=lambda: load.setdefault("run", run_callers(
        rig.workdir / "callers-ends", rig.kamailio.port, NUMBER, ACCOUNT, calls=calls, rate=20, hold_ms=hold_ms,
        timeout=60, password=subscriber_password(ACCOUNT))), daemon=True)
    caller.start()
    # every call begun (Redis holds them), and some of them by A (the Call-ID hash sends about half there)
    assert wait_for(lambda: _begun(rig) == calls, 15, interval=0.1), _begun(rig)
    assert wait_for(lambda: begins(a) > begun_by_a, 5), "no call of the batch went to agent A"
    kill(a)
    caller.join(60)
    assert not caller.is_alive(), "the SIPp callers did not finish"
    run = load["run"]
    assert [(r.code, r.bye) for r in run.results.values()] == [(200, 200)] * calls, run.output
    assert wait_for(lambda: state.open_calls(rig.redis_url, ACCOUNT) == 0
                    and state.reserved(rig.redis_url, ACCOUNT) == 0, 30, interval=0.2), rig.kamailio.log()[-5000:]
    log = rig.kamailio.log()
    assert log.count("retrying end_transaction for") > retries_before, log[-5000:]
    records = asyncio.run(_records(rig.redis_url, rig.database_url, list(run.results)))
    assert all(len(found) == 1 for found in records.values()), records
    ended = [found[0] for found in records.values()]
    # the real length, though some ends reached an agent seconds later (timestamp_end is Kamailio's)
    assert all(hold_ms / 1000 <= r["duration"] <= hold_ms / 1000 + 1.5 for r in ended), ended
    assert before - state.balance(rig.redis_url, ACCOUNT) == sum(r["fee"] for r in ended)


def _begun(rig: Rig) -> int:
    from cache import open_calls_key

    client = state.client(rig.redis_url)
    try:
        keys = client.smembers(open_calls_key("default", ACCOUNT, False))
        return sum(1 for key in keys if client.hget(key, "st") == "begun")
    finally:
        client.close()


def test_a_hung_agent_is_left_out_at_its_first_timed_out_authorization(rig):
    """Agent A frozen (SIGSTOP to all its processes): its port still accepts connections and nothing answers.
    The authorizations hashed to it time out once and go to B, A is marked at the first of them; every call
    goes through, each is charged once, nothing stays reserved; after SIGCONT A is back in the selection."""
    a, b = rig.agents
    start_again(rig, a)
    before = state.balance(rig.redis_url, ACCOUNT)
    down, back = (f"agent sip:127.0.0.1:{a.port} is down", f"agent sip:127.0.0.1:{a.port} is ready again")
    log = rig.kamailio.log()
    downs, backs = log.count(down), log.count(back)
    a.signal_all(signal.SIGSTOP)
    try:
        run = rig.callers("callers-hung", LATER_CALLS)
    finally:
        a.signal_all(signal.SIGCONT)
    log = rig.kamailio.log()
    assert [(r.code, r.bye) for r in run.results.values()] == [(200, 200)] * LATER_CALLS, (run.output, log[-5000:])
    assert log.count(down) > downs, log[-5000:]
    # thawed, it answers /ready again and the timer puts it back
    assert wait_for(lambda: rig.kamailio.log().count(back) > backs, 15), rig.kamailio.log()[-3000:]
    assert wait_for(lambda: state.open_calls(rig.redis_url, ACCOUNT) == 0
                    and state.reserved(rig.redis_url, ACCOUNT) == 0, 30, interval=0.2), rig.kamailio.log()[-5000:]
    records = asyncio.run(_records(rig.redis_url, rig.database_url, list(run.results)))
    assert all(len(found) == 1 for found in records.values()), records
    ended = [found[0] for found in records.values()]
    assert before - state.balance(rig.redis_url, ACCOUNT) == sum(r["fee"] for r in ended)

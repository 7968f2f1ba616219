"""Following the catalog change log: lost announcements converge, decks switch between calls, a restarted
worker maps the deck that is active and its dead predecessor holds no writer back."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp
from prometheus_client import REGISTRY

from agent.catalog_keeper import CatalogKeeper
from agent.keys import CATALOG
from agent.store import changes
from agent.store.database import create_pool
from cache import followers
from agent.store.importer import OVERLAY_LIMIT
from tests.conftest import AgentProcess, run_cli
from tests.test_transaction import catalog, post, prepaid, records


async def _converged(client, predicate, rounds: int = 100) -> bool:
    """Whether the agent's snapshot satisfies `predicate` within `rounds` polls of the log (1 s each at most)."""
    for _ in range(rounds):
        if predicate(client.app[CATALOG].get()):
            return True
        await asyncio.sleep(0.05)
    return False


async def test_a_change_missed_by_a_disconnected_listener_is_applied_from_the_log(agent, stack):
    client = await agent(catalog(prepaid("a")))
    keeper = client.app[CATALOG]
    # the listening connection dies, and the change is neither announced to it nor published in Redis
    await stack.database.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN%'")
    await stack.load({"accounts": [prepaid("late", 70)]})
    assert await _converged(client, lambda c: c.account("default", "late") is not None)
    answer = await post(client, "authorization", transaction_tag="late-1", account_tag="late", destination="39")
    assert answer["authorized"] and answer["balance"] == 70
    assert keeper.current.version >= 1


async def test_a_change_of_accounts_alone_is_read_outside_a_snapshot_and_one_of_rates_inside_one(stack, deck_dir):
    """Accounts are read as they are now (one statement for the log, one for the accounts); rates are read in
    one repeatable-read cut with the deck they lie over, behind the lock a partition swap takes (migration 012)."""
    await stack.load(catalog(prepaid("a")))
    pool = await create_pool(stack.database_url, stateless=True, max_size=1)
    try:
        keeper = CatalogKeeper(stack.database_url, pool, stack.redis, deck_dir)
        await keeper.load()
        statements: list[str] = []
        async with pool.acquire() as connection:
            connection.add_query_logger(lambda query: statements.append(query.query))
        await stack.load({"accounts": [prepaid("b", 70)]})
        await keeper.catch_up()
        assert keeper.get().account("default", "b").balance == 70
        assert len(statements) == 2 and statements[0].startswith("SELECT seq"), statements
        statements.clear()
        await stack.database.execute(
            "UPDATE pricelist_rates SET rate = 7 WHERE (pricelist_tag, carrier_tag) = ('p1', 'c1')")
        await changes.record(stack.database, "default", "rate", ["p1", "c1", "39"])
        await keeper.catch_up()
        [(_, rates)] = keeper.get().table("default").matches("39")
        assert {(r.pricelist_tag, r.carrier_tag): r.rate for r in rates} == {
            ("p1", "c1"): 7, ("p1", "c2"): 2, ("p2", "c2"): 10}
        assert statements[1].startswith("BEGIN ISOLATION LEVEL REPEATABLE READ"), statements
        assert statements[2].startswith("LOCK TABLE pricelist_rates"), statements
    finally:
        await pool.close()


async def test_a_call_authorized_before_a_deck_swap_is_charged_at_the_rate_it_was_authorized_with(agent, stack):
    client = await agent(catalog(prepaid("a", 10_000)))
    assert (await post(client, "authorization", transaction_tag="old", account_tag="a",
                       destination="39040"))["max_available_units"] == 10_000  # 1 per second at c1
    reply = await client.post("/management/pricelists/p1/rates?carrier_tag=c1&replace=true",
                              data=b"prefix,rate\n39,5\n", headers={"Content-Type": "text/csv"})
    assert reply.status == 200, await reply.text()
    # the next call is rated on the new deck at once; the one already authorized keeps its rate
    assert (await post(client, "authorization", transaction_tag="new", account_tag="a",
                       destination="39040"))["max_available_units"] < 10_000
    await post(client, "rollback", transaction_tag="new")
    await post(client, "begin", transaction_tag="old", timestamp_begin="2030-01-01T10:00:00Z")
    await post(client, "end", transaction_tag="old", timestamp_end="2030-01-01T10:00:10Z")
    record = (await records(stack, client, "old"))["a"]
    assert (record["fee"], record["destination_rate"]["rate"]) == (10, 1)
    assert await stack.balance("a") == 10_000 - 10


async def test_a_small_deck_upload_is_laid_over_the_deck_without_building_a_new_one(agent, stack):
    client = await agent(catalog(prepaid("a", 10_000)))
    builds = "SELECT count(*) FROM catalog_changes WHERE kind IN ('bulk', 'deck')"
    before = await stack.database.fetchval(builds)
    reply = await client.post("/management/pricelists/p1/rates?carrier_tag=c1&replace=true",
                              data=b"prefix,rate\n39,5\n3904,7\n", headers={"Content-Type": "text/csv"})
    assert reply.status == 200, await reply.text()
    assert await stack.database.fetchval(builds) == before  # one rate change, read by every agent
    # the very next authorization is rated with it: 3904 only at c1, 7 a second
    answer = await post(client, "authorization", transaction_tag="n", account_tag="a", destination="39040")
    assert answer["max_available_units"] == 10_000 // 7
    await post(client, "rollback", transaction_tag="n")
    # elsewhere under 39, c2 at 2 a second now beats c1 at 5 (was 1)
    answer = await post(client, "authorization", transaction_tag="m", account_tag="a", destination="3905")
    assert (answer["max_available_units"], answer["carriers"]) == (
        10_000 // 2, ["TCP:gw.example.com:5061", "UDP:10.0.0.1:5060"])


def _mapped_decks(pid: int) -> set[str]:
    return {line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines()
            if line.endswith("columns.bin")}


async def test_a_restarted_worker_maps_the_active_deck_and_its_dead_predecessor_is_not_waited_for(stack, tmp_path):
    document = tmp_path / "catalog.json"
    document.write_text(__import__("json").dumps(catalog(prepaid("a", 10**6))))
    run_cli("import", "catalog", str(document), redis_url=stack.redis_url, database_url=stack.database_url)
    agent = AgentProcess(stack.redis_url, stack.database_url, tmp_path, workers=1).start()
    try:
        async with aiohttp.ClientSession() as session:
            # more rates than an import lays over the deck: a new deck is built and activated
            body = "prefix,rate\n39,4\n" + "".join(f"{3900000 + i},4\n" for i in range(OVERLAY_LIMIT))
            async with session.post(agent.url + "/management/pricelists/p1/rates?carrier_tag=c1&replace=true",
                                    data=body.encode()) as reply:
                assert reply.status == 200, await reply.text()

            async def worker_pid() -> int:
                async with session.get(agent.url + "/ready", headers={"Connection": "close"}) as reply:
                    return (await reply.json())["pid"] if reply.status == 200 else 0

            before = await worker_pid()
            decks = _mapped_decks(before)
            os.kill(before, signal.SIGKILL)
            after = 0
            for _ in range(200):  # the supervisor restarts it; bounded wait
                await asyncio.sleep(0.05)
                try:
                    after = await worker_pid()
                except aiohttp.ClientError:
                    continue
                if after and after != before:
                    break
            assert after and after != before
            assert _mapped_decks(after) == decks and len(decks) == 1
            # the supervisor forgot the dead worker's follower entry: no writer waits for it
            assert not followers.of_process(await stack.redis.hkeys(followers.FOLLOWERS), before)
            async with session.post(agent.url + "/v1/authorization", json={
                    "transaction_tag": "r1", "account_tag": "a", "destination": "39040"}) as reply:
                answer = await reply.json()
            # c1 now costs 4 a second, more than c2's 2: the new deck orders c2 first
            assert answer["carriers"] == ["TCP:gw.example.com:5061", "UDP:10.0.0.1:5060"]
    finally:
        agent.stop()


async def test_a_published_change_the_log_does_not_hold_degrades_to_the_current_catalog_not_to_refusals(agent, stack):
    import cache

    client = await agent(catalog(prepaid("a")))
    await cache.publish_catalog(stack.redis, 10**12)  # e.g. a Redis that outlived its database
    answer = await post(client, "authorization", transaction_tag="d1", account_tag="a", destination="39")
    assert answer["authorized"] is True


async def test_a_live_balance_lost_by_redis_comes_back_from_postgresql_not_from_a_catalog_snapshot(agent, stack):
    from cache import account_key

    client = await agent(catalog(prepaid("a", 1000)))
    await post(client, "authorization", transaction_tag="c1", account_tag="a", destination="39")
    await post(client, "begin", transaction_tag="c1", timestamp_begin="2030-01-01T10:00:00Z")
    await post(client, "end", transaction_tag="c1", timestamp_end="2030-01-01T10:00:10Z")
    for _ in range(200):  # the outbox writer carries the charge to accounts.balance (bounded wait)
        if await stack.database.fetchval("SELECT balance FROM accounts WHERE account_tag = 'a'") == 990:
            break
        await asyncio.sleep(0.05)
    assert client.app[CATALOG].get().account("default", "a").balance == 1000  # the snapshot is older
    await stack.redis.delete(account_key("default", "a"))  # Redis lost it
    answer = await post(client, "authorization", transaction_tag="c2", account_tag="a", destination="39")
    assert answer["authorized"] and answer["balance"] == 990


async def test_changes_published_while_a_worker_catches_up_do_not_make_its_call_stale_again(agent, stack):
    import cache
    from agent.keys import TRANSACTIONS

    client = await agent(catalog(prepaid("a")))
    transactions = client.app[TRANSACTIONS]
    original = transactions.catch_up
    bumps = []

    async def busy_catch_up(target):  # another change is published during every catch-up
        bumps.append(target)
        await cache.publish_catalog(stack.redis, target + 1)
        return await original(target)

    transactions.catch_up = busy_catch_up
    await cache.publish_catalog(stack.redis, client.app[CATALOG].get().version + 1)
    answer = await post(client, "authorization", transaction_tag="busy", account_tag="a", destination="39")
    assert answer["authorized"] is True and len(bumps) == 1


async def test_every_running_agent_has_applied_a_change_before_its_upload_answers(agent, stack):
    from cache import followers

    first = await agent(catalog(prepaid("a", 10_000)))
    second = await agent()
    await stack.redis.hset(followers.FOLLOWERS, "dead:1:1", "0 1")  # long silent: not waited for, forgotten
    reply = await first.post("/management/pricelists/p1/rates?carrier_tag=c1&replace=true",
                             data=b"prefix,rate\n39,5\n", headers={"Content-Type": "text/csv"})
    assert reply.status == 200, await reply.text()
    seq = await stack.database.fetchval("SELECT max(seq) FROM catalog_changes")
    # both caught up on the change's notification before it was published: no authorization has to wait
    assert [c.app[CATALOG].get().version >= seq for c in (first, second)] == [True, True]
    assert "dead:1:1" not in await stack.redis.hkeys(followers.FOLLOWERS)
    waits = REGISTRY.get_sample_value("rating_catalog_waits_total") or 0
    for n, client in enumerate((first, second)):
        answer = await post(client, "authorization", transaction_tag=f"w{n}", account_tag="a", destination="39040")
        assert answer["max_available_units"] == 10_000 // 2  # c1 at 5 now, so c2 at 2: rated without catching up
        await post(client, "rollback", transaction_tag=f"w{n}")
    assert (REGISTRY.get_sample_value("rating_catalog_waits_total") or 0) == waits

"""A Redis Cluster holding the live state (cache/cluster.py, README "Scaling out"): 3 masters, 3 replicas.

The call flow, the concurrency test, the expiry and the outbox run here against the cluster; the same tests in
their own modules run against one server. The slot layout is held here too: everything one FCALL touches
shares a slot, and the 16 groups spread over the masters.
"""

from __future__ import annotations

import asyncio

import pytest

import cache
from tests import test_expiry, test_reservations, test_transaction
from tests.test_transaction import at, catalog, post, prepaid

on_cluster = pytest.mark.parametrize("redis_kind", ["cluster"])


def test_every_key_of_a_tenant_and_its_groups_keys_share_one_slot():
    from redis.crc import key_slot

    for tenant in ("default", "acme", "t", "k17", "a:b{c}"):
        group = cache.group_of(tenant)
        keys = (*cache.call_keys(tenant, "x"), cache.account_key(tenant, "a"), *cache.open_calls_keys(tenant, "a"),
                *cache.expiry_keys(group), group.dead)
        assert {key_slot(key.encode()) for key in keys} == {key_slot(f"g{group.index}".encode())}
    # the groups are 16 slots, spread over the three equal slot ranges `redis-cli --cluster create` makes
    slots = [key_slot(group.prefix.encode()) for group in cache.GROUPS]
    assert len(set(slots)) == cache.SLOT_GROUPS
    assert sorted(sum(1 for slot in slots if slot * 3 // 16384 == third) for third in range(3)) == [5, 5, 6]


def test_the_cluster_option_names_seed_nodes_and_bad_lists_are_refused_naming_the_setting():
    from agent.config import Settings
    from cache import cluster

    settings = Settings(redis_cluster="10.0.0.1:7000, 10.0.0.2:7001", redis_url="redis://:secret@ignored:1/0")
    assert settings.redis_url == "redis+cluster://:secret@10.0.0.1:7000, 10.0.0.2:7001"
    target = cluster.parse(settings.redis_url)
    assert (target.nodes, target.password) == ((("10.0.0.1", 7000), ("10.0.0.2", 7001)), "secret")
    assert Settings.load(environ={"RATING_REDIS_CLUSTER": "h:1"}).redis_url == "redis+cluster://h:1"
    for bad in ("h", "h:x", ""):
        with pytest.raises(ValueError, match="cluster"):
            cluster.parse(cluster.url_of(bad))
    with pytest.raises(ValueError, match="redis_cluster"):
        Settings(redis_cluster="h:1", redis_sentinel="s:26379")
    with pytest.raises(ValueError, match="database 0"):
        cluster.parse("redis+cluster://h:1/2")


@on_cluster
async def test_the_tutorial_flow_on_a_cluster(agent, stack, tutorial, redis_kind):
    await test_transaction.test_tutorial_flow_authorize_begin_end_record_rollback(agent, stack, tutorial)


@on_cluster
async def test_records_reach_postgresql_through_the_outbox_on_a_cluster(agent, stack, redis_kind):
    await test_transaction.test_records_reach_postgresql_through_the_outbox(agent, stack)


@on_cluster
async def test_an_entry_postgresql_refuses_goes_to_its_groups_dead_letters_on_a_cluster(agent, stack, redis_kind):
    from tests.store import test_writer

    await test_writer.test_an_entry_postgresql_refuses_goes_to_the_dead_letters_and_the_rest_is_written(agent, stack)


@on_cluster
async def test_200_simultaneous_calls_never_overdraw_on_a_cluster(agent, stack, redis_kind):
    await test_reservations.test_200_simultaneous_calls_never_overdraw_and_the_ledger_sums_to_the_charges(
        agent, stack, 100)


@on_cluster
async def test_a_reservation_never_begun_expires_on_a_cluster(agent, stack, redis_kind):
    await test_expiry.test_a_reservation_never_begun_expires_and_is_released(agent, stack)


@on_cluster
async def test_a_call_outliving_its_units_is_ended_on_a_cluster(agent, stack, redis_kind):
    await test_expiry.test_a_call_outliving_its_units_and_grace_is_ended_and_charged_at_its_units(agent, stack)


def _tenant_catalog(tenants: list[str]) -> dict:
    document = catalog(*(prepaid(f"a-{tenant}", 1000) for tenant in tenants))
    for section in ("carriers", "pricelists", "rates"):
        document[section] = [{**item, "tenant": tenant} for tenant in tenants for item in document[section]]
    for account in document["accounts"]:
        account["tenant"] = account["account_tag"][2:]
    return document


@pytest.mark.parametrize("redis_kind", ["single", "cluster"])
async def test_tenants_of_every_group_are_rated_their_catalog_change_seen_at_once_and_summed_in_metrics(
        agent, stack, redis_kind):
    """Tenants in all 16 groups (on three masters): each one's calls are rated and charged in its group, a
    catalog change published reaches every group's copy before it returns (read-your-writes), and the metrics
    add the groups up."""
    from agent.metrics import LiveState

    tenants, seen = [], set()
    for n in range(200):
        group = cache.group_of(f"t{n}").index
        if group not in seen:
            seen.add(group)
            tenants.append(f"t{n}")
    assert len(tenants) == cache.SLOT_GROUPS
    client = await agent(_tenant_catalog(tenants))
    for tenant in tenants:
        answer = await post(client, "authorization", tenant=tenant, transaction_tag="c", account_tag=f"a-{tenant}",
                            destination="39", timestamp_auth=at(0))
        assert answer["authorized"] is True, answer
        await post(client, "begin", tenant=tenant, transaction_tag="c", timestamp_begin=at(0))
    live = LiveState(stack.redis)
    await live.refresh()
    assert (live.snapshot["open"], live.snapshot["running"]) == (16, 16)
    for tenant in tenants:
        await post(client, "end", tenant=tenant, transaction_tag="c", timestamp_end=at(7))
        assert await stack.balance(f"a-{tenant}", tenant) == 993
    await live.refresh()
    assert (live.snapshot["open"], live.snapshot["running"], live.snapshot["charged"]) == (0, 0, 16 * 7)
    # a published change: every group's catalog key holds it when publish_catalog returns
    published = await cache.publish_catalog(stack.redis, 10**9)
    assert published == 10**9
    assert [int(await stack.redis.get(group.catalog)) for group in cache.GROUPS] == [10**9] * 16
    for tenant in tenants:
        assert await cache.published_for(stack.redis.execute_command, tenant, f"a-{tenant}") == 10**9
    rows = await _eventually_rows(stack, 16)
    assert {(row["tenant"], row["state"], row["fee"]) for row in rows} == {(t, "ended", 7) for t in tenants}


async def _eventually_rows(stack, count: int) -> list:
    for _ in range(200):  # bounded: 10 s for the writer to carry every group's outbox
        rows = await stack.database.fetch("SELECT tenant, state, fee FROM transactions WHERE transaction_tag = 'c'")
        if len(rows) == count and all(row["state"] == "ended" for row in rows):
            return rows
        await asyncio.sleep(0.05)
    return rows


def _migrate(servers, slot: int, source, target, finish: bool = True) -> None:
    """Moves `slot` from master `source` to master `target` as redis-cli --cluster reshard does: marked
    migrating/importing, its keys moved, then given to the target (or left half-way when not `finish`)."""
    import redis

    clients = {server.port: redis.Redis(port=server.port, decode_responses=True) for server in servers.servers
               if server.process is not None}
    try:
        source_id, target_id = (clients[s.port].execute_command("CLUSTER", "MYID") for s in (source, target))
        clients[target.port].execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        clients[source.port].execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
        if not finish:
            return
        while keys := clients[source.port].execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
            clients[source.port].execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
        for client in clients.values():  # the masters (the replicas learn it from them)
            if client.info("replication")["role"] == "master":
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    finally:
        for client in clients.values():
            client.close()


@on_cluster
async def test_the_hot_path_follows_a_slot_moved_to_another_master_and_asks_during_the_move(
        agent, stack, redis_cluster, redis_kind):
    """A slot being migrated answers ASK for a key it no longer holds (the hot path sends ASKING and the command
    to the importing master); once moved, MOVED: the hot path reads the slot map again and the call goes on."""
    from redis.crc import key_slot

    from agent.keys import PIPELINE

    client = await agent(catalog(prepaid("a", 1000)))
    answer = await post(client, "authorization", transaction_tag="moving", account_tag="a", destination="39",
                        timestamp_auth=at(0))
    assert answer["authorized"] is True
    group = cache.group_of("default")
    slot = key_slot(group.prefix.encode())
    source = redis_cluster.master_of(group.outbox)
    target = next(s for s in redis_cluster.servers if s is not source and redis_cluster.master_of_port(s.port))
    pipeline = client.app[PIPELINE]
    assert pipeline.cluster.slots[slot] == f"127.0.0.1:{source.port}"
    _migrate(redis_cluster, slot, source, target, finish=False)
    try:
        # a key the migrating master does not hold: ASK, answered by the importing one
        assert await pipeline.call("GET", f"{group.prefix}absent") is None
        assert pipeline.cluster.slots[slot] == f"127.0.0.1:{source.port}"  # ASK moves nothing
    finally:
        _migrate(redis_cluster, slot, source, target)
    assert redis_cluster.master_of(group.outbox) is target
    await post(client, "begin", transaction_tag="moving", timestamp_begin=at(0))
    await post(client, "end", transaction_tag="moving", timestamp_end=at(5))
    assert pipeline.cluster.slots[slot] == f"127.0.0.1:{target.port}"
    assert await stack.balance("a") == 995
    assert (await test_transaction.records(stack, client, "moving"))["a"]["fee"] == 5


@on_cluster
async def test_the_library_is_on_every_master_and_a_version_no_agent_uses_is_swept_from_all(stack, redis_cluster,
                                                                                            redis_kind):
    import redis

    old = "rating_000000000000"
    await stack.redis.function_load(f"#!lua name={old}\nredis.register_function('{old}_x', function() return 1 end)")

    def libraries() -> list[set[str]]:
        found = []
        for server in redis_cluster.servers:
            client = redis.Redis(port=server.port, decode_responses=True)
            try:
                if client.info("replication")["role"] == "master":
                    entries = [dict(zip(e[::2], e[1::2])) for e in client.function_list()]  # RESP2: flat lists
                    found.append({entry["library_name"] for entry in entries})
            finally:
                client.close()
        return found

    assert libraries() == [{cache.LIBRARY_NAME, old}] * 3
    assert await cache.sweep_libraries(stack.redis) == [old]
    assert libraries() == [{cache.LIBRARY_NAME}] * 3


async def test_the_hot_path_reads_the_slot_map_from_the_first_seed_node_that_answers(redis_cluster):
    from devstack import free_port

    from cache.cluster import ClusterConnection

    live = redis_cluster.url.split("://", 1)[1]
    connection = ClusterConnection(f"redis+cluster://127.0.0.1:{free_port()},{live}", 1.0)
    try:
        assert await connection.call("GET", f"{cache.GROUPS[3].prefix}nothing") is None
        masters = {address for address in connection.slots}
        assert None not in masters and len(masters) == 3
    finally:
        await connection.close()
    nobody = ClusterConnection(f"redis+cluster://127.0.0.1:{free_port()}", 1.0)
    with pytest.raises(cache.UNAVAILABLE, match="no Redis Cluster node answered"):
        await nobody.call("GET", "x")
    await nobody.close()


@on_cluster
async def test_calls_with_linked_accounts_and_limits_in_both_directions_on_a_cluster(agent, stack, redis_kind):
    """Every party's key declared (issue 16): linked accounts, a total limit's other direction, ends and
    rollbacks naming no account (sent again with the keys the library names)."""
    await test_transaction.test_linked_prepaid_accounts_cap_units_and_are_charged_at_their_own_rate(agent, stack)
    await stack.redis.flushall()
    await test_transaction.test_total_limit_counts_open_calls_in_both_directions_until_they_end(agent, stack)
    await stack.redis.flushall()
    await test_transaction.test_tag_only_begin_and_end_restore_both_sides_from_the_authorization(agent, stack)


@on_cluster
async def test_a_call_outliving_its_units_is_ended_by_the_expiry_on_a_cluster(agent, stack, redis_kind):
    await test_expiry.test_a_call_outliving_its_units_and_grace_is_ended_and_charged_at_its_units(agent, stack)

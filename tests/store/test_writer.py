"""The outbox carries a call once, in its final state; readers that list records write open calls themselves."""

from agent.store.records import open_version, stream_version
from agent.store.writer import catch_up
from tests.test_transaction import at, catalog, post, prepaid

import cache

OUTBOX, DEAD = cache.group_of("default").outbox, cache.group_of("default").dead  # the default tenant's


async def _rows(stack, tag: str) -> list[dict]:
    rows = await stack.database.fetch(
        "SELECT account_tag, state, authorized, timestamp_auth, timestamp_begin, fee, version FROM transactions"
        " WHERE transaction_tag = $1 ORDER BY account_tag", tag)
    return [dict(row) for row in rows]


async def _added(stack) -> int:
    """Entries ever added to the outbox (the writer deletes what it has written)."""
    return (await stack.redis.xinfo_stream(OUTBOX))["entries-added"]


async def test_an_open_call_adds_nothing_to_the_outbox_and_its_end_adds_one_final_entry(agent, stack):
    client = await agent(catalog(prepaid("a", 10**6)))
    await post(client, "authorization", transaction_tag="warm", account_tag="a", destination="39")
    before = await _added(stack)
    await post(client, "authorization", transaction_tag="once", account_tag="a", destination="39")
    await post(client, "begin", transaction_tag="once", timestamp_begin=at(0))
    assert await _added(stack) == before
    await post(client, "end", transaction_tag="once", timestamp_end=at(3))
    assert await _added(stack) == before + 1  # the call record, carrying the charge for the ledger
    await catch_up(stack.redis, stack.database)
    [row] = await _rows(stack, "once")
    assert (row["state"], row["authorized"], row["fee"]) == ("ended", True, 3)
    assert row["timestamp_auth"] is not None
    ledger = await stack.database.fetch("SELECT kind, amount, balance_after FROM ledger WHERE transaction_tag = 'once'")
    assert [tuple(move) for move in ledger] == [("charge", -3, 10**6 - 3)]
    assert await stack.database.fetchval("SELECT balance FROM accounts WHERE account_tag = 'a'") == 10**6 - 3


async def test_a_refusal_is_final_and_goes_to_the_outbox_at_once(agent, stack):
    client = await agent(catalog(prepaid("a", 0)))
    await post(client, "authorization", transaction_tag="warm", account_tag="a", destination="39")
    before = await _added(stack)
    answer = await post(client, "authorization", transaction_tag="no", account_tag="a", destination="39")
    assert answer["unauthorized_reason"] == "BALANCE_INSUFFICIENT"
    assert await _added(stack) == before + 1


async def test_catch_up_writes_open_calls_as_they_are_and_the_final_state_replaces_them(agent, stack):
    client = await agent(catalog(prepaid("a", 1000)))
    await post(client, "authorization", transaction_tag="live", account_tag="a", destination="39",
               timestamp_auth=at(-2))
    await catch_up(stack.redis, stack.database)
    [authorized] = await _rows(stack, "live")
    assert (authorized["state"], authorized["authorized"], authorized["timestamp_begin"]) == ("authorized", True, None)

    await post(client, "begin", transaction_tag="live", timestamp_begin=at(0))
    await catch_up(stack.redis, stack.database)
    [begun] = await _rows(stack, "live")
    assert begun["state"] == "begun" and begun["version"] > authorized["version"]
    assert begun["timestamp_auth"] == authorized["timestamp_auth"]

    await post(client, "end", transaction_tag="live", timestamp_end=at(10))
    await catch_up(stack.redis, stack.database)
    [ended] = await _rows(stack, "live")
    assert (ended["state"], ended["fee"]) == ("ended", 10) and ended["version"] > begun["version"]
    assert ended["timestamp_auth"] == authorized["timestamp_auth"]

    await catch_up(stack.redis, stack.database)  # nothing moves backwards
    assert await _rows(stack, "live") == [ended]


async def test_catch_up_for_one_tenant_leaves_the_open_calls_of_others(agent, stack):
    document = catalog(prepaid("a", 1000))
    other = catalog(prepaid("a", 1000))
    for section in ("carriers", "pricelists", "rates", "accounts"):
        for item in other[section]:
            item["tenant"] = "acme"
    await stack.load(other)
    client = await agent(document)
    await post(client, "authorization", transaction_tag="d", account_tag="a", destination="39")
    await post(client, "authorization", tenant="acme", transaction_tag="x", account_tag="a", destination="39")
    await catch_up(stack.redis, stack.database, tenant="acme")
    assert await stack.database.fetchval("SELECT array_agg(transaction_tag) FROM transactions") == ["x"]


def test_an_open_state_sorts_below_any_outbox_id_of_the_same_or_a_later_millisecond():
    doc = {"cm": 1_800_000_000_123, "cu": 999}
    assert open_version(doc) < stream_version("1800000000123-0")
    assert open_version(doc) > stream_version("1800000000122-5000")
    assert open_version({"cm": 1_800_000_000_123, "cu": 1}) < open_version(doc)


async def test_a_listing_writes_only_the_open_calls_that_changed_since_the_last_one(agent, stack):
    import asyncio

    client = await agent(catalog(prepaid("a", 10**6)))
    for tag in ("c1", "c2"):
        await post(client, "authorization", transaction_tag=tag, account_tag="a", destination="39")
    for _ in range(200):  # the agent's own writer empties the outbox (the balance set by the import)
        if await stack.redis.xlen(OUTBOX) == 0:
            break
        await asyncio.sleep(0.02)
    assert await catch_up(stack.redis, stack.database) == 2
    assert await catch_up(stack.redis, stack.database) == 0
    await post(client, "begin", transaction_tag="c1", timestamp_begin=at(0))
    assert await catch_up(stack.redis, stack.database) == 1


async def test_an_entry_postgresql_refuses_goes_to_the_dead_letters_and_the_rest_is_written(agent, stack):
    import asyncio

    from tests.conftest import run_cli

    client = await agent(catalog(prepaid("a", 10**6)))
    await post(client, "authorization", transaction_tag="before", account_tag="a", destination="39")
    await post(client, "rollback", transaction_tag="before")
    # a ledger entry whose tenant PostgreSQL cannot store (NUL) and one that cannot be decoded
    await stack.redis.xadd(OUTBOX, {"e": "ledger", "tn": "bad\x00", "a": "a", "k": "set", "amt": "1", "bal": "1",
                                    "at": "0"})
    await stack.redis.xadd(OUTBOX, {"e": "ledger", "tn": "default", "a": "a", "k": "set", "amt": "x"})
    await post(client, "authorization", transaction_tag="after", account_tag="a", destination="39")
    await post(client, "rollback", transaction_tag="after")
    for _ in range(200):  # the writer runs in the app; bounded wait
        if await stack.redis.xlen(DEAD) == 2 and await stack.redis.xlen(OUTBOX) == 0:
            break
        await asyncio.sleep(0.05)
    assert await stack.redis.xlen(DEAD) == 2
    assert [row["state"] for row in await _rows(stack, "after")] == ["rolledback"]
    done = run_cli("outbox", "dead-letters", redis_url=stack.redis_url, database_url=stack.database_url)
    lines = [__import__("json").loads(line) for line in done.stdout.splitlines()]
    assert [line["dead_error"].split(":")[0] for line in lines] == ["CharacterNotInRepertoireError", "ValueError"]
    # a listing is not stopped by what the writer set aside
    assert await catch_up(stack.redis, stack.database) >= 0
    done = run_cli("outbox", "replay", lines[1]["id"], redis_url=stack.redis_url, database_url=stack.database_url)
    assert done.stdout.strip() == "replayed=1"
    for _ in range(200):
        if await stack.redis.xlen(OUTBOX) == 0 and await stack.redis.xlen(DEAD) == 2:
            break
        await asyncio.sleep(0.05)
    assert await stack.redis.xlen(DEAD) == 2  # refused again, set aside again


class Freezer:
    """A TCP relay to PostgreSQL whose open connections can be made to stop moving bytes while they stay
    open, as a connection whose peer vanished without a word does (half-open TCP); new ones still pass."""

    def __init__(self, port: int) -> None:
        import asyncio

        self.port = port
        self.frozen = asyncio.Event()
        self.links = []

    async def start(self) -> int:
        import asyncio

        self.server = await asyncio.start_server(self._link, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _link(self, reader, writer) -> None:
        import asyncio

        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.port)
        frozen = self.frozen.is_set()  # connections opened after the freeze pass

        async def pump(source, sink):
            while data := await source.read(65536):
                if self.frozen.is_set() and not frozen:
                    await asyncio.Event().wait()  # holds the bytes and the connection, forever
                sink.write(data)
                await sink.drain()
            sink.close()

        self.links += [asyncio.create_task(pump(reader, upstream_writer)),
                       asyncio.create_task(pump(upstream_reader, writer))]

    async def stop(self) -> None:
        for task in self.links:
            task.cancel()
        self.server.close()


async def test_a_batch_on_a_connection_whose_peer_vanished_is_dropped_after_the_timeout_and_written_again(stack):
    import asyncio
    from urllib.parse import urlsplit

    from agent.store.database import create_pool
    from agent.store.writer import OutboxWriter

    url = urlsplit(stack.database_url)
    freezer = Freezer(url.port)
    relayed = url._replace(netloc=f"{url.username}@127.0.0.1:{await freezer.start()}").geturl()
    pool = await create_pool(relayed, max_size=1)

    async def pool_factory():
        return pool

    writer = OutboxWriter(stack.redis, pool_factory, timeout=1.0)
    task = asyncio.create_task(writer.run())

    async def written(tag: str) -> bool:
        await stack.redis.xadd(OUTBOX, {"e": "ledger", "tn": "default", "a": "a", "k": "set", "amt": "1",
                                        "bal": "1", "tt": tag, "at": "0"})
        for _ in range(200):  # bounded: 10 s, ten times the writer's timeout
            if await stack.database.fetchval("SELECT count(*) FROM ledger WHERE transaction_tag = $1", tag):
                return True
            await asyncio.sleep(0.05)
        return False

    try:
        assert await written("before")
        freezer.frozen.set()  # the writer's connection now hangs on its next batch
        assert await written("after")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await freezer.stop()
        pool.terminate()


async def test_consumers_of_writers_long_gone_are_unregistered_and_the_live_one_kept(stack):
    import asyncio

    from agent.store.writer import OutboxWriter, ensure_group
    from cache import OUTBOX_GROUP

    async def pool_factory():
        raise AssertionError("nothing to write")

    await ensure_group(stack.redis)
    await stack.redis.execute_command("XGROUP", "CREATECONSUMER", OUTBOX, OUTBOX_GROUP, "gone-host-1")
    writer = OutboxWriter(stack.redis, pool_factory, claim_idle=0.05, forget_idle=0.1)
    await writer.drain_once()  # registers itself; the other one has been idle too short
    names = {c["name"] for c in await stack.redis.xinfo_consumers(OUTBOX, OUTBOX_GROUP)}
    assert names == {"gone-host-1", writer.name}
    async def idle() -> int:  # as Redis counts it
        consumers = await stack.redis.xinfo_consumers(OUTBOX, OUTBOX_GROUP)
        return next(c["idle"] for c in consumers if c["name"] == "gone-host-1")

    for _ in range(100):
        if await idle() > 100:
            break
        await asyncio.sleep(0.02)
    writer._next_forget = 0.0
    await writer.drain_once()
    assert {c["name"] for c in await stack.redis.xinfo_consumers(OUTBOX, OUTBOX_GROUP)} == {writer.name}


async def test_entries_waiting_out_the_linger_are_written_by_the_final_drain_when_the_writer_stops(stack):
    """The writer waits `linger` after a small batch so that the next one is larger: the entries wait in the
    stream meanwhile, and a writer stopped during the wait writes them in its final drain (nothing lost)."""
    import asyncio

    from agent.housekeeping import final_drain
    from agent.store.database import create_pool
    from agent.store.writer import OutboxWriter

    pool = await create_pool(stack.database_url, max_size=1)

    async def pool_factory():
        return pool

    def move(tag: str) -> dict:
        return {"e": "ledger", "tn": "default", "a": "a", "k": "set", "amt": "1", "bal": "1", "tt": tag, "at": "0"}

    async def ledger_tags() -> set:
        return {row["transaction_tag"] for row in await stack.database.fetch("SELECT transaction_tag FROM ledger")}

    writer = OutboxWriter(stack.redis, pool_factory, linger=3600.0)
    await stack.redis.xadd(OUTBOX, move("first"))
    task = asyncio.create_task(writer.run())
    try:
        for _ in range(200):  # bounded: 10 s for the first batch
            if await ledger_tags() == {"first"}:
                break
            await asyncio.sleep(0.05)
        assert await ledger_tags() == {"first"}  # then it lingers for an hour
        for tag in ("second", "third"):
            await stack.redis.xadd(OUTBOX, move(tag))
        await asyncio.sleep(0.2)
        assert await ledger_tags() == {"first"}
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    try:
        await final_drain(writer, timeout=10)
    finally:
        await pool.close()
    assert await ledger_tags() == {"first", "second", "third"}
    assert await stack.redis.xlen(OUTBOX) == 0
    assert (await stack.redis.xpending(OUTBOX, "pg-writer"))["pending"] == 0

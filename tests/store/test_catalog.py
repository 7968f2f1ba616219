"""Moving a catalog snapshot forward (agent/store/catalog.py): a catch-up reads what changed by its key."""

import asyncio
import json

from agent import turns
from agent.store import changes, decks
from agent.store.catalog import apply_changes, load_catalog
from agent.store.database import create_pool

_TABLES = ("pricelist_rates", "pricelists", "accounts", "carriers", "catalog_changes")
_LARGE = ("pricelist_rates", "accounts")  # what grows with the catalog


def _rows_read(node: dict) -> int:
    """Rows the plan's scans of the large tables went through (kept or filtered out), counted by EXPLAIN ANALYZE."""
    own = 0
    name = node.get("Relation Name") or ""
    if name in _LARGE or name.startswith("pricelist_rates_"):  # a pricelist's partition (migration 012)
        own = (node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
               + node.get("Rows Removed by Index Recheck", 0)) * node["Actual Loops"]
    return own + sum(_rows_read(child) for child in node.get("Plans", ()))


async def _generic_rows_read(connection, query: str, args) -> int:
    """_rows_read of `query` run with `args` on its generic plan (a prepared statement under
    plan_cache_mode = force_generic_plan; PostgreSQL 15 has no EXPLAIN (GENERIC_PLAN))."""
    types = [await connection.fetchval("SELECT format_type($1, NULL)", t.oid)
             for t in (await connection.prepare(query)).get_parameters()]
    await connection.execute(f"PREPARE probe ({', '.join(types)}) AS {query}")
    try:
        values = [f"{await connection.fetchval(f'SELECT quote_nullable($1::{kind}::text)', arg)}::{kind}"
                  for kind, arg in zip(types, args)]
        plan = await connection.fetchval(f"EXPLAIN (ANALYZE, VERBOSE, FORMAT JSON) EXECUTE probe ({', '.join(values)})")
        assert "$1" in plan or not args, "a custom plan: the values were planned in"
    finally:
        await connection.execute("DEALLOCATE probe")
    return _rows_read(json.loads(plan)[0]["Plan"])


async def test_a_catch_up_reads_the_changed_rows_by_key_even_with_generic_plans(stack, deck_dir):
    """Every process runs the catch-up's statements prepared, and after a few executions PostgreSQL may
    switch them to a generic plan, which knows no parameter values: a plan that scans a whole pricelist or
    the accounts table would cost each process a scan per change (it once took 89 ms at 57,000 rates)."""
    db = stack.database
    await db.execute("INSERT INTO carriers (carrier_tag, host) VALUES ('c1', 'h')")
    await db.execute("INSERT INTO pricelists (pricelist_tag, name) VALUES ('p1', 'p1'), ('p2', 'p2')")
    await db.execute(
        "INSERT INTO pricelist_rates (pricelist_tag, carrier_tag, prefix, rate)"
        " SELECT 'p' || (1 + n % 2), 'c1', (390000 + n)::text, 1 FROM generate_series(1, 40000) n")
    await db.execute("INSERT INTO accounts (account_tag) SELECT 'a' || n FROM generate_series(1, 20000) n")
    await db.execute(f"ANALYZE {', '.join(_TABLES)}")
    pool = await create_pool(stack.database_url, max_size=1)
    try:
        before = await load_catalog(pool, deck_dir)
        async with pool.acquire() as connection:
            async with connection.transaction():
                recorder = changes.Recorder()
                recorder.add("default", "rate", ["p2", "c1", "390001"])
                recorder.add("default", "rate", ["p1", "c1", "390002"])
                recorder.add("default", "account", "a7")
                await recorder.write(connection)
            await connection.execute("SET plan_cache_mode = force_generic_plan")
            statements = []

            def logged(query):
                statements.append((query.query, query.args))

            connection.add_query_logger(logged)
            async with connection.transaction(isolation="repeatable_read", readonly=True):
                rows = await changes.since(connection, before.version)
                after = await apply_changes(connection, before, rows, deck_dir)
            connection.remove_query_logger(logged)
            assert after.account("default", "a7") is not None and after.version == rows[-1].seq
            read = {}  # statement -> rows of the large tables its generic plan read
            for query, args in statements:
                if query.lstrip().upper().startswith("SELECT"):
                    read[query] = await _generic_rows_read(connection, query, args)
    finally:
        await pool.close()
    assert any("pricelist_rates" in query for query in read)
    assert {query: rows for query, rows in read.items() if rows > 10} == {}
    assert sum(read.values()) == 3  # the two rates and the account


async def test_a_change_of_accounts_alone_keeps_the_remembered_routes_and_a_carrier_or_rate_change_drops_them(
        stack, deck_dir):
    """Routes depend on the tables and carriers, and on accounts only through their routing profiles' values."""
    db = stack.database
    await db.execute("INSERT INTO carriers (carrier_tag, host) VALUES ('c1', 'h')")
    await db.execute("INSERT INTO pricelists (pricelist_tag, name) VALUES ('p1', 'p1')")
    await db.execute("INSERT INTO pricelist_rates (pricelist_tag, carrier_tag, prefix, rate) VALUES ('p1', 'c1', '39', 1)")
    await db.execute("INSERT INTO accounts (account_tag) VALUES ('a1')")
    pool = await create_pool(stack.database_url, max_size=1)
    try:
        snapshot = await load_catalog(pool, deck_dir)
        snapshot.routes["remembered"] = "a route"
        async with pool.acquire() as connection:
            for kind, subject, kept in (("account", "a1", True), ("carrier", "c1", False),
                                        ("rate", ["p1", "c1", "39"], False)):
                await db.execute("UPDATE accounts SET name = 'renamed'")
                seq = await changes.record(connection, "default", kind, subject)
                after = await apply_changes(connection, snapshot, await changes.since(connection, snapshot.version),
                                            deck_dir)
                assert after.version == seq
                assert (after.routes is snapshot.routes) is kept, kind
                assert ("remembered" in after.routes) is kept, kind
    finally:
        await pool.close()


async def test_a_catch_up_of_many_rates_asks_for_them_in_batches_and_lets_requests_run_between_its_pieces(
        stack, deck_dir, monkeypatch):
    """asyncpg decodes an answer all at once as it arrives, and the overlay's work has no await of its own:
    the rates come _ROWS_FETCHED at a time and the loop gets a turn whenever the work is due to give one."""
    db = stack.database
    await db.execute("INSERT INTO carriers (carrier_tag, host) VALUES ('c1', 'h')")
    await db.execute("INSERT INTO pricelists (pricelist_tag, name) VALUES ('p1', 'p1')")
    await db.execute("INSERT INTO pricelist_rates (pricelist_tag, carrier_tag, prefix, rate)"
                     " SELECT 'p1', 'c1', (390000 + n)::text, n FROM generate_series(1, 300) n")
    pool = await create_pool(stack.database_url, max_size=1)
    try:
        before = await load_catalog(pool, deck_dir)
        async with pool.acquire() as connection:
            await changes.record(connection, "default", "rate",
                                 *(["p1", "c1", str(390000 + n)] for n in range(1, 301)))
            statements = []
            connection.add_query_logger(lambda query: statements.append(query.query))
            monkeypatch.setattr(turns.time, "perf_counter", lambda: 1e9)  # every look at the clock: due
            ran = 0

            async def request():
                nonlocal ran
                while True:
                    ran += 1
                    await asyncio.sleep(0)

            waiting = asyncio.create_task(request())
            async with connection.transaction(isolation="repeatable_read", readonly=True):
                rows = await changes.since(connection, before.version)
                after = await apply_changes(connection, before, rows, deck_dir)
            waiting.cancel()
    finally:
        await pool.close()
    assert after.tables["default"].longest("390007123")[1][0].rate == 7
    assert sum(1 for query in statements if "FROM pricelist_rates" in query) == -(-300 // decks._ROWS_FETCHED)
    assert ran >= 300 // 32  # a turn at least every 32 rates made, keys grouped, and keys laid over the deck

"""Which tenants need a fresh deck (agent/store/decks.py): bulk changes at once, rate changes by how many
distinct rates they lay over the deck, or by how long the log a starting process reads back has grown."""

import asyncio
import json

from agent.store import changes, decks


async def _log_rates(connection, tenant: str, prefixes) -> None:
    async with connection.transaction():
        recorder = changes.Recorder()
        recorder.add(tenant, "rate", *(["p1", "c1", prefix] for prefix in prefixes))
        await recorder.write(connection)


async def test_the_same_rates_changed_again_and_again_do_not_call_for_a_fresh_deck(stack):
    db = stack.database
    for _ in range(5):  # a carrier's 30-rate deck swapped five times: 150 rates logged, 30 laid over the deck
        await _log_rates(db, "default", (f"39{n}" for n in range(30)))
    assert await decks.stale_tenants(db, compact_after=100, compact_log=1000) == []
    assert await decks.stale_tenants(db, compact_after=29, compact_log=1000) == ["default"]
    assert await decks.stale_tenants(db, compact_after=100, compact_log=149) == ["default"]


async def test_a_deck_covers_the_rate_changes_before_it_and_bulk_changes_call_for_one_at_once(stack):
    db = stack.database
    await _log_rates(db, "default", (f"39{n}" for n in range(30)))
    await _log_rates(db, "other", (f"39{n}" for n in range(30)))
    await changes.record(db, "default", "deck", {"covers": await changes.last_seq(db)})
    await _log_rates(db, "default", ("4",))
    assert await decks.stale_tenants(db, compact_after=20, compact_log=1000) == ["other"]
    await changes.record(db, "default", "bulk")
    assert sorted(await decks.stale_tenants(db, compact_after=1000, compact_log=1000)) == ["default"]


async def test_without_the_distinct_count_only_the_whole_log_calls_for_a_fresh_deck(stack):
    db = stack.database
    await _log_rates(db, "default", (f"39{n}" for n in range(30)))
    assert await decks.stale_tenants(db, compact_after=None, compact_log=1000) == []
    assert await decks.stale_tenants(db, compact_after=None, compact_log=29) == ["default"]


async def _statements(db, *calls) -> list[tuple[str, tuple]]:
    """The (statement, arguments) the awaitables `calls` send on `db`, in order."""
    statements: list[tuple[str, tuple]] = []

    def logged(query):
        statements.append((query.query, query.args))

    db.add_query_logger(logged)
    try:
        for call in calls:
            await call
        await asyncio.sleep(0)  # loggers are called soon after, not during
    finally:
        db.remove_query_logger(logged)
    return statements


async def _executed_plan(db, query: str, args) -> dict:
    """EXPLAIN ANALYZE of `query` prepared (so on the plan the session's plan_cache_mode gives it)."""
    values = ", ".join(str(arg) for arg in args)
    await db.execute(f"PREPARE look AS {query}")
    try:
        plan = await db.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE look" + (f" ({values})" if values else ""))
    finally:
        await db.execute("DEALLOCATE look")
    return json.loads(plan)[0]["Plan"]


def _functions_run(node: dict) -> set[str]:
    own = {node["Function Name"]} if node.get("Function Name") and node.get("Actual Loops", 0) > 0 else set()
    return own.union(*(_functions_run(child) for child in node.get("Plans", ())))


async def test_the_look_without_the_distinct_count_reads_no_subject_even_on_a_generic_plan(stack):
    """The deck builder looks every second with the same prepared statement, and PostgreSQL may switch it to
    a generic plan, which knows nothing of a NULL parameter: a count left in the statement would read every
    subject since the deck at each look (240 ms at 100 changes of 1,000 rates, loadtest/BENCHMARKS.md)."""
    db = stack.database
    for _ in range(3):
        await _log_rates(db, "default", (f"39{n}" for n in range(30)))
    assert await decks.stale_tenants(db, compact_after=None, compact_log=1000) == []
    [(query, args)] = await _statements(db, decks.stale_tenants(db, compact_after=None, compact_log=1000))
    await db.execute("SET plan_cache_mode = force_generic_plan")
    try:
        plan = await _executed_plan(db, query, args)
    finally:
        await db.execute("RESET plan_cache_mode")
    assert "jsonb_array_elements" not in _functions_run(plan)
    assert "jsonb_array_elements" not in query  # nor in the statement at all


def _log_rows_read(node: dict) -> int:
    """Rows of catalog_changes the plan's scans went through (kept or filtered out), by EXPLAIN ANALYZE."""
    own = 0
    if node.get("Relation Name") == "catalog_changes":
        own = (node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
               + node.get("Rows Removed by Index Recheck", 0)) * node["Actual Loops"]
    return own + sum(_log_rows_read(child) for child in node.get("Plans", ()))


async def test_the_looks_at_the_log_read_what_follows_each_deck_not_every_change_ever_made(stack):
    """The deck builder looks every second; the log keeps every change ever made (here 20,000 account
    changes before the deck): what it reads follows the tenants and the changes since their decks."""
    db = stack.database
    await db.execute("INSERT INTO catalog_changes (tenant, kind, subject) SELECT 't' || (n % 3), 'account',"
                     " '[\"a\"]' FROM generate_series(1, 20000) n")
    covers = await changes.last_seq(db)
    for tenant in ("t0", "t1"):
        await changes.record(db, tenant, "deck", {"covers": covers})
    await _log_rates(db, "t0", (f"39{n}" for n in range(5)))
    await db.execute("ANALYZE catalog_changes")
    assert await decks.activations(db) == {"t0": covers, "t1": covers}
    assert await decks.stale_tenants(db, compact_after=None, compact_log=4) == ["t0"]
    assert sorted(await decks.rate_tenants(db)) == ["t0"]
    assert await decks.stale_tenants(db, compact_after=4, compact_log=1000) == ["t0"]  # the distinct count too
    statements = await _statements(
        db, decks.activations(db), decks.stale_tenants(db, compact_after=None, compact_log=4),
        decks.stale_tenants(db, compact_after=4, compact_log=1000), decks.rate_tenants(db))
    for query, args in statements:
        assert _log_rows_read(await _executed_plan(db, query, args)) < 100, query

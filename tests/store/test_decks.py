"""Which tenants need a fresh deck (agent/store/decks.py): bulk changes at once, rate changes by how many
distinct rates they lay over the deck, or by how long the log a starting process reads back has grown."""

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

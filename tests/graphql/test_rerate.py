"""`rerate` (GraphQL and `python -m agent rerate`): a corrected deck, a dry run, an apply, an apply again."""

from __future__ import annotations

import asyncio

from agent.keys import DATABASE
from agent.store.writer import catch_up
from tests.conftest import run_cli
from tests.graphql.test_quote import drained

T0 = "2030-01-01T10:00:00Z"


def at(seconds: float) -> str:
    from datetime import datetime, timedelta, timezone

    return (datetime(2030, 1, 1, 10, tzinfo=timezone.utc) + timedelta(seconds=seconds)).isoformat()


# the deck's Italian rate was loaded as 2 a second; the correction makes it 1
CATALOG = {
    "carriers": [{"carrier_tag": "c1", "host": "10.0.0.1", "port": 5060}],
    "pricelists": [{"pricelist_tag": "p1"}],
    "rates": [{"pricelist_tag": "p1", "carrier_tag": "c1", "prefix": "39", "rate": 2, "rate_increment": 1},
              {"pricelist_tag": "p1", "carrier_tag": "c1", "prefix": "44", "rate": 5, "rate_increment": 1}],
    "accounts": [{"account_tag": "100", "type": "PREPAID", "balance": 1000, "pricelist_tags": ["p1"]},
                 {"account_tag": "200", "type": "POSTPAID", "pricelist_tags": ["p1"]}],
}
CORRECTION = 'mutation { updatePricelistRate(pricelist_tag: "p1", carrier_tag: "c1", prefix: "39", rate: 1) { rate } }'
RERATE = """mutation ($account: String, $from: DateTime!, $to: DateTime!, $dry: Boolean) {
  rerate(account_tag: $account, from: $from, to: $to, dry_run: $dry) {
    id dry_run examined changed skipped delta settled
    calls { transaction_tag account_tag duration old_fee new_fee delta old_prefix new_prefix }
  }
}"""
FEES = """{ allTransactions(filter: {tenant: "default"}, sortField: "transaction_tag") {
  transaction_tag account_tag fee explain { fee rerate_id original_fee } } }"""


async def rest(client, operation: str, **body) -> dict:
    path = "/v1/authorization" if operation == "authorization" else f"/v1/{operation}_transaction"
    reply = await client.post(path, json=body)
    assert reply.status == 200, await reply.text()
    return await reply.json()


async def call(client, tag: str, account: str, destination: str, begin: float, seconds: int) -> None:
    await rest(client, "authorization", transaction_tag=tag, account_tag=account, destination=destination,
               timestamp_auth=at(begin))
    await rest(client, "begin", transaction_tag=tag, account_tag=account, timestamp_begin=at(begin))
    await rest(client, "end", transaction_tag=tag, account_tag=account, timestamp_end=at(begin + seconds))


async def calls_made(api) -> None:
    """Three calls to Italy in the first hour (two of 100, one of 200), one to the UK, one the next day."""
    client = api.client
    await call(client, "a", "100", "39040111", 0, 10)
    await call(client, "b", "100", "39040222", 60, 20)
    await call(client, "c", "200", "39040333", 120, 30)
    await call(client, "d", "100", "44207000", 180, 4)
    await call(client, "e", "100", "39040444", 86_400, 50)


async def ledger_of(stack, client, account: str) -> tuple[int, int]:
    """(count, sum) of the account's ledger rows, once PostgreSQL has every outbox entry."""
    async with client.app[DATABASE].acquire() as connection:
        await catch_up(stack.redis, connection)
    row = await stack.database.fetchrow(
        "SELECT count(*) AS n, coalesce(sum(amount), 0) AS total FROM ledger WHERE account_tag = $1", account)
    return row["n"], row["total"]


async def fees(api) -> dict[str, int]:
    return {row["transaction_tag"]: row["fee"] for row in (await api(FEES))["allTransactions"]}


async def test_rerate_with_a_corrected_deck_dry_run_then_apply_then_apply_again(gql, stack):
    api = await gql(CATALOG)
    await calls_made(api)
    assert await fees(api) == {"a": 20, "b": 40, "c": 60, "d": 20, "e": 100}
    assert (await stack.balance("100"), await stack.balance("200")) == (820, -60)
    await api(CORRECTION)
    window = {"from": T0, "to": at(3600)}

    dry = (await api(RERATE, dry=True, **window))["rerate"]
    assert {k: dry[k] for k in ("id", "dry_run", "examined", "changed", "skipped", "delta")} == {
        "id": None, "dry_run": True, "examined": 4, "changed": 3, "skipped": 0, "delta": -60}
    assert dry["calls"] == [
        {"transaction_tag": "a", "account_tag": "100", "duration": 10, "old_fee": 20, "new_fee": 10, "delta": -10,
         "old_prefix": "39", "new_prefix": "39"},
        {"transaction_tag": "b", "account_tag": "100", "duration": 20, "old_fee": 40, "new_fee": 20, "delta": -20,
         "old_prefix": "39", "new_prefix": "39"},
        {"transaction_tag": "c", "account_tag": "200", "duration": 30, "old_fee": 60, "new_fee": 30, "delta": -30,
         "old_prefix": "39", "new_prefix": "39"}]
    # a dry run changes nothing
    ledger_before = await ledger_of(stack, api.client, "100")
    assert await fees(api) == {"a": 20, "b": 40, "c": 60, "d": 20, "e": 100}
    assert (await stack.balance("100"), await stack.balance("200")) == (820, -60)
    assert await stack.database.fetchval("SELECT count(*) FROM rerates") == 0

    # one account only
    applied = (await api(RERATE, account="100", dry=False, **window))["rerate"]
    assert (applied["dry_run"], applied["examined"], applied["changed"], applied["delta"]) == (False, 3, 2, -30)
    assert applied["id"]
    assert await fees(api) == {"a": 10, "b": 20, "c": 60, "d": 20, "e": 100}
    assert (await stack.balance("100"), await stack.balance("200")) == (850, -60)
    # the record read from Redis (still within --record-retention) agrees with PostgreSQL
    record = (await api('{ Transaction(transaction_tag: "b", account_tag: "100")'
                        ' { fee explain { fee rerate_id original_fee } } }'))["Transaction"]
    assert record == {"fee": 20, "explain": {"fee": 20, "rerate_id": applied["id"], "original_fee": 40}}
    count, total = await ledger_of(stack, api.client, "100")
    assert count == ledger_before[0] + 2 and total == ledger_before[1] + 30 == await stack.balance("100")

    # the tenant: only 200's call is still priced on the old deck
    tenant = (await api(RERATE, dry=False, **window))["rerate"]
    assert (tenant["examined"], tenant["changed"], tenant["delta"]) == (4, 1, -30)
    assert (await stack.balance("100"), await stack.balance("200")) == (850, -30)

    # again: nothing left to change, nothing moves
    ledgers = [await ledger_of(stack, api.client, account) for account in ("100", "200")]
    again = (await api(RERATE, dry=False, **window))["rerate"]
    assert (again["examined"], again["changed"], again["delta"], again["settled"], again["calls"]) == (4, 0, 0, 0, [])
    assert (await stack.balance("100"), await stack.balance("200")) == (850, -30)
    assert [await ledger_of(stack, api.client, account) for account in ("100", "200")] == ledgers
    assert ledgers[1][1] == -30  # 200's ledger: -60 charged, +30 given back
    # PostgreSQL's balances follow the ledger
    await drained(stack)
    stored = dict(await stack.database.fetch("SELECT account_tag, balance FROM accounts ORDER BY 1"))
    assert stored == {"100": 850, "200": -30}
    # every explanation adds up to its record's fee
    for row in (await api(FEES))["allTransactions"]:
        assert row["explain"]["fee"] == row["fee"]


async def test_rerate_refuses_bad_input_naming_the_field(gql):
    api = await gql(CATALOG)
    cases = [
        ({"from": at(10), "to": at(10)}, "to: must be after from"),
        ({"from": T0, "to": at(10), "account": "nobody"},
         "account_tag: Account with tag = nobody not found in tenant default!"),
    ]
    for variables, message in cases:
        _, errors = await api.error(RERATE, **variables)
        assert errors == [message], variables
    _, errors = await api.error('mutation { rerate(from: "2030-01-01T00:00:00Z", to: "2030-01-02T00:00:00Z",'
                                ' limit: -1) { id } }')
    assert errors == ["limit: must be between 0 and 10000"]


async def test_the_rerate_command_dry_runs_then_applies(gql, stack, deck_dir, monkeypatch):
    import orjson

    api = await gql(CATALOG)
    await calls_made(api)
    await api(CORRECTION)
    monkeypatch.setenv("RATING_DECK_DIR", deck_dir)

    def cli(*extra: str) -> dict:
        done = run_cli("rerate", "--from", T0, "--to", at(3600), *extra,
                       redis_url=stack.redis_url, database_url=stack.database_url)
        return orjson.loads(done.stdout)

    dry = await asyncio.to_thread(cli)
    assert (dry["dry_run"], dry["examined"], dry["changed"], dry["delta"]) == (True, 4, 3, -60)
    assert (await stack.balance("100"), await stack.balance("200")) == (820, -60)
    applied = await asyncio.to_thread(cli, "--apply", "--account", "200")
    assert (applied["dry_run"], applied["changed"], applied["delta"]) == (False, 1, -30)
    assert (await stack.balance("100"), await stack.balance("200")) == (820, -30)
    again = await asyncio.to_thread(cli, "--apply", "--account", "200")
    assert (again["changed"], again["delta"]) == (0, 0)
    assert await stack.balance("200") == -30


async def deck_now(client, tenant: str = "default") -> int:
    """Builds the tenant's deck as PostgreSQL holds it now, without activating it (as a bulk change's build
    leaves it on the host), and returns the change-log position it covers: its version."""
    from agent.keys import SETTINGS
    from agent.pricing import deck
    from agent.store import changes, decks

    async with client.app[DATABASE].acquire() as connection:
        covers = await changes.last_seq(connection)
        folder = await decks.database_folder(connection, client.app[SETTINGS].decks)
        columns = await decks.read_columns(connection, tenant)
    deck.build_columns(decks.tenant_folder(folder, tenant) / str(covers), tenant, columns, covers)
    return covers


RERATE_ON = """mutation ($from: DateTime!, $to: DateTime!, $dry: Boolean, $version: BigInt) {
  rerate(from: $from, to: $to, dry_run: $dry, deck_version: $version) {
    id dry_run examined changed delta catalog_version calls { transaction_tag old_fee new_fee } } }"""
VERSIONS = """{ allTransactions(filter: {tenant: "default"}, sortField: "transaction_tag") {
  transaction_tag fee explain { fee catalog_version rerate_id original_fee } } }"""


async def test_rerate_on_a_named_deck_version_dry_run_then_apply_then_apply_again(gql, stack):
    api = await gql(CATALOG)
    await calls_made(api)
    # every record says which catalog version it was priced on
    before = {row["transaction_tag"]: row["explain"]["catalog_version"]
              for row in (await api(VERSIONS))["allTransactions"]}
    assert len(set(before.values())) == 1 and isinstance(before["a"], int)
    await api(CORRECTION)
    corrected_deck = await deck_now(api.client)  # the corrected deck (Italy at 1 a second) this host keeps
    # then the current rate moves on (3 a second): a rerate on the current catalog would price at 3
    await api(CORRECTION.replace("rate: 1", "rate: 3"))
    window = {"from": T0, "to": at(3600)}
    current = (await api(RERATE_ON, dry=True, **window))["rerate"]
    assert (current["changed"], current["delta"]) == (3, 60)  # 20, 40, 60 -> 30, 60, 90

    dry = (await api(RERATE_ON, dry=True, version=corrected_deck, **window))["rerate"]
    assert (dry["dry_run"], dry["examined"], dry["changed"], dry["delta"], dry["catalog_version"]) == (
        True, 4, 3, -60, corrected_deck)
    assert [(c["transaction_tag"], c["old_fee"], c["new_fee"]) for c in dry["calls"]] == [
        ("a", 20, 10), ("b", 40, 20), ("c", 60, 30)]
    assert (await stack.balance("100"), await stack.balance("200")) == (820, -60)  # a dry run moves nothing
    ledgers = [await ledger_of(stack, api.client, account) for account in ("100", "200")]

    applied = (await api(RERATE_ON, dry=False, version=corrected_deck, **window))["rerate"]
    assert (applied["dry_run"], applied["changed"], applied["delta"]) == (False, 3, -60)
    assert (await stack.balance("100"), await stack.balance("200")) == (850, -30)
    after = {row["transaction_tag"]: row for row in (await api(VERSIONS))["allTransactions"]}
    assert {tag: row["fee"] for tag, row in after.items()} == {"a": 10, "b": 20, "c": 30, "d": 20, "e": 100}
    for tag in "abc":  # priced on the named deck now, and saying so
        assert after[tag]["explain"] == {"fee": after[tag]["fee"], "catalog_version": corrected_deck,
                                         "rerate_id": applied["id"], "original_fee": 2 * after[tag]["fee"]}
    assert after["d"]["explain"]["catalog_version"] == before["d"]  # unchanged calls keep theirs
    assert [await ledger_of(stack, api.client, account) for account in ("100", "200")] == [
        (ledgers[0][0] + 2, ledgers[0][1] + 30), (ledgers[1][0] + 1, ledgers[1][1] + 30)]

    again = (await api(RERATE_ON, dry=False, version=corrected_deck, **window))["rerate"]
    assert (again["changed"], again["delta"], again["calls"]) == (0, 0, [])
    assert (await stack.balance("100"), await stack.balance("200")) == (850, -30)
    assert [await ledger_of(stack, api.client, account) for account in ("100", "200")] == [
        (ledgers[0][0] + 2, ledgers[0][1] + 30), (ledgers[1][0] + 1, ledgers[1][1] + 30)]
    await drained(stack)
    assert dict(await stack.database.fetch("SELECT account_tag, balance FROM accounts ORDER BY 1")) == {
        "100": 850, "200": -30}

    # a version this host keeps no deck of is refused, naming the argument and the versions kept
    _, errors = await api.error(RERATE_ON, dry=True, version=corrected_deck + 1, **window)
    # (the other tests' decks are kept in the same deck folder too)
    (error,) = errors
    assert error.startswith(f"deck_version: tenant default has no deck {corrected_deck + 1} on this host (kept: ")
    assert str(corrected_deck) in error.removesuffix(")").split("(kept: ")[1].split(", "), error


async def test_the_rerate_command_prices_on_a_named_deck_version(gql, stack, deck_dir, monkeypatch):
    import orjson

    api = await gql(CATALOG)
    await calls_made(api)
    await api(CORRECTION)
    corrected_deck = await deck_now(api.client)
    await api(CORRECTION.replace("rate: 1", "rate: 3"))
    monkeypatch.setenv("RATING_DECK_DIR", deck_dir)

    def cli(*extra: str, check: bool = True):
        return run_cli("rerate", "--from", T0, "--to", at(3600), *extra, redis_url=stack.redis_url,
                       database_url=stack.database_url, check=check)

    dry = orjson.loads((await asyncio.to_thread(cli, "--deck-version", str(corrected_deck))).stdout)
    assert (dry["dry_run"], dry["changed"], dry["delta"], dry["catalog_version"]) == (True, 3, -60, corrected_deck)
    applied = orjson.loads((await asyncio.to_thread(cli, "--deck-version", str(corrected_deck), "--apply")).stdout)
    assert (applied["changed"], applied["delta"]) == (3, -60)
    again = orjson.loads((await asyncio.to_thread(cli, "--deck-version", str(corrected_deck), "--apply")).stdout)
    assert (again["changed"], again["delta"]) == (0, 0)
    assert (await stack.balance("100"), await stack.balance("200")) == (850, -30)
    missing = await asyncio.to_thread(cli, "--deck-version", str(corrected_deck + 7), check=False)
    assert missing.returncode == 2
    assert f"--deck-version: tenant default has no deck {corrected_deck + 7} on this host" in missing.stderr

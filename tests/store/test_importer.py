"""Catalog and rate-deck import: streaming, validation with line numbers, atomic replace, live reload."""

import asyncio
import io
import json
import random

import pytest

from agent.store.importer import ImportError_, csv_rates, import_rates
from tests.conftest import run_cli
from tests.test_transaction import catalog, post, prepaid

HEADER = "prefix,rate,rate_increment,connect_fee,interval_start,description\n"


def deck(rows: int, seed: int = 7):
    """A generated deck, produced line by line (never held whole in memory)."""
    rng = random.Random(seed)
    yield HEADER
    for i in range(rows):
        yield f"{39000000 + i},{rng.randint(1, 50)},60,0,0,Italy {i % 17}\n"


async def test_a_100000_row_deck_streams_in_and_the_running_agent_switches_to_it(agent, stack):
    client = await agent(catalog(prepaid("a", 10**9)))
    rows = csv_rates(deck(100_000), "default", "p1", "c1")
    result = await import_rates(stack.database, rows, replace=True)
    assert result.rows == 100_000
    assert await stack.database.fetchval(
        "SELECT count(*) FROM pricelist_rates WHERE pricelist_tag = 'p1' AND carrier_tag = 'c1'") == 100_000
    # replace=True removed c1's old generic "39" rate in p1, which the deck does not list.
    assert result.replaced == 1
    for _ in range(200):
        answer = await post(client, "authorization", transaction_tag=f"d{_}", account_tag="a",
                            destination="39000123456")
        if answer["carriers"][0] == "UDP:10.0.0.1:5060" and answer["max_available_units"] != 14400:
            break
        await asyncio.sleep(0.05)
    from agent.keys import CATALOG

    assert client.app[CATALOG].current.rate_count >= 100_000
    assert answer["authorized"] is True


def test_a_bad_row_is_reported_with_its_line_number():
    lines = [HEADER, "39,1,60,0,0,ok\n", "40,x,60,0,0,bad\n"]
    with pytest.raises(ImportError_, match="line 3: rate must be an integer"):
        list(csv_rates(lines, "default", "p1", "c1"))


@pytest.mark.parametrize("line, message", [
    (",1,60,0,0,x\n", "prefix is required"),
    ("39,-1,60,0,0,x\n", "rate must not be negative"),
    ("39,1,60,0,0,x,extra\n", None),
])
def test_row_validation(line, message):
    rows = csv_rates([HEADER, line], "default", "p1", "c1")
    if message is None:
        assert len(list(rows)) == 1
    else:
        with pytest.raises(ImportError_, match=message):
            list(rows)


def test_a_deck_without_prefix_column_is_refused():
    with pytest.raises(ImportError_, match="header"):
        list(csv_rates(["rate,foo\n", "1,2\n"], "default", "p1", "c1"))


async def test_unknown_pricelist_or_carrier_aborts_the_whole_deck(stack):
    await stack.load(catalog(prepaid("a")))
    with pytest.raises(ImportError_, match="Carrier with tag = nope not found in tenant default"):
        await import_rates(stack.database, csv_rates([HEADER, "44,1,1,0,0,x\n"], "default", "p1", "nope"))
    assert await stack.database.fetchval("SELECT count(*) FROM pricelist_rates WHERE prefix = '44'") == 0


async def test_duplicate_prefixes_in_one_deck_keep_the_last_row(stack):
    await stack.load(catalog(prepaid("a")))
    lines = [HEADER, "44,1,1,0,0,first\n", "44,2,1,0,0,last\n"]
    await import_rates(stack.database, csv_rates(lines, "default", "p1", "c1"))
    assert await stack.database.fetchval(
        "SELECT description FROM pricelist_rates WHERE prefix = '44'") == "last"


def test_cli_imports_catalog_and_deck_and_sets_balances(stack, tmp_path):
    document = tmp_path / "catalog.json"
    document.write_text(json.dumps(catalog(prepaid("cli", 4321))))
    done = run_cli("import", "catalog", str(document), redis_url=stack.redis_url, database_url=stack.database_url)
    assert "accounts=1" in done.stdout
    csv_file = tmp_path / "deck.csv"
    csv_file.write_text("".join(deck(1000)))
    done = run_cli("import", "rates", str(csv_file), "--pricelist", "p2", "--carrier", "c2",
                   redis_url=stack.redis_url, database_url=stack.database_url)
    assert "rates=1000" in done.stdout
    done = run_cli("balance", "add", "cli", "-321", redis_url=stack.redis_url, database_url=stack.database_url)
    assert done.stdout.strip() == "4000"


def test_cli_reports_import_errors_without_a_traceback(stack, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + "39,oops,1,0,0,x\n")
    done = run_cli("import", "rates", str(bad), "--pricelist", "p1", "--carrier", "c1",
                   redis_url=stack.redis_url, database_url=stack.database_url, check=False)
    assert done.returncode == 1
    assert "line 2: rate must be an integer" in done.stderr and "Traceback" not in done.stderr


async def test_catalog_changes_reach_a_running_agent_without_restart(agent, stack):
    client = await agent(catalog(prepaid("a", 1000)))
    assert (await post(client, "authorization", transaction_tag="x1", account_tag="new",
                       destination="39"))["unauthorized_reason"] == "NOT_FOUND"
    await stack.load({"accounts": [prepaid("new", 50)]})
    for i in range(100):
        answer = await post(client, "authorization", transaction_tag=f"x{i + 2}", account_tag="new",
                            destination="39")
        if answer["authorized"]:
            break
        await asyncio.sleep(0.05)
    assert answer["authorized"] is True and answer["balance"] == 50, answer

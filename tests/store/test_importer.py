"""Catalog and rate-deck import: streaming, validation with line numbers, atomic replace, live reload."""

import asyncio
import csv
import io
import json
import random

import asyncpg
import pytest

from agent.store import importer
from agent.store.importer import ImportError_, csv_rates, import_rates
from tests.conftest import run_cli
from tests.test_transaction import at, catalog, post, prepaid, records

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
    from agent.keys import CATALOG

    # the import alone publishes nothing (its CLI does): the agent follows its notification and builds the
    # deck, however long that takes on a loaded host (bounded only against a hang)
    for _ in range(2400):
        if client.app[CATALOG].current.rate_count >= 100_000:
            break
        await asyncio.sleep(0.05)
    assert client.app[CATALOG].current.rate_count >= 100_000
    answer = await post(client, "authorization", transaction_tag="d1", account_tag="a", destination="39000123456")
    assert answer["authorized"] is True
    assert answer["carriers"][0] == "UDP:10.0.0.1:5060"  # c1's new rate (1-50 a minute) is below c2's 2 a second


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


# --- the fast path (CSV lines copied as they are), merges, and the references of migration 004 -------------

RATE_VALUES = "tenant, pricelist_tag, carrier_tag, prefix, connect_fee, rate, rate_increment, interval_start," \
              " description, datetime_start, datetime_end, active"

# Lines the fast path takes as they are and lines it leaves to csv + rate_row, mixed in one deck.
MIXED = [
    "prefix,rate,rate_increment,connect_fee,interval_start,description,active,datetime_start,carrier_tag,extra\n",
    "4401,1,60,0,0,plain,,,,x\n",
    '4402,2,60,0,0,"quoted, with a comma",t,,c2,\n',
    '4403,3,60,0,0,"two\nlines",FALSE,,,\n',
    "4404,4,,,,,yes,2030-01-01 10:00,,\r\n",
    "\n",
    " 4405 ,+5,60,0,0,spaced,,,,\n",
    "4406,6,60,0,0,short\n",
    "4407,7,60,0,0,extra fields,1,,c2,,more,fields\n",
    "4408,8,60,0,0,,0,1700000000,,\n",
    "4402,9,60,0,0,duplicate: the last one wins,,,c2,\n",
    "4409,10,60,0,0,no newline at the end,,,,",
]


async def stored(connection, pricelist: str) -> list[tuple]:
    rows = await connection.fetch(
        f"SELECT {RATE_VALUES} FROM pricelist_rates WHERE pricelist_tag = $1 AND prefix LIKE '44%'"
        " ORDER BY prefix, carrier_tag",
        pricelist)
    return [tuple(row.values())[:1] + tuple(row.values())[2:] for row in rows]  # all but the pricelist


async def test_the_copied_deck_stores_what_the_checked_rows_store(stack):
    await stack.load(catalog(prepaid("a")))
    await import_rates(stack.database, csv_rates(MIXED, "default", "p1", "c1"))  # CsvDeck: COPY of the lines
    await import_rates(stack.database, list(csv_rates(MIXED, "default", "p2", "c1")))  # rate_row tuples
    fast, checked = await stored(stack.database, "p1"), await stored(stack.database, "p2")
    assert fast == checked and len(fast) == 9
    by_prefix = {row[2]: row for row in fast}
    assert by_prefix["4402"][7] == "duplicate: the last one wins" and by_prefix["4402"][1] == "c2"
    assert by_prefix["4403"][7] == "two\nlines" and by_prefix["4403"][10] is False
    assert by_prefix["4404"][3:7] == (0, 4, 1, 0) and by_prefix["4404"][8].year == 2030
    assert "4405" in by_prefix and by_prefix["4405"][4] == 5


async def test_a_bad_row_after_a_multiline_field_names_its_line_and_changes_nothing(stack):
    await stack.load(catalog(prepaid("a")))
    lines = [HEADER, *(f"{4400 + i},1,60,0,0,fine\n" for i in range(3000)),
             '45,1,60,0,0,"a\n', 'b"\n', "46,x,60,0,0,bad\n"]
    with pytest.raises(ImportError_, match="line 3004: rate must be an integer"):
        await import_rates(stack.database, csv_rates(lines, "default", "p1", "c1"), replace=True)
    # replace would have deleted c1's "39" in p1: the whole import was rolled back
    assert await stack.database.fetchval(
        "SELECT count(*) FROM pricelist_rates WHERE pricelist_tag = 'p1' AND carrier_tag = 'c1'") == 1


def test_values_beyond_the_columns_are_refused_with_their_line():
    lines = [HEADER, "39,9223372036854775808,60,0,0,x\n"]
    with pytest.raises(ImportError_, match="line 2: rate must be at most 9223372036854775807"):
        list(csv_rates(lines, "default", "p1", "c1"))


async def test_an_unknown_pricelist_aborts_the_deck(stack):
    await stack.load(catalog(prepaid("a")))
    with pytest.raises(ImportError_, match="Price list with tag = nope not found in tenant default"):
        await import_rates(stack.database, csv_rates([HEADER, "44,1,1,0,0,x\n"], "default", "nope", "c1"))


@pytest.mark.parametrize("overlay_limit", [importer.OVERLAY_LIMIT, 2])
async def test_a_replace_rewrites_only_what_changed(stack, monkeypatch, overlay_limit):
    monkeypatch.setattr(importer, "OVERLAY_LIMIT", overlay_limit)
    await stack.load(catalog(prepaid("a")))
    first = [HEADER, "4401,1,60,0,0,a\n", "4402,2,60,0,0,b\n", "4403,3,60,0,0,c\n"]
    await import_rates(stack.database, csv_rates(first, "default", "p2", "c1"))
    before = {r["prefix"]: (r["id"], r["xmin"]) for r in await stack.database.fetch(
        "SELECT prefix, id, xmin::text FROM pricelist_rates WHERE pricelist_tag = 'p2' AND carrier_tag = 'c1'")}
    again = [HEADER, "4401,1,60,0,0,a\n", "4402,20,60,0,0,b\n", "4404,4,60,0,0,d\n", "4404,40,60,0,0,d\n"]
    logged = "SELECT kind, subject FROM catalog_changes WHERE tenant = 'default' AND seq > $1 ORDER BY seq"
    seq_before = await stack.database.fetchval("SELECT max(seq) FROM catalog_changes")
    result = await import_rates(stack.database, csv_rates(again, "default", "p2", "c1"), replace=True)
    new_changes = [(r["kind"], json.loads(r["subject"])) for r in await stack.database.fetch(logged, seq_before)]
    if overlay_limit >= 3:  # three rates changed: laid over the deck as rate changes, no deck to build
        assert (result.rows, result.replaced, result.tenants, result.overlaid) == (4, 1, set(), 3)
        assert [kind for kind, _ in new_changes] == ["rate"]
        assert sorted(new_changes[0][1]) == [["p2", "c1", "4402"], ["p2", "c1", "4403"], ["p2", "c1", "4404"]]
    else:  # more than the limit: a new deck, in the same transaction
        assert (result.rows, result.replaced, result.tenants, result.overlaid) == (4, 1, {"default"}, 0)
        assert new_changes == [("bulk", [])]
    after = {r["prefix"]: (r["id"], r["xmin"], r["rate"]) for r in await stack.database.fetch(
        "SELECT prefix, id, xmin::text, rate FROM pricelist_rates WHERE pricelist_tag = 'p2' AND carrier_tag = 'c1'")}
    assert set(after) == {"4401", "4402", "4404"}  # 4403 is gone
    assert after["4401"][:2] == before["4401"]  # unchanged: not written at all
    assert after["4402"][0] == before["4402"][0] and after["4402"][2] == 20  # changed in place, same id
    assert after["4404"][2] == 40
    # c2's rate in p2 belongs to another pair: replace leaves it
    assert await stack.database.fetchval(
        "SELECT rate FROM pricelist_rates WHERE pricelist_tag = 'p2' AND carrier_tag = 'c2'") == 10


async def test_a_deck_that_changes_nothing_writes_nothing(stack):
    await stack.load(catalog(prepaid("a")))
    lines = list(deck(500))
    await import_rates(stack.database, csv_rates(lines, "default", "p2", "c1"))
    xmins = await stack.database.fetchval("SELECT array_agg(xmin::text ORDER BY id) FROM pricelist_rates")
    seq = await stack.database.fetchval("SELECT max(seq) FROM catalog_changes")
    result = await import_rates(stack.database, csv_rates(lines, "default", "p2", "c1"), replace=True)
    assert (result.rows, result.replaced, result.tenants, result.overlaid) == (500, 0, set(), 0)
    assert await stack.database.fetchval("SELECT array_agg(xmin::text ORDER BY id) FROM pricelist_rates") == xmins
    assert await stack.database.fetchval("SELECT max(seq) FROM catalog_changes") == seq  # nothing to apply


async def test_a_deck_and_a_catalog_import_in_one_transaction(stack):
    await stack.load(catalog(prepaid("a")))
    async with stack.database.transaction():
        await import_rates(stack.database, csv_rates([HEADER, "4401,1,60,0,0,a\n"], "default", "p2", "c1"))
        await import_rates(stack.database, [("default", "p2", "c1", "4402", 0, 2, 60, 0, None, None, None, True, None, 0,
                                             None, "", 0, 0, 86400, 1)])
    assert await stack.database.fetchval(
        "SELECT count(*) FROM pricelist_rates WHERE prefix IN ('4401', '4402')") == 2


async def test_references_are_still_enforced_and_followed(stack):
    await stack.load(catalog(prepaid("a")))
    db = stack.database
    with pytest.raises(asyncpg.ForeignKeyViolationError) as refused:
        await db.execute("INSERT INTO pricelist_rates (pricelist_tag, carrier_tag, prefix) VALUES ('p1', 'nope', '1')")
    assert refused.value.constraint_name == "pricelist_rates_tenant_carrier_tag_fkey"
    assert 'Key (tenant, carrier_tag)=(default, nope) is not present in table "carriers"' in refused.value.detail
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="pricelist_rates_tenant_pricelist_tag_fkey"):
        await db.execute("UPDATE pricelist_rates SET pricelist_tag = 'nope' WHERE pricelist_tag = 'p2'")
    await db.execute("UPDATE pricelist_rates SET rate = 11 WHERE pricelist_tag = 'p2'")  # references unchanged
    await db.execute("UPDATE pricelists SET pricelist_tag = 'p2b' WHERE pricelist_tag = 'p2'")
    assert await db.fetchval("SELECT rate FROM pricelist_rates WHERE pricelist_tag = 'p2b'") == 11
    await db.execute("DELETE FROM carriers WHERE carrier_tag = 'c2'")
    assert await db.fetchval("SELECT count(*) FROM pricelist_rates WHERE carrier_tag = 'c2'") == 0
    await db.execute("UPDATE carriers SET carrier_tag = 'c1b' WHERE carrier_tag = 'c1'")
    assert await db.fetchval("SELECT count(*) FROM pricelist_rates WHERE carrier_tag = 'c1b'") == 1
    await db.execute("TRUNCATE pricelists")
    assert await db.fetchval("SELECT count(*) FROM pricelist_rates") == 0


# --- billing schemes (initial_increment, minimum_duration, maximum_cost) --------------------------------------

SCHEMES = [
    "prefix,rate,rate_increment,initial_increment,minimum_duration,maximum_cost,connect_fee,description\n",
    "4501,1,60,,,,0,as before\n",  # every fast path
    "4502,1,1,60,,,0,60/1\n",  # per second: any first block, still copied as it is
    "4503,2,60,60,30,500,0,60/60 written out\n",  # one increment written as rate_increment is
    "4504,1,6,30,,,0,30/6\n",  # a multiple: checked by rate_row
    '4505,1,6,30,60,1000,5,"30/6, quoted"\n',
    "4506,1,,45,,,0,per second by default\n",
    "4507,1,0,45,0,0,0,free by its cap\n",
]
SCHEME_VALUES = "prefix, rate, rate_increment, initial_increment, minimum_duration, maximum_cost, connect_fee"


async def test_scheme_columns_copied_store_what_the_checked_rows_store(stack):
    await stack.load(catalog(prepaid("a")))
    await import_rates(stack.database, csv_rates(SCHEMES, "default", "p1", "c1"))
    await import_rates(stack.database, list(csv_rates(SCHEMES, "default", "p2", "c1")))
    query = (f"SELECT {SCHEME_VALUES} FROM pricelist_rates WHERE pricelist_tag = $1 AND prefix LIKE '45%'"
             " ORDER BY prefix")
    fast = [tuple(r) for r in await stack.database.fetch(query, "p1")]
    assert fast == [tuple(r) for r in await stack.database.fetch(query, "p2")]
    assert fast[0] == ("4501", 1, 60, None, 0, None, 0) and fast[3] == ("4504", 1, 6, 30, 0, None, 0)
    assert fast[4] == ("4505", 1, 6, 30, 60, 1000, 5) and fast[6] == ("4507", 1, 0, 45, 0, 0, 0)


def test_which_scheme_lines_the_fast_path_copies_unparsed():
    rows = csv_rates(SCHEMES, "default", "p1", "c1")
    rows.copy_columns()
    taken = [bool(rows.line(line)) for line in SCHEMES[1:]]
    assert taken == [True, True, True, False, False, True, True]
    # initial_increment before rate_increment: only an empty one is taken as it is
    swapped = csv_rates(["prefix,initial_increment,rate_increment\n"], "default", "p1", "c1")
    swapped.copy_columns()
    assert swapped.line("39,,60\n") and not swapped.line("39,60,60\n")
    # in a batch (one pattern over many lines) only empty first increments pass: a group would remember
    # an earlier line's increment
    assert rows.lines("4501,1,60,,,,0,x\n4502,1,60,,,,0,y\n") and not rows.lines("4502,1,1,60,,,0,60/1\n")


@pytest.mark.parametrize("line, message", [
    ("39,1,30,45,,,0,x\n", "initial_increment \\(45\\) must be a multiple of rate_increment \\(30\\)"),
    ("39,1,30,0,,,0,x\n", "initial_increment must be positive"),
    ("39,1,-6,30,,,0,x\n", "rate_increment must not be negative"),
    ("39,1,6,-30,,,0,x\n", "initial_increment must not be negative"),
    ("39,1,6,30,-1,,0,x\n", "minimum_duration must not be negative"),
    ("39,1,6,30,10000001,,0,x\n", "minimum_duration must be at most 10000000"),
    ("39,1,6,30,,-5,0,x\n", "maximum_cost must not be negative"),
    ("39,1,6,30,,9007199254740992,0,x\n", "maximum_cost must be at most 9007199254740991"),
    ("39,1000000000,1,,,,0,x\n", "the fee of a 10000000 s call must stay below 2\\*\\*53"),
    ("39,1,60,60000000,,,0,x\n", "initial_increment must be at most 10000000"),
    ("39,1.5,60,,,,0,x\n", "rate must be an integer"),
])
async def test_a_bad_scheme_is_refused_with_its_line_and_column_and_nothing_is_imported(stack, line, message):
    await stack.load(catalog(prepaid("a")))
    lines = [SCHEMES[0], *(f"{4400 + i},1,60,,,,0,fine\n" for i in range(3000)), line]
    with pytest.raises(ImportError_, match=f"line 3002: {message}"):
        await import_rates(stack.database, csv_rates(lines, "default", "p1", "c1"), replace=True)
    assert await stack.database.fetchval(
        "SELECT count(*) FROM pricelist_rates WHERE pricelist_tag = 'p1' AND carrier_tag = 'c1'") == 1


async def test_a_30_6_call_with_a_minimum_and_a_cap_is_granted_reserved_and_charged_as_the_kernel_prices_it(
        agent, stack):
    from agent.pricing.rate import Rate, fee, max_units

    rates = [{"pricelist_tag": "p1", "carrier_tag": "c1", "prefix": "39", "connect_fee": 3, "rate": 1,
              "rate_increment": 6, "initial_increment": 30},
             {"pricelist_tag": "p1", "carrier_tag": "c1", "prefix": "44", "rate": 1, "rate_increment": 1,
              "minimum_duration": 60, "maximum_cost": 100}]
    client = await agent(catalog(prepaid("a", 50), prepaid("b", 1000), rates=rates))
    thirty_six = Rate("default", "p1", "c1", "39", 3, 1, 6, initial_increment=30)
    answer = await post(client, "authorization", transaction_tag="c", account_tag="a", destination="39040")
    # 50 pays the connect fee (3), the 30 s block (5) and 42 increments of 6 s: 282 s, reserving 50
    assert answer["max_available_units"] == max_units(thirty_six, 50, 14400) == 282
    assert (await stack.account_state("a"))["reserved"] == fee(thirty_six, 282) == 50
    await post(client, "begin", transaction_tag="c", account_tag="a", timestamp_begin=at(0))
    await post(client, "end", transaction_tag="c", timestamp_end=at(31.5))  # 32 s: block + 1 increment
    assert await stack.balance("a") == 50 - fee(thirty_six, 32) == 41
    record = (await records(stack, client, "c"))["a"]
    assert record["fee"] == 9 and record["destination_rate"]["initial_increment"] == 30

    refused = await post(client, "authorization", transaction_tag="m", account_tag="a", destination="44")
    assert refused["unauthorized_reason"] == "BALANCE_INSUFFICIENT"  # 41 left: an answered call costs 60

    answer = await post(client, "authorization", transaction_tag="m", account_tag="b", destination="44")
    assert answer["max_available_units"] == 14400  # 1000 pays the cap, so any call: --max-units
    assert (await stack.account_state("b"))["reserved"] == 100
    await post(client, "begin", transaction_tag="m", account_tag="b", timestamp_begin=at(100))
    await post(client, "end", transaction_tag="m", timestamp_end=at(110))  # 10 s, billed the minimum 60
    assert await stack.balance("b") == 1000 - 60
    await post(client, "authorization", transaction_tag="n", account_tag="b", destination="44")
    await post(client, "begin", transaction_tag="n", account_tag="b", timestamp_begin=at(200))
    await post(client, "end", transaction_tag="n", timestamp_end=at(800))  # 600 s: the cap
    assert await stack.balance("b") == 1000 - 60 - 100


# --- decimal prices: a pricelist's money scale ----------------------------------------------------------------------

def scaled_catalog(scale: int = 4, rounding: str = "up") -> dict:
    document = catalog(prepaid("a"))
    document["pricelists"].append({"pricelist_tag": "p4", "scale": scale, "rounding": rounding})
    return document


async def stored_prices(stack, pricelist: str) -> dict[str, tuple]:
    rows = await stack.database.fetch(
        "SELECT prefix, connect_fee, rate, maximum_cost FROM pricelist_rates WHERE pricelist_tag = $1", pricelist)
    return {row["prefix"]: (row["connect_fee"], row["rate"], row["maximum_cost"]) for row in rows}


async def test_csv_prices_with_decimals_are_imported_exactly_in_the_pricelists_scale(stack):
    await stack.load(scaled_catalog())
    lines = ["prefix,rate,rate_increment,connect_fee,maximum_cost\n", "39,0.0085,60,0.5,12.25\n", "44,2,60,,\n",
             "45,.0001,1,0.0000,\n", "46,,1,3.,1\n"]
    result = await import_rates(stack.database, csv_rates(lines, "default", "p4", "c1"))
    assert result.rows == 4
    assert await stored_prices(stack, "p4") == {"39": (5000, 85, 122500), "44": (0, 20000, None), "45": (0, 1, None),
                                                "46": (30000, 0, 10000)}
    # a deck naming its pricelists in a column: each row in its own pricelist's scale
    lines = ["prefix,pricelist_tag,rate\n", "33,p4,0.0125\n", "33,p1,7\n"]
    await import_rates(stack.database, csv_rates(lines, "default", None, "c1"))
    assert (await stored_prices(stack, "p4"))["33"] == (0, 125, None)
    assert (await stored_prices(stack, "p1"))["33"] == (0, 7, None)


async def test_more_decimals_than_the_scale_are_refused_with_the_line_and_column_and_nothing_is_imported(stack):
    await stack.load(scaled_catalog())
    cases = [
        (["prefix,rate\n", "39,0.0085\n", "40,0.00855\n"], "line 3: rate has more than 4 decimals"),
        (["prefix,connect_fee\n", "39,1.23456\n"], "line 2: connect_fee has more than 4 decimals"),
        (["prefix,rate\n", "39,1e-3\n"], "line 2: rate must be a decimal number"),
        (["prefix,rate\n", "39,-0.5\n"], "line 2: rate must be a decimal number"),
        (["prefix,rate\n", "39,0,5\n", "40,0.5.1\n"], "line 3: rate must be a decimal number"),
        (["prefix,maximum_cost\n", "39,900719925474.0992\n"], "line 2: maximum_cost must be below 2**53"),
    ]
    for lines, message in cases:
        with pytest.raises(ImportError_, match=message.replace("*", r"\*")):
            await import_rates(stack.database, csv_rates(lines, "default", "p4", "c1"))
    # a pricelist of scale 0 keeps integer money and its messages
    with pytest.raises(ImportError_, match="line 2: rate must be an integer"):
        await import_rates(stack.database, csv_rates(["prefix,rate\n", "39,0.5\n"], "default", "p1", "c1"))
    assert await stack.database.fetchval("SELECT count(*) FROM pricelist_rates WHERE pricelist_tag = 'p4'") == 0


async def test_rows_read_without_the_pricelists_scale_are_refused(stack):
    await stack.load(scaled_catalog())
    rows = list(csv_rates(["prefix,rate\n", "39,85\n"], "default", "p4", "c1"))  # read outside an import
    with pytest.raises(ImportError_, match="p4 has scale 4 in tenant default: its prices were read with scale 0"):
        await import_rates(stack.database, rows)


async def test_a_json_catalog_gives_pricelists_their_terms_and_rates_their_decimals(stack):
    document = scaled_catalog(2, "half_even")
    document["rates"] = [{"pricelist_tag": "p4", "carrier_tag": "c1", "prefix": "39", "rate": "0.07",
                          "connect_fee": 1, "maximum_cost": "3.5"}]
    await stack.load(document)
    row = await stack.database.fetchrow("SELECT scale, rounding FROM pricelists WHERE pricelist_tag = 'p4'")
    assert (row["scale"], row["rounding"]) == (2, "half_even")
    assert await stored_prices(stack, "p4") == {"39": (100, 7, 350)}
    # loading it again without the terms keeps them; a new rounding is taken, a new scale is refused
    document["pricelists"][-1] = {"pricelist_tag": "p4"}
    await stack.load(document)
    document["pricelists"][-1] = {"pricelist_tag": "p4", "rounding": "down"}
    summary = await stack.load(document)
    assert "default" in summary["rebuild"]  # the deck prices every rate of p4 anew
    assert await stack.database.fetchval("SELECT rounding FROM pricelists WHERE pricelist_tag = 'p4'") == "down"
    document["pricelists"][-1] = {"pricelist_tag": "p4", "scale": 3}
    with pytest.raises(ImportError_, match="scale cannot change while the pricelist has rates"):
        await stack.load(document)
    for bad, message in (({"scale": 7}, "scale must be an integer from 0 to 6"),
                         ({"rounding": "nearest"}, "rounding must be one of up, half_even, down")):
        document["pricelists"][-1] = {"pricelist_tag": "p5", **bad}
        with pytest.raises(ImportError_, match=message):
            await stack.load(document)
    document["pricelists"][-1] = {"pricelist_tag": "p4"}
    document["rates"][0]["rate"] = 0.07  # a float is never read as money
    with pytest.raises(ImportError_, match="rate must be an integer or a decimal written as text"):
        await stack.load(document)


def decimal_deck(rows: int, seed: int = 7):
    rng = random.Random(seed)
    yield HEADER
    for i in range(rows):
        yield f"{39000000 + i},0.{rng.randint(1, 5000):04d},60,0,0,Italy {i % 17}\n"


async def test_a_100000_row_decimal_deck_imports(stack):
    await stack.load(scaled_catalog())
    result = await import_rates(stack.database, csv_rates(decimal_deck(100_000), "default", "p4", "c1"))
    assert result.rows == 100_000
    assert await stack.database.fetchval(
        "SELECT count(*) FROM pricelist_rates WHERE pricelist_tag = 'p4' AND rate BETWEEN 1 AND 5000") == 100_000


# --- origin rating (source_prefix) ---------------------------------------------------------------------------

ORIGINS = [
    "prefix,rate,source_prefix,description\n",
    "4601,1,,any origin\n",  # the fast path: empty
    "4601,3,3906,Rome callers\n",  # the fast path: digits
    '4601,4,"+39 02",Milan callers\n',  # normalized by rate_row: 3902
    "4602,2,0612,\n",
]


async def test_a_deck_with_source_prefixes_stores_one_rate_per_origin_by_either_path(stack):
    await stack.load(catalog(prepaid("a")))
    rows = csv_rates(ORIGINS, "default", "p1", "c1")
    rows.copy_columns()
    assert [bool(rows.line(line)) for line in ORIGINS[1:]] == [True, True, False, True]
    await import_rates(stack.database, csv_rates(ORIGINS, "default", "p1", "c1"))
    await import_rates(stack.database, list(csv_rates(ORIGINS, "default", "p2", "c1")))
    query = ("SELECT prefix, source_prefix, rate FROM pricelist_rates WHERE pricelist_tag = $1 AND prefix LIKE '46%'"
             " ORDER BY prefix, source_prefix")
    fast = [tuple(r) for r in await stack.database.fetch(query, "p1")]
    assert fast == [("4601", "", 1), ("4601", "3902", 4), ("4601", "3906", 3), ("4602", "0612", 2)]
    assert fast == [tuple(r) for r in await stack.database.fetch(query, "p2")]
    # merged by (prefix, carrier, source prefix): a changed origin's rate changes alone; replace removes the
    # origins the deck no longer lists
    result = await import_rates(stack.database, csv_rates(
        ["prefix,rate,source_prefix\n", "4601,1,\n", "4601,9,3906\n", "4602,2,0612\n"], "default", "p1", "c1"),
        replace=True)
    assert result.replaced >= 1
    assert [tuple(r) for r in await stack.database.fetch(query, "p1")] == [
        ("4601", "", 1), ("4601", "3906", 9), ("4602", "0612", 2)]


@pytest.mark.parametrize("value, message", [
    ("sip:alice@", "line 2: source_prefix must be digits"),
    ("39x", "line 2: source_prefix must be digits"),
    ("1" * 17, "line 2: source_prefix must be at most 16 digits"),
])
async def test_a_bad_source_prefix_is_refused_with_its_line_and_nothing_is_imported(stack, value, message):
    await stack.load(catalog(prepaid("a")))
    before = await stack.database.fetchval("SELECT count(*) FROM pricelist_rates")
    with pytest.raises(ImportError_, match=message):
        await import_rates(stack.database, csv_rates(
            ["prefix,rate,source_prefix\n", f"4701,1,{value}\n", "4702,1,39\n"], "default", "p1", "c1"))
    assert await stack.database.fetchval("SELECT count(*) FROM pricelist_rates") == before


async def test_a_json_catalog_takes_source_prefixes_and_refuses_a_bad_one(stack):
    document = catalog(prepaid("a"), rates=[
        {"pricelist_tag": "p1", "carrier_tag": "c1", "prefix": "39", "rate": 1},
        {"pricelist_tag": "p1", "carrier_tag": "c1", "prefix": "39", "rate": 2, "source_prefix": "+3906"}])
    await stack.load(document)
    assert [tuple(r) for r in await stack.database.fetch(
        "SELECT source_prefix, rate FROM pricelist_rates WHERE prefix = '39' ORDER BY source_prefix")] == [
        ("", 1), ("3906", 2)]
    with pytest.raises(ImportError_, match="rates: source_prefix must be text"):
        await stack.load(catalog(prepaid("a"), rates=[
            {"pricelist_tag": "p1", "carrier_tag": "c1", "prefix": "40", "rate": 1, "source_prefix": 3906}]))


# Decks built by a large import from its own transaction (store/decks.ImportBuild), against the deck a build
# from PostgreSQL gives once the import has committed: the same files, byte for byte.

_COLUMNS = ("tenant", "pricelist_tag", "carrier_tag", "prefix", "connect_fee", "rate", "rate_increment",
            "interval_start", "description", "datetime_start", "datetime_end", "active", "initial_increment",
            "minimum_duration", "maximum_cost", "source_prefix")
_WRITTEN = ["39", "390", "3904", "+39", "+390", "0039", "39-04", "sip:alice@", "tel:+3904", "1" * 17, "2" * 18]


def varied_deck(rng, count: int, pairs: list[tuple[str, str, str]], dated: bool = True) -> list[str]:
    """CSV lines of a deck over (tenant, pricelist, carrier) `pairs`: prefixes written several ways, origins,
    dates, decimal prices in p2 (scale 4), texts that need quoting, inactive rows and duplicates."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(_COLUMNS)
    for _ in range(count):
        tenant, pricelist, carrier = rng.choice(pairs)
        prefix = rng.choice(_WRITTEN) if rng.random() < 0.2 else str(rng.randrange(10 ** rng.randrange(1, 9)))
        increment = rng.choice(["", "1", "6", "60"])
        if pricelist == "p2":
            fee, rate, most = rng.choice(["", "0.5", "2"]), rng.choice(["0.0085", "1", ".25"]), rng.choice(["", "9.99"])
        else:
            fee, rate, most = str(rng.randrange(3)), str(rng.randrange(1, 90)), rng.choice(["", "", "5000"])
        start = rng.choice(["", "", "2024-05-01T10:00:00Z", "2031-01-01 00:00:00+02"]) if dated else ""
        writer.writerow([tenant, pricelist, carrier, prefix, fee, rate, increment, rng.choice(["0", "", "2"]),
                         rng.choice(["", "Italy", 'Quoted, "mobile"', "Città ☎"]), start,
                         rng.choice(["", "", "2032-01-01T00:00:00Z"]) if dated else "",
                         rng.choice(["", "true", "true", "false"]),
                         rng.choice(["", "", increment or "1"]) if increment != "" else "",
                         rng.choice(["0", "", "30"]), most, rng.choice(["", "", "", "39", "06123"]) if dated else ""])
    return out.getvalue().splitlines(keepends=True)


def varied_catalog() -> dict:
    document = {"carriers": [], "pricelists": [], "accounts": []}
    for tenant in ("t", "u"):
        document["carriers"] += [{"tenant": tenant, "carrier_tag": tag, "host": "10.0.0.9"} for tag in ("c1", "c2", "c3")]
        document["pricelists"] += [{"tenant": tenant, "pricelist_tag": "p1"},
                                   {"tenant": tenant, "pricelist_tag": "p2", "scale": 4, "rounding": "half_even"},
                                   {"tenant": tenant, "pricelist_tag": "p3", "rounding": "down"}]
    return document


def deck_files(folder) -> dict[str, bytes]:
    files = {path.name: path.read_bytes() for path in folder.iterdir()}
    meta = json.loads(files.pop("meta.json"))
    return {**files, "meta": meta}


async def assert_built_as_postgresql_builds(stack, result, tmp_path) -> None:
    from agent.pricing import deck as decks_format
    from agent.store import decks

    assert result.built and not result.tenants
    for info in result.built:
        async with stack.database.transaction(isolation="repeatable_read", readonly=True):
            columns = await decks.read_columns(stack.database, info.tenant)
        again = decks_format.build_columns(tmp_path / f"again-{info.tenant}-{info.covers}", info.tenant, columns,
                                           info.covers)
        assert deck_files(info.folder) == deck_files(again.folder)
        assert info.rates == again.rates == await stack.database.fetchval(
            "SELECT count(*) FROM pricelist_rates WHERE tenant = $1 AND active", info.tenant)
    activated = await stack.database.fetch("SELECT tenant, subject FROM catalog_changes WHERE kind = 'deck'"
                                           " AND (subject->>'covers')::bigint = $1", result.seq)
    assert sorted(row["tenant"] for row in activated) == sorted(info.tenant for info in result.built)


@pytest.mark.parametrize("dated", [True, False])  # dates and origins, or a deck with chains
async def test_a_deck_built_during_an_import_is_the_deck_postgresql_gives(stack, tmp_path, monkeypatch, dated):
    from agent.store import decks

    monkeypatch.setattr(importer, "OVERLAY_LIMIT", 20)
    rng = random.Random(11)
    await stack.load(varied_catalog())
    everything = [(tenant, p, c) for tenant in ("t", "u") for p in ("p1", "p2") for c in ("c1", "c2")]
    await import_rates(stack.database, csv_rates(varied_deck(rng, 600, everything, dated), "default", None, None))
    root = tmp_path / "decks"
    # replacing two pairs of tenant t: rates changed, kept, added, removed; the other pairs stay as stored
    replaced = varied_deck(rng, 300, [("t", "p1", "c1"), ("t", "p2", "c2")], dated)
    result = await import_rates(stack.database, csv_rates(replaced, "default", None, None), replace=True,
                                build=decks.ImportBuild(root))
    assert result.replaced > 0 and result.built[0].tenant == "t"
    await assert_built_as_postgresql_builds(stack, result, tmp_path)
    # merged without replace, in both tenants
    result = await import_rates(stack.database, csv_rates(varied_deck(rng, 300, everything, dated), "default", None,
                                                          None), build=decks.ImportBuild(root))
    await assert_built_as_postgresql_builds(stack, result, tmp_path)
    # pairs without rates yet (the plain insert), beside the tenant's stored ones
    fresh = varied_deck(rng, 200, [("t", "p3", "c3"), ("t", "p3", "c1")], dated)
    result = await import_rates(stack.database, csv_rates(fresh, "default", None, None), build=decks.ImportBuild(root))
    await assert_built_as_postgresql_builds(stack, result, tmp_path)
    # the agent maps it (the newest local deck covering the activation)
    folder = await decks.database_folder(stack.database, root)
    assert decks.local_deck(folder, "t", result.seq) == result.built[0].folder


async def test_a_failed_import_activates_nothing_it_built(stack, tmp_path, monkeypatch):
    from agent.store import decks

    monkeypatch.setattr(importer, "OVERLAY_LIMIT", 5)
    await stack.load(catalog(prepaid("a")))
    seq = await stack.database.fetchval("SELECT max(seq) FROM catalog_changes")
    started = []

    async def failing_check(self, connection, own):
        started.append(list(self._builds))
        raise RuntimeError("the merge failed")

    monkeypatch.setattr(decks.ImportBuild, "check", failing_check)
    with pytest.raises(RuntimeError, match="the merge failed"):
        await import_rates(stack.database, csv_rates(deck(50), "default", "p2", "c1"),
                           build=decks.ImportBuild(tmp_path / "decks"))
    assert started == [["default"]]  # it was building when the import failed
    assert await stack.database.fetchval("SELECT count(*) FROM pricelist_rates WHERE prefix LIKE '3900%'") == 0
    assert await stack.database.fetchval("SELECT max(seq) FROM catalog_changes") == seq
    assert [path for path in (tmp_path / "decks").rglob("meta.json")] == []
    # bad rows are refused with their line before anything is read or built
    monkeypatch.undo()
    monkeypatch.setattr(importer, "OVERLAY_LIMIT", 5)
    with pytest.raises(ImportError_, match="line 52: rate must be an integer"):
        await import_rates(stack.database, csv_rates([*deck(50), "4401,x,60,0,0,bad\n"], "default", "p2", "c1"),
                           build=decks.ImportBuild(tmp_path / "decks"))
    assert await stack.database.fetchval("SELECT max(seq) FROM catalog_changes") == seq
    assert [path for path in (tmp_path / "decks").rglob("meta.json")] == []


async def test_a_rate_changed_by_another_writer_during_the_import_leaves_the_deck_to_a_build_from_postgresql(
        stack, tmp_path, monkeypatch):
    import asyncpg

    from agent.store import changes, decks

    monkeypatch.setattr(importer, "OVERLAY_LIMIT", 5)
    await stack.load(catalog(prepaid("a")))
    start = decks.ImportBuild.start

    async def start_then_another_writer(self, connection, tenant, rates):
        await start(self, connection, tenant, rates)
        other = await asyncpg.connect(stack.database_url)
        try:
            async with other.transaction():
                await other.execute("UPDATE pricelist_rates SET rate = 77 WHERE pricelist_tag = 'p2' AND carrier_tag = 'c2'")
                await changes.record(other, tenant, "rate", ["p2", "c2", "39"])
        finally:
            await other.close()

    monkeypatch.setattr(decks.ImportBuild, "start", start_then_another_writer)
    result = await import_rates(stack.database, csv_rates(deck(50), "default", "p2", "c1"),
                                build=decks.ImportBuild(tmp_path / "decks"))
    assert (result.rows, result.built, result.tenants) == (50, [], {"default"})  # built from PostgreSQL instead
    assert await stack.database.fetchval("SELECT count(*) FROM catalog_changes WHERE kind = 'deck'") == 0
    assert [path for path in (tmp_path / "decks").rglob("meta.json")] == []


async def test_an_import_inside_the_callers_transaction_leaves_the_deck_to_a_build_from_postgresql(stack, tmp_path,
                                                                                                     monkeypatch):
    from agent.store import decks

    monkeypatch.setattr(importer, "OVERLAY_LIMIT", 5)
    await stack.load(catalog(prepaid("a")))
    async with stack.database.transaction():  # its commit is not the import's: nothing activated before it
        result = await import_rates(stack.database, csv_rates(deck(50), "default", "p2", "c1"),
                                    build=decks.ImportBuild(tmp_path / "decks"))
    assert (result.rows, result.built, result.tenants) == (50, [], {"default"})
    assert not (tmp_path / "decks").exists()


# Large decks of one pricelist swapped in as its partition (importer._Swap, migration 012). SWAP_MIN is
# lowered so that small decks take that path.

async def _partition_of(database, pricelist: str) -> str | None:
    return await database.fetchval(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'pricelist_rates'::regclass AND c.relname = pricelist_rates_partition($1)", pricelist)


@pytest.mark.parametrize("dated", [True, False])
async def test_a_swapped_deck_keeps_what_it_does_not_name_and_builds_the_deck_postgresql_gives(
        stack, tmp_path, monkeypatch, dated):
    from agent.store import decks

    monkeypatch.setattr(importer, "OVERLAY_LIMIT", 20)
    monkeypatch.setattr(importer, "SWAP_MIN", 1)
    rng = random.Random(12)
    await stack.load(varied_catalog())
    everything = [(tenant, p, c) for tenant in ("t", "u") for p in ("p1", "p2") for c in ("c1", "c2")]
    await import_rates(stack.database, csv_rates(varied_deck(rng, 600, everything, dated), "default", None, None))
    root = tmp_path / "decks"
    query = (f"SELECT {', '.join(_COLUMNS)} FROM pricelist_rates WHERE pricelist_tag <> 'p2'"
             f" ORDER BY {', '.join(_COLUMNS)}")
    others = await stack.database.fetch(query)
    # one pricelist (decimal prices), replaced in two pairs of two tenants: the other pairs are copied
    replaced = varied_deck(rng, 300, [("t", "p2", "c1"), ("u", "p2", "c2")], dated)
    result = await import_rates(stack.database, csv_rates(replaced, "default", None, None), replace=True,
                                build=decks.ImportBuild(root))
    assert result.swapped and result.replaced > 0 and await _partition_of(stack.database, "p2")
    await assert_built_as_postgresql_builds(stack, result, tmp_path)
    # merged without replace (rates it does not name kept), into the partition swapped in before
    result = await import_rates(stack.database, csv_rates(varied_deck(rng, 300, [
        ("t", "p2", "c1"), ("t", "p2", "c2"), ("u", "p2", "c1")], dated), "default", None, None),
        build=decks.ImportBuild(root))
    assert result.swapped
    await assert_built_as_postgresql_builds(stack, result, tmp_path)
    # a pricelist without rates yet
    result = await import_rates(stack.database, csv_rates(varied_deck(rng, 200, [("t", "p3", "c3"), ("u", "p3", "c1")],
                                                                      dated), "default", None, None),
                                build=decks.ImportBuild(root))
    assert result.swapped and await _partition_of(stack.database, "p3")
    await assert_built_as_postgresql_builds(stack, result, tmp_path)
    assert await stack.database.fetch(query.replace("<> 'p2'", "NOT IN ('p2', 'p3')")) == others


@pytest.mark.parametrize("first", ["p1", "p3"])
async def test_a_deck_of_several_pricelists_swaps_the_largest_and_writes_the_others_in_place(
        stack, tmp_path, monkeypatch, caplog, first):
    """The COPY splits the deck by its first row's pricelist (p1: the largest, right; p3: a small one, wrong,
    so the rows are put back in one table and the others taken out by a scan). Either way the same rates are
    stored, and the same deck built, as when the deck is written in place."""
    from agent.store import decks

    monkeypatch.setattr(importer, "OVERLAY_LIMIT", 20)
    rng = random.Random(13)
    await stack.load(varied_catalog())
    header, *rows = varied_deck(rng, 400, [("t", "p1", "c1"), ("t", "p1", "c2"), ("t", "p1", "c3"),
                                           ("t", "p3", "c1"), ("u", "p1", "c1")])
    lead = next(row for row in rows if row.split(",")[1] == first)
    lines = [header, lead, *(row for row in rows if row is not lead)]
    query = f"SELECT {', '.join(_COLUMNS)} FROM pricelist_rates ORDER BY {', '.join(_COLUMNS)}"
    written = await import_rates(stack.database, csv_rates(lines, "default", None, None))
    assert not written.swapped
    in_place = await stack.database.fetch(query)
    await stack.database.execute("DELETE FROM pricelist_rates")
    monkeypatch.setattr(importer, "SWAP_MIN", 100)
    with caplog.at_level("INFO", logger="agent.store.importer"):
        result = await import_rates(stack.database, csv_rates(lines, "default", None, None),
                                    build=decks.ImportBuild(tmp_path / "decks"))
    assert result.swapped and result.rows == written.rows and await _partition_of(stack.database, "p1")
    assert ("copied apart" if first == "p1" else "taken out of the deck's table") in caplog.text
    assert await stack.database.fetch(query) == in_place
    assert not await stack.database.fetch(  # the deck's own tables gone (the swapped one renamed)
        "SELECT 1 FROM pg_class WHERE relkind IN ('r', 'p') AND relname LIKE 'rate_fresh%'")
    await assert_built_as_postgresql_builds(stack, result, tmp_path)


def _spy_builds(monkeypatch) -> list[str]:
    """Which way each build of an import read its rates: "table" (the import's table read back) or "stream"
    (the deck's rows as they went to COPY, decks.ImportBuild.start_stream)."""
    from agent.store import decks

    calls: list[str] = []
    start, start_stream = decks.ImportBuild.start, decks.ImportBuild.start_stream

    async def from_table(self, *args):
        calls.append("table")
        return await start(self, *args)

    async def from_stream(self, *args):
        calls.append("stream")
        replaced = await start_stream(self, *args)

        def failed(build) -> None:  # it falls back to the table quietly: a test of the stream sees it here
            if not build.cancelled() and build.exception() is not None:
                calls.append("stream failed")

        self._builds[args[1]][0].add_done_callback(failed)
        return replaced

    monkeypatch.setattr(decks.ImportBuild, "start", from_table)
    monkeypatch.setattr(decks.ImportBuild, "start_stream", from_stream)
    return calls


@pytest.mark.parametrize("dated", [True, False])
async def test_a_swapped_deck_of_one_tenant_is_built_from_its_rows_as_they_go_to_copy(
        stack, tmp_path, monkeypatch, dated):
    """No read of the table back: the lines COPY takes as they are and the rows the importer parsed (dates,
    decimal prices, quoted texts) are built as they stream, duplicates dropped before the unique index
    (the last one kept), the stored rates the import keeps read from PostgreSQL and joined in."""
    from agent.store import decks

    monkeypatch.setattr(importer, "OVERLAY_LIMIT", 20)
    monkeypatch.setattr(importer, "SWAP_MIN", 1)
    calls = _spy_builds(monkeypatch)
    rng = random.Random(14)
    await stack.load(varied_catalog())
    stored = [("t", p, c) for p in ("p1", "p2") for c in ("c1", "c2")] + [("u", "p1", "c1"), ("u", "p2", "c2")]
    await import_rates(stack.database, csv_rates(varied_deck(rng, 600, stored, dated), "default", None, None))
    root = tmp_path / "decks"
    query = f"SELECT {', '.join(_COLUMNS)} FROM pricelist_rates WHERE tenant = 'u' ORDER BY {', '.join(_COLUMNS)}"
    other_tenant = await stack.database.fetch(query)
    for pairs, replace in (
            ([("t", "p1", "c1"), ("t", "p1", "c2")], True),  # replaced: other pairs and pricelists kept
            ([("t", "p2", "c1"), ("t", "p2", "c3")], False),  # merged: the rates it does not name kept
            ([("t", "p1", "c1")] * 6 + [("t", "p3", "c3")], False),  # the small pricelist p3 written in place
            ([("t", "p3", "c1"), ("t", "p3", "c2")], True)):  # swapped into the partition made just before
        calls.clear()
        lines = varied_deck(rng, 300, pairs, dated)
        result = await import_rates(stack.database, csv_rates(lines, "default", None, None), replace=replace,
                                    build=decks.ImportBuild(root))
        assert result.swapped and calls == ["stream"]
        await assert_built_as_postgresql_builds(stack, result, tmp_path)
    assert await stack.database.fetch(query) == other_tenant


async def test_a_plain_deck_streamed_keeps_the_last_duplicate_and_builds_what_postgresql_gives(
        stack, tmp_path, monkeypatch):
    """Lines that all go to COPY as they are (the generated deck's shape), duplicates among them."""
    from agent.store import decks

    monkeypatch.setattr(importer, "OVERLAY_LIMIT", 20)
    monkeypatch.setattr(importer, "SWAP_MIN", 1)
    calls = _spy_builds(monkeypatch)
    await stack.load(catalog(prepaid("a")))
    rng = random.Random(15)
    lines = ["pricelist_tag,carrier_tag,prefix,connect_fee,rate,rate_increment,interval_start,description\n"]
    texts = ["Italy", "UK", "", "a back\\slash"]
    for _ in range(3000):
        lines.append(f"p1,c{rng.randint(1, 2)},{rng.choice(['39', '+39', '4420'])}{rng.randrange(300)},0,"
                     f"{rng.randint(1, 90)},60,0,{rng.choice(texts)}\n")
    result = await import_rates(stack.database, csv_rates(lines, "default", None, None), replace=True,
                                build=decks.ImportBuild(tmp_path / "decks"))
    assert result.swapped and calls == ["stream"]
    await assert_built_as_postgresql_builds(stack, result, tmp_path)
    last = {}
    for line in lines[1:]:
        _, carrier, prefix, _, rate, *_ = line.split(",")
        last[(carrier, prefix)] = int(rate)
    assert {(r["carrier_tag"], r["prefix"]): r["rate"] for r in await stack.database.fetch(
        "SELECT carrier_tag, prefix, rate FROM pricelist_rates WHERE pricelist_tag = 'p1'")} == last


@pytest.mark.parametrize("elsewhere", [False, True])
async def test_a_deck_of_one_tenant_resolved_while_postgresql_writes_its_other_pricelists_builds_what_postgresql_gives(
        stack, tmp_path, monkeypatch, elsewhere):
    """A deck without a tenant column: its rows of the pricelist it swaps in are resolved (and their duplicates
    found) as soon as the largest pricelist is known (decks.ImportBuild.resolve_early), the small pricelists
    written in place meanwhile; the pairs come from the rows as they went to COPY. When the early resolve was
    for other rows (`elsewhere`: another pricelist), the build resolves again: the same deck either way."""
    from agent.store import decks

    monkeypatch.setattr(importer, "OVERLAY_LIMIT", 20)
    monkeypatch.setattr(importer, "SWAP_MIN", 100)
    calls = _spy_builds(monkeypatch)
    early = decks.ImportBuild.resolve_early

    async def resolve_early(self, connection, tenant, stream, tag, decode):
        calls.append(f"early {tag}")
        await early(self, connection, tenant, stream, "p3" if elsewhere else tag, decode)

    monkeypatch.setattr(decks.ImportBuild, "resolve_early", resolve_early)
    rng = random.Random(16)
    await stack.load(varied_catalog())
    root = tmp_path / "decks"
    for pairs, replace in (([("t", "p2", "c1")] * 4 + [("t", "p1", "c2"), ("t", "p3", "c3")], False),
                           ([("t", "p2", "c1"), ("t", "p2", "c2"), ("t", "p1", "c1")], True)):
        calls.clear()
        lines = [line.split(",", 1)[1] for line in varied_deck(rng, 500, pairs)]  # no tenant column
        result = await import_rates(stack.database, csv_rates(lines, "t", None, None), replace=replace,
                                    build=decks.ImportBuild(root))
        assert result.swapped and await _partition_of(stack.database, "p2")
        assert calls == ["early p2", "stream"]
        await assert_built_as_postgresql_builds(stack, result, tmp_path)


async def test_rows_the_stream_cannot_parse_leave_the_build_to_the_read_of_the_table(stack, tmp_path, monkeypatch):
    from agent.pricing import deck as deck_files
    from agent.store import decks

    monkeypatch.setattr(importer, "OVERLAY_LIMIT", 20)
    monkeypatch.setattr(importer, "SWAP_MIN", 1)
    calls = _spy_builds(monkeypatch)

    def unparsable(self, data, numbers):
        raise ValueError("not plain lines")

    monkeypatch.setattr(deck_files.CsvRows, "_line_block", unparsable)
    await stack.load(catalog(prepaid("a")))
    result = await import_rates(stack.database, csv_rates(deck(500), "default", "p2", "c1"),
                                build=decks.ImportBuild(tmp_path / "decks"))
    assert result.swapped and result.rows == 500 and calls == ["table"]
    await assert_built_as_postgresql_builds(stack, result, tmp_path)

async def test_a_swapped_deck_stores_what_an_insert_stores_and_keeps_the_last_duplicate(stack, monkeypatch):
    await stack.load(catalog(prepaid("a")))
    lines = [HEADER, "44,1,1,0,0,first\n", '45,2,60,0,0,"quoted, text"\n', "46,,,,,\n", "44,2,1,0,0,last\n",
             "47,3,60,1,30,x\n"]
    await import_rates(stack.database, csv_rates(lines, "default", "p2", "c1"))
    query = (f"SELECT {', '.join(_COLUMNS)}, weekdays, time_start, time_end FROM pricelist_rates"
             " WHERE pricelist_tag = 'p2' ORDER BY prefix, carrier_tag")
    inserted = await stack.database.fetch(query)
    await stack.database.execute("DELETE FROM pricelist_rates WHERE pricelist_tag = 'p2' AND carrier_tag = 'c1'")
    monkeypatch.setattr(importer, "SWAP_MIN", 1)
    monkeypatch.setattr(importer, "OVERLAY_LIMIT", 2)
    result = await import_rates(stack.database, csv_rates(lines, "default", "p2", "c1"))
    assert result.swapped and result.rows == 5
    assert await stack.database.fetch(query) == inserted  # c2's rate of p2 copied, 44 is the last one
    # the partition takes single-rate writes as the table did: an insert, an update, a delete
    await stack.database.execute("INSERT INTO pricelist_rates (pricelist_tag, carrier_tag, prefix, rate)"
                                 " VALUES ('p2', 'c1', '48', 9)")
    await stack.database.execute("UPDATE pricelist_rates SET rate = 8 WHERE pricelist_tag = 'p2' AND prefix = '45'")
    await stack.database.execute("DELETE FROM pricelist_rates WHERE pricelist_tag = 'p2' AND prefix = '46'")
    assert [tuple(r) for r in await stack.database.fetch(
        "SELECT prefix, rate FROM pricelist_rates WHERE pricelist_tag = 'p2' AND carrier_tag = 'c1' ORDER BY prefix")] \
        == [("44", 2), ("45", 8), ("47", 3), ("48", 9)]
    with pytest.raises(asyncpg.UniqueViolationError):
        await stack.database.execute("INSERT INTO pricelist_rates (pricelist_tag, carrier_tag, prefix)"
                                     " VALUES ('p2', 'c1', '48')")
    # a rate moved out of the partition (another pricelist) has its references checked all the same
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="pricelist_rates_tenant_pricelist_tag_fkey"):
        await stack.database.execute("UPDATE pricelist_rates SET pricelist_tag = 'nope' WHERE pricelist_tag = 'p2'")
    await stack.database.execute("UPDATE pricelist_rates SET pricelist_tag = 'p1' WHERE prefix = '48'")
    assert await stack.database.fetchval("SELECT pricelist_tag FROM pricelist_rates WHERE prefix = '48'") == "p1"
    await stack.database.execute("UPDATE pricelist_rates SET pricelist_tag = 'p2' WHERE prefix = '48'")
    # a bad row still refuses the whole deck, nothing changed
    with pytest.raises(ImportError_, match="line 3: rate must be an integer"):
        await import_rates(stack.database, csv_rates([HEADER, "49,1,1,0,0,x\n", "50,x,1,0,0,x\n"], "default", "p2",
                                                     "c1"), replace=True)
    assert await stack.database.fetchval("SELECT count(*) FROM pricelist_rates WHERE pricelist_tag = 'p2'") == 5


async def test_a_repeatable_read_reader_racing_a_swap_sees_the_old_deck_or_the_new_one_whole(stack, monkeypatch):
    from agent.store import changes

    monkeypatch.setattr(importer, "SWAP_MIN", 1)
    monkeypatch.setattr(importer, "OVERLAY_LIMIT", 5)
    await stack.load(catalog(prepaid("a")))
    await import_rates(stack.database, csv_rates(deck(300), "default", "p2", "c1"))
    count = "SELECT count(*), sum(rate) FROM pricelist_rates WHERE pricelist_tag = 'p2'"
    old = tuple(await stack.database.fetchrow(count))
    reader = await asyncpg.connect(stack.database_url)
    try:
        transaction = reader.transaction(isolation="repeatable_read", readonly=True)
        await transaction.start()
        await changes.lock_rates(reader)
        await reader.fetchval("SELECT 1")  # the snapshot, before the swap
        swapping = asyncio.ensure_future(import_rates(stack.database, csv_rates(deck(500, seed=8), "default", "p2",
                                                                                "c1"), replace=True))
        for _ in range(600):  # until the swap waits for the reader's lock (bounded: 30 s)
            waiting = await reader.fetchval(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'pricelist_rates'::regclass")
            if waiting or swapping.done():
                break
            await asyncio.sleep(0.05)
        assert waiting and not swapping.done()
        assert tuple(await reader.fetchrow(count)) == old  # the old deck, whole, while the swap waits
        await transaction.commit()
        result = await asyncio.wait_for(swapping, 30)
        assert result.swapped
        async with reader.transaction(isolation="repeatable_read", readonly=True):
            await changes.lock_rates(reader)
            new = tuple(await reader.fetchrow(count))
        assert new[0] == 501 and new != old  # the new deck, whole (and c2's rate of p2)
    finally:
        await reader.close()


async def test_a_rate_written_by_another_writer_during_a_swap_is_kept_by_writing_the_deck_in_place(stack, monkeypatch):
    from agent.store import changes

    monkeypatch.setattr(importer, "SWAP_MIN", 1)
    monkeypatch.setattr(importer, "OVERLAY_LIMIT", 5)
    await stack.load(catalog(prepaid("a")))
    exclusive = importer._Swap._exclusive

    calls = []

    async def another_writer_first(self, connection):
        calls.append(self.tag)
        other = await asyncpg.connect(stack.database_url)
        try:
            async with other.transaction():
                await other.execute("UPDATE pricelist_rates SET rate = 77 WHERE pricelist_tag = 'p2' AND carrier_tag = 'c2'")
                await changes.record(other, "default", "rate", ["p2", "c2", "39"])
        finally:
            await other.close()
        await exclusive(self, connection)

    monkeypatch.setattr(importer._Swap, "_exclusive", another_writer_first)
    result = await import_rates(stack.database, csv_rates(deck(50), "default", "p2", "c1"))
    assert calls and not result.swapped and result.rows == 50
    assert await stack.database.fetchval(
        "SELECT rate FROM pricelist_rates WHERE pricelist_tag = 'p2' AND carrier_tag = 'c2'") == 77
    assert await stack.database.fetchval("SELECT count(*) FROM pricelist_rates WHERE pricelist_tag = 'p2'") == 51


async def test_migration_012_moves_the_stored_rates_into_partitions(postgres_server):
    from agent.store import database

    admin = await asyncpg.connect(postgres_server.url)
    name = "migration_012_test"
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name}")
        await admin.execute(f"CREATE DATABASE {name}")
        connection = await asyncpg.connect(postgres_server.url.rsplit("/", 1)[0] + f"/{name}")
        try:
            await connection.execute("CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
                                     " applied_at timestamptz NOT NULL DEFAULT now())")
            for number, file, sql in database.migrations():
                if number < 12:  # the schema as it was, holding rates
                    await connection.execute(sql)
                    await connection.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                                             number, file)
            await connection.execute("INSERT INTO carriers (carrier_tag) VALUES ('c1'), ('c2')")
            await connection.execute("INSERT INTO pricelists (pricelist_tag) VALUES ('p1'), ('p2'), ('p3')")
            await connection.execute(
                "INSERT INTO pricelist_rates (pricelist_tag, carrier_tag, prefix, rate, source_prefix, weekdays)"
                " SELECT 'p' || (1 + n % 2), 'c' || (1 + n % 3 % 2), (1000 + n)::text, n, '', n % 2 FROM"
                " generate_series(1, 3000) n")
            query = "SELECT * FROM pricelist_rates ORDER BY id"
            before = await connection.fetch(query)
            assert "012_rate_partitions.sql" in await database.migrate(connection)
            assert await connection.fetch(query) == before
            partitions = await connection.fetch(
                "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound,"
                " (SELECT count(*) FROM pricelist_rates r WHERE r.tableoid = c.oid) AS n FROM pg_inherits i"
                " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'pricelist_rates'::regclass ORDER BY 2")
            assert [(r["bound"], r["n"]) for r in partitions] == [
                ("DEFAULT", 0), ("FOR VALUES IN ('p1')", 1500), ("FOR VALUES IN ('p2')", 1500)]
            # the references and the cascades still hold
            with pytest.raises(asyncpg.ForeignKeyViolationError, match="pricelist_rates_tenant_carrier_tag_fkey"):
                await connection.execute("INSERT INTO pricelist_rates (pricelist_tag, carrier_tag, prefix)"
                                         " VALUES ('p3', 'nope', '1')")
            await connection.execute("INSERT INTO pricelist_rates (pricelist_tag, carrier_tag, prefix)"
                                     " VALUES ('p3', 'c1', '1')")  # a pricelist of its own yet: the default
            await connection.execute("DELETE FROM carriers WHERE carrier_tag = 'c2'")
            assert await connection.fetchval("SELECT count(*) FROM pricelist_rates") == 2001
        finally:
            await connection.close()
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name}")
        await admin.close()

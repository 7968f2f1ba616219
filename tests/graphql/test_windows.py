"""Time windows end to end: peak / off-peak rates imported from a CSV deck and a JSON catalog, written and
read through GraphQL (the pricelist's timezone too), calls priced across a boundary segment by segment and
explained per window, and bad windows refused with their line and column or a GraphQL error, nothing
imported."""

from __future__ import annotations

import pytest

from agent.store.importer import ImportError_, csv_rates, import_rates
from tests.test_transaction import at, catalog, post, prepaid, records

# T0 (tests/test_transaction.py) is Tuesday 2030-01-01 10:00 UTC: the peak below ends at 10:02 UTC
PEAK = {"pricelist_tag": "p1", "carrier_tag": "c1", "prefix": "39", "rate": 10, "rate_increment": 60,
        "weekdays": "mon-fri", "time_start": "08:00", "time_end": "10:02"}
BASE = {"pricelist_tag": "p1", "carrier_tag": "c1", "prefix": "39", "rate": 2, "rate_increment": 60}


async def test_a_call_across_the_end_of_the_peak_is_charged_per_segment_and_explained_per_window(gql, stack):
    api = await gql(catalog(prepaid("a", 100), rates=[BASE, PEAK]))
    client = api.client
    # authorized at 10:00, answered at once, ended after 3 minutes: 2 peak minutes (20) and one off-peak (2)
    answer = await post(client, "authorization", transaction_tag="x", account_tag="a", destination="39061234",
                        timestamp_auth=at(0))
    assert answer["authorized"] is True
    # the grant walks the segments: 2 peak minutes (20), then 100 - 20 pays 40 off-peak minutes
    assert answer["max_available_units"] == 120 + 40 * 60
    await post(client, "begin", transaction_tag="x", account_tag="a", destination="39061234", timestamp_begin=at(0))
    assert (await post(client, "end", transaction_tag="x", timestamp_end=at(180)))["ok"] is True
    assert await stack.balance("a") == 100 - 22
    stored = (await records(stack, client, "x"))["a"]
    assert stored["fee"] == 22 and stored["destination_rate"]["weekdays"] == "mon-fri"
    assert stored["destination_rate"]["time_end"] == "10:02"
    record = (await api('{ Transaction(transaction_tag:"x", account_tag:"a")'
                        ' { fee explain { fee segments { kind seconds amount } } } }'))["Transaction"]
    assert record["explain"] == {"fee": 22, "segments": [
        {"kind": "connect_fee", "seconds": 0, "amount": 0}, {"kind": "window", "seconds": 120, "amount": 20},
        {"kind": "window", "seconds": 60, "amount": 2}]}
    # after the peak, the base rate alone
    await post(client, "authorization", transaction_tag="y", account_tag="a", destination="39061234",
               timestamp_auth=at(600))
    await post(client, "begin", transaction_tag="y", account_tag="a", destination="39061234", timestamp_begin=at(600))
    await post(client, "end", transaction_tag="y", timestamp_end=at(780))
    assert await stack.balance("a") == 100 - 22 - 6


async def test_windowed_rates_are_written_read_and_named_through_graphql(gql):
    api = await gql(catalog(prepaid("a", 10_000), rates=[BASE]))
    key = 'pricelist_tag:"p1", carrier_tag:"c1", prefix:"39"'
    fields = "rate weekdays time_start time_end"
    data = await api(f'mutation {{ createPricelistRate({key}, rate:10, weekdays:"MON-fri", time_start:"08:00",'
                     f' time_end:"18:00") {{ {fields} }} }}')
    assert data["createPricelistRate"] == {"rate": 10, "weekdays": "mon-fri", "time_start": "08:00",
                                           "time_end": "18:00"}
    data = await api(f'{{ PricelistRate({key}) {{ {fields} }} peak: PricelistRate({key}, weekdays:"mon-fri",'
                     f' time_start:"08:00", time_end:"18:00") {{ rate }} }}')
    assert data == {"PricelistRate": {"rate": 2, "weekdays": None, "time_start": None, "time_end": None},
                    "peak": {"rate": 10}}
    await api(f'mutation {{ upsertPricelistRate({key}, weekdays:"sat,sun", rate:1) {{ rate }} }}')
    data = await api('{ allPricelistRates(sortField:"rate") { rate weekdays } }')
    assert data["allPricelistRates"] == [{"rate": 1, "weekdays": "sat,sun"}, {"rate": 2, "weekdays": None},
                                         {"rate": 10, "weekdays": "mon-fri"}]
    # a pricelist's timezone, checked; the peak is judged there (08:00-18:00 Tokyo is 23:00-09:00 UTC)
    data = await api('mutation { updatePricelist(pricelist_tag:"p1", timezone:"Asia/Tokyo") { timezone } }')
    assert data["updatePricelist"] == {"timezone": "Asia/Tokyo"}
    _, errors = await api.error('mutation { updatePricelist(pricelist_tag:"p1", timezone:"Mars/Olympus") { id } }')
    assert errors == ["timezone must be an IANA time zone name such as Europe/Rome, got 'Mars/Olympus'!"]
    deleted = await api(f'mutation {{ deletePricelistRate({key}, weekdays:"sat,sun") {{ rate }} }}')
    assert deleted["deletePricelistRate"] == {"rate": 1}


@pytest.mark.parametrize("fields, message", [
    ('weekdays:"funday"', "weekdays must be days among mon,tue,wed,thu,fri,sat,sun written as mon-fri or sat,sun,"
                          " got 'funday'!"),
    ('time_start:"8:00"', "time_start must be a time of day written HH:MM or HH:MM:SS, got '8:00'!"),
    ('time_end:"25:00"', "time_end must be a time of day between 00:00 and 24:00, got '25:00'!"),
    ('time_start:"08:00", time_end:"08:00"', "time_end must differ from time_start (an end below the start wraps"
                                             " over midnight)!"),
])
async def test_a_bad_window_is_refused_naming_the_field(gql, fields, message):
    api = await gql(catalog(prepaid("a")))
    _, errors = await api.error(f'mutation {{ createPricelistRate(pricelist_tag:"p1", carrier_tag:"c1",'
                                f' prefix:"44", rate:1, {fields}) {{ id }} }}')
    assert errors == [message]
    assert (await api('{ allPricelistRates(filter:{prefix:"44"}) { id } }'))["allPricelistRates"] == []


HEADER = "prefix,rate,rate_increment,weekdays,time_start,time_end\n"


async def test_a_csv_deck_with_windows_is_imported_and_one_without_the_columns_as_before(stack):
    await stack.load(catalog(prepaid("a")))
    await import_rates(stack.database, csv_rates(
        [HEADER, "44,10,60,mon-fri,08:00,18:00\n", "44,2,60,,,\n", "44,1,60,\"sat,sun\",,\n",
         "45,3,60,,22:00,06:00\n", "46,3,60,,,\n"], "default", "p1", "c1"))
    await import_rates(stack.database, csv_rates(["prefix,rate\n", "47,5\n"], "default", "p1", "c1"))
    rows = await stack.database.fetch("SELECT prefix, rate, weekdays, time_start, time_end FROM pricelist_rates"
                                      " WHERE prefix LIKE '4%' ORDER BY prefix, rate")
    assert [tuple(row.values()) for row in rows] == [
        ("44", 1, 0b1100000, 0, 86400), ("44", 2, 0, 0, 86400), ("44", 10, 0b0011111, 8 * 3600, 18 * 3600),
        ("45", 3, 0, 22 * 3600, 6 * 3600), ("46", 3, 0, 0, 86400), ("47", 5, 0, 0, 86400)]


@pytest.mark.parametrize("line, message", [
    ("44,1,60,funday,,\n", "line 3: weekdays must be days among"),
    ("44,1,60,,8:00,\n", "line 3: time_start must be a time of day written HH:MM"),
    ("44,1,60,,08:00,08:00\n", "line 3: time_end must differ from time_start"),
    ("44,1,60,,,24:01\n", "line 3: time_end must be a time of day between 00:00 and 24:00"),
])
async def test_a_bad_window_in_a_csv_deck_names_its_line_and_column_and_nothing_is_imported(stack, line, message):
    await stack.load(catalog(prepaid("a")))
    with pytest.raises(ImportError_) as raised:
        await import_rates(stack.database, csv_rates([HEADER, "43,1,60,mon,,\n", line], "default", "p1", "c1"))
    assert str(raised.value).startswith(message)
    assert await stack.database.fetchval("SELECT count(*) FROM pricelist_rates WHERE prefix LIKE '4%'") == 0


async def test_a_quote_across_the_boundary_explains_each_window(gql):
    api = await gql(catalog(prepaid("a", 1000), rates=[BASE, PEAK]))
    data = await api('{ quote(account_tag:"a", destination:"39061234", duration:180, at:"2030-01-01T10:00:00Z")'
                     ' { fee rate { rate weekdays time_start time_end }'
                     ' explain { fee segments { kind seconds amount } } } }')
    assert data["quote"]["fee"] == 22
    assert data["quote"]["rate"] == {"rate": 10, "weekdays": "mon-fri", "time_start": "08:00", "time_end": "10:02"}
    assert data["quote"]["explain"]["segments"] == [
        {"kind": "connect_fee", "seconds": 0, "amount": 0}, {"kind": "window", "seconds": 120, "amount": 20},
        {"kind": "window", "seconds": 60, "amount": 2}]


async def test_a_deck_built_from_postgresql_keeps_every_window_and_timezone(stack, tmp_path):
    """The deck's COPY path (deck.TextRows, format 6) gives the rates read_rates gives, windows and zones."""
    from agent.pricing import deck
    from agent.store import decks

    await stack.load(catalog(prepaid("a")))
    await stack.database.execute("UPDATE pricelists SET timezone = 'Europe/Rome' WHERE pricelist_tag = 'p2'")
    await import_rates(stack.database, csv_rates(
        [HEADER, "44,10,60,mon-fri,08:00,18:00\n", "44,2,60,,,\n", "45,3,60,\"sat,sun\",22:00,06:00\n"],
        "default", "p1", "c1"))
    await import_rates(stack.database, csv_rates([HEADER, "44,7,60,fri,,12:30:15\n"], "default", "p2", "c1"))
    async with stack.database.transaction():
        columns = await decks.read_columns(stack.database, "default")
    built = deck.Deck(deck.build_columns(tmp_path / "1", "default", columns, 1).folder)
    expected = sorted((r for r in await decks.read_rates(stack.database, "default") if r.prefix in ("44", "45")),
                      key=lambda r: r.order_key())
    found = sorted((r for key in ("44", "45") for r in built.group(False, key)), key=lambda r: r.order_key())
    assert found == expected
    assert {(r.pricelist_tag, r.weekdays, r.time_start, r.time_end, r.timezone) for r in found if r.windowed} == {
        ("p1", 0b0011111, 8 * 3600, 18 * 3600, "UTC"), ("p1", 0b1100000, 22 * 3600, 6 * 3600, "UTC"),
        ("p2", 0b0010000, None, 12 * 3600 + 30 * 60 + 15, "Europe/Rome")}
    assert built.dated and built.deck_keys("44") is None  # routed at the call's moment, over Rate objects


async def test_a_pricelists_timezone_from_the_json_catalog_judges_its_windows(agent, stack):
    document = catalog(prepaid("a", 100), rates=[BASE, {**PEAK, "time_end": "11:02"}])  # 11:02 in Rome: 10:02 UTC
    document["pricelists"][0]["timezone"] = "Europe/Rome"
    client = await agent(document)
    await post(client, "authorization", transaction_tag="x", account_tag="a", destination="39061234",
               timestamp_auth=at(0))
    await post(client, "begin", transaction_tag="x", account_tag="a", destination="39061234", timestamp_begin=at(0))
    await post(client, "end", transaction_tag="x", timestamp_end=at(180))
    assert await stack.balance("a") == 100 - 22
    assert (await records(stack, client, "x"))["a"]["destination_rate"]["timezone"] == "Europe/Rome"
    with pytest.raises(ImportError_, match="pricelist 'p2': timezone must be an IANA time zone name"):
        await stack.load({"pricelists": [{"pricelist_tag": "p2", "timezone": "Europe/Nowhere"}]})


async def test_rerating_a_windowed_call_prices_it_as_it_was_charged_then_with_the_corrected_peak(gql, stack):
    """Rerating walks the same timeline from the answer: on an unchanged deck nothing differs; after the peak
    price is corrected, only the call's peak seconds are repriced."""
    from agent.keys import DATABASE
    from agent.store.writer import catch_up

    api = await gql(catalog(prepaid("a", 1000), rates=[BASE, PEAK]))
    client = api.client
    # authorized at 10:00, answered 30 s later: 90 s of peak (2 peak minutes, 20) and 1 off-peak minute (2)
    await post(client, "authorization", transaction_tag="x", account_tag="a", destination="39061234",
               timestamp_auth=at(0))
    await post(client, "begin", transaction_tag="x", account_tag="a", destination="39061234", timestamp_begin=at(30))
    await post(client, "end", transaction_tag="x", timestamp_end=at(210))
    assert await stack.balance("a") == 1000 - 22
    async with client.app[DATABASE].acquire() as connection:
        await catch_up(stack.redis, connection)
    rerate = ('mutation ($dry: Boolean) { rerate(from:"2030-01-01T00:00:00Z", to:"2030-01-02T00:00:00Z",'
              ' dry_run:$dry) { examined changed delta calls { old_fee new_fee } } }')
    assert (await api(rerate, dry=True))["rerate"] == {"examined": 1, "changed": 0, "delta": 0, "calls": []}
    await api('mutation { updatePricelistRate(pricelist_tag:"p1", carrier_tag:"c1", prefix:"39", weekdays:"mon-fri",'
              ' time_start:"08:00", time_end:"10:02", rate:7) { rate } }')
    assert (await api(rerate, dry=True))["rerate"] == {"examined": 1, "changed": 1, "delta": -6,
                                                       "calls": [{"old_fee": 22, "new_fee": 16}]}


async def test_a_call_answered_later_in_a_dearer_window_never_costs_more_than_it_reserved(gql, stack):
    """README "How calls are rated": off-peak 2 and peak 10 a minute from 10:02, 25 available, authorized at
    10:01. Walked from 10:01 alone, 25 pays 180 s (2 + 10 + 10), but those 180 s answered at 10:02 cost 30:
    the authorization grants what 25 pays whenever within its TTL the call is answered, and reserves the most
    that costs."""
    peak_later = {**PEAK, "time_start": "10:02", "time_end": "18:00"}
    api = await gql(catalog(prepaid("a", 25), rates=[BASE, peak_later]))
    client = api.client
    quoted = (await api('{ quote(account_tag:"a", destination:"39061234", duration:180,'
                        ' at:"2030-01-01T10:01:00Z") { fee max_available_units } }'))["quote"]
    assert quoted == {"fee": 22, "max_available_units": 120}  # the fee from `at`, the grant as authorized
    answer = await post(client, "authorization", transaction_tag="x", account_tag="a", destination="39061234",
                        timestamp_auth=at(60))
    assert (answer["authorized"], answer["max_available_units"]) == (True, 120)
    assert (await stack.account_state("a"))["reserved"] == 20  # 2 peak minutes, its dearest answer
    await post(client, "begin", transaction_tag="x", account_tag="a", destination="39061234",
               timestamp_begin=at(120))
    assert (await post(client, "end", transaction_tag="x", timestamp_end=at(300)))["ok"] is True
    state = await stack.account_state("a")
    assert (state["balance"], state["reserved"]) == (5, 0)  # charged its 120 s of peak, never below zero
    assert (await records(stack, client, "x"))["a"]["fee"] == 20

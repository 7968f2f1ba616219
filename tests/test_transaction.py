"""Call operations end to end through the REST API, over real Redis and PostgreSQL (spec section 2)."""

import asyncio

import pytest

from agent.store.records import read_records

T0 = "2030-01-01T10:00:00Z"


def at(seconds: float) -> str:
    """An ISO timestamp `seconds` after T0."""
    from datetime import datetime, timedelta, timezone

    return (datetime(2030, 1, 1, 10, tzinfo=timezone.utc) + timedelta(seconds=seconds)).isoformat()


async def post(client, operation: str, **body) -> dict:
    path = "/v1/authorization" if operation == "authorization" else f"/v1/{operation}_transaction"
    reply = await client.post(path, json=body)
    assert reply.status == 200, await reply.text()
    return await reply.json()


async def records(stack, client, tag: str, tenant: str = "default") -> dict[str, dict]:
    from agent.keys import DATABASE

    rows = await read_records(stack.redis, client.app[DATABASE], tenant, tag)
    return {row["account_tag"]: row for row in rows}


def catalog(*accounts: dict, rates=None) -> dict:
    return {
        "carriers": [
            {"carrier_tag": "c1", "host": "10.0.0.1", "port": 5060, "protocol": "UDP"},
            {"carrier_tag": "c2", "host": "gw.example.com", "port": 5061, "protocol": "TCP"},
        ],
        "pricelists": [{"pricelist_tag": "p1"}, {"pricelist_tag": "p2"}],
        "rates": rates or [
            {"pricelist_tag": "p1", "carrier_tag": "c1", "prefix": "39", "rate": 1, "rate_increment": 1},
            {"pricelist_tag": "p1", "carrier_tag": "c2", "prefix": "39", "rate": 2, "rate_increment": 1},
            {"pricelist_tag": "p2", "carrier_tag": "c2", "prefix": "39", "rate": 10, "rate_increment": 1},
        ],
        "accounts": list(accounts),
    }


def prepaid(tag: str, balance: int = 1000, **extra) -> dict:
    return {"account_tag": tag, "type": "PREPAID", "balance": balance, "pricelist_tags": ["p1"], **extra}


def postpaid(tag: str, **extra) -> dict:
    return {"account_tag": tag, "type": "POSTPAID", "pricelist_tags": ["p1"], **extra}


# --- the tutorial (spec section 4, REST form) ---------------------------------------------------------------------

async def test_tutorial_flow_authorize_begin_end_record_rollback(agent, stack, tutorial):
    client = await agent(tutorial)
    auth = await post(client, "authorization", transaction_tag="transaction1", account_tag="100",
                      source="sip:10.0.0.1:5060", destination="39040123123")
    assert (auth["authorized"], auth["max_available_units"], auth["balance"], auth["carriers"]) == (
        True, 300, 100, ["UDP:localhost:5061"])
    record = (await records(stack, client, "transaction1"))["100"]
    assert record["authorized"] is True and record["primary"] is True and record["inbound"] is False
    assert record["destination"] == "39040123123" and record["timestamp_auth"] is not None

    # The call's instants are given, not read off the clock: two requests may land in the same millisecond.
    assert (await post(client, "begin", transaction_tag="transaction1", account_tag="100",
                       source="sip:10.0.0.1:5060", destination="39040123123", timestamp_begin=at(0)))["ok"] is True
    assert (await post(client, "end", transaction_tag="transaction1", account_tag="100",
                       timestamp_end=at(1.5)))["ok"] is True
    assert await stack.balance("100") == 80
    record = (await records(stack, client, "transaction1"))["100"]
    assert record["fee"] == 20 and record["duration"] == 2
    assert record["destination_rate"] == {
        "pricelist_tag": "pricelist1", "carrier_tag": "carrier1", "prefix": "39", "description": "Italy",
        "connect_fee": 0, "rate": 20, "rate_increment": 60, "interval_start": 0}

    # Record is priced from its own timestamps and charged (the original did neither: spec 4.3 #10-#11).
    assert (await post(client, "record", transaction_tag="transaction2", account_tag="100",
                       source="sip:10.0.0.1:5060", destination="39040123123",
                       timestamp_auth="2019-08-15T21:26:15Z", timestamp_begin="2019-08-15T21:26:17Z",
                       timestamp_end="2019-08-15T21:26:55Z"))["ok"] is True
    record = (await records(stack, client, "transaction2"))["100"]
    assert (record["duration"], record["fee"]) == (38, 20)
    assert record["timestamp_begin"].isoformat() == "2019-08-15T21:26:17+00:00"
    assert await stack.balance("100") == 60

    # Rolling back a recorded call removes it and refunds it (the tutorial's documented intent, spec 4.3 #12).
    assert (await post(client, "rollback", transaction_tag="transaction2", account_tag="100"))["ok"] is True
    assert await records(stack, client, "transaction2") == {}
    assert await stack.balance("100") == 80


# --- refusals ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "request_fields, reason, refused_tag",
    [
        ({"account_tag": "ghost", "destination": "39"}, "NOT_FOUND", "ghost"),
        ({"account_tag": "", "destination": "39"}, "NOT_FOUND", None),
        ({"destination": "39"}, "NOT_FOUND", None),
        ({"account_tag": "off", "destination": "39"}, "NOT_ACTIVE", "off"),
        ({"account_tag": "a", "destination": "44123"}, "UNREACHEABLE_DESTINATION", "a"),
        ({"account_tag": "a"}, "UNREACHEABLE_DESTINATION", "a"),
        ({"account_tag": "a", "destination": "39", "destination_account_tag": "ghost"}, "NOT_FOUND", "ghost"),
        ({"account_tag": "a", "destination": "39", "destination_account_tag": "off"}, "NOT_ACTIVE", "off"),
        ({"account_tag": "zero", "destination": "39"}, "BALANCE_INSUFFICIENT", "zero"),
        ({"account_tag": "limited", "destination": "39"}, "TOO_MANY_RUNNING_TRANSACTIONS", "limited"),
        ({"account_tag": "no-out", "destination": "39"}, "TOO_MANY_RUNNING_OUTBOUND_TRANSACTIONS", "no-out"),
        ({"account_tag": "a", "destination": "39", "destination_account_tag": "no-in"},
         "TOO_MANY_RUNNING_INBOUND_TRANSACTIONS", "no-in"),
        ({"account_tag": "child", "destination": "39"}, "BALANCE_INSUFFICIENT", "poor-parent"),
    ],
)
async def test_every_refusal_has_a_reason_and_is_recorded_with_it(agent, stack, request_fields, reason, refused_tag):
    client = await agent(catalog(
        prepaid("a"), prepaid("off", active=False), prepaid("zero", 0),
        prepaid("limited", max_concurrent_transactions=0), prepaid("no-out", max_outbound_transactions=0),
        prepaid("no-in", max_inbound_transactions=0), prepaid("poor-parent", 0),
        prepaid("child", linked_accounts=["poor-parent"]),
    ))
    answer = await post(client, "authorization", transaction_tag="r1", **request_fields)
    assert answer["authorized"] is False
    assert answer["unauthorized_reason"] == reason
    assert answer["unauthorized_account_tag"] == refused_tag
    assert answer["max_available_units"] == 0 and answer["carriers"] == []
    tagged = request_fields.get("account_tag") or request_fields.get("destination_account_tag")
    if tagged:
        record = (await records(stack, client, "r1"))[tagged]
        assert record["authorized"] is False and record["unauthorized_reason"] == reason


async def test_authorized_answers_always_grant_units_and_a_free_rate_grants_the_cap(agent):
    client = await agent(catalog(prepaid("a", 0), rates=[
        {"pricelist_tag": "p1", "carrier_tag": "c1", "prefix": "800", "rate": 0, "connect_fee": 0}]))
    answer = await post(client, "authorization", transaction_tag="f1", account_tag="a", destination="800123")
    assert answer["authorized"] is True and answer["max_available_units"] == 14400


async def test_balance_below_one_increment_is_refused_not_authorized_with_zero_units(agent):
    client = await agent(catalog(prepaid("a", 10), rates=[
        {"pricelist_tag": "p1", "carrier_tag": "c1", "prefix": "39", "rate": 20, "rate_increment": 60}]))
    answer = await post(client, "authorization", transaction_tag="x", account_tag="a", destination="39")
    assert (answer["authorized"], answer["unauthorized_reason"]) == (False, "BALANCE_INSUFFICIENT")


# --- reservations ---------------------------------------------------------------------------------------------------

async def test_an_authorization_reserves_the_cost_of_its_units_and_the_next_call_sees_the_rest(agent, stack):
    client = await agent(catalog(prepaid("a", 100)), reservation_share=50)
    first = await post(client, "authorization", transaction_tag="c1", account_tag="a", destination="39")
    assert (first["max_available_units"], first["balance"]) == (50, 100)
    assert (await stack.account_state("a"))["reserved"] == 50
    second = await post(client, "authorization", transaction_tag="c2", account_tag="a", destination="39")
    assert (second["max_available_units"], second["balance"]) == (25, 50)


async def test_end_charges_the_real_fee_and_releases_the_rest(agent, stack):
    from cache import call_key, open_calls_key

    client = await agent(catalog(prepaid("a", 1000)))
    await post(client, "authorization", transaction_tag="c", account_tag="a", destination="39")
    assert await stack.redis.smembers(open_calls_key("default", "a", False)) == {call_key("default", "c")}
    await post(client, "begin", transaction_tag="c", account_tag="a", destination="39", timestamp_begin=at(0))
    assert (await post(client, "end", transaction_tag="c", timestamp_end=at(61.2)))["ok"] is True
    state = await stack.account_state("a")
    assert (state["balance"], state["reserved"], state["n"]) == (1000 - 62, 0, 0)
    assert await stack.redis.smembers(open_calls_key("default", "a", False)) == set()


async def test_end_after_the_granted_units_charges_only_the_granted_units(agent, stack):
    client = await agent(catalog(prepaid("a", 100)))
    answer = await post(client, "authorization", transaction_tag="c", account_tag="a", destination="39")
    assert answer["max_available_units"] == 100
    await post(client, "begin", transaction_tag="c", account_tag="a", timestamp_begin=at(0))
    await post(client, "end", transaction_tag="c", timestamp_end=at(500))
    assert await stack.balance("a") == 0
    assert (await records(stack, client, "c"))["a"]["duration"] == 100


async def test_rollback_releases_everything_and_charges_nothing(agent, stack):
    client = await agent(catalog(prepaid("a", 100)))
    await post(client, "authorization", transaction_tag="c", account_tag="a", destination="39")
    await post(client, "begin", transaction_tag="c", account_tag="a")
    assert (await post(client, "rollback", transaction_tag="c"))["ok"] is True
    state = await stack.account_state("a")
    assert (state["balance"], state["reserved"], state["n"]) == (100, 0, 0)


async def _fcalls(stack, operation) -> tuple[dict, int]:
    """How many FCALLs Redis ran for `operation` (an awaitable)."""
    await stack.redis.config_resetstat()
    answer = await operation
    calls = (await stack.redis.info("commandstats")).get("cmdstat_fcall", {}).get("calls", 0)
    return answer, calls


async def test_every_key_is_declared_and_a_request_not_naming_its_parties_is_sent_once_more_with_them(agent, stack):
    """The parties' keys are declared in every FCALL (issue 16): a begin or end names its accounts, the agent
    derives their keys (linked accounts too) and one FCALL settles it; one naming none is answered `keys` with
    the list, and sent again once with it."""
    client = await agent(catalog(prepaid("a", 1000, linked_accounts=["l"]), prepaid("l", 1000), prepaid("b", 0)))
    tags = {"account_tag": "a", "destination_account_tag": "b"}
    answer, calls = await _fcalls(stack, post(client, "authorization", transaction_tag="c", destination="39", **tags))
    assert (answer["authorized"], calls) == (True, 1)
    answer, calls = await _fcalls(stack, post(client, "begin", transaction_tag="c", timestamp_begin=at(0), **tags))
    assert (answer["ok"], calls) == (True, 1)
    answer, calls = await _fcalls(stack, post(client, "end", transaction_tag="c", timestamp_end=at(10), **tags))
    assert (answer["ok"], calls) == (True, 1)
    assert (await stack.balance("a"), await stack.balance("l")) == (990, 990)
    for tag, last in (("d", "end"), ("e", "rollback")):  # (each reserves the whole balance)
        await post(client, "authorization", transaction_tag=tag, destination="39", **tags)
        await post(client, "begin", transaction_tag=tag, timestamp_begin=at(0), **tags)
        if last == "end":
            answer, calls = await _fcalls(stack, post(client, "end", transaction_tag="d", timestamp_end=at(5)))
            assert (answer["ok"], calls) == (True, 2)
    answer, calls = await _fcalls(stack, post(client, "rollback", transaction_tag="e"))
    assert (answer["ok"], calls) == (True, 2)
    assert (await stack.balance("a"), await stack.balance("l")) == (985, 985)
    for tag in ("a", "l", "b"):
        state = await stack.account_state(tag)
        assert (state.get("reserved", 0), state.get("n", 0), state.get("ni", 0)) == (0, 0, 0), tag


# --- idempotency ------------------------------------------------------------------------------------------------------

async def test_repeated_operations_answer_as_the_first_and_change_nothing(agent, stack):
    client = await agent(catalog(prepaid("a", 1000)))
    first = await post(client, "authorization", transaction_tag="c", account_tag="a", destination="39")
    again = await post(client, "authorization", transaction_tag="c", account_tag="a", destination="39")
    assert again == first
    assert (await stack.account_state("a"))["reserved"] == 1000
    for _ in range(2):
        assert (await post(client, "begin", transaction_tag="c", account_tag="a", timestamp_begin=at(0)))["ok"]
    for _ in range(3):
        assert (await post(client, "end", transaction_tag="c", account_tag="a", timestamp_end=at(10)))["ok"]
    assert await stack.balance("a") == 990
    assert (await post(client, "rollback", transaction_tag="c"))["ok"] is False
    assert await stack.balance("a") == 990


async def test_end_of_a_call_never_authorized_is_not_ok_and_charges_nothing(agent, stack):
    client = await agent(catalog(prepaid("a", 1000)))
    assert (await post(client, "end", transaction_tag="never", account_tag="a"))["ok"] is False
    state = await stack.account_state("a")
    assert (state["balance"], state.get("reserved", 0), state["n"]) == (1000, 0, 0)


async def test_a_lost_begin_does_not_make_a_call_free_the_end_charges_from_the_start_it_carries(agent, stack):
    client = await agent(catalog(prepaid("a", 1000)))
    await post(client, "authorization", transaction_tag="lost", account_tag="a", destination="39")
    answer = await post(client, "end", transaction_tag="lost", account_tag="a", timestamp_begin=at(0),
                        timestamp_end=at(12.5))
    assert answer["ok"] is True
    state = await stack.account_state("a")
    assert (state["balance"], state["reserved"], state["n"]) == (1000 - 13, 0, 0)
    record = (await records(stack, client, "lost"))["a"]
    assert (record["state"], record["duration"], record["fee"]) == ("ended", 13, 13)
    # repeated, and a begin arriving after the end, change nothing
    assert (await post(client, "end", transaction_tag="lost", timestamp_end=at(99)))["ok"] is True
    assert (await post(client, "begin", transaction_tag="lost", timestamp_begin=at(0)))["ok"] is True
    assert await stack.balance("a") == 1000 - 13


async def test_an_end_without_a_start_charges_from_the_authorization_capped_at_the_granted_units(agent, stack):
    client = await agent(catalog(prepaid("a", 40)))
    answer = await post(client, "authorization", transaction_tag="cap", account_tag="a", destination="39",
                        timestamp_auth=at(0))
    assert answer["max_available_units"] == 40
    assert (await post(client, "end", transaction_tag="cap", timestamp_end=at(3600)))["ok"] is True
    assert await stack.balance("a") == 0  # 40 granted seconds, not the hour since the authorization


async def test_an_end_after_the_authorization_expired_still_charges_the_call(agent, stack):
    client = await agent(catalog(prepaid("a", 1000)), authorization_ttl=0, reaper_interval=0.05)
    await post(client, "authorization", transaction_tag="late", account_tag="a", destination="39")
    for _ in range(200):  # the reaper expires it (bounded wait)
        if (await records(stack, client, "late")).get("a", {}).get("state") == "expired":
            break
        await asyncio.sleep(0.05)
    assert (await records(stack, client, "late"))["a"]["state"] == "expired"
    assert (await post(client, "end", transaction_tag="late", timestamp_begin=at(0), timestamp_end=at(5)))["ok"]
    assert await stack.balance("a") == 995
    assert (await records(stack, client, "late"))["a"]["state"] == "ended"


async def test_record_is_idempotent_and_charges_once(agent, stack):
    client = await agent(catalog(prepaid("a", 1000)))
    for _ in range(2):
        assert (await post(client, "record", transaction_tag="r", account_tag="a", destination="39",
                           timestamp_begin=at(0), timestamp_end=at(30)))["ok"] is True
    assert await stack.balance("a") == 970


async def test_an_authorized_tag_cannot_be_recorded_over_a_running_call(agent):
    client = await agent(catalog(prepaid("a", 1000)))
    await post(client, "authorization", transaction_tag="c", account_tag="a", destination="39")
    await post(client, "begin", transaction_tag="c", account_tag="a")
    assert (await post(client, "record", transaction_tag="c", account_tag="a", destination="39"))["ok"] is False


async def test_total_limit_counts_open_calls_in_both_directions_until_they_end(agent, stack):
    client = await agent(catalog(postpaid("x", max_concurrent_transactions=2), postpaid("y")))
    assert (await post(client, "authorization", transaction_tag="out", account_tag="x", destination="39"))["authorized"]
    assert (await post(client, "authorization", transaction_tag="in", account_tag="y", destination="39",
                       destination_account_tag="x"))["authorized_destination"]
    assert ((await stack.account_state("x"))["ni"], (await stack.account_state("x"))["no"]) == (1, 1)
    third = await post(client, "authorization", transaction_tag="third", account_tag="x", destination="39")
    assert third["unauthorized_reason"] == "TOO_MANY_RUNNING_TRANSACTIONS"
    assert (await post(client, "rollback", transaction_tag="in"))["ok"] is True
    assert (await post(client, "authorization", transaction_tag="fourth", account_tag="x", destination="39"))["authorized"]


async def test_direction_limits_count_only_their_direction(agent):
    client = await agent(catalog(postpaid("x", max_inbound_transactions=1, max_outbound_transactions=1), postpaid("y")))
    assert (await post(client, "authorization", transaction_tag="in1", account_tag="y", destination="39",
                       destination_account_tag="x"))["authorized_destination"]
    assert (await post(client, "authorization", transaction_tag="out1", account_tag="x", destination="39"))["authorized"]
    refused = await post(client, "authorization", transaction_tag="in2", account_tag="y", destination="39",
                         destination_account_tag="x")
    assert (refused["unauthorized_reason"], refused["unauthorized_account_tag"]) == (
        "TOO_MANY_RUNNING_INBOUND_TRANSACTIONS", "x")
    refused = await post(client, "authorization", transaction_tag="out2", account_tag="x", destination="39")
    assert refused["unauthorized_reason"] == "TOO_MANY_RUNNING_OUTBOUND_TRANSACTIONS"


async def test_a_call_stored_as_a_document_by_an_earlier_version_is_begun_and_ended(agent, stack):
    """Calls opened before the field form (cache/rating.lua) still finish after an upgrade."""
    import orjson

    from cache import account_key, call_key, group_of, open_calls_key

    client = await agent(catalog(prepaid("a", 1000)))
    key, account = call_key("default", "old"), account_key("default", "a")
    party = {"k": account, "o": open_calls_key("default", "a", False), "a": "a", "cr": 0, "mt": -1, "mi": -1, "mo": -1,
             "s": 1000, "i": 0, "pr": 1, "c": 1, "r": [0, 1, 1, 1, 1, 0, -1]}
    doc = {"st": "authorized", "tn": "default", "tt": "old", "ck": key, "ta": 1, "rs": "", "rt": "", "bal": 1000,
           "u": 100, "rv": [100], "cm": 1, "cu": 0, "p": [party]}
    await stack.redis.hset(account, mapping={"balance": 1000, "reserved": 100})
    await stack.redis.hset(key, mapping={"doc": orjson.dumps(doc).decode(), "meta": '{"account_tag":"a"}'})
    await stack.redis.sadd(open_calls_key("default", "a", False), key)
    await stack.redis.zadd(group_of("default").deadlines, {key: 2**40})
    assert (await post(client, "begin", transaction_tag="old", timestamp_begin=at(0)))["ok"] is True
    assert (await post(client, "end", transaction_tag="old", timestamp_end=at(30)))["ok"] is True
    state = await stack.account_state("a")
    assert (state["balance"], state["reserved"]) == (970, 0)
    assert await stack.redis.smembers(open_calls_key("default", "a", False)) == set()
    assert (await records(stack, client, "old"))["a"]["fee"] == 30


async def test_a_tag_reused_after_a_refusal_is_stored_afresh(agent, stack):
    from cache.call import decode as decode_call
    from cache import call_key

    client = await agent(catalog(prepaid("a", 1000), prepaid("zero", 0)))
    assert (await post(client, "authorization", transaction_tag="t", account_tag="zero", destination="39"))[
        "unauthorized_reason"] == "BALANCE_INSUFFICIENT"
    assert (await post(client, "authorization", transaction_tag="t", account_tag="a", destination="39"))["authorized"]
    fields = await stack.redis.hgetall(call_key("default", "t"))
    assert "doc" not in fields and await stack.redis.ttl(call_key("default", "t")) == -1
    doc, meta = decode_call(fields)
    assert (doc["st"], doc["p"][0]["a"], doc["p"][0]["rv"], meta["account_tag"]) == ("authorized", "a", 1000, "a")


async def _rows_in_postgresql(stack, tag: str, count: int) -> list[dict]:
    """The records PostgreSQL holds for `tag` once the outbox has carried `count` of them (bounded wait)."""
    for _ in range(200):
        rows = await stack.database.fetch(
            "SELECT call_id, account_tag, state, fee, duration FROM transactions WHERE transaction_tag = $1"
            " ORDER BY version", tag)
        if len(rows) >= count and all(row["state"] in ("ended", "refused") for row in rows):
            return [dict(row) for row in rows]
        await asyncio.sleep(0.05)
    raise AssertionError(f"PostgreSQL holds {len(rows)} records of {tag!r}, not {count}")


async def test_a_tag_used_again_after_its_call_left_redis_is_a_new_call_with_its_own_record(agent, stack):
    """Once a call's state has left Redis (its retention passed, or Redis lost it), its tag names a new call:
    the earlier call's record and charge stay as they were."""
    from cache import call_key

    client = await agent(catalog(prepaid("a", 1000)))
    for seconds in (5, 7):
        await post(client, "authorization", transaction_tag="again", account_tag="a", destination="39",
                   timestamp_auth=at(0))
        await post(client, "begin", transaction_tag="again", timestamp_begin=at(0))
        await post(client, "end", transaction_tag="again", timestamp_end=at(seconds))
        await _rows_in_postgresql(stack, "again", 1 if seconds == 5 else 2)
        await stack.redis.delete(call_key("default", "again"))  # as its retention would
    first, second = await _rows_in_postgresql(stack, "again", 2)
    assert (first["fee"], second["fee"]) == (5, 7) and first["call_id"] != second["call_id"]
    assert {first["state"], second["state"]} == {"ended"}
    assert (await stack.account_state("a"))["balance"] == 988
    assert (await records(stack, client, "again"))["a"]["fee"] == 7  # a reader sees the newest call
    charges = await stack.database.fetch(
        "SELECT amount FROM ledger WHERE transaction_tag = 'again' AND kind = 'charge' ORDER BY version")
    assert [row["amount"] for row in charges] == [-5, -7]


async def test_an_end_repeated_after_its_call_left_redis_answers_as_the_first_and_charges_nothing(agent, stack):
    from cache import call_key

    client = await agent(catalog(prepaid("a", 1000)))
    await post(client, "authorization", transaction_tag="late", account_tag="a", destination="39")
    await post(client, "begin", transaction_tag="late", timestamp_begin=at(0))
    await post(client, "end", transaction_tag="late", timestamp_end=at(5))
    await _rows_in_postgresql(stack, "late", 1)
    await stack.redis.delete(call_key("default", "late"))
    again = await post(client, "end", transaction_tag="late", account_tag="a", destination="39",
                       timestamp_begin=at(0), timestamp_end=at(9))
    assert again["ok"] is True
    assert (await stack.account_state("a"))["balance"] == 995
    assert [row["fee"] for row in await _rows_in_postgresql(stack, "late", 1)] == [5]


async def test_calls_open_when_redis_lost_its_data_are_charged_by_their_ends_from_the_begin_they_carry(agent, stack):
    """Redis restarted empty: the balance comes back from PostgreSQL, and the end Kamailio sends (with the
    call's start) charges the call that Redis forgot, capped at the longest grant; nothing is charged twice."""
    from agent.keys import SETTINGS

    client = await agent(catalog(prepaid("a", 100_000)))
    cap = client.app[SETTINGS].max_units
    for tag in ("lost", "long"):
        await post(client, "authorization", transaction_tag=tag, account_tag="a", destination="39",
                   timestamp_auth=at(0))
        await post(client, "begin", transaction_tag=tag, timestamp_begin=at(0))
    await stack.redis.flushall()  # as a restart without its data would leave it
    call = {"account_tag": "a", "destination": "39", "timestamp_begin": at(0)}
    assert (await post(client, "end", transaction_tag="lost", timestamp_end=at(30), **call))["ok"] is True
    assert (await post(client, "end", transaction_tag="long", timestamp_end=at(cap + 500), **call))["ok"] is True
    assert (await post(client, "end", transaction_tag="lost", timestamp_end=at(60), **call))["ok"] is True
    assert (await stack.account_state("a"))["balance"] == 100_000 - 30 - cap
    rows = {row["fee"] for row in await _rows_in_postgresql(stack, "lost", 1)}
    assert rows == {30}
    assert [row["duration"] for row in await _rows_in_postgresql(stack, "long", 1)] == [cap]
    # without its start, the end of a call nobody holds cannot be charged
    assert (await post(client, "end", transaction_tag="unknown", account_tag="a", destination="39",
                       timestamp_end=at(5)))["ok"] is False


async def test_a_tag_authorized_again_after_a_refusal_keeps_the_refusal_as_its_own_record(agent, stack):
    client = await agent(catalog(prepaid("a", 1000), prepaid("zero", 0)))
    await post(client, "authorization", transaction_tag="retry", account_tag="zero", destination="39")
    await post(client, "authorization", transaction_tag="retry", account_tag="a", destination="39",
               timestamp_auth=at(0))
    await post(client, "begin", transaction_tag="retry", timestamp_begin=at(0))
    await post(client, "end", transaction_tag="retry", timestamp_end=at(3))
    refused, ended = await _rows_in_postgresql(stack, "retry", 2)
    assert (refused["account_tag"], refused["state"]) == ("zero", "refused")
    assert (ended["account_tag"], ended["state"], ended["fee"]) == ("a", "ended", 3)
    assert refused["call_id"] != ended["call_id"]


async def test_agents_with_different_settings_on_one_redis_each_apply_their_own(agent, stack):
    """The library reads an agent's settings from the text it sends with each authorization."""
    document = catalog(postpaid("a"))
    short, long = await agent(document, max_units=60), await agent(max_units=600)
    for _ in range(2):  # the second round is served from the library's remembered settings
        assert (await post(short, "authorization", transaction_tag="s", account_tag="a", destination="39"))[
            "max_available_units"] == 60
        assert (await post(long, "authorization", transaction_tag="l", account_tag="a", destination="39"))[
            "max_available_units"] == 600


# --- state restore, implicit authorization --------------------------------------------------------------------------

async def test_tag_only_begin_and_end_restore_both_sides_from_the_authorization(agent, stack):
    client = await agent(catalog(prepaid("caller", 1000), prepaid("callee", 500, max_inbound_transactions=5)))
    answer = await post(client, "authorization", transaction_tag="os", account_tag="caller",
                        destination_account_tag="callee", destination="39")
    assert (answer["authorized"], answer["authorized_destination"]) == (True, True)
    assert (await post(client, "begin", transaction_tag="os", timestamp_begin=at(0)))["ok"] is True
    assert (await stack.account_state("callee"))["ni"] == 1
    assert (await post(client, "end", transaction_tag="os", timestamp_end=at(20)))["ok"] is True
    found = await records(stack, client, "os")
    assert found["caller"]["fee"] == 20 and found["caller"]["inbound"] is False
    assert found["callee"]["fee"] == 0 and found["callee"]["inbound"] is True and found["callee"]["duration"] == 20
    assert (await stack.account_state("callee"))["ni"] == 0


async def test_begin_without_authorization_authorizes_first(agent, stack):
    client = await agent(catalog(prepaid("a", 100), prepaid("broke", 0)))
    assert (await post(client, "begin", transaction_tag="b", account_tag="a", destination="39"))["ok"] is True
    assert (await stack.account_state("a"))["reserved"] == 100
    assert (await post(client, "begin", transaction_tag="b2", account_tag="broke", destination="39"))["ok"] is False


async def test_inbound_only_authorization_is_authorized_for_the_callee(agent):
    client = await agent(catalog(prepaid("callee", 0)))
    answer = await post(client, "authorization", transaction_tag="in", destination_account_tag="callee",
                        destination="39")
    assert (answer["authorized"], answer["authorized_destination"], answer["unauthorized_reason"]) == (
        True, True, None)
    assert answer["max_available_units"] == 14400


# --- account kinds ----------------------------------------------------------------------------------------------------

async def test_postpaid_without_credit_limit_is_never_refused_for_balance(agent, stack):
    client = await agent(catalog({"account_tag": "post", "type": "POSTPAID", "balance": -500}))
    answer = await post(client, "authorization", transaction_tag="p", account_tag="post", destination="39")
    assert (answer["authorized"], answer["max_available_units"], answer["balance"]) == (True, 14400, -500)
    await post(client, "begin", transaction_tag="p", account_tag="post", timestamp_begin=at(0))
    await post(client, "end", transaction_tag="p", timestamp_end=at(30))
    assert await stack.balance("post") == -530


async def test_postpaid_credit_limit_bounds_units_and_refuses_below_it(agent):
    client = await agent(catalog(
        {"account_tag": "capped", "type": "POSTPAID", "balance": -40, "credit_limit": 100},
        {"account_tag": "over", "type": "POSTPAID", "balance": -100, "credit_limit": 100},
    ))
    answer = await post(client, "authorization", transaction_tag="p1", account_tag="capped", destination="39")
    assert (answer["authorized"], answer["max_available_units"]) == (True, 60)
    answer = await post(client, "authorization", transaction_tag="p2", account_tag="over", destination="39")
    assert (answer["authorized"], answer["unauthorized_reason"]) == (False, "BALANCE_INSUFFICIENT")


async def test_linked_prepaid_accounts_cap_units_and_are_charged_at_their_own_rate(agent, stack):
    client = await agent(catalog(
        prepaid("child", 1000, linked_accounts=["parent", "unknown"]),
        {"account_tag": "parent", "type": "PREPAID", "balance": 100, "pricelist_tags": ["p2"]},
    ))
    answer = await post(client, "authorization", transaction_tag="l", account_tag="child", destination="39")
    assert (answer["authorized"], answer["max_available_units"], answer["balance"]) == (True, 10, 1000)
    await post(client, "begin", transaction_tag="l", account_tag="child", timestamp_begin=at(0))
    await post(client, "end", transaction_tag="l", account_tag="child", timestamp_end=at(7))
    assert (await stack.balance("child"), await stack.balance("parent")) == (993, 30)
    found = await records(stack, client, "l")
    assert found["parent"]["primary"] is False and found["parent"]["fee"] == 70


async def test_tenants_are_isolated(agent, stack):
    document = catalog(prepaid("a", 100))
    for section in ("carriers", "pricelists", "rates", "accounts"):
        for item in document[section]:
            item["tenant"] = "acme"
    client = await agent(document)
    assert (await post(client, "authorization", transaction_tag="t", account_tag="a",
                       destination="39"))["unauthorized_reason"] == "NOT_FOUND"
    answer = await post(client, "authorization", tenant="acme", transaction_tag="t", account_tag="a",
                        destination="39")
    assert answer["authorized"] is True and answer["tenant"] == "acme"


async def test_records_reach_postgresql_through_the_outbox(agent, stack):
    client = await agent(catalog(prepaid("a", 1000)))
    await post(client, "authorization", transaction_tag="pg", account_tag="a", destination="39")
    await post(client, "begin", transaction_tag="pg", account_tag="a", timestamp_begin=at(0))
    await post(client, "end", transaction_tag="pg", timestamp_end=at(5))
    for _ in range(100):
        row = await stack.database.fetchrow(
            "SELECT state, fee, duration FROM transactions WHERE transaction_tag = 'pg'")
        ledger = await stack.database.fetchval(
            "SELECT sum(amount) FROM ledger WHERE account_tag = 'a' AND kind = 'charge'")
        if row is not None and row["state"] == "ended" and ledger is not None:
            break
        await asyncio.sleep(0.05)
    assert dict(row) == {"state": "ended", "fee": 5, "duration": 5}
    assert ledger == -5
    assert await stack.database.fetchval("SELECT balance FROM accounts WHERE account_tag = 'a'") == 995


def test_planning_reads_the_call_time_when_the_tenant_has_dated_rates():
    """Undated tables are planned without the call's datetime (transaction._UNDATED); dated ones with it."""
    from datetime import datetime, timezone

    from agent.config import Settings
    from agent.pricing.account import Account
    from agent.pricing.carrier import Carrier
    from agent.pricing.catalog import Catalog
    from agent.pricing.plan import Reason
    from agent.pricing.rate import Rate
    from agent.transaction import Transactions

    start = datetime(2030, 1, 1, tzinfo=timezone.utc)
    snapshot = Catalog.of([Account("t", "a")], [Carrier("t", "c1", "10.0.0.1")],
                          [Rate("t", "p1", "c1", "39", rate=1, datetime_start=start)])
    transactions = Transactions(Settings.load(), None, lambda: snapshot, None)
    request = {"tenant": "t", "account_tag": "a", "destination_account_tag": None, "destination": "3906"}
    before = int(start.timestamp() * 1000) - 1
    assert transactions._plan(request, before)[0].refusal is Reason.UNREACHEABLE_DESTINATION
    assert transactions._plan(request, before + 1)[0].parties[0].rate.prefix == "39"

"""Call records made from the Redis call state: one per party, rate and tags from the call's details."""

from agent.pricing.account import Account
from agent.pricing.catalog import Catalog
from agent.pricing.plan import Party
from agent.pricing.rate import Rate
from agent.store.records import records_of
from agent.transaction import Fragments, meta_json

import orjson

RATE = Rate("default", "pl", "c1", "39", connect_fee=5, rate=10, rate_increment=60, description="Italy")


def _call(parties: tuple[Party, ...], request_tags=None) -> tuple[dict, dict]:
    lua, details, _ = Fragments(Catalog()).parties(parties)
    request = {"account_tag": "a", "destination": "3904", "tags": request_tags}
    doc = {"st": "authorized", "tn": "default", "tt": "t1", "u": 60, "ta": 1_700_000_000_000,
           "p": orjson.loads(lua)}
    return doc, orjson.loads(meta_json(request, details))


def test_each_party_gets_its_own_rate_snapshot_and_account_tags_after_the_request_tags():
    caller = Account("default", "a", tags=("gold", "x"))
    callee = Account("default", "b", tags=("support",))
    doc, meta = _call((Party(caller, False, True, RATE), Party(callee, True, True, None)), ["x", "req"])
    rows = records_of(doc, meta, 7)
    assert [r["account_tag"] for r in rows] == ["a", "b"]
    assert rows[0]["destination_rate"] == RATE.snapshot()
    assert rows[1]["destination_rate"] is None
    assert rows[0]["tags"] == ["x", "req", "gold"]
    assert rows[1]["tags"] == ["x", "req", "support"]
    assert rows[0]["inbound"] is False and rows[1]["inbound"] is True
    assert {r["version"] for r in rows} == {7}


def test_the_parties_sent_to_redis_carry_only_what_the_library_reads():
    doc, _ = _call((Party(Account("default", "a", tags=("gold",)), False, True, RATE),))
    assert set(doc["p"][0]) == {"k", "o", "a", "cr", "mt", "mi", "mo", "i", "pr", "c", "r"}
    assert doc["p"][0]["r"] == [5, 60, 10, 60, 10, 0, -1]  # the schedule (pricing/rate.py Schedule)


def test_calls_stored_with_rate_and_tags_in_the_party_still_read_the_same():
    doc = {"st": "ended", "tn": "default", "tt": "old", "d": 30, "p": [
        {"a": "a", "i": 0, "pr": 1, "f": 15, "rate": {"prefix": "39"}, "tg": ["gold"]}]}
    rows = records_of(doc, {"tags": ["req"]}, 1)
    assert rows[0]["destination_rate"] == {"prefix": "39"}
    assert rows[0]["tags"] == ["req", "gold"]
    assert rows[0]["fee"] == 15 and rows[0]["duration"] == 30


def test_an_early_refusal_has_one_record_per_tag_of_the_request():
    doc = {"st": "refused", "tn": "default", "tt": "t", "rs": "NOT_FOUND", "p": []}
    rows = records_of(doc, {"account_tag": "ghost", "destination_account_tag": "b"}, 1)
    assert [(r["account_tag"], r["inbound"], r["unauthorized_reason"]) for r in rows] == [
        ("ghost", False, "NOT_FOUND"), ("b", True, "NOT_FOUND")]

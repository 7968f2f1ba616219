"""cache/call.py names every field the library writes: a call driven through the agent, in each of its
states, holds no field, document key, party key or outbox field the module does not name."""

from __future__ import annotations

import orjson

from cache import call_key, group_of
from cache import call as callstate
from tests.test_transaction import at, catalog, post, prepaid


def _check_document(doc: dict) -> None:
    assert set(doc) <= callstate.DOCUMENT_KEYS, set(doc) - callstate.DOCUMENT_KEYS
    for party in doc.get(callstate.PARTIES) or []:
        assert set(party) <= callstate.PARTY_KEYS, set(party) - callstate.PARTY_KEYS


async def _state(stack, tag: str) -> tuple[dict, dict, dict]:
    fields = await stack.redis.hgetall(call_key("default", tag))
    doc, meta = callstate.decode(fields)
    return fields, doc, meta


async def test_every_field_of_a_call_in_every_state_is_named_by_the_schema(agent, stack):
    limited = prepaid("a", 1000, max_concurrent_transactions=5)
    client = await agent(catalog(limited, prepaid("zero", 0)))
    # open: authorized, then begun; the hash of fields, read into a document
    await post(client, "authorization", transaction_tag="c1", account_tag="a", destination="39040",
               timestamp_auth=at(0))
    fields, doc, meta = await _state(stack, "c1")
    assert set(fields) <= callstate.OPEN_FIELDS, set(fields) - callstate.OPEN_FIELDS
    _check_document(doc)
    assert (doc[callstate.STATE], callstate.identity(doc)[:2]) == ("authorized", ("default", "c1"))
    party = doc[callstate.PARTIES][0]
    assert (party[callstate.ACCOUNT], party[callstate.RESERVED]) == ("a", 1000)
    assert callstate.OTHER_OPEN_KEY in party  # a total limit counts both directions
    assert meta[callstate.PARTY_DETAILS][0][callstate.DETAIL_RATE]["prefix"] == "39"
    await post(client, "begin", transaction_tag="c1", timestamp_begin=at(1))
    fields, doc, _ = await _state(stack, "c1")
    assert set(fields) <= callstate.OPEN_FIELDS and doc[callstate.STATE] == "begun"
    # final: a document and meta
    await post(client, "end", transaction_tag="c1", timestamp_end=at(31))
    fields, doc, _ = await _state(stack, "c1")
    assert set(fields) == {callstate.DOCUMENT, callstate.META}
    _check_document(doc)
    assert (doc[callstate.STATE], doc[callstate.DURATION]) == ("ended", 30)
    assert doc[callstate.PARTIES][0][callstate.FEE] == 30
    # refused, recorded, a recorded call rolled back, an end whose begin never came
    await post(client, "authorization", transaction_tag="c2", account_tag="zero", destination="39040")
    await post(client, "record", transaction_tag="c3", account_tag="a", destination="39040",
               timestamp_begin=at(0), timestamp_end=at(10))
    await post(client, "record", transaction_tag="c4", account_tag="a", destination="39040",
               timestamp_begin=at(0), timestamp_end=at(10))
    await post(client, "rollback", transaction_tag="c4")
    await post(client, "authorization", transaction_tag="c5", account_tag="a", destination="39040",
               timestamp_auth=at(0))
    await post(client, "end", transaction_tag="c5", timestamp_begin=at(2), timestamp_end=at(12))
    states = {}
    for tag in ("c2", "c3", "c4", "c5"):
        fields, doc, _ = await _state(stack, tag)
        assert set(fields) == {callstate.DOCUMENT, callstate.META}
        _check_document(doc)
        states[tag] = doc[callstate.STATE]
    assert states == {"c2": "refused", "c3": "recorded", "c4": "rolledback", "c5": "ended"}
    assert (await _state(stack, "c4"))[1].get(callstate.REMOVED) and (await _state(stack, "c5"))[1].get(
        callstate.LOST_BEGIN)
    # the outbox: final calls (with the balance moves they made) and balance moves of their own, nothing else
    kinds, charged = set(), []
    for _, entry in await stack.redis.xrange(group_of("default").outbox):
        kinds.add(entry[callstate.ENTRY])
        if entry[callstate.ENTRY] == callstate.TXN:
            assert set(entry) in (set(callstate.TXN_FIELDS), set(callstate.TXN_FIELDS + callstate.TXN_MOVE_FIELDS))
            doc = orjson.loads(entry[callstate.DOCUMENT])
            _check_document(doc)
            charged += [(doc[callstate.TAG], move[callstate.MOVE], move[callstate.AMOUNT])
                        for move in callstate.moves(entry, doc)]
        else:
            assert entry[callstate.ENTRY] == callstate.LEDGER and set(entry) == set(callstate.LEDGER_FIELDS)
    assert callstate.TXN in kinds and kinds <= {callstate.TXN, callstate.LEDGER}
    assert charged == [("c1", "charge", -30), ("c3", "charge", -10), ("c4", "charge", -10), ("c4", "refund", 10),
                       ("c5", "charge", -10)]

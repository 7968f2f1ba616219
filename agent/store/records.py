"""Call records (Canyan's Transaction) made from the call state kept in Redis.

The same conversion feeds the PostgreSQL writer and the read path, so a record reads the same before and
after the outbox has carried it to PostgreSQL.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import orjson

from cache import call as callstate

COLUMNS = (
    "tenant", "transaction_tag", "account_tag", "state", "source", "source_ip", "destination", "carrier_ip",
    "tags", "authorized", "unauthorized_reason", "destination_rate", "timestamp_auth", "timestamp_begin",
    "timestamp_end", "primary", "inbound", "duration", "fee", "max_available_units", "version", "call_id",
    "catalog_version",
)


def stream_version(entry_id: str) -> int:
    """An outbox entry id (`ms-seq`) as one increasing integer."""
    ms, _, seq = entry_id.partition("-")
    return int(ms) * 1_000_000 + int(seq or 0)


def open_version(doc: dict) -> int:
    """The version of an open call's state (authorized, begun): from the Redis clock reading the library
    stamps it with, just below any outbox id (`ms-seq`) Redis can give a later change of the call."""
    return int(doc.get(callstate.CLOCK_MS) or 0) * 1_000_000 - 1000 + int(doc.get(callstate.CLOCK_MICROS) or 0)


def moment(ms: Any) -> datetime | None:
    """A stored instant (milliseconds since the epoch) as an aware datetime."""
    if ms is None or isinstance(ms, (dict, list)):
        return None
    return datetime.fromtimestamp(int(ms) / 1000, tz=timezone.utc)


def _list(value: Any) -> list:
    return list(value) if isinstance(value, list) else []


def party_details(party: dict, meta: dict, index: int) -> tuple[dict | None, list]:
    """(rate snapshot, account tags) of the call's `index`-th party: kept in `meta` (`pm`) since the
    parties sent to Redis carry only what the Redis library reads; older calls kept them in the party."""
    details = meta.get(callstate.PARTY_DETAILS)
    source = details[index] if isinstance(details, list) and index < len(details) else party
    source = source if isinstance(source, dict) else {}
    rate = source.get("rate")
    return (rate if isinstance(rate, dict) else None), _list(source.get(callstate.DETAIL_TAGS))


def records_of(doc: dict, meta: dict, version: int) -> list[dict]:
    """One record per account taking part in the call (an early refusal: per tag of the request)."""
    state = doc.get(callstate.STATE)
    recorded = state == "recorded" or bool(doc.get(callstate.RECORDED))
    parties = _list(doc.get(callstate.PARTIES))
    if not parties:
        parties = [
            {callstate.ACCOUNT: meta.get(field), callstate.INBOUND: inbound, callstate.PRIMARY: 1}
            for field, inbound in (("account_tag", 0), ("destination_account_tag", 1))
            if meta.get(field)
        ]
    if recorded:
        authorized = meta.get("authorized")
        reason = meta.get("unauthorized_reason")
    else:
        authorized = state != "refused"
        reason = doc.get(callstate.REASON) or None
    request_tags = _list(meta.get("tags"))
    planned_on = meta.get(callstate.PLANNED_ON)  # the deck the call was priced on (a rerate writes its own)
    if not isinstance(planned_on, int):
        planned_on = None
    rows = []
    for index, party in enumerate(parties):
        rate, party_tags = party_details(party, meta, index) if doc.get(callstate.PARTIES) else (None, [])
        rows.append({
            "tenant": doc.get(callstate.TENANT),
            "transaction_tag": doc.get(callstate.TAG),
            "account_tag": party.get(callstate.ACCOUNT),
            "state": state,
            "source": meta.get("source"),
            "source_ip": meta.get("source_ip"),
            "destination": meta.get("destination"),
            "carrier_ip": meta.get("carrier_ip"),
            "tags": request_tags + [t for t in party_tags if t not in request_tags],
            "authorized": authorized,
            "unauthorized_reason": reason,
            "destination_rate": rate,
            "timestamp_auth": moment(doc.get(callstate.AUTHORIZED_AT)),
            "timestamp_begin": moment(doc.get(callstate.BEGUN_AT)),
            "timestamp_end": moment(doc.get(callstate.ENDED_AT)),
            "primary": bool(party.get(callstate.PRIMARY)),
            "inbound": bool(party.get(callstate.INBOUND)),
            "duration": doc.get(callstate.DURATION) if state in ("ended", "recorded") else None,
            "fee": party.get(callstate.FEE) if state in ("ended", "recorded") else None,
            "max_available_units": doc.get(callstate.UNITS) if not recorded else None,
            "version": version,
            "call_id": doc.get(callstate.CALL_ID) or "",
            "catalog_version": planned_on,
        })
    return rows


def is_removed(doc: dict) -> bool:
    """A rolled-back one-shot record: it no longer exists for readers."""
    return bool(doc.get(callstate.REMOVED))


# The records of the newest call under a transaction tag (a tag used again is another call: call_id).
LATEST_CALL = (
    "SELECT * FROM transactions WHERE tenant = $1 AND transaction_tag = $2 AND call_id = (SELECT call_id"
    " FROM transactions WHERE tenant = $1 AND transaction_tag = $2 ORDER BY version DESC LIMIT 1)"
    ' ORDER BY "primary" DESC, inbound'
)


async def read_records(redis, pool, tenant: str, transaction_tag: str) -> list[dict]:
    """The records of one call as readers must see them: Redis first (newest), PostgreSQL otherwise.

    Right after the agent answers, the outbox may not have reached PostgreSQL yet; the call's state in
    Redis is then the truth. Once the state has expired from Redis, PostgreSQL holds the final version.
    """
    from cache import call_key

    fields = await redis.hgetall(call_key(tenant, transaction_tag))
    if fields:
        doc, meta = callstate.decode(fields)
        if is_removed(doc):
            return []
        return [row for row in records_of(doc, meta, 0) if row["account_tag"]]
    async with pool.acquire() as connection:
        rows = await connection.fetch(LATEST_CALL, tenant, transaction_tag)
    records = []
    for row in rows:
        record = dict(row)
        if isinstance(record.get("destination_rate"), str):
            record["destination_rate"] = orjson.loads(record["destination_rate"])
        records.append(record)
    return records


async def stored_call(pool, tenant: str, transaction_tag: str, timeout: float = 5.0) -> dict | None:
    """The newest call of a tag as PostgreSQL holds it (its primary record), or None: what an end finds
    when Redis no longer has the call."""
    from .database import deadline

    async with pool.acquire(timeout=timeout) as connection:
        with deadline(connection, timeout):
            row = await connection.fetchrow(LATEST_CALL + " LIMIT 1", tenant, transaction_tag)
    return None if row is None else dict(row)

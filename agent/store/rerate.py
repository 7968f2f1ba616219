"""Rerating: the finished calls of a tenant (or of one account) in a time range priced again on the current
catalog, and each difference settled exactly once.

Which calls: outbound records (callers and linked accounts; inbound parties are never charged) in state
`ended` or `recorded` whose `timestamp_begin` lies in [start, end). Each is priced by the kernel
(pricing/quote.reprice: the rate the account's authorization would use at the call's time, charged for its
billed seconds as an end charges). A record whose account is gone or whose destination has no rate any
more is left as it is (`skipped`).

Applying, batch by batch:
1. one PostgreSQL transaction locks the batch's records, writes each changed record's new fee and rate
   snapshot (naming the rerate in `rerate_id`, keeping the first fee in `original_fee`) and one pending
   adjustment per changed record (`rerate_adjustments`);
2. each adjustment is made in Redis by one function of the library (`rating_rerate_move`): the balance move
   as `rating_balance` makes it (which writes the ledger row through the outbox like every balance change,
   so PostgreSQL's balance follows) with a marker in the rerate's Redis hash: the move and its marker happen
   together or not at all. The call's final state, while Redis still keeps it (--record-retention), gets the
   new fee in the same function, so a read or a rollback of the call in Redis agrees with PostgreSQL (a
   recorded call rolled back before its move gets no move: its rollback gave back the first fee whole). Its
   keys are all in the tenant's slot group: the same on one server and on a Redis Cluster;
3. the adjustments are marked applied in PostgreSQL.
A rerate stopped anywhere leaves pending adjustments at worst: the next apply of the tenant settles them
first, skipping the ones its Redis marker says were made. Applies of one tenant take turns (an advisory lock),
so no two settle the same adjustment at once. An apply repeated finds every fee equal to its new price and
changes nothing. Money is integers throughout.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime

import asyncpg
import orjson
import redis.asyncio as aioredis

from cache import account_key, call_key, fcall, group_of, seed_balance
from cache import call as callstate

from ..pricing.catalog import Catalog
from ..pricing.deck import Deck
from ..pricing.table import RateTable
from . import decks
from ..pricing.quote import reprice
from .writer import catch_up

_LOCK = "rating-rerate"  # advisory lock (hashtext of this, hashtext of the tenant): one apply per tenant
SAMPLE_LIMIT = 10_000


def markers_key(tenant: str, run: int) -> str:
    """Redis hash per rerate (of one tenant): adjustment id -> 1 once its move is made. In the tenant's slot
    group, with the call and account keys its moves change in one transaction (cache.group_of)."""
    return f"{group_of(tenant).prefix}rerate:{run}"

_BATCH = (
    "SELECT id, tenant, transaction_tag, call_id, account_tag, state, source, destination, destination_rate, duration,"
    " fee, timestamp_auth, timestamp_begin FROM transactions"
    " WHERE tenant = $1 AND ($2::text IS NULL OR account_tag = $2) AND state IN ('ended', 'recorded')"
    " AND NOT inbound AND duration IS NOT NULL AND fee IS NOT NULL"
    " AND timestamp_begin >= $3 AND timestamp_begin < $4"
    " AND ($5::timestamptz IS NULL OR (timestamp_begin, id) > ($5::timestamptz, $6::uuid))"
    " ORDER BY timestamp_begin, id LIMIT $7"
)
_UPDATE = (
    "UPDATE transactions SET fee = $2, destination_rate = $3::jsonb, rerate_id = $4,"
    " original_fee = coalesce(original_fee, fee), catalog_version = $5 WHERE id = $1"
)
_ADJUST = (
    "INSERT INTO rerate_adjustments (rerate_id, tenant, account_tag, transaction_tag, call_id, old_fee, new_fee)"
    " SELECT $1, $2, * FROM unnest($3::text[], $4::text[], $5::text[], $6::bigint[], $7::bigint[])"
)
# Pending adjustments with what Redis must hold of their call now (the record's current fee, rate and the
# catalog version it was priced on).
_PENDING = (
    "SELECT a.id, a.rerate_id, a.tenant, a.account_tag, a.transaction_tag, a.call_id, a.old_fee, a.new_fee,"
    " t.fee, t.destination_rate, t.catalog_version FROM rerate_adjustments a LEFT JOIN transactions t"
    " ON (t.tenant, t.transaction_tag, t.call_id, t.account_tag) = (a.tenant, a.transaction_tag, a.call_id,"
    " a.account_tag) WHERE a.tenant = $1 AND a.applied_at IS NULL ORDER BY a.id"
)


@dataclass
class Rerate:
    """What a rerate found (dry run) or did: `delta` is the sum of new minus old fees (what balances lose)."""

    id: str | None
    dry_run: bool
    tenant: str
    account_tag: str | None
    start: datetime
    end: datetime
    catalog_version: int
    examined: int = 0
    changed: int = 0
    skipped: int = 0
    delta: int = 0
    settled: int = 0  # pending adjustments of earlier, interrupted rerates settled first
    calls: list[dict] = field(default_factory=list)  # the first changed calls


def _rate_json(rate) -> str:
    return orjson.dumps(rate.snapshot()).decode()


def _prefix_of(stored) -> str | None:
    if isinstance(stored, str):
        stored = orjson.loads(stored)
    return stored.get("prefix") if isinstance(stored, dict) else None


class DeckVersionMissing(ValueError):
    """The deck version asked for is not kept on this host."""


async def deck_catalog(pool: asyncpg.Pool, root, current: Catalog, tenant: str, version: int) -> Catalog:
    """`current` with `tenant`'s rates as the deck built at change-log position `version` holds them: the
    decks this host keeps under --deck-dir (the active one and the one before it; PostgreSQL keeps no older
    rates). Accounts and carriers are as they are now."""
    async with pool.acquire() as connection:
        folder = decks.tenant_folder(await decks.database_folder(connection, root), tenant)
    path = folder / str(version)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0 or not (path / "meta.json").is_file():
        kept = sorted(int(entry.name) for entry in folder.iterdir() if entry.name.isdigit()) if folder.is_dir() else []
        raise DeckVersionMissing(f"tenant {tenant} has no deck {version} on this host"
                                 f" (kept: {', '.join(map(str, kept)) or 'none'})")
    table = RateTable().freeze().over(Deck(path), {})
    return replace(current, tables={**current.tables, tenant: table}, version=version, routes={})


async def rerate(pool: asyncpg.Pool, redis: aioredis.Redis, catalog: Catalog, tenant: str, account_tag: str | None,
                 start: datetime, end: datetime, dry_run: bool = True, sample: int = 100,
                 batch: int = 500, replicas: int = 0) -> Rerate:
    """Prices the finished calls again on `catalog`; unless `dry_run`, writes the changes and settles them.
    `replicas`: --redis-replicas (the outbox entries it writes first must be on as many, see writer.catch_up)."""
    if end <= start:
        raise ValueError("to: must be after from")
    result = Rerate(None if dry_run else uuid.uuid4().hex, dry_run, tenant, account_tag, start, end, catalog.version)
    async with pool.acquire() as holder:
        if not dry_run:
            await holder.execute("SELECT pg_advisory_lock(hashtext($1), hashtext($2))", _LOCK, tenant)
        try:
            # the calls Redis has finished and the outbox has not carried yet are rerated too
            await catch_up(redis, holder, tenant=tenant, replicas=replicas)
            if not dry_run:
                result.settled = await settle_pending(holder, redis, tenant)
                await holder.execute(
                    "INSERT INTO rerates (id, tenant, account_tag, range_start, range_end, catalog_version)"
                    " VALUES ($1, $2, $3, $4, $5, $6)", result.id, tenant, account_tag, start, end, catalog.version)
            cursor: tuple = (None, None)
            while True:
                async with pool.acquire() as connection:
                    rows = await _batch(connection, catalog, result, cursor, sample, batch)
                if not rows:
                    break
                cursor = (rows[-1]["timestamp_begin"], rows[-1]["id"])
                if not dry_run:
                    await settle_pending(holder, redis, tenant)  # this batch's adjustments
            if not dry_run:
                await holder.execute(
                    "UPDATE rerates SET examined = $2, changed = $3, delta = $4, finished_at = now() WHERE id = $1",
                    result.id, result.examined, result.changed, result.delta)
        finally:
            if not dry_run:
                await holder.execute("SELECT pg_advisory_unlock(hashtext($1), hashtext($2))", _LOCK, tenant)
    return result


async def _batch(connection, catalog: Catalog, result: Rerate, cursor: tuple, sample: int, size: int) -> list:
    """Prices one batch; unless a dry run, writes its changed records and their pending adjustments in one
    transaction. Returns the batch's rows (empty: done)."""
    async with connection.transaction(readonly=result.dry_run):
        rows = await connection.fetch(_BATCH + ("" if result.dry_run else " FOR UPDATE"), result.tenant,
                                      result.account_tag, result.start, result.end, *cursor, size)
        updates, adjustments = [], []
        for row in rows:
            result.examined += 1
            at = row["timestamp_auth"] or row["timestamp_begin"]
            priced = reprice(catalog, row["tenant"], row["account_tag"], row["destination"], at, row["duration"],
                             row["source"], row["timestamp_begin"])
            if priced is None:
                result.skipped += 1
                continue
            rate, fee = priced
            if fee == row["fee"]:
                continue
            result.changed += 1
            result.delta += fee - row["fee"]
            if len(result.calls) < sample:
                result.calls.append({
                    "transaction_tag": row["transaction_tag"], "call_id": row["call_id"],
                    "account_tag": row["account_tag"], "timestamp_begin": row["timestamp_begin"],
                    "duration": row["duration"], "old_fee": row["fee"], "new_fee": fee, "delta": fee - row["fee"],
                    "old_prefix": _prefix_of(row["destination_rate"]), "new_prefix": rate.prefix,
                })
            updates.append((row["id"], fee, _rate_json(rate), result.id, result.catalog_version))
            adjustments.append((row["account_tag"], row["transaction_tag"], row["call_id"], row["fee"], fee))
        if updates and not result.dry_run:
            await connection.executemany(_UPDATE, updates)
            await connection.execute(_ADJUST, result.id, result.tenant, *(list(c) for c in zip(*adjustments)))
    return rows


async def settle_pending(connection, redis: aioredis.Redis, tenant: str) -> int:
    """Makes the tenant's pending adjustments in Redis (each once) and marks them applied; returns how many."""
    pending = await connection.fetch(_PENDING, tenant)
    if not pending:
        return 0
    accounts = sorted({row["account_tag"] for row in pending})
    stored = {row["account_tag"]: row for row in await connection.fetch(
        "SELECT account_tag, balance, balance_version FROM accounts WHERE tenant = $1 AND account_tag = ANY($2)",
        tenant, accounts)}
    for tag in accounts:  # the library's move adds to the live balance: Redis must hold it first
        row = stored.get(tag)
        await seed_balance(redis, tenant, tag, row["balance"] if row else 0, row["balance_version"] if row else 0)
    for adjustment in pending:
        await _move(redis, adjustment)
    await connection.execute("UPDATE rerate_adjustments SET applied_at = now() WHERE id = ANY($1::bigint[])",
                             [row["id"] for row in pending])
    for run in {row["rerate_id"] for row in pending}:
        # every adjustment of the run is applied now (applies take turns): its markers are no longer needed
        if not await connection.fetchval(
                "SELECT 1 FROM rerate_adjustments WHERE rerate_id = $1 AND applied_at IS NULL", run):
            await redis.delete(markers_key(tenant, run))
    return len(pending)


async def _move(redis: aioredis.Redis, adjustment) -> None:
    """One adjustment made once, atomically (the library's rating_rerate_move): its marker, the balance move and
    the ledger row (as rating_balance makes them), and the call's final state in Redis brought to the record's
    fee; nothing when the marker says it was made. One FCALL on the tenant's slot group, so alike on one server
    and on a cluster: redis-py's cluster pipeline cannot carry this as WATCH/MULTI (it runs each command queued
    after WATCH through asyncio.run in a thread of its own, and an FCALL's key lookup, COMMAND GETKEYS, then
    uses the client's connections from a second event loop)."""
    from ..transaction import now_ms

    tenant, tag = adjustment["tenant"], adjustment["transaction_tag"]
    key = call_key(tenant, tag)
    amount = adjustment["old_fee"] - adjustment["new_fee"]  # a higher fee takes from the balance
    keys = (markers_key(tenant, adjustment["rerate_id"]), key, account_key(tenant, adjustment["account_tag"]),
            group_of(tenant).outbox)
    while True:
        doc, meta = await redis.hmget(key, callstate.DOCUMENT, callstate.META)
        refreshed = _refreshed(doc, meta, adjustment) or {}
        done = await redis.execute_command(*fcall("rating_rerate_move", keys, (
            str(adjustment["id"]), doc or "", meta or "", refreshed.get(callstate.DOCUMENT, ""),
            refreshed.get(callstate.META, ""), tenant, adjustment["account_tag"],
            0 if _rolled_back(doc, adjustment) else amount, now_ms(), tag)))
        if int(done) >= 0:
            return
        # the call's state moved between the read and the move (an end, a rollback, its expiry): look again


def _rolled_back(doc_text: str | None, adjustment) -> bool:
    """Whether the adjustment's call (a recorded one) was rolled back before its move was made: its rollback gave
    back the whole fee Redis held, the first one, so moving the difference too would give it twice. Then Redis
    holds the call removed, or (once the outbox carried the removal) PostgreSQL no longer has its record."""
    if adjustment["fee"] is None:
        return True
    if not doc_text:
        return False
    doc = orjson.loads(doc_text)
    return callstate.identity(doc)[2] == adjustment["call_id"] and bool(doc.get(callstate.REMOVED))


def _refreshed(doc_text: str | None, meta_text: str | None, adjustment) -> dict | None:
    """The call's final state in Redis with the record's current fee and rate for this account, or None when
    Redis no longer holds that call in a final, charged state."""
    if not doc_text or adjustment["fee"] is None:
        return None
    doc = orjson.loads(doc_text)
    if callstate.identity(doc)[2] != adjustment["call_id"] or doc.get(callstate.STATE) not in ("ended", "recorded") \
            or doc.get(callstate.REMOVED):
        return None
    meta = orjson.loads(meta_text or "{}")
    if adjustment["catalog_version"] is not None:
        meta[callstate.PLANNED_ON] = adjustment["catalog_version"]  # the records read from Redis say it too
    rate = adjustment["destination_rate"]
    rate = orjson.loads(rate) if isinstance(rate, str) else rate
    changed = False
    for index, party in enumerate(doc.get(callstate.PARTIES) or []):
        if isinstance(party, dict) and party.get(callstate.ACCOUNT) == adjustment["account_tag"] \
                and not party.get(callstate.INBOUND):
            party[callstate.FEE] = adjustment["fee"]
            details = meta.get(callstate.PARTY_DETAILS)
            if isinstance(details, list) and index < len(details) and isinstance(details[index], dict):
                details[index][callstate.DETAIL_RATE] = rate
            changed = True
    if not changed:
        return None
    return {callstate.DOCUMENT: orjson.dumps(doc).decode(), callstate.META: orjson.dumps(meta).decode()}

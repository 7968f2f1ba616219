"""The outbox writer: carries call records and ledger entries from the Redis stream into PostgreSQL.

A call reaches the outbox once, in its final state (ended, refused, cancelled, expired, rolled back,
recorded): one row per party written once, instead of an insert at authorization and updates at begin
and end. Open calls live in Redis, where every single-call read looks first; a reader that lists records
writes the open calls' current states itself (`catch_up`).

The outbox is one stream per slot group (cache.GROUPS, `rating:{g<n>}:outbox`); each agent process runs one
consumer of a shared consumer group on every one of them. On one Redis server a read takes all the streams
at once (XREADGROUP of 16 streams, blocking); on a Redis Cluster the streams live on different masters, so
each is read on its own and an idle writer looks again after `linger` seconds, then less and less often (up
to every `poll` seconds) while the streams stay empty. A ledger row's id is its entry id qualified by its
group (`<n>/<ms>-<seq>`: two streams give the same ids), and for the balance moves a call's entry carries
(cache/call.py moves), the move's place in it (`<n>/<ms>-<seq>/<i>`). A batch is written in one PostgreSQL
transaction and only then acknowledged and deleted from the stream, so a crash or an unreachable database
loses nothing: the entries stay pending and are written again later. Writing twice is harmless: ledger rows
are keyed by their outbox entry and records only move forward in version.

With `replicas` (--redis-replicas N) an entry is written to PostgreSQL only once N replicas of its master hold
it: the writer reads the stream as entries arrive, so without that check an entry the master answered but had
not replicated yet could reach PostgreSQL and then be lost with the master in a failover, and its call be
charged again by the retry (two ledger charge rows). After each read, a write on the same master (the stream's
`outbox:read` marker, set to the newest entry read) is followed by `WAIT N` on the same connection: the marker
is replicated after every entry read (replication is in order), so N acknowledgements of it cover them all. A
read not confirmed within the timeout is not written at all: its entries stay pending and are read and asked
for again in the next pass.

An entry PostgreSQL refuses for what it holds (a data error, not an outage) would otherwise be retried
forever and hold back every entry after it: a refused batch is split until the refused entries stand alone,
and those go to their group's dead-letter stream (`rating:{g<n>}:outbox:dead`, with the error), counted and
logged, for an operator to look at and replay (`rating-agent outbox dead-letters`,
`rating-agent outbox replay`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Awaitable, Callable

import asyncpg
import orjson
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from cache import GROUPS, OUTBOX_GROUP, UNAVAILABLE, call_key, group_of, is_cluster
from cache import call as callstate

from .database import deadline
from .records import COLUMNS, is_removed, open_version, records_of, stream_version

Entry = tuple[int, str, dict]  # (slot group, stream entry id, fields)
# What the content of an entry makes PostgreSQL (or the decoding here) refuse: trying again cannot help.
_REFUSED = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError, asyncpg.ProgramLimitExceededError,
            ValueError, KeyError, TypeError)

log = logging.getLogger(__name__)

def _quoted(column: str) -> str:
    return '"primary"' if column == "primary" else column


# Rows are copied into a session-local staging table, then merged with one statement: far cheaper for
# PostgreSQL and for us than one INSERT per row. Records only move forward in version.
_STAGE = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS outbox_records (LIKE transactions INCLUDING DEFAULTS)"
    " ON COMMIT DELETE ROWS"
)
_MERGE = (
    f"INSERT INTO transactions ({', '.join(map(_quoted, COLUMNS))})"
    f" SELECT DISTINCT ON (tenant, transaction_tag, call_id, account_tag) {', '.join(map(_quoted, COLUMNS))}"
    " FROM outbox_records ORDER BY tenant, transaction_tag, call_id, account_tag, version DESC"
    " ON CONFLICT (tenant, transaction_tag, call_id, account_tag) DO UPDATE SET "
    + ", ".join(f"{_quoted(c)} = excluded.{_quoted(c)}" for c in COLUMNS[3:])
    + " WHERE transactions.version < excluded.version"
)
_DELETE = (
    "DELETE FROM transactions WHERE tenant = $1 AND transaction_tag = $2 AND call_id = $3 AND version < $4"
)
_LEDGER = (
    "INSERT INTO ledger (id, version, tenant, account_tag, kind, amount, balance_after, transaction_tag, created_at)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, to_timestamp($9::bigint / 1000.0)) ON CONFLICT (id) DO NOTHING"
)
_BALANCE = (
    "UPDATE accounts SET balance = $3, balance_version = $4"
    " WHERE tenant = $1 AND account_tag = $2 AND balance_version < $4"
)


class Unreplicated(Exception):
    """Entries were read from a master fewer than the required replicas acknowledged within the timeout."""


async def replicated(redis: aioredis.Redis, newest: dict[int, str], replicas: int, timeout_ms: int) -> set[int]:
    """The groups of `newest` (group -> the newest entry id read from its stream) whose reads `replicas`
    replicas of their master have acknowledged: a write of the group's marker after the read, then WAIT on the
    same connection (a pipeline). On one server one pipeline and one WAIT cover every group's marker."""
    if not newest:
        return set()
    if not is_cluster(redis):
        pipe = redis.pipeline(transaction=False)
        for group, entry_id in newest.items():
            pipe.set(GROUPS[group].read, entry_id)
        pipe.execute_command("WAIT", replicas, timeout_ms)
        return set(newest) if (await pipe.execute())[-1] >= replicas else set()

    async def one(group: int, entry_id: str) -> bool:
        key = GROUPS[group].read
        node = redis.get_node_from_key(key)
        pipe = redis.pipeline()
        pipe.set(key, entry_id)
        pipe.execute_command("WAIT", replicas, timeout_ms, target_nodes=node)  # the marker's node: one connection
        acknowledged = (await pipe.execute())[-1]
        # a marker redirected elsewhere (MOVED: the slot changed hands) was not the one WAIT waited for
        return acknowledged >= replicas and redis.get_node_from_key(key).name == node.name

    confirmed = await asyncio.gather(*(one(group, entry_id) for group, entry_id in newest.items()))
    return {group for group, ok in zip(newest, confirmed) if ok}


def _newest(entries) -> dict[int, str]:
    """group -> the newest entry id among `entries` (stream ids compare as (ms, seq))."""
    newest: dict[int, str] = {}
    for group, entry_id, *_ in entries:
        if group not in newest or stream_order(entry_id) > stream_order(newest[group]):
            newest[group] = entry_id
    return newest


def stream_order(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


async def ensure_group(client: aioredis.Redis) -> None:
    """The consumer group on every group's outbox stream."""
    for group in GROUPS:
        try:
            await client.xgroup_create(group.outbox, OUTBOX_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


def ledger_id(group: int, entry_id: str) -> str:
    return f"{group}/{entry_id}"


async def write_batch(connection: asyncpg.Connection, entries: list[Entry],
                      open_calls: list[tuple[int, dict, dict]] = ()) -> None:
    """Writes one batch of outbox entries (and, for readers, open calls' current states) in one transaction."""
    latest: dict[tuple[str, str, str], tuple[int, dict, dict]] = {}  # per call: tenant, tag, identity
    ledger_rows = []
    balances: dict[tuple[str, str], tuple[int, int]] = {}
    for group, entry_id, fields in entries:
        version = stream_version(entry_id)
        if fields.get(callstate.ENTRY) == callstate.LEDGER:
            key = (fields[callstate.TENANT], fields[callstate.ACCOUNT])
            ledger_rows.append((
                ledger_id(group, entry_id), version, *key, fields[callstate.MOVE], int(fields[callstate.AMOUNT]),
                int(fields[callstate.BALANCE]), fields.get(callstate.TAG) or None, int(fields[callstate.MOVED_AT]),
            ))
            balances[key] = (int(fields[callstate.BALANCE]), version)  # integers as the library writes them
        elif fields.get(callstate.ENTRY) == callstate.TXN:
            doc, meta = callstate.decode(fields)
            latest[callstate.identity(doc)] = (version, doc, meta)
            # the call's balance moves, carried in its entry: the n-th one's row is the entry's id and n
            for index, move in enumerate(callstate.moves(fields, doc)):
                key = (move[callstate.TENANT], move[callstate.ACCOUNT])
                ledger_rows.append((
                    f"{ledger_id(group, entry_id)}/{index}", version, *key, move[callstate.MOVE],
                    move[callstate.AMOUNT], move[callstate.BALANCE], move[callstate.TAG] or None,
                    move[callstate.MOVED_AT],
                ))
                balances[key] = (move[callstate.BALANCE], version)  # the newest of the entry last
    for version, doc, meta in open_calls:
        key = callstate.identity(doc)
        if key not in latest or latest[key][0] < version:
            latest[key] = (version, doc, meta)
    upserts, deletes = [], []
    for (tenant, tag, identity), (version, doc, meta) in latest.items():
        if is_removed(doc):
            deletes.append((tenant, tag, identity, version))
            continue
        for row in records_of(doc, meta, version):
            if row["account_tag"]:
                if row["destination_rate"] is not None:
                    row["destination_rate"] = orjson.dumps(row["destination_rate"]).decode()
                upserts.append(tuple(row[c] for c in COLUMNS))
    async with connection.transaction():
        if ledger_rows:
            await connection.executemany(_LEDGER, ledger_rows)
            await connection.executemany(
                _BALANCE, [(t, a, bal, v) for (t, a), (bal, v) in balances.items()]
            )
        if deletes:
            await connection.executemany(_DELETE, deletes)
        if upserts:
            await connection.execute(_STAGE)
            await connection.copy_records_to_table("outbox_records", records=upserts, columns=COLUMNS)
            await connection.execute(_MERGE)


async def open_call_states(redis: aioredis.Redis, tenant: str | None = None) -> list[tuple[int, dict, dict]]:
    """(version, doc, meta) of every open call (of `tenant`), read from Redis: the members of the deadlines
    (of every group, or of the tenant's)."""
    if tenant is not None:
        prefix = call_key(tenant, "")
        keys = [key for key in await redis.zrange(group_of(tenant).deadlines, 0, -1) if key.startswith(prefix)]
    else:
        keys = [key for group in GROUPS for key in await redis.zrange(group.deadlines, 0, -1)]
    found = []
    for start in range(0, len(keys), 1000):
        pipe = redis.pipeline(transaction=False)
        for key in keys[start:start + 1000]:
            pipe.hgetall(key)
        for fields in await pipe.execute():
            if fields:
                doc, meta = callstate.decode(fields)
                if doc.get(callstate.STATE) in ("authorized", "begun"):
                    found.append((open_version(doc), doc, meta))
    return found


async def _changed(connection: asyncpg.Connection, calls: list[tuple[int, dict, dict]]) -> list:
    """The open calls whose current state PostgreSQL does not hold yet (an earlier listing wrote the rest)."""
    if not calls:
        return calls
    rows = await connection.fetch(
        "SELECT tenant, transaction_tag, call_id, max(version) AS version FROM transactions"
        " WHERE (tenant, transaction_tag, call_id) IN (SELECT * FROM unnest($1::text[], $2::text[], $3::text[]))"
        " GROUP BY 1, 2, 3",
        [doc.get(callstate.TENANT) for _, doc, _ in calls], [doc.get(callstate.TAG) for _, doc, _ in calls],
        [doc.get(callstate.CALL_ID) or "" for _, doc, _ in calls],
    )
    stored = {(row["tenant"], row["transaction_tag"], row["call_id"]): row["version"] for row in rows}
    return [entry for entry in calls if stored.get(callstate.identity(entry[1]), -1) < entry[0]]


async def catch_up(redis: aioredis.Redis, connection: asyncpg.Connection, limit: int = 10_000,
                   tenant: str | None = None, replicas: int = 0, replica_timeout_ms: int = 1000) -> int:
    """Writes what a reader must see and PostgreSQL may not hold yet: the outbox as it is now, and the
    current state of the open calls (of `tenant`), which only reach the outbox when they end.

    The outbox entries stay in the stream for the writer, which writes them again harmlessly; an open
    call's row is replaced by its final state later (a higher version). With `replicas`, the entries of a
    stream whose master's replicas have not acknowledged them are left to the writer (as it does, see
    `replicated`). Returns the count written.
    """
    entries = [(group.index, *entry) for group in GROUPS for entry in await redis.xrange(group.outbox, count=limit)
               if entry[1]]
    if replicas and entries:
        confirmed = await replicated(redis, _newest(entries), replicas, replica_timeout_ms)
        entries = [entry for entry in entries if entry[0] in confirmed]
    current = await _changed(connection, await open_call_states(redis, tenant))
    if entries or current:
        try:
            await write_batch(connection, entries, current)
        except _REFUSED:  # a refused entry is the writer's to set aside; the listing goes on without it
            entries = []
            await write_batch(connection, [], current)
    return len(entries) + len(current)


class OutboxWriter:
    def __init__(
        self,
        redis: aioredis.Redis,
        pool_factory: Callable[[], Awaitable[asyncpg.Pool]],
        batch: int = 500,
        on_written: Callable[[int], None] | None = None,
        claim_idle: float = 30.0,
        on_dead: Callable[[int], None] | None = None,
        timeout: float = 30.0,
        forget_idle: float = 600.0,
        linger: float = 0.25,
        poll: float = 1.0,
        replicas: int = 0,
        replica_timeout: float = 1.0,
    ) -> None:
        self.redis = redis
        self.replicas = replicas  # replicas of its master an entry must be on before it is written (--redis-replicas)
        self.replica_timeout_ms = max(1, int(replica_timeout * 1000))
        # one read takes every group's stream on one server; a cluster's streams are read one by one
        self.together = not is_cluster(redis)
        self.poll = poll  # the longest an idle writer of a cluster waits before looking at the streams again
        self.timeout = timeout  # seconds one batch may take (see database.deadline)
        self.linger = linger
        self.claim_idle_ms = int(claim_idle * 1000)
        # entries become claimable only after claim_idle: looking for them twice per claim_idle is enough
        # (every pass did, one XAUTOCLAIM per batch)
        self._claim_every = claim_idle / 2
        self._next_claim = 0.0
        # entries this consumer read and may not have acknowledged: only at start and after a pass that failed
        # (every pass read its pending list, one XREADGROUP per batch)
        self._unsure = True
        # a consumer silent this long holds no entries (they are claimed after claim_idle): it is gone
        self.forget_idle_ms = int(max(forget_idle * 1000, 2 * self.claim_idle_ms))
        self._next_forget = 0.0
        self.pool_factory = pool_factory
        self.batch = batch
        self.name = consumer_name()
        self.on_written = on_written or (lambda count: None)
        self.on_dead = on_dead or (lambda count: None)
        self.written = 0
        self.dead = 0

    async def _read(self, groups, start: str, block: int | None) -> dict[int, list[tuple[str, dict]]]:
        """Entries of `groups`' streams, per group; in one command on one server, else one per stream."""
        if self.together:
            reply = await self.redis.xreadgroup(
                OUTBOX_GROUP, self.name, {group.outbox: start for group in groups}, count=self.batch, block=block
            )
            by_stream = {stream: entries for stream, entries in reply or ()}
            return {group.index: by_stream.get(group.outbox, []) for group in groups}
        found = {}
        for group in groups:
            reply = await self.redis.xreadgroup(OUTBOX_GROUP, self.name, {group.outbox: start}, count=self.batch)
            found[group.index] = reply[0][1] if reply else []
        return found

    async def _claim_abandoned(self, groups) -> dict[int, list[tuple[str, dict]]]:
        """Entries another consumer took and never acknowledged (it died) for a while."""
        found = {}
        for group in groups:
            reply = await self.redis.xautoclaim(
                group.outbox, OUTBOX_GROUP, self.name, self.claim_idle_ms, "0-0", count=self.batch
            )
            found[group.index] = reply[1]
        await self._forget_dead_consumers()
        return found

    async def _forget_dead_consumers(self) -> None:
        """Unregisters consumers that hold nothing and have been silent for a long while: every restart of
        a writer registers a new name (host-pid), and the group would otherwise list every one ever seen."""
        now = time.monotonic()
        if now < self._next_forget:
            return
        self._next_forget = now + 60.0
        for group in GROUPS:
            for consumer in await self.redis.xinfo_consumers(group.outbox, OUTBOX_GROUP):
                if consumer["name"] != self.name and consumer["pending"] == 0 \
                        and consumer["idle"] > self.forget_idle_ms:
                    await self.redis.xgroup_delconsumer(group.outbox, OUTBOX_GROUP, consumer["name"])

    async def _write(self, entries: list[Entry]) -> list[tuple[int, str, dict, str]]:
        """Writes `entries`, retrying through outages; returns those refused for their content, with why."""
        delay = 0.2
        while True:
            try:
                pool = await self.pool_factory()
                async with pool.acquire(timeout=5) as connection:
                    with deadline(connection, self.timeout):
                        await write_batch(connection, entries)
                return []
            except _REFUSED as exc:
                if len(entries) == 1:
                    return [(*entries[0], f"{type(exc).__name__}: {exc}")]
                half = len(entries) // 2
                return await self._write(entries[:half]) + await self._write(entries[half:])
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncio.TimeoutError) as exc:
                log.warning("outbox: PostgreSQL write failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _deliver(self, entries: list[Entry]) -> None:
        """Writes entries of any groups in one PostgreSQL transaction, then acknowledges them per group (one
        MULTI per group: a group's stream and dead letters share its slot)."""
        refused = await self._write(entries)
        for group in {group for group, _, _ in entries}:
            outbox = GROUPS[group]
            pipe = self.redis.pipeline(transaction=True)
            for _, entry_id, fields, error in (dead for dead in refused if dead[0] == group):
                log.error("outbox: entry %s refused by PostgreSQL (%s); moved to %s", entry_id, error, outbox.dead)
                pipe.xadd(outbox.dead, {**fields, "dead_id": entry_id, "dead_error": error[:2000]})
            ids = [entry_id for of, entry_id, _ in entries if of == group]
            pipe.xack(outbox.outbox, OUTBOX_GROUP, *ids)
            pipe.xdel(outbox.outbox, *ids)
            await pipe.execute()
        self.written += len(entries) - len(refused)
        self.on_written(len(entries) - len(refused))
        if refused:
            self.dead += len(refused)
            self.on_dead(len(refused))

    async def drain_once(self, block: int | None = None) -> int:
        """Writes what may be pending for this consumer, abandoned entries (when due), then new ones. Returns
        the count. A stream whose read returns less than a batch is done for this source: what arrives
        meanwhile is the next pass's (one read fewer per batch)."""
        total = 0
        try:
            for source in ("pending", "abandoned", "new"):
                if source == "pending" and not self._unsure:
                    continue
                if source == "abandoned":
                    if time.monotonic() < self._next_claim:
                        await self._forget_dead_consumers()
                        continue
                    self._next_claim = time.monotonic() + self._claim_every
                groups = GROUPS
                while groups:
                    if source == "pending":
                        read = await self._read(groups, "0", None)
                    elif source == "abandoned":
                        read = await self._claim_abandoned(groups)
                    else:
                        read = await self._read(groups, ">", block if total == 0 else None)
                    entries = [(group, *entry) for group, found in read.items() for entry in found if entry[1]]
                    if entries and self.replicas:
                        newest = _newest(entries)
                        missing = set(newest) - await replicated(self.redis, newest, self.replicas,
                                                                 self.replica_timeout_ms)
                        if missing:  # nothing of the read written: it stays pending, asked for again
                            raise Unreplicated(f"{len(entries)} entries read, of slot groups {sorted(missing)}"
                                               f" not yet on {self.replicas} replicas")
                    if entries:
                        await self._deliver(entries)
                        total += len(entries)
                    groups = [GROUPS[group] for group, found in read.items() if len(found) >= self.batch]
                if source == "pending":
                    self._unsure = False
        except BaseException:  # cancelled or failed in the middle of a batch: it may be pending, unacknowledged
            self._unsure = True
            raise
        return total

    async def run(self, linger: float | None = None) -> None:
        """Writes until cancelled. After a pass that found less than a batch, it waits `linger` seconds
        (default: the writer's) so that the next pass writes a larger batch: the per-batch cost (transaction,
        staging, merge, acknowledgement) dominates small batches. The entries wait in the stream, as durable
        as Redis is: a writer stopped while it waits loses nothing (its final drain, or any writer, takes them)."""
        linger = self.linger if linger is None else linger
        idle = linger
        while True:
            try:
                await ensure_group(self.redis)
                while True:
                    written = await self.drain_once(block=1000)
                    if 0 < written < self.batch:
                        await asyncio.sleep(linger)
                    if written:
                        idle = linger
                    elif not self.together:  # no blocking read across a cluster's streams: 16 reads a look
                        await asyncio.sleep(idle)
                        idle = min(max(idle, 0.05) * 2, max(self.poll, linger))
            except asyncio.CancelledError:
                raise
            except UNAVAILABLE as exc:
                log.warning("outbox: Redis unavailable (%s)", exc)
                await asyncio.sleep(1.0)
            except Unreplicated as exc:  # WAIT has waited already; the next pass reads the same entries again
                log.warning("outbox: %s; retrying", exc)
                await asyncio.sleep(0.1)
            except Exception:  # noqa: BLE001 - the writer must outlive any single bad batch
                log.exception("outbox: unexpected failure; retrying")
                await asyncio.sleep(1.0)


async def dead_letters(redis: aioredis.Redis) -> list[tuple[str, dict]]:
    """The entries PostgreSQL refused, of every group, oldest first in each (each with `dead_id` and
    `dead_error`); an entry's id is qualified by its group (`<n>/<ms>-<seq>`, as `replay` takes it)."""
    found = []
    for group in GROUPS:
        found += [(ledger_id(group.index, entry_id), fields) for entry_id, fields in await redis.xrange(group.dead)]
    return found


async def replay(redis: aioredis.Redis, ids: list[str] | None = None) -> int:
    """Puts dead letters (all, or those named by their id from `dead_letters`) back in their group's outbox;
    returns the count."""
    moved = 0
    for qualified, fields in await dead_letters(redis):
        if ids and qualified not in ids:
            continue
        group, _, entry_id = qualified.partition("/")
        keys = GROUPS[int(group)]
        original = {k: v for k, v in fields.items() if k not in ("dead_id", "dead_error")}
        pipe = redis.pipeline(transaction=True)
        pipe.xadd(keys.outbox, original)
        pipe.xdel(keys.dead, entry_id)
        await pipe.execute()
        moved += 1
    return moved

"""Building deck artifacts (pricing/deck.py) from PostgreSQL, finding them on disk, activating them.

Decks live under `--deck-dir`, one folder per database (named by its `catalog_identity`, so agents of two
databases never share a deck), then per tenant, then per version: the folder is named by the change-log
position the deck covers. A deck is built after a bulk change (a deck import changing more rates than
importer.OVERLAY_LIMIT, a pricelist or carrier renamed or deleted) or when too many rate changes piled up
over the current one, by whoever made the change or by `ensure` at start; it is activated by a `deck`
change row naming what it covers, and every agent of the host then maps the newest local deck covering at
least that much.

Builds run outside the serving processes: in the supervisor before the workers start, in the CLI, or in
a child process (`python -m agent build-decks`) started by the process that made the change. A large deck
import (CLI or upload) builds its tenant's deck itself, from its own transaction while PostgreSQL writes
the rates (`ImportBuild`), instead of reading the tenant back from PostgreSQL once it has committed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Iterable, Sequence

import asyncpg

import cache
from cache import followers

from ..config import Settings
from ..pricing import deck
from ..pricing.rate import Rate, stored_window
from ..turns import AT_ONCE, Turns
from . import changes

log = logging.getLogger(__name__)
COMPACT_AFTER = 10_000  # distinct rates changed over a deck (rate changes) after which a fresh deck is built
COMPACT_LOG = 200_000  # rates named by the rate changes since a deck, repeats counted, after which too
_COMPACT_LOOKS = 30  # looks at the change log (one a second) per count of the distinct rates changed
_BUILD_NICE = 19  # scheduling priority of a deck build's process, as the manager's (serve._NICE)
BUILD_NICE_VARIABLE = "RATING_DECK_BUILD_NICE"  # how build_elsewhere passes it on (not a setting)
_ROWS_FETCHED = 128  # named rates read_rates asks PostgreSQL for at a time
_BUILD_LOCK = 0x5241_5444  # "RATD", with the tenant's hash: one build per tenant at a time


async def database_folder(connection: asyncpg.Connection, root: str | os.PathLike) -> Path:
    """Where this host keeps the decks of this database in this agent's deck format: decks of another format
    (another agent version on the host) are neither read nor removed here, and missing ones are built."""
    identity = await connection.fetchval("SELECT id FROM catalog_identity")
    return Path(root) / str(identity) / f"format-{deck.FORMAT}"


def tenant_folder(folder: Path, tenant: str) -> Path:
    return folder / hashlib.sha1(tenant.encode()).hexdigest()[:16]


def local_deck(folder: Path, tenant: str, covers: int) -> Path | None:
    """The newest deck of `tenant` built here that covers at least `covers`."""
    best = None
    try:
        for entry in tenant_folder(folder, tenant).iterdir():
            if entry.name.isdigit() and int(entry.name) >= covers:
                if best is None or int(entry.name) > int(best.name):
                    best = entry
    except FileNotFoundError:
        return None
    return best


def prune(folder: Path, tenant: str, keep_from: int) -> None:
    """Removes the tenant's decks older than `keep_from` (the one active before the newest is kept, for a
    process still switching; a process that maps a removed deck keeps reading it until it lets it go)."""
    for entry in tenant_folder(folder, tenant).iterdir():
        if entry.name.isdigit() and int(entry.name) < keep_from or entry.name.endswith(".partial") and \
                entry.stat().st_mtime < time.time() - 3600:
            shutil.rmtree(entry, ignore_errors=True)


# The log's tenants and what each one's newest deck covers, found through the log's (tenant, kind, seq) index
# (a loose index scan, then one index range per tenant): the log grows by every change ever made, and a
# scan of it every second would grow with it.
_TENANTS = (
    "WITH RECURSIVE tenants AS ((SELECT tenant FROM catalog_changes ORDER BY tenant LIMIT 1) UNION ALL"
    "  SELECT (SELECT c.tenant FROM catalog_changes c WHERE c.tenant > t.tenant ORDER BY c.tenant LIMIT 1)"
    "  FROM tenants t WHERE t.tenant IS NOT NULL)")
_COVERED = _TENANTS + (
    ", decks AS (SELECT t.tenant, (SELECT max((c.subject->>'covers')::bigint) FROM catalog_changes c"
    "  WHERE c.tenant = t.tenant AND c.kind = 'deck') AS covers FROM tenants t WHERE t.tenant IS NOT NULL)")


async def activations(connection: asyncpg.Connection) -> dict[str, int]:
    """What the newest activated deck of each tenant covers."""
    rows = await connection.fetch(_COVERED + " SELECT tenant, covers FROM decks WHERE covers IS NOT NULL")
    return {row["tenant"]: row["covers"] for row in rows}


async def rate_tenants(connection: asyncpg.Connection) -> list[str]:
    """The tenants with rate changes in the log."""
    rows = await connection.fetch(_TENANTS + " SELECT tenant FROM tenants t WHERE (SELECT true FROM catalog_changes c"
                                  "  WHERE c.tenant = t.tenant AND c.kind = 'rate' LIMIT 1)")  # not a join: by index
    return [row["tenant"] for row in rows]


async def stale_tenants(connection: asyncpg.Connection, compact_after: int | None = COMPACT_AFTER,
                        compact_log: int = COMPACT_LOG) -> list[str]:
    """Tenants whose rates changed in bulk since their deck, or whose rate changes since it name more than
    `compact_after` distinct rates (what the processes lay over the deck; None: not counted), or more than
    `compact_log` in all (what a starting process reads back): the same rates changed again and again grow
    only the latter."""
    # The subjects are read only to count distinct rates, for the tenants that may need it.
    distinct = "" if compact_after is None else (
        " OR logged > $2 AND (SELECT count(DISTINCT rate) FROM catalog_changes c, jsonb_array_elements(c.subject) rate"
        "  WHERE c.tenant = s.tenant AND c.kind = 'rate' AND c.seq > s.covers) > $2")
    rows = await connection.fetch(
        _COVERED + " SELECT tenant FROM (SELECT d.tenant, coalesce(d.covers, 0) AS covers, since.bulk, since.logged"
        "  FROM decks d CROSS JOIN LATERAL (SELECT bool_or(c.kind = 'bulk') AS bulk, sum(c.size) AS logged"
        "  FROM catalog_changes c WHERE c.tenant = d.tenant AND c.kind IN ('bulk', 'rate')"
        "  AND c.seq > coalesce(d.covers, 0)) since) s"
        " WHERE bulk OR logged > $1" + distinct, compact_log, *(() if compact_after is None else (compact_after,)))
    return [row["tenant"] for row in rows]


async def read_rates(connection: asyncpg.Connection, tenant: str,
                     identities: Sequence[tuple[str, str, str]] | None = None) -> list[Rate]:
    """The tenant's active rates, or those of `identities` ((pricelist, carrier, prefix)): a few of them, for
    changes laid over a deck (a whole deck is read with `read_columns`)."""
    shared: dict = {}  # one string object per repeated tag or description
    # The pricelists' money scale, rounding and time zone apart: joined in, the prepared (generic) plan of a few named
    # rates went through the pricelist to all of its rates (89 ms at 57,000 rates, the catch-up of every change).
    pricelists = await connection.fetch(
        "SELECT pricelist_tag, scale, rounding, timezone FROM pricelists WHERE tenant = $1", tenant)
    money = {row[0]: (row[1], row[2]) for row in pricelists}
    zones = {row[0]: row[3] for row in pricelists}  # time windows: the pricelists' time zones
    query = ("SELECT pricelist_tag, carrier_tag, prefix, connect_fee, rate, rate_increment, interval_start,"
             " description, datetime_start, datetime_end, initial_increment, minimum_duration, maximum_cost,"
             " source_prefix, weekdays, time_start, time_end FROM pricelist_rates WHERE tenant = $1 AND active")
    found: list[Rate] = []
    turns = Turns()  # a serving loop answers between two turns (a change of thousands of rates)
    # Named rates are asked for _ROWS_FETCHED at a time: asyncpg decodes an answer as it arrives, all at
    # once, which for a thousand rates held the loop for milliseconds.
    named = " AND (pricelist_tag, carrier_tag, prefix) IN (SELECT * FROM unnest($2::text[], $3::text[], $4::text[]))"
    asks = [(query, [])] if identities is None else [
        (query + named, [list(column) for column in zip(*identities[n:n + _ROWS_FETCHED])])
        for n in range(0, len(identities), _ROWS_FETCHED)]
    for statement, columns in asks:
        rows = await connection.fetch(statement, tenant, *columns)
        for done in range(0, len(rows), AT_ONCE):
            if turns.due():
                await turns.give()
            found += [Rate(tenant, shared.setdefault(pricelist, pricelist), shared.setdefault(carrier, carrier),
                           prefix, connect_fee, rate, increment, free, shared.setdefault(text, text), start, end,
                           first, minimum, most, *money[pricelist], shared.setdefault(origin, origin),
                           *stored_window(days, since, until), zones[pricelist])
                      for pricelist, carrier, prefix, connect_fee, rate, increment, free, text, start, end, first,
                      minimum, most, origin, days, since, until in rows[done:done + AT_ONCE]]
    return found


async def read_columns(connection: asyncpg.Connection, tenant: str) -> deck.Columns:
    """The tenant's active rates as deck columns, without a `Rate` per row; call in a transaction."""
    rows, micros = await _copy_rows(connection, "pricelist_rates", tenant)
    return rows.columns(micros)


async def _copy_rows(connection: asyncpg.Connection, rates: str, tenant: str) -> tuple[deck.TextRows, dict[str, int]]:
    """The tenant's active rates in `rates` (a table, or a query in brackets, of pricelist_rates' columns) as
    parsed COPY output, and the micros of its dates (for `TextRows.columns`); call in a transaction.

    One COPY in text format, parsed block by block (deck.TextRows); the distinct dates are read back as
    timestamps by PostgreSQL itself, in the same session, so they come out as `read_rates` gives them.
    """
    rows = deck.TextRows()
    try:
        style = await connection.fetchval("SELECT current_setting('DateStyle')")
        await connection.execute("SET LOCAL DateStyle = 'ISO, YMD'")
        await connection.copy_from_query(
            f"SELECT {', '.join(deck.TextRows.COLUMNS)} FROM {rates} rates"
            " JOIN pricelists USING (tenant, pricelist_tag) WHERE tenant = $1 AND active", tenant,  # scale, rounding
            output=rows.feed)
        await rows.finish()
        moments = rows.moments()
        stamps = await connection.fetch(
            "SELECT m::timestamptz FROM unnest($1::text[]) WITH ORDINALITY AS u(m, n) ORDER BY n", moments)
        await connection.execute("SELECT set_config('DateStyle', $1, true)", style)
    finally:
        rows.close()
    return rows, {m: deck.micros(stamp[0]) for m, stamp in zip(moments, stamps)}


class ImportBuild:
    """The decks of the tenants a large deck import changes, built from the import's own transaction while
    PostgreSQL writes the rates, instead of reading every rate of the tenant back after the commit.

    The importer (store/importer.py) calls `start` in its transaction once it knows what the tenant's rates
    will be (its staged rows and the stored ones they leave as they are) and before it writes them: the
    rates are read in one COPY and built into a scratch folder in a thread, meanwhile PostgreSQL merges.
    `check` runs after the import's changes are logged, holding the change log's lock: a build is kept only
    if no other writer changed the tenant's rates since its read began. Once the import has committed,
    `activate` gives the kept decks the import's position in the change log and activates them; a tenant
    whose build was dropped or failed is left to the usual build from PostgreSQL (`build_tenant`). An
    import that fails activates nothing (its scratch folders are removed, or pruned within the hour).
    """

    def __init__(self, root: str | os.PathLike, say=None) -> None:
        self.root = root
        self.say = say or (lambda text: None)  # progress, for the command line
        self._folder: Path | None = None
        self._floor: int | None = None  # the change log's position before the first read
        self._builds: dict[str, tuple[asyncio.Future, float]] = {}  # tenant -> (its scratch folder, read s)
        self._early: tuple[tuple, concurrent.futures.Future] | None = None  # see `resolve_early`

    async def prepare(self, connection: asyncpg.Connection) -> None:
        """At the start of the import's transaction, before it reads any stored rate: where the change log is."""
        self._folder = await database_folder(connection, self.root)
        self._floor = await changes.last_seq(connection)

    async def start(self, connection: asyncpg.Connection, tenant: str, rates: str) -> None:
        """Reads the tenant's rates as the import will leave them (`rates`: see `_copy_rows`) and builds them."""
        if tenant in self._builds:  # the import's merge runs again (another writer added a rate meanwhile)
            self._drop(tenant)
        started = time.perf_counter()
        rows, micros = await _copy_rows(connection, rates, tenant)
        read = time.perf_counter() - started
        partial = tenant_folder(self._folder, tenant) / f"import-{os.getpid()}-{time.time_ns()}.partial"

        def build() -> Path:
            began = time.perf_counter()
            columns = rows.columns(micros)
            deck.write_columns(partial, tenant, columns)
            log.info("deck of tenant %r: %d rates read in %.1fs, built in %.1fs (from the import, during its"
                     " merge)", tenant, len(columns.key), read, time.perf_counter() - began)
            return partial

        self.say(f"deck of tenant {tenant!r}: rates read in {read:.1f}s, building while PostgreSQL merges")
        self._builds[tenant] = (asyncio.get_running_loop().run_in_executor(None, build), read)

    async def resolve_early(self, connection: asyncpg.Connection, tenant: str, stream: deck.CsvRows, tag: str,
                            decode) -> None:
        """Starts `stream.resolve` and its duplicates for the tenant's pricelist `tag` in a thread now, while
        PostgreSQL still works on the import's other steps; `start_stream` takes the result if it is asked
        for the same tenant, pricelist and pricelist terms (or resolves again)."""
        terms = await _terms(connection, tenant)

        def resolve():
            stream.resolve(decode, tenant, tag, terms)
            return stream.duplicates()
        executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="deck-resolve")
        self._early = ((tenant, tag, terms), executor.submit(resolve))
        executor.shutdown(wait=False)

    async def start_stream(self, connection: asyncpg.Connection, tenant: str, stream: deck.CsvRows, tag: str,
                           stored: str, decode) -> asyncio.Future:
        """Builds the tenant's deck from the rows of its pricelist `tag` as the import streamed them to COPY
        (`stream`, finished; `decode`: see `CsvRows.resolve`) and the stored rates the import leaves
        (`stored`: see `_copy_rows`), without reading the import's table back. Returns a future of the COPY's
        row numbers that later rows of the same rate replace (to be deleted before the table's unique index
        is built); the build goes on in a thread."""
        if tenant in self._builds:
            self._drop(tenant)
        started = time.perf_counter()
        rows, micros = await _copy_rows(connection, stored, tenant)
        terms = await _terms(connection, tenant)
        read = time.perf_counter() - started
        early, self._early = self._early, None
        partial = tenant_folder(self._folder, tenant) / f"import-{os.getpid()}-{time.time_ns()}.partial"
        loop = asyncio.get_running_loop()
        replaced: asyncio.Future = loop.create_future()

        def answer(value=None, error: BaseException | None = None) -> None:
            if not replaced.done():
                replaced.set_exception(error) if error is not None else replaced.set_result(value)

        def build() -> Path:
            began = time.perf_counter()
            try:
                later = None
                if early is not None:  # resolved while PostgreSQL worked (resolve_early), if for these rows
                    try:
                        found = early[1].result()
                    except Exception:  # noqa: BLE001 - resolved again below, which raises what it raises
                        found = None
                    later = found if early[0] == (tenant, tag, terms) else None
                if later is None:
                    stream.resolve(decode, tenant, tag, terms)
                    later = stream.duplicates()
            except BaseException as exc:
                loop.call_soon_threadsafe(answer, None, exc)
                raise
            loop.call_soon_threadsafe(answer, stream.numbers()[later])
            resolved = time.perf_counter() - began
            columns = deck.join_columns(stream.columns(later), rows.columns(micros))
            deck.write_columns(partial, tenant, columns)
            log.info("deck of tenant %r: %d rates read in %.1fs, built in %.1fs (from the import's rows as they"
                     " went to COPY, their duplicates found in %.1fs%s; the stored rates it keeps read from"
                     " PostgreSQL)", tenant, len(columns.key), read, time.perf_counter() - began, resolved,
                     " before" if early is not None and early[0] == (tenant, tag, terms) else "")
            return partial

        self.say(f"deck of tenant {tenant!r}: building from the rows copied, while PostgreSQL indexes them")
        self._builds[tenant] = (loop.run_in_executor(None, build), read)
        return replaced

    async def check(self, connection: asyncpg.Connection, own: dict[str, int]) -> None:
        """Drops the builds of tenants whose rates changed (`rate` or `bulk` changes) since the first read,
        other than by the import's own `own` changes of each tenant. Call holding the change log's lock,
        after the import logged its changes (no other writer can log any until it commits)."""
        if not self._builds:
            return
        rows = await connection.fetch(
            "SELECT tenant, count(*) AS n FROM catalog_changes WHERE seq > $1 AND tenant = ANY($2::text[])"
            " AND kind IN ('rate', 'bulk') GROUP BY tenant", self._floor, list(self._builds))
        for row in rows:
            if row["n"] != own.get(row["tenant"], 0):
                log.info("deck of tenant %r changed by another writer during the import: built again from"
                         " PostgreSQL", row["tenant"])
                self._drop(row["tenant"])

    async def activate(self, connection: asyncpg.Connection, covers: int) -> list[deck.DeckInfo]:
        """After the import committed at change `covers`: activates the decks built, and returns them (the
        tenants without one need a build from PostgreSQL)."""
        built: list[deck.DeckInfo] = []
        for tenant, (future, _) in list(self._builds.items()):
            try:
                partial = await future
            except Exception as exc:  # noqa: BLE001 - the usual build from PostgreSQL does it instead
                log.warning("deck of tenant %r: the build during the import failed (%s)", tenant, exc)
                continue
            target = tenant_folder(self._folder, tenant) / str(covers)
            if target.exists():  # another builder saw the same position
                shutil.rmtree(partial, ignore_errors=True)
                built.append(deck.DeckInfo(target, tenant, covers, 0, 0, 0))
            else:
                built.append(deck.seal(partial, target, covers))
        self._builds.clear()
        if built:
            previous = await activations(connection)
            recorder = changes.Recorder()
            for info in built:
                recorder.add(info.tenant, "deck", {"covers": covers})
            async with connection.transaction():
                await recorder.write(connection)
            for info in built:
                prune(self._folder, info.tenant, previous.get(info.tenant, 0))
        return built

    def _drop(self, tenant: str) -> None:
        future, _ = self._builds.pop(tenant)
        future.add_done_callback(lambda f: f.cancelled() or f.exception() is not None
                                 or shutil.rmtree(f.result(), ignore_errors=True))

    async def discard(self) -> None:
        """After a failed import: removes what was built."""
        for tenant in list(self._builds):
            future, _ = self._builds[tenant]
            self._drop(tenant)
            try:
                await future
            except Exception:  # noqa: BLE001 - nothing to keep
                pass


async def _terms(connection: asyncpg.Connection, tenant: str) -> dict[str, tuple[int, str, str]]:
    """(scale, rounding, timezone) of the tenant's pricelists, by tag."""
    return {row[0]: (row[1], row[2], row[3]) for row in await connection.fetch(
        "SELECT pricelist_tag, scale, rounding, timezone FROM pricelists WHERE tenant = $1", tenant)}


async def build_tenant(pool: asyncpg.Pool, root: str | os.PathLike, tenant: str,
                       activate: bool = True) -> deck.DeckInfo | None:
    """Builds the tenant's deck as stored now and (by default) activates it; one build per tenant at a time,
    and none when another builder did the work while this one waited for its turn (None)."""
    lock = _BUILD_LOCK ^ int(hashlib.sha1(tenant.encode()).hexdigest()[:8], 16)
    async with pool.acquire() as connection:
        await connection.execute("SELECT pg_advisory_lock($1)", lock)
        try:
            if activate and tenant not in await stale_tenants(connection):
                return None
            if not activate:
                covers = (await activations(connection)).get(tenant, 0)
                if local_deck(await database_folder(connection, root), tenant, covers) is not None:
                    return None
            started = time.perf_counter()
            async with connection.transaction(isolation="repeatable_read", readonly=True):
                await changes.lock_rates(connection)  # before the snapshot: a partition swap is not MVCC-safe
                covers = await changes.last_seq(connection)
                folder = await database_folder(connection, root)
                columns = await read_columns(connection, tenant)
            read = time.perf_counter() - started
            target = tenant_folder(folder, tenant) / str(covers)
            if target.exists():
                info = deck.DeckInfo(target, tenant, covers, 0, len(columns.key), 0)
            else:
                info = deck.build_columns(target, tenant, columns, covers)
            log.info("deck of tenant %r: %d rates read in %.1fs, built in %.1fs (%.1f MB), covers change %d",
                     tenant, len(columns.key), read, time.perf_counter() - started - read, info.bytes / 1e6, covers)
            del columns
            if activate:
                previous = (await activations(connection)).get(tenant, 0)
                async with connection.transaction():
                    await changes.record(connection, tenant, "deck", {"covers": covers})
                prune(folder, tenant, previous)
        finally:
            await connection.execute("SELECT pg_advisory_unlock($1)", lock)
    return info


async def lacking(pool: asyncpg.Pool, root: str | os.PathLike,
                  compact: bool = True) -> tuple[list[str], list[str]]:
    """(tenants changed in bulk since their deck, or by many rate changes, counted distinct only when
    `compact`; tenants whose activated deck is not built on this host)."""
    async with pool.acquire() as connection:
        stale = await stale_tenants(connection, COMPACT_AFTER if compact else None)
        active = await activations(connection)
        folder = await database_folder(connection, root)
    return stale, [t for t, covers in active.items() if t not in stale and local_deck(folder, t, covers) is None]


async def ensure(pool: asyncpg.Pool, root: str | os.PathLike) -> list[deck.DeckInfo]:
    """Builds what this host lacks: decks of tenants changed in bulk, and local copies of activated decks
    built elsewhere. Returns what it built."""
    stale, absent = await lacking(pool, root)
    built = [await build_tenant(pool, root, tenant) for tenant in stale]
    built += [await build_tenant(pool, root, tenant, activate=False) for tenant in absent]
    return [info for info in built if info is not None]


async def follow(settings: Settings, pool: asyncpg.Pool, redis, interval: float = 1.0,
                 writer_grace: float = 5.0) -> None:
    """The host's deck builder (in the housekeeper): builds whatever `lacking` finds, in a child process,
    and publishes it. Usually the writer of a bulk change does so itself: a tenant changed in bulk is left
    to its writer for `writer_grace` seconds (a second build beside the writer's would only wait for its
    lock and take CPU from the serving processes); this catches a writer that died before, and decks
    activated by another host."""
    first_seen: dict[str, float] = {}
    looks = 0
    while True:
        await asyncio.sleep(interval)
        looks += 1
        try:
            stale, absent = await lacking(pool, settings.decks, compact=False)
            now = time.monotonic()
            first_seen = {tenant: first_seen.get(tenant, now) for tenant in stale}
            overdue = {tenant for tenant, seen in first_seen.items() if now - seen >= writer_grace}
            if looks % _COMPACT_LOOKS == 0:  # counting distinct rates reads the log since the deck: not every second
                async with pool.acquire() as connection:
                    overdue.update(set(await stale_tenants(connection)) - set(stale))  # no writer builds these
            if overdue or absent:
                await publish(settings, pool, redis, {*overdue, *absent})
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - try again at the next look
            log.warning("decks: could not build (%s)", exc)


async def build_elsewhere(settings: Settings) -> None:
    """Runs `ensure` in a child process (`rating-agent build-decks`), so a serving event loop waits for the
    build without doing it."""
    environment = {**os.environ, "RATING_DATABASE_URL": settings.database_url, "RATING_DECK_DIR": settings.decks,
                   "RATING_LOG_LEVEL": "WARNING"}
    # the build may wait for the serving processes, never they for it (a compaction's, a host's copy)
    environment[BUILD_NICE_VARIABLE] = str(_BUILD_NICE)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "build-decks", env=environment,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        _, errors = await process.communicate()
    except asyncio.CancelledError:
        process.kill()
        await process.wait()
        raise
    if process.returncode != 0:
        raise RuntimeError(f"building the deck failed: {errors.decode(errors='replace')[-2000:]}")


async def publish(settings: Settings, pool: asyncpg.Pool, redis, rebuilt: Iterable[str] = (),
                  build=build_elsewhere, accounts: Iterable[tuple[str, str]] | None = None) -> int:
    """After a committed catalog change: builds the decks its bulk changes need, then publishes the change
    log's position in Redis, from where every authorization learns it (read-your-writes); for a change of
    `accounts` alone (Recorder.accounts_alone), only their authorizations."""
    if rebuilt:
        await build(settings)
    async with pool.acquire() as connection:
        seq = await changes.last_seq(connection)
    try:
        # the processes catch up on the change's notification while still rating on the catalog before it
        # (the change is not answered yet), so no authorization waits for their catch-up (cache/followers.py)
        await followers.settle(redis, seq)
        return await cache.publish_catalog(redis, seq, accounts)
    except cache.UNAVAILABLE as exc:  # committed all the same: agents find it in the log within a second
        log.warning("catalog change %d not published (Redis: %s)", seq, exc)
        return 0

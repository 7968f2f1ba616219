"""The five operations on a call (authorization, begin, end, rollback, record) as the agent performs them.

Each one plans the call from the in-memory catalog (pure kernel), then settles it with one atomic Redis
function call, and answers with Canyan's response fields. Shared by the REST and GraphQL front ends.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable, NamedTuple

import asyncpg
import orjson

from cache import AutoPipeline, account_key, call_keys, fcall, open_calls_key, published_for, undeclared
from cache import call as callstate
from cache import party_keys as cache_party_keys

from .config import Settings
from .logs import Throttled
from .pricing.catalog import Catalog
from .pricing.plan import Party, Plan, plan_call
from .pricing.rate import tariff_numbers


log = logging.getLogger(__name__)
_WARNINGS = Throttled(log)


class Conflict(Exception):
    """The request contradicts the call's state (a 409 for the client)."""


class Invalid(ValueError):
    """A request whose fields are each valid but do not make a call together (a 422 naming `field`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


class CatalogBehind(ConnectionError):
    """This worker could not catch up with the published catalog (answered 503, like Redis unavailable)."""


# Claimed on a plan made after catching up once: every change answered before the request arrived is at or
# below the version the first stale reply named, so changes published since need not make it stale again.
_CAUGHT_UP = 2**53
_PG_TIMEOUT = 5.0  # seconds for PostgreSQL to tell what it holds of a call Redis lost
_TRIES = 5  # plans per request: the catalog may move while the worker catches up, accounts may need seeding


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def to_ms(moment: datetime | None) -> int:
    return now_ms() if moment is None else int(moment.timestamp() * 1000)


def _moment(at: int) -> datetime:
    return datetime.fromtimestamp(at / 1000, tz=timezone.utc)


# The time given to the planner when no rate of the tenant has effective dates: it is never compared
# then, and building a timezone-aware datetime per request cost about 4,600 instructions (1.3%).
_UNDATED = datetime.fromtimestamp(0, tz=timezone.utc)


def call_identity() -> str:
    """A new call's identity (64 random bits): what tells two calls under one transaction tag apart."""
    return os.urandom(8).hex()


def _limit(value: int | None) -> int:
    return -1 if value is None else value


_META = ("account_tag", "destination_account_tag", "source", "source_ip", "destination", "carrier_ip", "tags")
_STORED = ("account_tag", "source", "source_ip", "destination", "carrier_ip")  # what a record tells of its call
_FRAGMENTS_LIMIT = 200_000  # rates (and requests' party keys) remembered per snapshot: a bound for tables of
# millions of prefixes
# the byte templates of what each call sends (cache/call.py names the fields): a party after its account's
# cached piece, a party's details in meta, and meta's key for them
_PARTY = b'%%s,"%s":%%d,"%s":%%d,"%s":%%d,"%s":%%s}' % tuple(
    name.encode() for name in (callstate.INBOUND, callstate.PRIMARY, callstate.CHARGED, callstate.SCHEDULE))
_DETAILS = b'{"%s":%%s,"%s":%%s}' % (callstate.DETAIL_RATE.encode(), callstate.DETAIL_TAGS.encode())
_PARTY_DETAILS = b',"%s":' % callstate.PARTY_DETAILS.encode()
_PLANNED_ON = b',"%s":' % callstate.PLANNED_ON.encode()


class Fragments:
    """The JSON pieces of the FCALL arguments that depend only on one catalog snapshot.

    A snapshot never changes, so an account's and a rate's pieces are dumped once and reused by every
    call that involves them (dumping them per request was a tenth of the request's own time). The
    parties go to the Redis library with what it reads (keys, limits, tariff); their rate snapshots and
    tags, which only the records need, travel in the call's opaque `meta` document (`pm`).
    """

    def __init__(self, catalog: Catalog | None) -> None:
        self.catalog = catalog
        self._accounts: tuple[dict[int, tuple], ...] = ({}, {})  # outbound, inbound
        self._rates: dict[int, tuple] = {}
        self._requests: dict[tuple, tuple[str, ...]] = {}

    def _account(self, account, inbound: bool) -> tuple[bytes, bytes, Any, tuple[str, ...]]:
        """The account as a party in one direction: `o` is its open-call set in that direction, `ox` the
        other direction's, which only a total limit needs; and those keys with its account's (the KEYS a
        call of it declares: cache.party_keys)."""
        accounts = self._accounts[inbound]
        found = accounts.get(id(account))
        if found is None or found[2] is not account:
            tenant, tag = account.tenant, account.account_tag
            party = {
                callstate.ACCOUNT_KEY: account_key(tenant, tag),
                callstate.OPEN_KEY: open_calls_key(tenant, tag, inbound),
                callstate.ACCOUNT: tag,
                callstate.CREDIT: account.credit,
                callstate.MAX_TOTAL: _limit(account.max_concurrent_transactions),
                callstate.MAX_INBOUND: _limit(account.max_inbound_transactions),
                callstate.MAX_OUTBOUND: _limit(account.max_outbound_transactions),
            }
            if account.max_concurrent_transactions is not None:
                party[callstate.OTHER_OPEN_KEY] = open_calls_key(tenant, tag, not inbound)
            # the account is kept with its pieces: its id cannot be reused by another object meanwhile
            found = accounts[id(account)] = (orjson.dumps(party)[:-1], orjson.dumps(list(account.tags)), account,
                                             cache_party_keys((party,)))
        return found

    def _rate(self, rate) -> tuple[bytes, bytes]:
        if rate is None:
            return b"null", b"null"
        found = self._rates.get(id(rate))
        if found is None or found[2] is not rate:
            if len(self._rates) >= _FRAGMENTS_LIMIT:
                self._rates.clear()
            found = self._rates[id(rate)] = (orjson.dumps(rate.tariff()), orjson.dumps(rate.snapshot()), rate)
        return found

    def parties(self, parties: tuple[Party, ...]) -> tuple[bytes, bytes, tuple[str, ...]]:
        """(the parties as the Redis library reads them, their rate snapshots and tags for the records, the
        keys they touch)."""
        lua, details, keys = [], [], ()
        for party in parties:
            account, tags, _, touched = self._account(party.account, party.inbound)
            keys += touched
            tariff, snapshot = self._rate(party.rate)[:2]
            if party.timeline is not None:  # time windows: the rates in force over the call, per call, kept
                tariff = orjson.dumps(tariff_numbers(party.timeline))  # with its rate for the record's explain
                snapshot = orjson.dumps({**party.rate.snapshot(), "timeline": tariff_numbers(party.timeline)})
            lua.append(_PARTY % (
                account, party.inbound, party.primary, party.spends_balance, tariff))
            details.append(_DETAILS % (snapshot, tags))
        return b"[" + b",".join(lua) + b"]", b"[" + b",".join(details) + b"]", keys

    def request_keys(self, request: dict[str, Any]) -> tuple[str, ...]:
        """The parties' keys a begin, end or rollback declares, from what its request names: the caller's
        account and outbound open-call set, the destination's and its inbound one, each with their linked
        accounts' in this snapshot (the worker's last plan's: a hint). A call of other parties (its accounts
        relinked since) is answered `keys` by the library and sent again with the keys it names."""
        named = (request["tenant"], request.get("account_tag"), request.get("destination_account_tag"))
        found = self._requests.get(named)
        if found is None:
            tenant, account_tag, destination = named
            keys: list[str] = []
            for tag, inbound in ((account_tag, False), (destination, True)):
                if not tag:
                    continue
                account = self.catalog.account(tenant, tag) if self.catalog is not None else None
                for linked in dict.fromkeys((tag, *(account.linked_accounts if account is not None else ()))):
                    keys += (account_key(tenant, linked), open_calls_key(tenant, linked, inbound))
            if len(self._requests) >= _FRAGMENTS_LIMIT:
                self._requests.clear()
            found = self._requests[named] = tuple(dict.fromkeys(keys))
        return found


def meta_json(request: dict[str, Any], details: bytes = b"[]", *extra: str, version: int | None = None) -> bytes:
    """The request fields stored with a call (and `extra` ones) plus its parties' details and the catalog
    version it was planned on, as one document the Redis library keeps without reading it."""
    planned = b"" if version is None else _PLANNED_ON + b"%d" % version
    return orjson.dumps({key: request.get(key) for key in (*_META, *extra)})[:-1] + planned + _PARTY_DETAILS + \
        details + b"}"


def _echo(request: dict[str, Any]) -> dict[str, Any]:
    return {
        "tenant": request["tenant"],
        "transaction_tag": request["transaction_tag"],
        "account_tag": request["account_tag"],
        "destination_account_tag": request["destination_account_tag"],
    }


class Outcome(NamedTuple):
    """What Redis answered: ok, the call's state, refusal reason and tag, units, caller's balance."""

    ok: bool
    state: str
    reason: str
    refused_tag: str
    units: int
    balance: int

    @classmethod
    def of(cls, reply: list) -> "Outcome":
        ok, state, reason, tag, units, balance = reply
        return cls(bool(int(ok)), state, reason, tag, int(units), int(balance))


def _settled(reply: list, request: dict[str, Any]) -> Outcome:
    """The outcome of an authorization or a begin; a call already recorded is a conflict."""
    outcome = Outcome.of(reply)
    if outcome.state == "recorded":
        raise Conflict(f"transaction_tag {request['transaction_tag']!r} belongs to a recorded call")
    return outcome


class Transactions:
    def __init__(self, settings: Settings, redis: AutoPipeline, catalog: Callable[[], Catalog],
                 catch_up: Callable[[int], Awaitable[Catalog]],
                 seed: Callable[[str, str], Awaitable[None]] | None = None,
                 stored: Callable[[str, str], Awaitable[dict | None]] | None = None) -> None:
        self.settings = settings
        self.stored = stored
        self.redis = redis
        self.catalog = catalog
        self.catch_up = catch_up
        self.seed = seed
        self._fragments = Fragments(None)
        # what the Redis library needs of the settings, as the one argument it reads them from
        self._limits = (f"{settings.authorization_ttl * 1000},{settings.reservation_share},{settings.max_units},"
                        f"{settings.record_retention},{settings.call_grace * 1000}")

    async def _redeclared(self, function: str, keys: tuple, args: tuple, reply: list) -> list:
        """The answer of a call function sent again with the parties' keys it asked for (cache.undeclared):
        once, unless the call changed meanwhile (its tag authorized afresh for other parties)."""
        for _ in range(_TRIES):
            wanted = undeclared(reply)
            if wanted is None:
                return reply
            reply = await self.redis.call(*fcall(function, keys + wanted, args))
        raise CatalogBehind(f"call {keys[0]!r}: its parties changed faster than this worker could follow")

    def _plan(self, request: dict[str, Any], at: int) -> tuple[Plan, Fragments]:
        """The call's plan, and the JSON pieces of the snapshot it was planned from."""
        catalog = self.catalog()
        if self._fragments.catalog is not catalog:
            self._fragments = Fragments(catalog)
        tenant = request["tenant"]
        dated = catalog.table(tenant).dated
        plan = plan_call(
            catalog, tenant, request["account_tag"], request["destination_account_tag"],
            request.get("destination"), _moment(at) if dated else _UNDATED,
            request.get("source"),  # the caller: rates with a source prefix match it
            # time windows: a party's timeline covers the answer delay and the longest grant
            self.settings.authorization_ttl + self.settings.max_units if dated else 0,
        )
        return plan, self._fragments

    def _authorize(self, request: dict[str, Any], at: int, begin: bool,
                   planned: tuple[Plan, Fragments] | None, version: int) -> tuple[tuple, tuple, tuple]:
        """The KEYS (the call's and its group's, then its parties') and ARGV of the FCALL settling an
        authorization or a begin."""
        tenant, tag = request["tenant"], request["transaction_tag"]
        if planned is None:  # a begin of a call without accounts: its parties are none of the request's
            parties, details, reason, refused, touched = "", b"[]", "", "", ()
        else:
            plan, fragments = planned
            parties, details, touched = fragments.parties(plan.parties)
            reason = plan.refusal.value if plan.refusal else ""
            refused = plan.refused_tag or ""
        keys = call_keys(tenant, tag)
        if refused:  # the account may have been created or changed since this worker's catalog: Redis checks it
            keys += (account_key(tenant, refused),)
        return keys, touched, (
            now_ms(), self._limits, int(begin), tenant, tag, parties,
            meta_json(request, details, version=None if planned is None else planned[1].catalog.version), reason,
            refused, at, version, call_identity())

    async def _seeded(self, request: dict[str, Any], reply: list) -> None:
        """Gives Redis the balance PostgreSQL holds for the account it has none for (`unseeded`)."""
        try:
            await self.seed(request["tenant"], reply[3])
        except (asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise CatalogBehind(f"the balance of account {reply[3]!r} cannot be read: {exc}") from None

    async def _caught_up(self, published: int) -> int:
        """Catches this worker up with `published`; the version to claim for the next plan. When the
        change cannot be read (PostgreSQL down, or missing from its log), the call is rated on what this
        worker has rather than refused: PostgreSQL down degrades the service, it does not stop rating."""
        try:
            caught = (await self.catch_up(published)).version
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            caught, why = 0, str(exc) or type(exc).__name__
        else:
            why = "not in the change log"
        if caught < published:
            _WARNINGS.warn("catalog: cannot catch up with change %d (%s); rating on change %d",
                           published, why, self.catalog().version)
            return published
        return caught

    async def _settle(self, request: dict[str, Any], at: int, begin: bool, plan: bool) -> tuple[Outcome, Any]:
        """Plans the call and settles it in Redis; a plan made on a catalog older than the published one is
        refused by Redis before anything is written, and made again once this worker has caught up."""
        claimed = 0
        for _ in range(_TRIES):
            planned = self._plan(request, at) if plan else None
            version = 0 if planned is None else max(claimed, planned[1].catalog.version)
            keys, touched, args = self._authorize(request, at, begin, planned, version)
            reply = await self.redis.call(*fcall("rating_authorize", keys + touched, args))
            if reply[1] == "keys":  # a begin of a call Redis holds for other parties than planned
                reply = await self._redeclared("rating_authorize", keys, args, reply)
            if reply[1] == "stale":
                await self._caught_up(int(reply[5]))
                claimed = _CAUGHT_UP
            elif reply[1] == "unseeded":
                await self._seeded(request, reply)
            else:
                return _settled(reply, request), planned
        raise CatalogBehind("the catalog changed faster than this worker could follow")

    async def authorization(self, request: dict[str, Any]) -> dict[str, Any]:
        """Canyan's answer, written out whole for each outcome (cheaper than merging `_echo` and choosing
        every field by condition; the keys stay in Canyan's order)."""
        at = to_ms(request["timestamp_auth"])
        outcome, planned = await self._settle(request, at, False, True)
        account_tag, callee = request["account_tag"], request["destination_account_tag"]
        if outcome.ok and outcome.units > 0:
            return {
                "tenant": request["tenant"], "transaction_tag": request["transaction_tag"],
                "account_tag": account_tag, "destination_account_tag": callee,
                "authorized": bool(account_tag or callee), "authorized_destination": bool(callee),
                "unauthorized_account_tag": None, "unauthorized_reason": None,
                "max_available_units": outcome.units, "balance": outcome.balance,
                "carriers": [c.address for c in planned[0].carriers],
            }
        return {
            "tenant": request["tenant"], "transaction_tag": request["transaction_tag"],
            "account_tag": account_tag, "destination_account_tag": callee,
            "authorized": False, "authorized_destination": False,
            "unauthorized_account_tag": outcome.refused_tag or None,
            "unauthorized_reason": outcome.reason or "BALANCE_INSUFFICIENT",
            "max_available_units": 0, "balance": outcome.balance, "carriers": [],
        }

    async def begin(self, request: dict[str, Any]) -> dict[str, Any]:
        at = to_ms(request["timestamp_begin"])
        if not (request["account_tag"] or request["destination_account_tag"]):
            outcome, _ = await self._settle(request, at, True, False)
            return {"ok": outcome.ok, **_echo(request)}
        # Most begins follow their authorization: sent unplanned first ('-'), Redis begins the call it holds;
        # the plan and the parties' JSON are needed only when it answers `missing` (no call, or one a new
        # authorization may replace: cache/rating.lua, authorize)
        tenant, tag = request["tenant"], request["transaction_tag"]
        keys, args = call_keys(tenant, tag), (now_ms(), self._limits, 1, tenant, tag, "-", "{}", "", "", at, 0, "")
        reply = await self.redis.call(*fcall("rating_authorize", keys + self._fragments.request_keys(request), args))
        if reply[1] == "keys":
            reply = await self._redeclared("rating_authorize", keys, args, reply)
        if reply[1] == "missing":
            outcome, _ = await self._settle(request, at, True, True)
        else:
            outcome = _settled(reply, request)
        return {"ok": outcome.ok, **_echo(request)}

    async def end(self, request: dict[str, Any]) -> dict[str, Any]:
        end = to_ms(request["timestamp_end"])
        keys = call_keys(request["tenant"], request["transaction_tag"])
        args = (now_ms(), end, self.settings.record_retention,
                "" if request.get("timestamp_begin") is None else to_ms(request["timestamp_begin"]))
        reply = await self.redis.call(*fcall("rating_finish", keys + self._fragments.request_keys(request), args))
        if reply[1] == "keys":  # parties the request does not name (accounts linked or unlinked since)
            reply = await self._redeclared("rating_finish", keys, args, reply)
        if reply[1] == "missing" and self.stored is not None:
            return await self._end_lost(request, end)
        return {"ok": Outcome.of(reply).ok, **_echo(request)}

    async def _end_lost(self, request: dict[str, Any], end: int) -> dict[str, Any]:
        """The end of a call Redis does not hold: its state expired (the end is repeated late), or Redis lost
        it (restarted empty). A call PostgreSQL holds as final is answered as it was; one it holds open or
        not at all, whose end says when it began, is charged from then to its end, capped at its granted
        units (--max-units when unknown): the call was answered, and no charge of it reached PostgreSQL."""
        tenant, tag = request["tenant"], request["transaction_tag"]
        try:
            async with asyncio.timeout(_PG_TIMEOUT):
                stored = await self.stored(tenant, tag)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise CatalogBehind(f"call {tag!r} is not in Redis and PostgreSQL cannot be read: {exc}") from None
        if stored is not None and stored["state"] not in ("authorized", "begun"):
            return {"ok": stored["state"] == "ended", **_echo(request)}
        begin = request.get("timestamp_begin") or (stored or {}).get("timestamp_begin")
        if stored is not None:  # what the end does not repeat, from the call's last known state
            request = {**request, **{name: stored[name] for name in _STORED if request.get(name) is None}}
        if begin is None or not (request.get("account_tag") or request.get("destination_account_tag")):
            return {"ok": False, **_echo(request)}
        begin = to_ms(begin)
        cap = (stored or {}).get("max_available_units") or self.settings.max_units
        return await self._charge(request, begin, max(end, begin), None, ("ended", cap))

    async def rollback(self, request: dict[str, Any]) -> dict[str, Any]:
        keys = call_keys(request["tenant"], request["transaction_tag"])
        args = (now_ms(), self.settings.record_retention)
        reply = await self.redis.call(*fcall("rating_rollback", keys + self._fragments.request_keys(request), args))
        if reply[1] == "keys":
            reply = await self._redeclared("rating_rollback", keys, args, reply)
        return {"ok": Outcome.of(reply).ok, **_echo(request)}

    async def record(self, request: dict[str, Any]) -> dict[str, Any]:
        begin = to_ms(request["timestamp_begin"])
        end = to_ms(request["timestamp_end"]) if request["timestamp_end"] else max(begin, now_ms())
        # a record charges without a balance check: no longer than the longest call the agent would grant
        if end < begin:
            raise Invalid("timestamp_end", "must not be before timestamp_begin")
        if end - begin > self.settings.max_units * 1000:
            raise Invalid("timestamp_end", f"a recorded call lasts at most {self.settings.max_units} s (--max-units)")
        return await self._charge(request, begin, end, request["timestamp_auth"], ("", 0))

    async def _charge(self, request: dict[str, Any], begin: int, end: int, auth: datetime | None,
                      mode: tuple[str, int]) -> dict[str, Any]:
        """A call charged at once from its begin and end: a record, or (mode `ended`, cap) a lost call's end."""
        claimed = 0
        for _ in range(_TRIES):
            plan, fragments = self._plan(request, begin)
            if plan.refusal is not None or not plan.parties:
                # nothing goes to Redis: ask it whether the refusal stands on an older catalog than published
                published = 0 if claimed else await published_for(self.redis.call, request["tenant"], plan.refused_tag)
                if published > fragments.catalog.version:
                    await self._caught_up(published)
                    claimed = _CAUGHT_UP
                    continue
                return {"ok": False, **_echo(request)}
            parties, details, touched = fragments.parties(plan.parties)
            keys = call_keys(request["tenant"], request["transaction_tag"])
            args = (now_ms(), self.settings.record_retention, request["tenant"], request["transaction_tag"],
                    parties, meta_json(request, details, "authorized", "unauthorized_reason",
                                       version=fragments.catalog.version),
                    "" if auth is None else to_ms(auth), begin, end, max(claimed, fragments.catalog.version),
                    call_identity(), *mode)
            reply = await self.redis.call(*fcall("rating_record", keys + touched, args))
            if reply[1] == "keys":  # a call authorized under the tag for other parties
                reply = await self._redeclared("rating_record", keys, args, reply)
            if reply[1] == "stale":
                await self._caught_up(int(reply[5]))
                claimed = _CAUGHT_UP
            elif reply[1] == "unseeded":
                await self._seeded(request, reply)
            else:
                return {"ok": Outcome.of(reply).ok, **_echo(request)}
        raise CatalogBehind("the catalog changed faster than this worker could follow")

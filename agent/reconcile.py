"""Reconciliation with Kamailio: ends the calls the agent holds open that no Kamailio has any more.

An end can be lost for good: Kamailio retries a failed end only a bounded number of times, and a Kamailio
killed without its dialogs kept in a database (or with the database lost) never sends the ends of the calls
it had. Without this, such a call runs until the agent's own expiry ends it at its granted units plus the
grace period, charging every granted unit.

With `--kamailio-rpc` set, the housekeeper asks every listed Kamailio for its dialogs every
`--kamailio-reconcile-interval` seconds (JSON-RPC `dlg.briefing`, or `dlg.list` on a Kamailio without it)
and remembers, in Redis (hash `rating:kamailio:seen`), when each running call was last listed alive. A
running call (begun, not ended) that a complete round of listings lacks, and has lacked for
`--kamailio-reconcile-after` seconds, is ended through the agent's ordinary end (the one `/v1/end_transaction`
runs, idempotent: an end arriving later changes nothing), at the moment it was last listed alive, or at its
begin if it never was. A round in which any Kamailio cannot be listed decides nothing.

The open calls are read from Redis before the listings are asked for, and a Kamailio creates a call's
dialog before it asks for the call's authorization, so a call begun while the listings are being taken
is never taken for missing. Every call begun in this Redis must come through a listed Kamailio: a call
begun another way (GraphQL, another SIP server) would be ended.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from typing import Any

import aiohttp
import orjson

from cache import GROUPS, UNAVAILABLE
from cache import call as callstate

from . import metrics
from .config import Settings
from .logs import Throttled
from .transaction import Transactions, now_ms

log = logging.getLogger(__name__)
_WARNINGS = Throttled(log)

SEEN = "rating:kamailio:seen"  # HASH call key -> ms (agent clock) when a Kamailio last listed the call alive
_CHUNK = 500  # call keys per Redis pipeline
_DELETED = 5  # Kamailio's dialog state "deleted": ended, kept in memory a moment longer
_RPC_TIMEOUT = 10.0


class ListingFailed(Exception):
    """A Kamailio could not be listed: this round decides nothing."""


def rpc_urls(settings: Settings) -> list[str]:
    return [url.strip() for url in settings.kamailio_rpc.split(",") if url.strip()]


class _Direct:
    """The `call` of the hot path's pipeline, on a plain client (what Transactions needs to end a call)."""

    def __init__(self, client) -> None:
        self.client = client

    async def call(self, *command: Any) -> Any:
        return await self.client.execute_command(*command)


def _no_catalog():
    """No snapshot: reconciliation ends calls only, it never plans one. Its ends name no account, so they
    declare no party's keys; the library answers with the keys the call's parties need and the end is sent
    again with them (Transactions._redeclared)."""
    return None


async def _no_catch_up(version: int):
    raise RuntimeError("reconciliation ends calls only; it never plans one")


def alive_call_ids(result: Any) -> set[str]:
    """The Call-IDs of the dialogs a `dlg.briefing` or `dlg.list` result names, ended ones left out."""
    found: set[str] = set()
    if isinstance(result, dict):  # a single dialog, or a wrapper around the list
        result = result.get("dialogs", [result])
    for dialog in result or ():
        if not isinstance(dialog, dict):
            continue
        call_id = dialog.get("call-id", dialog.get("callid"))
        try:
            state = int(dialog.get("state", 0))
        except (TypeError, ValueError):
            state = 0
        if call_id and state != _DELETED:
            found.add(str(call_id))
    return found


async def list_dialogs(session: aiohttp.ClientSession, url: str) -> set[str]:
    """The Call-IDs of the live dialogs of the Kamailio at `url`; ListingFailed when it cannot tell."""
    for method, params in (("dlg.briefing", ["cs"]), ("dlg.list", [])):
        body = {"jsonrpc": "2.0", "method": method, "params": params, "id": 1}
        try:
            async with session.post(url, data=orjson.dumps(body), headers={"Content-Type": "application/json"},
                                    timeout=aiohttp.ClientTimeout(total=_RPC_TIMEOUT)) as reply:
                text = await reply.read()
                status = reply.status
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            raise ListingFailed(f"{url}: {exc or type(exc).__name__}") from None
        if status == 200 and text.strip() == b"":
            return set()  # an empty dialog list may come as an empty body
        try:
            answer = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise ListingFailed(f"{url}: HTTP {status}, not JSON-RPC: {text[:200]!r}") from None
        error = answer.get("error") if isinstance(answer, dict) else None
        if error is None and status == 200 and isinstance(answer, dict) and "result" in answer:
            return alive_call_ids(answer["result"])
        if method == "dlg.briefing" and isinstance(error, dict) and error.get("code") in (-32601, 500):
            continue  # no dlg.briefing (before Kamailio 5.4?): the full listing
        raise ListingFailed(f"{url}: HTTP {status}: {error or text[:200]!r}")
    raise ListingFailed(f"{url}: no dialog listing method")


class Reconciler:
    """One agent's reconciliation state: when each call was first found missing (the moments it was last
    seen alive are in Redis, shared with other hosts and kept over restarts)."""

    def __init__(self, settings: Settings, redis, lister=None) -> None:
        self.settings = settings
        self.redis = redis
        self.urls = rpc_urls(settings)
        self.lister = lister or list_dialogs
        self.missing_since: dict[str, int] = {}
        self.transactions = Transactions(settings, _Direct(redis), catalog=_no_catalog, catch_up=_no_catch_up)

    async def running_calls(self) -> dict[str, tuple[str, str, int]]:
        """Call key -> (tenant, transaction tag, begin ms) of every begun call Redis holds open."""
        keys = [key for group in GROUPS for key in await self.redis.zrange(group.deadlines, 0, -1)]
        running: dict[str, tuple[str, str, int]] = {}
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start:start + _CHUNK]
            pipe = self.redis.pipeline(transaction=False)
            for key in chunk:
                pipe.hmget(key, callstate.STATE, callstate.TENANT, callstate.TAG, callstate.BEGUN_AT,
                           callstate.DOCUMENT)
            for key, (state, tenant, tag, begin, doc) in zip(chunk, await pipe.execute()):
                if doc:  # an open call kept as a document (cache/rating.lua, save)
                    try:
                        parsed = orjson.loads(doc)
                        state, begin = parsed.get(callstate.STATE), parsed.get(callstate.BEGUN_AT)
                        tenant, tag, _ = callstate.identity(parsed)
                    except (orjson.JSONDecodeError, AttributeError):
                        continue
                if state == "begun" and tenant is not None and tag is not None and begin not in (None, ""):
                    running[key] = (str(tenant), str(tag), int(float(begin)))
        return running

    async def listed(self, session) -> set[str]:
        found: set[str] = set()
        for url in self.urls:
            found |= await self.lister(session, url)
        return found

    async def run_once(self, session) -> list[str]:
        """One round; the keys of the calls it ended."""
        running = await self.running_calls()
        taken = now_ms()  # the calls listed were alive at least until now: never charged past it
        try:
            alive = await self.listed(session)
        except ListingFailed as exc:
            metrics.RECONCILE_FAILURES.inc()
            _WARNINGS.warn("reconciliation: skipped, a Kamailio could not be listed (%s)", exc)
            return []
        seen = [key for key, (_, tag, _) in running.items() if tag in alive]
        missing = [key for key, (_, tag, _) in running.items() if tag not in alive]
        for key in seen:
            self.missing_since.pop(key, None)
        for key in list(self.missing_since):
            if key not in running:
                del self.missing_since[key]
        for key in missing:
            self.missing_since.setdefault(key, taken)
        await self._remember(seen, taken)
        after = int(self.settings.kamailio_reconcile_after * 1000)
        due = [key for key in missing if taken - self.missing_since[key] >= after]
        ended = await self._end(due, running) if due else []
        for key in ended:
            del running[key]
        await self._forget(running)
        return ended

    async def _remember(self, keys: list[str], at: int) -> None:
        for start in range(0, len(keys), _CHUNK):
            await self.redis.hset(SEEN, mapping={key: at for key in keys[start:start + _CHUNK]})

    async def _forget(self, running: dict[str, Any]) -> None:
        """Drops the sightings of calls no longer running."""
        gone = [key for key in await self.redis.hkeys(SEEN) if key not in running]
        for start in range(0, len(gone), _CHUNK):
            await self.redis.hdel(SEEN, *gone[start:start + _CHUNK])

    async def _end(self, keys: list[str], running: dict[str, tuple[str, str, int]]) -> list[str]:
        ended = []
        last_seen = await self.redis.hmget(SEEN, keys)
        for key, seen in zip(keys, last_seen):
            tenant, tag, begin = running[key]
            at = max(begin, int(seen)) if seen else begin
            answer = await self.transactions.end({
                "tenant": tenant, "transaction_tag": tag, "account_tag": None, "destination_account_tag": None,
                "timestamp_end": datetime.fromtimestamp(at / 1000, tz=timezone.utc), "timestamp_begin": None,
            })
            self.missing_since.pop(key, None)
            if answer["ok"]:
                metrics.RECONCILED.inc()
                ended.append(key)
                log.warning("reconciliation: call %r of tenant %r is on no Kamailio any more; ended %s, at %.3f s"
                            " after its begin", tag, tenant, "when last seen alive" if seen else "at its begin",
                            (at - begin) / 1000)
        return ended


async def reconcile(settings: Settings, redis, lister=None) -> None:
    """The housekeeper's task: a round every `kamailio_reconcile_interval` seconds, for as long as it runs."""
    reconciler = Reconciler(settings, redis, lister)
    async with aiohttp.ClientSession() as session:
        while True:
            await asyncio.sleep(settings.kamailio_reconcile_interval)
            try:
                await reconciler.run_once(session)
            except UNAVAILABLE as exc:
                _WARNINGS.warn("reconciliation: Redis unavailable (%s)", exc)
            except Exception:  # noqa: BLE001 - the task must outlive any single failure
                log.exception("reconciliation: unexpected failure")


def enabled(settings: Settings) -> bool:
    return bool(rpc_urls(settings))

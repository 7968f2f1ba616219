"""The five operations on a call (authorization, begin, end, rollback, record) as the agent performs them.

Each one plans the call from the in-memory catalog (pure kernel), then settles it with one atomic Redis
function call, and answers with Canyan's response fields. Shared by the REST and GraphQL front ends.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

import orjson

from cache import DEADLINES, OUTBOX, AutoPipeline, account_key, call_key, fcall, open_calls_key

from .config import Settings
from .pricing.catalog import Catalog
from .pricing.plan import Party, Plan, plan_call


class Conflict(Exception):
    """The request contradicts the call's state (a 409 for the client)."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def to_ms(moment: datetime | None) -> int:
    return now_ms() if moment is None else int(moment.timestamp() * 1000)


def _limit(value: int | None) -> int:
    return -1 if value is None else value


def party_json(party: Party) -> dict:
    """A party as the Redis library reads it (short keys: the document is stored per call)."""
    account = party.account
    return {
        "k": account_key(account.tenant, account.account_tag),
        "o": open_calls_key(account.tenant, account.account_tag),
        "a": account.account_tag,
        "i": 1 if party.inbound else 0,
        "pr": 1 if party.primary else 0,
        "c": 1 if party.spends_balance else 0,
        "cr": account.credit,
        "mt": _limit(account.max_concurrent_transactions),
        "mi": _limit(account.max_inbound_transactions),
        "mo": _limit(account.max_outbound_transactions),
        "s": account.balance,
        "r": party.rate.tariff() if party.rate is not None else None,
        "rate": party.rate.snapshot() if party.rate is not None else None,
        "tg": list(account.tags),
    }


_META = ("account_tag", "destination_account_tag", "source", "source_ip", "destination", "carrier_ip", "tags")


def meta_json(request: dict[str, Any], *extra: str) -> bytes:
    """The request fields stored with a call (and `extra` ones), as the Redis library keeps them."""
    return orjson.dumps({key: request.get(key) for key in (*_META, *extra)})


def _echo(request: dict[str, Any]) -> dict[str, Any]:
    return {
        "tenant": request["tenant"],
        "transaction_tag": request["transaction_tag"],
        "account_tag": request["account_tag"],
        "destination_account_tag": request["destination_account_tag"],
    }


@dataclass(frozen=True, slots=True)
class Outcome:
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


class Transactions:
    def __init__(self, settings: Settings, redis: AutoPipeline, catalog: Callable[[], Catalog]) -> None:
        self.settings = settings
        self.redis = redis
        self.catalog = catalog

    def _plan(self, request: dict[str, Any], at: int) -> Plan:
        moment = datetime.fromtimestamp(at / 1000, tz=timezone.utc)
        return plan_call(
            self.catalog(), request["tenant"], request["account_tag"],
            request["destination_account_tag"], request.get("destination"), moment,
        )

    async def _authorize(self, request: dict[str, Any], at: int, begin: bool, plan: Plan | None) -> Outcome:
        s = self.settings
        tenant, tag = request["tenant"], request["transaction_tag"]
        if plan is None:
            parties, reason, refused = "", "", ""
        else:
            parties = orjson.dumps([party_json(p) for p in plan.parties])
            reason = plan.refusal.value if plan.refusal else ""
            refused = plan.refused_tag or ""
        reply = await self.redis.call(*fcall(
            "rating_authorize", (call_key(tenant, tag), DEADLINES, OUTBOX),
            (now_ms(), s.authorization_ttl * 1000, s.reservation_share, s.max_units, int(begin),
             s.record_retention, tenant, tag, parties, meta_json(request), reason, refused,
             s.call_grace * 1000, at),
        ))
        outcome = Outcome.of(reply)
        if outcome.state == "recorded":
            raise Conflict(f"transaction_tag {tag!r} belongs to a recorded call")
        return outcome

    async def authorization(self, request: dict[str, Any]) -> dict[str, Any]:
        at = to_ms(request["timestamp_auth"])
        plan = self._plan(request, at)
        outcome = await self._authorize(request, at, begin=False, plan=plan)
        has_account = bool(request["account_tag"])
        has_callee = bool(request["destination_account_tag"])
        authorized = outcome.ok and outcome.units > 0
        return {
            **_echo(request),
            "authorized": authorized and (has_account or has_callee),
            "authorized_destination": authorized and has_callee,
            "unauthorized_account_tag": None if authorized else (outcome.refused_tag or None),
            "unauthorized_reason": None if authorized else (outcome.reason or "BALANCE_INSUFFICIENT"),
            "max_available_units": outcome.units if authorized else 0,
            "balance": outcome.balance,
            "carriers": [c.address for c in plan.carriers] if authorized else [],
        }

    async def begin(self, request: dict[str, Any]) -> dict[str, Any]:
        at = to_ms(request["timestamp_begin"])
        plan = None
        if request["account_tag"] or request["destination_account_tag"]:
            plan = self._plan(request, at)
        outcome = await self._authorize(request, at, begin=True, plan=plan)
        return {"ok": outcome.ok, **_echo(request)}

    async def end(self, request: dict[str, Any]) -> dict[str, Any]:
        reply = await self.redis.call(*fcall(
            "rating_finish", (call_key(request["tenant"], request["transaction_tag"]), DEADLINES, OUTBOX),
            (now_ms(), to_ms(request["timestamp_end"]), self.settings.record_retention),
        ))
        return {"ok": Outcome.of(reply).ok, **_echo(request)}

    async def rollback(self, request: dict[str, Any]) -> dict[str, Any]:
        reply = await self.redis.call(*fcall(
            "rating_rollback", (call_key(request["tenant"], request["transaction_tag"]), DEADLINES, OUTBOX),
            (now_ms(), self.settings.record_retention),
        ))
        return {"ok": Outcome.of(reply).ok, **_echo(request)}

    async def record(self, request: dict[str, Any]) -> dict[str, Any]:
        begin = to_ms(request["timestamp_begin"])
        end = to_ms(request["timestamp_end"]) if request["timestamp_end"] else max(begin, now_ms())
        plan = self._plan(request, begin)
        if plan.refusal is not None or not plan.parties:
            return {"ok": False, **_echo(request)}
        auth = request["timestamp_auth"]
        reply = await self.redis.call(*fcall(
            "rating_record", (call_key(request["tenant"], request["transaction_tag"]), DEADLINES, OUTBOX),
            (now_ms(), self.settings.record_retention, request["tenant"], request["transaction_tag"],
             orjson.dumps([party_json(p) for p in plan.parties]), meta_json(request, "authorized", "unauthorized_reason"),
             "" if auth is None else to_ms(auth), begin, end),
        ))
        return {"ok": Outcome.of(reply).ok, **_echo(request)}

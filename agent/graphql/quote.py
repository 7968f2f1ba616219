"""`quote`: what a call would cost, through which carriers and why, and `Transaction.explain`: how a recorded
fee was made. Both are the pricing kernel's (pricing/quote.py); a quote reads the live balances to say what an
authorization would grant, and reserves or writes nothing.
"""

from __future__ import annotations

from datetime import datetime, timezone

import orjson

import cache
from cache import account_key, open_calls_key

from ..keys import CATALOG, SETTINGS
from ..pricing.catalog import Catalog
from ..pricing.plan import Reason, plan_call
from ..pricing.quote import Explanation, explain, priced, rate_of_snapshot, standing_of, timeline_of_snapshot
from ..store.management import ManagementError
from .accounts import rate_dict
from .common import app_of, query, reading, redis_of
from .transactions import transaction


async def current_catalog(info, tenant: str, account_tag: str) -> Catalog:
    """This process's catalog, caught up with the change Redis says is the newest for this account
    (read-your-writes: a quote right after a rate or the account was changed prices with the change)."""
    keeper = app_of(info)[CATALOG]
    published = await cache.published_for(redis_of(info).execute_command, tenant, account_tag)
    if keeper.get().version < published:
        return await keeper.catch_up(published)
    return keeper.get()


def explanation_dict(found: Explanation, record: dict | None = None) -> dict:
    rate = found.rate
    return {
        "prefix": rate.prefix, "pricelist_tag": rate.pricelist_tag, "carrier_tag": rate.carrier_tag,
        "duration": found.duration, "billed_seconds": found.billed_seconds,
        "segments": [segment._asdict() for segment in found.segments], "fee": found.fee,
        "rerate_id": (record or {}).get("rerate_id"), "original_fee": (record or {}).get("original_fee"),
        "catalog_version": (record or {}).get("catalog_version"),
    }


async def _standings(info, parties) -> list:
    """Each planned party as the authorization's decision would see it now (read from Redis; PostgreSQL's
    balance for an account Redis does not hold yet)."""
    redis = redis_of(info)
    pipe = redis.pipeline(transaction=False)
    for party in parties:
        account = party.account
        pipe.hmget(account_key(account.tenant, account.account_tag), "balance", "reserved")
        pipe.scard(open_calls_key(account.tenant, account.account_tag, party.inbound))
        pipe.scard(open_calls_key(account.tenant, account.account_tag, not party.inbound))
    replies = await pipe.execute()
    standings = []
    for index, party in enumerate(parties):
        (balance, reserved), here, other = replies[3 * index:3 * index + 3]
        if balance is None:
            async with reading(info) as connection:
                balance = await connection.fetchval(
                    "SELECT balance FROM accounts WHERE tenant = $1 AND account_tag = $2",
                    party.account.tenant, party.account.account_tag)
        available = int(balance or 0) - int(reserved or 0)
        standings.append(standing_of(party, available, int(here), int(other)))
    return standings


@query.field("quote")
async def resolve_quote(_, info, account_tag, destination, duration, tenant="default", source=None, at=None):
    settings = app_of(info)[SETTINGS]
    if tenant is None:
        raise ManagementError("tenant: must not be null")
    if not account_tag:
        raise ManagementError("account_tag: must not be empty")
    if not destination:
        raise ManagementError("destination: must not be empty")
    if not 0 <= duration <= settings.max_units:
        raise ManagementError(f"duration: must be between 0 and {settings.max_units} seconds (--max-units)")
    at = at or datetime.now(timezone.utc)
    catalog = await current_catalog(info, tenant, account_tag)
    # as an authorization plans it: time windows crossed within `duration`, or within the longest call an
    # authorization may grant, give the parties their timelines
    plan = plan_call(catalog, tenant, account_tag, None, destination, at, source,
                     max(duration, settings.authorization_ttl + settings.max_units))
    if plan.refusal is Reason.NOT_FOUND and plan.refused_tag == account_tag:
        raise ManagementError(f"account_tag: Account with tag = {account_tag} not found in tenant {tenant}!")
    answer = {
        "tenant": tenant, "account_tag": account_tag, "source": source, "destination": destination,
        "duration": duration, "at": at, "fee": None, "rate": None, "carriers": [], "carrier_tags": [],
        "explain": None, "parties": [], "unauthorized_reason": None, "unauthorized_account_tag": None,
        "max_available_units": 0, "balance": None,
    }
    if plan.refusal is not None:
        answer["unauthorized_reason"] = plan.refusal.value
        answer["unauthorized_account_tag"] = plan.refused_tag
        return answer
    standings = await _standings(info, plan.parties)
    planned = priced(plan, duration, standings, settings.reservation_share, settings.max_units,
                     int(at.timestamp() * 1000), settings.authorization_ttl * 1000)
    decision = planned.decision
    parties = [{
        "account_tag": p.party.account.account_tag, "primary": p.party.primary, "fee": p.fee,
        "rate": None if p.party.rate is None else rate_dict(p.party.rate, tenant),
        "explain": None if p.explanation is None else explanation_dict(
            p.explanation, {"catalog_version": catalog.version}),
    } for p in planned.parties]
    caller = parties[0]
    answer.update({
        "fee": caller["fee"], "rate": caller["rate"], "explain": caller["explain"], "parties": parties,
        "carriers": [c.address for c in planned.plan.carriers],
        "carrier_tags": [c.carrier_tag for c in planned.plan.carriers],
        "unauthorized_reason": decision.reason or None,
        "unauthorized_account_tag": planned.plan.parties[decision.refused].account.account_tag
        if decision.refused >= 0 else None,
        "max_available_units": decision.units, "balance": standings[0].available,
    })
    return answer


@transaction.field("explain")
async def resolve_explain(record, info):
    """From what the record keeps (its rate as the call was priced, its billed duration), through the kernel."""
    if record.get("state") not in ("ended", "recorded") or record.get("duration") is None:
        return None
    snapshot = record.get("destination_rate")
    if isinstance(snapshot, str):
        snapshot = orjson.loads(snapshot)
    rate = rate_of_snapshot(record.get("tenant") or "default", snapshot)
    if rate is None:
        return None
    if "rerate_id" not in record:  # read from Redis: which rerate changed it, if any, PostgreSQL says
        async with reading(info) as connection:
            stored = await connection.fetchrow(
                "SELECT rerate_id, original_fee FROM transactions WHERE tenant = $1 AND transaction_tag = $2"
                " AND call_id = $3 AND account_tag = $4", record.get("tenant"), record.get("transaction_tag"),
                record.get("call_id") or "", record.get("account_tag"))
        record = {**record, **(dict(stored) if stored is not None else {})}
    line, begin = timeline_of_snapshot(snapshot), record.get("timestamp_begin")  # a windowed call: its timeline
    if line is not None and begin is not None:
        if isinstance(begin, str):
            begin = datetime.fromisoformat(begin)
        return explanation_dict(explain(rate, int(record["duration"]), line, int(begin.timestamp() * 1000)), record)
    return explanation_dict(explain(rate, int(record["duration"])), record)


bindables: list = []

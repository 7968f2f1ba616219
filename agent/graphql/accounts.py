"""Accounts: catalog rows in PostgreSQL, live balance and open calls in Redis.

`balance` is the live balance (Redis, where every call is charged), PostgreSQL's column only when Redis
does not know the account yet. `running_transactions` are the account's open calls (authorized or
running) as the agent holds them. Balances are changed only through the Redis library (`move_balance`),
which also writes the ledger, never by an UPDATE of the column.

The account-transaction mutations act on the agent's calls: begin = the agent's begin (authorizing the call
first when needed), end and commit = the agent's end (the call is charged at its rated fee), rollback =
the agent's rollback.
"""

from __future__ import annotations

from datetime import datetime, timezone

from ariadne import ObjectType

import cache
from cache import account_key, call_key, open_calls_keys
from cache import call as callstate

from ..keys import CATALOG, TRANSACTIONS
from ..store import management as repo
from ..store.management import ACCOUNTS, ManagementError
from ..store.records import moment, party_details
from ..transaction import now_ms
from .common import app_of, crud, mutation, query, reading, redis_of

account = ObjectType("Account")
linked_account = ObjectType("LinkedAccount")
LONG_RUNNING_MS = 3 * 3600 * 1000


def account_transaction(doc: dict, meta: dict, account_tag: str) -> dict | None:
    """The running-transaction view of one account's side of a call held in Redis."""
    found = [(i, p) for i, p in enumerate(doc.get(callstate.PARTIES) or []) if p.get(callstate.ACCOUNT) == account_tag]
    if not found:
        return None
    index, party = found[0]
    state = doc.get(callstate.STATE)
    rate, party_tags = party_details(party, meta, index)
    tags = list(meta.get("tags") or [])
    return {
        "transaction_tag": doc.get(callstate.TAG),
        "proxy_tag": None,
        "source": meta.get("source"),
        "source_ip": meta.get("source_ip"),
        "destination": meta.get("destination"),
        "carrier_ip": meta.get("carrier_ip"),
        "tags": tags + [t for t in party_tags if t not in tags],
        "destination_rate": {**rate, "tenant": doc.get(callstate.TENANT)} if rate is not None else None,
        "in_progress": state == "begun",
        "inbound": bool(party.get(callstate.INBOUND)),
        "primary": bool(party.get(callstate.PRIMARY)),
        "timestamp_begin": moment(doc.get(callstate.BEGUN_AT)),
        "timestamp_end": moment(doc.get(callstate.ENDED_AT)),
        "state": state,
    }


async def read_call(redis, tenant: str, transaction_tag: str, account_tag: str) -> dict | None:
    fields = await redis.hgetall(call_key(tenant, transaction_tag))
    if not fields:
        return None
    doc, meta = callstate.decode(fields)
    return account_transaction(doc, meta, account_tag)


async def open_call_count(redis, tenant: str, account_tag: str) -> int:
    """How many calls the account holds open (authorized or running), in both directions."""
    async with redis.pipeline(transaction=False) as pipe:
        for key in open_calls_keys(tenant, account_tag):
            pipe.scard(key)
        return sum(await pipe.execute())


async def open_calls(redis, tenant: str, account_tag: str) -> list[dict]:
    keys = sorted(await redis.sunion(open_calls_keys(tenant, account_tag)))
    if not keys:
        return []
    pipe = redis.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    entries = []
    for fields in await pipe.execute():
        if not fields:
            continue
        entry = account_transaction(*callstate.decode(fields), account_tag)
        if entry is not None:
            entries.append(entry)
    return entries


async def live_balance(info, record: dict) -> int | None:
    if record.get("tenant") is None:
        return record.get("balance")
    value = await redis_of(info).hget(account_key(record["tenant"], record["account_tag"]), "balance")
    return record.get("balance") if value is None else int(value)


async def move(info, tenant: str, account_tag: str, mode: str, amount: int, stored: int, reference: str,
               stored_version: int = 0) -> int:
    """A balance change through Redis and the ledger; Redis learns the stored balance first if it lacks it
    (`stored` as of outbox version `stored_version`, see cache.seed_balance)."""
    redis = redis_of(info)
    await cache.seed_balance(redis, tenant, account_tag, stored, stored_version)
    return await cache.move_balance(redis, tenant, account_tag, mode, amount, now_ms(), reference)


# --- resolvers of Account and LinkedAccount ------------------------------------------------------------------------

async def resolve_balance(record, info):
    return await live_balance(info, record)


async def resolve_customer(record, info):
    if not record.get("customer_tag"):
        return None
    async with reading(info) as connection:
        return await repo.fetch_by_key(connection, repo.CUSTOMERS, record["tenant"], {"customer_tag": record["customer_tag"]})


async def resolve_running(record, info):
    return await open_calls(redis_of(info), record["tenant"], record["account_tag"])


def _catalog_account(info, record: dict):
    return app_of(info)[CATALOG].get().account(record["tenant"], record["account_tag"])


def rate_dict(rate, tenant: str) -> dict:
    return {**rate.snapshot(), "tenant": tenant, "id": None, "datetime_start": rate.datetime_start,
            "datetime_end": rate.datetime_end, "active": True}


async def resolve_destination_rate(record, info, destination=None):
    from ..pricing.routing import destination_rate

    found = _catalog_account(info, record)
    if found is None:
        return None
    rate = destination_rate(app_of(info)[CATALOG].get(), found, destination, datetime.now(timezone.utc))
    return None if rate is None else rate_dict(rate, record["tenant"])


async def carriers_by_tag(info, tenant: str, tags: list[str]) -> list[dict]:
    if not tags:
        return []
    async with reading(info) as connection:
        rows = await connection.fetch(
            "SELECT * FROM carriers WHERE tenant = $1 AND carrier_tag = ANY($2::text[])", tenant, tags
        )
    by_tag = {row["carrier_tag"]: repo.row_dict(repo.CARRIERS, row) for row in rows}
    return [by_tag[tag] for tag in tags if tag in by_tag]


async def resolve_lcr(record, info, destination):
    from ..pricing.routing import least_cost_routing

    found = _catalog_account(info, record)
    if found is None:
        return []
    carriers = least_cost_routing(app_of(info)[CATALOG].get(), found, destination, datetime.now(timezone.utc))
    return await carriers_by_tag(info, record["tenant"], [c.carrier_tag for c in carriers])


async def resolve_linked(record, info):
    tags = list(record.get("linked_accounts") or [])
    if not tags:
        return []
    async with reading(info) as connection:
        rows = await connection.fetch(
            "SELECT * FROM accounts WHERE tenant = $1 AND account_tag = ANY($2::text[])", record["tenant"], tags
        )
    by_tag = {row["account_tag"]: repo.row_dict(ACCOUNTS, row) for row in rows}
    return [by_tag[tag] for tag in tags if tag in by_tag]


for kind in (account, linked_account):
    kind.set_field("balance", resolve_balance)
    kind.set_field("customer", resolve_customer)
    kind.set_field("running_transactions", resolve_running)
    kind.set_field("destination_rate", resolve_destination_rate)
account.set_field("least_cost_routing", resolve_lcr)
account.set_field("linked_accounts", resolve_linked)


@query.field("leastCostRouting")
async def resolve_least_cost_routing(_, info, tenant="default", carrier_tags=None, carrier_tags_override=None,
                                     destination=None):
    from ..pricing.account import Account, AccountType
    from ..pricing.routing import least_cost_routing

    probe = Account(tenant=tenant, account_tag="", type=AccountType.POSTPAID, active=True, balance=0,
                    carrier_tags=tuple(t for t in carrier_tags or [] if t),
                    carrier_tags_override=tuple(t for t in carrier_tags_override or [] if t))
    carriers = least_cost_routing(app_of(info)[CATALOG].get(), probe, destination, datetime.now(timezone.utc))
    return await carriers_by_tag(info, tenant, [c.carrier_tag for c in carriers])


# --- list filter, writes --------------------------------------------------------------------------------------------

async def where(info, connection, filter: dict) -> repo.Where:
    base = repo.base_filter(ACCOUNTS, filter)
    running, long_running = filter.get("with_running_transactions"), filter.get("with_long_running_transactions")
    if running is None and long_running is None:
        return base
    rows = await connection.fetch(f"SELECT tenant, account_tag FROM accounts{base.sql()}", *base.params)
    pipe = redis_of(info).pipeline(transaction=False)
    for row in rows:
        for key in open_calls_keys(row["tenant"], row["account_tag"]):
            pipe.scard(key)
    sizes = await pipe.execute() if rows else []
    counts = [a + b for a, b in zip(sizes[::2], sizes[1::2])]
    keep = []
    cutoff = now_ms() - LONG_RUNNING_MS
    for row, count in zip(rows, counts):
        has_open = int(count or 0) > 0
        if running is not None and has_open != running:
            continue
        if long_running is not None:
            old = False
            if has_open:
                calls = await open_calls(redis_of(info), row["tenant"], row["account_tag"])
                old = any(c["in_progress"] and c["timestamp_begin"] is not None
                          and c["timestamp_begin"].timestamp() * 1000 <= cutoff for c in calls)
            if old != long_running:
                continue
        keep.append((row["tenant"], row["account_tag"]))
    base.add(f"(tenant, account_tag) IN (SELECT * FROM unnest({base.param([t for t, _ in keep])}::text[],"
             f" {base.param([a for _, a in keep])}::text[]))")
    return base


async def check(connection, values: dict, old: dict | None) -> None:
    tenant = values.get("tenant") or (old or {}).get("tenant") or "default"
    tag = values.get("account_tag") or (old or {}).get("account_tag")
    customer = values.get("customer_tag")
    if customer is not None and not await repo.tag_exists(connection, "customers", "customer_tag", tenant, customer):
        raise ManagementError(f"Customer with tag = {customer} not found in tenant {tenant}!")
    linked = values.get("linked_accounts")
    if linked:
        if None in linked or tag in linked:
            raise ManagementError("linked_accounts must name other accounts")
        if len(set(linked)) != len(linked):
            raise ManagementError("linked_accounts lists an account twice")
        found = {row["account_tag"] for row in await connection.fetch(
            "SELECT account_tag FROM accounts WHERE tenant = $1 AND account_tag = ANY($2::text[])", tenant, linked
        )}
        for other in linked:
            if other not in found:
                raise ManagementError(f"Account with tag = {other} not found in tenant {tenant}!")
    for name in ("carrier_tags", "carrier_tags_override", "pricelist_tags", "tags"):
        if values.get(name) is not None and None in values[name]:
            raise ManagementError(f"{name} cannot contain null")


def _renamed(values: dict, old: dict | None) -> tuple[str, str] | None:
    """The account's former (tenant, tag) when this write gives it another one."""
    if old is None:
        return None
    before = (old["tenant"], old["account_tag"])
    after = (values.get("tenant") or before[0], values.get("account_tag") or before[1])
    return before if after != before else None


async def check_rename(info, values: dict, old: dict | None) -> None:
    """A renamed account takes its live state (balance, reservations) along, which its open calls name by key:
    renaming is refused while it has calls authorized or running."""
    former = _renamed(values, old)
    if former is not None and await open_call_count(redis_of(info), *former) > 0:
        raise ManagementError(f"Account {former[1]} has calls in progress: rename it once they have ended")


async def _move_live_state(redis, former: tuple[str, str], tenant: str, tag: str) -> None:
    source, target = account_key(*former), account_key(tenant, tag)
    async with redis.pipeline(transaction=True) as pipe:
        await pipe.watch(source)
        if not await pipe.exists(source):
            return
        pipe.multi()
        pipe.rename(source, target)
        await pipe.execute()


async def after_write(info, args: dict, record: dict, old: dict | None) -> dict:
    former = _renamed(record, old)
    if former is not None:
        await _move_live_state(redis_of(info), former, record["tenant"], record["account_tag"])
    if args.get("balance") is not None:
        await move(info, record["tenant"], record["account_tag"], "set", args["balance"], record["balance"], "api")
    return record


async def after_delete(info, record: dict) -> None:
    """A deleted account's live balance is zeroed, so a later account with the same tag starts clean."""
    if await redis_of(info).exists(account_key(record["tenant"], record["account_tag"])):
        await move(info, record["tenant"], record["account_tag"], "set", 0, 0, "api-delete")


async def prepare(connection, args: dict) -> dict:
    return {k: v for k, v in args.items() if k != "balance"}


crud(ACCOUNTS, "Accounts", where=where, check=check, after_write=after_write, after_delete=after_delete,
     prepare=prepare, live_check=check_rename)


# --- balance mutations ---------------------------------------------------------------------------------------------

async def _matching(info, tenant: str, account_tag: str | None, tags: list | None) -> list:
    if account_tag is None and not tags:
        raise ManagementError("Provide account_tag or tags: a balance change never applies to a whole tenant")
    where = repo.Where()
    where.add(f"tenant = {where.param(tenant)}")
    if account_tag is not None:
        where.add(f"account_tag = {where.param(account_tag)}")
    if tags:
        where.add(f"tags && {where.param(list(tags))}::text[]")
    async with reading(info) as connection:
        return await connection.fetch(f"SELECT account_tag, balance, balance_version FROM accounts{where.sql()}",
                                      *where.params)


async def _balance_mutation(info, mode: str, tenant: str, account_tag, tags, balance: int) -> dict:
    rows = await _matching(info, tenant, account_tag, tags)
    for row in rows:
        await move(info, tenant, row["account_tag"], mode, balance, row["balance"], "api", row["balance_version"])
    return {"ok": bool(rows)}


@mutation.field("setAccountBalance")
async def resolve_set_balance(_, info, balance, tenant="default", account_tag=None, tags=None):
    return await _balance_mutation(info, "set", tenant, account_tag, tags, balance)


@mutation.field("incrementAccountBalance")
async def resolve_increment_balance(_, info, balance, tenant="default", account_tag=None, tags=None):
    return await _balance_mutation(info, "add", tenant, account_tag, tags, balance)


# --- running transactions -------------------------------------------------------------------------------------------

@query.field("AccountTransaction")
async def resolve_account_transaction(_, info, account_tag, transaction_tag, tenant="default"):
    entry = await read_call(redis_of(info), tenant, transaction_tag, account_tag)
    return entry if entry is not None and entry["state"] in ("authorized", "begun") else None


async def _account_exists(info, tenant: str, account_tag: str) -> bool:
    async with reading(info) as connection:
        return await repo.tag_exists(connection, "accounts", "account_tag", tenant, account_tag)


@mutation.field("beginAccountTransaction")
async def resolve_begin_account_transaction(_, info, account_tag, transaction, tenant="default"):
    if not await _account_exists(info, tenant, account_tag):
        return {"ok": None, "transaction": None}
    inbound = bool(transaction.get("inbound"))
    request = {
        "tenant": tenant, "transaction_tag": transaction["transaction_tag"],
        "account_tag": None if inbound else account_tag, "destination_account_tag": account_tag if inbound else None,
        "source": transaction.get("source"), "source_ip": transaction.get("source_ip"),
        "destination": transaction.get("destination"), "carrier_ip": transaction.get("carrier_ip"),
        "tags": [t for t in transaction.get("tags") or [] if t is not None],
        "timestamp_begin": transaction.get("timestamp_begin"),
    }
    answer = await app_of(info)[TRANSACTIONS].begin(request)
    entry = await read_call(redis_of(info), tenant, transaction["transaction_tag"], account_tag)
    return {"ok": answer["ok"], "transaction": entry}


async def _finish(info, operation: str, tenant: str, account_tag: str, transaction_tag: str, **extra) -> dict:
    before = await read_call(redis_of(info), tenant, transaction_tag, account_tag)
    if before is None:
        return {"ok": None if operation == "end" else False, "transaction": None}
    request = {"tenant": tenant, "transaction_tag": transaction_tag,
               "account_tag": None if before["inbound"] else account_tag,
               "destination_account_tag": account_tag if before["inbound"] else None, **extra}
    transactions = app_of(info)[TRANSACTIONS]
    answer = await (transactions.rollback(request) if operation == "rollback" else transactions.end(request))
    after = await read_call(redis_of(info), tenant, transaction_tag, account_tag)
    ok = answer["ok"] or (operation != "rollback" and before["state"] == "ended")
    return {"ok": ok, "transaction": after}


@mutation.field("endAccountTransaction")
async def resolve_end_account_transaction(_, info, account_tag, transaction_tag, tenant="default", timestamp_end=None):
    return await _finish(info, "end", tenant, account_tag, transaction_tag, timestamp_end=timestamp_end)


@mutation.field("commitAccountTransaction")
async def resolve_commit_account_transaction(_, info, account_tag, transaction_tag, tenant="default", fee=None):
    result = await _finish(info, "end", tenant, account_tag, transaction_tag, timestamp_end=None)
    return {"ok": bool(result["ok"])}


@mutation.field("rollbackAccountTransaction")
async def resolve_rollback_account_transaction(_, info, account_tag, transaction_tag, tenant="default"):
    result = await _finish(info, "rollback", tenant, account_tag, transaction_tag)
    return {"ok": bool(result["ok"])}


bindables = [account, linked_account]

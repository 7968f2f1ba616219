"""Transactions (call and authorization records, Canyan's CDRs), read-your-writes.

`Transaction(tenant, transaction_tag, account_tag)` reads the call's state in Redis first (the truth right
after the agent answered), PostgreSQL otherwise. `allTransactions`/`_allTransactionsMeta` first write what the
outbox holds at that moment and the open calls' current states (`catch_up`), then query PostgreSQL, so every
answered call is listed, open or finished.
Records written through the create/update/upsert mutations live in PostgreSQL only (state `manual`).
"""

from __future__ import annotations

from ariadne import ObjectType

from ..keys import DATABASE, SETTINGS
from ..store import management as repo
from ..store.management import TRANSACTIONS, ManagementError
from ..store.records import read_records
from ..store.writer import catch_up
from .common import app_of, crud, query, reading, redis_of, related

transaction = ObjectType("Transaction")


async def where(info, connection, filter: dict) -> repo.Where:
    await catch_up(redis_of(info), connection, tenant=(filter or {}).get("tenant"),
                   replicas=app_of(info)[SETTINGS].redis_replicas)
    return repo.base_filter(TRANSACTIONS, filter)


async def check(connection, values: dict, old: dict | None) -> None:
    tenant = values.get("tenant") or (old or {}).get("tenant") or "default"
    account_tag = values.get("account_tag")
    if account_tag is not None and not await repo.tag_exists(connection, "accounts", "account_tag", tenant, account_tag):
        raise ManagementError(f"Account with id = {account_tag} not found in tenant {tenant}!")
    number = values.get("invoice_number")
    if number is not None and not await repo.tag_exists(connection, "invoices", "invoice_number", tenant, number):
        raise ManagementError(f"Invoice with number = {number} not found in tenant {tenant}!")
    if values.get("tags") is not None and None in values["tags"]:
        raise ManagementError("tags cannot contain null")


crud(TRANSACTIONS, "Transactions", where=where, check=check)


@query.field("Transaction")
async def resolve_transaction(_, info, id=None, tenant="default", transaction_tag=None, account_tag=None):
    if id is not None:
        async with reading(info) as connection:
            return await repo.fetch_by_id(connection, TRANSACTIONS, id)
    if transaction_tag is None or account_tag is None or tenant is None:
        raise ManagementError(TRANSACTIONS.missing_key_message())
    for record in await read_records(redis_of(info), app_of(info)[DATABASE], tenant, transaction_tag):
        if record["account_tag"] == account_tag:
            return record
    return None


@transaction.field("id")
async def resolve_id(record, info):
    if record.get("id") is not None:
        return str(record["id"])
    async with reading(info) as connection:
        for attempt in (1, 2):
            found = await connection.fetchval(
                "SELECT id FROM transactions WHERE tenant = $1 AND transaction_tag = $2 AND account_tag = $3"
                " AND call_id = $4", record["tenant"], record["transaction_tag"], record["account_tag"],
                record.get("call_id") or "",
            )
            if found is not None or attempt == 2:
                break
            await catch_up(redis_of(info), connection, tenant=record["tenant"],
                           replicas=app_of(info)[SETTINGS].redis_replicas)
    return None if found is None else str(found)


@transaction.field("destination_rate")
async def resolve_destination_rate(record, info):
    rate = record.get("destination_rate")
    if isinstance(rate, str):
        import orjson

        rate = orjson.loads(rate)
    return {**rate, "tenant": record["tenant"], "id": None} if isinstance(rate, dict) else None


related(transaction, "account", repo.ACCOUNTS)
related(transaction, "invoice", repo.INVOICES)


bindables = [transaction]

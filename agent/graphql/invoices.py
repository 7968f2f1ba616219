"""Invoices (bookkeeping only). An invoice's customer must exist; its rows are stored as one JSON list."""

from __future__ import annotations

from ariadne import ObjectType

from ..store import management as repo
from ..store.management import INVOICES, ManagementError
from .common import crud, related

invoice = ObjectType("Invoice")


async def check(connection, values: dict, old: dict | None) -> None:
    tenant = values.get("tenant") or (old or {}).get("tenant") or "default"
    customer = values.get("customer_tag")
    if customer is not None and not await repo.tag_exists(connection, "customers", "customer_tag", tenant, customer):
        raise ManagementError(f"Customer with id = {customer} not found in tenant {tenant}!")
    if old is None and values.get("invoice_date") is None:
        values.pop("invoice_date", None)  # the table's default: today
    if values.get("rows") is not None:
        values["rows"] = [dict(row) for row in values["rows"] if row is not None]


async def before_delete(info, connection, record: dict) -> None:
    used = await connection.fetchval(
        "SELECT count(*) FROM transactions WHERE tenant = $1 AND invoice_number = $2",
        record["tenant"], record["invoice_number"],
    )
    if used:
        raise ManagementError(
            f"Invoice with number = {record['invoice_number']} is used by {used} transactions"
            f" in tenant {record['tenant']}!"
        )


crud(INVOICES, "Invoices", check=check, before_delete=before_delete)


related(invoice, "customer", repo.CUSTOMERS)


bindables = [invoice]

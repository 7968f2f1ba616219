"""Customers (bookkeeping only: rating does not read them). Accounts and invoices name them by tag."""

from __future__ import annotations

from ariadne import ObjectType

from ..store.management import CUSTOMERS, ManagementError
from .common import crud

customer = ObjectType("Customer")


async def before_delete(info, connection, record: dict) -> None:
    for table, label in (("accounts", "accounts"), ("invoices", "invoices")):
        used = await connection.fetchval(
            f"SELECT count(*) FROM {table} WHERE tenant = $1 AND customer_tag = $2",
            record["tenant"], record["customer_tag"],
        )
        if used:
            raise ManagementError(
                f"Customer with tag = {record['customer_tag']} is used by {used} {label} in tenant {record['tenant']}!"
            )


async def check(connection, values: dict, old: dict | None) -> None:
    if old is not None and values.get("customer_tag") not in (None, old["customer_tag"]):
        await before_delete(None, connection, old)


crud(CUSTOMERS, "Customers", check=check, before_delete=before_delete)

bindables = [customer]

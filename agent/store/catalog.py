"""Reading the catalog snapshot the pricing kernel rates from.

The read happens in one repeatable-read transaction (a consistent cut even while a deck is being
imported) and yields to the event loop every few thousand rates, so requests keep being served while a
large table is loaded.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg

from ..pricing.account import Account, AccountType
from ..pricing.carrier import Carrier
from ..pricing.catalog import Catalog
from ..pricing.rate import Rate
from ..pricing.table import RateTable

_YIELD_EVERY = 5000


def account_from_row(row: asyncpg.Record) -> Account:
    return Account(
        tenant=row["tenant"],
        account_tag=row["account_tag"],
        type=AccountType(row["type"]),
        active=row["active"],
        balance=row["balance"],
        credit_limit=row["credit_limit"],
        max_concurrent_transactions=row["max_concurrent_transactions"],
        max_inbound_transactions=row["max_inbound_transactions"],
        max_outbound_transactions=row["max_outbound_transactions"],
        pricelist_tags=tuple(row["pricelist_tags"]),
        carrier_tags=tuple(row["carrier_tags"]),
        carrier_tags_override=tuple(row["carrier_tags_override"]),
        tags=tuple(row["tags"]),
        linked_accounts=tuple(row["linked_accounts"]),
        name=row["name"],
    )


async def load_catalog(pool: asyncpg.Pool, version: int) -> tuple[Catalog, float]:
    """The catalog as stored now, and the seconds it took to read and index it."""
    started = time.perf_counter()
    async with pool.acquire() as connection:
        async with connection.transaction(isolation="repeatable_read", readonly=True):
            accounts = {
                (row["tenant"], row["account_tag"]): account_from_row(row)
                for row in await connection.fetch("SELECT * FROM accounts")
            }
            carriers = {
                (row["tenant"], row["carrier_tag"]): Carrier(
                    row["tenant"], row["carrier_tag"], row["host"] or "", row["port"], row["protocol"], row["active"]
                )
                for row in await connection.fetch("SELECT * FROM carriers")
            }
            tables: dict[str, RateTable] = {}
            shared: dict[str | None, str | None] = {}  # one string object per repeated tag or description
            count = 0
            cursor = connection.cursor(
                "SELECT tenant, pricelist_tag, carrier_tag, prefix, connect_fee, rate, rate_increment,"
                " interval_start, description, datetime_start, datetime_end"
                " FROM pricelist_rates WHERE active",
                prefetch=10_000,
            )
            async for row in cursor:
                tenant, pricelist, carrier, prefix, connect_fee, rate, increment, free, text, start, end = row
                table = tables.get(tenant)
                if table is None:
                    table = tables[tenant] = RateTable()
                table.add(Rate(
                    shared.setdefault(tenant, tenant), shared.setdefault(pricelist, pricelist),
                    shared.setdefault(carrier, carrier), prefix, connect_fee, rate, increment, free,
                    shared.setdefault(text, text), start, end,
                ))
                count += 1
                if count % _YIELD_EVERY == 0:
                    await asyncio.sleep(0)
    for table in tables.values():
        table.freeze()
    return Catalog(accounts, carriers, tables, version), time.perf_counter() - started

"""Reading the catalog snapshot the pricing kernel rates from, and moving it forward change by change.

`load_catalog` reads accounts and carriers, maps each tenant's activated deck and lays over it the rate
changes made since the deck was built, all in one repeatable-read transaction (a consistent cut).
`apply_changes` turns a snapshot and the change-log rows after its version into the next snapshot, at a
cost in proportion to the changes: re-read accounts, carriers and rates, a newly activated deck mapped.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Iterable

import asyncpg

from ..pricing.account import Account, AccountType
from ..pricing.carrier import Carrier
from ..pricing.catalog import Catalog, Records
from ..pricing.deck import Deck
from ..pricing.rate import Rate
from ..pricing.table import Layer, Layered, RateTable, key_of
from ..turns import AT_ONCE, Turns
from . import changes, decks
from .changes import Change


class DeckMissing(OSError):
    """An activated deck this host has not built yet (after a bounded wait: rate on the deck mapped)."""


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


def carrier_from_row(row: asyncpg.Record) -> Carrier:
    return Carrier(row["tenant"], row["carrier_tag"], row["host"] or "", row["port"], row["protocol"], row["active"])


_EMPTY = RateTable().freeze()


def _identity(rate: Rate) -> tuple[str, str | None, str]:
    return rate.pricelist_tag, rate.carrier_tag, rate.prefix


async def _overlay(connection, table: Layer, tenant: str, identities: Iterable[list]) -> Layered:
    """`table` with the rates named by `identities` ([pricelist, carrier, prefix]) as they are stored now."""
    wanted = {tuple(i) for i in identities}
    if isinstance(table, Layered):
        base, upper, size = table.base, table.upper, table.size
    else:
        base, upper, size = table, _EMPTY, None
    groups: dict[tuple[bool, str], list[Rate]] = {}
    turns = Turns()  # the requests meanwhile rate on the snapshot before it
    if wanted:
        fresh = await decks.read_rates(connection, tenant, list(wanted))
        added: dict[tuple[bool, str], list[Rate]] = {}
        for done, identity in enumerate(wanted):
            if done % AT_ONCE == 0 and turns.due():
                await turns.give()
            added[key_of(identity[2])] = []
        for rate in fresh:
            added[key_of(rate.prefix)].append(rate)
        for (is_raw, key), rates in added.items():
            if turns.due():
                await turns.give()
            current = upper.members(is_raw, key)
            if current is None:
                current = base.group(is_raw, key) or ()
            rates += [r for r in current if _identity(r) not in wanted]
            groups[(is_raw, key)] = rates  # ordered when first looked up (RateTable.over)
    steps = upper.over_in_steps(base, groups, size, AT_ONCE)
    while (layered := next(steps)) is None:
        if turns.due():
            await turns.give()
    return layered


async def _tenant_table(connection, folder: Path, tenant: str, covers: int | None) -> Layered:
    """The tenant's deck covering at least `covers` (none: no deck yet) with the rate changes made since."""
    base: Layer = _EMPTY
    since = 0
    if covers is not None:
        path = decks.local_deck(folder, tenant, covers)
        if path is None:
            raise DeckMissing(f"the deck of tenant {tenant!r} covering change {covers} is not built on this host")
        base = Deck(path)
        since = base.covers
    rows = await changes.since(connection, since, tenant, ("rate",))
    return await _overlay(connection, base, tenant, (i for change in rows for i in change.subject))


async def load_catalog(pool: asyncpg.Pool, root: str | os.PathLike) -> Catalog:
    """The catalog as stored now (its version: the last change it contains)."""
    async with pool.acquire() as connection:
        async with connection.transaction(isolation="repeatable_read", readonly=True):
            await changes.lock_rates(connection)  # before the snapshot: a partition swap is not MVCC-safe
            version = await changes.last_seq(connection)
            folder = await decks.database_folder(connection, root)
            accounts = Records({(r["tenant"], r["account_tag"]): account_from_row(r)
                                for r in await connection.fetch("SELECT * FROM accounts")})
            carriers = Records({(r["tenant"], r["carrier_tag"]): carrier_from_row(r)
                                for r in await connection.fetch("SELECT * FROM carriers")})
            active = await decks.activations(connection)
            tenants = set(active) | set(await decks.rate_tenants(connection))
            tables = {t: await _tenant_table(connection, folder, t, active.get(t)) for t in tenants}
    return Catalog(accounts, carriers, tables, version)


async def _reread(connection, records: Records, keys: dict, table: str, tag: str, from_row) -> Records:
    """`records` with the (tenant, tag) `keys` as stored now (absent ones removed): a new map sharing all
    but the changed entries with the old one, so an edit costs the same with a thousand accounts or a million."""
    tenants, tags = zip(*keys)
    rows = await connection.fetch(
        f"SELECT * FROM {table} WHERE (tenant, {tag}) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
        list(tenants), list(tags))
    with (records if isinstance(records, Records) else Records(records)).mutate() as changed:
        for key in keys:
            changed.pop(key, None)
        for row in rows:
            changed[(row["tenant"], row[tag])] = from_row(row)
        return changed.finish()


async def apply_changes(connection: asyncpg.Connection, catalog: Catalog, rows: list[Change],
                        root: str | os.PathLike) -> Catalog:
    """The snapshot after `rows` (change-log rows following `catalog.version`, in order)."""
    if not rows:
        return catalog
    accounts, carriers, tables = catalog.accounts, catalog.carriers, catalog.tables
    folder = None
    wanted: dict[str, dict[tuple[str, str], None]] = {"account": {}, "carrier": {}}
    rates: dict[str, list] = {}
    activated: dict[str, int] = {}
    for change in rows:
        if change.kind in wanted:
            wanted[change.kind].update(((change.tenant, tag), None) for tag in change.subject)
        elif change.kind == "rate":
            rates.setdefault(change.tenant, []).extend(change.subject)
        elif change.kind == "deck":
            activated[change.tenant] = change.subject["covers"]
            rates.pop(change.tenant, None)  # re-read with the deck below
    if wanted["account"]:
        accounts = await _reread(connection, accounts, wanted["account"], "accounts", "account_tag", account_from_row)
    if wanted["carrier"]:
        carriers = await _reread(connection, carriers, wanted["carrier"], "carriers", "carrier_tag", carrier_from_row)
    if rates or activated:
        tables = dict(tables)
        if activated:
            folder = await decks.database_folder(connection, root)
        for tenant, covers in activated.items():
            tables[tenant] = await _tenant_table(connection, folder, tenant, covers)
        for tenant, identities in rates.items():
            tables[tenant] = await _overlay(connection, tables.get(tenant, _EMPTY), tenant, identities)
    # Remembered routes depend on the tables and carriers, and on an account only through the values of its
    # routing profile (routing.route): a change of accounts alone keeps them.
    routes = catalog.routes if tables is catalog.tables and carriers is catalog.carriers else {}
    return replace(catalog, accounts=accounts, carriers=carriers, tables=tables, version=rows[-1].seq, routes=routes)

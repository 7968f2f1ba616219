"""Pricelist rates. A rate names its pricelist and carrier by tag or by id; both must exist in its tenant.

Prices are stored as integers of the pricelist's money scale (`connect_fee`, `rate`, `maximum_cost`); the
`*_decimal` arguments give them as decimal text (`0.0085`), converted exactly with that scale, and the
`*_decimal` fields read them back so.

A rate may have a `source_prefix` (origin rating): it is part of the rate's identity (migration 009), so
a rate named by tenant, pricelist_tag, carrier_tag and prefix is the one of the `source_prefix` given
too (none: the rate for any origin, the only one a Canyan deck has).

A rate may have a time window (peak / off-peak / weekend, agent/pricing/rate.py): `weekdays` (`mon-fri`,
`sat,sun`), `time_start` and `time_end` (`08:00`, `18:00`, end exclusive; an end below the start wraps over
midnight), judged in the pricelist's `timezone`. They are written as text and stored canonically as numbers
(weekday bits, seconds of the day; migration 011); the window is part of the rate's identity too, so a rate
named by its key is the one of the window given (none: the rate without a window).
"""

from __future__ import annotations

import dataclasses
import uuid

from ariadne import ObjectType

from ..store import management as repo
from ..pricing.rate import DAY, WindowError, clock_of, clock_text, weekdays_of, weekdays_text, window_checked
from ..store.importer import check_scheme, scaled_price, source_prefix
from ..store.management import ManagementError
from .common import crud, mutation, query, reading

pricelist_rate = ObjectType("PricelistRate")
# The management entity with the source prefix, a column written like the others; the natural key stays
# (pricelist_tag, carrier_tag, prefix) for the messages and checks, and `_named` adds the source prefix.
RATES = dataclasses.replace(
    repo.RATES, columns=(*repo.RATES.columns, "source_prefix", "weekdays", "time_start", "time_end"),
    exact=(*repo.RATES.exact, "source_prefix"),
    cleared={**repo.RATES.cleared, "source_prefix": "", "weekdays": 0, "time_start": 0, "time_end": DAY})
_WINDOW = ("weekdays", "time_start", "time_end")


def _window(args: dict) -> dict:
    """`args` with the window fields given as text turned into the numbers stored (a GraphQL error naming the
    field otherwise); a null stays (it clears the field)."""
    if not any(args.get(name) is not None for name in _WINDOW):
        return args
    args = dict(args)
    try:
        if args.get("weekdays") is not None:
            args["weekdays"] = weekdays_of(args["weekdays"])
        for name in ("time_start", "time_end"):
            if args.get(name) is not None:
                args[name] = clock_of(args[name], name)
    except ValueError as exc:
        raise ManagementError(f"{exc}!") from None
    return args


def _canonical(values: dict) -> tuple[int, int, int]:
    """The stored window of a rate's (numeric) window fields, None or absent: not set."""
    try:
        return window_checked(values.get("weekdays") or 0, values.get("time_start"), values.get("time_end"))
    except WindowError as exc:
        raise ManagementError(f"{exc}!") from None


def _origin(args: dict) -> dict:
    """`args` with its source prefix normalized as stored (a GraphQL error naming the field otherwise)."""
    if args.get("source_prefix") is None:
        return args
    try:
        return {**args, "source_prefix": source_prefix(args["source_prefix"])}
    except ValueError as exc:
        raise ManagementError(f"{exc}!") from None


async def _named(connection, args: dict) -> str | None:
    """The id of the rate named by tenant + key + source prefix (none given: '') + window (none: the whole
    week), or None."""
    return await connection.fetchval(
        "SELECT id::text FROM pricelist_rates WHERE tenant = $1 AND pricelist_tag = $2 AND carrier_tag = $3"
        " AND prefix = $4 AND source_prefix = $5 AND weekdays = $6 AND time_start = $7 AND time_end = $8",
        args.get("tenant") or "default", args["pricelist_tag"], args["carrier_tag"], args["prefix"],
        args.get("source_prefix") or "", *_canonical(args))


def _keyed(args: dict) -> bool:
    return args.get("id") is None and all(args.get(name) is not None for name in RATES.key)


async def _tag_of(connection, table: str, column: str, record_id) -> tuple[str, str] | None:
    key = repo.as_uuid(record_id)
    if key is None:
        return None
    row = await connection.fetchrow(f"SELECT tenant, {column} FROM {table} WHERE id = $1", key)
    return None if row is None else (row["tenant"], row[column])


_DECIMALS = {"connect_fee_decimal": "connect_fee", "rate_decimal": "rate", "maximum_cost_decimal": "maximum_cost"}


async def _scale_of(connection, tenant: str | None, tag: str | None) -> int:
    if tenant is None or tag is None:
        return 0
    return await connection.fetchval(
        "SELECT scale FROM pricelists WHERE tenant = $1 AND pricelist_tag = $2", tenant, tag) or 0


async def prepare(connection, args: dict) -> dict:
    """The references (`_references`), the rate named with its source prefix, then the decimal prices as
    integers of the pricelist's scale."""
    decimals = {name: args[name] for name in _DECIMALS if name in args}
    args = await _references(connection, _window(_origin({k: v for k, v in args.items() if k not in _DECIMALS})))
    if _keyed(args):
        # named by its key: the rate of this origin, else a new one (never another origin's rate, which
        # the key alone would find)
        args["id"] = await _named(connection, args) or str(uuid.uuid4())
    if decimals:
        existing = await repo.fetch_by_id(connection, RATES, args["id"]) if args.get("id") is not None else None
        tenant = args.get("tenant") or (existing or {}).get("tenant") or "default"
        scale = await _scale_of(connection, tenant, args.get("pricelist_tag") or (existing or {}).get("pricelist_tag"))
        for name, value in decimals.items():
            column = _DECIMALS[name]
            if args.get(column) is not None and value is not None:
                raise ManagementError(f"Give {column} or {name}, not both!")
            try:
                args[column] = scaled_price(value, name, scale, None)
            except ValueError as exc:
                raise ManagementError(f"{exc}!") from None
    return args


async def _references(connection, args: dict) -> dict:
    """Turns pricelist_id/carrier_id into tags (a given tag wins) and checks both references exist."""
    args = dict(args)
    pricelist_id, carrier_id = args.pop("pricelist_id", None), args.pop("carrier_id", None)
    existing = None
    if args.get("id") is not None:
        existing = await repo.fetch_by_id(connection, RATES, args["id"])
    for given_id, table, column, label in (
        (pricelist_id, "pricelists", "pricelist_tag", "Price list"),
        (carrier_id, "carriers", "carrier_tag", "Carrier"),
    ):
        if given_id is None or args.get(column) is not None:
            continue
        found = await _tag_of(connection, table, column, given_id)
        if found is None:
            tenant = args.get("tenant") or (existing or {}).get("tenant") or "default"
            raise ManagementError(f"{label} with id = {given_id} and tag = None not found in tenant {tenant}!")
        args.setdefault("tenant", found[0])
        args[column] = found[1]
    tenant = args.get("tenant") or (existing or {}).get("tenant") or "default"
    for column, table, label, given_id in (
        ("pricelist_tag", "pricelists", "Price list", pricelist_id),
        ("carrier_tag", "carriers", "Carrier", carrier_id),
    ):
        tag = args.get(column) if column in args else (existing or {}).get(column)
        if tag is None:
            continue
        if not await repo.tag_exists(connection, table, column, tenant, tag):
            raise ManagementError(f"{label} with id = {given_id} and tag = {tag} not found in tenant {tenant}!")
    return args


async def where(info, connection, filter: dict) -> repo.Where:
    filter = dict(filter)
    for given_id, table, column in (
        (filter.get("pricelist_id"), "pricelists", "pricelist_tag"),
        (filter.get("carrier_id"), "carriers", "carrier_tag"),
    ):
        if given_id is not None and filter.get(column) is None:
            found = await _tag_of(connection, table, column, given_id)
            filter[column] = found[1] if found else "\x00no such record"
    return repo.base_filter(RATES, filter)


async def check(connection, values: dict, old: dict | None) -> None:
    """The import's checks of the pricing columns, on the rate as it will be stored (a null clears a column
    to its default)."""
    merged = {**(old or {}), **values}
    if old is None or any(name in values for name in _WINDOW):  # stored canonically (window_checked)
        values.update(zip(_WINDOW, _canonical(merged)))
    scale = await _scale_of(connection, merged.get("tenant") or "default", merged.get("pricelist_tag"))
    try:
        check_scheme({name: value for name, value in merged.items() if value is not None}, scale)
    except ValueError as exc:
        raise ManagementError(f"{exc}!") from None


crud(RATES, "PricelistRates", where=where, prepare=prepare, check=check)


def _by_origin(resolvers: dict, name: str) -> None:
    """Wraps the resolver reading or deleting one rate: a rate named by its key is the one of the source
    prefix given (none: any origin's rate)."""
    inner = resolvers[name]

    async def resolve(parent, info, **args):
        args = _window(_origin(args))
        if _keyed(args):
            async with reading(info) as connection:
                found = await _named(connection, args)
            if found is None:
                return None
            args = {"id": found}
        return await inner(parent, info, **{k: v for k, v in args.items() if k not in ("source_prefix", *_WINDOW)})

    resolvers[name] = resolve


_by_origin(query._resolvers, "PricelistRate")
_by_origin(mutation._resolvers, "deletePricelistRate")


async def _id_of(info, table: str, column: str, rate: dict):
    if rate.get("id") is None or rate.get(column) is None:
        return None
    async with reading(info) as connection:
        found = await connection.fetchval(
            f"SELECT id FROM {table} WHERE tenant = $1 AND {column} = $2", rate["tenant"], rate[column]
        )
    return None if found is None else str(found)


@pricelist_rate.field("pricelist_id")
async def resolve_pricelist_id(rate, info):
    return await _id_of(info, "pricelists", "pricelist_tag", rate)


@pricelist_rate.field("carrier_id")
async def resolve_carrier_id(rate, info):
    return await _id_of(info, "carriers", "carrier_tag", rate)


def decimal_text(amount: int | None, scale: int) -> str | None:
    """An integer of 10**-scale units as decimal text: 85 at scale 4 is 0.0085."""
    if amount is None or not scale:
        return None if amount is None else str(amount)
    digits = str(amount).rjust(scale + 1, "0")
    return f"{digits[:-scale]}.{digits[-scale:]}"


def _decimal_field(name: str) -> None:
    @pricelist_rate.field(f"{name}_decimal")
    async def resolve(rate, info):
        if rate.get(name) is None:
            return None
        async with reading(info) as connection:
            scale = await _scale_of(connection, rate.get("tenant"), rate.get("pricelist_tag"))
        return decimal_text(rate[name], scale)


for _name in _DECIMALS.values():
    _decimal_field(_name)


# A stored rate holds its window as numbers; a rate of the catalog (accounts.rate_dict, Rate.snapshot) as text.
@pricelist_rate.field("weekdays")
def resolve_weekdays(rate, info):
    found = rate.get("weekdays")
    return found if isinstance(found, str) else weekdays_text(found or 0)


@pricelist_rate.field("time_start")
def resolve_time_start(rate, info):
    found = rate.get("time_start")
    return found if isinstance(found, str) else clock_text(found or None)


@pricelist_rate.field("time_end")
def resolve_time_end(rate, info):
    found = rate.get("time_end")
    return found if isinstance(found, str) else None if found is None or found == DAY else clock_text(found)

bindables = [pricelist_rate]

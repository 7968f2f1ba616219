"""SQL of the management API: one generic repository over the catalog and bookkeeping tables.

Every entity is a table with a uuid `id`, a `tenant` and a natural key (`carrier_tag`, ...). Writes follow
one rule for create, update and upsert: the record is found by `id` when given, otherwise by its natural
key; only the fields the caller passed are written (a field passed as null is cleared); a new record gets
the entity's creation defaults (`tenant` "default", `active` true). Lists take a filter, a sort field
(whitelisted columns) and a page. Callers run writes inside a transaction (see `agent/graphql`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import asyncpg
import orjson

MAX_PER_PAGE = 10_000


class ManagementError(Exception):
    """A request the management API refuses; the message is shown to the client as is."""


@dataclass(frozen=True)
class Entity:
    name: str
    table: str
    key: tuple[str, ...]  # natural key, after tenant
    columns: tuple[str, ...]  # writable columns besides id and tenant
    q: tuple[str, ...] = ()  # columns the `q` filter searches
    exact: tuple[str, ...] = ()  # filter fields compared with the column of the same name
    defaults: dict[str, Any] = field(default_factory=dict)  # on creation, when not given
    cleared: dict[str, Any] = field(default_factory=dict)  # what a null clears a NOT NULL column to
    json: tuple[str, ...] = ()  # jsonb columns
    required: tuple[str, ...] = ()  # never null
    catalog: bool = False  # rating reads it: writers announce the change
    newest: str = ""  # the column ordering rows that share a natural key (calls re-using a tag): newest wins

    @property
    def sortable(self) -> set[str]:
        return {"id", "tenant", *self.key, *self.columns}

    def missing_key_message(self) -> str:
        names = list(self.key)
        if len(names) == 1:
            return f"Provide either the id or tenant and {names[0]}!"
        return f"Provide either the id or tenant, {', '.join(names[:-1])} and {names[-1]}!"


_PARTY = ("company_name", "firstname", "lastname", "email", "tax_number", "vat_number")
_PLACE = ("address", "zipcode", "city", "province", "country", "active")

CARRIERS = Entity(
    "Carrier", "carriers", ("carrier_tag",), ("host", "port", "protocol", "active"),
    q=("tenant", "carrier_tag", "host"), exact=("carrier_tag", "active"),
    defaults={"active": True, "protocol": "UDP"}, cleared={"active": True, "protocol": "UDP"}, catalog=True,
)
PRICELISTS = Entity(
    "Pricelist", "pricelists", ("pricelist_tag",), ("name", "currency"),
    q=("tenant", "pricelist_tag", "name"), exact=("pricelist_tag",), catalog=True,
)
RATES = Entity(
    "PricelistRate", "pricelist_rates", ("pricelist_tag", "carrier_tag", "prefix"),
    ("datetime_start", "datetime_end", "active", "connect_fee", "rate", "rate_increment", "interval_start",
     "description", "initial_increment", "minimum_duration", "maximum_cost"),
    q=("pricelist_tag", "prefix", "description"), exact=("pricelist_tag", "carrier_tag", "prefix", "active"),
    defaults={"active": True},
    cleared={"active": True, "connect_fee": 0, "rate": 0, "rate_increment": 1, "interval_start": 0,
             "minimum_duration": 0},
    catalog=True,
)
ACCOUNTS = Entity(
    "Account", "accounts", ("account_tag",),
    ("name", "type", "customer_tag", "notification_email", "notification_mobile", "active", "credit_limit",
     "max_concurrent_transactions", "max_inbound_transactions", "max_outbound_transactions", "carrier_tags",
     "carrier_tags_override", "pricelist_tags", "tags", "linked_accounts"),
    q=("tenant", "account_tag", "name"), exact=("account_tag", "customer_tag", "type", "active"),
    defaults={"active": True, "type": "PREPAID"},
    cleared={"active": True, "carrier_tags": [], "carrier_tags_override": [], "pricelist_tags": [], "tags": [],
             "linked_accounts": []},
    required=("type",), catalog=True,
)
CUSTOMERS = Entity(
    "Customer", "customers", ("customer_tag",), (*_PARTY, "vat_policy", *_PLACE),
    q=("tenant", "customer_tag", "company_name", "tax_number", "vat_number"), exact=("customer_tag", "active"),
    defaults={"active": True}, cleared={"active": True},
)
SELLERS = Entity(
    "Seller", "sellers", ("seller_tag",), (*_PARTY, *_PLACE),
    q=("tenant", "seller_tag", "company_name", "tax_number", "vat_number"), exact=("seller_tag", "active"),
    defaults={"active": True}, cleared={"active": True},
)
INVOICES = Entity(
    "Invoice", "invoices", ("invoice_number",),
    ("invoice_date", "customer_tag", "rows", "net_total", "vat_rate", "total"),
    q=("tenant", "invoice_number"), exact=("invoice_number", "invoice_date", "customer_tag"),
    cleared={"rows": []}, json=("rows",), required=("invoice_date",),
)
TRANSACTIONS = Entity(
    "Transaction", "transactions", ("transaction_tag", "account_tag"),
    ("invoice_number", "source", "source_ip", "destination", "carrier_ip", "tags", "authorized",
     "unauthorized_reason", "destination_rate", "timestamp_auth", "timestamp_begin", "timestamp_end", "primary",
     "inbound", "duration", "fee"),
    q=("tenant", "transaction_tag", "account_tag"),
    exact=("transaction_tag", "account_tag", "invoice_number", "primary", "inbound"),
    defaults={"state": "manual", "version": 0, "primary": False, "inbound": False},
    cleared={"tags": [], "primary": False, "inbound": False}, json=("destination_rate",), newest="version",
)


async def tag_exists(connection, table: str, column: str, tenant: str, value: Any) -> bool:
    """Whether `table` holds a row of `tenant` whose `column` is `value` (a referential check)."""
    return await connection.fetchval(
        f"SELECT 1 FROM {table} WHERE tenant = $1 AND {column} = $2", tenant, value
    ) is not None


def quoted(column: str) -> str:
    return f'"{column}"'


def as_uuid(value: Any) -> uuid.UUID | None:
    """The id as a UUID, or None when it cannot be one (such an id matches nothing)."""
    try:
        return uuid.UUID(str(value))
    except (TypeError, ValueError):
        return None


def row_dict(entity: Entity, row: asyncpg.Record | None) -> dict | None:
    if row is None:
        return None
    record = dict(row)
    record["id"] = str(record["id"])
    for name in entity.json:
        if isinstance(record.get(name), str):
            record[name] = orjson.loads(record[name])
    return record


async def fetch_by_id(connection, entity: Entity, record_id: Any) -> dict | None:
    key = as_uuid(record_id)
    if key is None:
        return None
    row = await connection.fetchrow(f"SELECT * FROM {entity.table} WHERE id = $1", key)
    return row_dict(entity, row)


async def fetch_by_key(connection, entity: Entity, tenant: str, key: dict[str, Any]) -> dict | None:
    clauses = ["tenant = $1"] + [f"{quoted(name)} = ${i}" for i, name in enumerate(entity.key, 2)]
    row = await connection.fetchrow(
        f"SELECT * FROM {entity.table} WHERE {' AND '.join(clauses)}"
        + (f" ORDER BY {entity.newest} DESC LIMIT 1" if entity.newest else ""),
        tenant, *(key[n] for n in entity.key)
    )
    return row_dict(entity, row)


async def fetch_one(connection, entity: Entity, args: dict[str, Any], *, for_update: bool = False) -> dict | None:
    """The record named by `id`, or by tenant + natural key; ManagementError when neither is given."""
    if args.get("id") is not None:
        return await fetch_by_id(connection, entity, args["id"])
    tenant = args.get("tenant") or "default"
    if any(args.get(name) is None for name in entity.key):
        raise ManagementError(entity.missing_key_message())
    return await fetch_by_key(connection, entity, tenant, args)


# --- lists --------------------------------------------------------------------------------------------------------

class Where:
    """WHERE clauses with numbered parameters."""

    def __init__(self) -> None:
        self.clauses: list[str] = []
        self.params: list[Any] = []

    def param(self, value: Any) -> str:
        self.params.append(value)
        return f"${len(self.params)}"

    def add(self, clause: str) -> None:
        self.clauses.append(clause)

    def sql(self) -> str:
        return " WHERE " + " AND ".join(self.clauses) if self.clauses else ""


def _like(text: str) -> str:
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def base_filter(entity: Entity, filter: dict[str, Any] | None) -> Where:
    """Tenant (omitted: "default"; null: every tenant), id/ids, q and the entity's exact fields."""
    filter = filter or {}
    where = Where()
    tenant = filter.get("tenant", "default")
    if tenant is not None:
        where.add(f"tenant = {where.param(tenant)}")
    if filter.get("id") is not None:
        where.add(f"id = {where.param(as_uuid(filter['id']))}")
    elif filter.get("ids") is not None:
        ids = [key for key in map(as_uuid, filter["ids"]) if key is not None]
        where.add(f"id = ANY({where.param(ids)}::uuid[])")
    if filter.get("q"):
        pattern = where.param(_like(filter["q"]))
        where.add("(" + " OR ".join(f"{quoted(c)}::text ILIKE {pattern}" for c in entity.q) + ")")
    for name in entity.exact:
        if filter.get(name) is not None:
            where.add(f"{quoted(name)} = {where.param(filter[name])}")
    return where


def order_and_page(entity: Entity, args: dict[str, Any]) -> tuple[str, int, int]:
    sort = args.get("sortField") or "id"
    if sort not in entity.sortable:
        raise ManagementError(f"Cannot sort {entity.name} by {sort!r}; fields: {', '.join(sorted(entity.sortable))}")
    direction = "ASC" if (args.get("sortOrder") or "asc").lower() == "asc" else "DESC"
    page = args.get("page") or 0
    per_page = 25 if args.get("perPage") is None else args["perPage"]
    if page < 0 or not 0 <= per_page <= MAX_PER_PAGE:
        raise ManagementError(f"page must be >= 0 and perPage between 0 and {MAX_PER_PAGE}")
    order = f" ORDER BY {quoted(sort)} {direction}" + ("" if sort == "id" else f", id {direction}")
    return order, per_page, page * per_page


async def list_rows(connection, entity: Entity, where: Where, args: dict[str, Any]) -> list[dict]:
    order, limit, offset = order_and_page(entity, args)
    rows = await connection.fetch(
        f"SELECT * FROM {entity.table}{where.sql()}{order} LIMIT {limit} OFFSET {offset}", *where.params
    )
    return [row_dict(entity, row) for row in rows]


async def count_rows(connection, entity: Entity, where: Where) -> int:
    return await connection.fetchval(f"SELECT count(*) FROM {entity.table}{where.sql()}", *where.params)


# --- writes -------------------------------------------------------------------------------------------------------

def _stored(entity: Entity, name: str, value: Any) -> Any:
    if value is None:
        if name in entity.required:
            raise ManagementError(f"{name} cannot be null")
        return entity.cleared.get(name)
    if name in entity.json:
        return orjson.dumps(value).decode()
    return value


async def upsert(
    connection, entity: Entity, args: dict[str, Any], check: Callable | None = None
) -> tuple[dict, dict | None]:
    """Creates or updates one record from the arguments the caller passed; returns (new, old).

    `check(values, old)` may validate or complete the values (referential checks) before the write.
    """
    old: dict | None = None
    if args.get("id") is not None:
        if as_uuid(args["id"]) is None:
            raise ManagementError(f"id must be a UUID, got {args['id']!r}")
        old = await fetch_by_id(connection, entity, args["id"])
    given = {k: v for k, v in args.items() if k != "id"}
    if old is None and args.get("id") is None:
        if any(given.get(name) is None for name in entity.key):
            raise ManagementError(entity.missing_key_message())
        old = await fetch_by_key(connection, entity, given.get("tenant") or "default", given)
    if old is not None:
        values = {k: v for k, v in given.items() if k in entity.columns or k in entity.key or k == "tenant"}
        for name in ("tenant", *entity.key):
            if name in values and values[name] is None:
                raise ManagementError(f"{name} cannot be null")
    else:
        values = {**entity.defaults, **{k: v for k, v in given.items() if v is not None or k not in entity.defaults}}
        values["tenant"] = given.get("tenant") or "default"
        for name in entity.key:
            if values.get(name) is None:
                raise ManagementError(entity.missing_key_message())
        values = {k: v for k, v in values.items()
                  if k in entity.columns or k in entity.key or k == "tenant" or k in entity.defaults}
    if check is not None:
        await check(values, old)
    try:
        if old is not None:
            if values:
                names = list(values)
                sets = ", ".join(f"{quoted(n)} = ${i}" for i, n in enumerate(names, 2))
                row = await connection.fetchrow(
                    f"UPDATE {entity.table} SET {sets} WHERE id = $1 RETURNING *",
                    as_uuid(old["id"]), *(_stored(entity, n, values[n]) for n in names),
                )
            else:
                row = await connection.fetchrow(f"SELECT * FROM {entity.table} WHERE id = $1", as_uuid(old["id"]))
        else:
            names = list(values)
            if args.get("id") is not None:
                names.insert(0, "id")
                values["id"] = as_uuid(args["id"])
            placeholders = ", ".join(f"${i}" for i in range(1, len(names) + 1))
            row = await connection.fetchrow(
                f"INSERT INTO {entity.table} ({', '.join(map(quoted, names))}) VALUES ({placeholders}) RETURNING *",
                *(values["id"] if n == "id" else _stored(entity, n, values[n]) for n in names),
            )
    except asyncpg.UniqueViolationError:
        raise ManagementError(
            f"{entity.name} with the same tenant and {', '.join(entity.key)} already exists!"
        ) from None
    except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
        raise ManagementError(f"{entity.name}: {exc}") from None
    return row_dict(entity, row), old


async def delete(connection, entity: Entity, args: dict[str, Any]) -> dict | None:
    record = await fetch_one(connection, entity, args)
    if record is None:
        return None
    await connection.execute(f"DELETE FROM {entity.table} WHERE id = $1", as_uuid(record["id"]))
    return record

"""Loading catalog data from files: a JSON catalog (carriers, pricelists, rates, accounts) and CSV rate decks.

Rate decks are streamed row by row into PostgreSQL with COPY and merged in one transaction, so a deck of
millions of rows loads without being held in memory and running agents switch to it all at once (they
switch when the deck built from it is activated, see store/decks.py). Balances given in a catalog are set through Redis, like every
balance change, so the ledger records them.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import asyncpg

from ..http.validation import as_datetime
from . import changes

RATE_COLUMNS = (
    "tenant", "pricelist_tag", "carrier_tag", "prefix", "connect_fee", "rate", "rate_increment",
    "interval_start", "description", "datetime_start", "datetime_end", "active",
)
_BOOL = {"1": True, "true": True, "yes": True, "t": True, "0": False, "false": False, "no": False, "f": False}


class ImportError_(ValueError):
    """A row that cannot be imported; the message names the line."""


def _int(value: Any, name: str, default: int = 0) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer, got {value!r}") from None
    if isinstance(value, float) and value != number:
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if number < 0:
        raise ValueError(f"{name} must not be negative")
    return number


def _bool(value: Any, default: bool = True) -> bool:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        return value
    try:
        return _BOOL[str(value).strip().lower()]
    except KeyError:
        raise ValueError(f"not a boolean: {value!r}") from None


def _moment(value: Any):
    return None if value in (None, "") else as_datetime(value)


def rate_row(raw: dict[str, Any], tenant: str, pricelist: str | None, carrier: str | None) -> tuple:
    """One validated pricelist-rate row in RATE_COLUMNS order."""
    prefix = (raw.get("prefix") or "").strip()
    if not prefix:
        raise ValueError("prefix is required")
    pricelist_tag = raw.get("pricelist_tag") or pricelist
    carrier_tag = raw.get("carrier_tag") or carrier
    if not pricelist_tag:
        raise ValueError("pricelist_tag is required (column or --pricelist)")
    if not carrier_tag:
        raise ValueError("carrier_tag is required (column or --carrier)")
    return (
        raw.get("tenant") or tenant, pricelist_tag, carrier_tag, prefix,
        _int(raw.get("connect_fee"), "connect_fee"), _int(raw.get("rate"), "rate"),
        _int(raw.get("rate_increment"), "rate_increment", 1), _int(raw.get("interval_start"), "interval_start"),
        raw.get("description") or None, _moment(raw.get("datetime_start")), _moment(raw.get("datetime_end")),
        _bool(raw.get("active")),
    )


def csv_rates(
    lines: Iterable[str], tenant: str, pricelist: str | None, carrier: str | None,
    progress: Callable[[int], None] | None = None,
) -> Iterator[tuple]:
    """Rows of a CSV deck with a header line; each yielded row carries its line number last."""
    reader = csv.DictReader(lines)
    if not reader.fieldnames or "prefix" not in reader.fieldnames:
        raise ImportError_("the deck needs a header line with at least a `prefix` column")
    for raw in reader:
        try:
            row = rate_row(raw, tenant, pricelist, carrier)
        except ValueError as exc:
            raise ImportError_(f"line {reader.line_num}: {exc}") from None
        yield (*row, reader.line_num)
        if progress is not None and reader.line_num % 10_000 == 0:
            progress(reader.line_num)


@dataclass
class DeckResult:
    rows: int
    replaced: int
    tenants: set[str]  # whose decks must be built again


async def import_rates(
    connection: asyncpg.Connection, rows: Iterable[tuple], replace: bool = False,
    recorder: changes.Recorder | None = None,
) -> DeckResult:
    """Streams rows into a temporary table and merges them in one transaction (last duplicate wins).

    With `replace`, rates of the deck's pricelist/carrier pairs that the deck does not list are deleted
    in the same transaction: the deck becomes the whole tariff for them.
    """
    async with connection.transaction():
        await connection.execute(
            "CREATE TEMPORARY TABLE rate_deck (LIKE pricelist_rates INCLUDING DEFAULTS, line bigint)"
            " ON COMMIT DROP"
        )
        await connection.execute("ALTER TABLE rate_deck DROP COLUMN id")
        await connection.copy_records_to_table("rate_deck", records=rows, columns=[*RATE_COLUMNS, "line"])
        await connection.execute("ANALYZE rate_deck")  # the planner's estimates of the deck's size
        count = await connection.fetchval("SELECT count(*) FROM rate_deck")
        missing = await connection.fetchrow(
            "SELECT d.pricelist_tag, d.carrier_tag, d.tenant,"
            " p.pricelist_tag IS NULL AS no_pricelist, c.carrier_tag IS NULL AS no_carrier"
            " FROM (SELECT DISTINCT tenant, pricelist_tag, carrier_tag FROM rate_deck) d"
            " LEFT JOIN pricelists p USING (tenant, pricelist_tag)"
            " LEFT JOIN carriers c ON c.tenant = d.tenant AND c.carrier_tag = d.carrier_tag"
            " WHERE p.pricelist_tag IS NULL OR c.carrier_tag IS NULL LIMIT 1"
        )
        if missing is not None:
            what = (f"Price list with tag = {missing['pricelist_tag']}" if missing["no_pricelist"]
                    else f"Carrier with tag = {missing['carrier_tag']}")
            raise ImportError_(f"{what} not found in tenant {missing['tenant']}!")
        replaced = 0
        if replace:
            # The rates just written may have no statistics yet: a nested-loop anti-join would compare every
            # stored rate with every deck row (minutes for large decks); a hash anti-join is linear.
            await connection.execute("SET LOCAL enable_nestloop = off")
            status = await connection.execute(
                "DELETE FROM pricelist_rates r USING (SELECT DISTINCT tenant, pricelist_tag, carrier_tag"
                " FROM rate_deck) d WHERE r.tenant = d.tenant AND r.pricelist_tag = d.pricelist_tag"
                " AND r.carrier_tag = d.carrier_tag AND NOT EXISTS (SELECT 1 FROM rate_deck n"
                " WHERE n.tenant = r.tenant AND n.pricelist_tag = r.pricelist_tag"
                " AND n.carrier_tag = r.carrier_tag AND n.prefix = r.prefix)"
            )
            replaced = int(status.split()[-1])
            await connection.execute("SET LOCAL enable_nestloop = on")
        columns = ", ".join(RATE_COLUMNS)
        updates = ", ".join(f"{c} = excluded.{c}" for c in RATE_COLUMNS[4:])
        # Sorting the deck in memory (not on disk), and rows that did not change are not rewritten.
        await connection.execute("SET LOCAL work_mem = '128MB'")
        await connection.execute(
            f"INSERT INTO pricelist_rates ({columns})"
            f" SELECT DISTINCT ON (tenant, pricelist_tag, prefix, carrier_tag) {columns} FROM rate_deck"
            " ORDER BY tenant, pricelist_tag, prefix, carrier_tag, line DESC"
            f" ON CONFLICT (tenant, pricelist_tag, prefix, carrier_tag) DO UPDATE SET {updates}"
            f" WHERE ({', '.join(f'pricelist_rates.{c}' for c in RATE_COLUMNS[4:])})"
            f" IS DISTINCT FROM ({', '.join(f'excluded.{c}' for c in RATE_COLUMNS[4:])})"
        )
        tenants = {row["tenant"] for row in await connection.fetch("SELECT DISTINCT tenant FROM rate_deck")}
        own = recorder is None
        recorder = changes.Recorder() if own else recorder
        for tenant in tenants:
            recorder.add(tenant, "bulk")
        if own:
            await recorder.write(connection)
    return DeckResult(count, replaced, tenants)


_CARRIER = ("carrier_tag", "host", "port", "protocol", "active")
_PRICELIST = ("pricelist_tag", "name", "currency")
_ACCOUNT_LISTS = ("carrier_tags", "carrier_tags_override", "pricelist_tags", "tags", "linked_accounts")
_ACCOUNT_VALUES = (
    "name", "type", "customer_tag", "notification_email", "notification_mobile", "active", "credit_limit",
    "max_concurrent_transactions", "max_inbound_transactions", "max_outbound_transactions",
)


def _str_list(value: Any, name: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{name} must be a list of strings")
    return value


async def import_catalog(connection: asyncpg.Connection, document: dict[str, Any],
                         set_balances: bool = False) -> dict[str, Any]:
    """Upserts the carriers, pricelists, rates and accounts of a JSON document in one transaction.

    Returns counts, and the balances to set (tenant, account_tag, balance) for the caller to apply: those
    of the accounts this import creates, or of every account given one with `set_balances` (running
    the same import again must not undo what calls were charged since).
    """
    default_tenant = document.get("tenant", "default")
    balances: list[tuple[str, str, int]] = []
    recorder = changes.Recorder()
    async with connection.transaction():
        for item in document.get("carriers", []):
            protocol = (item.get("protocol") or "UDP").upper()
            if protocol not in ("UDP", "TCP", "TLS"):
                raise ImportError_(f"carrier {item.get('carrier_tag')!r}: protocol must be UDP, TCP or TLS")
            await connection.execute(
                "INSERT INTO carriers (tenant, carrier_tag, host, port, protocol, active)"
                " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant, carrier_tag) DO UPDATE SET"
                " host = excluded.host, port = excluded.port, protocol = excluded.protocol, active = excluded.active",
                item.get("tenant", default_tenant), item["carrier_tag"], item.get("host"),
                item.get("port"), protocol, _bool(item.get("active")),
            )
            recorder.add(item.get("tenant", default_tenant), "carrier", item["carrier_tag"])
        for item in document.get("pricelists", []):
            await connection.execute(
                "INSERT INTO pricelists (tenant, pricelist_tag, name, currency) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (tenant, pricelist_tag) DO UPDATE SET name = excluded.name, currency = excluded.currency",
                item.get("tenant", default_tenant), item["pricelist_tag"], item.get("name"), item.get("currency"),
            )
        rates = document.get("rates", [])
        if rates:
            try:
                rows = [(*rate_row(r, default_tenant, None, None), n) for n, r in enumerate(rates)]
            except ValueError as exc:
                raise ImportError_(f"rates: {exc}") from None
            await import_rates(connection, rows, recorder=recorder)
        for item in document.get("accounts", []):
            tenant = item.get("tenant", default_tenant)
            try:
                lists = [_str_list(item.get(name), name) for name in _ACCOUNT_LISTS]
                account_type = (item.get("type") or "PREPAID").upper()
                if account_type not in ("PREPAID", "POSTPAID"):
                    raise ValueError("type must be PREPAID or POSTPAID")
                credit = item.get("credit_limit")
                values = [
                    item.get("name"), account_type, item.get("customer_tag"), item.get("notification_email"),
                    item.get("notification_mobile"), _bool(item.get("active")),
                    None if credit is None else _int(credit, "credit_limit"),
                    *(None if item.get(n) is None else _int(item.get(n), n) for n in _ACCOUNT_VALUES[7:]),
                ]
                balance = item.get("balance")
                if balance is not None and (isinstance(balance, bool) or not isinstance(balance, int)):
                    raise ValueError("balance must be an integer")
            except ValueError as exc:
                raise ImportError_(f"account {item.get('account_tag')!r}: {exc}") from None
            columns = ("tenant", "account_tag", *_ACCOUNT_VALUES, *_ACCOUNT_LISTS, "balance")
            placeholders = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
            updates = ", ".join(f"{c} = excluded.{c}" for c in (*_ACCOUNT_VALUES, *_ACCOUNT_LISTS))
            created = await connection.fetchval(
                f"INSERT INTO accounts ({', '.join(columns)}) VALUES ({placeholders})"
                f" ON CONFLICT (tenant, account_tag) DO UPDATE SET {updates} RETURNING xmax = 0",
                tenant, item["account_tag"], *values, *lists, balance or 0,
            )
            if balance is not None and (created or set_balances):
                balances.append((tenant, item["account_tag"], balance))
            recorder.add(tenant, "account", item["account_tag"])
        await recorder.write(connection)
    return {
        "carriers": len(document.get("carriers", [])),
        "pricelists": len(document.get("pricelists", [])),
        "rates": len(rates),
        "accounts": len(document.get("accounts", [])),
        "balances": balances,
        "rebuild": recorder.bulk,
    }


def open_text(path: str) -> io.TextIOBase:
    """A deck file (or `-` for standard input) read as text, line by line."""
    import sys

    if path == "-":
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")

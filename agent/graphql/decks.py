"""Bulk rate decks over HTTP: `POST /management/pricelists/{pricelist_tag}/rates`, a CSV body, streamed.

Query parameters: `carrier_tag` (for rows without one), `tenant` (default "default"), `replace` (true: the
deck becomes the whole tariff of its pricelist/carrier pairs). Every row belongs to the pricelist and
tenant of the URL. The body is parsed as it arrives and copied into PostgreSQL, merged in one transaction;
a deck changing few rates (importer.OVERLAY_LIMIT) is laid over the tenant's deck as rate changes, a larger
one has the tenant's deck built from the import's own rows while PostgreSQL merges them (in a thread of
this process, store/decks.ImportBuild) and activated once committed; the answer comes once every agent
rates with it, and each call is rated entirely on the old rates or on the new ones. Answers
`{"rows", "removed", "seconds"}`; a bad row answers 422 naming its line, and nothing is changed.
Needs the management token when one is configured.
"""

from __future__ import annotations

import codecs
import csv
import time
from collections import deque

import asyncpg
from aiohttp import web

from ..http.responses import detail, json_response
from ..keys import DATABASE, REDIS, SETTINGS
from ..store import decks
from ..store.importer import ImportError_, import_rates, rate_row
from .security import token_ok

routes = web.RouteTableDef()
_TRUE = {"1", "true", "yes", "on"}
_HELD_LINES = 1000  # a quoted field spanning more lines than this is a stray quote: stop waiting for its end


class _Lines:
    """An iterator csv.reader can keep reading from while more lines arrive."""

    def __init__(self) -> None:
        self.buffer: deque[str] = deque()

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if self.buffer:
            return self.buffer.popleft()
        raise StopIteration


async def deck_rows(stream, tenant: str, pricelist: str, carrier: str | None):
    """Rate rows (RATE_COLUMNS order + line number) parsed from a CSV byte stream as it arrives."""
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    lines = _Lines()
    reader = csv.reader(lines)
    header: list[str] | None = None
    pending = ""

    def rows():
        nonlocal header
        while lines.buffer:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise ImportError_(f"line {reader.line_num}: {exc}") from None
            if not fields:
                continue
            if header is None:
                header = [name.strip() for name in fields]
                if "prefix" not in header:
                    raise ImportError_("the deck needs a header line with at least a `prefix` column")
                continue
            raw = dict(zip(header, fields))
            raw["pricelist_tag"], raw["tenant"] = pricelist, tenant
            try:
                row = rate_row(raw, tenant, pricelist, carrier)
            except ValueError as exc:
                raise ImportError_(f"line {reader.line_num}: {exc}") from None
            yield (*row, reader.line_num)

    held: list[str] = []  # the lines of a record whose quoted field goes on past the last line received
    quotes = 0

    def release(parts: list[str]) -> None:
        """Hands complete records to the reader: a line ends one only if it closes every quote opened."""
        nonlocal quotes
        for part in parts:
            held.append(part + "\n")
            quotes += part.count('"')
            if quotes % 2 == 0 or len(held) >= _HELD_LINES:
                lines.buffer.extend(held)
                held.clear()
                quotes = 0

    async for chunk in stream.iter_chunked(1 << 16):
        parts = (pending + decoder.decode(chunk)).split("\n")
        pending = parts.pop()
        release(parts)
        for row in rows():
            yield row
    tail = pending + decoder.decode(b"", final=True)
    if tail.strip():
        held.append(tail + "\n")
    lines.buffer.extend(held)
    for row in rows():
        yield row
    if header is None:
        raise ImportError_("the deck is empty: a header line with at least a `prefix` column is needed")


@routes.post("/management/pricelists/{pricelist_tag}/rates")
async def upload_deck(request: web.Request) -> web.Response:
    if not token_ok(request, request.app[SETTINGS]):
        response = detail("Unauthorized: Authorization: Bearer <token> needed", 401)
        response.headers["WWW-Authenticate"] = 'Bearer realm="rating-agent"'
        return response
    tenant = request.query.get("tenant") or "default"
    carrier = request.query.get("carrier_tag") or None
    replace = request.query.get("replace", "").lower() in _TRUE
    pricelist = request.match_info["pricelist_tag"]
    started = time.perf_counter()
    try:
        async with request.app[DATABASE].acquire() as connection:
            # a deck changing many rates is built here while PostgreSQL merges it (store/decks.ImportBuild)
            result = await import_rates(connection, deck_rows(request.content, tenant, pricelist, carrier), replace,
                                        build=decks.ImportBuild(request.app[SETTINGS].decks))
    except ImportError_ as exc:
        return detail(str(exc), 422)
    except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
        return detail(f"deck refused: {exc}", 422)
    await decks.publish(request.app[SETTINGS], request.app[DATABASE], request.app[REDIS], result.tenants)
    return json_response({"rows": result.rows, "removed": result.replaced,
                          "seconds": round(time.perf_counter() - started, 3)})

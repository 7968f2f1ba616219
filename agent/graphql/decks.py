"""Bulk rate decks over HTTP: `POST /management/pricelists/{pricelist_tag}/rates`, a CSV body, streamed.

Query parameters: `carrier_tag` (for rows without one), `tenant` (default "default"), `replace` (true: the
deck becomes the whole tariff of its pricelist/carrier pairs). Every row belongs to the pricelist and
tenant of the URL. The body goes to COPY as it arrives, in batches of lines a regular expression proved need
no parsing (the others checked row by row, importer.CsvDeck), and is merged in one transaction;
a deck changing few rates (importer.OVERLAY_LIMIT) is laid over the tenant's deck as rate changes, a larger
one has the tenant's deck built from the import's own rows while PostgreSQL merges them (in a thread of
this process, store/decks.ImportBuild) and activated once committed; the answer comes once every agent
rates with it, and each call is rated entirely on the old rates or on the new ones. Answers
`{"rows", "removed", "seconds"}`; a bad row answers 422 naming its line, and nothing is changed.
Needs the management token when one is configured.
"""

from __future__ import annotations

import codecs
import time
from collections import deque

import asyncpg
from aiohttp import web

from ..http.responses import detail, json_response
from ..keys import DATABASE, REDIS, SETTINGS
from ..store import decks
from ..store.importer import CsvDeck, ImportError_, import_rates
from .security import token_ok

routes = web.RouteTableDef()
_TRUE = {"1", "true", "yes", "on"}
_HELD_LINES = 1000  # a quoted field spanning more lines than this is a stray quote: stop waiting for its end


class _Lines:
    """The lines received so far: csv.reader (through CsvDeck) reads on from here as more arrive."""

    def __init__(self) -> None:
        self.buffer: deque[str] = deque()

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if self.buffer:
            return self.buffer.popleft()
        raise StopIteration


class StreamDeck(CsvDeck):
    """A CSV deck read from a request body as it arrives: importer.CsvDeck over the lines received so far,
    so the body goes to COPY in batches of lines a regular expression proved need no parsing (the other
    lines through rate_row, with their line numbers). Every row belongs to the pricelist and tenant of
    the URL: columns of the deck naming them are ignored. Call `open` first (it reads the header line)."""

    def __init__(self, stream, tenant: str, pricelist: str, carrier: str | None, size: int | None = None) -> None:
        self.stream = stream
        self.received = _Lines()
        super().__init__(self.received, tenant, pricelist, carrier, fixed=("tenant", "pricelist_tag"), size=size)
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self.pending = ""  # a line not ended yet
        self.held: list[str] = []  # the lines of a record whose quoted field goes on past the last line received
        self.quotes = 0
        self.chunks_in = stream.iter_chunked(1 << 16).__aiter__()
        self.ended = False

    def _release(self, parts: list[str]) -> None:
        """Hands complete records to the reader: a line ends one only if it closes every quote opened."""
        for part in parts:
            self.held.append(part + "\n")
            self.quotes += part.count('"')
            if self.quotes % 2 == 0 or len(self.held) >= _HELD_LINES:
                self.received.buffer.extend(self.held)
                self.held.clear()
                self.quotes = 0

    async def _more(self) -> bool:
        """Reads the next piece of the body into the lines received; False once it has ended."""
        if self.ended:
            return False
        try:
            chunk = await self.chunks_in.__anext__()
        except StopAsyncIteration:
            self.ended = True
            tail = self.pending + self._decode(b"", final=True)
            if tail.strip():
                self.held.append(tail + "\n")
            self.received.buffer.extend(self.held)
            self.held.clear()
            return False
        text = self.pending + self._decode(chunk)
        parts = text.split("\n")
        self.pending = parts.pop()
        if not self.held and '"' not in text:  # no quoted field open or opened: every line is a record
            self.received.buffer.extend([part + "\n" for part in parts])
        else:
            self._release(parts)
        return True

    def _decode(self, data: bytes, final: bool = False) -> str:
        try:
            return self.decoder.decode(data, final)
        except UnicodeDecodeError as exc:
            raise ImportError_(f"the deck is not UTF-8 text ({exc.reason} at byte {exc.start} of a piece)") from None

    async def open(self) -> None:
        """Reads the body until its header line is in (ImportError_ if it ends first)."""
        while not any(line.strip() for line in self.received.buffer) and await self._more():
            pass
        if not any(line.strip() for line in self.received.buffer):
            raise ImportError_("the deck is empty: a header line with at least a `prefix` column is needed")
        # the header is read by import_rates, which knows the pricelists' money scales (the lines' patterns)

    async def source(self):
        self._read()
        while True:
            for piece in self.available():
                yield piece
                if self.sink is not None:  # the import's deck build keeps up (importer.CsvDeck.sink)
                    await self.sink.pace()
            if not await self._more():
                break
        for piece in self.available():
            yield piece


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
            deck = StreamDeck(request.content, tenant, pricelist, carrier, request.content_length)
            await deck.open()
            result = await import_rates(connection, deck, replace, build=decks.ImportBuild(request.app[SETTINGS].decks))
    except ImportError_ as exc:
        return detail(str(exc), 422)
    except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
        return detail(f"deck refused: {exc}", 422)
    await decks.publish(request.app[SETTINGS], request.app[DATABASE], request.app[REDIS], result.tenants)
    return json_response({"rows": result.rows, "removed": result.replaced,
                          "seconds": round(time.perf_counter() - started, 3)})

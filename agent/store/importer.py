"""Loading catalog data from files: a JSON catalog (carriers, pricelists, rates, accounts) and CSV rate decks.

Rate decks are streamed row by row into PostgreSQL with COPY and merged in one transaction, so a deck of
millions of rows loads without being held in memory and running agents switch to it all at once (they
switch when the deck built from it is activated, see store/decks.py). A large deck of one pricelist is
copied into a fresh table, indexed and swapped in as the pricelist's partition of pricelist_rates
(`_Swap`, migration 012) instead of being inserted row by row into the indexed table. Balances given in a
catalog are set through Redis, like every balance change, so the ledger records them.
"""

from __future__ import annotations

import asyncio
import contextvars
import csv
import dataclasses
import io
import itertools
import logging
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable, Iterator

import asyncpg

from ..http.validation import as_datetime
from ..pricing.destination import source_prefix_of
from ..pricing.rate import (LONGEST_CALL, MAX_SCALE, MAX_SOURCE_PREFIX, MONEY_LIMIT, ROUNDINGS, Rate, limit_error,
                            window_of, zone_of)
from . import changes

if TYPE_CHECKING:
    from ..pricing.deck import CsvRows
    from .decks import ImportBuild

log = logging.getLogger(__name__)

RATE_COLUMNS = (
    "tenant", "pricelist_tag", "carrier_tag", "prefix", "connect_fee", "rate", "rate_increment",
    "interval_start", "description", "datetime_start", "datetime_end", "active",
    "initial_increment", "minimum_duration", "maximum_cost", "source_prefix", "weekdays", "time_start", "time_end",
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


_LIMITS = {"connect_fee": 2**63 - 1, "rate": 2**63 - 1, "rate_increment": 2**31 - 1, "interval_start": 2**31 - 1,
           "initial_increment": LONGEST_CALL, "minimum_duration": LONGEST_CALL, "maximum_cost": MONEY_LIMIT - 1}


def _bounded(value: Any, name: str, default: int | None) -> int | None:
    if default is None and (value is None or value == ""):
        return None
    number = _int(value, name, default)
    if number > _LIMITS[name]:
        raise ValueError(f"{name} must be at most {_LIMITS[name]}")
    return number


# Below these a rate's amounts stay under 2**53 for any call up to LONGEST_CALL (rate.limit_error): connect
# fee + a block of fewer than 10**7 s + 10**7 increments, each at most 10**8 - 1. The COPY fast path (_FIELD)
# takes only such values; larger ones are checked by rate_row with the kernel's rule.
_SAFE_PRICE, _SAFE_BLOCK = 10**8, 10**7


# The money scale of each pricelist (tenant, pricelist_tag) that has one (decimal prices), as the import
# running in this context read it in its transaction (import_rates sets it): rate_row turns the prices of
# such a pricelist's rows into integers of its scale, whoever calls it while the import streams its rows.
_SCALES: contextvars.ContextVar[dict[tuple[str, str], int]] = contextvars.ContextVar("import_scales", default={})
_DECIMAL = re.compile(r"([0-9]*)(?:\.([0-9]*))?")
_PRICES = ("connect_fee", "rate", "maximum_cost")  # the columns written in the pricelist's scale


def scaled_price(value: Any, name: str, scale: int, default: int | None) -> int | None:
    """A price written with up to `scale` decimals (text, or an integer) as an integer of 10**-scale units:
    `0.0085` at scale 4 is 85, `2` is 20000. Read from the text, never through a float."""
    if value is None or value == "":
        return default
    if isinstance(value, bool) or isinstance(value, float):
        raise ValueError(f"{name} must be an integer or a decimal written as text, got {value!r}")
    if isinstance(value, int):
        whole, decimals = value, ""
        if whole < 0:
            raise ValueError(f"{name} must not be negative")
    else:
        text = str(value).strip()
        found = _DECIMAL.fullmatch(text) if text.isascii() else None
        if found is None or not (found[1] or found[2]):
            raise ValueError(f"{name} must be a decimal number, got {value!r}")
        whole, decimals = int(found[1] or "0"), found[2] or ""
        if len(decimals) > scale:
            raise ValueError(f"{name} has more than {scale} decimals (the pricelist's scale), got {value!r}")
    number = whole * 10**scale + int(decimals.ljust(scale, "0") or "0")
    if number >= MONEY_LIMIT:
        raise ValueError(f"{name} must be below 2**53 in units of 10**-{scale}")
    return number


def pricelist_terms(item: dict[str, Any]) -> tuple[int | None, str | None]:
    """(scale, rounding) of a pricelist as given (None: not given); ValueError when out of range."""
    scale, rounding = item.get("scale"), item.get("rounding")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, int) or not 0 <= scale <= MAX_SCALE):
        raise ValueError(f"scale must be an integer from 0 to {MAX_SCALE}")
    if rounding is not None and rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {', '.join(ROUNDINGS)}")
    return scale, rounding


async def read_scales(connection: asyncpg.Connection) -> dict[tuple[str, str], int]:
    """The pricelists with a money scale (few; the others are integer money)."""
    return {(r["tenant"], r["pricelist_tag"]): r["scale"]
            for r in await connection.fetch("SELECT tenant, pricelist_tag, scale FROM pricelists WHERE scale > 0")}


def scheme_error(connect_fee: int, rate: int, increment: int, interval: int, initial: int | None,
                 minimum: int, maximum: int | None, scale: int = 0) -> tuple[str, str] | None:
    """(column, message) when a rate's billing scheme cannot be priced (checked values, see rate_row)."""
    if initial is not None:
        if initial == 0:
            return "initial_increment", "initial_increment must be positive"
        if initial % (increment or 1):
            return "initial_increment", f"initial_increment ({initial}) must be a multiple of rate_increment ({increment})"
    if connect_fee < _SAFE_PRICE and rate < _SAFE_PRICE and (initial is None or initial < _SAFE_BLOCK) \
            and (maximum is None or maximum < MONEY_LIMIT):
        return None
    return limit_error(Rate("", "", None, "", connect_fee, rate, increment, interval, initial_increment=initial,
                            minimum_duration=minimum, maximum_cost=maximum, scale=scale))


def check_scheme(values: dict[str, Any], scale: int = 0) -> None:
    """rate_row's checks of the pricing columns of one rate given as a mapping (GraphQL; prices already in
    units of the pricelist's `scale`): ValueError."""
    numbers = [_bounded(values.get(name), name, default) for name, default in (
        ("connect_fee", 0), ("rate", 0), ("rate_increment", 1), ("interval_start", 0), ("initial_increment", None),
        ("minimum_duration", 0), ("maximum_cost", None))]
    found = scheme_error(*numbers, scale)
    if found is not None:
        raise ValueError(found[1])


def rate_row(raw: dict[str, Any], tenant: str, pricelist: str | None, carrier: str | None,
             scales: dict[tuple[str, str], int] | None = None) -> tuple:
    """One validated pricelist-rate row in RATE_COLUMNS order.

    Runs for every row of a deck given as rows: plain ASCII digits (the usual form) are read without the
    general checks of _int; below 10**18 and 10**9 they fit bigint and integer columns. The prices of a
    pricelist with a money scale (`scales`, by default those of the running import: _SCALES) are read as
    decimals of that scale (`scaled_price`).
    """
    get = raw.get
    prefix = get("prefix")
    prefix = prefix.strip() if prefix else ""
    if not prefix:
        raise ValueError("prefix is required")
    pricelist_tag = get("pricelist_tag") or pricelist
    carrier_tag = get("carrier_tag") or carrier
    if not pricelist_tag:
        raise ValueError("pricelist_tag is required (column or --pricelist)")
    if not carrier_tag:
        raise ValueError("carrier_tag is required (column or --carrier)")
    row_tenant = get("tenant") or tenant
    description = get("description") or None
    if "\x00" in f"{row_tenant}{pricelist_tag}{carrier_tag}{prefix}{description}":
        name = next(n for n, v in (("tenant", row_tenant), ("pricelist_tag", pricelist_tag),
                                   ("carrier_tag", carrier_tag), ("prefix", prefix), ("description", description))
                    if "\x00" in str(v))
        raise ValueError(f"{name} must not contain NUL characters")
    fee, rate, increment, interval = get("connect_fee"), get("rate"), get("rate_increment"), get("interval_start")
    scales = _SCALES.get() if scales is None else scales
    scale = scales.get((row_tenant, pricelist_tag), 0) if scales else 0
    if scale:
        fee, rate = scaled_price(fee, "connect_fee", scale, 0), scaled_price(rate, "rate", scale, 0)
    fee = int(fee) if fee.__class__ is str and len(fee) < 19 and fee.isdigit() and fee.isascii() \
        else fee if scale else _bounded(fee, "connect_fee", 0)
    rate = int(rate) if rate.__class__ is str and len(rate) < 19 and rate.isdigit() and rate.isascii() \
        else rate if scale else _bounded(rate, "rate", 0)
    increment = int(increment) if increment.__class__ is str and len(increment) < 10 and increment.isdigit() \
        and increment.isascii() else _bounded(increment, "rate_increment", 1)
    interval = int(interval) if interval.__class__ is str and len(interval) < 10 and interval.isdigit() \
        and interval.isascii() else _bounded(interval, "interval_start", 0)
    active = get("active")
    initial, minimum, maximum = get("initial_increment"), get("minimum_duration"), get("maximum_cost")
    initial = _bounded(initial, "initial_increment", None)
    minimum = 0 if minimum is None or minimum == "" else _bounded(minimum, "minimum_duration", 0)
    maximum = scaled_price(maximum, "maximum_cost", scale, None) if scale else _bounded(maximum, "maximum_cost", None)
    found = scheme_error(fee, rate, increment, interval, initial, minimum, maximum, scale)
    if found is not None:
        raise ValueError(found[1])
    origin = get("source_prefix")
    origin = origin if origin.__class__ is str and origin.isdigit() and origin.isascii() \
        and len(origin) <= MAX_SOURCE_PREFIX else source_prefix(origin)
    days, start, end = get("weekdays"), get("time_start"), get("time_end")
    window = (0, 0, 86400) if not (days or start or end) else rate_window(days, start, end)
    return (
        row_tenant, pricelist_tag, carrier_tag, prefix, fee, rate, increment, interval, description,
        _moment(get("datetime_start")), _moment(get("datetime_end")),
        True if active is None or active == "" else _bool(active), initial, minimum, maximum, origin, *window,
    )


def rate_window(days: Any, start: Any, end: Any) -> tuple[int, int, int]:
    """A rate's time window as stored (rate.window_of), from text as a deck writes it (`mon-fri`, `08:00`,
    `18:00`); ValueError naming the column."""
    for name, value in (("weekdays", days), ("time_start", start), ("time_end", end)):
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{name} must be text such as mon-fri or 08:00, got {value!r}")
    return window_of(days, start, end)


def source_prefix(value: Any) -> str:
    """A rate's source prefix as stored (destination.source_prefix_of): "" for none; ValueError."""
    if value is not None and not isinstance(value, str):
        raise ValueError(f"source_prefix must be text, got {value!r}")
    return source_prefix_of(value, MAX_SOURCE_PREFIX)


# A CSV line that needs no Python: every field of the header's columns in a form PostgreSQL reads exactly
# as rate_row would (digits, a plain boolean, text without quotes, commas or NUL, a prefix without
# surrounding space) and that rate_row would accept (amounts below the bounds of _SAFE_PRICE). Such lines go
# to COPY as they are; any other line is parsed and checked by rate_row.
_FREE = r'[^,"\r\n\x00]*'
_FIELD = {
    "tenant": _FREE, "description": _FREE,
    "prefix": r'[^\s,"\x00]+',
    "connect_fee": "[0-9]{0,8}", "rate": "[0-9]{0,8}",  # below _SAFE_PRICE
    "rate_increment": "[0-9]{0,9}", "interval_start": "[0-9]{0,9}",  # below 2**31
    "active": "(?i:true|false|yes|no|[tf01])?",
    "datetime_start": "", "datetime_end": "",  # empty only: a moment is parsed by as_datetime
    "initial_increment": "",  # empty in a batch; see _INITIAL for a line
    "minimum_duration": "[0-9]{0,7}",  # below LONGEST_CALL
    "maximum_cost": "[0-9]{0,15}",  # below 2**53
    "source_prefix": f"[0-9]{{0,{MAX_SOURCE_PREFIX}}}",  # digits: normalized already
    "weekdays": "", "time_start": "", "time_end": "",  # empty only: a window is read by rate_row
}
# A line's first increment is taken as it is when it is one increment (written as rate_increment is) or the
# rate is per second (rate_increment empty, 0 or 1): a multiple either way. Other values go through rate_row.
# Checked line by line only: in a pattern repeated over a batch, a group keeps its capture of an earlier line.
_INCREMENT_NAMED = "(?P<inc>(?P<unit>0*1?)|[0-9]{0,9})"
_INCREMENT_STRICT = "(?P<inc>(?P<unit>(?=[0-9])0*1?)|[0-9]{1,9})"  # strict_nulls: not empty
_INITIAL = "(?(unit)(?:[1-9][0-9]{0,6})?|(?:(?P=inc))?)"
_INITIAL_ANY = "(?:[1-9][0-9]{0,6})?"  # without a rate_increment column the increment is 1
_BATCH = 1024  # lines per COPY message on the fast path
# Copied into a table of pricelist_rates' columns (_Swap), an empty field is NULL, which its NOT NULL
# columns refuse: there a line goes to COPY as it is only with a value in each of them (strict_nulls).
_STRICT = {
    "tenant": r'[^,"\r\n\x00]+', "connect_fee": "[0-9]{1,8}", "rate": "[0-9]{1,8}",
    "rate_increment": "[0-9]{1,9}", "interval_start": "[0-9]{1,9}", "active": "(?i:true|false|yes|no|[tf01])",
    "minimum_duration": "[0-9]{1,7}", "source_prefix": f"[0-9]{{0,{MAX_SOURCE_PREFIX}}}",  # COPY FORCE_NOT_NULL
    "weekdays": "(?!)", "time_start": "(?!)", "time_end": "(?!)",  # a window is read by rate_row, empty or not
}


class _Feed:
    """The deck's lines, counted; lines handed back go out again first (the csv reader reads from here)."""

    __slots__ = ("source", "back", "count")

    def __init__(self, lines: Iterable[str]) -> None:
        self.source = iter(lines)
        self.back: list[str] = []
        self.count = 0

    def __iter__(self):
        return self

    def __next__(self) -> str:
        line = self.back.pop() if self.back else next(self.source)
        self.count += 1
        return line


def _csv_value(value: Any) -> str:
    """A value for COPY ... CSV: quoted text, an unquoted empty field for NULL."""
    if value is None:
        return ""
    if value is True:
        return "t"
    if value is False:
        return "f"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return '"' + value.replace('"', '""') + '"'


def _literal(value: str) -> str:
    if "\\" in value:
        return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
    return "'" + value.replace("'", "''") + "'"


class CsvDeck:
    """A CSV rate deck read line by line: iterating yields checked rows (RATE_COLUMNS + line number), and
    import_rates copies it to PostgreSQL as CSV, passing most lines on unparsed (see _FIELD).

    Semantics are those of csv.DictReader + rate_row: the header names the columns (unknown ones are
    ignored, the last of a repeated name counts), a short row's missing fields are empty, extra fields are
    ignored, blank lines skipped; a bad row raises ImportError_ with its line number.
    """

    def __init__(self, lines: Iterable[str], tenant: str, pricelist: str | None, carrier: str | None,
                 progress: Callable[[int], None] | None = None, fixed: Iterable[str] = (),
                 size: int | None = None) -> None:
        self.tenant, self.pricelist, self.carrier = tenant, pricelist, carrier
        self.size = size
        self.progress = progress
        # columns the flags give every row, whatever the deck says: a line goes to COPY as it is only if it
        # says the same (the flag's value), others are written out by rate_row with the flag's value
        self.fixed = {name: {"tenant": tenant, "pricelist_tag": pricelist}[name] for name in fixed}
        self.feed = _Feed(lines)
        self.reader = csv.reader(self.feed)
        self.header: list[str] | None = None
        self.used = False
        self.strict = False  # see strict_nulls
        self.sink: CsvRows | None = None  # the import's deck build, fed the rows as they go to COPY
        self.copied = 0  # rows handed to COPY so far

    def _start(self) -> None:
        """Reads the header line (once)."""
        if self.header is not None:
            return
        try:
            header = next(self.reader, None)
        except csv.Error as exc:
            raise ImportError_(f"line {self.feed.count}: {exc}") from None
        if not header or "prefix" not in header:
            raise ImportError_("the deck needs a header line with at least a `prefix` column")
        self.header = header
        last = {name: i for i, name in enumerate(header)}
        self.last = last
        self.positions = [(name, i) for name, i in last.items() if name in RATE_COLUMNS and name not in self.fixed]
        index = {name: k for k, name in enumerate(RATE_COLUMNS)}
        # for each field of a line: the RATE_COLUMNS index it fills, or -1 (ignored)
        self.layout = [index[name] if name in index and last.get(name) == i else -1 for i, name in enumerate(header)]
        self.columns = [RATE_COLUMNS[k] if k >= 0 else f"ignored_{i}" for i, k in enumerate(self.layout)]
        self._compile()

    def first_pricelist(self) -> tuple[str | None, bool]:
        """(the pricelist of the deck's first row, whether every row has it), read before COPY (the line goes
        out again first): the flag's for all when the rows cannot name their own; else the first row's, a
        guess at the one most of them belong to (None when it cannot be read)."""
        self._start()
        position = self.last.get("pricelist_tag")
        if position is None or "pricelist_tag" in self.fixed:
            return self.pricelist, True
        if self.used:
            return None, False
        try:
            line = next(self.feed)
        except StopIteration:
            return None, False
        self.feed.back.append(line)
        self.feed.count -= 1
        try:
            fields = next(csv.reader([line]), [])
        except csv.Error:  # a quoted field with a line break: no guess
            return None, False
        return (fields[position] if position < len(fields) else "") or self.pricelist, False

    def direct(self) -> bool:
        """Whether the deck can be copied into a table of pricelist_rates' columns as it is (strict_nulls):
        no column of the header ignored, and not known to be too small to be swapped in (a temporary
        table takes COPY faster: no WAL)."""
        self._start()
        return all(k >= 0 for k in self.layout) and (self.size is None or self.size >= SWAP_MIN * _ROW_BYTES)

    def strict_nulls(self) -> None:
        """Lines go to COPY as they are only with a value in every column that has a default (an empty
        field is NULL to COPY, which a table of pricelist_rates' columns refuses): other lines are
        written out by rate_row, with its defaults. Call before reading any row."""
        self.strict = True
        self._compile()

    def _compile(self) -> None:
        """The patterns of lines and batches that go to COPY as they are (see _FIELD)."""
        last = self.last
        fields = [_FREE if k < 0 else _FIELD.get(RATE_COLUMNS[k]) for k in self.layout]
        if self.strict:
            fields = [_STRICT.get(RATE_COLUMNS[k], field) if k >= 0 else field for k, field in zip(self.layout, fields)]
        if self._scaled(last):  # a price goes to COPY as written only in integer money: others via rate_row
            never = "(?!)" if self.strict else ""  # strict: an empty price is NULL, so none goes as it is
            fields = [never if k >= 0 and RATE_COLUMNS[k] in _PRICES else field
                      for k, field in zip(self.layout, fields)]
        for column, flag in (("pricelist_tag", self.pricelist), ("carrier_tag", self.carrier)):
            if column in last:
                fields[last[column]] = _FREE if flag and not self.strict else r'[^,"\r\n\x00]+'
            elif not flag:
                fields = None  # every row lacks it: each is refused by rate_row, with its line number
                break
        for column, value in self.fixed.items():
            if fields is not None and column in last:
                fields[last[column]] = re.escape(value)
        if fields is None:
            self.line = self.lines = None
        else:
            batch = ",".join(fields) + r"\n"
            self.lines = re.compile(f"(?:{batch})*").fullmatch
            if "initial_increment" in last:
                position = last["initial_increment"]
                if "rate_increment" not in last:
                    fields[position] = _INITIAL_ANY
                elif last["rate_increment"] < position:
                    fields[last["rate_increment"]] = _INCREMENT_STRICT if self.strict else _INCREMENT_NAMED
                    fields[position] = _INITIAL
            self.line = re.compile(",".join(fields) + r"\n").fullmatch

    def _scaled(self, last: dict[str, int]) -> bool:
        """Whether a line of the deck may belong to a pricelist with a money scale (of the running import)."""
        scales = _SCALES.get()
        if not scales:
            return False
        if "tenant" in last:
            return True
        if "pricelist_tag" in last or not self.pricelist:
            return any(tenant == self.tenant for tenant, _ in scales)
        return (self.tenant, self.pricelist) in scales

    def _row(self, fields: list[str]) -> tuple:
        width = len(fields)
        raw = {name: fields[i] for name, i in self.positions if i < width}
        try:
            return rate_row(raw, self.tenant, self.pricelist, self.carrier)
        except ValueError as exc:
            raise ImportError_(f"line {self.feed.count}: {exc}") from None

    def _record(self) -> list[str] | None:
        try:
            return next(self.reader)
        except StopIteration:
            return None
        except csv.Error as exc:
            raise ImportError_(f"line {self.feed.count}: {exc}") from None

    def _progress(self, before: int) -> None:
        if self.progress is not None and self.feed.count // 10_000 != before // 10_000:
            self.progress(self.feed.count)

    def _read(self) -> None:
        if self.used:
            raise RuntimeError("a CsvDeck is read once")
        self.used = True
        self._start()

    def __iter__(self) -> Iterator[tuple]:
        self._read()
        while (fields := self._record()) is not None:
            if not fields:
                continue
            row = self._row(fields)
            yield (*row, self.feed.count)
            if self.progress is not None and self.feed.count % 10_000 == 0:
                self.progress(self.feed.count)

    def copy_columns(self) -> list[str]:
        """Reads the header (ImportError_ if it has no `prefix`); the columns of the CSV that chunks() yields."""
        self._start()
        return self.columns

    def chunks(self) -> Iterator[bytes]:
        """The deck as CSV for COPY (header-line columns, no header line), in pieces of whole lines."""
        self._read()
        return self.available()

    def available(self) -> Iterator[bytes]:
        """chunks() of the lines the source holds now (it may hold more later: graphql/decks.py)."""
        feed, line_ok, lines_ok = self.feed, self.line, self.lines
        while True:
            before = feed.count
            if feed.back:
                batch = feed.back[::-1]
                feed.back.clear()
            else:
                batch = list(islice(feed.source, _BATCH))
                if not batch:
                    return
            feed.count += len(batch)
            text = "".join(batch)
            if "\r" in text:
                text = text.replace("\r\n", "\n")
            if lines_ok is not None and lines_ok(text):
                data = text.encode()
                if self.sink is not None:
                    self.sink.lines(data, self.copied + 1, len(batch))
                self.copied += len(batch)
                yield data
                self._progress(before)
                continue
            # line by line: the lines the pattern takes as they are, the others through csv and rate_row
            feed.count = before
            feed.back = batch[::-1]
            out = []
            while feed.back:
                line = next(feed)
                plain = line if line.endswith("\n") else line + "\n"
                if plain.endswith("\r\n"):
                    plain = plain[:-2] + "\n"
                if line_ok is not None and line_ok(plain):
                    out.append(plain)
                    self.copied += 1
                    if self.sink is not None:
                        self.sink.lines(plain.encode(), self.copied, 1)
                    continue
                feed.back.append(line)
                feed.count -= 1
                fields = self._record()  # may read on past the batch: a quoted field with line breaks
                if fields is None:
                    break
                if not fields:
                    continue
                row = self._row(fields)
                out.append(",".join("" if k < 0 else _csv_value(row[k]) for k in self.layout) + "\n")
                self.copied += 1
                if self.sink is not None:
                    self.sink.row(self.copied, row)
            if out:
                yield "".join(out).encode()
            self._progress(before)

    async def source(self):
        for chunk in self.chunks():
            yield chunk
            if self.sink is not None:
                await self.sink.pace()

    def row_decoder(self) -> Callable[[dict[str, str]], tuple]:
        """For CsvRows.resolve (in a thread: the scales of the running import are taken now): the row
        (RATE_COLUMNS) that some fields of a plain line stand for, as COPY stores them. The fields a plain line
        holds are checked one by one (_FIELD), so any of them read apart, the others left to their defaults,
        gives what it gives in its line; a missing tag is a placeholder (a plain line names its own)."""
        scales = _SCALES.get()
        tags = {"pricelist_tag": self.pricelist or "-", "carrier_tag": self.carrier or "-"}

        def decode(fields: dict[str, str]) -> tuple:
            raw = {**tags, **{name: value for name, value in fields.items() if name not in self.fixed}}
            raw["prefix"] = "0"
            return rate_row(raw, self.tenant, self.pricelist, self.carrier, scales)
        return decode


def csv_rates(
    lines: Iterable[str], tenant: str, pricelist: str | None, carrier: str | None,
    progress: Callable[[int], None] | None = None, size: int | None = None,
) -> CsvDeck:
    """Rows of a CSV deck with a header line; each yielded row carries its line number last.

    import_rates takes the deck itself faster than its rows (CsvDeck.chunks). `size`: the deck's bytes, if
    known (a small deck is staged in a temporary table: CsvDeck.direct).
    """
    return CsvDeck(lines, tenant, pricelist, carrier, progress, size=size)


@dataclass
class DeckResult:
    rows: int
    replaced: int
    tenants: set[str]  # whose decks must be built again (from PostgreSQL: not built by the import itself)
    overlaid: int = 0  # rates changed few enough to be laid over the current deck (rate changes)
    seq: int = 0  # the import's last change in the change log (0: none, or logged by the caller's recorder)
    built: list = dataclasses.field(default_factory=list)  # decks built and activated by the import (DeckInfo)
    swapped: bool = False  # the deck went in as its pricelist's partition (_Swap), not row by row


@dataclasses.dataclass(frozen=True)
class _Table:
    """Rows of a deck already in PostgreSQL, in a table of pricelist_rates' columns (a deck's other
    pricelists, written in place by _import_rates), read in the order they were copied in."""

    name: str


# An import that changes at most this many rates is recorded as rate changes, which every agent lays over
# its deck by reading just those rates (work in proportion to the change); a larger one builds a new deck.
OVERLAY_LIMIT = 1_000


# A rate is one per (tenant, pricelist, prefix, carrier, source prefix, time window) (migrations 009, 011). A
# rate change still names [pricelist, carrier, prefix] (store/changes.py): whoever applies it re-reads the
# rates of every origin and window under that name (store/catalog._overlay), so that coarser name is enough.
_KEY = ("tenant", "pricelist_tag", "prefix", "carrier_tag", "source_prefix", "weekdays", "time_start", "time_end")
_IDENTITY = "tenant, pricelist_tag, carrier_tag, prefix"  # what a rate change names (store/changes.py)
_VALUES = tuple(c for c in RATE_COLUMNS[4:] if c not in _KEY)
# Sorting the deck by prefix first: PostgreSQL's abbreviated keys work on the first sort column (tenant
# and pricelist are mostly one value); "C" compares bytes. Either order groups equal keys alike.
_ORDER = ('prefix COLLATE "C", carrier_tag COLLATE "C", pricelist_tag COLLATE "C", tenant COLLATE "C",'
          ' source_prefix COLLATE "C", weekdays, time_start, time_end')
_WORK_MEM = "512MB"  # the deck's sort and the merge's hash join in memory up to about two million rows


def _id_prefix() -> str:
    """The first 20 hex digits of the ids this import gives new rates (the last 12: a row number).

    Time-ordered (UUID version 7: milliseconds, then random bits), so the primary key index takes an
    import's rows in one place instead of two million random ones.
    """
    millis = time.time_ns() // 1_000_000
    bits = secrets.randbits(26) | 1  # the fourth group's last digit not 0: see _ids
    return f"{millis >> 16:08x}-{millis & 0xFFFF:04x}-7{bits >> 14:03x}-{0x8000 | (bits & 0x3FFF):04x}-"


_ID_CACHE = 100_000  # numbers a COPY's id default takes from its sequence at once: a quarter less of its cost


def _ids(id_prefix: str, sequence: str) -> str:
    """The default of the id column for the import's rows: `id_prefix` then the row number as 12 hex
    digits. Written as the prefix's last digit (not 0) times 2**48 plus the number, whose hex is that digit
    and the number's 12 digits, so no lpad (COPY evaluates it per row; uuid_in takes hyphens or none)."""
    digit = int(id_prefix[-2], 16)
    return f"('{id_prefix[:-2]}' || to_hex(nextval('{sequence}') + {digit << 48}))::uuid"


async def import_rates(
    connection: asyncpg.Connection, rows: Iterable[tuple] | CsvDeck, replace: bool = False,
    recorder: changes.Recorder | None = None, build: ImportBuild | None = None,
) -> DeckResult:
    """Streams rows into a temporary table and merges them in one transaction (last duplicate wins).

    With `replace`, rates of the deck's pricelist/carrier pairs that the deck does not list are deleted
    in the same transaction: the deck becomes the whole tariff for them. Rates the deck does not change
    are not written; changed ones are updated in place (they keep their ids); new ones are inserted in
    one sorted INSERT.

    A CSV deck of one pricelist of at least SWAP_MIN rates, most of the pricelist's, goes in as the
    pricelist's partition (`_Swap`): its rates get new ids, the stored ones it keeps keep theirs.

    With `build` (store/decks.ImportBuild), no `recorder` (the import logs its own changes) and no
    transaction of the caller around it (the import commits), an import changing more than OVERLAY_LIMIT
    rates builds its tenants' decks from its own transaction while PostgreSQL writes the rates, and
    activates them once committed (`DeckResult.built`); the tenants left in `DeckResult.tenants` need a
    build from PostgreSQL.
    """
    deck = rows if isinstance(rows, CsvDeck) else None
    # only an import that commits here: a deck activated inside a caller's transaction could outlive it
    build = build if recorder is None and not connection.is_in_transaction() else None
    try:
        async with connection.transaction():
            await connection.execute(f"SET LOCAL work_mem = '{_WORK_MEM}'")
            if build is not None:
                await build.prepare(connection)  # before anything reads the stored rates
            # rows already made (a list) were read with the scales of their maker: checked below, not re-read
            used = _SCALES.get() if isinstance(rows, (list, tuple)) else await read_scales(connection)
            token = _SCALES.set(used)
            try:
                result = await _import_rates(connection, rows, deck, replace, recorder, used, build)
            finally:
                _SCALES.reset(token)
    except BaseException:
        if build is not None:
            await build.discard()
        raise
    if build is not None and result.seq:
        built = await build.activate(connection, result.seq)
        result.tenants -= {info.tenant for info in built}
        result.built = built
    return result


async def _import_rates(connection: asyncpg.Connection, rows, deck: CsvDeck | None, replace: bool,
                        recorder: changes.Recorder | None, used: dict[tuple[str, str], int],
                        build: ImportBuild | None) -> DeckResult:
    """import_rates in its transaction, the rows read with the pricelists' scales `used`."""
    ignored = [c for c in deck.copy_columns() if c not in RATE_COLUMNS] if deck is not None else []
    # A CSV deck that needs no column of its own goes into a table of pricelist_rates' columns, which a
    # large deck of one pricelist becomes as it is (_Swap); any other goes into a temporary table.
    direct = deck is not None and deck.direct()
    id_prefix = _id_prefix()
    stream = guess = checked = None
    began = time.perf_counter()
    if direct:
        # one such import at a time, taken before it reads any rate: two swaps would wait for each other
        await connection.execute("SELECT pg_advisory_xact_lock($1)", _SWAP_LOCK)
        deck.strict_nulls()
        staged = f"rate_fresh_{await connection.fetchval('SELECT txid_current()')}"
        sequence = f"{staged}_ids"
        await connection.execute(f"CREATE SEQUENCE {sequence} CACHE {_ID_CACHE}")
        ids = _ids(id_prefix, sequence)
        # A deck whose rows name their pricelists is copied into a table partitioned by pricelist: its first
        # row's pricelist (most decks are mostly one) in `staged`, any other in `{staged}_rest`, so the
        # pricelist that may be swapped in is apart from the others without a scan of the whole deck.
        checked, alone = deck.first_pricelist()
        guess = None if alone else checked
        target = staged if guess is None else f"{staged}_all"
        room = f" WITH (fillfactor = {RATE_FILLFACTOR})"  # for updates in place (RATE_FILLFACTOR)
        await connection.execute(
            f"CREATE TABLE {target} (LIKE pricelist_rates INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
            + (room if guess is None else " PARTITION BY LIST (pricelist_tag)"))
        flags = [f"ALTER id SET DEFAULT {ids}", f"ALTER tenant SET DEFAULT {_literal(deck.tenant)}"]
        flags += [f"ALTER {column} SET DEFAULT {_literal(flag)}" for column, flag in (
            ("pricelist_tag", deck.pricelist), ("carrier_tag", deck.carrier)) if flag]
        await connection.execute(f"ALTER TABLE {target} {', '.join(flags)}")
        if guess is not None:
            await connection.execute(
                f"CREATE TABLE {staged} PARTITION OF {target} FOR VALUES IN ({_literal(guess)}){room}")
            await connection.execute(f"CREATE TABLE {staged}_rest PARTITION OF {target} DEFAULT{room}")
        if checked is not None:  # the constraint of its partition checked as the rows go in, not by a scan (_Swap)
            await connection.execute(
                f"ALTER TABLE {staged} ADD CONSTRAINT {staged}_partition CHECK (pricelist_tag = {_literal(checked)})")
        if build is not None:  # the deck built from the rows as they go to COPY (decks.ImportBuild.start_stream)
            from ..pricing.deck import CsvRows

            stream = deck.sink = CsvRows(deck.copy_columns(), RATE_COLUMNS)
        try:
            status = await connection.copy_to_table(
                target, source=deck.source(), columns=deck.copy_columns(), format="csv",
                force_not_null=[c for c in deck.copy_columns() if c == "source_prefix"] or None)
        finally:
            if stream is not None and not await stream.finish():
                log.info("the deck's rows could not be parsed as they went to COPY (%s): built from the table",
                         stream.broken)
                stream = None
    else:
        staged, sequence = "rate_deck", "rate_deck_ids"
        ids = _ids(id_prefix, sequence)
        await connection.execute(
            "CREATE TEMPORARY TABLE rate_deck (tenant text, pricelist_tag text, carrier_tag text COLLATE \"C\","
            " prefix text COLLATE \"C\","
            " connect_fee bigint, rate bigint, rate_increment integer, interval_start integer, description text,"
            " datetime_start timestamptz, datetime_end timestamptz, active boolean, initial_increment integer,"
            " minimum_duration integer, maximum_cost bigint, source_prefix text, weekdays smallint,"
            " time_start integer, time_end integer, line bigint"
            + "".join(f", {c} text" for c in ignored) + ") ON COMMIT DROP"
        )
        await connection.execute(f"CREATE TEMPORARY SEQUENCE rate_deck_ids CACHE {_ID_CACHE} OWNED BY rate_deck.line")
        if deck is not None:
            status = await connection.copy_to_table(
                "rate_deck", source=deck.source(), columns=deck.copy_columns(), format="csv")
        elif isinstance(rows, _Table):  # in the order they were copied in (the last duplicate wins)
            names = ", ".join(RATE_COLUMNS)
            status = await connection.execute(
                f"INSERT INTO rate_deck ({names}, line) SELECT {names}, 0 FROM {rows.name} ORDER BY ctid")
        else:
            status = await connection.copy_records_to_table("rate_deck", records=rows,
                                                            columns=[*RATE_COLUMNS, "line"])
    count = int(status.split()[-1])
    log.info("%d rows of the deck copied into %s in %.1fs", count, staged, time.perf_counter() - began)
    others = None  # with the deck's rows of other pricelists than `guess` apart in `{staged}_rest`: how many
    if direct and guess is not None:
        await connection.execute(f"ALTER TABLE {target} DETACH PARTITION {staged}")
        others = await connection.fetchval(f"SELECT count(*) FROM {staged}_rest")
        main = count - others
        if others and not (main >= others and main >= SWAP_MIN and main > OVERLAY_LIMIT):
            # the first row's pricelist may not be the largest, or none is swapped in: one table (the order
            # of the rows of one key, all in one partition, is kept)
            await connection.execute(f"ALTER TABLE {staged} DROP CONSTRAINT {staged}_partition")
            await connection.execute(f"INSERT INTO {staged} SELECT * FROM {staged}_rest ORDER BY ctid")
            others = checked = None
        if not others:
            await connection.execute(f"DROP TABLE {target}")
    if stream is not None and deck.copied != count:
        stream = None
    if stream is not None and count >= SWAP_MIN and count > OVERLAY_LIMIT:
        # what the rows stand for read in a thread meanwhile (the deck's build starts from it, _Swap)
        stream.start_prepare(deck.row_decoder())
    if build is not None:
        build.say(f"{count:,} rows staged in PostgreSQL; merging")
    if count == 0:
        await connection.execute(f"DROP TABLE {staged}")
        await connection.execute(f"DROP SEQUENCE IF EXISTS {sequence}")
        return DeckResult(0, 0, set())
    own = recorder is None
    recorder = changes.Recorder() if own else recorder
    rest = DeckResult(0, 0, set())
    merging = time.perf_counter()
    split = None  # the one pricelist left in the table when the deck's others were written in place
    if direct and count >= SWAP_MIN and count > OVERLAY_LIMIT:
        if others:
            sizes = [(guess, count - others), (None, others)]  # the others' pricelists: at most `others` each
        elif others == 0:
            sizes = [(guess, count)]
        else:
            sizes = await connection.fetch(f"SELECT pricelist_tag, count(*) FROM {staged} GROUP BY 1 ORDER BY 2 DESC")
        if stream is not None and sizes[0][1] >= SWAP_MIN and ("tenant" not in deck.copy_columns()
                                                                or "tenant" in deck.fixed):
            # the deck's rows of the pricelist it may swap in, resolved while PostgreSQL goes on (_Swap)
            await build.resolve_early(connection, deck.tenant, stream, sizes[0][0], deck.row_decoder())
        if len(sizes) > 1 and sizes[0][1] >= SWAP_MIN and sizes[0][1] > OVERLAY_LIMIT:
            # the largest pricelist may be swapped in (_Swap); the deck's others are written in place first,
            # in this transaction, in the order given (the last duplicate wins)
            names = ", ".join(RATE_COLUMNS)
            if others:
                taken = _Table(f"{staged}_rest")
            else:
                found = await connection.fetch(  # one scan: taken out and read at once, put in order here
                    f"DELETE FROM {staged} WHERE pricelist_tag <> $1 RETURNING ctid, {names}", sizes[0][0])
                taken = [(*row[1:], 0) for row in sorted(found, key=lambda row: row[0])]
                del found
            split = sizes[0][0]
            rest = await _import_rates(connection, taken, None, replace, recorder, used, None)
            if others:
                await connection.execute(f"DROP TABLE {target}")
            count -= rest.rows
            log.info("%d rows of other pricelists written in place in %.1fs (%s)", rest.rows,
                     time.perf_counter() - merging, "copied apart" if others else "taken out of the deck's table")
    # What a CSV deck left empty (NULL here) takes the flags and the defaults of rate_row.
    tenant = _literal(deck.tenant) if deck is not None else "NULL"
    pricelist = _literal(deck.pricelist) if deck is not None and deck.pricelist else "NULL"
    carrier = _literal(deck.carrier) if deck is not None and deck.carrier else "NULL"
    given = (
        f"coalesce(tenant, {tenant}) AS tenant, coalesce(pricelist_tag, {pricelist}) AS pricelist_tag,"
        f" coalesce(carrier_tag, {carrier}) AS carrier_tag, prefix, coalesce(connect_fee, 0) AS connect_fee,"
        " coalesce(rate, 0) AS rate, coalesce(rate_increment, 1) AS rate_increment,"
        " coalesce(interval_start, 0) AS interval_start, description, datetime_start, datetime_end,"
        " coalesce(active, true) AS active, initial_increment, coalesce(minimum_duration, 0) AS minimum_duration,"
        " maximum_cost, coalesce(source_prefix, '') AS source_prefix, coalesce(weekdays, 0) AS weekdays,"
        " coalesce(time_start, 0) AS time_start, coalesce(time_end, 86400) AS time_end, ctid AS place"
    )
    # The deck as it merges: one row per key, the last one given. The table was created and filled by
    # one COPY in this transaction: its rows lie in the order of the deck (ctid).
    merged = (f"(SELECT DISTINCT ON ({_ORDER}) * FROM (SELECT {given} FROM {staged}) given"
              f" ORDER BY {_ORDER}, place DESC)")
    known = None
    if stream is not None:  # the rows as they went to COPY know their pairs: no scan of the table for them
        try:
            known = await asyncio.to_thread(stream.pairs, split)
        except Exception as exc:  # noqa: BLE001 - the build reads the table instead (see _Swap)
            log.info("the deck's rows could not be read as they went to COPY (%s): its pairs read from the table",
                     exc)
    # its columns' collations those of pricelist_rates (migration 016) whichever way it is filled: the
    # statements that read it are prepared once for every import
    await connection.execute("CREATE TEMPORARY TABLE rate_deck_pairs (tenant text, pricelist_tag text,"
                             ' carrier_tag text COLLATE "C") ON COMMIT DROP')
    if known is not None:
        pair_columns = [list(values) for values in zip(*known)] if known else [[], [], []]
        await connection.execute(
            "INSERT INTO rate_deck_pairs SELECT * FROM unnest($1::text[], $2::text[], $3::text[])", *pair_columns)
    else:
        await connection.execute(
            f"INSERT INTO rate_deck_pairs SELECT DISTINCT coalesce(tenant, {tenant}), coalesce(pricelist_tag,"
            f" {pricelist}), coalesce(carrier_tag, {carrier}) FROM (SELECT DISTINCT tenant, pricelist_tag,"
            f" carrier_tag FROM {staged}) raw"
        )
    # The references, checked once per pair and locked as a foreign key locks them: deleting or renaming
    # them waits for this transaction (the insert trigger of migration 004 is told not to do it again).
    for table, tag in (("carriers", "carrier_tag"), ("pricelists", "pricelist_tag")):
        await connection.execute(
            f"SELECT 1 FROM {table} t WHERE (t.tenant, t.{tag}) IN (SELECT tenant, {tag} FROM rate_deck_pairs)"
            " FOR KEY SHARE OF t")
    missing = await connection.fetchrow(
        "SELECT d.pricelist_tag, d.carrier_tag, d.tenant,"
        " p.pricelist_tag IS NULL AS no_pricelist, c.carrier_tag IS NULL AS no_carrier"
        " FROM rate_deck_pairs d"
        " LEFT JOIN pricelists p USING (tenant, pricelist_tag)"
        " LEFT JOIN carriers c ON c.tenant = d.tenant AND c.carrier_tag = d.carrier_tag"
        " WHERE p.pricelist_tag IS NULL OR c.carrier_tag IS NULL LIMIT 1"
    )
    if missing is not None:
        what = (f"Price list with tag = {missing['pricelist_tag']}" if missing["no_pricelist"]
                else f"Carrier with tag = {missing['carrier_tag']}")
        raise ImportError_(f"{what} not found in tenant {missing['tenant']}!")
    # The scales the prices were read with are those of the pricelists now locked (a writer changes the
    # scale of a pricelist with rates only under FOR UPDATE, which waits for this transaction).
    for row in await connection.fetch(
            "SELECT tenant, pricelist_tag, scale FROM pricelists JOIN rate_deck_pairs USING (tenant, pricelist_tag)"):
        if row["scale"] != used.get((row["tenant"], row["pricelist_tag"]), 0):
            raise ImportError_(f"Price list with tag = {row['pricelist_tag']} has scale {row['scale']} in tenant"
                               f" {row['tenant']}: its prices were read with scale "
                               f"{used.get((row['tenant'], row['pricelist_tag']), 0)}, import again!")
    if direct:
        log.info("the deck's pairs (%s) and references checked %.1fs after its COPY",
                 "as the rows went to COPY" if known is not None else "read from the table",
                 time.perf_counter() - merging)
    columns = ", ".join(RATE_COLUMNS)
    tenants = {row["tenant"] for row in await connection.fetch("SELECT DISTINCT tenant FROM rate_deck_pairs")}
    swap = None
    if direct and count >= SWAP_MIN and count > OVERLAY_LIMIT:
        tags = [row[0] for row in await connection.fetch("SELECT DISTINCT pricelist_tag FROM rate_deck_pairs")]
        # a fresh table costs a copy of the pricelist's other rates: worth it when the deck is most of it
        if len(tags) == 1 and count * 2 >= await connection.fetchval(
                "SELECT count(*) FROM pricelist_rates WHERE pricelist_tag = $1", tags[0]):
            swap = _Swap(staged, tags[0], replace, build, sorted(tenants),
                         None if stream is None else (stream, deck.row_decoder(), id_prefix), checked)

    async def stage(exclude: bool) -> None:
        """The decks of the deck's tenants built as the import leaves their rates: the stored ones it does not
        replace or delete (`exclude`: rate_deck_changes of _merge names some), and its own (those of
        rate_deck_changes, or without stored rates in its pairs the whole deck as it merges)."""
        kept = "" if not exclude else " AND NOT EXISTS (SELECT 1 FROM rate_deck_changes c WHERE c.stored = r.id)"
        own = "rate_deck_changes WHERE prefix IS NOT NULL" if exclude else f"{merged} deck"
        rates = f"(SELECT {columns} FROM pricelist_rates r WHERE true{kept} UNION ALL SELECT {columns} FROM {own})"
        for tenant in sorted(tenants):
            await build.start(connection, tenant, rates)

    replaced = 0
    swapped = False
    for attempt in range(3):
        try:
            # a savepoint: a rate another writer adds meanwhile (unique violation) makes the merge run again
            async with connection.transaction():
                await connection.execute("SET LOCAL rating.rate_references = 'checked'")
                # A few rows are merged as if their pairs had rates: a merge without any costs as little
                # as an insert, and the probe costs a scan of the pricelist when the pairs' rates lie late
                # in it (a carrier's small deck swapped again and again in a large pricelist)
                stored = count <= OVERLAY_LIMIT or await connection.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM pricelist_rates r JOIN rate_deck_pairs p"
                    " USING (tenant, pricelist_tag, carrier_tag))")
                if not stored and swap is not None and await swap.run(connection):
                    touched, swapped = None, True
                elif not stored:
                    # the deck's pricelist/carrier pairs have no rates yet: one sorted insert
                    if build is not None:
                        # the deck sorted once more for the build: cheaper than writing it to a table and
                        # reading it twice (measured at 2,000,000 rates, loadtest/BENCHMARKS.md)
                        await stage(False)
                    await connection.execute(
                        f"INSERT INTO pricelist_rates (id, {columns}) SELECT {ids}, {columns} FROM {merged} deck")
                    touched = None  # more than OVERLAY_LIMIT rates: a new deck (see `stored`)
                else:
                    replaced, touched, swapped = await _merge(connection, staged, merged, ids, replace,
                                                              None if build is None else stage, swap)
                await connection.execute("SET LOCAL rating.rate_references = ''")
            break
        except asyncpg.UniqueViolationError:
            if attempt == 2:
                raise
    await connection.execute(f"DROP TABLE IF EXISTS {staged}")  # swapped in: renamed (and rate_deck_ids owned)
    await connection.execute(f"DROP SEQUENCE IF EXISTS {sequence}")
    await connection.execute("DROP TABLE rate_deck_pairs")
    await connection.execute("DROP TABLE IF EXISTS rate_deck_changes")
    if touched is None:
        for tenant in tenants:
            recorder.add(tenant, "bulk")
    else:
        for tenant, pricelist, carrier, prefix in touched:
            recorder.add(tenant, "rate", [pricelist, carrier, prefix])
        tenants = set()
    seq = 0
    if own:
        logged = {tenant: recorder.rows_of(tenant) for tenant in tenants}  # the import's own, for `check`
        seq = await recorder.write(connection)
        if build is not None and touched is None:
            await build.check(connection, logged)
    return DeckResult(count + rest.rows, replaced + rest.replaced, tenants | rest.tenants,
                      (0 if touched is None else len(touched)) + rest.overlaid, seq, swapped=swapped)


async def _merge(connection: asyncpg.Connection, staged: str, merged: str, ids: str, replace: bool,
                 stage: Callable[[bool], Awaitable[None]] | None,
                 swap: _Swap | None) -> tuple[int, list[asyncpg.Record] | None, bool]:
    """Merges the deck into pairs that have rates. Returns how many rates `replace` deleted, the
    identities (_IDENTITY) of every rate added, changed or deleted, if there are at most OVERLAY_LIMIT,
    and whether the pricelist's table was swapped (`swap`, when more changed). If more changed and no swap
    is made, `stage` (if given) starts the decks' builds before the rates are written."""
    await connection.execute(f"ANALYZE {staged}")  # sizes for the join (a nested loop over millions is minutes)
    columns = ", ".join(RATE_COLUMNS)
    on = " AND ".join(f"r.{c} = deck.{c}" for c in _KEY)
    differs = (f"({', '.join(f'r.{c}' for c in _VALUES)}) IS DISTINCT FROM"
               f" ({', '.join(f'deck.{c}' for c in _VALUES)})")
    # One join of the deck with the stored rates of its pairs: the new, changed (and, with `replace`, gone)
    # rates; unchanged ones are left as they are.
    await connection.execute(
        "CREATE TEMPORARY TABLE rate_deck_changes ON COMMIT DROP AS SELECT deck.*, r.id AS stored"
        f" FROM {merged} deck {'FULL' if replace else 'LEFT'} JOIN (SELECT r.* FROM pricelist_rates r"
        " WHERE (tenant, pricelist_tag, carrier_tag) IN (SELECT tenant, pricelist_tag, carrier_tag"
        f" FROM rate_deck_pairs)) r ON {on} WHERE r.id IS NULL OR deck.prefix IS NULL OR {differs}"
    )
    await connection.execute("ANALYZE rate_deck_changes")
    few = await connection.fetchval("SELECT count(*) FROM rate_deck_changes") <= OVERLAY_LIMIT
    touched = await connection.fetch(f"SELECT {_IDENTITY} FROM rate_deck_changes WHERE prefix IS NOT NULL") \
        if few else None
    if not few and swap is not None and await swap.run(connection):
        gone = await connection.fetchval("SELECT count(*) FROM rate_deck_changes WHERE prefix IS NULL") \
            if replace else 0
        return gone, None, True
    if not few and stage is not None:
        await stage(True)
    replaced = 0
    if replace:
        delete = "DELETE FROM pricelist_rates r USING rate_deck_changes c WHERE c.prefix IS NULL AND r.id = c.stored"
        if few:
            gone = await connection.fetch(f"{delete} RETURNING {', '.join(f'r.{c}' for c in _IDENTITY.split(', '))}")
            touched += gone
            replaced = len(gone)
        else:
            replaced = int((await connection.execute(delete)).split()[-1])
    await connection.execute(
        f"UPDATE pricelist_rates r SET {', '.join(f'{c} = c.{c}' for c in _VALUES)} FROM rate_deck_changes c"
        " WHERE c.stored IS NOT NULL AND c.prefix IS NOT NULL AND r.id = c.stored"
    )
    await connection.execute(
        f"INSERT INTO pricelist_rates (id, {columns}) SELECT {ids}, {columns} FROM rate_deck_changes"
        f" WHERE stored IS NULL ORDER BY {_ORDER}"
    )
    return replaced, touched, False


# The share of each page of a pricelist's partition filled by a swap (_Swap) or a COPY (percent, migration
# 015): the rest takes the new versions of its rates when a merge changes them, on the same page, without
# touching the indexes (a HOT update: no indexed column changes), for a larger heap; measured in
# loadtest/BENCHMARKS.md (session 12, helper "replace").
RATE_FILLFACTOR = 50


# A deck of one pricelist of at least this many rates, most of the pricelist's, is loaded into a table of
# its own and swapped in for the pricelist's partition (_Swap): below it, writing into the indexed table
# costs about as much and keeps the ids and rows of unchanged rates.
SWAP_MIN = 50_000
_ROW_BYTES = 20  # fewer bytes a line than any deck line we know of (the generated deck: some 60)
_SWAP_LOCK = 0x5241_5453  # "RATS": one import that may swap at a time (see _import_rates)
_SWAP_WAIT = 0.05  # seconds a swap waits for its lock before it lets the readers queued behind it in again


class _Raced(Exception):
    """Another writer changed the pricelist's rates after the swap copied the ones it keeps."""


class _Swap:
    """A deck loaded by COPY into `staged` (a table of pricelist_rates' columns, no index yet) made the
    partition of its pricelist `tag`: the stored rates it keeps are copied in (with `replace`, those of
    other pricelist/carrier pairs; without, those the deck does not name), the table indexed (one sort per
    index, the duplicates of the deck dropped, the last one kept), then, in one short step under an
    ACCESS EXCLUSIVE lock, the old partition detached and dropped (or the pricelist's rates deleted from
    the default partition) and the table attached in its place. The deck's rates get new ids.

    Not MVCC-safe, so readers that need one snapshot across statements lock first (changes.lock_rates).
    A rate written by another writer after the copy (logged in the change log meanwhile, seen under the
    lock, when no writer can be under way) would be lost: then nothing is swapped (`run` is False, the
    caller's savepoint undoes the copy) and the import writes into the indexed table instead.
    """

    def __init__(self, staged: str, tag: str, replace: bool, build: ImportBuild | None, tenants: list[str],
                 stream: tuple | None = None, checked: str | None = None) -> None:
        self.staged, self.tag, self.replace, self.build, self.tenants = staged, tag, replace, build, tenants
        self.checked = checked  # the pricelist a constraint of the table already names (_import_rates)
        self.start = None if build is None else build.start
        # (CsvRows, its decoder, the ids' prefix): the deck's rows as they went to COPY, for a build of one
        # tenant that does not read the table back (decks.ImportBuild.start_stream)
        self.stream = stream if build is not None and len(tenants) == 1 else None

    async def run(self, connection: asyncpg.Connection) -> bool:
        try:
            async with connection.transaction():
                await self._run(connection)
            return True
        except _Raced:
            log.info("pricelist %r changed by another writer during the import: written in place", self.tag)
            return False

    async def _stage(self, connection: asyncpg.Connection) -> None:
        if self.start is None:
            return
        columns = ", ".join(RATE_COLUMNS)
        rates = (f"(SELECT {columns} FROM {self.staged} UNION ALL SELECT {columns} FROM pricelist_rates"
                 f" WHERE pricelist_tag <> {_literal(self.tag)})")
        for tenant in self.tenants:
            await self.start(connection, tenant, rates)

    async def _run(self, connection: asyncpg.Connection) -> None:
        staged, tag = self.staged, self.tag
        columns = "id, " + ", ".join(RATE_COLUMNS)
        moments = [time.perf_counter()]
        floor = await changes.last_seq(connection)  # before the copy: a change logged after it may be missed
        if self.replace:
            keep = "(tenant, carrier_tag) NOT IN (SELECT tenant, carrier_tag FROM rate_deck_pairs)"
        else:
            keep = f"NOT EXISTS (SELECT 1 FROM {staged} deck WHERE {' AND '.join(f'r.{c} = deck.{c}' for c in _KEY)})"
        replaced = None
        if self.stream is not None:
            # the build takes the deck's rows from the stream and reads only the stored rates the import
            # keeps (before they are copied into the table, which `keep` compares with)
            rows, decode, id_prefix = self.stream
            stored = (f"(SELECT {', '.join(RATE_COLUMNS)} FROM pricelist_rates r"
                      f" WHERE pricelist_tag <> {_literal(tag)} OR pricelist_tag = {_literal(tag)} AND {keep})")
            replaced = await self.build.start_stream(connection, self.tenants[0], rows, tag, stored, decode)
        kept = await connection.execute(
            f"INSERT INTO {staged} ({columns}) SELECT {columns} FROM pricelist_rates r"
            f" WHERE pricelist_tag = $1 AND {keep}", tag)
        if self.checked != tag:
            if self.checked is not None:
                await connection.execute(f"ALTER TABLE {staged} DROP CONSTRAINT {staged}_partition")
            await connection.execute(f"ALTER TABLE {staged} ADD CONSTRAINT {staged}_partition"
                                     f" CHECK (pricelist_tag = {_literal(tag)})")  # spares ATTACH its scan
        moments.append(time.perf_counter())
        if replaced is not None:
            try:
                later = await replaced
            except Exception as exc:  # noqa: BLE001 - built from the table instead
                log.warning("deck of tenant %r: the build from the deck's rows failed (%s)", self.tenants[0], exc,
                            exc_info=exc)
                replaced = None
            else:
                if len(later):  # the deck names a rate twice: the last one counts
                    await connection.execute(
                        f"DELETE FROM {staged} s USING unnest($1::uuid[]) d(id) WHERE s.id = d.id",
                        [f"{id_prefix}{number:012x}" for number in later.tolist()])
        if replaced is None:
            await self._stage(connection)  # the build reads the table while PostgreSQL indexes it
        moments.append(time.perf_counter())
        await connection.execute(f"SET LOCAL maintenance_work_mem = '{_INDEX_MEMORY}'")
        await connection.execute("SET LOCAL max_parallel_maintenance_workers = 0")
        identity = (f"ALTER TABLE {staged} ADD CONSTRAINT {staged}_identity_key UNIQUE"
                    " (prefix, carrier_tag, pricelist_tag, tenant, source_prefix, weekdays, time_start, time_end)")
        try:
            async with connection.transaction():
                await connection.execute(identity)
        except asyncpg.UniqueViolationError:  # the deck names a rate twice: the last one counts
            await connection.execute(
                f"DELETE FROM {staged} WHERE ctid IN (SELECT ctid FROM (SELECT ctid, row_number() OVER"
                f" (PARTITION BY {', '.join(_KEY)} ORDER BY ctid DESC) AS n FROM {staged}) d WHERE n > 1)")
            await connection.execute(identity)
            await self._stage(connection)  # built again without the duplicates
        await connection.execute(f"ALTER TABLE {staged} ADD CONSTRAINT {staged}_pkey PRIMARY KEY (id, pricelist_tag)")
        await connection.execute(f"ANALYZE {staged}")  # its statistics, for the next merge's join
        await connection.execute(  # the parent's defaults, as a partition of its own would have them
            f"ALTER TABLE {staged} ALTER id SET DEFAULT gen_random_uuid(), ALTER tenant SET DEFAULT 'default',"
            " ALTER pricelist_tag DROP DEFAULT, ALTER carrier_tag DROP DEFAULT")
        partition = await connection.fetchval("SELECT pricelist_rates_partition($1)", tag)
        attached = await connection.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'pricelist_rates'::regclass AND c.relname = $1)", partition)
        if not attached:  # the pricelist's rates were in the default partition: they are in the table now
            await connection.execute("DELETE FROM pricelist_rates_default WHERE pricelist_tag = $1", tag)
        moments.append(time.perf_counter())
        await self._exclusive(connection)
        moments.append(time.perf_counter())
        raced = await connection.fetchval(
            "SELECT EXISTS (SELECT 1 FROM catalog_changes WHERE seq > $1 AND (kind = 'bulk' OR kind = 'rate'"
            " AND EXISTS (SELECT 1 FROM jsonb_array_elements(subject) e WHERE e->>0 = $2)))", floor, tag)
        if raced:
            raise _Raced
        if attached:
            await connection.execute(f"ALTER TABLE pricelist_rates DETACH PARTITION {partition}")
            await connection.execute(f"DROP TABLE {partition}")
        await connection.execute(f"ALTER TABLE {staged} RENAME TO {partition}")
        await connection.execute(
            f"ALTER TABLE pricelist_rates ATTACH PARTITION {partition} FOR VALUES IN ({_literal(tag)})")
        moments.append(time.perf_counter())
        copied, read, indexed, waited, swapped = (b - a for a, b in zip(moments, moments[1:]))
        log.info("pricelist %r swapped in as its partition: %s stored rates kept in %.1fs, %s %.1fs,"
                 " indexed in %.1fs, the lock waited for %.2fs, swapped in %.3fs", tag, kept.split()[-1], copied,
                 "the build's read" if replaced is None else "the deck's duplicates found and deleted", read,
                 indexed, waited, swapped)

    async def _exclusive(self, connection: asyncpg.Connection) -> None:
        """pricelist_rates locked ACCESS EXCLUSIVE (itself, not its partitions): every reader and writer
        under way done, none starting. Waiting in the lock's queue holds every newcomer back, readers too,
        so each try waits a moment only and lets them through between tries."""
        previous = await connection.fetchval("SELECT current_setting('lock_timeout')")
        await connection.execute(f"SET LOCAL lock_timeout = '{int(_SWAP_WAIT * 1000)}ms'")
        try:
            for attempt in itertools.count():
                try:
                    async with connection.transaction():
                        await connection.execute("LOCK TABLE ONLY pricelist_rates IN ACCESS EXCLUSIVE MODE")
                    return
                except asyncpg.LockNotAvailableError:
                    await asyncio.sleep(min(0.5, _SWAP_WAIT * (1 + attempt)))
        finally:
            await connection.execute("SELECT set_config('lock_timeout', $1, true)", previous)


_INDEX_MEMORY = "1GB"  # an index of a swapped deck sorted in memory (2,000,000 rates: some 300 MB)


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


async def set_terms(connection: asyncpg.Connection, recorder: changes.Recorder, tenant: str, tag: str,
                    scale: int | None, rounding: str | None) -> None:
    """Checks a change of a stored pricelist's scale or rounding (None: unchanged), before it is written.

    The scale gives its rates' stored integers their meaning: it changes only while the pricelist has no
    rates. A new rounding prices its rates anew: the tenant's deck is built again (a bulk change). The row
    is locked FOR UPDATE, which waits for an import reading the pricelist (FOR KEY SHARE) to finish.
    """
    stored = await connection.fetchrow(
        "SELECT scale, rounding FROM pricelists WHERE tenant = $1 AND pricelist_tag = $2 FOR UPDATE", tenant, tag)
    if stored is None:
        return
    changed_scale = scale is not None and scale != stored["scale"]
    changed_rounding = rounding is not None and rounding != stored["rounding"]
    if not (changed_scale or changed_rounding):
        return
    has_rates = await connection.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pricelist_rates WHERE tenant = $1 AND pricelist_tag = $2)", tenant, tag)
    if not has_rates:
        return
    if changed_scale:
        raise ValueError(f"scale cannot change while the pricelist has rates (it is {stored['scale']})")
    recorder.add(tenant, "bulk")


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
            tenant = item.get("tenant", default_tenant)
            try:
                scale, rounding = pricelist_terms(item)
                await set_terms(connection, recorder, tenant, item["pricelist_tag"], scale, rounding)
                zone = None if item.get("timezone") is None else zone_of(str(item["timezone"]))  # time windows
            except ValueError as exc:
                raise ImportError_(f"pricelist {item.get('pricelist_tag')!r}: {exc}") from None
            if zone is not None and await connection.fetchval(
                    "SELECT timezone <> $3 FROM pricelists WHERE tenant = $1 AND pricelist_tag = $2",
                    tenant, item["pricelist_tag"], zone):
                recorder.add(tenant, "bulk")  # its rates' windows move: the deck is built again
            await connection.execute(
                "INSERT INTO pricelists (tenant, pricelist_tag, name, currency, scale, rounding, timezone)"
                " VALUES ($1, $2, $3, $4, coalesce($5, 0), coalesce($6, 'up'), coalesce($7, 'UTC'))"
                " ON CONFLICT (tenant, pricelist_tag) DO UPDATE SET name = excluded.name, currency = excluded.currency,"
                " scale = coalesce($5, pricelists.scale), rounding = coalesce($6, pricelists.rounding),"
                " timezone = coalesce($7, pricelists.timezone)",
                tenant, item["pricelist_tag"], item.get("name"), item.get("currency"), scale, rounding, zone,
            )
        rates = document.get("rates", [])
        if rates:
            scales = await read_scales(connection)  # with the pricelists just written
            try:
                rows = [(*rate_row(r, default_tenant, None, None, scales), n) for n, r in enumerate(rates)]
            except ValueError as exc:
                raise ImportError_(f"rates: {exc}") from None
            token = _SCALES.set(scales)
            try:
                await import_rates(connection, rows, recorder=recorder)
            finally:
                _SCALES.reset(token)
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

"""A tenant's rate deck as an immutable, compact artifact that every process of a host maps from one folder.

Built once per deck version (store/decks.py decides when), opened by each worker as `Deck(folder)`, which
maps the files: the operating system keeps one copy in its page cache however many processes read it.

* number keys sit in *slots* in sorted order (a key's rates in its slot); `columns.bin` indexes them
  (`_number_index`): per slot its parent (the slot of its longest prefix key) and, when every number key is
  at most 17 ASCII digits, its code (digits padded, then length: integers in the keys' order) with `first`,
  per bucket of codes' values, the first slot in it (Deck.longest_slot); decks with other number keys have
  their keys' lengths, `numbers.marisa` (marisa-trie) and each trie id's slot instead. `raw.marisa`: the
  raw (URI) keys' trie, whose ids, after the number keys, are their slots.
* `columns.bin`: column arrays. `offsets[slot]..offsets[slot+1]` are the slot's rates, best first (the
  kernel's `Rate.order_key`); per rate its source (pricelist and carrier), tariff, description and the
  form its prefix was written in (`+39` is key `39` written with head `+`); per distinct tariff, one row
  (`tariffs`, _TARIFF_COLUMNS: read in one unpack) of its connect fee, rate, increment, free increments,
  effective dates and billing scheme (first increment, minimum duration, maximum cost; -1 where a rate has
  none), its pricelist's money scale and rounding (decimal prices, rate.py), its source prefix (origin
  rating: `origin_code`), time window and time zone; per number slot its chain
  (`chain_offsets[slot]..chain_offsets[slot+1]` in `chain` and `chain_depth`, decks without dates only):
  the source of the first rate of each source along the key's prefixes, in offer order (`offer_codes`),
  and how many prefix levels above the key that rate is; what routing reads (decks without source
  prefixes: a caller's number then plays no part).
* `descriptions.marisa`: the distinct descriptions; `meta.json`: counts, section offsets, the sources and
  forms, the distinct source prefixes, and the change-log position the deck covers.

A deck is built from `Columns` (every rate as indexes into tables of distinct keys, sources, tariffs...),
with numpy over whole columns: `columns_of` makes them from `Rate` objects, `TextRows` from PostgreSQL's
COPY output without an object per row, which is what lets a deck of millions of rates build in seconds.

Routing finds the slot of the longest key a number starts with (one search of codes, no string made) and
reads the columns of it and of its parents (routing._route_columns), both in C (`_route.c`, over these
mapped columns; `Deck._walk` and routing._route_columns_python are the definitions in Python): the price's
`Rate` is the one object it makes (as `Deck.rate(..., routed=True)`), and the offers come from the longest
key's chain; the other lookups turn those slots into `Rate` objects, remembered per slot up to a bound.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import dataclasses
import itertools
import json
import math
import mmap
import operator
import os
import re
import shutil
import struct
from array import array
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from fractions import Fraction
from pathlib import Path
from typing import Iterable

import marisa_trie
import numpy as np

from .rate import DAY, MONEY_LIMIT, ROUNDINGS, Rate
from .table import NO_ORIGINS, Group, Lookups, Origins, key_of

try:
    from . import _route
except ImportError as error:  # no slow path in its place: a worker without it would miss the latency budget
    raise ImportError(f"agent.pricing._route (agent/pricing/_route.c) is not built: {error}; run "
                      "`pip install -e .` or `python setup.py build_ext --inplace` (make install does)") from error

FORMAT = 9  # 3: the billing scheme columns; 4: the pricelist's scale and rounding; 5: the source prefix;
# 6: the time window (weekdays, time_start, time_end as stored) and the pricelist's time zone (`zones`);
# 7: chains of sources in offer order with their depths, instead of offer codes in the order met;
# 8: number slots in key order, found by the number keys' codes (_number_index) instead of numbers.marisa;
# 9: no `length` column for coded decks (a code's low 5 bits), the rates' columns in their narrowest type,
# a bucket of codes per about eight keys
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_NO_MOMENT = -(2**63)
_MEMO_LIMIT = 100_000  # slots whose Rate objects a process keeps
# (name, array typecode): the column arrays in file order
_RATE_COLUMNS = ("source", "tariff", "description", "form")  # per rate, each in the narrowest of B, H, I
_TARIFF_COLUMNS = (("connect_fee", "q"), ("rate", "q"), ("rate_increment", "q"), ("interval_start", "q"),
                   ("start", "q"), ("end", "q"), ("initial_increment", "q"), ("minimum_duration", "q"),
                   ("maximum_cost", "q"), ("scale", "q"), ("rounding", "q"), ("source_prefix", "q"),
                   ("weekdays", "q"), ("time_start", "q"), ("time_end", "q"), ("timezone", "q"))
_NONE = -1  # initial_increment and maximum_cost not given
_ROUNDING_CODES = {name.encode(): code for code, name in enumerate(ROUNDINGS)}  # as COPY writes the column


def origin_code(source_prefix: str) -> int:
    """A source prefix (at most MAX_SOURCE_PREFIX digits) as a tariff column: its digits after a leading 1,
    which keeps its leading zeros; _NONE for none."""
    return int("1" + source_prefix) if source_prefix else _NONE


def origin_of(code: int) -> str:
    return "" if code == _NONE else str(code)[1:]


def micros(moment: datetime | None) -> int:
    if moment is None:
        return _NO_MOMENT
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _moment(micros: int) -> datetime | None:
    return None if micros == _NO_MOMENT else _EPOCH + timedelta(microseconds=micros)


@dataclass(frozen=True)
class DeckInfo:
    folder: Path
    tenant: str
    covers: int
    keys: int
    rates: int
    bytes: int


@dataclass
class Columns:
    """A tenant's rates column by column, each value an index into its table: what `build_columns` writes.

    A deck of millions of rates is built from these without a `Rate` object per row (store/decks.py reads
    them from PostgreSQL so). Every index column has one entry per rate, in the same order.
    """

    numbers: list[str]  # distinct number keys (any order)
    raw: list[str]  # distinct raw keys
    key: np.ndarray  # per rate: index into numbers, or len(numbers) + index into raw
    forms: list[tuple[str, bool]]  # (head, key follows): how a prefix was written; forms[0] is ("", True)
    form: np.ndarray
    sources: list[tuple[str, str | None]]  # (pricelist_tag, carrier_tag)
    source: np.ndarray
    tariffs: list[tuple[int, ...]]  # as _TARIFF_COLUMNS, moments in µs (`micros`), _NONE for None
    tariff: np.ndarray
    descriptions: list[str | None]
    description: np.ndarray
    zones: list[str] = dataclasses.field(default_factory=lambda: ["UTC"])  # a tariff's timezone: an index


def form_of(prefix: str, is_raw: bool, key: str) -> tuple[str, bool]:
    """How `prefix` is written around its key: `+39` is key `39` written with head `+`."""
    if prefix == key or is_raw:  # a raw key is the prefix as written
        return "", True
    if key and prefix.endswith(key):
        return prefix[:-len(key)], True
    return prefix, False  # separators inside the number: kept whole


def columns_of(rates: Iterable[Rate]) -> Columns:
    """The columns of `rates` (one tenant's), in their order."""
    keys: dict[tuple[bool, str], int] = {}
    forms: dict[tuple[str, bool], int] = {("", True): 0}
    sources: dict[tuple[str, str | None], int] = {}
    tariffs: dict[tuple, int] = {}
    texts: dict[str | None, int] = {}
    rows: list[tuple[int, int, int, int, int]] = []
    zones: dict[str, int] = {"UTC": 0}
    for rate in rates:
        is_raw, key = key_of(rate.prefix)
        rows.append((keys.setdefault((is_raw, key), len(keys)),
                     forms.setdefault(form_of(rate.prefix, is_raw, key), len(forms)),
                     sources.setdefault((rate.pricelist_tag, rate.carrier_tag), len(sources)),
                     tariffs.setdefault(tariff_of(rate, zones.setdefault(rate.timezone, len(zones))), len(tariffs)),
                     texts.setdefault(rate.description, len(texts))))
    numbers = [key for is_raw, key in keys if not is_raw]
    raw = [key for is_raw, key in keys if is_raw]
    renumbered = np.zeros(len(keys), dtype=np.int64)  # number keys first, then raw keys
    flags = np.array([is_raw for is_raw, _ in keys], dtype=bool)
    renumbered[~flags] = np.arange(len(numbers))
    renumbered[flags] = len(numbers) + np.arange(len(raw))
    table = np.array(rows, dtype=np.int64).reshape(-1, 5)
    return Columns(numbers, raw, renumbered[table[:, 0]], list(forms), table[:, 1], list(sources), table[:, 2],
                   list(tariffs), table[:, 3], list(texts), table[:, 4], list(zones))


def tariff_of(rate: Rate, zone: int = 0) -> tuple[int, ...]:
    """A rate's tariff as the deck stores it (_TARIFF_COLUMNS), its pricelist's time zone as `zone`, an
    index into the deck's zones."""
    return (rate.connect_fee, rate.rate, rate.rate_increment, rate.interval_start, micros(rate.datetime_start),
            micros(rate.datetime_end), _NONE if rate.initial_increment is None else rate.initial_increment,
            rate.minimum_duration, _NONE if rate.maximum_cost is None else rate.maximum_cost, rate.scale,
            ROUNDINGS.index(rate.rounding), origin_code(rate.source_prefix), rate.weekdays, rate.time_start or 0,
            DAY if rate.time_end is None else rate.time_end, zone)


_ESCAPE = re.compile(rb"\\(?:([0-7]{1,3})|x([0-9a-fA-F]{1,2})|(.))", re.S)
_ESCAPED = {b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\v"}


def copy_text(field: bytes) -> str | None:
    """One field of PostgreSQL's COPY text format as the text it stands for (None for `\\N`)."""
    if field == b"\\N":
        return None
    if b"\\" not in field:
        return field.decode()

    def unescape(match: re.Match) -> bytes:
        octal, hexadecimal, other = match.groups()
        if octal is not None:
            return bytes([int(octal, 8) & 0xFF])
        if hexadecimal is not None:
            return bytes([int(hexadecimal, 16)])
        return _ESCAPED.get(other, other)

    return _ESCAPE.sub(unescape, field).decode()


_DIGITS = 17  # plain prefixes up to this long are numbers in an int64 sort key (10**17 * 18 < 2**63)
_PLACES = np.array([10**(_DIGITS - 1 - n) for n in range(_DIGITS)], dtype=np.int64)  # of each digit, padded
_FIELD_WIDTH = 256  # longer fields are numbered one by one, not in the block's array
_MIX = np.random.default_rng(0x5241_5444).integers(1, 2**63, size=_FIELD_WIDTH // 8, dtype=np.uint64) | 1


def _windows(padded: np.ndarray, start: np.ndarray, length: np.ndarray, width: int) -> np.ndarray:
    """The fields at `start` (each `length` bytes, at most `width`) as rows of `width` bytes, zero-padded."""
    rows = np.lib.stride_tricks.sliding_window_view(padded, width)[start]
    rows[np.arange(width) >= length[:, None]] = 0
    return rows


class TextRows:
    """Columns of a deck from rows in PostgreSQL's COPY text format, fed in blocks as they arrive.

    Nothing here costs a Python object per row: a block is one byte array, its separators found at once;
    a prefix of digits only (nearly all of them) becomes an integer sort key, which is all its key needs,
    and the pricelist..datetime_end stretch of a row (its source and tariff, its pricelist's scale and
    rounding included) and its description are
    numbered by distinct value through a hash, every hash match checked byte for byte. Each distinct value
    is decoded once; the other prefixes go through `key_of` one by one.
    """

    COLUMNS = ("prefix", "pricelist_tag", "carrier_tag", "connect_fee", "rate", "rate_increment", "interval_start",
               "initial_increment", "minimum_duration", "maximum_cost", "scale", "rounding", "source_prefix",
               "datetime_start", "datetime_end", "weekdays", "time_start", "time_end", "timezone", "description")
    _STRETCH_END = 18  # the source-and-tariff stretch: fields 1..18; the description is the last field
    BLOCK = 16 << 20  # bytes parsed at a time

    def __init__(self) -> None:
        self._pending: list[bytes] = []
        self._size = 0
        self._rows = 0
        self._plain: list[np.ndarray] = []  # per block: which rows have a plain prefix
        self._sort_keys: list[np.ndarray] = []  # per block: the plain prefixes' sort keys
        self._others: list[tuple[int, bytes]] = []  # (row, prefix as COPY wrote it) of the other prefixes
        self._stretch_ids: list[np.ndarray] = []
        self._text_ids: list[np.ndarray] = []
        self._stretches: dict[bytes, int] = {}  # "pricelist\tcarrier\t...\tdatetime_end" -> number
        self._texts: dict[bytes, int] = {}
        self._fields: list[list[bytes]] | None = None  # the stretches split, once all rows are in
        # Blocks are parsed in a thread (numpy lets go of the GIL in its loops) while the next ones arrive.
        self._parser = ThreadPoolExecutor(1, thread_name_prefix="deck-rows")
        self._parsing: collections.deque[asyncio.Future] = collections.deque()

    async def feed(self, data: bytes) -> None:
        """An output callback for asyncpg's `copy_from_query`; call `finish` after the COPY."""
        self._pending.append(data)
        self._size += len(data)
        if self._size >= self.BLOCK:
            joined = b"".join(self._pending)
            end = joined.rfind(b"\n") + 1
            self._pending, self._size = [joined[end:]], len(joined) - end
            if end:
                await self._parse(joined, end)

    async def _parse(self, data: bytes, end: int) -> None:
        self._parsing.append(asyncio.get_running_loop().run_in_executor(self._parser, self._block, data, end))
        while len(self._parsing) > 2:  # a bounded backlog: memory stays a few blocks
            await self._parsing.popleft()

    async def finish(self) -> None:
        """Parses what is left and waits for every block."""
        try:
            if self._size:
                joined = b"".join(self._pending)
                self._pending, self._size = [], 0
                await self._parse(joined, len(joined))
            while self._parsing:
                await self._parsing.popleft()
        finally:
            self.close()

    def close(self) -> None:
        self._parser.shutdown(wait=True, cancel_futures=True)

    def _block(self, data: bytes, end: int) -> None:
        raw = np.frombuffer(data, dtype=np.uint8, count=end)
        separators = np.flatnonzero(raw - np.uint8(9) < 2)  # tab or newline: COPY escapes both in values
        count = len(separators) // len(self.COLUMNS)
        ends = separators.reshape(count, len(self.COLUMNS))
        if len(separators) % len(self.COLUMNS) or np.any(raw[ends[:, -1]] != 10) or np.any(raw[ends[:, :-1]] != 9):
            raise ValueError("COPY output is not rows of the deck's columns in text format")
        starts = np.empty_like(ends)
        starts[:, 1:] = ends[:, :-1] + 1
        starts[0, 0] = 0
        starts[1:, 0] = ends[:-1, -1] + 1
        padded = np.concatenate([raw, np.zeros(_FIELD_WIDTH, dtype=np.uint8)])

        start, length = starts[:, 0], ends[:, 0] - starts[:, 0]
        digits = _windows(padded, start, np.minimum(length, _DIGITS), _DIGITS) - np.uint8(48)
        inside = np.arange(_DIGITS) < length[:, None]
        plain = (length > 0) & (length <= _DIGITS) & np.all((digits < 10) | ~inside, axis=1)
        digits[~inside] = 0
        # The digits padded with zeros to _DIGITS, then the length: sorts as the prefixes do as text.
        sort_key = (digits.astype(np.int64) @ _PLACES) * (_DIGITS + 1) + length
        self._plain.append(plain)
        self._sort_keys.append(sort_key[plain])
        for row in np.flatnonzero(~plain).tolist():
            self._others.append((self._rows + row, data[start[row]:start[row] + length[row]]))

        last = self._STRETCH_END
        self._stretch_ids.append(self._number(self._stretches, data, padded, starts[:, 1],
                                              ends[:, last] - starts[:, 1]))
        self._text_ids.append(self._number(self._texts, data, padded, starts[:, last + 1],
                                           ends[:, last + 1] - starts[:, last + 1]))
        self._rows += count

    @staticmethod
    def _number(table: dict[bytes, int], data: bytes, padded: np.ndarray, start: np.ndarray,
                length: np.ndarray) -> np.ndarray:
        """Per row, the number of its field's value in `table` (new values numbered on)."""
        ids = np.zeros(len(start), dtype=np.uint32)
        alone = np.flatnonzero(length > _FIELD_WIDTH)
        short = np.flatnonzero(length <= _FIELD_WIDTH)
        if len(short):
            width = max(8, -(-int(length[short].max()) // 8) * 8)
            rows = _windows(padded, start[short], length[short], width)
            words = rows.view(np.uint64)
            hashes = (words * _MIX[:words.shape[1]]).sum(axis=1, dtype=np.uint64)
            hashes ^= length[short].astype(np.uint64) << np.uint64(48)
            hashes ^= hashes >> np.uint64(29)
            distinct, inverse = np.unique(hashes, return_inverse=True)
            sample = np.zeros(len(distinct), dtype=np.int64)
            sample[inverse] = np.arange(len(short))
            if np.all(rows == rows[sample[inverse]]):
                first = short[sample]
                found = np.array([table.setdefault(data[s:s + n], len(table)) for s, n in
                                  zip(start[first].tolist(), length[first].tolist())], dtype=np.uint32)
                ids[short] = found[inverse]
            else:  # two values with one hash: this block's values one by one
                alone = np.arange(len(start))
        for row in alone.tolist():
            ids[row] = table.setdefault(data[start[row]:start[row] + length[row]], len(table))
        return ids

    def _split(self) -> list[list[bytes]]:
        if self._fields is None:
            self._fields = [stretch.split(b"\t") for stretch in self._stretches]
        return self._fields

    def moments(self) -> list[str]:
        """The distinct dates of the rows, as COPY wrote them (for the caller to read as timestamps)."""
        found = dict.fromkeys(moment for fields in self._split() for moment in fields[12:14])
        found.pop(b"\\N", None)
        return [moment.decode() for moment in found]

    def columns(self, micros_of: dict[str, int]) -> Columns:
        """The columns of every row fed (after `finish`), given the micros (`micros`) of each of `moments()`."""
        numbers, raw, key, forms, form = self._keys()
        micros_of = {**micros_of, "\\N": micros(None)}
        sources: dict[tuple[str, str | None], int] = {}
        tariffs: dict[tuple, int] = {}
        zones: dict[str, int] = {"UTC": 0}
        source_ids: dict[tuple[bytes, bytes], int] = {}
        tariff_ids: dict[tuple[bytes, ...], int] = {}
        source_of, tariff_of = [], []
        for pricelist, carrier, *tariff in self._split():
            found = source_ids.get((pricelist, carrier))
            if found is None:
                found = source_ids[(pricelist, carrier)] = sources.setdefault(
                    (copy_text(pricelist), copy_text(carrier)), len(sources))
            source_of.append(found)
            written = tuple(tariff)
            found = tariff_ids.get(written)
            if found is None:
                fee, rate, increment, free, first, minimum, most, scale, rounding, origin, start, end, days, \
                    since, until, zone = written
                found = tariff_ids[written] = tariffs.setdefault(
                    (int(fee), int(rate), int(increment), int(free), micros_of[start.decode()],
                     micros_of[end.decode()], _NONE if first == b"\\N" else int(first), int(minimum),
                     _NONE if most == b"\\N" else int(most), int(scale), _ROUNDING_CODES[rounding],
                     int(b"1" + origin) if origin else _NONE, int(days), int(since), int(until),
                     zones.setdefault(copy_text(zone), len(zones))), len(tariffs))
            tariff_of.append(found)
        stretches = np.concatenate(self._stretch_ids) if self._stretch_ids else np.zeros(0, dtype=np.uint32)
        texts = np.concatenate(self._text_ids) if self._text_ids else np.zeros(0, dtype=np.uint32)
        return Columns(numbers, raw, key, forms, form, list(sources),
                       np.array(source_of, dtype=np.int32)[stretches], list(tariffs),
                       np.array(tariff_of, dtype=np.int32)[stretches], [copy_text(t) for t in self._texts], texts,
                       list(zones))

    def _keys(self) -> tuple[list[str], list[str], np.ndarray, list[tuple[str, bool]], np.ndarray]:
        """(numbers, raw, key, forms, form) of the rows fed, as `Columns` has them."""
        plain = np.concatenate(self._plain) if self._plain else np.zeros(0, dtype=bool)
        sort_keys = np.concatenate(self._sort_keys) if self._sort_keys else np.zeros(0, dtype=np.int64)
        distinct, inverse = _sorted_distinct(sort_keys)
        numbers = _digit_keys(distinct)
        key = np.zeros(self._rows, dtype=np.int32)
        key[plain] = inverse
        forms: dict[tuple[str, bool], int] = {("", True): 0}
        form = np.zeros(self._rows, dtype=np.int32)
        extra: dict[str, int] = {}
        raw: dict[str, int] = {}
        raw_rows: list[tuple[int, int]] = []
        for row, field in self._others:
            prefix = copy_text(field)
            is_raw, name = key_of(prefix)
            form[row] = forms.setdefault(form_of(prefix, is_raw, name), len(forms))
            if is_raw:
                raw_rows.append((row, raw.setdefault(name, len(raw))))
                continue
            position = -1
            if 0 < len(name) <= _DIGITS and name.isascii() and name.isdigit():
                wanted = int(name.ljust(_DIGITS, "0")) * (_DIGITS + 1) + len(name)
                found = int(np.searchsorted(distinct, wanted))
                if found < len(distinct) and distinct[found] == wanted:
                    position = found
            key[row] = position if position >= 0 else len(numbers) + extra.setdefault(name, len(extra))
        numbers += list(extra)
        for row, index in raw_rows:
            key[row] = len(numbers) + index
        return numbers, list(raw), key, list(forms), form


def _sorted_distinct(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct values, sorted; per value, the position of its own among them)."""
    order = np.argsort(values, kind="stable")  # quick on the runs of a table written in key order
    ordered = values[order]
    starts = np.ones(len(ordered), dtype=bool)
    starts[1:] = ordered[1:] != ordered[:-1]
    inverse = np.empty(len(values), dtype=np.int64)
    inverse[order] = np.cumsum(starts) - 1
    return ordered[starts], inverse


def _digit_keys(sort_keys: np.ndarray) -> list[str]:
    """The prefixes that TextRows' sort keys stand for."""
    length = sort_keys % (_DIGITS + 1)
    value = sort_keys // (_DIGITS + 1)
    digits = np.zeros((len(sort_keys), _DIGITS), dtype=np.uint8)
    for column in range(_DIGITS - 1, -1, -1):
        value, digit = np.divmod(value, 10)
        digits[:, column] = digit + 48
    digits[np.arange(_DIGITS) >= length[:, None]] = 0
    return digits.view(f"S{_DIGITS}").ravel().astype(f"U{_DIGITS}").tolist()


def copy_escaped(text: str | None) -> bytes:
    """`text` as a field of COPY's text format (what `copy_text` reads back)."""
    return b"\\N" if text is None else text.encode().replace(b"\\", b"\\\\")


class CsvRows(TextRows):
    """Columns of a deck from the lines of a CSV deck as they go to COPY (store/importer.py), so that an
    import builds its deck without reading the table back.

    Lines come in blocks of lines that need no parsing (`lines`: every field plain, no quote, exactly one
    field per header column, as importer.CsvDeck proves by regular expression), other rows as the importer
    parsed them (`row`, in the order of `names`), each with its row number in the COPY. As in `TextRows`,
    nothing costs a Python object per line: the prefix becomes a sort key, the description and each run of
    other fields between them are numbered by distinct value. Once the deck is in, `resolve` reads each
    distinct run once (with the importer's own row check, `decode`: so the values are those COPY stores)
    and each distinct combination of runs once; `duplicates` finds the rows a later row of the same rate
    replaces (the last one wins, as in the import), and `columns` gives the columns of the rows kept.
    """

    def __init__(self, header: list[str], names: tuple[str, ...]) -> None:
        super().__init__()
        self._header, self._names = header, names
        self._width = len(header)
        self._prefix = header.index("prefix")
        self._description = header.index("description") if "description" in header else None
        skipped = {self._prefix, self._description}
        self._runs: list[tuple[int, int]] = []  # [first, end) of each run of other fields
        for field in range(self._width):
            if field in skipped:
                continue
            if self._runs and self._runs[-1][1] == field:
                self._runs[-1] = (self._runs[-1][0], field + 1)
            else:
                self._runs.append((field, field + 1))
        # a line's run numbers packed in one integer (a parsed row: _ROW_BIT and its values' number)
        self._shift = {0: 0, 1: 0, 2: 32, 3: 21}[len(self._runs)]
        self._run_values: list[dict[bytes, int]] = [{} for _ in self._runs]
        self._row_values: dict[tuple, int] = {}  # parsed rows' values but prefix and description -> number
        self._row_texts: dict[str | None, int] = {}  # descriptions of parsed rows (their ids negative)
        self._written: dict[bytes, int] = {}  # prefixes other than plain ones, as written -> number
        self._combos: list[np.ndarray] = []  # per block: its rows' packed run numbers
        self._prefix_ids: list[np.ndarray] = []  # per block: its rows' prefixes as written, numbered
        self._numbers: list[np.ndarray] = []  # per block: its rows' numbers in the COPY
        self._pending_numbers = array("q")
        self._pending_rows: list[tuple[int, tuple]] = []
        self._submitted: collections.deque = collections.deque()
        self._identity: np.ndarray | None = None  # per row, after `resolve`
        self._keep: np.ndarray | None = None
        self._source: np.ndarray | None = None
        self._tariff: np.ndarray | None = None
        self._sources: list[tuple[str, str | None]] = []
        self._tariffs: list[tuple] = []
        self._zones: list[str] = ["UTC"]
        self._preparing = None  # prepare, started early (start_prepare)
        self._coded: Future = Future()  # prepare's codes of the rows, before its keys (`pairs` waits for it)
        self.broken: BaseException | None = None  # what stopped the parse (the import then reads the table)

    _ROW_BIT = 1 << 63

    def lines(self, data: bytes, first: int, count: int) -> None:
        """`count` plain lines (see the class), rows `first`.. of the COPY."""
        if self.broken is not None:
            return
        self._pending.append(data)  # apart from the parsed rows: every row carries its number
        self._size += len(data)
        self._pending_numbers.extend(range(first, first + count))
        if self._size >= self.BLOCK:
            self._flush_lines()

    def row(self, number: int, values: tuple) -> None:
        """One row parsed by the importer (in the order of `names`), row `number` of the COPY."""
        if self.broken is not None:
            return
        self._pending_rows.append((number, values))
        if len(self._pending_rows) >= 65_536:
            self._flush_rows()

    def _flush_lines(self) -> None:
        data, numbers = b"".join(self._pending), np.frombuffer(self._pending_numbers, dtype=np.int64).copy()
        self._pending, self._size, self._pending_numbers = [], 0, array("q")
        self._submitted.append(self._parser.submit(self._line_block, data, numbers))

    def _flush_rows(self) -> None:
        rows, self._pending_rows = self._pending_rows, []
        self._submitted.append(self._parser.submit(self._row_block, rows))

    async def pace(self) -> None:
        """Waits while more than two blocks wait for the parser (memory stays a few blocks)."""
        while len(self._submitted) > 2:
            await self._wait()

    async def _wait(self) -> None:
        try:
            await asyncio.wrap_future(self._submitted.popleft())
        except Exception as exc:  # noqa: BLE001 - the import goes on; its deck is built from the table
            self.broken = exc
            self._pending, self._size, self._pending_rows = [], 0, []

    async def finish(self) -> bool:
        """Parses what is left and waits for every block; False if the rows could not be parsed (`broken`)."""
        try:
            if self.broken is None and self._size:
                self._flush_lines()
            if self.broken is None and self._pending_rows:
                self._flush_rows()
            while self._submitted:
                await self._wait()
        finally:
            self.close()
        return self.broken is None

    def _line_block(self, data: bytes, numbers: np.ndarray) -> None:
        raw = np.frombuffer(data, dtype=np.uint8)
        separators = np.flatnonzero((raw == 44) | (raw == 10))
        width = self._width
        count = len(separators) // width
        ends = separators[:count * width].reshape(count, width)
        if count != len(numbers) or len(separators) != count * width or (count and raw[-1] != 10) \
                or np.any(raw[ends[:, -1]] != 10) or np.any(raw[ends[:, :-1]] != 44):
            raise ValueError("the deck's lines are not plain CSV lines of the header's columns")
        starts = np.empty_like(ends)
        starts[:, 1:] = ends[:, :-1] + 1
        if count:
            starts[0, 0] = 0
            starts[1:, 0] = ends[:-1, -1] + 1
        padded = np.concatenate([raw, np.zeros(_FIELD_WIDTH, dtype=np.uint8)])

        field = self._prefix
        start, length = starts[:, field], ends[:, field] - starts[:, field]
        digits = _windows(padded, start, np.minimum(length, _DIGITS), _DIGITS) - np.uint8(48)
        inside = np.arange(_DIGITS) < length[:, None]
        plain = (length > 0) & (length <= _DIGITS) & np.all((digits < 10) | ~inside, axis=1)
        digits[~inside] = 0
        sort_key = (digits.astype(np.int64) @ _PLACES) * (_DIGITS + 1) + length  # as TextRows._block
        prefix_ids = np.where(plain, sort_key, 0)
        for row in np.flatnonzero(~plain).tolist():
            written = data[start[row]:start[row] + length[row]].replace(b"\\", b"\\\\")  # as COPY would write it
            self._others.append((self._rows + row, written))
            prefix_ids[row] = -1 - self._written.setdefault(written, len(self._written))

        combo = np.zeros(count, dtype=np.uint64)
        for (first, end), values in zip(self._runs, self._run_values):
            ids = self._number(values, data, padded, starts[:, first], ends[:, end - 1] - starts[:, first])
            if self._shift and len(values) >= 1 << (self._shift if len(self._runs) == 3 else 31):
                raise ValueError("too many distinct values in a run of the deck's columns")  # read from the table
            combo = (combo << np.uint64(self._shift)) | ids.astype(np.uint64)
        if self._description is None:
            text_ids = np.full(count, self._texts.setdefault(b"", len(self._texts)), dtype=np.int64)
        else:
            field = self._description
            text_ids = self._number(self._texts, data, padded, starts[:, field],
                                    ends[:, field] - starts[:, field]).astype(np.int64)
        self._blocks(plain, sort_key[plain], prefix_ids, combo, text_ids, numbers)

    def _row_block(self, rows: list[tuple[int, tuple]]) -> None:
        count = len(rows)
        plain = np.zeros(count, dtype=bool)
        sort_keys, prefix_ids, combos, text_ids = [], [], [], []
        prefix, description = self._names.index("prefix"), self._names.index("description")
        for n, (_, values) in enumerate(rows):
            written = values[prefix]
            if 0 < len(written) <= _DIGITS and written.isascii() and written.isdigit():
                plain[n] = True
                key = int(written.ljust(_DIGITS, "0")) * (_DIGITS + 1) + len(written)
                sort_keys.append(key)
                prefix_ids.append(key)
            else:
                escaped = copy_escaped(written)
                self._others.append((self._rows + n, escaped))
                prefix_ids.append(-1 - self._written.setdefault(escaped, len(self._written)))
            rest = tuple(None if i in (prefix, description) else v for i, v in enumerate(values))
            combos.append(self._ROW_BIT | self._row_values.setdefault(rest, len(self._row_values)))
            text_ids.append(-1 - self._row_texts.setdefault(values[description], len(self._row_texts)))
        self._blocks(plain, np.array(sort_keys, dtype=np.int64), np.array(prefix_ids, dtype=np.int64),
                     np.array(combos, dtype=np.uint64), np.array(text_ids, dtype=np.int64),
                     np.array([number for number, _ in rows], dtype=np.int64))

    def _blocks(self, plain, sort_keys, prefix_ids, combos, text_ids, numbers) -> None:
        self._plain.append(plain)
        self._sort_keys.append(sort_keys)
        self._prefix_ids.append(prefix_ids)
        self._combos.append(combos)
        self._text_ids.append(text_ids)
        self._numbers.append(numbers)
        self._rows += len(plain)

    def start_prepare(self, decode) -> None:
        """Starts `prepare` in a thread of its own (after `finish`), while the importer asks PostgreSQL
        what it needs to know; `resolve` waits for it."""
        executor = ThreadPoolExecutor(1, thread_name_prefix="deck-prepare")
        self._preparing = executor.submit(self.prepare, decode)
        executor.shutdown(wait=False)

    def prepare(self, decode) -> None:
        """Reads what the rows stand for (after `finish`), whichever tenant and pricelist the deck is built
        for: `decode` gives the row (in the order of `names`) of some fields of a plain line (by column
        name), as the importer stores it, each field read apart (a plain line's fields are checked one by
        one). Each distinct field value is read once, each distinct run of fields once (a row of integer
        codes), and the distinct combinations of runs (some 300,000 in a deck of 2,000,000 rates) are
        coded with numpy, not one by one; the prefixes are numbered as keys."""
        try:
            self._prepare(decode)
        except BaseException as exc:
            if not self._coded.done():
                self._coded.set_exception(exc)
            raise

    def _prepare(self, decode) -> None:
        names = self._names
        at = {name: n for n, name in enumerate(names)}
        flat = lambda parts: np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)  # noqa: E731
        combos = np.concatenate(self._combos) if self._combos else np.zeros(0, dtype=np.uint64)
        self._prefix_ids, self._numbers = [flat(self._prefix_ids)], [flat(self._numbers)]
        self._finish_texts()
        distinct, stretch = np.unique(combos, return_inverse=True)
        stretch = np.asarray(stretch).reshape(-1)

        strings: dict[int, dict] = {at["tenant"]: {}, at["pricelist_tag"]: {}, at["carrier_tag"]: {}}
        coded = (*strings, *(at[name] for name in _CSV_CODED))

        def code(column: int, value) -> int:
            if column in strings:
                return strings[column].setdefault(value, len(strings[column]))
            name = names[column]
            if name in ("datetime_start", "datetime_end"):
                return micros(value)
            if name == "source_prefix":
                return origin_code(value)
            return _NONE if value is None else int(value)

        width = len(names)
        base = decode({})
        codes = np.zeros((len(distinct), width), dtype=np.int64)
        for column in coded:
            codes[:, column] = code(column, base[column])
        parsed = list(self._row_values)
        is_row = (distinct & np.uint64(self._ROW_BIT)) != 0
        lines = distinct[~is_row]
        fields: dict[tuple[str, str], int] = {}  # (column, text) -> code
        for n in range(len(self._runs) - 1, -1, -1):
            first, end = self._runs[n]
            header = self._header[first:end]
            columns = [at[name] for name in header]
            table = np.zeros((max(len(self._run_values[n]), 1), len(columns)), dtype=np.int64)
            for i, value in enumerate(self._run_values[n]):
                for j, (name, text) in enumerate(zip(header, value.decode().split(","))):
                    found = fields.get((name, text))
                    if found is None:
                        found = fields[(name, text)] = code(at[name], decode({name: text})[at[name]])
                    table[i, j] = found
            ids = (lines & np.uint64((1 << self._shift) - 1) if self._shift else lines).astype(np.int64)
            codes[np.flatnonzero(~is_row)[:, None], columns] = table[ids]
            if self._shift:
                lines = lines >> np.uint64(self._shift)
        for place, packed in zip(np.flatnonzero(is_row).tolist(), distinct[is_row].tolist()):
            row = parsed[packed & ~self._ROW_BIT]
            codes[place, list(coded)] = [code(column, row[column]) for column in coded]
        self._codes, self._strings, self._stretch = codes, strings, stretch
        if not self._coded.done():  # prepared again (resolve without start_prepare)
            self._coded.set_result(None)
        self._key_columns = self._keys()

    def pairs(self, pricelist: str | None = None) -> list[tuple[str, str, str]] | None:
        """The distinct (tenant, pricelist_tag, carrier_tag) of the rows (of `pricelist` only, if given), as
        COPY stored them, once `prepare` started by `start_prepare` has coded the rows (None if it was not
        started); raises what `prepare` raised before."""
        if self._preparing is None:
            return None
        self._coded.result()
        at = {name: n for n, name in enumerate(self._names)}
        columns = [at["tenant"], at["pricelist_tag"], at["carrier_tag"]]
        values = [list(self._strings[column]) for column in columns]
        found = np.unique(self._codes[:, columns], axis=0).tolist()  # every combination is some row's
        pairs = [tuple(values[n][code] for n, code in enumerate(row)) for row in found]
        return [pair for pair in pairs if pricelist is None or pair[1] == pricelist]

    def resolve(self, decode, tenant: str, pricelist: str, terms: dict[str, tuple[int, str, str]]) -> None:
        """`prepare` (unless started before), then which rows go into the deck: the active rows of `tenant`'s
        `pricelist`, with its pricelist's `terms` (scale, rounding, time zone, by pricelist tag)."""
        if self._preparing is not None:
            self._preparing.result()
        else:
            self.prepare(decode)
        codes, strings, stretch = self._codes, self._strings, self._stretch
        at = {name: n for n, name in enumerate(self._names)}

        def numbered(columns: list[int], rows: np.ndarray | slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
            values = codes[rows][:, columns]
            if not len(values):
                return values, np.zeros(0, dtype=np.int64)
            return _unique_rows(values)

        tenants, pricelists = strings[at["tenant"]], strings[at["pricelist_tag"]]
        own = (codes[:, at["tenant"]] == tenants.get(tenant, -1)) \
            & (codes[:, at["pricelist_tag"]] == pricelists.get(pricelist, -1))
        keep = own & (codes[:, at["active"]] != 0)
        _, identity = numbered([at[name] for name in ("tenant", "pricelist_tag", "carrier_tag", "source_prefix",
                                                      "weekdays", "time_start", "time_end")])
        source, tariff = np.zeros(len(codes), dtype=np.int64), np.zeros(len(codes), dtype=np.int64)
        found, source[own] = numbered([at["pricelist_tag"], at["carrier_tag"]], own)
        carriers = list(strings[at["carrier_tag"]])
        self._sources = [(pricelist, carriers[carrier]) for _, carrier in found.tolist()]
        found, tariff[own] = numbered([at[name] for name in _CSV_TARIFF], own)
        scale, rounding, zone = terms.get(pricelist, (0, "up", "UTC"))
        zones = ["UTC"] if zone == "UTC" else ["UTC", zone]
        self._tariffs = [(*t[:9], scale, ROUNDINGS.index(rounding), *t[9:], len(zones) - 1) for t in found.tolist()]
        self._zones = zones
        self._identity, self._keep = identity[stretch], keep[stretch]
        self._source, self._tariff = source[stretch], tariff[stretch]

    def _finish_texts(self) -> None:
        """One table of descriptions for the lines' and the parsed rows'."""
        table: dict[str | None, int] = {}
        from_lines = np.array([table.setdefault(text.decode() if text else None, len(table))
                               for text in self._texts] or [0], dtype=np.int64)
        from_rows = np.array([table.setdefault(text, len(table)) for text in self._row_texts] or [0], dtype=np.int64)
        ids = np.concatenate(self._text_ids) if self._text_ids else np.zeros(0, dtype=np.int64)
        self._text_ids = [np.where(ids >= 0, from_lines[np.maximum(ids, 0)], from_rows[np.maximum(-1 - ids, 0)])]
        self._descriptions = list(table)

    def duplicates(self) -> np.ndarray:
        """Whether each row (in the order fed) is replaced by a later row of the same rate (after `resolve`)."""
        identity, prefix, number = self._identity, self._prefix_ids[0], self._numbers[0]
        # most decks name no rate twice: distinct hashes of (prefix, identity) show it without the exact sort
        hashed = np.sort(prefix.view(np.uint64) * np.uint64(0x9E37_79B9_7F4A_7C15) + identity.view(np.uint64))
        if not np.any(hashed[1:] == hashed[:-1]):
            return np.zeros(len(prefix), dtype=bool)
        order = np.lexsort((-number, identity, prefix))
        later = np.zeros(len(order), dtype=bool)
        if len(order) > 1:
            ordered_prefix, ordered_identity = prefix[order], identity[order]
            same = (ordered_prefix[1:] == ordered_prefix[:-1]) & (ordered_identity[1:] == ordered_identity[:-1])
            later[order[1:][same]] = True
        return later

    def numbers(self) -> np.ndarray:
        """Each row's number in the COPY (in the order fed)."""
        return self._numbers[0]

    def columns(self, replaced: np.ndarray | None = None) -> Columns:  # type: ignore[override]
        """The columns of the rows that go into the deck (after `resolve`): of the tenant's pricelist, active,
        and replaced by no later row (`replaced`, from `duplicates`)."""
        keep = self._keep if replaced is None else self._keep & ~replaced
        numbers, raw, key, forms, form = self._key_columns
        everything = Columns(numbers, raw, key, forms, form, self._sources, self._source, self._tariffs,
                             self._tariff, self._descriptions, self._text_ids[0], self._zones)
        return select_rows(everything, keep)


# CsvRows.resolve: the columns coded as integers (besides the tags), and a tariff's among them in the order
# of _TARIFF_COLUMNS (scale, rounding and time zone are the pricelist's)
_CSV_CODED = ("connect_fee", "rate", "rate_increment", "interval_start", "datetime_start", "datetime_end", "active",
          "initial_increment", "minimum_duration", "maximum_cost", "source_prefix", "weekdays", "time_start",
          "time_end")
_CSV_TARIFF = ("connect_fee", "rate", "rate_increment", "interval_start", "datetime_start", "datetime_end",
                 "initial_increment", "minimum_duration", "maximum_cost", "source_prefix", "weekdays", "time_start",
                 "time_end")


def _unique_rows(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct rows of a 2-d integer array, sorted; per row, the number of its own among them): what
    np.unique(axis=0) gives, by one lexsort instead of its much slower sort of rows as bytes."""
    order = np.lexsort(values.T[::-1])
    ordered = values[order]
    starts = np.ones(len(ordered), dtype=bool)
    starts[1:] = np.any(ordered[1:] != ordered[:-1], axis=1)
    inverse = np.empty(len(values), dtype=np.int64)
    inverse[order] = np.cumsum(starts) - 1
    return ordered[starts], inverse


def select_rows(columns: Columns, keep: np.ndarray) -> Columns:
    """The rows of `columns` that `keep` says, with only the keys, forms, sources, tariffs, descriptions and
    zones they use (each table's first form and zone kept first), as a build of those rows alone has them."""
    if bool(keep.all()):
        return columns

    def renumber(ids: np.ndarray, table: list, first: bool = False) -> tuple[list, np.ndarray]:
        """The entries of `table` that `ids` use, in their order, and `ids` into them (no sort: a mask)."""
        used = np.zeros(len(table), dtype=bool)
        used[ids] = True
        if first and len(table):
            used[0] = True
        place = np.cumsum(used) - 1
        return [table[i] for i in np.flatnonzero(used).tolist()], place[ids]

    used = np.zeros(len(columns.numbers) + len(columns.raw), dtype=bool)
    used[columns.key[keep]] = True
    key = (np.cumsum(used) - 1)[columns.key[keep]]
    numbers = [columns.numbers[i] for i in np.flatnonzero(used[:len(columns.numbers)]).tolist()]
    raw = [columns.raw[i] for i in np.flatnonzero(used[len(columns.numbers):]).tolist()]
    forms, form = renumber(columns.form[keep], columns.forms, first=True)
    sources, source = renumber(columns.source[keep], columns.sources)
    tariffs, tariff = renumber(columns.tariff[keep], columns.tariffs)
    descriptions, description = renumber(columns.description[keep], columns.descriptions)
    zone_ids = np.array([t[15] for t in tariffs], dtype=np.int64)
    zones, zone_of = renumber(zone_ids, columns.zones, first=True)
    tariffs = [(*t[:15], z) for t, z in zip(tariffs, zone_of.tolist())]
    return Columns(numbers, raw, key, forms, form, sources, source, tariffs, tariff, descriptions, description, zones)


def join_columns(first: Columns, second: Columns) -> Columns:
    """The rows of `first` and `second` (no rate in both) as one tenant's columns."""
    if not len(second.key):
        return first
    if not len(first.key):
        return second

    def merged(a: list, b: list) -> tuple[list, np.ndarray]:
        """a's values, then b's not in a (b's order); per value of b, its place there. `a` (a million
        keys) is only looked up in a table of `b`, not made into one."""
        where: dict = {}
        for n, value in enumerate(b):
            where.setdefault(value, n)
        place = np.full(max(len(b), 1), -1, dtype=np.int64)
        first = np.array([where[value] for value in b], dtype=np.int64)  # b's repeated values: their first
        for n in itertools.compress(range(len(a)), map(where.__contains__, a)):
            place[where[a[n]]] = n
        added = [n for n in where.values() if place[n] < 0]
        place[np.array(added, dtype=np.int64)] = len(a) + np.arange(len(added))
        return [*a, *(b[n] for n in added)], place[first] if len(b) else np.zeros(1, dtype=np.int64)

    numbers, number_place = merged(first.numbers, second.numbers)
    raw, raw_place = merged(first.raw, second.raw)
    zones, zone_place = merged(first.zones, second.zones)
    second_tariffs = [(*t[:15], int(zone_place[t[15]])) for t in second.tariffs]
    forms, form_place = merged(first.forms, second.forms)
    sources, source_place = merged(first.sources, second.sources)
    tariffs, tariff_place = merged(first.tariffs, second_tariffs)
    descriptions, description_place = merged(first.descriptions, second.descriptions)

    def shifted(key: np.ndarray, numbers: int, raw_start: int) -> np.ndarray:
        return np.where(key < numbers, key, key - numbers + raw_start)

    first_key = shifted(first.key, len(first.numbers), len(numbers))
    is_number = second.key < len(second.numbers)
    second_key = np.where(is_number, number_place[np.where(is_number, second.key, 0)],
                          len(numbers) + raw_place[np.where(is_number, 0, second.key - len(second.numbers))])
    return Columns(numbers, raw, np.concatenate([first_key, second_key]), forms,
                   np.concatenate([first.form, form_place[second.form]]), sources,
                   np.concatenate([first.source, source_place[second.source]]), tariffs,
                   np.concatenate([first.tariff, tariff_place[second.tariff]]), descriptions,
                   np.concatenate([first.description, description_place[second.description]]), zones)


def build(folder: Path, tenant: str, rates: Iterable[Rate], covers: int) -> DeckInfo:
    """Writes the deck of `rates` (one tenant's active rates) into `folder`, which must not exist yet."""
    return build_columns(folder, tenant, columns_of(rates), covers)


def _dense_ranks(keys: list) -> np.ndarray:
    """Per item of `keys`, its rank among the distinct values (equal values share a rank)."""
    ranks = np.zeros(len(keys), dtype=np.int32)
    rank, previous = -1, object()
    for i in sorted(range(len(keys)), key=keys.__getitem__):
        if keys[i] != previous:
            rank, previous = rank + 1, keys[i]
        ranks[i] = rank
    return ranks


def price_keys(tariffs: list[tuple]) -> list[tuple]:
    """Per tariff (as _TARIFF_COLUMNS), a key that orders as (price per second, connect fee, scheme) of
    `Rate.order_key` (`Rate.scheme_key`; a tariff of six columns is one without a scheme, of nine one of
    integer money).

    `Rate.price_per_second` is a Fraction of money; over a common multiple of the increments (times the
    scales' units) the same order is one of integers, far cheaper to compare for a million tariffs. A
    pathological common multiple keeps the fractions. Amounts of other scales compare as money: over the
    largest unit.
    """
    increments = {n: Rate("", "", None, "", rate_increment=n).increment for n in {t[2] for t in tariffs}}
    units = {t: 10 ** _scale_of(t) for t in tariffs}
    top = max(units.values(), default=1)
    periods = {(increments[t[2]], unit) for t, unit in units.items()}
    common = math.lcm(*(increment * unit for increment, unit in periods)) if periods else 1
    if common.bit_length() > 256:
        return [(Fraction(t[1], increments[t[2]] * units[t]), Fraction(t[0], units[t]),
                 *_scheme(t, increments[t[2]], units[t], top)) for t in tariffs]
    return [(t[1] * (common // (increments[t[2]] * units[t])), t[0] * (top // units[t]),
             *_scheme(t, increments[t[2]], units[t], top)) for t in tariffs]


def _scale_of(tariff: tuple) -> int:
    return tariff[9] if len(tariff) > 9 else 0


def _scheme(tariff: tuple, increment: int, unit: int = 1, top: int = 1) -> tuple[int, int, int]:
    """`Rate.scheme_key` of a tariff of the deck, its cap counted in 1/`top` of money."""
    if len(tariff) < 9:
        return (0, 0, MONEY_LIMIT * top)
    first = tariff[6] if tariff[6] > 0 else increment
    return (max(tariff[7], 0), first - increment,
            MONEY_LIMIT * top if tariff[8] == _NONE else tariff[8] * (top // unit))


def price_ranks(columns: Columns) -> np.ndarray:
    """Per tariff, its rank by `price_keys` (what `order_ranks` and `offer_codes` both start from)."""
    ranks = _price_ranks_int64(columns.tariffs)
    return _dense_ranks(price_keys(columns.tariffs)) if ranks is None else ranks


def _price_ranks_int64(tariffs: list[tuple]) -> np.ndarray | None:
    """`price_ranks` by numpy when every `price_keys` key fits int64 (None otherwise): the same integers,
    column by column, ranked by one lexsort instead of a sort of a million tuples."""
    if not tariffs or any(len(t) != len(_TARIFF_COLUMNS) for t in tariffs):
        return None
    listed = np.array(tariffs, dtype=np.int64)
    fee, rate, given, first, minimum, most, scale = (listed[:, n] for n in (0, 1, 2, 6, 7, 8, 9))
    increment = np.where(given > 0, given, 1)  # Rate.increment
    if scale.min() < 0 or scale.max() > 18:
        return None
    unit = (10 ** np.arange(19, dtype=np.int64))[scale]
    top = int(unit.max())
    periods = np.unique(increment * unit)
    common = math.lcm(*periods.tolist())
    limit = 1 << 62
    if common >= limit or int(rate.max()) * common >= limit or int(fee.max()) * top >= limit \
            or MONEY_LIMIT * top >= limit or int(most.max()) * top >= limit:
        return None
    keys = (rate * (common // (increment * unit)), fee * (top // unit), np.maximum(minimum, 0),
            np.where(first > 0, first, increment) - increment,
            np.where(most == _NONE, MONEY_LIMIT * top, most * (top // unit)))
    order = np.lexsort(keys[::-1])
    starts = np.ones(len(order), dtype=bool)
    for key in keys:
        ordered = key[order]
        starts[1:] &= ordered[1:] == ordered[:-1]
    starts[1:] = ~starts[1:]
    ranks = np.empty(len(order), dtype=np.int32)
    ranks[order] = np.cumsum(starts) - 1
    return ranks


def order_ranks(columns: Columns, prices: np.ndarray | None = None) -> list[np.ndarray]:
    """Per rate, sort keys (most significant first) ordering the rates of one key as `Rate.order_key` does:
    (price per second, connect fee, scheme), (pricelist, carrier or ""), the prefix as written, (free
    increments, increment, source prefix)."""
    head = (price_ranks(columns) if prices is None else prices)[columns.tariff]
    source = _dense_ranks([(pricelist, carrier or "") for pricelist, carrier in columns.sources])[columns.source]
    tail = _dense_ranks([(t[3], t[2], origin_of(t[11]) if len(t) > 11 else "", *t[12:15])
                         for t in columns.tariffs])[columns.tariff]
    written = np.zeros(len(columns.key), dtype=np.int32)
    if len(columns.forms) > 1:
        # Only the rates of keys written in more than one way compare their prefixes as written.
        pairs = np.unique(columns.key.astype(np.int64) * len(columns.forms) + columns.form)
        keys, counts = np.unique(pairs // len(columns.forms), return_counts=True)
        rows = np.flatnonzero(np.isin(columns.key, keys[counts > 1]))
        if len(rows):
            names = columns.numbers + columns.raw
            spelled = []
            for key, form in zip(columns.key[rows].tolist(), columns.form[rows].tolist()):
                head_of, follows = columns.forms[form]
                spelled.append(head_of + names[key] if follows else head_of)
            written[rows] = _dense_ranks(spelled)
    return [head, source, written, tail]


def _lexsort(keys: list[np.ndarray]) -> np.ndarray:
    """The stable order of rows by `keys` (most significant first); neighbouring keys are packed into one
    integer where their ranges allow, since every key is a pass of the sort."""
    packed: list[np.ndarray] = []
    current, span = None, 1
    for column in reversed(keys):  # least significant first
        size = int(column.max()) + 1 if len(column) else 1
        if current is not None and span * size < 2**62:
            current, span = current + column.astype(np.int64) * span, span * size
        else:
            if current is not None:
                packed.append(current)
            current, span = column.astype(np.int64), size
    if current is not None:
        packed.append(current)
    if len(packed) == 1:
        return np.argsort(packed[0], kind="stable")
    return np.lexsort(packed)


def _key_order(keys: list[str]) -> list[int] | None:
    """The positions of `keys` in sorted order, or None when they are sorted already."""
    if any(map(operator.gt, keys, itertools.islice(keys, 1, None))):
        return sorted(range(len(keys)), key=keys.__getitem__)
    return None


def _trie_slots(keys: list[str], order: list[int] | None) -> tuple[marisa_trie.Trie, np.ndarray]:
    """The trie of `keys` and, per key, its id in the trie (`order`: `_key_order(keys)`)."""
    if order is not None:
        keys = [keys[i] for i in order]
    # In label order the trie lists its keys sorted, so the ids of sorted keys come in one pass.
    trie = marisa_trie.Trie(keys, order=marisa_trie.LABEL_ORDER)
    listed, ids = zip(*trie.items()) if keys else ((), ())
    if list(listed) == keys:
        ids = np.array(ids, dtype=np.int64)
    else:
        ids = np.fromiter(map(trie.key_id, keys), dtype=np.int64, count=len(keys))
    if order is not None:
        placed = np.empty_like(ids)
        placed[np.array(order, dtype=np.int64)] = ids
        ids = placed
    return trie, ids


def _parents(keys: list[str], order: list[int] | None,
             codes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per key (by position in `keys`), the position of its longest proper prefix among `keys` (-1: none)
    and how many of its prefixes are keys: in sorted order a key's prefixes are the keys before it that it
    starts with, and they stay on a stack while the keys after them start with them. With the keys'
    `codes` (_number_codes, in sorted order), the same found with numpy (_coded_parents)."""
    if codes is not None:
        parent, depth = _coded_parents(codes)
        if order is None:
            return parent, depth
        where = np.array(order, dtype=np.int64)  # slot -> position
        placed, placed_depth = np.full(len(keys), -1, dtype=np.int64), np.zeros(len(keys), dtype=np.int64)
        has = parent >= 0
        placed[where[has]] = where[parent[has]]
        placed_depth[where] = depth
        return placed, placed_depth
    positions = range(len(keys)) if order is None else order
    parent = np.full(len(keys), -1, dtype=np.int64)
    depth = np.zeros(len(keys), dtype=np.int64)
    found_parent, found_depth, stack = [], [], []
    for position in positions:
        key = keys[position]
        while stack and not key.startswith(keys[stack[-1]]):
            stack.pop()
        found_parent.append(stack[-1] if stack else -1)
        found_depth.append(len(stack))
        stack.append(position)
    where = np.fromiter(positions, dtype=np.int64, count=len(keys))
    parent[where] = found_parent
    depth[where] = found_depth
    return parent, depth


_CODED = 17  # digits of a number key's code: E.164 numbers have at most 15
# The index of number keys (Deck.longest_slot): per slot (the keys in sorted order) its parent's slot (-1:
# none) and, when every key is at most _CODED ASCII digits, its code (_number_codes, whose low 5 bits are the
# key's length) with `first` per bucket; otherwise (letters, longer keys) its key's length, numbers.marisa
# and each trie id's slot.
_INDEX_COLUMNS = {"parent": "i", "codes": "Q", "first": "I", "id_slot": "I"}  # `length`: B or H


def _codable(key: str) -> bool:
    return len(key) <= _CODED and key.isascii() and (key.isdigit() or not key)


def _all_codable(keys: list[str]) -> bool:
    """Whether every key is `_codable`: one test of the keys joined, not a call per key."""
    joined = "".join(keys)
    return (not joined or joined.isascii() and joined.isdigit()) and max(map(len, keys), default=0) <= _CODED


def _coded_parents(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`_parents` of keys given by their sorted `codes` (_number_codes), by slot: for each length, every
    longer key's first digits of that length are a code, searched among the codes (the longest found last)."""
    count = len(codes)
    parent = np.full(count, -1, dtype=np.int64)
    depth = np.zeros(count, dtype=np.int64)
    length = (codes & np.uint64(31)).astype(np.int64)
    value = codes >> np.uint64(5)
    for size in range(int(length.max()) if count else 0):
        rows = np.flatnonzero(length > size)
        span = np.uint64(10 ** (_CODED - size))
        wanted = value[rows] // span * span * np.uint64(32) + np.uint64(size)
        at = np.searchsorted(codes, wanted)
        at[at == count] = 0
        hit = codes[at] == wanted
        parent[rows[hit]] = at[hit]
        depth[rows[hit]] += 1
    return parent, depth


def _bucket(keys: int) -> int:
    """The span of codes' values a bucket of `first` covers: a bucket for about eight keys (`first` costs
    0.5 B per key; the keys of a bucket are three steps of search, in one or two cache lines)."""
    return min(8 * 10 ** _CODED // max(keys, 1), 10 ** _CODED)  # at most one bucket for every value


def _number_codes(keys: list[str]) -> np.ndarray:
    """Per key (ASCII digits, sorted), `int(key.ljust(_CODED, "0")) * 32 + len(key)`: integers in the keys'
    own order (a key before the keys it is a prefix of), so the keys a number starts with are found by
    searching its own code (Deck.longest)."""
    codes = np.zeros(len(keys), dtype=np.uint64)
    for start in range(0, len(keys), 1_000_000):  # in blocks: a byte per digit of ten million keys is a lot
        block = np.array(keys[start:start + 1_000_000], dtype=f"S{_CODED}").view(np.uint8).reshape(-1, _CODED)
        value = np.zeros(len(block), dtype=np.uint64)
        for column in range(_CODED):
            digit = block[:, column]
            value = value * np.uint64(10) + np.where(digit > 0, digit - 48, 0).astype(np.uint64)
        codes[start:start + len(block)] = value * np.uint64(32) + (block > 0).sum(axis=1).astype(np.uint64)
    return codes


def _number_index(numbers: list[str], order: list[int] | None, slots: np.ndarray, parent: np.ndarray,
                  coded: bool, codes: np.ndarray | None = None
                  ) -> tuple[dict[str, np.ndarray], marisa_trie.Trie | None]:
    """The arrays of the number keys' index (_INDEX_COLUMNS) and, for a deck not `coded`, its trie (`codes`:
    those of the sorted keys, if made already)."""
    up = np.full(len(numbers), -1, dtype=np.int32)
    has = parent >= 0
    up[slots[has]] = slots[parent[has]]
    ordered = numbers if order is None else [numbers[i] for i in order]
    if coded:
        codes = _number_codes(ordered) if codes is None else codes
        bucket = _bucket(len(numbers))
        # first[b]: the codes below bucket b; a value below 10**_CODED is in bucket at most (10**_CODED - 1) // bucket
        edges = np.arange((10 ** _CODED - 1) // bucket + 2, dtype=np.uint64) * np.uint64(bucket * 32)
        first = np.searchsorted(codes, edges).astype(np.uint32)
        return {"parent": up, "codes": codes, "first": first}, None  # a key's length: its code & 31
    lengths = np.fromiter(map(len, ordered), dtype=np.int64, count=len(ordered))
    if len(lengths) and lengths.max() >= 2**16:
        raise ValueError("a number prefix of 65,536 characters or more")
    trie, ids = _trie_slots(numbers, order)
    id_slot = np.zeros(len(numbers), dtype=np.uint32)
    id_slot[ids] = slots
    return {"parent": up, "length": lengths.astype(_NUMPY_TYPES[_unsigned(lengths)]), "id_slot": id_slot}, trie


def _segments(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(per item, its segment; per item, its index) of the items starts[k]..starts[k]+counts[k], segment by
    segment."""
    segment = np.repeat(np.arange(len(counts)), counts)
    first = np.cumsum(counts) - counts
    return segment, starts[segment] + (np.arange(len(segment)) - first[segment])


def offer_codes(columns: Columns, source_rank: np.ndarray, prices: np.ndarray | None = None) -> np.ndarray:
    """Per rate, an integer ordering the carriers' offers as routing does: price per second, connect fee,
    scheme, the longer key (a number key's length), then carrier tag (`source_rank`: the sources numbered in carrier tag
    order); `code % len(columns.sources)` is the rate's source in that numbering."""
    head = (price_ranks(columns) if prices is None else prices)[columns.tariff].astype(np.int64)
    lengths = np.fromiter(map(len, columns.numbers), dtype=np.int64, count=len(columns.numbers))
    number = columns.key < len(columns.numbers)
    length = np.zeros(len(columns.key), dtype=np.int64)
    length[number] = lengths[columns.key[number]]
    longest = int(length.max()) + 1 if len(length) else 1
    rank = _dense_rank(head * longest + (longest - 1 - length))
    return rank * len(columns.sources) + source_rank[columns.source]


def _dense_rank(values: np.ndarray) -> np.ndarray:
    """Per value (non-negative integers), its rank among the distinct values: np.unique's inverse, without
    its sort when the values' range is small (a table of which values occur)."""
    top = int(values.max()) + 1 if len(values) else 0
    if top > 4 * len(values) + (1 << 20):
        return np.asarray(np.unique(values, return_inverse=True)[1]).reshape(-1).astype(np.int64)
    seen = np.zeros(top, dtype=bool)
    seen[values] = True
    return (np.cumsum(seen) - 1)[values]


def _chains(numbers: list[str], order: list[int] | None, slot_of: np.ndarray, slots: int, offsets: np.ndarray,
            codes: np.ndarray, sources: int, parents: tuple[np.ndarray, np.ndarray] | None = None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per slot, the rates that can matter along its number key's chain of prefixes (the key's own rates, then
    those of its longest prefix key, and so on): the first rate of each source met along it, as
    (chain_offsets, source per entry, depth per entry: 0 for the key's own rates, 1 for its longest prefix
    key's...), each slot's entries in offer order (their `codes`, offer_codes). A later rate of a source is
    never the first eligible one when its deck has no dates, since eligibility then depends on the source
    alone; so the offers of an account are its eligible entries in this order, each carrier's the one of
    least depth (then the first: of one key and one carrier, offer order is the rates' order). Built prefix
    depth by prefix depth (a key's parent is one level up), with numpy over each level."""
    parent, depth = _parents(numbers, order) if parents is None else parents
    lengths = np.zeros(slots, dtype=np.int64)
    levels = []
    previous = None  # (positions of the keys one level up, sorted; their starts and lengths; codes; depths)
    for level in range(int(depth.max()) + 1 if len(depth) else 0):
        positions = np.flatnonzero(depth == level)
        slot = slot_of[positions]
        segment, row = _segments(offsets[slot], offsets[slot + 1] - offsets[slot])
        found = codes[row]
        own = len(found)
        up = np.zeros(len(found), dtype=np.int64)
        if previous is not None:
            above, above_start, above_length, above_codes, above_up = previous
            index = np.searchsorted(above, parent[positions])
            inherited, entry = _segments(above_start[index], above_length[index])
            segment = np.concatenate([segment, inherited])
            found = np.concatenate([found, above_codes[entry]])
            up = np.concatenate([up, above_up[entry] + 1])
        # The first entry of each (key, source): own rates come before inherited ones in `found`.
        kept = _first_of_sources(segment * sources + found % sources, own, len(positions) * sources)
        segment, found, up = segment[kept], found[kept], up[kept]
        # per key, in offer order (a source's codes are distinct: no ties); one packed key sorts faster, and
        # a stable sort (timsort) takes the runs: keys in order, the inherited entries in order within each
        span = int(found.max()) + 1 if len(found) else 1
        ordered = np.argsort(segment * span + found, kind="stable") if len(positions) * span < 2**62 else \
            np.lexsort((found, segment))
        count = np.bincount(segment, minlength=len(positions))
        previous = (positions, np.cumsum(count) - count, count, found[ordered], up[ordered])
        lengths[slot] = count
        levels.append((slot, count, found[ordered], up[ordered]))
    chain_offsets = np.zeros(slots + 1, dtype=np.int64)
    np.cumsum(lengths, out=chain_offsets[1:])
    chain = np.zeros(int(chain_offsets[-1]), dtype=np.int64)
    chain_depth = np.zeros(int(chain_offsets[-1]), dtype=np.int64)
    for slot, count, found, up in levels:
        where = _segments(chain_offsets[slot], count)[1]
        chain[where] = found % sources
        chain_depth[where] = up
    return chain_offsets, chain, chain_depth


def _first_of_sources(pairs: np.ndarray, own: int, span: int) -> np.ndarray:
    """Whether each entry of a level of `_chains` is the first of its (key, source) `pairs` (values below
    `span`): the `own` first entries are the keys' own rates, the others their parents' chains, each of
    distinct sources. Without a sort when a table of every pair fits and no key has two own rates of one
    source: then an own entry is always first, an inherited one when its key has no own rate of its source."""
    if span > 1 << 27:
        first = np.unique(pairs, return_index=True)[1]
    else:
        seen = np.zeros(span, dtype=bool)
        seen[pairs[:own]] = True
        if int(np.count_nonzero(seen)) == own:
            kept = np.ones(len(pairs), dtype=bool)
            kept[own:] = ~seen[pairs[own:]]
            return kept
        first = np.unique(pairs, return_index=True)[1]
    kept = np.zeros(len(pairs), dtype=bool)
    kept[first] = True
    return kept


_NUMPY_TYPES = {"B": np.uint8, "H": np.uint16, "I": np.uint32, "i": np.int32, "Q": np.uint64}


def _unsigned(values: np.ndarray) -> str:
    """The narrowest array typecode of B, H, I that holds `values` (non-negative)."""
    top = int(values.max()) if len(values) else 0
    return "B" if top < 2**8 else "H" if top < 2**16 else "I"


def build_columns(folder: Path, tenant: str, columns: Columns, covers: int) -> DeckInfo:
    """Writes the deck of `columns` into `folder`, which must not exist yet.

    The files are written into a sibling folder and renamed into place, so a reader never sees half a deck.
    """
    folder = Path(folder)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    write_columns(partial, tenant, columns)
    return seal(partial, folder, covers)


def seal(partial: Path, folder: Path, covers: int) -> DeckInfo:
    """Gives a deck written by `write_columns` the change-log position it covers and renames it to `folder`
    (a reader never sees half a deck)."""
    meta = json.loads((partial / "meta.json").read_text())
    meta["covers"] = covers
    (partial / "meta.json").write_text(json.dumps(meta))
    size = sum(f.stat().st_size for f in partial.iterdir())
    os.replace(partial, folder)
    return DeckInfo(Path(folder), meta["tenant"], covers, meta["numbers"] + meta["raw"], meta["rates"], size)


def write_columns(partial: Path, tenant: str, columns: Columns) -> None:
    """Writes the deck files of `columns` into the new folder `partial`, covering nothing yet (`seal`).

    The files depend on the rates alone, not on the order they came in: the same rates read from
    PostgreSQL or from an import's rows (store/decks.py) give the same bytes.
    """
    if len(columns.forms) > 65_536:
        raise ValueError("more than 65,536 distinct ways of writing prefixes in one deck")
    number_order = _key_order(columns.numbers)
    # A number key's slot is its place in sorted order (the index `_number_index` searches); raw keys' slots
    # follow, in their trie's ids.
    number_slots = np.arange(len(columns.numbers), dtype=np.int64)
    if number_order is not None:
        number_slots[np.array(number_order, dtype=np.int64)] = np.arange(len(columns.numbers))
    coded = _all_codable(columns.numbers)
    raw_trie, raw_ids = _trie_slots(columns.raw, _key_order(columns.raw))
    slot_of_key = np.concatenate([number_slots, raw_ids + len(columns.numbers)])
    slot = slot_of_key[columns.key] if len(columns.key) else np.zeros(0, dtype=np.int64)
    prices = price_ranks(columns)  # one ranking of the tariffs' prices, for the rates' order and the offers'
    order = _lexsort([slot, *order_ranks(columns, prices)])
    slots = len(columns.numbers) + len(columns.raw)
    offsets = np.zeros(slots + 1, dtype=np.int64)
    np.cumsum(np.bincount(slot, minlength=slots), out=offsets[1:])
    if offsets[-1] >= 2**32:
        raise ValueError("more than 4,294,967,295 rates in one deck")
    # Sources numbered in carrier tag order, so that an offer code's remainder is its source (offer_codes).
    by_carrier = sorted(range(len(columns.sources)),
                        key=lambda i: (columns.sources[i][1] or "", columns.sources[i][0]))
    source_rank = np.zeros(len(columns.sources), dtype=np.int64)
    source_rank[np.array(by_carrier, dtype=np.int64)] = np.arange(len(by_carrier))
    sources = [columns.sources[i] for i in by_carrier]

    # The tariffs the rates use, in the order of their values; the ways of writing prefixes likewise.
    listed = np.array(columns.tariffs, dtype=np.int64).reshape(-1, len(_TARIFF_COLUMNS))
    zones = [columns.zones[0], *sorted(columns.zones[1:])]  # "UTC" first, then by name, whatever the rows' order
    if len(zones) > 1:
        listed[:, 15] = np.array([zones.index(zone) for zone in columns.zones], dtype=np.int64)[listed[:, 15]]
    used = np.zeros(len(columns.tariffs), dtype=bool)
    used[columns.tariff] = True
    tariffs, inverse = np.unique(listed[used], axis=0, return_inverse=True) if used.any() else (listed[:0], None)
    tariff_place = np.zeros(len(columns.tariffs), dtype=np.int64)
    tariff_place[used] = np.asarray(inverse).reshape(-1) if inverse is not None else 0
    forms = [columns.forms[0], *sorted(columns.forms[1:])]  # forms[0] stays ("", True)
    placed = {form: n for n, form in enumerate(forms)}
    form_place = np.array([placed[form] for form in columns.forms], dtype=np.int64)
    dated = bool(np.any(tariffs[:, 4:6] != _NO_MOMENT)) or bool(  # dates, or time windows (rate.Rate.windowed)
        np.any((tariffs[:, 12] != 0) | (tariffs[:, 13] != 0) | (tariffs[:, 14] != DAY)))
    origins = sorted({origin_of(code) for code in np.unique(tariffs[:, 11]).tolist()} - {""})
    codes = _number_codes(columns.numbers if number_order is None else [columns.numbers[i] for i in number_order]) \
        if coded else None
    parents = _parents(columns.numbers, number_order, codes)
    index, numbers_trie = _number_index(columns.numbers, number_order, number_slots, parents[0], coded, codes)
    chain_offsets, chain, chain_depth = np.zeros(slots + 1, dtype=np.int64), *np.zeros((2, 0), dtype=np.int64)
    if not dated and not origins and len(columns.numbers):  # the chains of decks routing reads by column only
        offer = offer_codes(columns, source_rank, prices)[order]
        chain_offsets, chain, chain_depth = _chains(columns.numbers, number_order, number_slots, slots, offsets,
                                                    offer, len(sources), parents)
    if chain_offsets[-1] >= 2**32:
        raise ValueError("more than 4,294,967,295 chain entries in one deck")
    # A byte per entry for up to 256 sources (and 256 prefix levels): routing then reads a chain as bytes.
    chain_code, depth_code = _unsigned(chain), _unsigned(chain_depth)

    texts = sorted({text for text in columns.descriptions if text is not None})
    descriptions = marisa_trie.Trie(texts)
    text_ids = np.array([0 if text is None else descriptions.key_id(text) + 1 for text in columns.descriptions],
                        dtype=np.uint32)
    arrays = {
        "offsets": offsets.astype(np.uint32),
        "source": source_rank[columns.source[order]],
        "tariff": tariff_place[columns.tariff[order]],
        "description": text_ids[columns.description[order]] if len(order) else np.zeros(0, np.uint32),
        "form": form_place[columns.form[order]],
        "tariffs": np.ascontiguousarray(tariffs).reshape(-1),  # row by row: a tariff is read in one unpack
        "chain_offsets": chain_offsets.astype(np.uint32),
        "chain": chain.astype(_NUMPY_TYPES[chain_code]),
        "chain_depth": chain_depth.astype(_NUMPY_TYPES[depth_code]),
        **index,
    }
    for name in ("length", *_RATE_COLUMNS):  # the narrowest type holding the column's values
        if name in arrays:
            arrays[name] = arrays[name].astype(_NUMPY_TYPES[_unsigned(arrays[name])])

    partial = Path(partial)
    partial.mkdir(parents=True)
    if numbers_trie is not None:
        numbers_trie.save(str(partial / "numbers.marisa"))
    raw_trie.save(str(partial / "raw.marisa"))
    descriptions.save(str(partial / "descriptions.marisa"))
    sections: dict[str, list] = {}
    codes = dict(tariffs="q", offsets="I", chain_offsets="I", chain=chain_code, chain_depth=depth_code,
                 **_INDEX_COLUMNS, **{name: _unsigned(arrays[name]) for name in ("length", *_RATE_COLUMNS)
                                      if name in arrays})
    with open(partial / "columns.bin", "wb") as out:
        for name, values in arrays.items():
            assert values.dtype.itemsize == array(codes[name]).itemsize
            position = out.tell()
            padding = -position % 8  # every array starts 8-byte aligned for memoryview.cast
            out.write(b"\0" * padding)
            sections[name] = [position + padding, codes[name], len(values)]
            out.write(values.tobytes())
    meta = {
        "format": FORMAT, "tenant": tenant, "covers": None, "numbers": len(columns.numbers),
        "raw": len(columns.raw), "rates": len(columns.key), "dated": dated, "origins": origins, "sections": sections,
        "coded": coded, "bucket": _bucket(len(columns.numbers)),
        "sources": [list(pair) for pair in sources], "forms": [list(form) for form in forms], "zones": zones,
    }
    (partial / "meta.json").write_text(json.dumps(meta))


class Deck(Lookups):
    """One deck version, mapped read-only.

    Routing reads its columns directly, in C (`native`, _route.c; routing._route_columns): the longest key's
    slot (`deck_keys`) and its prefix keys' (`parent`; a key's length is its code's low 5 bits, or `length`
    in a deck without codes), `offsets`, `source` (per rate, an index into `sources`), and per number slot
    its chain (`chain_offsets`, `chain`: see `_chains`); only the rate a route returns becomes a `Rate`
    (`rate(..., routed=True)`). The other lookups (`matches`, `group`) give `Rate` objects, remembered per slot
    up to a bound.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        meta = json.loads((self.folder / "meta.json").read_text())
        if meta["format"] != FORMAT:
            raise ValueError(f"{folder}: deck format {meta['format']}, this agent reads {FORMAT}")
        self.tenant: str = meta["tenant"]
        self.covers: int = meta["covers"]
        self.size: int = meta["rates"]
        self.dated: bool = meta["dated"]
        self.has_raw = meta["raw"] > 0
        self.origins: Origins = Origins.of(meta["origins"]) if meta["origins"] else NO_ORIGINS
        self._raw_base = meta["numbers"]
        # Eligibility depending on the call's time or caller, or raw keys matching too: routing reads Rates.
        if self.dated or self.origins or self.has_raw:
            self.deck_keys = _no_columns  # type: ignore[method-assign]
        # (pricelist_tag, carrier_tag) per source, numbered in carrier tag order (offer_codes)
        self.sources: list[tuple[str, str | None]] = [tuple(pair) for pair in meta["sources"]]
        self._forms = [tuple(form) for form in meta["forms"]]
        self._zones: list[str] = meta["zones"]
        self._raw = marisa_trie.Trie().mmap(str(self.folder / "raw.marisa"))
        self._descriptions = marisa_trie.Trie().mmap(str(self.folder / "descriptions.marisa"))
        with open(self.folder / "columns.bin", "rb") as file:
            size = os.fstat(file.fileno()).st_size
            self._map = mmap.mmap(file.fileno(), size, prot=mmap.PROT_READ) if size else None
        view = memoryview(self._map) if self._map is not None else memoryview(b"")
        columns = {}
        for name, (offset, code, count) in meta["sections"].items():
            width = array(code).itemsize
            columns[name] = view[offset:offset + width * count].cast(code)
        self.offsets: memoryview = columns["offsets"]
        self.source: memoryview = columns["source"]
        self.chain_offsets: memoryview = columns["chain_offsets"]
        self.chain: memoryview = columns["chain"]
        self.chain_depth: memoryview = columns["chain_depth"]
        self.parent: memoryview = columns["parent"]  # per number slot, the slot of its longest prefix key, or -1
        self._numbers = None  # the number keys' trie, for decks whose keys have no codes (_number_index)
        self._codes = self._first = self.length = None  # per number slot, its key's length: decks without codes
        self._bucket = meta["bucket"]
        if meta["coded"]:
            self._codes, self._first = columns["codes"], columns["first"]
        else:
            self.length = columns["length"]
            self._numbers = marisa_trie.Trie().mmap(str(self.folder / "numbers.marisa"))
            self._id_slot = columns["id_slot"]
        # The walk and the column work of a cold route, in C over these same columns (_route.c); `_walk` and
        # routing._route_columns_python are their definitions, which tests compare them with.
        self.native = _route.Columns(self._codes, self._first, self._bucket, self.parent, self.length, self.offsets,
                                     self.source, self.chain_offsets, self.chain, self.chain_depth)
        self._native_walk = self.native.walk
        # A chain of one byte per entry is read as bytes straight from the map (routing translates them).
        self.map = self._map
        self.chain_bytes: int | None = meta["sections"]["chain"][0] if self.chain.format == "B" else None
        self._tariff = columns["tariff"]
        self._description, self._form = columns["description"], columns["form"]
        self._tariffs_at = meta["sections"]["tariffs"][0]  # tariff t: _TARIFF_ROW at _tariffs_at + t * its size
        self._memo: dict[int, Group] = {}
        self._text_memo: dict[int, str] = {}  # description -> its text (0: none)
        # The price's Rate of a route made in C as `rate(..., routed=True)` makes it (the definition).
        self.native.prices(Rate, _RATE_FIELDS, self.tenant, self.sources, self._forms, self._zones, ROUNDINGS,
                           self._text_memo, self._descriptions.restore_key, _text, self._tariff, self._description,
                           self._form, columns["tariffs"])
        self._last: tuple[str | None, list] = (None, [])  # the last number looked up, and its matches

    def longest_slot(self, number: str) -> int:
        """The slot of the longest number key `number` starts with, -1 when none; `parent` gives the next.

        The keys are in slot order sorted, and a key sorts before every key it is a prefix of, so the
        number's longest key is the last key not above the number, or a prefix of it (a key the number
        starts with is a prefix of every key between it and the number). With codes, searching the
        number's own code in its bucket finds that last key; a few parent steps find the prefix."""
        return Deck.deck_keys(self, number)[1]

    def deck_keys(self, number: str) -> tuple[Deck, int] | None:
        """(self, `longest_slot(number)`), one call less for routing. A deck routing cannot read by its
        columns has `_no_columns` in its place (Deck.__init__)."""
        if self._numbers is not None:
            keys = self._numbers.prefixes(number)
            return self, self._id_slot[self._numbers.key_id(keys[-1])] if keys else -1
        return self, self._native_walk(number)  # _walk in C

    def _walk(self, number: str) -> int:
        """The walk of a coded deck in Python: the definition of `native.walk` (tests compare them)."""
        size = len(number)
        if size > _CODED or not (number.isdigit() and number.isascii()):
            head = _LEADING_DIGITS.match(number).group()[:_CODED]  # keys are digits: only these can match
            if not head:
                return 0 if len(self._codes) and self._codes[0] == 0 else -1  # the key "", if any
            return self._walk(head)
        value = int(number) * _SPANS[size]  # the number's digits padded to _CODED, as its code's value
        codes, first = self._codes, self._first
        bucket = value // self._bucket
        i = _bisect_right(codes, value * 32 + size, first[bucket], first[bucket + 1]) - 1
        parent = self.parent
        while i >= 0:
            code = codes[i]
            if value - (code >> 5) < _SPANS[code & 31]:  # the key's digits begin the number's
                return i
            i = parent[i]
        return -1

    def slot(self, key: str) -> int | None:
        """The slot of a number key of the deck, or None."""
        if self._numbers is not None:
            found = self._numbers.get(key)
            return None if found is None else self._id_slot[found]
        if not _codable(key):
            return None
        code = int(key.ljust(_CODED, "0")) * 32 + len(key)
        i = bisect.bisect_left(self._codes, code)
        return i if i < len(self._codes) and self._codes[i] == code else None

    def key_of(self, number: str, slot: int) -> str:
        """The key of `slot`, which `number` starts with (found by `longest_slot`, `parent`)."""
        return number[:self._codes[slot] & 31 if self.length is None else self.length[slot]]

    def chain_of(self, slot: int) -> bytes | memoryview:
        """The sources of a number slot's chain, in offer order (`_chains`): bytes when a byte holds each."""
        start, end = self.chain_offsets[slot], self.chain_offsets[slot + 1]
        if self.chain_bytes is not None:
            return self._map[self.chain_bytes + start:self.chain_bytes + end]
        return self.chain[start:end]

    def forget(self) -> None:
        """Drops what this process remembers of the deck (its mappings stay)."""
        self._memo.clear()
        self._text_memo.clear()
        self._last = (None, [])

    def _group(self, slot: int, key: str) -> Group:
        found = self._memo.get(slot)
        if found is None:
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
                self._last = (None, [])
            found = self._memo[slot] = tuple(self.rate(i, key) for i in range(self.offsets[slot],
                                                                                 self.offsets[slot + 1]))
        return found

    def rate(self, i: int, key: str, source: int | None = None, routed: bool = False) -> Rate:
        """Rate `i` (of the slot of `key`, of `source` when the caller has read it) as a `Rate`.

        The cold path of routing makes one: its tariff is read in one unpack (a deck may have a tariff for
        every few rates, so remembering them saves little), its fields set one by one on a bare `_Draft`
        (an instance call with 21 arguments costs twice as much). `routed`: for routing over the columns
        (deck_keys), where no rate has dates, a window or a source prefix: those columns are skipped in
        the unpack (fewer integers made) and left at their defaults."""
        at = self._tariffs_at + self._tariff[i] * _TARIFF_SIZE
        if routed:
            fee, price, increment, free, first, minimum, most, scale, rounding, zone = _PRICE_ROW.unpack_from(
                self._map, at)
            start = end = _NO_MOMENT
            origin, days, since, until = _NONE, 0, 0, DAY
        else:
            fee, price, increment, free, start, end, first, minimum, most, scale, rounding, origin, days, since, \
                until, zone = _TARIFF_ROW.unpack_from(self._map, at)
        d = self._description[i]
        if d:
            text = self._text_memo.get(d)
            if text is None:
                text = _text(self._text_memo, self._descriptions.restore_key, d)
        else:
            text = None
        head, key_follows = self._forms[self._form[i]]
        rate = _bare(_Draft)
        rate.tenant = self.tenant
        rate.pricelist_tag, rate.carrier_tag = self.sources[self.source[i] if source is None else source]
        rate.prefix = head + key if key_follows else head
        rate.connect_fee, rate.rate, rate.rate_increment, rate.interval_start = fee, price, increment, free
        rate.description = text
        rate.datetime_start = None if start == _NO_MOMENT else _moment(start)
        rate.datetime_end = None if end == _NO_MOMENT else _moment(end)
        rate.initial_increment = None if first == _NONE else first
        rate.minimum_duration = minimum
        rate.maximum_cost = None if most == _NONE else most
        rate.scale, rate.rounding = scale, ROUNDINGS[rounding]
        rate.source_prefix = "" if origin == _NONE else origin_of(origin)
        # as rate.stored_window: the whole day is None
        rate.weekdays, rate.time_start, rate.time_end = days, since or None, None if until == DAY else until
        rate.timezone = self._zones[zone]
        rate.__class__ = Rate
        return rate

    def group(self, is_raw: bool, key: str) -> Group | None:
        slot = self._raw.get(key) if is_raw else self.slot(key)
        if slot is None:
            return None
        return self._group(slot + (self._raw_base if is_raw else 0), key)

    def number_matches(self, number: str) -> list[tuple[str, Group]]:
        if number == self._last[0]:  # routing asks for the longest match, then for all of them
            return self._last[1]
        found = []
        slot = self.longest_slot(number)
        while slot >= 0:
            key = self.key_of(number, slot)
            found.append((key, self._group(slot, key)))
            slot = self.parent[slot]
        self._last = (number, found)
        return found

    def raw_matches(self, raw: str) -> list[tuple[str, Group]]:
        base = self._raw_base
        found = [(key, self._group(base + slot, key)) for key, slot in self._raw.iter_prefixes_with_ids(raw)]
        found.reverse()
        return found


def _text(memo: dict[int, str], restore_key, d: int) -> str:
    """Description `d`'s text (its trie's key d - 1), remembered in `memo` up to a bound (the C path too)."""
    if len(memo) >= _MEMO_LIMIT:
        memo.clear()
    found = memo[d] = restore_key(d - 1)
    return found


def _no_columns(number: str) -> None:
    """Deck.deck_keys of a deck whose rates have dates, windows or source prefixes (eligibility then depends
    on the call's time or caller too), or with raw keys (they match too): routing reads Rate objects."""
    return None


_LEADING_DIGITS = re.compile("[0-9]*")
_bisect_right = bisect.bisect_right
_SPANS = [10 ** max(_CODED - length, 0) for length in range(32)]  # per key length: the codes' values it spans
_bare = object.__new__
# What Deck.rate sets, in Rate's order.
_RATE_FIELDS = ("tenant", "pricelist_tag", "carrier_tag", "prefix", "connect_fee", "rate", "rate_increment",
                "interval_start", "description", "datetime_start", "datetime_end", "initial_increment",
                "minimum_duration", "maximum_cost", "scale", "rounding", "source_prefix", "weekdays", "time_start",
                "time_end", "timezone")
_TARIFF_ROW = struct.Struct(f"{len(_TARIFF_COLUMNS)}q")  # a tariff as written: _TARIFF_COLUMNS in order
_TARIFF_SIZE = _TARIFF_ROW.size
# The same row without the dates, source prefix and window (padding: not read), for Deck.rate(routed=True).
_PRICE_ROW = struct.Struct("4q16x5q32xq")
if _PRICE_ROW.size != _TARIFF_SIZE or [name for name, _ in _TARIFF_COLUMNS][4:6] != ["start", "end"] or [
        name for name, _ in _TARIFF_COLUMNS][11:15] != ["source_prefix", "weekdays", "time_start", "time_end"]:
    raise ImportError("the tariff's columns changed: update deck._PRICE_ROW")
# Rate's twin without `frozen`, the same slots in the same order: filled by plain assignments, then given
# Rate's class, which costs half of setting a frozen dataclass's slots one by one.
_Draft = dataclasses.make_dataclass("_Draft", [(f.name, f.type) for f in dataclasses.fields(Rate)], slots=True)
if _Draft.__slots__ != Rate.__slots__ or Rate.__slots__ != _RATE_FIELDS:
    raise ImportError("Rate's slots changed: update deck._Draft and Deck.rate")

"""A tenant's rate deck as an immutable, compact artifact that every process of a host maps from one folder.

Built once per deck version (store/decks.py decides when), opened by each worker with `Deck.open`, which
maps the files: the operating system keeps one copy in its page cache however many processes read it.

* `numbers.marisa` / `raw.marisa`: static tries (marisa-trie) of the number keys and raw (URI) keys; the
  trie gives each key an id, and the key's rates sit in *slot* id (raw keys after the number keys).
* `columns.bin`: column arrays. `offsets[slot]..offsets[slot+1]` are the slot's rates, best first (the
  kernel's `Rate.order_key`); per rate its source (pricelist and carrier), tariff, description and the
  form its prefix was written in (`+39` is key `39` written with head `+`); per distinct tariff its
  connect fee, rate, increment, free increments and effective dates.
* `descriptions.marisa`: the distinct descriptions; `meta.json`: counts, section offsets, the sources and
  forms, and the change-log position the deck covers.

A lookup walks the trie (every key a number starts with, in one pass) and turns the slots it meets into
`Rate` objects, remembered per slot up to a bound.
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
from array import array
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterable

import marisa_trie

from .rate import Rate
from .table import Group, Lookups, key_of

FORMAT = 1
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_NO_MOMENT = -(2**63)
_MEMO_LIMIT = 100_000  # slots whose Rate objects a process keeps
# (name, array typecode): the column arrays in file order
_RATE_COLUMNS = (("source", "I"), ("tariff", "I"), ("description", "I"), ("form", "H"))
_TARIFF_COLUMNS = (("connect_fee", "q"), ("rate", "q"), ("rate_increment", "q"), ("interval_start", "q"),
                   ("start", "q"), ("end", "q"))


def _micros(moment: datetime | None) -> int:
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


def build(folder: Path, tenant: str, rates: Iterable[Rate], covers: int) -> DeckInfo:
    """Writes the deck of `rates` (one tenant's active rates) into `folder`, which must not exist yet.

    The files are written into a sibling folder and renamed into place, so a reader never sees half a deck.
    """
    groups: tuple[dict[str, list[Rate]], dict[str, list[Rate]]] = ({}, {})
    for rate in rates:
        is_raw, key = key_of(rate.prefix)
        group = groups[is_raw].get(key)
        if group is None:
            groups[is_raw][key] = [rate]
        else:
            group.append(rate)
    tries = [marisa_trie.Trie(index.keys()) for index in groups]
    descriptions = marisa_trie.Trie({r.description for index in groups for g in index.values() for r in g
                                     if r.description is not None})
    description_ids = {text: descriptions.key_id(text) + 1 for text in descriptions.keys()}

    sources: dict[tuple[str, str | None], int] = {}
    forms: dict[tuple[str, bool], int] = {("", True): 0}  # (head, key follows): how a prefix was written
    tariffs: dict[tuple, int] = {}
    offsets = array("I", [0])
    columns = {name: array(code) for name, code in _RATE_COLUMNS}
    tariff_columns = {name: array(code) for name, code in _TARIFF_COLUMNS}
    dated = False
    for is_raw, (trie, index) in enumerate(zip(tries, groups)):
        for slot in range(len(trie)):
            key = trie.restore_key(slot)
            group = index[key]
            if len(group) > 1:
                group.sort(key=Rate.order_key)
            for rate in group:
                source = sources.setdefault((rate.pricelist_tag, rate.carrier_tag), len(sources))
                tariff = (rate.connect_fee, rate.rate, rate.rate_increment, rate.interval_start,
                          _micros(rate.datetime_start), _micros(rate.datetime_end))
                number = tariffs.get(tariff)
                if number is None:
                    number = tariffs[tariff] = len(tariffs)
                    for (name, _), value in zip(_TARIFF_COLUMNS, tariff):
                        tariff_columns[name].append(value)
                    dated = dated or tariff[4] != _NO_MOMENT or tariff[5] != _NO_MOMENT
                written = rate.prefix
                if written == key or is_raw:  # a raw key is the prefix as written
                    form = ("", True)
                elif key and written.endswith(key):
                    form = (written[:-len(key)], True)
                else:  # separators inside the number: kept whole
                    form = (written, False)
                columns["source"].append(source)
                columns["tariff"].append(number)
                columns["description"].append(description_ids.get(rate.description, 0))
                columns["form"].append(forms.setdefault(form, len(forms)))
            offsets.append(len(columns["source"]))
    if len(forms) > 65_536:
        raise ValueError("more than 65,536 distinct ways of writing prefixes in one deck")

    folder = Path(folder)
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    tries[0].save(str(partial / "numbers.marisa"))
    tries[1].save(str(partial / "raw.marisa"))
    descriptions.save(str(partial / "descriptions.marisa"))
    sections: dict[str, list] = {}
    with open(partial / "columns.bin", "wb") as out:
        for name, values in (("offsets", offsets), *columns.items(), *tariff_columns.items()):
            position = out.tell()
            padding = -position % 8  # every array starts 8-byte aligned for memoryview.cast
            out.write(b"\0" * padding)
            sections[name] = [position + padding, values.typecode, len(values)]
            values.tofile(out)
    meta = {
        "format": FORMAT, "tenant": tenant, "covers": covers, "numbers": len(tries[0]), "raw": len(tries[1]),
        "rates": len(columns["source"]), "dated": dated, "sections": sections,
        "sources": [list(pair) for pair in sources], "forms": [list(form) for form in forms],
    }
    (partial / "meta.json").write_text(json.dumps(meta))
    size = sum(f.stat().st_size for f in partial.iterdir())
    os.replace(partial, folder)
    return DeckInfo(folder, tenant, covers, len(tries[0]) + len(tries[1]), meta["rates"], size)


class Deck(Lookups):
    """One deck version, mapped read-only."""

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
        self._raw_base = meta["numbers"]
        self._sources = [tuple(pair) for pair in meta["sources"]]
        self._forms = [tuple(form) for form in meta["forms"]]
        self._numbers = marisa_trie.Trie().mmap(str(self.folder / "numbers.marisa"))
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
        self._offsets = columns["offsets"]
        self._source, self._tariff = columns["source"], columns["tariff"]
        self._description, self._form = columns["description"], columns["form"]
        self._tariffs = tuple(columns[name] for name, _ in _TARIFF_COLUMNS)
        self._memo: dict[int, Group] = {}

    def _group(self, slot: int, key: str) -> Group:
        found = self._memo.get(slot)
        if found is None:
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            found = self._memo[slot] = tuple(
                self._rate(i, key) for i in range(self._offsets[slot], self._offsets[slot + 1]))
        return found

    def _rate(self, i: int, key: str) -> Rate:
        pricelist, carrier = self._sources[self._source[i]]
        t = self._tariff[i]
        connect_fee, rate, increment, free, start, end = (column[t] for column in self._tariffs)
        text = self._description[i]
        head, key_follows = self._forms[self._form[i]]
        return Rate(self.tenant, pricelist, carrier, head + key if key_follows else head, connect_fee, rate,
                    increment, free, self._descriptions.restore_key(text - 1) if text else None,
                    _moment(start), _moment(end))

    def group(self, is_raw: bool, key: str) -> Group | None:
        trie = self._raw if is_raw else self._numbers
        slot = trie.get(key)
        if slot is None:
            return None
        return self._group(slot + (self._raw_base if is_raw else 0), key)

    def number_matches(self, number: str) -> list[tuple[str, Group]]:
        found = [(key, self._group(slot, key)) for key, slot in self._numbers.iter_prefixes_with_ids(number)]
        found.reverse()
        return found

    def raw_matches(self, raw: str) -> list[tuple[str, Group]]:
        base = self._raw_base
        found = [(key, self._group(base + slot, key)) for key, slot in self._raw.iter_prefixes_with_ids(raw)]
        found.reverse()
        return found


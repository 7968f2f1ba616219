"""The rate table of one tenant: longest-prefix lookup without a length limit, in layers.

A table answers two questions about its *keys* (normalized prefixes, see destination.prefix_key): which
number keys a dialled number starts with, and which raw (URI) keys a raw destination starts with, each
with the key's rates best first. Two kinds of layer answer them:

* `RateTable`, hash maps keyed by the prefix itself with the set of prefix lengths that occur (one probe
  per distinct length, longest first): small tables and the changes made since a deck was built;
* `deck.Deck`, an immutable memory-mapped artifact shared by every process of a host: the bulk.

`Layered` puts a change layer over a deck: a key of the upper layer replaces the same key below it, and an
empty group there removes it. The lookups (`longest`, `matches`) are the same for every layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterable, Iterator, Protocol

from .destination import number_of, prefix_key, scheme_length
from .rate import Rate, best_first

if TYPE_CHECKING:
    from .deck import Deck

Group = tuple[Rate, ...]


@dataclass(frozen=True, slots=True)
class Origins:
    """The distinct source prefixes of a layer's rates (origin rating), and their lengths longest first."""

    prefixes: frozenset[str] = frozenset()
    lengths: tuple[int, ...] = ()

    @classmethod
    def of(cls, prefixes: Iterable[str]) -> "Origins":
        found = frozenset(p for p in prefixes if p)
        return cls(found, tuple(sorted({len(p) for p in found}, reverse=True))) if found else NO_ORIGINS

    def __bool__(self) -> bool:
        return bool(self.prefixes)

    def __or__(self, other: "Origins") -> "Origins":
        if not other or other.prefixes <= self.prefixes:
            return self
        return other if not self else Origins.of(self.prefixes | other.prefixes)

    def longest(self, caller: str) -> str:
        """The longest source prefix the caller's number starts with ("": none). Every source prefix a
        caller matches is a prefix of this one, so it alone decides which rates serve the caller."""
        for size in self.lengths:
            if size <= len(caller) and caller[:size] in self.prefixes:
                return caller[:size]
        return ""


NO_ORIGINS = Origins()


class Layer(Protocol):
    size: int
    dated: bool
    has_raw: bool
    origins: Origins  # some rate has a source prefix: routing then reads Rate objects

    def number_matches(self, number: str) -> list[tuple[str, Group]]:
        """(key, rates) of every number key `number` starts with, longest first."""

    def raw_matches(self, raw: str) -> list[tuple[str, Group]]:
        """(key, rates) of every raw key the raw destination starts with, longest first."""

    def deck_keys(self, number: str) -> tuple[Deck, int] | None:
        """The deck whose columns alone hold every match of `number`, and the slot of the longest number key
        it matches (-1: none; Deck.longest_slot); None when other rates match, or some layer has raw (URI)
        keys, or the deck has dates or source prefixes."""


def key_of(prefix: str) -> tuple[bool, str]:
    """(is_raw, key) of a rate prefix."""
    if prefix.isdigit():  # the common case, without parsing: the prefix is its own key
        return False, prefix
    is_raw, key, _ = prefix_key(prefix)
    return is_raw, key


class Lookups:
    """The longest-prefix lookups every layer shares, written once over `number_matches`/`raw_matches`."""

    __slots__ = ()

    def longest(self: Layer, destination: str, number: str | None = None) -> tuple[str, Group] | None:
        """The longest matching number key and its rates, when that alone decides every match (`number`:
        the destination's `number_of`, when the caller has it).

        Every prefix matching a number is a prefix of its longest match, so numbers sharing the longest
        match share all their matches. Tables with raw (URI) prefixes also match on the raw string: None.
        """
        if self.has_raw:
            return None
        found = self.number_matches(number_of(destination) if number is None else number)
        return found[0] if found else None

    def deck_keys(self, number: str) -> tuple[Deck, int] | None:
        return None

    def matches(self: Layer, destination: str, number: str | None = None) -> Iterator[tuple[int, Group]]:
        """(specificity, rates) of every matching prefix, most specific first, each group best rate first
        (`number`: the destination's `number_of`, when the caller has it)."""
        number = number_of(destination) if number is None else number
        found = [(len(key), rates) for key, rates in self.number_matches(number)]
        if self.has_raw:
            raw = destination.strip()
            found.extend((len(key) - scheme_length(key), rates) for key, rates in self.raw_matches(raw))
            found = _merge_equal_specificity(found)
        return iter(found)


@dataclass(slots=True)
class RateTable(Lookups):
    numbers: dict[str, Group] = field(default_factory=dict)
    raw: dict[str, Group] = field(default_factory=dict)
    number_lengths: tuple[int, ...] = ()
    raw_lengths: tuple[int, ...] = ()
    size: int = 0
    dated: bool = False  # some rate has effective dates or a time window: only then does a call's time matter
    origins: Origins = NO_ORIGINS  # source prefixes of the rates put in (a removed one may stay: harmless)

    @classmethod
    def build(cls, rates: Iterable[Rate]) -> "RateTable":
        table = cls()
        for rate in rates:
            table.add(rate)
        return table.freeze()

    @property
    def has_raw(self) -> bool:
        return bool(self.raw_lengths)

    def add(self, rate: Rate) -> None:
        is_raw, key = key_of(rate.prefix)
        index = self.raw if is_raw else self.numbers
        existing = index.get(key)
        index[key] = (rate,) if existing is None else (*existing, rate)
        self.size += 1
        if rate.datetime_start is not None or rate.datetime_end is not None or rate.windowed:
            self.dated = True  # a time window too: the call's moment matters
        if rate.source_prefix and rate.source_prefix not in self.origins.prefixes:
            self.origins = self.origins | Origins.of((rate.source_prefix,))

    def put(self, is_raw: bool, key: str, rates: Group | list[Rate]) -> None:
        """Sets a key's whole group (an empty group hides the key of a layer below); call `freeze` after."""
        index = self.raw if is_raw else self.numbers
        self.size += len(rates) - len(index.get(key, ()))
        index[key] = rates
        if not self.dated and any(r.datetime_start is not None or r.datetime_end is not None or r.windowed
                                  for r in rates):
            self.dated = True
        if any(r.source_prefix for r in rates):
            self.origins = self.origins | Origins.of(r.source_prefix for r in rates)

    def freeze(self) -> "RateTable":
        """Orders each prefix's rates best first and computes the probe lengths; call after the last change."""
        for index in (self.numbers, self.raw):
            for key, rates in index.items():
                if len(rates) > 1:
                    index[key] = best_first(rates)
        self.number_lengths = tuple(sorted({len(k) for k in self.numbers}, reverse=True))
        self.raw_lengths = tuple(sorted({len(k) for k in self.raw}, reverse=True))
        return self

    def group(self, is_raw: bool, key: str) -> Group | None:
        index = self.raw if is_raw else self.numbers
        rates = index.get(key)
        return _ordered(index, key) if rates.__class__ is list else rates

    def members(self, is_raw: bool, key: str) -> Group | list[Rate] | None:
        """A key's rates in any order: `group` without ordering a group put in unordered."""
        return (self.raw if is_raw else self.numbers).get(key)

    def number_matches(self, number: str) -> list[tuple[str, Group]]:
        numbers = self.numbers
        length = len(number)
        found = []
        for size in self.number_lengths:
            if size <= length:
                key = number[:size]
                rates = numbers.get(key)
                if rates is not None:
                    found.append((key, _ordered(numbers, key) if rates.__class__ is list else rates))
        return found

    def raw_matches(self, raw: str) -> list[tuple[str, Group]]:
        found = []
        for size in self.raw_lengths:
            if size <= len(raw):
                key = raw[:size]
                rates = self.raw.get(key)
                if rates is not None:
                    found.append((key, _ordered(self.raw, key) if rates.__class__ is list else rates))
        return found

    def over(self, base: Layer, changes: dict[tuple[bool, str], Group | list[Rate]],
             size: int | None = None) -> "Layered":
        """A copy of this layer with `changes` (key -> its whole new group: best first, or a list, which is
        ordered when first looked up, so a change costs no sorting of groups nobody asks for) put in, over `base`.

        `size`: the rates visible through this layer over `base` before the changes (None: this layer is
        empty). The new size is counted from the changed keys alone: the cost follows the change, not the
        changes piled up since the deck."""
        *_, layered = self.over_in_steps(base, changes, size, len(changes) + 1)
        return layered

    def over_in_steps(self, base: Layer, changes: dict[tuple[bool, str], Group | list[Rate]],
                      size: int | None = None, step: int = 64) -> Iterator["Layered | None"]:
        """`over`, done `step` changed keys at a time: None after each step (a serving loop may answer
        meanwhile), then the table."""
        upper = self.copy()
        size = base.size if size is None else size
        for done, ((is_raw, key), rates) in enumerate(changes.items(), 1):
            before = self.members(is_raw, key)
            size += len(rates) - len(base.group(is_raw, key) or () if before is None else before)
            upper.put(is_raw, key, rates)
            if done % step == 0:
                yield None
        upper.number_lengths = tuple(sorted({len(k) for k in upper.numbers}, reverse=True))
        upper.raw_lengths = tuple(sorted({len(k) for k in upper.raw}, reverse=True))
        yield Layered(base, upper, size, base.origins | upper.origins)

    def copy(self) -> "RateTable":
        return RateTable(dict(self.numbers), dict(self.raw), self.number_lengths, self.raw_lengths, self.size,
                         self.dated, self.origins)


def _ordered(index: dict[str, Group | list[Rate]], key: str) -> Group:
    """The group of `key`, put in unordered (RateTable.over), ordered best first once, at its first lookup."""
    rates = index[key] = best_first(index[key])
    return rates


@dataclass(frozen=True, slots=True)
class Layered(Lookups):
    """`upper` (the changes since `base` was built) over `base`; an empty group in `upper` removes the key."""

    base: Layer
    upper: RateTable
    size: int  # rates visible through both layers
    origins: Origins = NO_ORIGINS  # of both layers

    @property
    def dated(self) -> bool:
        return self.base.dated or self.upper.dated

    @property
    def has_raw(self) -> bool:
        return self.base.has_raw or self.upper.has_raw

    def group(self, is_raw: bool, key: str) -> Group | None:
        found = self.upper.group(is_raw, key)
        return self.base.group(is_raw, key) if found is None else found

    def number_matches(self, number: str) -> list[tuple[str, Group]]:
        return _overlaid(self.base.number_matches(number), self.upper.number_matches(number))

    def deck_keys(self, number: str) -> tuple[Deck, int] | None:
        if self.upper.raw_lengths or self.upper.number_lengths and self.upper.number_matches(number):
            return None  # raw keys, or a changed key (or a removed one) among the matches
        return self.base.deck_keys(number)

    def raw_matches(self, raw: str) -> list[tuple[str, Group]]:
        return _overlaid(self.base.raw_matches(raw), self.upper.raw_matches(raw))


def _overlaid(below: list[tuple[str, Group]], above: list[tuple[str, Group]]) -> list[tuple[str, Group]]:
    if not above:
        return below
    merged = dict(below)
    merged.update(above)
    return sorted(((k, g) for k, g in merged.items() if g), key=lambda item: -len(item[0]))


def _merge_equal_specificity(found: list[tuple[int, Group]]) -> list[tuple[int, Group]]:
    """Raw and number prefixes of the same specificity compete as one group, most specific first."""
    merged: dict[int, Group] = {}
    for specificity, rates in found:
        if specificity in merged:
            merged[specificity] = best_first(merged[specificity] + rates)
        else:
            merged[specificity] = rates
    return sorted(merged.items(), key=lambda item: -item[0])

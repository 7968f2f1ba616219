"""The in-memory rate table of one tenant: longest-prefix lookup without a length limit.

Prefixes are kept in hash maps keyed by the prefix itself, with the set of prefix lengths that occur;
a lookup probes each occurring length from the longest down. This finds what a character trie finds, with
one hash probe per distinct prefix length instead of one node per character, and a fraction of a
trie's memory in Python (one dict entry per prefix instead of one dict per character).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator

from .destination import number_of, prefix_key, scheme_length
from .rate import Rate


@dataclass(slots=True)
class RateTable:
    numbers: dict[str, tuple[Rate, ...]] = field(default_factory=dict)
    raw: dict[str, tuple[Rate, ...]] = field(default_factory=dict)
    number_lengths: tuple[int, ...] = ()
    raw_lengths: tuple[int, ...] = ()
    size: int = 0
    dated: bool = False  # some rate has effective dates: only then does a call's time matter

    @classmethod
    def build(cls, rates: Iterable[Rate]) -> "RateTable":
        table = cls()
        for rate in rates:
            table.add(rate)
        return table.freeze()

    def add(self, rate: Rate) -> None:
        if rate.prefix.isdigit():  # the common case, without parsing: the prefix is its own key
            is_raw, key = False, rate.prefix
        else:
            is_raw, key, _ = prefix_key(rate.prefix)
        index = self.raw if is_raw else self.numbers
        existing = index.get(key)
        index[key] = (rate,) if existing is None else (*existing, rate)
        self.size += 1
        if rate.datetime_start is not None or rate.datetime_end is not None:
            self.dated = True

    def freeze(self) -> "RateTable":
        """Orders each prefix's rates best first and computes the probe lengths; call after the last `add`."""
        for index in (self.numbers, self.raw):
            for key, rates in index.items():
                if len(rates) > 1:
                    index[key] = tuple(sorted(rates, key=Rate.order_key))
        self.number_lengths = tuple(sorted({len(k) for k in self.numbers}, reverse=True))
        self.raw_lengths = tuple(sorted({len(k) for k in self.raw}, reverse=True))
        return self

    def longest(self, destination: str) -> tuple[Rate, ...] | None:
        """The rates of the longest matching number prefix, when that alone decides every match.

        Every prefix matching a number is a prefix of its longest match, so numbers sharing the longest
        match share all their matches. Tables with raw (URI) prefixes also match on the raw string: None.
        """
        if self.raw_lengths:
            return None
        number = number_of(destination)
        length = len(number)
        numbers = self.numbers
        for size in self.number_lengths:
            if size <= length:
                rates = numbers.get(number[:size])
                if rates is not None:
                    return rates
        return None

    def matches(self, destination: str) -> Iterator[tuple[int, tuple[Rate, ...]]]:
        """(specificity, rates) of every matching prefix, most specific first, each group best rate first."""
        number = number_of(destination)
        found: list[tuple[int, tuple[Rate, ...]]] = []
        numbers = self.numbers
        length = len(number)
        for size in self.number_lengths:
            if size <= length:
                rates = numbers.get(number[:size])
                if rates is not None:
                    found.append((size, rates))
        if self.raw_lengths:
            raw = destination.strip()
            for size in self.raw_lengths:
                if size <= len(raw):
                    rates = self.raw.get(raw[:size])
                    if rates is not None:
                        found.append((size - scheme_length(raw[:size]), rates))
            found = _merge_equal_specificity(found)
        return iter(found)


def _merge_equal_specificity(found: list[tuple[int, tuple[Rate, ...]]]) -> list[tuple[int, tuple[Rate, ...]]]:
    """Raw and number prefixes of the same specificity compete as one group, most specific first."""
    merged: dict[int, tuple[Rate, ...]] = {}
    for specificity, rates in found:
        if specificity in merged:
            merged[specificity] = tuple(sorted(merged[specificity] + rates, key=Rate.order_key))
        else:
            merged[specificity] = rates
    return sorted(merged.items(), key=lambda item: -item[0])

"""A pricelist rate and the two formulas priced from it: the fee of a call and the units a balance buys.

Money is an integer amount without unit (cents, typically); durations and units are whole seconds.
A rate charges `connect_fee` once per answered call plus `rate` for every started `rate_increment`
seconds, the first `interval_start` increments being free. The same reading of `interval_start` (free
increments) is used by both formulas, so the units granted never cost more than the balance they came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction


@dataclass(frozen=True, slots=True)
class Rate:
    tenant: str
    pricelist_tag: str
    carrier_tag: str | None
    prefix: str
    connect_fee: int = 0
    rate: int = 0
    rate_increment: int = 1
    interval_start: int = 0
    description: str | None = None
    datetime_start: datetime | None = None
    datetime_end: datetime | None = None

    @property
    def increment(self) -> int:
        """Seconds per charged increment; a missing or zero increment means per-second billing."""
        return self.rate_increment if self.rate_increment and self.rate_increment > 0 else 1

    def effective_at(self, moment: datetime) -> bool:
        """True when `moment` lies in [datetime_start, datetime_end)."""
        if self.datetime_start is not None and moment < self.datetime_start:
            return False
        if self.datetime_end is not None and moment >= self.datetime_end:
            return False
        return True

    @property
    def is_free(self) -> bool:
        return self.connect_fee == 0 and self.rate == 0

    def price_per_second(self) -> Fraction:
        """What a second costs at this rate, the measure least-cost routing compares."""
        return Fraction(self.rate, self.increment)

    def order_key(self) -> tuple:
        """Total order of rates competing for one prefix: cheapest per second, lower connect fee, then
        pricelist and carrier tags, the prefix as written and the tariff, so no choice depends on load order."""
        return (self.price_per_second(), self.connect_fee, self.pricelist_tag, self.carrier_tag or "",
                self.prefix, self.interval_start, self.rate_increment)

    def snapshot(self) -> dict:
        """The rate as stored with a call (Canyan's `destination_rate`)."""
        return {
            "pricelist_tag": self.pricelist_tag,
            "carrier_tag": self.carrier_tag,
            "prefix": self.prefix,
            "description": self.description,
            "connect_fee": self.connect_fee,
            "rate": self.rate,
            "rate_increment": self.rate_increment,
            "interval_start": self.interval_start,
        }

    def tariff(self) -> list[int]:
        """[connect_fee, rate, increment, free increments]: what the Redis scripts price with."""
        return [self.connect_fee, self.rate, self.increment, max(self.interval_start, 0)]


def fee(rate: Rate, duration: int) -> int:
    """The charge for an answered call of `duration` seconds (the connect fee even for 0 s)."""
    duration = max(duration, 0)
    increments = -(-duration // rate.increment)
    return rate.connect_fee + max(0, increments - max(rate.interval_start, 0)) * rate.rate


def max_units(rate: Rate, available: int, cap: int) -> int:
    """The longest call, in seconds, whose fee `available` pays; 0 means the call must be refused.

    A call that costs anything needs a positive available balance that covers the connect fee. The
    free increments come on top of the paid ones. The result is a whole number of increments, capped.
    """
    if rate.is_free:
        return cap
    if available <= 0 or available < rate.connect_fee:
        return 0
    if rate.rate == 0:
        return cap
    paid = (available - rate.connect_fee) // rate.rate
    units = (max(rate.interval_start, 0) + paid) * rate.increment
    return min(units, cap)


def duration_seconds(begin_ms: int, end_ms: int) -> int:
    """Billed seconds between two instants in milliseconds: every started second counts, days included."""
    if end_ms <= begin_ms:
        return 0
    return -(-(end_ms - begin_ms) // 1000)

"""A pricelist rate, the price schedule it makes, and the two walks of that schedule: the fee of a call and
the units a balance buys.

Money is an integer amount without unit (cents, typically); durations and units are whole seconds.

A rate's billing scheme (`initial_increment`/`rate_increment`, written 60/60, 30/6, 1/1, 60/1) is Canyan's
rate plus three optional fields; the fee of an answered call of `duration` seconds is, in this order:

1. billed seconds: `max(duration, minimum_duration)` (minimum_duration default 0);
2. the billed seconds are cut into increments: a first block of `initial_increment` seconds (default:
   `rate_increment`), then increments of `rate_increment` seconds; every started increment counts;
3. the first `interval_start` increments are free (the block is the first of them); a paid block costs
   `rate × initial_increment / rate_increment` (initial_increment is a multiple of rate_increment, so this
   is exact), every paid increment after it `rate`;
4. `connect_fee` is added once;
5. the total is capped at `maximum_cost` when the rate has one.

A rate without the new fields gives exactly Canyan's fee, `connect_fee + max(0, ceil(d / rate_increment) −
interval_start) × rate`.

Decimal prices: a pricelist has a money `scale` (0..MAX_SCALE decimal digits below the account's integer
unit) and a `rounding` (`up`, `half_even`, `down`). Its rates' `connect_fee`, `rate` and `maximum_cost` are
integers in units of 10**-scale (`0.0085` at scale 4 is 85). Steps 1-5 run exactly in those units and the
total is rounded once, to the integer unit, with the pricelist's rounding. Scale 0 (the default) is
today's integer money: nothing is rounded.

`Rate.schedule()` turns this into a `Schedule` of seven integers (free increments folded into the block),
nine with decimal prices (10**scale and the rounding), which is what crosses to Redis: cache/rating.lua walks the very same schedule (`fee`, `max_units`) and
knows nothing of the rate's columns, so the formula lives here and only the walks exist twice (the tests
drive the real Redis functions against `fee`, `max_units` and pricing/decision.py).

Exactness in Redis: Lua numbers are doubles, exact below 2**53. Calls last at most LONGEST_CALL seconds
(the Redis library refuses a --max-units above it), and a rate is refused at import unless every amount it
can produce for such a call, and every price of its schedule, stays below MONEY_LIMIT (`limit_error`); a
scaled amount stays below MONEY_LIMIT − 10**scale, so that the budget a balance buys (`budget`, at most
the fee of the call it cannot pay + 10**scale − 1) is exact too.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from fractions import Fraction
from typing import NamedTuple

LONGEST_CALL = 10_000_000  # seconds (115 days): no duration priced anywhere is longer (--max-units at most)
MONEY_LIMIT = 2**53  # every amount stays below: exact in a double (Redis' Lua)
MAX_SCALE = 6  # decimal digits of a price below the integer unit
MAX_SOURCE_PREFIX = 16  # digits of a rate's source prefix (E.164 numbers have at most 15)
ROUNDINGS = ("up", "half_even", "down")  # a pricelist's rounding; its index is the schedule's code


class Schedule(NamedTuple):
    """A rate's prices as the walks read them (cache/rating.lua reads the same numbers, in order: seven for
    a pricelist of scale 0, nine with `unit` and `rounding` otherwise; see Rate.tariff).

    A call of s > 0 billed seconds costs connect_fee + block_price + ceil((s − block) / increment) ×
    increment_price (the last term only when s > block), capped at `cap` (−1: no cap); 0 s costs the
    connect fee alone. Billed seconds are max(duration, minimum). Amounts are in units of 1/`unit` of
    money; the capped total is rounded once to money (`money`).
    """

    connect_fee: int
    block: int  # seconds of the first block, free increments included (at most LONGEST_CALL)
    block_price: int
    increment: int
    increment_price: int
    minimum: int  # seconds billed at least
    cap: int  # the most a call costs, or -1
    unit: int = 1  # 10**scale: schedule amounts per unit of money (1: they are money)
    rounding: int = 0  # how a total becomes money: ROUNDINGS index (0 up, 1 half_even, 2 down)


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
    initial_increment: int | None = None  # seconds of the first block; None: rate_increment
    minimum_duration: int = 0
    maximum_cost: int | None = None
    scale: int = 0  # the pricelist's: amounts above are in units of 10**-scale
    rounding: str = "up"  # the pricelist's, one of ROUNDINGS
    source_prefix: str = ""  # the caller's number must start with it (digits, normalized); "": any origin

    @property
    def unit(self) -> int:
        return 10 ** self.scale if self.scale > 0 else 1

    @property
    def increment(self) -> int:
        """Seconds per charged increment; a missing or zero increment means per-second billing."""
        return self.rate_increment if self.rate_increment and self.rate_increment > 0 else 1

    @property
    def first_increment(self) -> int:
        """Seconds of the first block; missing or zero: one increment."""
        return self.initial_increment if self.initial_increment and self.initial_increment > 0 else self.increment

    def effective_at(self, moment: datetime) -> bool:
        """True when `moment` lies in [datetime_start, datetime_end)."""
        if self.datetime_start is not None and moment < self.datetime_start:
            return False
        if self.datetime_end is not None and moment >= self.datetime_end:
            return False
        return True

    @property
    def is_free(self) -> bool:
        return self.connect_fee == 0 and self.rate == 0 or self.maximum_cost == 0

    def price_per_second(self) -> Fraction:
        """What a second of the increments costs, the measure least-cost routing compares first."""
        return Fraction(self.rate, self.increment * self.unit)

    def scheme_key(self) -> tuple:
        """After (price per second, connect fee), what makes one scheme cheaper than another at that price:
        a lower minimum duration, a shorter first block beyond one increment, a lower cap (none: highest).
        All zero for a rate without the new fields, so such decks order as before. Amounts compare as money."""
        cap = Fraction(self.maximum_cost, self.unit) if self.maximum_cost is not None else MONEY_LIMIT
        return (max(self.minimum_duration, 0), self.first_increment - self.increment, cap)

    def order_key(self) -> tuple:
        """Total order of rates competing for one prefix: cheapest per second, lower connect fee, the scheme
        (`scheme_key`), then pricelist and carrier tags, the prefix as written and the tariff, so no choice
        depends on load order."""
        return (self.price_per_second(), Fraction(self.connect_fee, self.unit), *self.scheme_key(), self.pricelist_tag,
                self.carrier_tag or "", self.prefix, self.interval_start, self.rate_increment, self.source_prefix)

    def serves(self, caller: str) -> bool:
        """Whether the rate applies to a call from `caller` (the caller's number, `destination.number_of`)."""
        return not self.source_prefix or caller.startswith(self.source_prefix)

    def snapshot(self) -> dict:
        """The rate as stored with a call (Canyan's `destination_rate`); the scheme fields only when set, so
        the records of a deck without them read as before."""
        found = {
            "pricelist_tag": self.pricelist_tag,
            "carrier_tag": self.carrier_tag,
            "prefix": self.prefix,
            "description": self.description,
            "connect_fee": self.connect_fee,
            "rate": self.rate,
            "rate_increment": self.rate_increment,
            "interval_start": self.interval_start,
        }
        if self.initial_increment is not None:
            found["initial_increment"] = self.initial_increment
        if self.minimum_duration:
            found["minimum_duration"] = self.minimum_duration
        if self.maximum_cost is not None:
            found["maximum_cost"] = self.maximum_cost
        if self.scale:
            found["scale"] = self.scale
            found["rounding"] = self.rounding
        if self.source_prefix:
            found["source_prefix"] = self.source_prefix
        return found

    def schedule(self) -> Schedule:
        """The rate as a price schedule: the free increments become a free first block."""
        increment, first = self.increment, self.first_increment
        free = max(self.interval_start, 0)
        if free:
            block, price = min(first + (free - 1) * increment, LONGEST_CALL), 0
        else:
            # exact when `first` is a multiple of `increment` (the import requires it); rounded up otherwise
            block, price = min(first, LONGEST_CALL), -(-self.rate * first // increment)
        cap = -1 if self.maximum_cost is None else max(self.maximum_cost, 0)
        return Schedule(self.connect_fee, block, price, increment, self.rate,
                        min(max(self.minimum_duration, 0), LONGEST_CALL), cap, self.unit,
                        ROUNDINGS.index(self.rounding) if self.unit > 1 else 0)

    def tariff(self) -> list[int]:
        """The schedule as the Redis library reads it: the seven numbers of integer money as before (what an
        agent sends per call does not grow), nine for a scaled pricelist."""
        schedule = self.schedule()
        return list(schedule) if schedule.unit > 1 else list(schedule[:7])


def money(amount: int, unit: int, rounding: int) -> int:
    """A non-negative amount of 1/`unit` units rounded once to money: up, half to even, or down."""
    if unit <= 1:
        return amount
    whole, rest = divmod(amount, unit)
    if rest == 0 or rounding == 2:
        return whole
    if rounding == 1 and (2 * rest < unit or 2 * rest == unit and whole % 2 == 0):
        return whole
    return whole + 1


def budget(available: int, unit: int, rounding: int) -> int:
    """The largest amount of 1/`unit` units that rounds (`money`) to at most `available` (>= 0) money."""
    if unit <= 1:
        return available
    if rounding == 0:
        return available * unit
    if rounding == 2:
        return available * unit + unit - 1
    return available * unit + unit // 2 - available % 2  # a tie rounds to the even neighbour


def walk_fee(schedule: Schedule, duration: int) -> int:
    """The fee of an answered call of `duration` seconds on `schedule` (the connect fee even for 0 s), in
    money: the exact amount (`walk_amount`) rounded once."""
    return money(walk_amount(schedule, duration), schedule.unit, schedule.rounding)


def walk_amount(schedule: Schedule, duration: int) -> int:
    """The fee of `walk_fee` before it is rounded: in the schedule's units, exact."""
    connect_fee, block, block_price, increment, increment_price, minimum, cap = schedule[:7]
    billed = max(duration, minimum, 0)
    amount = connect_fee
    if billed > 0:
        amount += block_price
        if billed > block:
            amount += -(-(billed - block) // increment) * increment_price
    if 0 <= cap < amount:
        amount = cap
    return amount


def walk_units(schedule: Schedule, available: int, cap: int) -> int:
    """The longest call, in seconds (at most `cap`), whose fee `available` pays; 0: refuse the call.

    A call that can cost anything needs a positive available balance covering the least an answered call
    costs (the connect fee, and the minimum duration's price). The answer is `cap` when the balance pays a
    call of `cap` seconds, else the end of the last increment it pays (free increments included). A scaled
    schedule walks the largest exact amount whose rounded fee the balance pays (`budget`), so the units
    granted never cost more than `available` once rounded.
    """
    connect_fee, block, block_price, increment, increment_price, _, most = schedule[:7]
    if most == 0 or connect_fee == 0 and block_price == 0 and increment_price == 0:
        return cap
    if available <= 0 or available < walk_fee(schedule, 0):
        return 0
    if walk_fee(schedule, cap) <= available:
        return cap
    # the balance does not pay `cap` seconds, so the cap of the schedule (if any) exceeds it: it plays no part
    spare = budget(available, schedule.unit, schedule.rounding) - connect_fee - block_price
    if spare < 0 or increment_price == 0:
        return 0
    return block + spare // increment_price * increment


def fee(rate: Rate, duration: int) -> int:
    """The charge for an answered call of `duration` seconds (the connect fee even for 0 s)."""
    return walk_fee(rate.schedule(), duration)


def max_units(rate: Rate, available: int, cap: int) -> int:
    """The longest call, in seconds, whose fee `available` pays, capped; 0 means the call must be refused."""
    return walk_units(rate.schedule(), available, cap)


def limit_error(rate: Rate) -> tuple[str, str] | None:
    """(column, message) when an amount of `rate` could leave the exact range of the Redis library: a price
    of its schedule, its cap, or the fee of a LONGEST_CALL-second call without the cap (in the schedule's
    units, with room for a budget above it: `walk_units`)."""
    if not 0 <= rate.scale <= MAX_SCALE:
        return "scale", f"scale must be between 0 and {MAX_SCALE}"
    if rate.rounding not in ROUNDINGS:
        return "rounding", f"rounding must be one of {', '.join(ROUNDINGS)}"
    schedule = rate.schedule()
    for column, amount in (("connect_fee", schedule.connect_fee), ("rate", schedule.block_price),
                           ("rate", schedule.increment_price), ("maximum_cost", schedule.cap)):
        if amount >= MONEY_LIMIT:
            return column, f"{column} must be below 2**53"
    if walk_amount(schedule._replace(cap=-1), LONGEST_CALL) + schedule.unit - 1 >= MONEY_LIMIT:
        return "rate", f"the fee of a {LONGEST_CALL} s call must stay below 2**53"
    return None


def duration_seconds(begin_ms: int, end_ms: int) -> int:
    """Billed seconds between two instants in milliseconds: every started second counts, days included."""
    if end_ms <= begin_ms:
        return 0
    return -(-(end_ms - begin_ms) // 1000)

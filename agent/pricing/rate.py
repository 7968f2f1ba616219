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
nine with decimal prices (10**scale and the rounding), which is what crosses to Redis: cache/rating.lua
walks the very same schedule (`fee`, `max_units`) and knows nothing of the rate's columns, so the formula
lives here and only the walks exist twice (the tests drive the real Redis functions against `fee`,
`max_units` and pricing/decision.py).

Exactness in Redis: Lua numbers are doubles, exact below 2**53. Calls last at most LONGEST_CALL seconds
(the Redis library refuses a --max-units above it), and a rate is refused at import unless every amount it
can produce for such a call, and every price of its schedule, stays below MONEY_LIMIT (`limit_error`); a
scaled amount stays below MONEY_LIMIT − 10**scale, so that the budget a balance buys (`budget`, at most
the fee of the call it cannot pay + 10**scale − 1) is exact too.

Time windows (peak / off-peak / weekend): a rate may carry `weekdays` (a set of local weekdays), and
`time_start`/`time_end` (seconds of the local day, end exclusive; an end at or below the start wraps over
midnight: 22:00-06:00 covers 22:00-24:00 and 00:00-06:00), judged in its pricelist's `timezone` (IANA, DST
by zoneinfo). Each moment is judged by its own local weekday and time of day (`Rate.covers`): `sat,sun
00:00-06:00` covers the early hours of Saturday and of Sunday, not of Monday. A call priced by windowed
rates gets a `Timeline`: the schedules in force from each moment on (the rate the routing chooses there),
the first from the authorization's moment, each later one from the epoch second it starts. Its fee is
walked segment by segment (`walk_amount_at`): the call's seconds are counted from its answer, and the
seconds of a segment cost what the segment's own schedule charges for them, `A(end) − A(start)` where
A(x) is the schedule's price of the first x billed seconds without the connect fee. So an increment is
priced at the window in force when it starts, the first block at the window of the answer, and the connect
fee, minimum duration, cap and rounding are those of the schedule in force at the answer. A rate without
windows makes a plain `Schedule`, exactly as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from fractions import Fraction
from typing import NamedTuple, Sequence, Union
from zoneinfo import ZoneInfo

LONGEST_CALL = 10_000_000  # seconds (115 days): no duration priced anywhere is longer (--max-units at most)
MONEY_LIMIT = 2**53  # every amount stays below: exact in a double (Redis' Lua)
MAX_SCALE = 6  # decimal digits of a price below the integer unit
MAX_SOURCE_PREFIX = 16  # digits of a rate's source prefix (E.164 numbers have at most 15)
ROUNDINGS = ("up", "half_even", "down")  # a pricelist's rounding; its index is the schedule's code
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # a rate's `weekdays` bit n is WEEKDAYS[n]
EVERY_DAY = 0b1111111
DAY = 86_400


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
    weekdays: int = 0  # local weekdays the rate applies on, bit n for WEEKDAYS[n]; 0: every day (no window)
    time_start: int | None = None  # seconds of the local day the window starts at; None: 0
    time_end: int | None = None  # seconds of the local day it ends at (exclusive); None: 86400 (midnight)
    timezone: str = "UTC"  # the pricelist's IANA time zone, where windows are judged

    @property
    def windowed(self) -> bool:
        """Whether the rate applies only in a time window (weekdays or hours)."""
        return bool(self.weekdays) or self.time_start is not None or self.time_end is not None

    def covers(self, moment: datetime) -> bool:
        """Whether the rate's window holds `moment` (aware), judged in the pricelist's time zone."""
        if not self.windowed:
            return True
        local = moment.astimezone(ZoneInfo(self.timezone))
        if self.weekdays and not self.weekdays >> local.weekday() & 1:
            return False
        second = local.hour * 3600 + local.minute * 60 + local.second
        start = self.time_start or 0
        end = DAY if self.time_end is None else self.time_end
        return start <= second < end if start < end else second >= start or second < end

    def boundaries(self, begin: int, end: int) -> list[int]:
        """Epoch seconds in (begin, end] at which `covers` may change: the local starts and ends of the window
        and, with weekdays, local midnights, each read in both folds around a DST change, and the change
        itself when it skips over one of them (a local time that does not exist)."""
        if not self.windowed:
            return []
        zone = ZoneInfo(self.timezone)
        marks = {self.time_start or 0, DAY if self.time_end is None else self.time_end}
        if self.weekdays:
            marks.add(0)
        found: set[int] = set()
        day = datetime.fromtimestamp(begin, zone).date() - timedelta(days=1)
        last = datetime.fromtimestamp(end, zone).date() + timedelta(days=1)
        while day <= last:
            for mark in marks:
                local = datetime.combine(day + timedelta(days=mark // DAY), _clock(mark % DAY), zone)
                early = int(local.replace(fold=1).timestamp())
                late = int(local.timestamp())
                found.update((early, late))
                if early < late:  # a local time skipped by a change to summer time: it flips at the change
                    found.add(_change(zone, min(early, late), max(early, late)))
            day += timedelta(days=1)
        return sorted(moment for moment in found if begin < moment <= end)

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
                self.carrier_tag or "", self.prefix, self.interval_start, self.rate_increment, self.source_prefix,
                self.weekdays, self.time_start or 0, DAY if self.time_end is None else self.time_end)

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
        if self.windowed:
            found["weekdays"] = weekdays_text(self.weekdays)
            found["time_start"] = clock_text(self.time_start)
            found["time_end"] = clock_text(self.time_end)
            found["timezone"] = self.timezone
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


def best_first(rates: Sequence[Rate]) -> tuple[Rate, ...]:
    """`rates` in `Rate.order_key`'s order, computed without its Fractions: a group's amounts compare as
    whole numbers over the group's common denominators, which is exact."""
    if len(rates) < 2:
        return tuple(rates)
    per_second = math.lcm(*(rate.increment * rate.unit for rate in rates))
    money = math.lcm(*(rate.unit for rate in rates))
    no_cap = MONEY_LIMIT * money

    def key(rate: Rate) -> tuple:
        unit = rate.unit
        cap = no_cap if rate.maximum_cost is None else rate.maximum_cost * (money // unit)
        return (rate.rate * (per_second // (rate.increment * unit)), rate.connect_fee * (money // unit),
                max(rate.minimum_duration, 0), rate.first_increment - rate.increment, cap, rate.pricelist_tag,
                rate.carrier_tag or "", rate.prefix, rate.interval_start, rate.rate_increment, rate.source_prefix,
                rate.weekdays, rate.time_start or 0, DAY if rate.time_end is None else rate.time_end)

    return tuple(sorted(rates, key=key))


class WindowError(ValueError):
    """A bad window column: `column` names it."""

    def __init__(self, column: str, message: str) -> None:
        super().__init__(message)
        self.column = column


def _clock(second: int) -> time:
    return time(second // 3600, second // 60 % 60, second % 60)


def _change(zone: ZoneInfo, low: int, high: int) -> int:
    """The first epoch second in (low, high] whose UTC offset in `zone` differs from low's."""
    before = datetime.fromtimestamp(low, zone).utcoffset()
    while high - low > 1:
        middle = (low + high) // 2
        if datetime.fromtimestamp(middle, zone).utcoffset() == before:
            low = middle
        else:
            high = middle
    return high


def weekdays_of(text: str | None) -> int:
    """A `weekdays` column (`mon-fri`, `sat,sun`, `mon,wed-fri`; case and spaces ignored) as its bits; "" or
    None: 0 (every day, no window). ValueError naming the bad part."""
    if text is None or not text.strip():
        return 0
    bits = 0
    for part in text.lower().replace(" ", "").split(","):
        first, dash, last = part.partition("-")
        if first not in WEEKDAYS or dash and last not in WEEKDAYS:
            raise ValueError(f"weekdays must be days among {','.join(WEEKDAYS)} written as mon-fri or sat,sun, "
                             f"got {text!r}")
        low, high = WEEKDAYS.index(first), WEEKDAYS.index(last or first)
        days = range(low, high + 1) if low <= high else [*range(low, 7), *range(0, high + 1)]  # fri-mon wraps
        for day in days:
            bits |= 1 << day
    return bits


def weekdays_text(bits: int) -> str | None:
    """`weekdays_of` reversed, in runs (`mon-fri`, `sat,sun`); None for 0."""
    if not bits:
        return None
    parts, day = [], 0
    while day < 7:
        if bits >> day & 1:
            last = day
            while last + 1 < 7 and bits >> last + 1 & 1:
                last += 1
            separator = "," if last == day + 1 else "-"  # two days are listed, a longer run is a range
            parts.append(WEEKDAYS[day] if last == day else f"{WEEKDAYS[day]}{separator}{WEEKDAYS[last]}")
            day = last + 1
        else:
            day += 1
    return ",".join(parts)


def clock_of(text: str | None, column: str) -> int | None:
    """A `time_start`/`time_end` column (`08:00`, `18:30:15`, `24:00` for the end of the day) as seconds of
    the day; "" or None: None. ValueError naming the column."""
    if text is None or not text.strip():
        return None
    parts = text.strip().split(":")
    if len(parts) not in (2, 3) or not all(len(p) == 2 and p.isascii() and p.isdigit() for p in parts):
        raise WindowError(column, f"{column} must be a time of day written HH:MM or HH:MM:SS, got {text!r}")
    hours, minutes, seconds = (int(p) for p in (*parts, "00")[:3])
    if minutes > 59 or seconds > 59 or hours > 24 or hours == 24 and (minutes or seconds):
        raise WindowError(column, f"{column} must be a time of day between 00:00 and 24:00, got {text!r}")
    return hours * 3600 + minutes * 60 + seconds


def clock_text(second: int | None) -> str | None:
    if second is None:
        return None
    text = f"{second // 3600:02d}:{second // 60 % 60:02d}"
    return text + f":{second % 60:02d}" if second % 60 else text


def window_of(weekdays: str | None, time_start: str | None, time_end: str | None) -> tuple[int, int, int]:
    """A rate's window columns as text, checked and canonical as stored: (weekday bits, start, end) in
    seconds of the day, every day 0 (all seven days are every day), the whole day 0 to 86400, an end at
    00:00 after a start meaning midnight. WindowError naming the column."""
    try:
        bits = weekdays_of(weekdays)
    except ValueError as exc:
        raise WindowError("weekdays", str(exc)) from None
    start, end = clock_of(time_start, "time_start"), clock_of(time_end, "time_end")
    return window_checked(bits, start, end)


def window_checked(bits: int, start: int | None, end: int | None) -> tuple[int, int, int]:
    """`window_of` for values already numbers (None: not given)."""
    if not 0 <= bits <= EVERY_DAY:
        raise WindowError("weekdays", "weekdays must be a set of days")
    if start is not None and not 0 <= start < DAY:
        raise WindowError("time_start", "time_start must be from 00:00 to before 24:00")
    if end is not None and not 0 <= end <= DAY:
        raise WindowError("time_end", "time_end must be from 00:00 to 24:00")
    start = start or 0
    if end == 0:
        if not start:
            raise WindowError("time_end", "time_end 00:00 after a start at 00:00 leaves an empty window")
        end = DAY  # until midnight
    end = DAY if end is None else end
    if start == end:
        raise WindowError("time_end", "time_end must differ from time_start (an end below the start wraps over "
                                      "midnight)")
    return (0 if bits == EVERY_DAY else bits), start, end


def stored_window(bits: int, start: int, end: int) -> tuple[int, int | None, int | None]:
    """A stored window (window_of) as a Rate's fields: the whole day is None."""
    return bits, (start or None), (None if end == DAY else end)


def zone_of(name: str | None) -> str:
    """A pricelist's `timezone` checked: an IANA name zoneinfo knows; "" or None: UTC. ValueError otherwise."""
    if name is None or not name.strip():
        return "UTC"
    try:
        ZoneInfo(name.strip())
    except (ValueError, KeyError, OSError):
        raise ValueError(f"timezone must be an IANA time zone name such as Europe/Rome, got {name!r}") from None
    return name.strip()


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


class Piece(NamedTuple):
    """One schedule of a `Timeline`: in force from epoch second `start` on (the first: from any moment)."""

    start: int
    schedule: Schedule


Timeline = tuple[Piece, ...]  # the schedules of a windowed call, by start, in one unit of money (`timeline`)
Tariff = Union[Schedule, Timeline]  # what a party's price is: one schedule, or a timeline when windows matter


def timeline(pieces: Sequence[tuple[int, Rate]]) -> Timeline:
    """The timeline of the rates in force from each start on. Their schedules are put in the finest unit
    among them (prices of rates of different scales add up exactly), rounded as the first rate of that unit."""
    unit = max(rate.unit for _, rate in pieces)
    rounding = next(ROUNDINGS.index(rate.rounding) for _, rate in pieces if rate.unit == unit) if unit > 1 else 0
    found = []
    for start, rate in pieces:
        schedule, factor = rate.schedule(), unit // rate.unit
        found.append(Piece(start, schedule._replace(
            connect_fee=schedule.connect_fee * factor, block_price=schedule.block_price * factor,
            increment_price=schedule.increment_price * factor,
            cap=schedule.cap * factor if schedule.cap > 0 else schedule.cap, unit=unit, rounding=rounding)))
    return tuple(found)


def timeline_exact(line: Timeline) -> bool:
    """Whether every amount a walk of `line` can reach stays exact in Redis (below MONEY_LIMIT, with room for
    a budget): each rate is bounded at import in its own unit, but a timeline of rates of different scales
    puts them in the finest. A bound over any answer time: each segment costs at most its block and one
    increment more than its seconds' increments; twice that, since the units' walk adds a segment's price up
    to its start to what is left of the budget (at most the whole call's amount)."""
    most = max(piece.schedule.connect_fee for piece in line) + sum(
        s.block_price + (-(-LONGEST_CALL // s.increment) + 1) * s.increment_price for _, s in line)
    return 2 * most + line[0].schedule.unit - 1 < MONEY_LIMIT and all(s.cap < MONEY_LIMIT for _, s in line)


def in_force(line: Timeline, start_ms: int) -> list[tuple[int, Schedule]]:
    """(offset, schedule) of a call answered at `start_ms`: the call's second (counted from the answer) from
    which each schedule prices it, the one in force at the answer first at 0. A second belongs to the
    schedule in force when it starts."""
    found: list[tuple[int, Schedule]] = []
    for index, (start, schedule) in enumerate(line):
        offset = max(0, -(-(start * 1000 - start_ms) // 1000)) if index else 0
        if found and offset <= found[-1][0]:
            found[-1] = (offset, schedule)
        else:
            found.append((offset, schedule))
    return found


def _priced(schedule: Schedule, seconds: int) -> int:
    """A(x): the price of the first `seconds` billed seconds on `schedule`, connect fee, minimum and cap aside."""
    if seconds <= 0:
        return 0
    if seconds <= schedule.block:
        return schedule.block_price
    return schedule.block_price + -(-(seconds - schedule.block) // schedule.increment) * schedule.increment_price


def walk_amount_at(line: Timeline, duration: int, start_ms: int) -> int:
    """The exact amount of a call answered at `start_ms` lasting `duration` seconds on a timeline: segment by
    segment, each the difference of its schedule's price between the segment's ends (see the module)."""
    pieces = in_force(line, start_ms)
    head = pieces[0][1]
    billed = max(duration, head.minimum, 0)
    amount = head.connect_fee
    for index, (begin, schedule) in enumerate(pieces):
        if begin >= billed:
            break
        end = min(billed, pieces[index + 1][0]) if index + 1 < len(pieces) else billed
        amount += _priced(schedule, end) - _priced(schedule, begin)
    if 0 <= head.cap < amount:
        amount = head.cap
    return amount


def walk_fee_at(line: Timeline, duration: int, start_ms: int) -> int:
    """`walk_fee` of a timeline: the call answered at `start_ms`."""
    head = line[0].schedule
    return money(walk_amount_at(line, duration, start_ms), head.unit, head.rounding)


def walk_units_at(line: Timeline, available: int, cap: int, start_ms: int) -> int:
    """`walk_units` of a timeline for a call answered at `start_ms`: the segments are paid in order until the
    budget runs out within one, which ends the call at the last increment of that segment it pays."""
    pieces = in_force(line, start_ms)
    head = pieces[0][1]
    if head.cap == 0 or all(s.connect_fee == 0 and s.block_price == 0 and s.increment_price == 0 for _, s in pieces):
        return cap
    if available <= 0 or available < walk_fee_at(line, 0, start_ms):
        return 0
    if walk_fee_at(line, cap, start_ms) <= available:
        return cap
    spare = budget(available, head.unit, head.rounding) - head.connect_fee
    for index, (begin, schedule) in enumerate(pieces):
        reach = spare + _priced(schedule, begin)  # the most this schedule's price may reach in the segment
        if index + 1 < len(pieces):
            end = pieces[index + 1][0]
            if _priced(schedule, end) <= reach:
                spare = reach - _priced(schedule, end)
                continue
        if reach < schedule.block_price or schedule.increment_price == 0:
            return 0  # the first block is not paid (a free remainder would have paid `cap`)
        return schedule.block + (reach - schedule.block_price) // schedule.increment_price * schedule.increment
    return cap


def tariff_fee(tariff: Tariff, duration: int, start_ms: int = 0) -> int:
    """The fee of a party's tariff (a schedule, or a timeline walked from the answer at `start_ms`)."""
    if isinstance(tariff, Schedule):
        return walk_fee(tariff, duration)
    return walk_fee_at(tariff, duration, start_ms)


def tariff_units(tariff: Tariff, available: int, cap: int, start_ms: int = 0) -> int:
    if isinstance(tariff, Schedule):
        return walk_units(tariff, available, cap)
    return walk_units_at(tariff, available, cap, start_ms)


def tariff_numbers(tariff: Tariff) -> list:
    """A tariff as the Redis library reads it: a schedule's numbers (Rate.tariff), or a timeline as a list of
    [start, nine numbers] per piece."""
    if isinstance(tariff, Schedule):
        return list(tariff) if tariff.unit > 1 else list(tariff[:7])
    return [[start, *schedule] for start, schedule in tariff]


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

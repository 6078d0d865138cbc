"""The bitmap compiler: a bound query becomes a bitwise expression over pivoted index rows.

The pivot form (design §4): one index scan over the needed keys (`key = ANY(:keys)`), one
`bit_or(bits) FILTER (WHERE key = :kN)` per key, `GROUP BY chunk`, then `& | ~` (the functions
bitand / bitor / bitnot) over those columns. Keys and values travel as bound parameters; the only
SQL text written here is fixed. A key without a row in a chunk reads as all zeros.

Field terms become unions of closed intervals over the field's encoded integers and each interval
a chain over the bit slices: `x >= c` folds the slices from the lowest bit up (`B_i & acc` where c
has a 1, `B_i | acc` where it has a 0, starting from the field's presence), so a threshold costs
one operation per slice. Derived fields are rewritten onto the stored dates first: `age` onto
`birthday`, `days_since_last_purchase` onto `last_purchase`, and `orders_365d >= k` onto "the
k-th most recent order is within 365 days". NULL rule: every chain starts from the field's
presence, so a term on a missing fact is empty, and NOT is `universe & ~x`.

Where the index holds a band key for an end of an interval (`ge:points:1000`: tagquery.bitmap_keys,
BANDS), that end is one key instead of a chain.

Two savings rest on what the index holds (store.audiences.bitmaps; the differential tests check it): every
row holds live members only, and a field's slices only members where the field is present. So
every compiled bitmap lies within the universe, and `a AND NOT b` is `a & ~b` (the universe is read
only for an AND without a positive operand); and a chain starts at the lowest 1 bit of c with that
bit's slice (below it, `B_i | present` is `present`; then `B_low & present` is `B_low`). Each saves
reading a row and one 8 KB operation per chunk, which is what a COUNT costs (measured in
docs/benchmarks.md, section Audiences).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import date
from decimal import Decimal
from functools import reduce

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, BIT

from tagquery.ast import TAG, Op, Unit
from tagquery.bitmap_keys import (
    BANDS,
    BANDS_STATE,
    BANDS_VERSION,
    CHUNK_SIZE,
    DATE_BAND,
    DATE_BANDED,
    DATE_FIELDS,
    DATE_WIDTH,
    NULLABLE,
    UNIVERSE,
    band_key,
    bit_key,
    date_band_boundaries,
    day_offset,
    fen,
    has_key,
    order_field,
    tag_key,
    value_key,
)
from tagquery.bound import (
    Bound,
    BoundAnd,
    BoundNot,
    BoundOr,
    FieldBetween,
    FieldCompare,
    FieldIn,
    FieldWithin,
    Membership,
    Scalar,
    window_start,
)

Bits = sa.ColumnElement[str]
Interval = tuple[int | None, int | None]  # closed; None is unbounded
Present = Callable[[], Bits]  # the field's presence, read only if a chain needs it (a pivot key is read once named)
NO_CHUNK_LIMIT = 2**31 - 1  # `:to_chunk` when a statement reads every chunk on from `from_chunk`
Band = Callable[[int], Bits | None]  # `field >= value` from one band key, if the index has it
VARBIT = BIT(varying=True)
ORDERS_WINDOW_DAYS = 365  # orders_365d counts orders on or after today - 365 (as WITHIN 365d)
# A fixed literal: all zeros, for keys without a row in a chunk.
ZERO: Bits = sa.literal_column(f"repeat('0', {CHUNK_SIZE})::varbit", VARBIT)
# A literal OFFSET 0: keeps a subquery from being pulled up into its parent (a fence), and as a
# constant rather than a parameter it tells the planner nothing is skipped.
_NO_OFFSET: sa.ColumnElement[int] = sa.literal_column("0", sa.Integer)


def bitand(a: Bits, b: Bits) -> Bits:
    return sa.func.bitand(a, b, type_=VARBIT)


def bitor(a: Bits, b: Bits) -> Bits:
    return sa.func.bitor(a, b, type_=VARBIT)


def bitnot(a: Bits) -> Bits:
    return sa.func.bitnot(a, type_=VARBIT)


def and_all(parts: Iterable[Bits]) -> Bits:
    return reduce(bitand, parts)


def or_all(parts: Sequence[Bits]) -> Bits:
    return reduce(bitor, parts) if parts else ZERO


class Pivot:
    """The keys a statement reads, each a column of the pivot, numbered in first use.

    Two levels, measured: the inner one aggregates (`bit_or(bits) FILTER (WHERE key = :kN) AS kN`
    per key, `GROUP BY chunk`); the outer one computes the caller's expressions over those columns,
    reading a missing key as zeros from a one-row subquery. Coalescing inside the aggregate level
    instead made the planner fold an 8 KB zero constant per use: 10-20 ms of planning for a range
    term, against 1 ms of execution.
    """

    def __init__(self) -> None:
        self._keys: dict[str, Bits] = {}
        self._zero: Bits = sa.column("zero", VARBIT)

    def __call__(self, key: str) -> Bits:
        column = self._keys.get(key)
        if column is None:
            column = self._keys[key] = sa.func.coalesce(sa.column(f"k{len(self._keys)}", VARBIT), self._zero)
        return column

    @property
    def keys(self) -> list[str]:
        return list(self._keys)

    def select(
        self, index: sa.TableClause, columns: Mapping[str, Bits], *, from_chunk: int = 0
    ) -> sa.Select[tuple[object, ...]]:
        """`chunk` and `columns` per chunk (from `from_chunk`, below `:to_chunk` if given); `:brand_id`
        is bound by the caller.

        `index` is the bitmap index table (columns brand_id, key, chunk, bits): the caller owns it,
        so the tag language stays a library that imports nothing of the project.

        OFFSET 0 keeps the planner from inlining the expressions into every outer use of them."""
        keys = sa.bindparam("keys", self.keys, type_=ARRAY(sa.Text))
        t = index.c
        aggregates = [
            sa.func.bit_or(t.bits, type_=VARBIT)
            .filter(t.key == sa.bindparam(f"k{i}", key, type_=sa.Text))
            .label(f"k{i}")
            for i, key in enumerate(self._keys)
        ]
        inner = (
            sa.select(t.chunk, *aggregates)
            .where(
                t.brand_id == sa.bindparam("brand_id"),
                t.key == sa.any_(keys),
                t.chunk >= sa.bindparam("from_chunk", from_chunk),
                t.chunk < sa.bindparam("to_chunk", NO_CHUNK_LIMIT),
            )
            .group_by(t.chunk)
            .subquery("p")
        )
        zero = sa.select(ZERO.label("zero")).offset(_NO_OFFSET).subquery("z")
        named = (expression.label(name) for name, expression in columns.items())
        return sa.select(inner.c.chunk, *named).select_from(inner.join(zero, sa.true())).offset(_NO_OFFSET)


@dataclasses.dataclass(frozen=True, slots=True)
class Encoding:
    """What a brand's index looks like: slices per integer field (only ever grows), and which
    band keys it holds (tagquery.bitmap_keys: BANDS)."""

    widths: Mapping[str, int]

    @property
    def banded(self) -> bool:
        return self.widths.get(BANDS_STATE) == BANDS_VERSION


class BitmapCompiler:
    """Compiles bound queries of one brand's index, on one day, into expressions over a Pivot."""

    def __init__(self, encoding: Encoding, today: date, pivot: Pivot | None = None) -> None:
        self.encoding = encoding
        self.today = today
        self.pivot = pivot or Pivot()

    @property
    def universe(self) -> Bits:
        return self.pivot(UNIVERSE)

    def bitmap(self, node: Bound) -> Bits:
        match node:
            case BoundAnd(operands):
                return self._and(operands)
            case BoundOr(operands):
                return or_all([self.bitmap(operand) for operand in operands])
            case BoundNot(operand):
                return bitand(self.universe, bitnot(self.bitmap(operand)))
            case Membership(dimension, values):
                return or_all([self.pivot(_membership_key(dimension, value)) for value in values])
        return self._field(node)

    def _and(self, operands: Sequence[Bound]) -> Bits:
        """`a AND NOT b` as `a & ~b`: every bitmap lies within the universe (module docstring)."""
        positive = [self.bitmap(operand) for operand in operands if not isinstance(operand, BoundNot)]
        negated = [bitnot(self.bitmap(operand.operand)) for operand in operands if isinstance(operand, BoundNot)]
        return and_all([*(positive or [self.universe]), *negated])

    def _field(self, node: FieldCompare | FieldIn | FieldBetween | FieldWithin) -> Bits:
        intervals = _intervals(node, self.today)
        match node.field:
            case "orders_365d":
                return or_all([self._orders_365d(interval) for interval in intervals])
            case "age":
                return self._on_date("birthday", [_age_days(interval, self.today) for interval in intervals])
            case "days_since_last_purchase":
                today = day_offset(self.today)
                return self._on_date("last_purchase", [_days_ago(interval, today) for interval in intervals])
            case name if name in DATE_FIELDS:
                return self._on_date(name, intervals)
        width = self.encoding.widths.get(node.field, 0)
        return self._sliced(node.field, width, lambda: self.universe, intervals, self._band(node.field))

    def _band(self, field: str) -> Band:
        """The band key for `field >= value` when the index holds one, else None."""
        boundaries = BANDS.get(field, ()) if self.encoding.banded else ()
        return lambda value: self.pivot(band_key(field, value)) if value in boundaries else None

    def _on_date(self, field: str, intervals: Sequence[Interval]) -> Bits:
        present: Present = (lambda: self.pivot(has_key(field))) if field in NULLABLE else (lambda: self.universe)
        return self._sliced(field, DATE_WIDTH, present, intervals, self._date_band(field, present))

    def _date_band(self, field: str, present: Present) -> Band:
        """`field >= day` from the block band keys around `day` and the slices inside its block."""
        boundaries = date_band_boundaries() if self.encoding.banded and field in DATE_BANDED else range(0)
        slice_of: Callable[[int], Bits] = lambda bit: self.pivot(bit_key(field, bit))  # noqa: E731

        def at_least(day: int) -> Bits | None:
            start = day - day % DATE_BAND
            if start not in boundaries:
                return None
            if day == start:
                return self.pivot(band_key(field, start))
            if start + DATE_BAND not in boundaries:
                return None
            within = _at_least(slice_of, DATE_BAND.bit_length() - 1, present, day - start)
            return bitor(
                self.pivot(band_key(field, start + DATE_BAND)), bitand(self.pivot(band_key(field, start)), within)
            )

        return at_least

    def _orders_365d(self, interval: Interval) -> Bits:
        low, high = interval
        since = day_offset(window_start(self.today, ORDERS_WINDOW_DAYS, Unit.DAY))
        at_least = self._at_least_orders(low, since) if low is not None and low > 0 else self.universe
        return at_least if high is None else bitand(at_least, bitnot(self._at_least_orders(high + 1, since)))

    def _at_least_orders(self, k: int, since: int) -> Bits:
        if k <= 0:
            return self.universe
        field = order_field(k)
        return self._sliced(field, DATE_WIDTH, lambda: self.pivot(has_key(field)), [(since, None)])

    def _sliced(
        self, field: str, width: int, present: Present, intervals: Sequence[Interval], band: Band = lambda value: None
    ) -> Bits:
        slice_of: Callable[[int], Bits] = lambda bit: self.pivot(bit_key(field, bit))  # noqa: E731
        return or_all([_banded(slice_of, width, present, interval, band) for interval in intervals])


def _membership_key(dimension: str, value: str) -> str:
    if dimension == TAG:
        return tag_key(value)
    if dimension == "lifecycle":
        raise ValueError("lifecycle is derived: expand it (store.audiences.facts.expand_derived) before compiling")
    return value_key(dimension, value)


def _banded(slice_of: Callable[[int], Bits], width: int, present: Present, interval: Interval, band: Band) -> Bits:
    """An interval with its ends read from band keys where there are some, else from the slices."""
    low, high = interval
    low = max(low or 0, 0)
    lower = band(low) if low > 0 else None
    upper = band(high + 1) if high is not None else None
    if lower is None and upper is None:
        return _interval(slice_of, width, present, interval)
    if high is not None and low > high:
        return ZERO
    at_least = lower if lower is not None else _interval(slice_of, width, present, (low, None))
    if high is None:
        return at_least
    return bitand(
        at_least, bitnot(upper if upper is not None else _interval(slice_of, width, present, (high + 1, None)))
    )


def _interval(slice_of: Callable[[int], Bits], width: int, present: Present, interval: Interval) -> Bits:
    low, high = interval
    top = (1 << width) - 1
    low = max(low or 0, 0)
    high = top if high is None else min(high, top)
    if low > high:
        return ZERO
    if low == high:
        return _equal(slice_of, width, present, low)
    lower = _at_least(slice_of, width, present, low)
    return lower if high == top else bitand(lower, bitnot(_at_least(slice_of, width, present, high + 1)))


def _at_least(slice_of: Callable[[int], Bits], width: int, present: Present, value: int) -> Bits:
    """Members whose value is >= `value` (0 < value < 2^width): one operation per slice from the
    lowest 1 bit of `value` up (slices hold present members only: module docstring)."""
    if value <= 0:
        return present()
    lowest = (value & -value).bit_length() - 1
    acc = slice_of(lowest)
    for bit in range(lowest + 1, width):
        acc = bitand(slice_of(bit), acc) if value >> bit & 1 else bitor(slice_of(bit), acc)
    return acc


def _equal(slice_of: Callable[[int], Bits], width: int, present: Present, value: int) -> Bits:
    parts = [slice_of(bit) if value >> bit & 1 else bitnot(slice_of(bit)) for bit in range(width)]
    return and_all([present(), *parts])


def _intervals(node: FieldCompare | FieldIn | FieldBetween | FieldWithin, today: date) -> list[Interval]:
    """The term as closed intervals of the field's integers (fen, day offsets)."""
    match node:
        case FieldCompare(op=op, value=value):
            return _compare(op, _number(value))
        case FieldIn(values=values):
            return [(_number(value), _number(value)) for value in values]
        case FieldBetween(low=low, high=high):
            return [(_number(low), _number(high))]
        case FieldWithin(amount=amount, unit=unit):
            return [(day_offset(window_start(today, amount, unit)), None)]


def _compare(op: Op, value: int) -> list[Interval]:
    match op:
        case Op.EQ:
            return [(value, value)]
        case Op.NE:
            return [(None, value - 1), (value + 1, None)]
        case Op.LT:
            return [(None, value - 1)]
        case Op.LTE:
            return [(None, value)]
        case Op.GT:
            return [(value + 1, None)]
        case Op.GTE:
            return [(value, None)]


def _number(value: Scalar) -> int:
    if isinstance(value, date):
        return day_offset(value)
    if isinstance(value, Decimal):
        return fen(value)
    return value


def _days_ago(interval: Interval, today: int) -> Interval:
    """days_since in [a, b]  <=>  last_purchase in [today - b, today - a]."""
    low, high = interval
    return (None if high is None else today - high, None if low is None else today - low)


def _age_days(interval: Interval, today: date) -> Interval:
    """age in [a, b]  <=>  birthday in [years_back(b + 1) + 1 day, years_back(a)]."""
    low, high = interval
    latest = None if low is None else day_offset(_years_back(today, low))
    earliest = None if high is None else day_offset(_years_back(today, high + 1)) + 1
    return (earliest, latest)


def _years_back(today: date, years: int) -> date:
    """The latest birthday that is `years` old today (02-29 clips to 02-28, as whole-year ages do)."""
    years = max(min(years, today.year - 1), today.year - 9999)  # stay inside date's range
    return window_start(today, 12 * years, Unit.MONTH) if years >= 0 else _years_ahead(today, -years)


def _years_ahead(today: date, years: int) -> date:
    year = today.year + years
    day = today.day if (today.month, today.day) != (2, 29) or _leap(year) else 28
    return date(year, today.month, day)


def _leap(year: int) -> bool:
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)

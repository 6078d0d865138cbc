"""The bitmap compiler: a bound query becomes a bitwise expression over pivoted index rows.

The pivot form (design §4): one index scan over the needed keys (`key = ANY(:keys)`), one
`bit_or(bits) FILTER (WHERE key = :kN)` per key, `GROUP BY chunk`, then `& | ~` (the functions
bitand / bitor / bitnot) over those columns. Keys and values travel as bound parameters; the only
SQL text written here is fixed. A key without a row in a chunk reads as all zeros.

Field terms become unions of closed intervals over the field's encoded integers, each interval
`x >= lo AND NOT x >= hi + 1`, and each threshold `x >= c` a chain over the field's range-encoded
base-64 digits (tagquery.bitmap_keys), from the lowest digit up: GE_i = D_i(>= c_i + 1) |
(D_i(>= c_i) & GE_(i-1)), at most two keys a digit and one for the lowest, whatever c is. Where
the index holds a band key for c (`ge:points:1000`), the threshold is that key. `orders_365d >= k`
("the k-th most recent order is within 365 days") folds the `order.<k>` bit slices instead:
`B_i & acc` where c has a 1, `B_i | acc` where it has a 0. Derived fields are rewritten onto the
stored dates first: `age` onto `birthday`, `days_since_last_purchase` onto `last_purchase`. NULL
rule: every chain lies within the field's presence (digits and slices hold present members only),
so a term on a missing fact is empty, and NOT is `universe & ~x`.

Purchase behaviour (issue 15) reads days the same way: `bought:<p> WITHIN w`, `first_purchase`,
`orders_<N>d:<c> >= k` and `spend_<N>d >= X` are each one day field (`buy.*`, bit-sliced) against
today - N, and so is `entered:<stage> WITHIN w` (`stage.entered.*`); `spend_<N>d` is answered only
for the steps (tagquery.catalog.SPEND_STEPS), and any other comparison of it raises rather than
compile to something wrong (the binder never lets one through).

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
    CHUNK_SIZE,
    DATE_WIDTH,
    FIRST_PURCHASE_DAY,
    NULLABLE,
    UNIVERSE,
    Layout,
    band_key,
    bit_key,
    bought_field,
    category_order_field,
    day_offset,
    digit_key,
    entered_field,
    fen,
    has_key,
    order_field,
    spend_day_field,
    stored_layout,
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
from tagquery.catalog import SPEND_STEPS, window_of

Bits = sa.ColumnElement[str]
Interval = tuple[int | None, int | None]  # closed; None is unbounded
Present = Callable[[], Bits]  # the field's presence, read only if a chain needs it (a pivot key is read once named)
AtLeast = Callable[[int], Bits | None]  # `field >= value` (None: no member)
NO_CHUNK_LIMIT = 2**31 - 1  # `:to_chunk` when a statement reads every chunk on from `from_chunk`
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
    """What a brand's index looks like: each digit field's layout (its width only ever grows between
    builds), as the index state records it (tagquery.bitmap_keys.layout_state). Indexes of another
    encoding version are rebuilt before they are read (store.audiences.deltas), so the keys
    themselves are always tagquery.bitmap_keys'."""

    widths: Mapping[str, int]

    def layout(self, field: str) -> Layout:
        return stored_layout(self.widths, field)


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
            case Membership("bought", values, _, within):  # catalog.BOUGHT
                since = None if within is None else day_offset(window_start(self.today, *within))
                return or_all([self._day_at_least(bought_field(value), since) for value in values])
            case Membership("entered", values, _, within):  # catalog.ENTERED: a stage's last entry day
                since = None if within is None else day_offset(window_start(self.today, *within))
                return or_all([self._day_at_least(entered_field(value), since) for value in values])
            case Membership(dimension, values):
                return or_all([self.pivot(_membership_key(dimension, value)) for value in values])
        return self._field(node)

    def _and(self, operands: Sequence[Bound]) -> Bits:
        """`a AND NOT b` as `a & ~b`: every bitmap lies within the universe (module docstring)."""
        positive = [self.bitmap(operand) for operand in operands if not isinstance(operand, BoundNot)]
        negated = [bitnot(self.bitmap(operand.operand)) for operand in operands if isinstance(operand, BoundNot)]
        return and_all([*(positive or [self.universe]), *negated])

    def _field(self, node: FieldCompare | FieldIn | FieldBetween | FieldWithin) -> Bits:
        windowed = window_of(node.field)
        if windowed is not None:
            category = None if isinstance(node, FieldWithin) else node.qualifier
            if windowed[0] == "spend":
                return self._spend(node, windowed[1], category)
            return or_all([self._orders(interval, windowed[1], category) for interval in _intervals(node, self.today)])
        intervals = _intervals(node, self.today)
        match node.field:
            case "first_purchase":
                return or_all([_within(self._sliced_at_least(FIRST_PURCHASE_DAY), i) for i in intervals])
            case "age":
                return self._ranged("birthday", [_age_days(interval, self.today) for interval in intervals])
            case "days_since_last_purchase":
                today = day_offset(self.today)
                return self._ranged("last_purchase", [_days_ago(interval, today) for interval in intervals])
        return self._ranged(node.field, intervals)

    def _ranged(self, field: str, intervals: Sequence[Interval]) -> Bits:
        """A stored integer or date field's intervals, over its digits and band keys."""
        present: Present = (lambda: self.pivot(has_key(field))) if field in NULLABLE else (lambda: self.universe)
        layout = self.encoding.layout(field)
        bands = BANDS.get(field, ())

        def at_least(value: int) -> Bits | None:
            if value in bands:
                return self.pivot(band_key(field, value))
            encoded = value - layout.base
            if encoded <= 0:
                return present()
            if encoded >> layout.width:
                return None
            return _digits_at_least(lambda digit, c: self.pivot(digit_key(field, digit, c)), layout, encoded)

        return or_all([_within(at_least, interval) for interval in intervals])

    def _orders(self, interval: Interval, days: int, category: str | None) -> Bits:
        """Orders (with a line of `category`) in the last `days` days within `interval`: at least k of
        them is "the k-th most recent one is in the window" (`order.<k>` days, never missing: 0)."""
        low, high = interval
        since = day_offset(window_start(self.today, days, Unit.DAY))
        at_least = self._at_least_orders(low, since, category) if low is not None and low > 0 else self.universe
        if high is None:
            return at_least
        return bitand(at_least, bitnot(self._at_least_orders(high + 1, since, category)))

    def _at_least_orders(self, k: int, since: int, category: str | None = None) -> Bits:
        if k <= 0:
            return self.universe
        return self._day_at_least(order_field(k) if category is None else category_order_field(category, k), since)

    def _spend(
        self, node: FieldCompare | FieldIn | FieldBetween | FieldWithin, days: int, category: str | None
    ) -> Bits:
        """`spend_<N>d >= X` (or `<`) for a step X: the day from which the member's spend reaches X is
        in the window (tagquery.bitmap_keys). Any other comparison has no keys: refused, never guessed."""
        if not (isinstance(node, FieldCompare) and node.op in (Op.GTE, Op.LT) and node.value in SPEND_STEPS):
            raise ValueError(
                f"the audience index answers {node.field} only with >= or < against one of the amounts "
                f"{', '.join(map(str, SPEND_STEPS))} (tagquery.bind refuses the rest)"
            )
        assert isinstance(node.value, Decimal)
        since = day_offset(window_start(self.today, days, Unit.DAY))
        reached = self._day_at_least(spend_day_field(fen(node.value), category), since)
        return reached if node.op is Op.GTE else bitand(self.universe, bitnot(reached))

    def _day_at_least(self, field: str, since: int | None) -> Bits:
        """Members with a day in `field` (bit-sliced, with a `has:` key) on or after day `since`
        (None: any day)."""
        found = self._sliced_at_least(field)(since or 0)
        return ZERO if found is None else found

    def _sliced_at_least(self, field: str) -> AtLeast:
        def at_least(value: int) -> Bits | None:
            if value <= 0:
                return self.pivot(has_key(field))
            if value >> DATE_WIDTH:
                return None
            return _slices_at_least(lambda bit: self.pivot(bit_key(field, bit)), DATE_WIDTH, value)

        return at_least


def _membership_key(dimension: str, value: str) -> str:
    if dimension == TAG:
        return tag_key(value)
    if dimension == "lifecycle":
        raise ValueError("lifecycle is derived: expand it (store.audiences.facts.expand_derived) before compiling")
    return value_key(dimension, value)


def _within(at_least: AtLeast, interval: Interval) -> Bits:
    """`lo <= x <= hi` as `x >= lo AND NOT x >= hi + 1` (an open end reads nothing)."""
    low, high = interval
    low = max(low or 0, 0)
    if high is not None and low > high:
        return ZERO
    lower = at_least(low)
    if lower is None:
        return ZERO
    upper = None if high is None else at_least(high + 1)
    return lower if upper is None else bitand(lower, bitnot(upper))


def _digits_at_least(digit_of: Callable[[int, int], Bits], layout: Layout, value: int) -> Bits:
    """Members whose encoded value is >= `value` (0 < value < 2^width), from the range-encoded
    digits D_i(>= j) (`digit_of(i, j)`): GE_i = D_i(>= c_i + 1) | (D_i(>= c_i) & GE_(i-1)), where GE
    below the lowest non-zero digit of `value` is every present member (digits hold present members
    only), and D_i(>= 2^bits) is nobody."""
    acc: Bits | None = None
    highest = (1 << layout.bits) - 1
    for digit in range(layout.digits):
        c = layout.digit(value, digit)
        if acc is None:
            if c:
                acc = digit_of(digit, c)
            continue
        same = bitand(digit_of(digit, c), acc) if c else acc
        acc = same if c == highest else bitor(digit_of(digit, c + 1), same)
    assert acc is not None, "0 < value"
    return acc


def _slices_at_least(slice_of: Callable[[int], Bits], width: int, value: int) -> Bits:
    """Members whose value is >= `value` (0 < value < 2^width) from bit slices: one operation per
    slice from the lowest 1 bit of `value` up (slices hold present members only: module docstring)."""
    lowest = (value & -value).bit_length() - 1
    acc = slice_of(lowest)
    for bit in range(lowest + 1, width):
        acc = bitand(slice_of(bit), acc) if value >> bit & 1 else bitor(slice_of(bit), acc)
    return acc


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

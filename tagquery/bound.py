"""The bound tree: a syntax tree checked against a catalog, with typed values. Compilers read this.

Names are resolved (tag display names to codes), values typed (`int` for integer fields, `Decimal`
with at most two places for money, `date` for dates), duplicate values dropped (first kept).
Tags, dimension terms and dimension IN lists all become a `Membership`, tags under the dimension
name `tag`. Windows stay relative (`FieldWithin`) so a saved audience means the same thing on the
day it is run: `window_start` turns one into a date.

The NULL rule, shared by every implementation: a term on a missing fact (NULL / absent value, an
empty set) is False, whatever the operator (`!=` included), and NOT is plain boolean negation. So
`e` and `NOT e` split the members exactly, and `NOT points = 5` differs from `points != 5` for a
member without points.
"""

from __future__ import annotations

import calendar
import dataclasses
from datetime import date, timedelta
from decimal import Decimal

from tagquery.ast import Op, Unit, Window
from tagquery.catalog import FieldType

Scalar = int | Decimal | date


@dataclasses.dataclass(frozen=True, slots=True)
class Membership:
    """The member has any of `values` for `dimension` (`tag` for tags; `multi` for set-valued); with
    `within`, on a day no earlier than `window_start(today, *within)` (a dated dimension: bought,
    entered)."""

    dimension: str
    values: tuple[str, ...]
    multi: bool
    within: Window | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class FieldCompare:
    field: str
    type: FieldType
    op: Op
    value: Scalar
    qualifier: str | None = None
    """A windowed purchase field restricted to this product category (`spend_90d:snacks`)."""


@dataclasses.dataclass(frozen=True, slots=True)
class FieldIn:
    field: str
    type: FieldType
    values: tuple[Scalar, ...]
    qualifier: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class FieldBetween:
    """low <= field <= high; empty when low > high, as in SQL."""

    field: str
    type: FieldType
    low: Scalar
    high: Scalar
    qualifier: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class FieldWithin:
    """A date field on or after `window_start(today, amount, unit)`."""

    field: str
    amount: int
    unit: Unit


@dataclasses.dataclass(frozen=True, slots=True)
class BoundNot:
    operand: Bound


@dataclasses.dataclass(frozen=True, slots=True)
class BoundAnd:
    operands: tuple[Bound, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class BoundOr:
    operands: tuple[Bound, ...]


Bound = Membership | FieldCompare | FieldIn | FieldBetween | FieldWithin | BoundNot | BoundAnd | BoundOr


def window_start(today: date, amount: int, unit: Unit) -> date:
    """The first day inside `amount` units back from `today`; months and years are calendar ones,
    clipped to the end of a shorter month (1m before 03-31 is 02-28 or 02-29)."""
    match unit:
        case Unit.DAY:
            return today - timedelta(days=amount)
        case Unit.WEEK:
            return today - timedelta(weeks=amount)
        case Unit.MONTH:
            return _months_back(today, amount)
        case Unit.YEAR:
            return _months_back(today, 12 * amount)


def _months_back(day: date, months: int) -> date:
    year, month0 = divmod(day.year * 12 + day.month - 1 - months, 12)
    last_day = calendar.monthrange(year, month0 + 1)[1]
    return date(year, month0 + 1, min(day.day, last_day))

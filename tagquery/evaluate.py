"""The reference evaluator: does one member match a bound query? Slow and obvious on purpose; the
compilers are tested against it.

A member is a mapping of facts keyed by the names the language uses: `tag` (a set of tag codes),
each dimension (a set for set-valued ones such as `channel`, else one value or None), each field
(int, Decimal or `date`, or None). Two fields are derived from other facts and `today`, the way a
compiler derives them from columns, and are never read from the mapping:
`age` (whole years since `birthday`) and `days_since_last_purchase` (from `last_purchase`).
Missing facts follow the NULL rule in `tagquery.bound`: every term on them is False.

Purchase behaviour: `bought` maps each product (category or sku) the member bought to the last day
it did; `first_channel` and `first_purchase` are plain facts; the windowed fields (`spend_90d`,
`orders_30d:snacks`, `orders_365d` ...) are derived from `purchases`, one `Purchase` per order,
against `today`. A mapping without `purchases` may give `orders_365d` as a number (older callers).
Stage history: `entered` maps each lifecycle stage the member has a recorded change into to the
day of the last such change (so `entered:at_risk WITHIN 30d` reads it as `bought` reads its days).
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Mapping, Sequence
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from tagquery.ast import Op
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
    window_start,
)
from tagquery.catalog import window_of

Facts = Mapping[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class Purchase:
    """One order, as the windowed fields read it: its day, what it cost net of refunds, and per
    product category of its lines the net amount of those lines (a category with no amount left
    still counts the order). A refund lowers spend, never a count."""

    day: date
    spend: Decimal
    categories: Mapping[str, Decimal]


_OPS: dict[Op, Callable[[Any, Any], bool]] = {
    Op.EQ: operator.eq,
    Op.NE: operator.ne,
    Op.LT: operator.lt,
    Op.LTE: operator.le,
    Op.GT: operator.gt,
    Op.GTE: operator.ge,
}


def evaluate(node: Bound, facts: Facts, today: date) -> bool:
    """Whether the member described by `facts` matches `node` on the day `today`."""
    match node:
        case BoundAnd(operands):
            return all(evaluate(operand, facts, today) for operand in operands)
        case BoundOr(operands):
            return any(evaluate(operand, facts, today) for operand in operands)
        case BoundNot(operand):
            return not evaluate(operand, facts, today)
        case Membership(dimension, values, multi, within):
            if within is None:
                return _member(facts.get(dimension), values, multi)
            days: Mapping[str, date] = facts.get(dimension) or {}
            start = window_start(today, *within)
            return any(value in days and days[value] >= start for value in values)
    value = _windowed(facts, node, today) if window_of(node.field) else _fact(facts, node.field, today)
    # The NULL rule: a term on a missing fact is False, whatever its operator.
    return value is not None and _field_test(node, value, today)


def _member(fact: Any, values: tuple[str, ...], multi: bool) -> bool:
    if multi:
        return not set(values).isdisjoint(fact or ())
    return fact is not None and fact in values


def _field_test(node: FieldCompare | FieldIn | FieldBetween | FieldWithin, value: Any, today: date) -> bool:
    match node:
        case FieldCompare(op=op, value=operand):
            return _OPS[op](value, operand)
        case FieldIn(values=values):
            return value in values
        case FieldBetween(low=low, high=high):
            return bool(low <= value <= high)
        case FieldWithin(amount=amount, unit=unit):
            return bool(value >= window_start(today, amount, unit))


def _windowed(facts: Facts, node: FieldCompare | FieldIn | FieldBetween | FieldWithin, today: date) -> Any:
    """Spend or orders over the window the field's name gives, of one category when qualified."""
    purchases: Sequence[Purchase] | None = facts.get("purchases")
    if purchases is None:
        return facts.get(node.field)
    kind, days = window_of(node.field) or ("orders", 0)
    start = today - timedelta(days=days)
    category = None if isinstance(node, FieldWithin) else node.qualifier
    chosen = [p for p in purchases if p.day >= start and (category is None or category in p.categories)]
    if kind == "orders":
        return len(chosen)
    return sum((p.spend if category is None else p.categories[category] for p in chosen), Decimal(0))


def _fact(facts: Facts, name: str, today: date) -> Any:
    derive = _DERIVED.get(name)
    return facts.get(name) if derive is None else derive(facts, today)


def _age(facts: Facts, today: date) -> int | None:
    birthday: date | None = facts.get("birthday")
    if birthday is None:
        return None
    return today.year - birthday.year - ((today.month, today.day) < (birthday.month, birthday.day))


def _days_since_last_purchase(facts: Facts, today: date) -> int | None:
    last: date | None = facts.get("last_purchase")
    return None if last is None else (today - last).days


_DERIVED: dict[str, Callable[[Facts, date], int | None]] = {
    "age": _age,
    "days_since_last_purchase": _days_since_last_purchase,
}

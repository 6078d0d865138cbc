"""The reference evaluator: does one member match a bound query? Slow and obvious on purpose; the
compilers are tested against it.

A member is a mapping of facts keyed by the names the language uses: `tag` (a set of tag codes),
each dimension (a set for set-valued ones such as `channel`, else one value or None), each field
(int, Decimal or `date`, or None). Two fields are derived from other facts and `today`, the way a
compiler derives them from columns, and are never read from the mapping:
`age` (whole years since `birthday`) and `days_since_last_purchase` (from `last_purchase`).
Missing facts follow the NULL rule in `tagquery.bound`: every term on them is False.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from datetime import date
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

Facts = Mapping[str, Any]

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
        case Membership(dimension, values, multi):
            return _member(facts.get(dimension), values, multi)
    value = _fact(facts, node.field, today)
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

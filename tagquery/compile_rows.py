"""The row compiler: a bound query becomes a WHERE clause over the system of record (the reference).

Plain SQL, obvious rather than fast: memberships become whatever the caller's facts say (EXISTS for
set-valued ones), scalar terms comparisons on the fact's SQL expression. Every term is
wrapped in `coalesce(..., false)`, so a term on a NULL fact is False and NOT is boolean negation:
the NULL rule of `tagquery.bound`, exactly as `tagquery.evaluate` applies it. Values are bound
parameters; identifiers come from the caller's facts only.
"""

from __future__ import annotations

from datetime import date
from typing import Any, Protocol

import sqlalchemy as sa

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

Predicate = sa.ColumnElement[bool]


class RowFacts(Protocol):
    """How each name of the catalog reads from the system of record, for one member row."""

    def membership(self, dimension: str, values: tuple[str, ...], since: date | None = None) -> Predicate:
        """True when the member has any of `values` (False, never NULL, when it has none); for a dated
        dimension with `since`, on that day or later."""

    def field(self, name: str, qualifier: str | None = None) -> sa.ColumnElement[Any]:
        """The field's value for the member, NULL when missing (of one category, when qualified)."""


def compile_rows(node: Bound, facts: RowFacts, today: date) -> Predicate:
    match node:
        case BoundAnd(operands):
            return sa.and_(sa.true(), *(compile_rows(operand, facts, today) for operand in operands))
        case BoundOr(operands):
            return sa.or_(sa.false(), *(compile_rows(operand, facts, today) for operand in operands))
        case BoundNot(operand):
            return sa.not_(compile_rows(operand, facts, today))
        case Membership(dimension, values, _, within):
            return facts.membership(dimension, values, None if within is None else window_start(today, *within))
    qualifier = None if isinstance(node, FieldWithin) else node.qualifier
    return sa.func.coalesce(_test(node, facts.field(node.field, qualifier), today), sa.false())


def _test(
    node: FieldCompare | FieldIn | FieldBetween | FieldWithin, value: sa.ColumnElement[Any], today: date
) -> Predicate:
    match node:
        case FieldCompare(op=op, value=operand):
            return _compare(op, value, sa.literal(operand))
        case FieldIn(values=values):
            return sa.or_(*(value == sa.literal(operand) for operand in values))
        case FieldBetween(low=low, high=high):
            return sa.and_(value >= sa.literal(low), value <= sa.literal(high))
        case FieldWithin(amount=amount, unit=unit):
            return value >= sa.literal(window_start(today, amount, unit))


def _compare(op: Op, value: sa.ColumnElement[Any], operand: sa.ColumnElement[Any]) -> Predicate:
    match op:
        case Op.EQ:
            return value == operand
        case Op.NE:
            return value != operand
        case Op.LT:
            return value < operand
        case Op.LTE:
            return value <= operand
        case Op.GT:
            return value > operand
        case Op.GTE:
            return value >= operand

"""The checker: resolve a syntax tree's names against a catalog and type its values.

Errors point at the name for an unknown or misused name, at the value for an unknown or ill-typed
value, and suggest the closest known name. An unknown name also carries the valid ones (all of them
up to LIST_ALL, else the closest few and how many there are), named in its text when no single one
is close enough to suggest: `unknown lifecycle 'active' at 1:11; expected one of at_risk, churned,
growth, introduction, mature`. The binder trusts the tree's size: `parse` and `from_filter` bound it.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from datetime import date
from decimal import Decimal
from typing import TypeVar

from tagquery.ast import (
    TAG,
    And,
    Between,
    Compare,
    Dimension,
    In,
    Node,
    Not,
    Op,
    Or,
    Tag,
    Term,
    Unit,
    Window,
    Within,
    parse_duration,
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
)
from tagquery.catalog import Catalog, DimensionSpec, FieldType, window_of
from tagquery.errors import ErrorCode, QueryTypeError, Span, UnknownNameError
from tagquery.printer import value_text

_INTEGER = re.compile(r"-?[0-9]+", re.ASCII)
_MONEY = re.compile(r"-?[0-9]+(?:\.[0-9]{1,2})?", re.ASCII)
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)
# Integers land in bigint columns; money in numeric. Beyond these a comparison means nothing.
_INT_RANGE = range(-(2**63), 2**63)
_MONEY_LIMIT = Decimal(10) ** 15
_MAX_WINDOW_DAYS = 36_600  # about a hundred years
_UNIT_DAYS = {Unit.DAY: 1, Unit.WEEK: 7, Unit.MONTH: 31, Unit.YEAR: 366}
_T = TypeVar("_T")
_MISMATCH = ErrorCode.TYPE_MISMATCH
_TYPE_NAMES = {FieldType.INTEGER: "a whole-number", FieldType.MONEY: "a money", FieldType.DATE: "a date"}
LIST_ALL = 20  # up to this many valid names an unknown one lists them all (channels, tiers, stages ...)
CLOSEST = 5  # beyond, it names this many of the closest (cities, tags) and how many there are
_SOME_LIKENESS = 0.3  # difflib ratio under which a name is too unlike to be worth naming as close


def bind(node: Node, catalog: Catalog, *, source: str | None = None) -> Bound:
    """Check `node` against `catalog`. Pass the text it was parsed from to get positions in errors."""
    return _Binder(catalog, source).bind(node)


class _Binder:
    def __init__(self, catalog: Catalog, source: str | None) -> None:
        self._catalog = catalog
        self._source = source

    def bind(self, node: Node) -> Bound:
        match node:
            case And(operands):
                return BoundAnd(tuple(map(self.bind, operands)))
            case Or(operands):
                return BoundOr(tuple(map(self.bind, operands)))
            case Not(operand):
                return BoundNot(self.bind(operand))
            case Tag(code):
                return Membership(TAG, (self._tag(node, code, 0),), multi=True)
            case Dimension(name, value, within):
                spec = self._dimension(node, name)
                value = self._member(node, name, spec, value, 0)
                return Membership(name, (value,), spec.multi, self._window(node, name, spec, within))
            case In():
                return self._in(node)
            case Compare(field, op, value, qualifier):
                kind = self._field(node, field)
                qualifier = self._qualifier(node, field, qualifier)
                scalar = self._scalar(node, field, kind, value, 0)
                self._stepped(node, field, op, scalar)
                return FieldCompare(field, kind, op, scalar, qualifier)
            case Between(field, low, high, qualifier):
                kind = self._field(node, field)
                qualifier = self._qualifier(node, field, qualifier)
                self._stepped(node, field, None, None)
                low_value, high_value = (self._scalar(node, field, kind, text, i) for i, text in enumerate((low, high)))
                return FieldBetween(field, kind, low_value, high_value, qualifier)
            case Within():
                return self._within(node)
        raise TypeError(f"not a tag query node: {node!r}")

    def _in(self, node: In) -> Bound:
        name, values = node.name, enumerate(node.values)
        if node.qualifier is not None and name not in self._catalog.fields:
            self._field(node, name)  # a dimension or an unknown name: raises
        if name == TAG:
            self._window(node, TAG, None, node.within)
            return Membership(TAG, _unique(self._tag(node, code, i) for i, code in values), multi=True)
        if name in self._catalog.dimensions:
            spec = self._catalog.dimensions[name]
            chosen = _unique(self._member(node, name, spec, v, i) for i, v in values)
            return Membership(name, chosen, spec.multi, self._window(node, name, spec, node.within))
        if name in self._catalog.fields:
            kind = self._catalog.fields[name]
            qualifier = self._qualifier(node, name, node.qualifier)
            self._window(node, name, None, node.within)
            self._stepped(node, name, None, None)
            return FieldIn(name, kind, _unique(self._scalar(node, name, kind, v, i) for i, v in values), qualifier)
        names = [TAG, *self._catalog.dimensions, *self._catalog.fields]
        at = _name_span(node, name)
        raise self._unknown(ErrorCode.UNKNOWN_FIELD, "field or dimension", name, names, at, plural="names")

    def _within(self, node: Within) -> Bound:
        kind = self._field(node, node.field)
        if kind is not FieldType.DATE:
            message = f"WITHIN applies to date fields; {node.field} is {_TYPE_NAMES[kind]} field"
            raise self._type(message, _name_span(node, node.field))
        self._window_range(node, node.amount, node.unit, _value_span(node, 0))
        return FieldWithin(node.field, node.amount, node.unit)

    # Purchase behaviour: windows on dated dimensions, qualifiers, spend steps.

    def _window(self, node: Term, name: str, spec: DimensionSpec | None, within: Window | None) -> Window | None:
        if within is None:
            return None
        if spec is None or not spec.dated:
            dated = sorted(n for n, s in self._catalog.dimensions.items() if s.dated)
            message = f"WITHIN after {name} needs a dated dimension ({', '.join(dated) or 'none here'})"
            hint = f"for a date field write {name} WITHIN {within[0]}{within[1]}" if spec is None else None
            raise self._type(message, node.span, hint)
        self._window_range(node, within[0], within[1], node.span)
        return within

    def _window_range(self, node: Term, amount: int, unit: Unit, at: Span | None) -> None:
        if amount * _UNIT_DAYS[unit] > _MAX_WINDOW_DAYS:
            message = f"a window of {amount}{unit} reaches back more than a hundred years"
            raise self._type(message, at, code=ErrorCode.OUT_OF_RANGE)

    def _qualifier(self, node: Term, field: str, qualifier: str | None) -> str | None:
        if qualifier is None:
            return None
        at = _qualifier_span(node, field, qualifier)
        allowed = self._catalog.qualifiers.get(field)
        if allowed is None:
            qualified = ", ".join(sorted(self._catalog.qualifiers)) or "none here"
            raise self._type(f"{field} takes no qualifier (fields that do: {qualified})", at)
        if qualifier not in allowed:
            raise self._unknown(ErrorCode.UNKNOWN_VALUE, "category", qualifier, allowed, at, plural="categories")
        return qualifier

    def _stepped(self, node: Term, field: str, op: Op | None, value: Scalar | None) -> None:
        """Spend in a window: `>=` or `<` against one of the catalog's steps for it, nothing else."""
        steps = self._catalog.steps.get(field)
        if steps is None or (op in (Op.GTE, Op.LT) and value in steps):
            return
        listed = ", ".join(str(step) for step in steps)
        if op in (Op.GTE, Op.LT):
            at = _value_span(node, 0)
            message = f"{field} is compared with one of the amounts {listed}, not {value}"
        else:
            at, message = node.span, f"{field} is compared with >= or < against one of the amounts {listed}"
        hint = f"e.g. {field} >= {steps[len(steps) // 2]} or {field} < {steps[1]}"
        raise self._type(message, at, hint, code=ErrorCode.OUT_OF_RANGE if op in (Op.GTE, Op.LT) else _MISMATCH)

    # Names.

    def _tag(self, node: Term, text: str, index: int) -> str:
        code = self._catalog.tag_code(text)
        if code is None:
            at = _value_span(node, index)
            names = self._catalog.tag_names()  # codes and display names: close ones are named either way
            raise self._unknown(ErrorCode.UNKNOWN_TAG, "tag", text, names, at, plural="tags", codes=self._catalog.tags)
        return code

    def _dimension(self, node: Dimension, name: str) -> DimensionSpec:
        if name in self._catalog.dimensions:
            return self._catalog.dimensions[name]
        if name in self._catalog.fields:
            hint = f"compare it instead, e.g. {name} = {value_text(node.value)}"
            raise self._type(f"{name} is a field, not a dimension", _name_span(node, name), hint)
        known = self._catalog.dimensions
        at = _name_span(node, name)
        raise self._unknown(ErrorCode.UNKNOWN_DIMENSION, "dimension", name, known, at, plural="dimensions")

    def _member(self, node: Term, name: str, spec: DimensionSpec, value: str, index: int) -> str:
        if value not in spec.values:
            at = _value_span(node, index)
            raise self._unknown(ErrorCode.UNKNOWN_VALUE, name, value, spec.values, at, plural=f"{name} values")
        return value

    def _field(self, node: Term, name: str) -> FieldType:
        if name in self._catalog.fields:
            return self._catalog.fields[name]
        if name in self._catalog.dimensions:
            hint = f"write {name}:value or {name} IN (a, b)"
            raise self._type(f"{name} is a dimension, not a field", _name_span(node, name), hint)
        at = _name_span(node, name)
        error = self._unknown(ErrorCode.UNKNOWN_FIELD, "field", name, self._catalog.fields, at, plural="fields")
        windowed = window_of(name)
        if windowed is not None:
            same = {field: window_of(field) for field in self._catalog.fields}
            valid = sorted((f for f, w in same.items() if w and w[0] == windowed[0]), key=lambda f: same[f] or ())
            if valid:
                error.hint = f"{windowed[0]} has the windows {', '.join(valid)}"
        raise error

    # Values.

    def _scalar(self, node: Term, field: str, kind: FieldType, text: str, index: int) -> Scalar:
        at = _value_span(node, index)
        match kind:
            case FieldType.INTEGER:
                return self._integer(field, text, at)
            case FieldType.MONEY:
                return self._money(field, text, at)
            case FieldType.DATE:
                return self._date(field, text, at)

    def _integer(self, field: str, text: str, at: Span | None) -> int:
        if not _INTEGER.fullmatch(text):
            raise self._type(f"{field} takes a whole number, not '{text}'", at)
        if int(text) not in _INT_RANGE:
            raise self._type(f"{text} is out of range for {field}", at, code=ErrorCode.OUT_OF_RANGE)
        return int(text)

    def _money(self, field: str, text: str, at: Span | None) -> Decimal:
        if not _MONEY.fullmatch(text):
            raise self._type(f"{field} takes an amount such as 199 or 199.90, not '{text}'", at)
        if abs(Decimal(text)) >= _MONEY_LIMIT:
            raise self._type(f"{text} is out of range for {field}", at, code=ErrorCode.OUT_OF_RANGE)
        return Decimal(text)

    def _date(self, field: str, text: str, at: Span | None) -> date:
        try:
            if _DATE.fullmatch(text):
                return date.fromisoformat(text)
        except ValueError:
            pass  # right shape, no such day (2024-02-30): reported below like any other non-date
        hint = f"for a time window write {field} WITHIN {text}" if parse_duration(text) else None
        raise self._type(f"{field} takes a date such as 2024-01-31, not '{text}'", at, hint)

    # Errors.

    def _type(
        self, message: str, at: Span | None, hint: str | None = None, code: ErrorCode = ErrorCode.TYPE_MISMATCH
    ) -> QueryTypeError:
        return QueryTypeError(message, code=code, source=self._source, span=at, hint=hint)

    def _unknown(
        self,
        code: ErrorCode,
        what: str,
        name: str,
        known: Iterable[str],
        at: Span | None,
        *,
        plural: str,
        codes: Iterable[str] | None = None,
    ) -> UnknownNameError:
        """`unknown <what> '<name>'`, suggesting the closest of `known` and carrying the valid names:
        `codes` when `known` names each twice (a tag's code and its display name), else `known`."""
        names = sorted(set(known))
        listed = names if codes is None else sorted(set(codes))
        suggestion = next(iter(difflib.get_close_matches(name, names, n=1)), None)
        total = len(listed)
        valid = listed if total <= LIST_ALL else difflib.get_close_matches(name, names, CLOSEST, _SOME_LIKENESS)
        return UnknownNameError(
            f"unknown {what} '{name}'",
            code=code,
            source=self._source,
            span=at,
            suggestion=suggestion,
            hint=None if suggestion else _expected(valid, total, plural, values=code in _VALUE_CODES),
            valid_values=tuple(valid),
            valid_count=total,
        )


_VALUE_CODES = (ErrorCode.UNKNOWN_VALUE, ErrorCode.UNKNOWN_TAG)


def _expected(valid: Sequence[str], total: int, plural: str, *, values: bool) -> str:
    """What an unknown name should have been; values written as a query writes them (quoted when
    not a bare word: `"New York"`), names (dimensions, fields, `tag`) as they are."""
    listed = ", ".join(value_text(value) if values else value for value in valid)
    if total <= LIST_ALL:
        return f"expected one of {listed}" if valid else f"there are no {plural}"
    return f"expected one of {total} {plural}" + (f", the closest: {listed}" if valid else "")


def _qualifier_span(node: Term, field: str, qualifier: str) -> Span | None:
    # `field:qualifier` starts the term (a quoted qualifier's span is its text's, quotes aside).
    if node.span is None:
        return None
    start = node.span[0] + len(field) + 1
    return (start, start + len(value_text(qualifier)))


def _name_span(node: Term, name: str) -> Span | None:
    # A term starts with its name, so the name's span follows from the term's.
    return None if node.span is None else (node.span[0], node.span[0] + len(name))


def _value_span(node: Term, index: int) -> Span | None:
    spans: Sequence[Span] = node.value_spans
    return spans[index] if index < len(spans) else node.span


def _unique(items: Iterable[_T]) -> tuple[_T, ...]:
    return tuple(dict.fromkeys(items))

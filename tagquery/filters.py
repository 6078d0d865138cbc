"""Structured filters to the same syntax tree the text parses to.

The input mirrors the GraphQL `AudienceFilter` input as plain data. Each object sets exactly one
member (members set to None count as unset, as GraphQL sends them):

    {"and": [filter, ...]}   {"or": [filter, ...]}   {"not": filter}
    {"tag": "code"}                                              tag:code
    {"dimension": {"name": "tier", "values": ["gold"]}}          tier:gold (two or more: tier IN (...))
    {"field": {"name": "points", "op": "GTE", "value": "1000"}}  points >= 1000
        op EQ NE LT LTE GT GTE take "value"; IN takes "values"; BETWEEN takes "low" and "high";
        WITHIN takes a duration "value" such as "30d". IN may take a "within" (a dated dimension's window).
    {"dimension": {"name": "bought", "values": ["snacks"], "within": "90d"}}  bought:snacks WITHIN 90d
    {"dimension": {"name": "entered", "values": ["at_risk", "churned"], "within": "30d"}}
                                                                 entered IN (at_risk, churned) WITHIN 30d
    {"field": {"name": "spend_90d", "qualifier": "snacks", "op": "GTE", "value": "500"}}
                                                                 spend_90d:snacks >= 500

Values are strings, typed later by the binder exactly as text values are. An empty and / or list
is refused rather than read as TRUE / FALSE: the text language has no way to write it, and every
accepted filter must print to canonical text that parses back to the same tree. Shape errors are
QuerySyntaxError with code INVALID_FILTER and a `path` such as `filter.and[2].field.op`.
"""

from __future__ import annotations

from collections.abc import Mapping

from tagquery.ast import (
    TAG,
    Between,
    Compare,
    Dimension,
    In,
    Node,
    Not,
    Op,
    Tag,
    Term,
    Unit,
    Within,
    conjoin,
    disjoin,
    is_name,
    parse_duration,
    term_weight,
)
from tagquery.errors import ErrorCode, QueryLimitError, QuerySyntaxError
from tagquery.limits import MAX_DEPTH, MAX_LENGTH, MAX_TERMS
from tagquery.printer import to_text

MEMBERS = ("and", "or", "not", "tag", "dimension", "field")
_COMPARISONS = {op.name: op for op in Op}
FIELD_OPS = (*_COMPARISONS, "IN", "BETWEEN", "WITHIN")
_OPERANDS = {name: {"value"} for name in _COMPARISONS} | {
    "IN": {"values"},
    "BETWEEN": {"low", "high"},
    "WITHIN": {"value"},
}


def from_filter(data: object) -> Node:
    """Read a structured filter; raises a TagQueryError subclass (with a `path`) on bad input."""
    node = _Reader().read(data, "filter", 0)
    if len(to_text(node)) > MAX_LENGTH:
        message = f"the filter is longer than {MAX_LENGTH} characters once written as text"
        raise QueryLimitError(message, code=ErrorCode.TOO_LONG, path="filter")
    return node


class _Reader:
    def __init__(self) -> None:
        self._terms = 0

    def read(self, data: object, path: str, depth: int) -> Node:
        """Read the filter object at `path`, which sits inside `depth` and / or / not objects."""
        key, value = _only_member(data, path)
        path = f"{path}.{key}"
        if key in ("and", "or", "not") and depth == MAX_DEPTH:
            raise QueryLimitError(f"nested deeper than {MAX_DEPTH} levels", code=ErrorCode.TOO_DEEP, path=path)
        match key:
            case "and" | "or":
                parts = (self.read(item, f"{path}[{i}]", depth + 1) for i, item in enumerate(_list(value, path)))
                return conjoin(parts) if key == "and" else disjoin(parts)
            case "not":
                return Not(self.read(value, path, depth + 1))
            case "tag":
                return self._counted(Tag(_string(value, path)), path)
            case "dimension":
                return self._counted(_dimension(value, path), path)
        return self._counted(_field(value, path), path)

    def _counted(self, term: Term, path: str) -> Term:
        self._terms += term_weight(term)
        if self._terms > MAX_TERMS:
            message = f"more than {MAX_TERMS} terms (values of a list count one each)"
            raise QueryLimitError(message, code=ErrorCode.TOO_MANY_TERMS, path=path)
        return term


def _dimension(data: object, path: str) -> Term:
    fields = _exactly(data, path, {"name", "values"}, optional={"within"})
    name = _name(fields["name"], f"{path}.name", allow_tag=True)
    items = _list(fields["values"], f"{path}.values")
    values = tuple(_string(item, f"{path}.values[{i}]") for i, item in enumerate(items))
    within = (
        None if "within" not in fields else _duration(_string(fields["within"], f"{path}.within"), f"{path}.within")
    )
    if name == TAG and within is not None:
        raise _error("a tag takes no window", f"{path}.within")
    if len(values) > 1:
        return In(name, values, within=within)
    return Tag(values[0]) if name == TAG else Dimension(name, values[0], within)


def _field(data: object, path: str) -> Term:
    raw_op = _object(data, path).get("op")
    if raw_op is None:
        raise _error("missing 'op'", f"{path}.op")
    op = _string(raw_op, f"{path}.op")
    if op not in _OPERANDS:
        raise _error(f"unknown op '{op}', expected one of {', '.join(FIELD_OPS)}", f"{path}.op")
    optional = {"qualifier", "within"} if op == "IN" else {"qualifier"}
    fields = _exactly(data, path, {"name", "op", *_OPERANDS[op]}, optional=optional)
    qualifier = None if "qualifier" not in fields else _string(fields["qualifier"], f"{path}.qualifier")
    name = _name(fields["name"], f"{path}.name", allow_tag=op == "IN" and qualifier is None)
    if op == "IN":
        items = _list(fields["values"], f"{path}.values")
        values = tuple(_string(item, f"{path}.values[{i}]") for i, item in enumerate(items))
        within = (
            None if "within" not in fields else _duration(_string(fields["within"], f"{path}.within"), f"{path}.within")
        )
        return In(name, values, qualifier, within)
    if op == "BETWEEN":
        return Between(name, _string(fields["low"], f"{path}.low"), _string(fields["high"], f"{path}.high"), qualifier)
    value = _string(fields["value"], f"{path}.value")
    if op == "WITHIN":
        if qualifier is not None:
            raise _error("WITHIN takes no qualifier (a dimension's window is dimension.within)", f"{path}.qualifier")
        return Within(name, *_duration(value, f"{path}.value"))
    return Compare(name, _COMPARISONS[op], value, qualifier)


# Shapes.


def _only_member(data: object, path: str) -> tuple[str, object]:
    present = _present(_object(data, path), path, MEMBERS)
    if len(present) != 1:
        got = ", ".join(present) or "none"
        raise _error(f"expected exactly one of {', '.join(MEMBERS)}, got {got}", path)
    return next(iter(present.items()))


def _exactly(
    data: object, path: str, keys: set[str], optional: frozenset[str] | set[str] = frozenset()
) -> dict[str, object]:
    """The members of `data`: all of `keys`, any of `optional`, nothing else."""
    present = _present(_object(data, path), path, sorted(keys | optional))
    missing = sorted(keys - present.keys())
    if missing:
        raise _error(f"missing '{missing[0]}'", f"{path}.{missing[0]}")
    return present


def _present(data: Mapping[object, object], path: str, allowed: tuple[str, ...] | list[str]) -> dict[str, object]:
    """The members set to something other than None, refusing names outside `allowed`."""
    present = {key: value for key, value in data.items() if value is not None}
    for key in present:
        if key not in allowed:
            raise _error(f"unknown member {key!r}, expected one of {', '.join(allowed)}", path)
    return {str(key): value for key, value in present.items()}


def _object(data: object, path: str) -> Mapping[object, object]:
    if not isinstance(data, Mapping):
        raise _error("expected an object", path)
    return data


def _list(data: object, path: str) -> list[object]:
    if not isinstance(data, list | tuple) or not data:
        raise _error("expected a non-empty list", path)
    return list(data)


def _string(data: object, path: str) -> str:
    if not isinstance(data, str):
        raise _error("expected a string", path)
    return data


def _name(data: object, path: str, *, allow_tag: bool) -> str:
    name = _string(data, path)
    if not (is_name(name) or (allow_tag and name == TAG)):
        raise _error(f"'{name}' is not a field or dimension name", path)
    return name


def _duration(text: str, path: str) -> tuple[int, Unit]:
    duration = parse_duration(text)
    if duration is None:
        raise _error(f"expected a duration such as 30d, 12w, 6m or 1y, not '{text}'", path)
    return duration


def _error(message: str, path: str) -> QuerySyntaxError:
    return QuerySyntaxError(message, code=ErrorCode.INVALID_FILTER, path=path)

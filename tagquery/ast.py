"""The syntax tree: what the text (or a structured filter) says, before names are checked.

Nodes are frozen, slotted dataclasses. Spans are kept for error messages but take no part in
equality, so `parse(to_text(node)) == node`. Values stay strings here: whether `1000` is a number,
`2024-01-01` a date or `gold` a tier is the binder's business, which knows the catalog.

Invariants (checked on construction, so that every tree prints to text that parses back to it):
`And` / `Or` have at least two operands and are flat (no `And` directly inside an `And`); names are
bare words that are not keywords (`In` may also name `tag`); `In` has at least one value; `tag IN`
has no qualifier.

Purchase behaviour (issue 15) added two optional parts, both None in every older tree: a window on
a dimension term (`bought:stage3_formula WITHIN 90d`, `bought IN (a, b) WITHIN 30d`) and a
qualifier on a field (`spend_90d:snacks >= 500`: the field restricted to a category).
Build conjunctions and disjunctions with `conjoin` / `disjoin`, which flatten and unwrap.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections.abc import Iterable

from tagquery.errors import Span
from tagquery.tokens import is_bare_word

TAG = "tag"


class Op(enum.StrEnum):
    EQ = "="
    NE = "!="
    LT = "<"
    LTE = "<="
    GT = ">"
    GTE = ">="


class Unit(enum.StrEnum):
    DAY = "d"
    WEEK = "w"
    MONTH = "m"
    YEAR = "y"


_DURATION = re.compile(r"([0-9]+)([dwmy])", re.ASCII | re.IGNORECASE)


def parse_duration(text: str) -> tuple[int, Unit] | None:
    """(amount, unit) of a duration such as `30d`, `12w`, `6m`, `1y`; None if `text` is not one."""
    match = _DURATION.fullmatch(text)
    return None if match is None else (int(match[1]), Unit(match[2].lower()))


def is_name(text: str) -> bool:
    """A field or dimension name: a bare word that is not a keyword (so not `tag` either)."""
    return is_bare_word(text)


def _check_name(name: str) -> None:
    if not is_name(name):
        raise ValueError(f"{name!r} is not a name")


Window = tuple[int, Unit]
"""A duration: (amount, unit), `90d` is (90, Unit.DAY)."""


def _check_window(window: Window | None) -> None:
    if window is not None and window[0] < 0:
        raise ValueError("a duration is not negative")


@dataclasses.dataclass(frozen=True, slots=True)
class Tag:
    """`tag:code`: the member carries the tag (code or display name, resolved by the binder)."""

    code: str
    span: Span | None = dataclasses.field(default=None, compare=False, repr=False, kw_only=True)
    value_spans: tuple[Span, ...] = dataclasses.field(default=(), compare=False, repr=False, kw_only=True)


@dataclasses.dataclass(frozen=True, slots=True)
class Dimension:
    """`name:value`, e.g. `tier:gold`, `channel:tmall`, `city:上海`; with a window on a dated dimension,
    `bought:stage3_formula WITHIN 90d`."""

    name: str
    value: str
    within: Window | None = None
    span: Span | None = dataclasses.field(default=None, compare=False, repr=False, kw_only=True)
    value_spans: tuple[Span, ...] = dataclasses.field(default=(), compare=False, repr=False, kw_only=True)

    def __post_init__(self) -> None:
        _check_name(self.name)
        _check_window(self.within)


@dataclasses.dataclass(frozen=True, slots=True)
class Compare:
    """`field op value`, e.g. `points >= 1000`, `registered < 2024-01-01`, `spend_90d:snacks >= 500`."""

    field: str
    op: Op
    value: str
    qualifier: str | None = None
    span: Span | None = dataclasses.field(default=None, compare=False, repr=False, kw_only=True)
    value_spans: tuple[Span, ...] = dataclasses.field(default=(), compare=False, repr=False, kw_only=True)

    def __post_init__(self) -> None:
        _check_name(self.field)


@dataclasses.dataclass(frozen=True, slots=True)
class In:
    """`name IN (v, ...)` on a field, a dimension or `tag`: any of the values. A field may carry a
    qualifier (`orders_90d:snacks IN (1, 2)`), a list a window (`bought IN (a, b) WITHIN 30d`)."""

    name: str
    values: tuple[str, ...]
    qualifier: str | None = None
    within: Window | None = None
    span: Span | None = dataclasses.field(default=None, compare=False, repr=False, kw_only=True)
    value_spans: tuple[Span, ...] = dataclasses.field(default=(), compare=False, repr=False, kw_only=True)

    def __post_init__(self) -> None:
        if self.name != TAG:
            _check_name(self.name)
        elif self.qualifier is not None:
            raise ValueError("tag IN takes no qualifier")
        if not self.values:
            raise ValueError("IN needs at least one value")
        _check_window(self.within)


@dataclasses.dataclass(frozen=True, slots=True)
class Between:
    """`field BETWEEN low AND high`, both ends included."""

    field: str
    low: str
    high: str
    qualifier: str | None = None
    span: Span | None = dataclasses.field(default=None, compare=False, repr=False, kw_only=True)
    value_spans: tuple[Span, ...] = dataclasses.field(default=(), compare=False, repr=False, kw_only=True)

    def __post_init__(self) -> None:
        _check_name(self.field)


@dataclasses.dataclass(frozen=True, slots=True)
class Within:
    """`field WITHIN 30d`: a date field no earlier than `amount` units before today."""

    field: str
    amount: int
    unit: Unit
    span: Span | None = dataclasses.field(default=None, compare=False, repr=False, kw_only=True)
    value_spans: tuple[Span, ...] = dataclasses.field(default=(), compare=False, repr=False, kw_only=True)

    def __post_init__(self) -> None:
        _check_name(self.field)
        if self.amount < 0:
            raise ValueError("a duration is not negative")


@dataclasses.dataclass(frozen=True, slots=True)
class Not:
    operand: Node
    span: Span | None = dataclasses.field(default=None, compare=False, repr=False, kw_only=True)


@dataclasses.dataclass(frozen=True, slots=True)
class And:
    operands: tuple[Node, ...]
    span: Span | None = dataclasses.field(default=None, compare=False, repr=False, kw_only=True)

    def __post_init__(self) -> None:
        _check_operands(self.operands, And)


@dataclasses.dataclass(frozen=True, slots=True)
class Or:
    operands: tuple[Node, ...]
    span: Span | None = dataclasses.field(default=None, compare=False, repr=False, kw_only=True)

    def __post_init__(self) -> None:
        _check_operands(self.operands, Or)


Term = Tag | Dimension | Compare | In | Between | Within
Node = Term | Not | And | Or
TERMS = (Tag, Dimension, Compare, In, Between, Within)


def _check_operands(operands: tuple[Node, ...], kind: type[And] | type[Or]) -> None:
    if len(operands) < 2:
        raise ValueError(f"{kind.__name__} needs at least two operands; use conjoin / disjoin")
    if any(isinstance(operand, kind) for operand in operands):
        raise ValueError(f"{kind.__name__} must be flat; use conjoin / disjoin")


def conjoin(parts: Iterable[Node], span: Span | None = None) -> Node:
    """`a AND b AND ...`, flattened; a single part is returned as it is."""
    flat = tuple(_flatten(parts, And))
    return flat[0] if len(flat) == 1 else And(flat, span=span)  # And() rejects an empty list


def disjoin(parts: Iterable[Node], span: Span | None = None) -> Node:
    """`a OR b OR ...`, flattened; a single part is returned as it is."""
    flat = tuple(_flatten(parts, Or))
    return flat[0] if len(flat) == 1 else Or(flat, span=span)  # Or() rejects an empty list


def _flatten(parts: Iterable[Node], kind: type[And] | type[Or]) -> Iterable[Node]:
    for part in parts:
        if isinstance(part, kind):
            yield from part.operands
        else:
            yield part


def term_weight(term: Term) -> int:
    """How many terms a term counts for against the limit: each IN value is an operand of its own."""
    return len(term.values) if isinstance(term, In) else 1

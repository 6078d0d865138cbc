"""A test catalog, random syntax trees (any names and values, or only valid ones) and members."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

from tagquery import member_catalog
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
    Unit,
    Within,
    conjoin,
    disjoin,
    is_name,
)
from tagquery.bitmap_keys import BANDS
from tagquery.catalog import FieldType

TAGS = {
    "price_sensitive": "价格敏感",
    "churn_risk": "流失风险",
    "618_buyer": "618 买家",
    "likes_live": "爱看直播",
    "laba_draw": "腊八抽奖",
}
CATALOG = member_catalog(
    tags=TAGS,
    tiers=("silver", "gold", "platinum", "diamond"),
    channels=("tmall", "jd", "douyin", "wechat", "wecom", "pos", "mall"),
    cities=("上海", "北京", "杭州", "New York"),
    statuses=("prospect", "member"),
    genders=("male", "female", "unknown"),
    lifecycles=("introduction", "growth", "mature", "at_risk", "churned"),
    consents=("sms", "ai_call", "wecom", "mini_program", "email", "guardian"),
)
# A month end, so calendar windows (1m back from 03-31) clip.
TODAY = date(2025, 3, 31)

# Syntax only: any name the grammar accepts, any value at all (quotes, keywords, newlines ...).

_word_chars = st.characters(categories=("L", "N")) | st.sampled_from("_-.")
_names = (
    st.sampled_from(sorted([*CATALOG.dimensions, *CATALOG.fields])) | st.text(_word_chars, min_size=1, max_size=6)
).filter(is_name)
_values = st.sampled_from(["gold", "1000", "12.50", "2024-01-01", "30d", "and", "TAG", "", '"', "\\"]) | st.text(
    max_size=6
)


def _value_lists() -> st.SearchStrategy[tuple[str, ...]]:
    return st.lists(_values, min_size=1, max_size=4).map(tuple)


_windows = st.none() | st.tuples(st.integers(0, 10**6), st.sampled_from(Unit))
_qualifiers = st.none() | _values  # purchase behaviour: `spend_90d:snacks >= 500`, `bought:x WITHIN 30d`
syntax_terms: st.SearchStrategy[Node] = st.one_of(
    st.builds(Tag, _values),
    st.builds(Dimension, _names, _values, _windows),
    st.builds(Compare, _names, st.sampled_from(Op), _values, _qualifiers),
    st.builds(In, _names, _value_lists(), _qualifiers, _windows),
    st.builds(In, st.just(TAG), _value_lists(), st.none(), _windows),
    st.builds(Between, _names, _values, _values, _qualifiers),
    st.builds(Within, _names, st.integers(0, 10**6), st.sampled_from(Unit)),
)


def trees(terms: st.SearchStrategy[Node], max_leaves: int = 10) -> st.SearchStrategy[Node]:
    """Flat trees of And / Or / Not over `terms`, as the parser builds them."""

    def extend(children: st.SearchStrategy[Node]) -> st.SearchStrategy[Node]:
        operands = st.lists(children, min_size=2, max_size=4)
        return operands.map(conjoin) | operands.map(disjoin) | children.map(Not)

    return st.recursive(terms, extend, max_leaves=max_leaves)


syntax_trees = trees(syntax_terms)

# Valid against CATALOG, with values close to the members' facts so that terms hit and miss.

# Small values, and the band boundaries with their neighbours (where a threshold reads one band key).
_INTEGERS = st.one_of(
    st.integers(-2, 80), st.sampled_from(BANDS["points"]).flatmap(lambda b: st.sampled_from((b - 1, b, b + 1)))
).map(str)
_MONEY = st.decimals(0, 100, places=2).map(str)
_DATES = st.dates(date(2024, 1, 1), date(2025, 4, 30))
_TYPED: dict[FieldType, st.SearchStrategy[str]] = {
    FieldType.INTEGER: _INTEGERS,
    FieldType.MONEY: _MONEY,
    FieldType.DATE: _DATES.map(date.isoformat),
}
_DATE_FIELDS = sorted(name for name, kind in CATALOG.fields.items() if kind is FieldType.DATE)
_DIMENSIONS = sorted(CATALOG.dimensions)


# One strategy per name rather than flatmap: generation is several times faster.


def _on_field(build: Callable[[str, st.SearchStrategy[str]], st.SearchStrategy[Node]]) -> st.SearchStrategy[Node]:
    return st.one_of([build(name, _TYPED[kind]) for name, kind in sorted(CATALOG.fields.items())])


def _on_dimension(build: Callable[[str, st.SearchStrategy[str]], st.SearchStrategy[Node]]) -> st.SearchStrategy[Node]:
    dimensions = sorted(CATALOG.dimensions.items())
    return st.one_of([build(name, st.sampled_from(sorted(spec.values))) for name, spec in dimensions])


_tag_names = st.sampled_from(sorted([*TAGS, *TAGS.values()]))

valid_terms: st.SearchStrategy[Node] = st.one_of(
    st.builds(Tag, _tag_names),
    st.builds(In, st.just(TAG), st.lists(_tag_names, min_size=1, max_size=3).map(tuple)),
    _on_dimension(lambda name, v: st.builds(Dimension, st.just(name), v)),
    _on_dimension(lambda name, v: st.builds(In, st.just(name), st.lists(v, min_size=1, max_size=3).map(tuple))),
    _on_field(lambda name, v: st.builds(Compare, st.just(name), st.sampled_from(Op), v)),
    _on_field(lambda name, v: st.builds(In, st.just(name), st.lists(v, min_size=1, max_size=3).map(tuple))),
    _on_field(lambda name, v: st.builds(Between, st.just(name), v, v)),
    st.builds(Within, st.sampled_from(_DATE_FIELDS), st.integers(0, 100), st.sampled_from(Unit)),
)

valid_trees = trees(valid_terms, max_leaves=8)


def _optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


def _sampled_set(values: frozenset[str]) -> st.SearchStrategy[frozenset[str]]:
    return st.frozensets(st.sampled_from(sorted(values)))


def _dimension_value(name: str) -> st.SearchStrategy[Any]:
    spec = CATALOG.dimensions[name]
    return _sampled_set(spec.values) if spec.multi else _optional(st.sampled_from(sorted(spec.values)))


members: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries(
    {
        "tag": _sampled_set(frozenset(TAGS)),
        **{name: _dimension_value(name) for name in _DIMENSIONS},
        "points": _optional(st.integers(0, 80)),
        "growth": _optional(st.integers(0, 80)),
        "orders_365d": _optional(st.integers(0, 10)),
        "order_count": _optional(st.integers(0, 20)),
        "total_spend": _optional(st.decimals(0, 100, places=2).map(Decimal)),
        "registered": _optional(_DATES),
        "last_purchase": _optional(st.dates(TODAY - timedelta(days=500), TODAY)),
        "birthday": _optional(st.dates(date(1950, 1, 1), date(2020, 12, 31))),
    }
)


def to_filter(node: Node) -> dict[str, object]:
    """The structured filter a GraphQL client would send for `node`."""
    match node:
        case And(operands):
            return {"and": [to_filter(operand) for operand in operands]}
        case Or(operands):
            return {"or": [to_filter(operand) for operand in operands]}
        case Not(operand):
            return {"not": to_filter(operand)}
        case Tag(code):
            return {"tag": code}
        case Dimension(name, value, within):
            return {"dimension": {"name": name, "values": [value], **_window(within)}}
        case In(name, values, qualifier, within):
            listed = {"values": list(values), **_qualifier(qualifier), **_window(within)}
            return {"field": {"name": name, "op": "IN", **listed}}
        case Compare(field, op, value, qualifier):
            return {"field": {"name": field, "op": op.name, "value": value, **_qualifier(qualifier)}}
        case Between(field, low, high, qualifier):
            return {"field": {"name": field, "op": "BETWEEN", "low": low, "high": high, **_qualifier(qualifier)}}
        case Within(field, amount, unit):
            return {"field": {"name": field, "op": "WITHIN", "value": f"{amount}{unit}"}}
    raise AssertionError(node)


def _window(within: tuple[int, Unit] | None) -> dict[str, str]:
    return {} if within is None else {"within": f"{within[0]}{within[1]}"}


def _qualifier(qualifier: str | None) -> dict[str, str]:
    return {} if qualifier is None else {"qualifier": qualifier}

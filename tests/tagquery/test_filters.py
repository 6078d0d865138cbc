"""Structured filters: the same trees as text, shape errors with paths, limits, fuzzing."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tagquery import ErrorCode, QueryLimitError, QuerySyntaxError, TagQueryError, from_filter, parse, to_text
from tagquery.ast import Node
from tests.tagquery.strategies import syntax_trees, to_filter, valid_trees

GOLDEN: list[tuple[dict[str, Any], str]] = [
    (
        {
            "and": [
                {"tag": "price_sensitive"},
                {
                    "or": [
                        {"dimension": {"name": "channel", "values": ["tmall"]}},
                        {"dimension": {"name": "channel", "values": ["jd"]}},
                    ]
                },
                {"not": {"tag": "churn_risk"}},
            ]
        },
        "tag:price_sensitive AND (channel:tmall OR channel:jd) AND NOT tag:churn_risk",
    ),
    (
        {
            "and": [
                {"dimension": {"name": "tier", "values": ["platinum", "diamond"]}},
                {"field": {"name": "points", "op": "GTE", "value": "1000"}},
                {"field": {"name": "last_purchase", "op": "WITHIN", "value": "30d"}},
            ]
        },
        "tier IN (platinum, diamond) AND points >= 1000 AND last_purchase WITHIN 30d",
    ),
    ({"dimension": {"name": "tag", "values": ["a"]}}, "tag:a"),
    ({"dimension": {"name": "tag", "values": ["a", "b"]}}, "tag IN (a, b)"),
    ({"field": {"name": "tag", "op": "IN", "values": ["a"]}}, "tag IN (a)"),
    ({"field": {"name": "age", "op": "BETWEEN", "low": "18", "high": "30"}}, "age BETWEEN 18 AND 30"),
    ({"field": {"name": "points", "op": "NE", "value": "0", "values": None}}, "points != 0"),
    ({"and": [{"tag": "a"}, {"and": [{"tag": "b"}, {"tag": "c"}]}]}, "tag:a AND tag:b AND tag:c"),
    ({"or": [{"tag": "a"}]}, "tag:a"),
    ({"tag": "a", "not": None, "and": None}, "tag:a"),
    ({"tag": "New York"}, 'tag:"New York"'),
]


@pytest.mark.parametrize(("data", "text"), GOLDEN)
def test_golden_filters_read_as_the_same_tree_as_text(data: dict[str, Any], text: str) -> None:
    assert to_text(from_filter(data)) == text
    assert from_filter(data) == parse(text)


_ONE_OF = "expected exactly one of and, or, not, tag, dimension, field"

ERRORS: list[tuple[object, str, str]] = [
    ([], "filter", "expected an object"),
    ({}, "filter", f"{_ONE_OF}, got none"),
    ({"tag": None}, "filter", f"{_ONE_OF}, got none"),
    ({"tag": "a", "not": {"tag": "b"}}, "filter", f"{_ONE_OF}, got tag, not"),
    ({"tags": "a"}, "filter", "unknown member 'tags', expected one of and, or, not, tag, dimension, field"),
    ({"and": "tag:a"}, "filter.and", "expected a non-empty list"),
    ({"or": []}, "filter.or", "expected a non-empty list"),
    ({"and": [{"tag": "a"}, {"tag": "b"}, {"tag": 3}]}, "filter.and[2].tag", "expected a string"),
    ({"not": {"or": [{"tag": "a"}, "tag:b"]}}, "filter.not.or[1]", "expected an object"),
    ({"dimension": {"name": "tier"}}, "filter.dimension.values", "missing 'values'"),
    ({"dimension": {"name": "tier", "values": []}}, "filter.dimension.values", "expected a non-empty list"),
    ({"dimension": {"name": "tier", "values": ["gold", 1]}}, "filter.dimension.values[1]", "expected a string"),
    (
        {"dimension": {"name": "total spend", "values": ["1"]}},
        "filter.dimension.name",
        "'total spend' is not a field or dimension name",
    ),
    (
        {"dimension": {"name": "tier", "value": "gold"}},
        "filter.dimension",
        "unknown member 'value', expected one of name, values, within",
    ),
    ({"field": {"name": "points", "value": "1"}}, "filter.field.op", "missing 'op'"),
    ({"field": {"name": "points", "op": 1, "value": "1"}}, "filter.field.op", "expected a string"),
    (
        {"field": {"name": "points", "op": "GE", "value": "1"}},
        "filter.field.op",
        "unknown op 'GE', expected one of EQ, NE, LT, LTE, GT, GTE, IN, BETWEEN, WITHIN",
    ),
    (
        {"field": {"name": "points", "op": "GTE", "values": ["1"]}},
        "filter.field",
        "unknown member 'values', expected one of name, op, qualifier, value",
    ),
    ({"field": {"name": "points", "op": "BETWEEN", "low": "1"}}, "filter.field.high", "missing 'high'"),
    ({"field": {"name": "points", "op": "IN", "values": [1]}}, "filter.field.values[0]", "expected a string"),
    (
        {"field": {"name": "last_purchase", "op": "WITHIN", "value": "30x"}},
        "filter.field.value",
        "expected a duration such as 30d, 12w, 6m or 1y, not '30x'",
    ),
    (
        {"field": {"name": "tag", "op": "EQ", "value": "a"}},
        "filter.field.name",
        "'tag' is not a field or dimension name",
    ),
    ({"field": {"name": None, "op": "EQ", "value": "a"}}, "filter.field.name", "missing 'name'"),
]


@pytest.mark.parametrize(("data", "path", "message"), ERRORS)
def test_shape_errors_name_the_path(data: object, path: str, message: str) -> None:
    with pytest.raises(QuerySyntaxError) as raised:
        from_filter(data)
    error = raised.value
    assert (error.code, error.path, error.message) == (ErrorCode.INVALID_FILTER, path, message)
    assert str(error) == f"{message} at {path}"
    assert (error.line, error.column) == (None, None)


def _nested(key: str, depth: int) -> dict[str, Any]:
    data: dict[str, Any] = {"tag": "a"}
    for _ in range(depth):
        data = {key: data} if key == "not" else {key: [data, {"tag": "b"}]}
    return data


@pytest.mark.parametrize("key", ["not", "and", "or"])
def test_depth_limit(key: str) -> None:
    from_filter(_nested(key, 32))
    with pytest.raises(QueryLimitError) as raised:
        from_filter(_nested(key, 33))
    step = ".not" if key == "not" else f".{key}[0]"
    error = raised.value
    assert (error.code, error.message) == (ErrorCode.TOO_DEEP, "nested deeper than 32 levels")
    assert error.path == "filter" + step * 32 + f".{key}"


def test_ten_thousand_levels_never_raise_recursion_error() -> None:
    with pytest.raises(QueryLimitError):
        from_filter(_nested("not", 10_000))


def test_term_limit_counts_list_values() -> None:
    from_filter({"or": [{"tag": "a"}] * 200})
    with pytest.raises(QueryLimitError) as raised:
        from_filter({"or": [{"tag": "a"}] * 201})
    assert (raised.value.code, raised.value.path) == (ErrorCode.TOO_MANY_TERMS, "filter.or[200].tag")
    assert raised.value.message == "more than 200 terms (values of a list count one each)"
    with pytest.raises(QueryLimitError) as raised:
        from_filter({"and": [{"tag": "a"}, {"dimension": {"name": "tier", "values": ["x"] * 200}}]})
    assert (raised.value.code, raised.value.path) == (ErrorCode.TOO_MANY_TERMS, "filter.and[1].dimension")


def test_a_filter_too_long_to_save_as_text_is_refused() -> None:
    with pytest.raises(QueryLimitError) as raised:
        from_filter({"tag": "x" * 4000})
    assert (raised.value.code, raised.value.path) == (ErrorCode.TOO_LONG, "filter")
    assert raised.value.message == "the filter is longer than 4000 characters once written as text"


@given(syntax_trees)
def test_filter_of_any_tree_reads_back_as_that_tree(tree: Node) -> None:
    assert from_filter(to_filter(tree)) == tree


@given(valid_trees)
def test_filter_and_text_agree(tree: Node) -> None:
    assert from_filter(to_filter(tree)) == parse(to_text(tree))


_keys = st.sampled_from(
    ["and", "or", "not", "tag", "dimension", "field", "name", "values", "value", "op", "low", "high", "x"]
)
_leaves = (
    st.none()
    | st.text(max_size=5)
    | st.sampled_from(["GTE", "IN", "BETWEEN", "WITHIN", "30d", "tier", "points"])
    | st.integers()
)
_json = st.recursive(
    _leaves,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(_keys, children, max_size=3),
    max_leaves=15,
)


@given(_json)
def test_arbitrary_data_raises_only_typed_errors(data: object) -> None:
    result = _read(data)
    if isinstance(result, TagQueryError):
        assert result.path is not None
        assert result.path.startswith("filter")
    else:
        assert parse(to_text(result)) == result


def _read(data: object) -> Node | TagQueryError:
    try:
        return from_filter(data)
    except TagQueryError as error:
        return error

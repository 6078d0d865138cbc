"""Every error path of text queries: code, position, message, suggestion; rendering; limits."""

from __future__ import annotations

import pytest

from tagquery import (
    ErrorCode,
    QueryLimitError,
    QuerySyntaxError,
    QueryTypeError,
    TagQueryError,
    UnknownNameError,
    bind,
    parse,
)
from tests.tagquery.strategies import CATALOG

_CLASS = {
    ErrorCode.SYNTAX: QuerySyntaxError,
    ErrorCode.UNKNOWN_TAG: UnknownNameError,
    ErrorCode.UNKNOWN_DIMENSION: UnknownNameError,
    ErrorCode.UNKNOWN_FIELD: UnknownNameError,
    ErrorCode.UNKNOWN_VALUE: UnknownNameError,
    ErrorCode.TYPE_MISMATCH: QueryTypeError,
    ErrorCode.OUT_OF_RANGE: QueryTypeError,
    ErrorCode.TOO_LONG: QueryLimitError,
    ErrorCode.TOO_DEEP: QueryLimitError,
    ErrorCode.TOO_MANY_TERMS: QueryLimitError,
}

TERM = "a term such as tag:code, tier:gold or points >= 100"


def assert_error(text: str, code: ErrorCode, at: tuple[int, int], message: str | None = None) -> TagQueryError:
    """Parse and bind `text`; it must fail with `code` at (line, column) and, if given, `message`."""
    with pytest.raises(TagQueryError) as raised:
        bind(parse(text), CATALOG, source=text)
    error = raised.value
    assert (error.code, (error.line, error.column)) == (code, at), str(error)
    assert type(error) is _CLASS[code]
    if message is not None:
        assert error.message == message
    return error


SYNTAX_CASES = [
    # Lexer.
    ("tier:gold & tag:x", (1, 11), "unexpected character '&'"),
    ("tier:gold\n  AND city:'上海'", (2, 12), 'unexpected character "\'"'),
    ('tag:"abc', (1, 5), "unterminated string"),
    ('tag:"abc\nAND tier:gold"', (1, 5), "unterminated string"),
    ('tag:"ab\\', (1, 5), "unterminated string"),
    ('tag:"a\\qb"', (1, 7), "unknown escape '\\q' in string"),
    # Parser.
    ("", (1, 1), "the query is empty"),
    (" \n\u3000 ", (2, 3), "the query is empty"),
    ("(tier:gold OR tier:silver", (1, 26), "expected ')' to match the '(' opened at 1:1, found end of input"),
    (
        "tier:gold AND\n  (points >= 1\n   OR tag:x",
        (3, 12),
        "expected ')' to match the '(' opened at 2:3, found end of input",
    ),
    ("price_sensitive AND tier:gold", (1, 1), f"expected {TERM}, found the bare word 'price_sensitive'"),
    ("tier:gold AND (vip)", (1, 16), f"expected {TERM}, found the bare word 'vip'"),
    ("points 100", (1, 8), "expected ':', a comparison, IN, BETWEEN or WITHIN after 'points', found '100'"),
    ("points == 100", (1, 9), "expected a value, found '='"),
    ("tag >= 3", (1, 5), "expected ':' or IN after tag, found '>='"),
    ("tier:", (1, 6), "expected a value, found end of input"),
    ("tag:and", (1, 5), "expected a value, found 'and'"),
    ("tier IN platinum", (1, 9), "expected '(' after IN, found 'platinum'"),
    ("tier IN (gold silver)", (1, 15), "expected ',' or ')' in the IN list, found 'silver'"),
    ("tier IN ()", (1, 10), "expected a value, found ')'"),
    ("tier IN (gold,)", (1, 15), "expected a value, found ')'"),
    ("points BETWEEN 1 OR 5", (1, 18), "expected AND between the bounds of BETWEEN, found 'OR'"),
    ("last_purchase WITHIN 30x", (1, 22), "expected a duration such as 30d, 12w, 6m or 1y, found '30x'"),
    ('last_purchase WITHIN "30d"', (1, 22), "expected a duration such as 30d, 12w, 6m or 1y, found '\"30d\"'"),
    ("last_purchase WITHIN -3d", (1, 22), "expected a duration such as 30d, 12w, 6m or 1y, found '-3d'"),
    ("tier:gold tier:silver", (1, 11), "expected AND, OR or end of input, found 'tier'"),
    ("tier:gold)", (1, 10), "expected AND, OR or end of input, found ')'"),
    ("AND tier:gold", (1, 1), f"expected {TERM}, found 'AND'"),
    ("tier:gold AND", (1, 14), f"expected {TERM}, found end of input"),
    ("NOT", (1, 4), f"expected {TERM}, found end of input"),
    ("()", (1, 2), f"expected {TERM}, found ')'"),
]


@pytest.mark.parametrize(("text", "at", "message"), SYNTAX_CASES)
def test_syntax_errors(text: str, at: tuple[int, int], message: str) -> None:
    assert_error(text, ErrorCode.SYNTAX, at, message)


NAME_CASES = [
    (
        "tag:price_sensitive AND (channel:tmall OR channel:jd) AND NOT tag:churn_rsk",
        ErrorCode.UNKNOWN_TAG,
        (1, 67),
        "unknown tag 'churn_rsk'",
        "churn_risk",
    ),
    ("tag:zzz", ErrorCode.UNKNOWN_TAG, (1, 5), "unknown tag 'zzz'", None),
    ("tag IN (churn_risk, 价格敏)", ErrorCode.UNKNOWN_TAG, (1, 21), "unknown tag '价格敏'", "价格敏感"),
    ("teir:gold", ErrorCode.UNKNOWN_DIMENSION, (1, 1), "unknown dimension 'teir'", "tier"),
    ("tier:gold OR\n  colour:red", ErrorCode.UNKNOWN_DIMENSION, (2, 3), "unknown dimension 'colour'", None),
    ("pionts >= 5", ErrorCode.UNKNOWN_FIELD, (1, 1), "unknown field 'pionts'", "points"),
    ("last_purchse WITHIN 3d", ErrorCode.UNKNOWN_FIELD, (1, 1), "unknown field 'last_purchse'", "last_purchase"),
    ("teir IN (gold)", ErrorCode.UNKNOWN_FIELD, (1, 1), "unknown field or dimension 'teir'", "tier"),
    ("tags IN (gold)", ErrorCode.UNKNOWN_FIELD, (1, 1), "unknown field or dimension 'tags'", "tag"),
    ("tier:platnum", ErrorCode.UNKNOWN_VALUE, (1, 6), "unknown tier 'platnum'", "platinum"),
    ("channel IN (tmall, jdd)", ErrorCode.UNKNOWN_VALUE, (1, 20), "unknown channel 'jdd'", "jd"),
    ("city:杭州市", ErrorCode.UNKNOWN_VALUE, (1, 6), "unknown city '杭州市'", "杭州"),
]


@pytest.mark.parametrize(("text", "code", "at", "message", "suggestion"), NAME_CASES)
def test_unknown_names(text: str, code: ErrorCode, at: tuple[int, int], message: str, suggestion: str | None) -> None:
    assert assert_error(text, code, at, message).suggestion == suggestion


TYPE_CASES = [
    ("points >= 1.5", ErrorCode.TYPE_MISMATCH, (1, 11), "points takes a whole number, not '1.5'"),
    ("age IN (20, x)", ErrorCode.TYPE_MISMATCH, (1, 13), "age takes a whole number, not 'x'"),
    (
        "total_spend > 12.345",
        ErrorCode.TYPE_MISMATCH,
        (1, 15),
        "total_spend takes an amount such as 199 or 199.90, not '12.345'",
    ),
    (
        "registered >= 2024-02-30",
        ErrorCode.TYPE_MISMATCH,
        (1, 15),
        "registered takes a date such as 2024-01-31, not '2024-02-30'",
    ),
    (
        "registered >= 20240101",
        ErrorCode.TYPE_MISMATCH,
        (1, 15),
        "registered takes a date such as 2024-01-31, not '20240101'",
    ),
    ("registered >= 30d", ErrorCode.TYPE_MISMATCH, (1, 15), "registered takes a date such as 2024-01-31, not '30d'"),
    (
        "registered BETWEEN 2024-01-01 AND x",
        ErrorCode.TYPE_MISMATCH,
        (1, 35),
        "registered takes a date such as 2024-01-31, not 'x'",
    ),
    ("points:5", ErrorCode.TYPE_MISMATCH, (1, 1), "points is a field, not a dimension"),
    ("tier >= gold", ErrorCode.TYPE_MISMATCH, (1, 1), "tier is a dimension, not a field"),
    ("tier BETWEEN a AND b", ErrorCode.TYPE_MISMATCH, (1, 1), "tier is a dimension, not a field"),
    ("tier WITHIN 3d", ErrorCode.TYPE_MISMATCH, (1, 1), "tier is a dimension, not a field"),
    (
        "points WITHIN 30d",
        ErrorCode.TYPE_MISMATCH,
        (1, 1),
        "WITHIN applies to date fields; points is a whole-number field",
    ),
    ("points > 9223372036854775808", ErrorCode.OUT_OF_RANGE, (1, 10), "9223372036854775808 is out of range for points"),
    (
        "total_spend < 1000000000000000",
        ErrorCode.OUT_OF_RANGE,
        (1, 15),
        "1000000000000000 is out of range for total_spend",
    ),
    (
        "last_purchase WITHIN 101y",
        ErrorCode.OUT_OF_RANGE,
        (1, 22),
        "a window of 101y reaches back more than a hundred years",
    ),
    (
        "last_purchase WITHIN 36601d",
        ErrorCode.OUT_OF_RANGE,
        (1, 22),
        "a window of 36601d reaches back more than a hundred years",
    ),
]


@pytest.mark.parametrize(("text", "code", "at", "message"), TYPE_CASES)
def test_type_errors(text: str, code: ErrorCode, at: tuple[int, int], message: str) -> None:
    assert_error(text, code, at, message)


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("price_sensitive", "for a tag write tag:price_sensitive"),
        ("tag:and", 'to use a keyword as a value, quote it: "and"'),
        ("registered >= 30d", "for a time window write registered WITHIN 30d"),
        ("points:5", "compare it instead, e.g. points = 5"),
        ("tier >= gold", "write tier:value or tier IN (a, b)"),
    ],
)
def test_hints_say_how_to_write_it(text: str, hint: str) -> None:
    with pytest.raises(TagQueryError) as raised:
        bind(parse(text), CATALOG, source=text)
    assert raised.value.hint == hint
    assert f"; {hint}\n" in str(raised.value)


def test_largest_values_in_range_are_accepted() -> None:
    bind(parse("points <= 9223372036854775807 AND total_spend < 999999999999999.99"), CATALOG)
    bind(parse("last_purchase WITHIN 100y AND registered WITHIN 36600d"), CATALOG)


# Rendering.


def test_str_shows_position_suggestion_and_caret_under_the_name() -> None:
    text = "tag:price_sensitive AND (channel:tmall OR channel:jd) AND NOT tag:churn_rsk"
    error = assert_error(text, ErrorCode.UNKNOWN_TAG, (1, 67))
    assert str(error) == (
        "unknown tag 'churn_rsk' at 1:67, did you mean 'churn_risk'?\n" + text + "\n" + " " * 66 + "^" * 9
    )


def test_caret_accounts_for_wide_characters_and_tabs() -> None:
    text = "city:上海 AND\n\ttier:platnum"
    error = assert_error(text, ErrorCode.UNKNOWN_VALUE, (2, 7))
    assert error.snippet == "\ttier:platnum\n\t     ^^^^^^^"
    wide = "tag:价格敏感 OR tag:流失风"
    error = assert_error(wide, ErrorCode.UNKNOWN_TAG, (1, 17))
    # 价格敏感 takes eight terminal cells; the three unknown characters six.
    assert error.snippet.splitlines()[1] == " " * 20 + "^" * 6


def test_caret_at_end_of_input_is_one_wide() -> None:
    error = assert_error("tier:gold AND", ErrorCode.SYNTAX, (1, 14))
    assert error.snippet == "tier:gold AND\n             ^"


def test_without_a_source_errors_have_no_position() -> None:
    with pytest.raises(UnknownNameError) as raised:
        bind(parse("tag:churn_rsk"), CATALOG)
    error = raised.value
    assert (error.line, error.column, error.snippet) == (None, None, "")
    assert error.span == (4, 13)
    assert str(error) == "unknown tag 'churn_rsk', did you mean 'churn_risk'?"


# Limits: refused with QueryLimitError before any phase recurses on the input.


def test_text_longer_than_the_limit() -> None:
    text = " OR ".join(["tier:gold"] * 400)
    assert_error(text, ErrorCode.TOO_LONG, (1, 4001), "the query is longer than 4000 characters")


def test_text_whose_canonical_form_is_longer_than_the_limit() -> None:
    # Raw tabs in a string print as two-character escapes.
    text = 'tag:"' + "\t" * 3990 + '"'
    assert len(text) <= 4000
    assert_error(text, ErrorCode.TOO_LONG, (1, 1), "the query is longer than 4000 characters once written canonically")


def test_depth_limit_counts_parentheses_and_nots() -> None:
    parse("(" * 32 + "tier:gold" + ")" * 32)
    parse("NOT " * 16 + "(" * 16 + "tier:gold" + ")" * 16)
    assert_error("(" * 33 + "tier:gold" + ")" * 33, ErrorCode.TOO_DEEP, (1, 33))
    assert_error("NOT " * 33 + "tier:gold", ErrorCode.TOO_DEEP, (1, 129))
    message = "nested deeper than 32 levels of parentheses and NOT"
    assert_error("NOT (" * 17 + "tier:gold" + ")" * 17, ErrorCode.TOO_DEEP, (1, 81), message)


@pytest.mark.parametrize("opening", ["(", "NOT ", "(\n"])
def test_ten_thousand_levels_never_raise_recursion_error(opening: str) -> None:
    with pytest.raises(QueryLimitError):
        parse(opening * 10_000 + "tier:gold")
    with pytest.raises(QueryLimitError) as raised:
        parse(opening * 990 + "tier:gold")
    assert raised.value.code == ErrorCode.TOO_DEEP


def test_term_limit() -> None:
    parse(" OR ".join(["tier:gold"] * 200))
    assert_error(
        " OR ".join(["tier:gold"] * 201),
        ErrorCode.TOO_MANY_TERMS,
        (1, 2601),
        "more than 200 terms (IN values count one each)",
    )


def test_each_in_value_counts_as_a_term() -> None:
    parse("tier IN (" + ", ".join(["gold"] * 199) + ") OR tag:a")
    assert_error("tag:a AND tier IN (" + ", ".join(["gold"] * 200) + ")", ErrorCode.TOO_MANY_TERMS, (1, 11))

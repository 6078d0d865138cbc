"""Errors that teach: an unknown name carries the valid ones, and names them when none is close.

Few valid names (up to LIST_ALL: stages, tiers, channels, consents, dimensions, fields) are all
named; many (cities, tags) by how many there are and the closest few. A close name is suggested as
before (`did you mean`), and then the text stays as it was; the valid names still travel with the
error (`valid_values`, `valid_count`), and through GraphQL as `validValues` / `validValueCount`.
"""

from __future__ import annotations

from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from tagquery import Catalog, ErrorCode, TagQueryError, UnknownNameError, bind, from_filter, parse
from tagquery.binder import CLOSEST, LIST_ALL
from tagquery.catalog import MEMBER_FIELDS, member_catalog
from tests.audience_seed import seed
from tests.conftest import GraphQL
from tests.tagquery.strategies import CATALOG

STAGES = ("at_risk", "churned", "growth", "introduction", "mature")
CHANNELS = ("douyin", "jd", "mall", "pos", "tmall", "wechat", "wecom")
DIMENSIONS = ("channel", "city", "consent", "gender", "lifecycle", "status", "tier")
FIELDS = tuple(sorted(MEMBER_FIELDS))


def error_of(text: str, catalog: Catalog = CATALOG) -> UnknownNameError:
    with pytest.raises(UnknownNameError) as raised:
        bind(parse(text), catalog, source=text)
    return raised.value


def head(error: TagQueryError) -> str:
    """The first line of str(): message, position, suggestion or hint (the caret snippet follows)."""
    return str(error).split("\n", 1)[0]


@pytest.mark.parametrize(
    ("text", "at", "valid"),
    [
        ("lifecycle:active", (1, 11), STAGES),
        ("tier IN (gold, bronze)", (1, 16), ("diamond", "gold", "platinum", "silver")),
        ("gender:f", (1, 8), ("female", "male", "unknown")),
        ("status:vip", (1, 8), ("member", "prospect")),
        ("channel:taobao", (1, 9), CHANNELS),
        ("consent:phone", (1, 9), ("ai_call", "email", "guardian", "mini_program", "sms", "wecom")),
    ],
)
def test_an_unknown_value_with_nothing_close_names_every_valid_one(
    text: str, at: tuple[int, int], valid: tuple[str, ...]
) -> None:
    error = error_of(text)
    assert (error.code, (error.line, error.column), error.suggestion) == (ErrorCode.UNKNOWN_VALUE, at, None)
    assert (error.valid_values, error.valid_count) == (valid, len(valid))
    name, value = error.message.removeprefix("unknown ").split(" ", 1)
    assert head(error) == f"unknown {name} {value} at {at[0]}:{at[1]}; expected one of {', '.join(valid)}"


def test_the_issue_example() -> None:
    error = error_of("lifecycle:active")
    assert head(error) == (
        "unknown lifecycle 'active' at 1:11; expected one of at_risk, churned, growth, introduction, mature"
    )
    assert error.snippet == "lifecycle:active\n          ^^^^^^"


def test_values_are_listed_as_a_query_writes_them() -> None:
    error = error_of("city:Shanghai")
    assert head(error) == "unknown city 'Shanghai' at 1:6; expected one of \"New York\", 上海, 北京, 杭州"
    assert error.valid_values == ("New York", "上海", "北京", "杭州")


def test_a_close_name_is_suggested_and_the_text_stays_as_it_was() -> None:
    error = error_of("tier:platnum")
    assert head(error) == "unknown tier 'platnum' at 1:6, did you mean 'platinum'?"
    assert error.valid_values == ("diamond", "gold", "platinum", "silver")
    assert error.valid_count == 4


@pytest.mark.parametrize(
    ("text", "code", "valid"),
    [
        ("colour:red", ErrorCode.UNKNOWN_DIMENSION, DIMENSIONS),
        ("weight >= 3", ErrorCode.UNKNOWN_FIELD, FIELDS),
        ("xyz IN (a)", ErrorCode.UNKNOWN_FIELD, tuple(sorted([*DIMENSIONS, *FIELDS, "tag"]))),
    ],
)
def test_unknown_dimensions_and_fields_name_the_valid_ones(text: str, code: ErrorCode, valid: tuple[str, ...]) -> None:
    error = error_of(text)
    assert (error.code, error.suggestion, error.valid_values) == (code, None, valid)
    # Names are written bare, `tag` included (a value would be quoted: it is a keyword).
    assert head(error).endswith(f"; expected one of {', '.join(valid)}")


def test_a_brand_with_few_tags_lists_their_codes_not_their_display_names() -> None:
    error = error_of("tag:zzz")
    assert error.code == ErrorCode.UNKNOWN_TAG
    codes = tuple(sorted(CATALOG.tags))
    assert (error.valid_values, error.valid_count) == (codes, len(codes))
    assert head(error) == f"unknown tag 'zzz' at 1:5; expected one of {', '.join(codes)}"


BIG = member_catalog(
    tags={f"coupon_{i}": f"券{i}" for i in range(200)},
    tiers=["gold"],
    channels=["jd"],
    cities=[*(f"城市{i}" for i in range(300)), "上海", "上海浦东", "上饶"],
    statuses=["member"],
    genders=["male"],
    lifecycles=["growth"],
)


def test_many_values_are_counted_and_the_closest_few_named() -> None:
    error = error_of("city:上海市 AND tier:gold", BIG)
    assert error.suggestion == "上海"
    assert error.valid_count == 303
    assert error.valid_values[:2] == ("上海", "上海浦东")
    assert len(error.valid_values) == CLOSEST
    nothing_close = error_of("city:Shanghai", BIG)
    assert (nothing_close.valid_values, nothing_close.valid_count) == ((), 303)
    assert head(nothing_close) == "unknown city 'Shanghai' at 1:6; expected one of 303 city values"


def test_many_tags_are_counted_once_each_and_the_closest_named() -> None:
    error = error_of("tag:coupon", BIG)
    assert error.valid_count == 200  # codes, not codes and display names
    assert len(error.valid_values) == CLOSEST
    assert all(value.startswith("coupon_") for value in error.valid_values)
    assert head(error).startswith("unknown tag 'coupon' at 1:5, did you mean 'coupon_")
    far = error_of("tag:zz", BIG)
    assert head(far) == "unknown tag 'zz' at 1:5; expected one of 200 tags"


def test_the_list_stops_at_list_all() -> None:
    cities = [f"c{i:02}" for i in range(LIST_ALL + 1)]
    at_limit = member_catalog(
        tags={}, tiers=[], channels=[], cities=cities[:LIST_ALL], statuses=[], genders=[], lifecycles=[]
    )
    over = member_catalog(tags={}, tiers=[], channels=[], cities=cities, statuses=[], genders=[], lifecycles=[])
    assert len(error_of("city:zz", at_limit).valid_values) == LIST_ALL
    assert error_of("city:zz", over).valid_values == ()
    assert head(error_of("city:zz", over)).endswith(f"expected one of {LIST_ALL + 1} city values")


def test_a_dimension_without_values() -> None:
    empty = member_catalog(tags={}, tiers=[], channels=[], cities=[], statuses=[], genders=[], lifecycles=[])
    error = error_of("city:上海", empty)
    assert (error.valid_values, error.valid_count) == ((), 0)
    assert head(error) == "unknown city '上海' at 1:6; there are no city values"


def test_structured_filters_carry_the_valid_values_too() -> None:
    node = from_filter({"dimension": {"name": "lifecycle", "values": ["active"]}})
    with pytest.raises(UnknownNameError) as raised:
        bind(node, CATALOG)
    assert raised.value.valid_values == STAGES
    assert str(raised.value) == f"unknown lifecycle 'active'; expected one of {', '.join(STAGES)}"


def test_other_errors_carry_no_valid_values() -> None:
    with pytest.raises(TagQueryError) as raised:
        bind(parse("points >= x"), CATALOG)
    assert (raised.value.valid_values, raised.value.valid_count) == ((), None)


# --- through GraphQL -------------------------------------------------------------------------------------


async def test_graphql_clients_get_the_valid_values(gql: GraphQL, pool: AsyncConnectionPool[Any]) -> None:
    brand = (await seed(pool, count=4)).code
    query = "query ($b: String!, $e: String!) { audience(brand: $b, expression: $e) { count } }"
    body = await gql.raw(query, b=brand, e="tag:vip AND lifecycle:active")
    (error,) = body["errors"]
    assert error["message"] == (
        "unknown lifecycle 'active' at 1:23; expected one of at_risk, churned, growth, introduction, mature"
    )
    extensions = error["extensions"]
    assert (extensions["code"], extensions["reason"], extensions["column"]) == (
        "INVALID_EXPRESSION",
        "UNKNOWN_VALUE",
        23,
    )
    assert (extensions["validValues"], extensions["validValueCount"]) == (list(STAGES), 5)
    saved = """mutation ($b: String!) {
      saveAudience(brand: $b, name: "n", expression: "tier:bronze") {
        __typename ... on InvalidExpression { reason suggestion validValues validValueCount message }
      }
    }"""
    refused = (await gql(saved, b=brand))["saveAudience"]
    assert refused == {
        "__typename": "InvalidExpression",
        "reason": "UNKNOWN_VALUE",
        "suggestion": None,
        "validValues": ["diamond", "gold", "platinum", "silver"],
        "validValueCount": 4,
        "message": "unknown tier 'bronze' at 1:6; expected one of diamond, gold, platinum, silver",
    }
    syntax = (await gql.raw(query, b=brand, e="tier:gold AND"))["errors"][0]["extensions"]
    assert (syntax["reason"], syntax["validValues"], syntax["validValueCount"]) == ("SYNTAX", None, None)

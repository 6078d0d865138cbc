"""The audience API: count, sample, breakdown, explain, whyMember, freshness, errors, members(where),
tagMembers(where); checked against the row compiler over the system of record."""

from __future__ import annotations

from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

import resolvers.audiences
from schema.root import build_schema
from store.audiences.selections import read_expression
from store.sql import counted_statements
from tests.audience_seed import (
    Seeded,
    catch_up,
    city_of,
    has_churn,
    has_vip,
    has_wechat,
    reference_ids,
    seed,
    tier_of,
)
from tests.conftest import GraphQL, make_context

EXPRESSIONS = (
    "tag:vip",
    "tag:vip AND NOT tag:churn_risk",
    "tier IN (gold, diamond) OR channel:wechat",
    "NOT (tag:vip OR city:上海) AND points >= 1500",
    "tag:贵宾 AND tier:silver",
)

AUDIENCE = """
query ($brand: String!, $expression: String, $filter: AudienceFilter, $first: Int!, $after: String) {
  audience(brand: $brand, expression: $expression, filter: $filter) {
    expression
    count
    sample(first: $first, after: $after) {
      totalCount
      edges { cursor node { id } }
      pageInfo { hasNextPage endCursor }
    }
  }
}
"""


@pytest.fixture
async def seeded(pool: AsyncConnectionPool[Any]) -> Seeded:
    return await seed(pool)


async def _all_pages(gql: GraphQL, brand: str, expression: str, first: int) -> tuple[int, list[int]]:
    ids: list[int] = []
    after = None
    while True:
        found = (await gql(AUDIENCE, brand=brand, expression=expression, first=first, after=after))["audience"]
        sample = found["sample"]
        ids += [int(edge["node"]["id"]) for edge in sample["edges"]]
        assert sample["totalCount"] == found["count"]
        if not sample["pageInfo"]["hasNextPage"]:
            return found["count"], ids
        after = sample["pageInfo"]["endCursor"]


@pytest.mark.parametrize("expression", EXPRESSIONS)
async def test_count_and_sample_equal_the_row_compiler(
    pool: AsyncConnectionPool[Any], gql: GraphQL, seeded: Seeded, expression: str
) -> None:
    expected = await reference_ids(pool, seeded.brand_id, expression)
    assert expected  # every expression selects someone, so a wrong empty answer cannot pass
    count, ids = await _all_pages(gql, seeded.code, expression, first=7)
    assert (count, ids) == (len(expected), expected)


async def test_counts_follow_the_rules_the_data_was_made_by(gql: GraphQL, seeded: Seeded) -> None:
    expected = [m for i, m in enumerate(seeded.ids) if has_vip(i) and not has_churn(i)]
    count, ids = await _all_pages(gql, seeded.code, "tag:vip AND NOT tag:churn_risk", first=100)
    assert (count, ids) == (len(expected), expected)


async def test_a_filter_means_what_the_same_text_means(gql: GraphQL, seeded: Seeded) -> None:
    structured = {
        "and": [
            {"tag": "vip"},
            {"not": {"tag": "churn_risk"}},
            {
                "or": [
                    {"dimension": {"name": "tier", "values": ["silver", "platinum"]}},
                    {"field": {"name": "points", "op": "GTE", "value": "3000"}},
                ]
            },
        ]
    }
    text = "tag:vip AND NOT tag:churn_risk AND (tier IN (silver, platinum) OR points >= 3000)"
    by_filter = (await gql(AUDIENCE, brand=seeded.code, filter=structured, first=100))["audience"]
    by_text = (await gql(AUDIENCE, brand=seeded.code, expression=text, first=100))["audience"]
    assert by_filter["expression"] == text
    assert by_filter["count"] == by_text["count"] > 0
    assert by_filter["sample"]["edges"] == by_text["sample"]["edges"]


BREAKDOWN = """
query ($brand: String!, $expression: String!, $by: AudienceDimension!) {
  audience(brand: $brand, expression: $expression) { count breakdown(by: $by) { value count } }
}
"""


@pytest.mark.parametrize(("by", "value_of"), [("TIER", tier_of), ("CITY", city_of)])
async def test_breakdown_sums_to_the_count_and_matches_the_data(
    gql: GraphQL, seeded: Seeded, by: str, value_of: Any
) -> None:
    found = (await gql(BREAKDOWN, brand=seeded.code, expression="tag:vip", by=by))["audience"]
    expected: dict[str, int] = {}
    for i in range(len(seeded.ids)):
        if has_vip(i):
            expected[value_of(i)] = expected.get(value_of(i), 0) + 1
    assert {row["value"]: row["count"] for row in found["breakdown"]} == expected
    assert sum(row["count"] for row in found["breakdown"]) == found["count"]
    counts = [row["count"] for row in found["breakdown"]]
    assert counts == sorted(counts, reverse=True)


async def test_breakdown_by_channel_and_status(gql: GraphQL, seeded: Seeded) -> None:
    channel = (await gql(BREAKDOWN, brand=seeded.code, expression="tag:vip", by="CHANNEL"))["audience"]
    wechat = sum(1 for i in range(len(seeded.ids)) if has_vip(i) and has_wechat(i))
    assert channel["breakdown"] == [{"value": "wechat", "count": wechat}]
    status = (await gql(BREAKDOWN, brand=seeded.code, expression="tag:vip", by="STATUS"))["audience"]
    assert status["breakdown"] == [{"value": "prospect", "count": status["count"]}]


EXPLAIN = """
query ($brand: String!, $expression: String!) {
  audience(brand: $brand, expression: $expression) {
    explain { expression plan indexKeys steps { clause count removed exclusion } }
  }
}
"""


async def test_explain_gives_the_funnel_of_the_top_level_and(gql: GraphQL, seeded: Seeded) -> None:
    text = "tag:vip and not tag:churn_risk and tier in (silver, gold)"
    explained = (await gql(EXPLAIN, brand=seeded.code, expression=text))["audience"]["explain"]
    assert explained["expression"] == "tag:vip AND NOT tag:churn_risk AND tier IN (silver, gold)"
    assert explained["plan"] == "BITMAP"
    assert {"tag:vip", "tag:churn_risk", "tier:silver", "tier:gold"} <= set(explained["indexKeys"])
    n = len(seeded.ids)
    vip = [i for i in range(n) if has_vip(i)]
    kept = [i for i in vip if not has_churn(i)]
    final = [i for i in kept if tier_of(i) in ("silver", "gold")]
    assert explained["steps"] == [
        {"clause": None, "count": n, "removed": 0, "exclusion": False},
        {"clause": "tag:vip", "count": len(vip), "removed": n - len(vip), "exclusion": False},
        {"clause": "NOT tag:churn_risk", "count": len(kept), "removed": len(vip) - len(kept), "exclusion": True},
        {
            "clause": "tier IN (silver, gold)",
            "count": len(final),
            "removed": len(kept) - len(final),
            "exclusion": False,
        },
    ]


WHY = """
query ($brand: String!, $expression: String!, $id: ID!) {
  audience(brand: $brand, expression: $expression) {
    whyMember(id: $id) { memberId live matches nodes { index parent depth text value } }
  }
}
"""


async def test_why_member_gives_each_node_its_truth_value(gql: GraphQL, seeded: Seeded) -> None:
    text = "tag:vip AND NOT (tag:churn_risk OR tier:diamond)"
    # Member 2: vip, no churn (2 % 3), tier platinum -> in. Member 3: no vip, churn, diamond -> out.
    member = seeded.ids[2]
    why = (await gql(WHY, brand=seeded.code, expression=text, id=str(member)))["audience"]["whyMember"]
    assert (why["memberId"], why["live"], why["matches"]) == (str(member), True, True)
    assert [(n["text"], n["value"], n["parent"], n["depth"]) for n in why["nodes"]] == [
        ("tag:vip AND NOT (tag:churn_risk OR tier:diamond)", True, None, 0),
        ("tag:vip", True, 0, 1),
        ("NOT (tag:churn_risk OR tier:diamond)", True, 0, 1),
        ("tag:churn_risk OR tier:diamond", False, 2, 2),
        ("tag:churn_risk", False, 3, 3),
        ("tier:diamond", False, 3, 3),
    ]
    other = (await gql(WHY, brand=seeded.code, expression=text, id=str(seeded.ids[3])))["audience"]["whyMember"]
    assert other["matches"] is False
    assert [n["value"] for n in other["nodes"]] == [False, False, False, True, True, True]


async def test_why_member_of_another_brand_is_an_error(gql: GraphQL, seeded: Seeded) -> None:
    body = await gql.raw(WHY, brand=seeded.code, expression="tag:vip", id="999999999")
    assert body["errors"][0]["extensions"]["code"] == "UNKNOWN_MEMBER"


async def test_freshness_after_catching_up(gql: GraphQL, seeded: Seeded) -> None:
    query = """query ($b: String!) {
      audience(brand: $b, expression: "tag:vip") { freshness { asOf lagSeconds pending builtAt } }
    }"""
    fresh = (await gql(query, b=seeded.code))["audience"]["freshness"]
    assert fresh["asOf"] is not None
    assert fresh["pending"] == 0
    assert 0 <= fresh["lagSeconds"] < 60


@pytest.mark.parametrize(
    ("variables", "extensions"),
    [
        (
            {"expression": "tag:vip AND\n  tag:churn_rsk"},
            {
                "code": "INVALID_EXPRESSION",
                "reason": "UNKNOWN_TAG",
                "line": 2,
                "column": 7,
                "suggestion": "churn_risk",
                "snippet": "  tag:churn_rsk\n      ^^^^^^^^^",
                "field": "expression",
                "path": None,
            },
        ),
        (
            {"expression": "tag:vip AND (tier:gold"},
            {"code": "INVALID_EXPRESSION", "reason": "SYNTAX", "line": 1, "column": 23, "field": "expression"},
        ),
        (
            {"filter": {"and": [{"tag": "vip"}, {"field": {"name": "points", "op": "IN", "value": "3"}}]}},
            {
                "code": "INVALID_EXPRESSION",
                "reason": "INVALID_FILTER",
                "path": "filter.and[1].field",
                "field": "filter",
                "line": None,
            },
        ),
        ({"expression": "tag:vip", "filter": {"tag": "vip"}}, {"code": "INVALID_INPUT", "field": "expression"}),
        ({}, {"code": "INVALID_INPUT"}),
    ],
)
async def test_bad_expressions_are_errors_with_positions(
    gql: GraphQL, seeded: Seeded, variables: dict[str, Any], extensions: dict[str, Any]
) -> None:
    query = """query ($b: String!, $expression: String, $filter: AudienceFilter) {
      audience(brand: $b, expression: $expression, filter: $filter) { count }
    }"""
    body = await gql.raw(query, b=seeded.code, **variables)
    assert body["data"] is None
    (error,) = body["errors"]
    assert error["message"] != "Unexpected error."
    assert {key: error["extensions"].get(key) for key in extensions} == extensions


async def test_unknown_brand(gql: GraphQL) -> None:
    body = await gql.raw('{ audience(brand: "no_such_brand", expression: "tag:x") { count } }')
    assert body["errors"][0]["extensions"]["code"] == "UNKNOWN_BRAND"


async def test_a_tag_defined_after_the_catalog_was_cached_can_be_named(gql: GraphQL, seeded: Seeded) -> None:
    query = "query ($b: String!, $e: String!) { audience(brand: $b, expression: $e) { count } }"
    assert (await gql(query, b=seeded.code, e="tag:vip"))["audience"]["count"] > 0  # caches the catalog
    defined = (
        'mutation ($b: String!) { defineTag(brand: $b, code: "fresh", name: "新", category: CUSTOM) { __typename } }'
    )
    assert (await gql(defined, b=seeded.code))["defineTag"] == {"__typename": "TagDefined"}
    assert (await gql(query, b=seeded.code, e="tag:fresh"))["audience"]["count"] == 0


MEMBERS_WHERE = """
query ($brand: String!, $where: String, $filter: AudienceFilter, $after: String) {
  members(brand: $brand, where: $where, filter: $filter, first: 5, after: $after) {
    totalCount edges { node { id } } pageInfo { hasNextPage endCursor }
  }
}
"""


async def _members_where(execute: Any, brand: str, **arguments: Any) -> tuple[int, list[int]]:
    ids: list[int] = []
    after = None
    while True:
        page = (await execute(MEMBERS_WHERE, brand=brand, after=after, **arguments))["members"]
        ids += [int(edge["node"]["id"]) for edge in page["edges"]]
        if not page["pageInfo"]["hasNextPage"]:
            return page["totalCount"], ids
        after = page["pageInfo"]["endCursor"]


async def test_members_where_selects_through_the_engine(
    pool: AsyncConnectionPool[Any], client: Any, seeded: Seeded
) -> None:
    """strawberry's general path (the one resolvers/sqljson must leave these arguments to)."""
    schema = build_schema()

    async def execute(query: str, **variables: Any) -> dict[str, Any]:
        context = make_context(pool)
        result = await schema.execute(query, variable_values=variables, context_value=context)
        assert result.errors is None, result.errors
        assert result.data is not None
        return result.data

    expected = await reference_ids(pool, seeded.brand_id, "tag:vip AND NOT tag:churn_risk")
    assert await _members_where(execute, seeded.code, where="tag:vip AND NOT tag:churn_risk") == (
        len(expected),
        expected,
    )
    structured = {"and": [{"tag": "vip"}, {"not": {"tag": "churn_risk"}}]}
    assert await _members_where(execute, seeded.code, filter=structured) == (len(expected), expected)
    everyone = await _members_where(execute, seeded.code)
    assert everyone == (len(seeded.ids), seeded.ids)


async def test_members_where_over_http_is_not_answered_by_the_compiled_path(
    pool: AsyncConnectionPool[Any], gql: GraphQL, seeded: Seeded
) -> None:
    """resolvers/sqljson compiles members(...) documents; with where/filter it must decline them
    (it would answer every live member otherwise)."""
    expected = await reference_ids(pool, seeded.brand_id, "tag:vip AND NOT tag:churn_risk")
    assert await _members_where(gql, seeded.code, where="tag:vip AND NOT tag:churn_risk") == (len(expected), expected)
    structured = {"and": [{"tag": "vip"}, {"not": {"tag": "churn_risk"}}]}
    assert await _members_where(gql, seeded.code, filter=structured) == (len(expected), expected)


TAG_WHERE = """
mutation ($brand: String!, $tag: String!, $where: String, $ids: [ID!]) {
  tagMembers(brand: $brand, tag: $tag, where: $where, memberIds: $ids) {
    __typename
    ... on MembersTagged { tagged added }
    ... on Error { code field }
    ... on TooManyIds { limit }
    ... on InvalidExpression { reason line column suggestion }
  }
}
"""
UNTAG_WHERE = """
mutation ($brand: String!, $tag: String!, $where: String) {
  untagMembers(brand: $brand, tag: $tag, where: $where) {
    __typename ... on MembersUntagged { removed } ... on Error { code }
  }
}
"""


async def test_tag_members_by_expression(pool: AsyncConnectionPool[Any], gql: GraphQL, seeded: Seeded) -> None:
    defined = """mutation ($b: String!) {
      defineTag(brand: $b, code: "picked", name: "选中", category: CAMPAIGN) { __typename }
    }"""
    await gql(defined, b=seeded.code)
    where = "tag:vip AND city:上海"
    expected = await reference_ids(pool, seeded.brand_id, where)
    done = (await gql(TAG_WHERE, brand=seeded.code, tag="picked", where=where))["tagMembers"]
    assert done == {"__typename": "MembersTagged", "tagged": len(expected), "added": len(expected)}
    await catch_up(pool, seeded.brand_id)
    assert await reference_ids(pool, seeded.brand_id, "tag:picked") == expected
    removed = await gql(UNTAG_WHERE, brand=seeded.code, tag="picked", where="tag:picked AND tier:silver")
    silver = [m for m in expected if m in await reference_ids(pool, seeded.brand_id, "tier:silver")]
    assert removed["untagMembers"] == {"__typename": "MembersUntagged", "removed": len(silver)}


async def test_tag_members_by_expression_errors(gql: GraphQL, seeded: Seeded, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = (await gql(TAG_WHERE, brand=seeded.code, tag="vip", where="tag:vipp"))["tagMembers"]
    assert bad == {
        "__typename": "InvalidExpression",
        "code": "INVALID_EXPRESSION",
        "field": "where",
        "reason": "UNKNOWN_TAG",
        "line": 1,
        "column": 5,
        "suggestion": "vip",
    }
    both = (await gql(TAG_WHERE, brand=seeded.code, tag="vip", where="tag:vip", ids=["1"]))["tagMembers"]
    assert (both["__typename"], both["code"]) == ("InvalidInput", "INVALID_INPUT")
    neither = (await gql(TAG_WHERE, brand=seeded.code, tag="vip"))["tagMembers"]
    assert neither["__typename"] == "InvalidInput"
    monkeypatch.setattr(resolvers.audiences, "MAX_MEMBER_IDS", 3)
    capped = (await gql(TAG_WHERE, brand=seeded.code, tag="churn_risk", where="tag:vip"))["tagMembers"]
    assert (capped["__typename"], capped["code"]) == ("TooManyIds", "TOO_MANY_IDS")


async def test_a_sample_page_costs_the_same_statements_whatever_its_size(gql: GraphQL, seeded: Seeded) -> None:
    async def statements(first: int) -> int:
        await gql(AUDIENCE, brand=seeded.code, expression="tag:vip", first=first)  # warm the catalog cache
        with counted_statements() as counted:
            found = await gql(AUDIENCE, brand=seeded.code, expression="tag:vip", first=first)
        assert len(found["audience"]["sample"]["edges"]) == first
        return counted.value

    # count, the sample's ids, its members (one batch), totalCount (the count again)
    assert await statements(2) == await statements(15) == 4


def test_the_same_expression_text_is_parsed_once() -> None:
    """Campaign tools send the same few expressions again and again: the count path parses a text once
    per process (store.audiences.selections), a tree being immutable."""
    first = read_expression("tag:vip AND NOT tag:churn_risk", None)
    assert read_expression("tag:vip AND NOT tag:churn_risk", None) is first
    assert read_expression("tag:vip AND NOT tag:vip", None) is not first

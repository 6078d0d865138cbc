"""Reading members: pagination edges, lookups and batching."""

from __future__ import annotations

from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from store.sql import counted_statements
from tests.conftest import GraphQL, new_brand
from tests.fragments import REGISTER

PAGE = """
query($brand: String!, $first: Int!, $after: String) {
  members(brand: $brand, first: $first, after: $after) {
    totalCount
    edges { cursor node { id } }
    nodes { id }
    pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
  }
}
"""


async def _brand_with(gql: GraphQL, pool: AsyncConnectionPool[Any], count: int) -> tuple[str, list[str]]:
    brand = await new_brand(pool)
    ids = []
    for n in range(count):
        data = await gql(REGISTER, brand=brand, channel="pos", externalId=f"card-{n}")
        ids.append(data["registerMember"]["member"]["id"])
    return brand, ids


async def test_pages_cover_every_member_once_in_id_order(gql: GraphQL, pool: AsyncConnectionPool[Any]) -> None:
    brand, ids = await _brand_with(gql, pool, 7)
    seen: list[str] = []
    after = None
    pages = 0
    while True:
        page = (await gql(PAGE, brand=brand, first=3, after=after))["members"]
        pages += 1
        assert page["totalCount"] == 7
        assert [e["node"] for e in page["edges"]] == page["nodes"]
        seen += [node["id"] for node in page["nodes"]]
        assert page["pageInfo"]["hasPreviousPage"] is (after is not None)
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert seen == sorted(ids, key=int)
    assert pages == 3


async def test_exact_fit_reports_no_next_page(gql: GraphQL, pool: AsyncConnectionPool[Any]) -> None:
    brand, _ = await _brand_with(gql, pool, 3)
    page = (await gql(PAGE, brand=brand, first=3))["members"]
    assert len(page["nodes"]) == 3
    assert page["pageInfo"]["hasNextPage"] is False
    empty = (await gql(PAGE, brand=brand, first=3, after=page["pageInfo"]["endCursor"]))["members"]
    assert empty["nodes"] == []
    assert empty["pageInfo"] == {
        "hasNextPage": False,
        "hasPreviousPage": True,
        "startCursor": None,
        "endCursor": None,
    }


async def test_first_zero_counts_without_rows(gql: GraphQL, pool: AsyncConnectionPool[Any]) -> None:
    brand, _ = await _brand_with(gql, pool, 2)
    page = (await gql(PAGE, brand=brand, first=0))["members"]
    assert (page["nodes"], page["totalCount"], page["pageInfo"]["hasNextPage"]) == ([], 2, True)


async def test_merged_members_leave_the_listing(gql: GraphQL, pool: AsyncConnectionPool[Any]) -> None:
    brand, ids = await _brand_with(gql, pool, 3)
    merge = 'mutation($s: ID!, $m: ID!) { mergeMembers(survivorId: $s, mergedId: $m, reason: "dup") { __typename } }'
    await gql(merge, s=ids[0], m=ids[1])
    page = (await gql(PAGE, brand=brand, first=10))["members"]
    assert [n["id"] for n in page["nodes"]] == [ids[0], ids[2]]
    assert page["totalCount"] == 2


@pytest.mark.parametrize(
    ("first", "after", "message"),
    [
        (101, None, "first must be between 0 and 100"),
        (-1, None, "first must be between 0 and 100"),
        (10, "not-a-cursor", "after is not a cursor of this connection"),
        (10, "bWVtYmVyOng=", "after is not a cursor of this connection"),
    ],
)
async def test_bad_page_arguments_are_coded_errors(
    gql: GraphQL, brand: str, first: int, after: str | None, message: str
) -> None:
    body = await gql.raw(PAGE, brand=brand, first=first, after=after)
    assert body["data"] is None
    error = body["errors"][0]
    assert error["message"] == message
    assert error["extensions"]["code"] == "INVALID_INPUT"


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ('{ members(brand: "nope") { totalCount } }', "UNKNOWN_BRAND"),
        ('{ memberByIdentity(brand: "nope", channel: "jd", externalId: "x") { id } }', "UNKNOWN_BRAND"),
        ('{ memberByPhone(brand: "nope", phone: "13800000000") { id } }', "UNKNOWN_BRAND"),
        ('{ memberByPhone(brand: "nope", phone: "42") { id } }', "INVALID_PHONE"),
    ],
)
async def test_lookup_errors_carry_codes(gql: GraphQL, query: str, code: str) -> None:
    body = await gql.raw(query)
    assert body["errors"][0]["extensions"]["code"] == code


async def test_unknown_ids_and_identities_read_as_null(gql: GraphQL, brand: str) -> None:
    query = """query($b: String!) {
      a: member(id: "999999999") { id }
      b: member(id: "abc") { id }
      c: memberByIdentity(brand: $b, channel: "tmall", externalId: "nobody") { id }
      d: memberByPhone(brand: $b, phone: "13811112222") { id }
    }"""
    assert await gql(query, b=brand) == {"a": None, "b": None, "c": None, "d": None}


FULL_PAGE = """
query($brand: String!, $first: Int!) {
  members(brand: $brand, first: $first) {
    nodes { id tier { code } brand { code group { code } tiers { code } }
            identities { channel externalId } person { key memberships { id } } mergedInto { id } merges { id }
            tags { code name category source assignedAt expiresAt } }
  }
}
"""


async def test_a_page_costs_the_same_statements_whatever_its_size(gql: GraphQL, pool: AsyncConnectionPool[Any]) -> None:
    brand = await new_brand(pool)
    ids = []
    for n in range(100):
        data = await gql(REGISTER, brand=brand, channel="wechat", externalId=f"o-{n}", phone=f"1360000{n:04d}")
        ids.append(data["registerMember"]["member"]["id"])
    define = (
        "mutation($b: String!, $c: String!) { defineTag(brand: $b, code: $c, name: $c, category: RFM) { __typename } }"
    )
    tag = (
        "mutation($b: String!, $c: String!, $ids: [ID!]!)"
        " { tagMembers(brand: $b, tag: $c, memberIds: $ids) { __typename } }"
    )
    for code, every in (("r5", 1), ("f4", 3)):
        await gql(define, b=brand, c=code)
        await gql(tag, b=brand, c=code, ids=ids[::every])

    async def statements(first: int) -> int:
        with counted_statements() as counted:
            data = await gql(FULL_PAGE, brand=brand, first=first)
        assert len(data["members"]["nodes"]) == first
        assert [t["code"] for t in data["members"]["nodes"][0]["tags"]] == ["f4", "r5"]
        return counted.value

    await statements(5)  # warm the per-process brand directory
    small, large = await statements(5), await statements(100)
    assert small == large
    assert large <= 10

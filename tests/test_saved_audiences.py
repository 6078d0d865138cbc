"""Saved audiences: the canonical expression, frozen snapshots, and who entered or exited between two."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from psycopg_pool import AsyncConnectionPool

from store.audiences.engine import decode_chunks
from store.audiences.saved import compare, encode_ids
from store.sql import counted_statements
from tests.audience_seed import Seeded, catch_up, has_vip, reference_ids, seed
from tests.conftest import GraphQL

SAVE = """
mutation ($brand: String!, $name: String!, $expression: String!) {
  saveAudience(brand: $brand, name: $name, expression: $expression) {
    __typename
    ... on AudienceSaved {
      audience { id name expression grammarVersion brand }
      snapshot { id count members(first: 100) { totalCount nodes { id } } }
    }
    ... on Error { code field }
    ... on InvalidExpression { reason column }
  }
}
"""
REFRESH = """
mutation ($id: ID!) {
  refreshAudience(id: $id) {
    __typename
    ... on AudienceRefreshed { snapshot { id count } audience { snapshots { id } latestSnapshot { id } } }
    ... on Error { code }
  }
}
"""
COMPARE = """
query ($before: ID!, $after: ID!, $first: Int!, $enteredAfter: String, $exitedAfter: String) {
  compareSnapshots(before: $before, after: $after) {
    enteredCount exitedCount stayedCount
    entered(first: $first, after: $enteredAfter) { nodes { id } pageInfo { hasNextPage endCursor } }
    exited(first: $first, after: $exitedAfter) { nodes { id } pageInfo { hasNextPage endCursor } }
  }
}
"""


@pytest.fixture
async def seeded(pool: AsyncConnectionPool[Any]) -> Seeded:
    return await seed(pool)


def test_snapshot_encoding_round_trips_across_chunks() -> None:
    ids = np.array([3, 70_000, 65_535, 65_536, 1 << 20], dtype=np.int64)
    assert decode_chunks(encode_ids(np.sort(ids))).tolist() == sorted(ids.tolist())
    assert encode_ids(np.empty(0, dtype=np.int64)) == b""
    difference = compare(np.array([1, 2, 3]), np.array([2, 3, 4, 5]))
    assert (difference.entered.tolist(), difference.exited.tolist(), difference.stayed) == ([4, 5], [1], 2)


async def _walk(gql: GraphQL, before: str, after: str, which: str) -> list[int]:
    ids: list[int] = []
    cursor = None
    while True:
        found = await gql(COMPARE, before=before, after=after, first=2, **{f"{which}After": cursor})
        page = found["compareSnapshots"][which]
        ids += [int(node["id"]) for node in page["nodes"]]
        if not page["pageInfo"]["hasNextPage"]:
            return ids
        cursor = page["pageInfo"]["endCursor"]


async def test_save_refresh_and_compare(pool: AsyncConnectionPool[Any], gql: GraphQL, seeded: Seeded) -> None:
    saved = (await gql(SAVE, brand=seeded.code, name="  双十一 VIP ", expression="tag:vip and not tag:churn_risk"))[
        "saveAudience"
    ]
    assert saved["__typename"] == "AudienceSaved"
    audience = saved["audience"]
    assert audience == {
        "id": audience["id"],
        "name": "双十一 VIP",
        "expression": "tag:vip AND NOT tag:churn_risk",
        "grammarVersion": 1,
        "brand": seeded.code,
    }
    first = await reference_ids(pool, seeded.brand_id, "tag:vip AND NOT tag:churn_risk")
    assert saved["snapshot"]["count"] == saved["snapshot"]["members"]["totalCount"] == len(first)
    assert [int(n["id"]) for n in saved["snapshot"]["members"]["nodes"]] == first

    # Some leave (churn_risk on two of them), some enter (churn_risk taken from others).
    leaving, entering = first[:2], [m for i, m in enumerate(seeded.ids) if has_vip(i) and m not in first][:3]
    async with pool.connection() as conn, conn.transaction():
        found = await conn.execute(
            "SELECT id FROM tag_definitions WHERE brand_id = %s AND code = 'churn_risk'", (seeded.brand_id,)
        )
        churn = (await found.fetchall())[0][0]
        await conn.execute(
            "INSERT INTO member_tags (member_id, tag_id, brand_id, source)"
            " SELECT m, %s, %s, 'test' FROM unnest(%s::bigint[]) m",
            (churn, seeded.brand_id, leaving),
        )
        await conn.execute("DELETE FROM member_tags WHERE tag_id = %s AND member_id = ANY(%s)", (churn, entering))
    await catch_up(pool, seeded.brand_id)

    refreshed = (await gql(REFRESH, id=audience["id"]))["refreshAudience"]
    assert refreshed["__typename"] == "AudienceRefreshed"
    second = refreshed["snapshot"]
    assert second["count"] == len(first) - len(leaving) + len(entering)
    assert [s["id"] for s in refreshed["audience"]["snapshots"]] == [second["id"], saved["snapshot"]["id"]]
    assert refreshed["audience"]["latestSnapshot"] == {"id": second["id"]}

    before, after = saved["snapshot"]["id"], second["id"]
    counts = (await gql(COMPARE, before=before, after=after, first=1))["compareSnapshots"]
    assert (counts["enteredCount"], counts["exitedCount"]) == (len(entering), len(leaving))
    assert counts["stayedCount"] == len(first) - len(leaving)
    assert await _walk(gql, before, after, "entered") == sorted(entering)
    assert await _walk(gql, before, after, "exited") == sorted(leaving)
    # The other way round, entered and exited swap.
    swapped = (await gql(COMPARE, before=after, after=before, first=100))["compareSnapshots"]
    assert [int(n["id"]) for n in swapped["exited"]["nodes"]] == sorted(entering)


async def test_snapshots_are_one_compact_row_each(pool: AsyncConnectionPool[Any], gql: GraphQL, seeded: Seeded) -> None:
    saved = await gql(SAVE, brand=seeded.code, name="all", expression="tier IN (silver, gold, platinum, diamond)")
    snapshot_id = int(saved["saveAudience"]["snapshot"]["id"])
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT member_count, octet_length(members), pg_column_size(members) FROM audience_snapshots WHERE id = %s",
            (snapshot_id,),
        )
        row = await cursor.fetchone()
    assert row is not None
    count, raw, stored = row
    chunks = len({m >> 16 for m in seeded.ids})
    assert count == len(seeded.ids)
    assert raw == chunks * (8 + 8192)
    assert stored < raw  # TOAST compression: a sparse chunk costs far less than 8 KB


async def test_saved_audiences_of_a_brand(gql: GraphQL, seeded: Seeded) -> None:
    for name, expression in (("a", "tag:vip"), ("b", "city:上海")):
        assert (await gql(SAVE, brand=seeded.code, name=name, expression=expression))["saveAudience"]["__typename"] == (
            "AudienceSaved"
        )
    query = """query ($b: String!) {
      savedAudiences(brand: $b) { id name expression snapshots { count } current { count } }
    }"""
    found = (await gql(query, b=seeded.code))["savedAudiences"]
    assert [(a["name"], a["expression"]) for a in found] == [("a", "tag:vip"), ("b", "city:上海")]
    assert all(a["snapshots"][0]["count"] == a["current"]["count"] > 0 for a in found)
    one = (await gql("query ($id: ID!) { savedAudience(id: $id) { name } }", id=found[1]["id"]))["savedAudience"]
    assert one == {"name": "b"}
    assert (await gql('{ savedAudience(id: "999999999") { name } }'))["savedAudience"] is None


async def test_expected_failures(gql: GraphQL, seeded: Seeded) -> None:
    bad = (await gql(SAVE, brand=seeded.code, name="x", expression="tag:vip AND"))["saveAudience"]
    assert (bad["__typename"], bad["code"], bad["reason"], bad["field"]) == (
        "InvalidExpression",
        "INVALID_EXPRESSION",
        "SYNTAX",
        "expression",
    )
    unnamed = (await gql(SAVE, brand=seeded.code, name="  ", expression="tag:vip"))["saveAudience"]
    assert (unnamed["__typename"], unnamed["field"]) == ("InvalidInput", "name")
    nobrand = (await gql(SAVE, brand="no_such_brand", name="x", expression="tag:vip"))["saveAudience"]
    assert nobrand["__typename"] == "UnknownBrand"
    missing = (await gql(REFRESH, id="999999999"))["refreshAudience"]
    assert missing == {"__typename": "UnknownAudience", "code": "UNKNOWN_AUDIENCE"}
    body = await gql.raw(COMPARE, before="999999998", after="999999999", first=1)
    assert body["errors"][0]["extensions"] == {"code": "UNKNOWN_SNAPSHOT", "field": "before"}


async def test_statements_do_not_grow_with_the_number_of_audiences(gql: GraphQL, seeded: Seeded) -> None:
    """N+1 guard: the brand's audiences and all their snapshots in a fixed number of statements."""
    query = "query ($b: String!) { savedAudiences(brand: $b) { name snapshots { count } latestSnapshot { id } } }"

    async def statements() -> int:
        await gql(query, b=seeded.code)  # warm caches (brand directory)
        with counted_statements() as counted:
            await gql(query, b=seeded.code)
        return counted.value

    await gql(SAVE, brand=seeded.code, name="one", expression="tag:vip")
    one = await statements()
    for name in ("two", "three"):
        saved = (await gql(SAVE, brand=seeded.code, name=name, expression="city:上海"))["saveAudience"]
        await gql(REFRESH, id=saved["audience"]["id"])
    assert one == await statements() == 2

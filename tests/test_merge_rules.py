"""The rules of a merge that mutation testing found unchecked (docs/testing.md#mutation-testing): which
profile fields the survivor takes, how long a reason may be, and which rows a merge locks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from store.members import merges
from tests.conftest import GraphQL
from tests.fragments import EARN, MERGE, REGISTER, UNMERGE


async def _member(gql: GraphQL, brand: str, external_id: str, **profile: Any) -> str:
    data = await gql(REGISTER, brand=brand, channel="pos", externalId=external_id, **profile)
    member_id: str = data["registerMember"]["member"]["id"]
    return member_id


async def _merge(gql: GraphQL, survivor: str, merged: str, reason: str = "same person") -> dict[str, Any]:
    result: dict[str, Any] = (await gql(MERGE, survivorId=survivor, mergedId=merged, reason=reason))["mergeMembers"]
    return result


@pytest.mark.parametrize(
    ("survivor_gender", "merged_gender", "expected"),
    [("FEMALE", "MALE", "FEMALE"), ("UNKNOWN", "MALE", "MALE"), ("MALE", "UNKNOWN", "MALE")],
)
async def test_the_survivor_takes_the_merged_members_gender_only_when_its_own_is_unknown(
    gql: GraphQL, brand: str, survivor_gender: str, merged_gender: str, expected: str
) -> None:
    survivor = await _member(gql, brand, "s", gender=survivor_gender, city="上海")
    merged = await _member(gql, brand, "m", gender=merged_gender, city="北京")
    result = await _merge(gql, survivor, merged)
    assert (result["merge"]["survivor"]["gender"], result["merge"]["survivor"]["city"]) == (expected, "上海")
    undone = (await gql(UNMERGE, mergeId=result["merge"]["id"]))["unmergeMembers"]
    assert (undone["merge"]["survivor"]["gender"], undone["merge"]["merged"]["gender"]) == (
        survivor_gender,
        merged_gender,
    )


@pytest.mark.parametrize(("length", "accepted"), [(1, True), (500, True), (501, False)])
async def test_a_reason_is_1_to_500_characters(gql: GraphQL, brand: str, length: int, accepted: bool) -> None:
    survivor = await _member(gql, brand, "s")
    merged = await _member(gql, brand, "m")
    result = await _merge(gql, survivor, merged, reason="理" * length)
    if accepted:
        assert result["__typename"] == "MembersMerged", result
    else:
        assert (result["code"], result["field"]) == ("INVALID_INPUT", "reason")


async def test_merge_and_unmerge_lock_only_their_two_members(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any], database_url: str
) -> None:
    survivor = await _member(gql, brand, "s")
    merged = await _member(gql, brand, "m")
    bystander = await _member(gql, brand, "b")

    # Another transaction holds a member of the same brand; the merge must not wait for it.
    async with await psycopg.AsyncConnection.connect(database_url) as holder:
        await holder.execute("SELECT id FROM members WHERE id = %s FOR UPDATE", (int(bystander),))
        async with pool.connection() as conn, conn.transaction():
            await conn.execute("SET LOCAL lock_timeout = '3s'")
            try:
                merge_id = await merges.merge(conn, survivor_id=int(survivor), merged_id=int(merged), reason="r")
                await merges.unmerge(conn, merge_id=merge_id)
            except psycopg.errors.LockNotAvailable:
                pytest.fail("merging two members waited for a lock on a third")
        await holder.rollback()


BALANCE = "query($id: ID!) { member(id: $id) { pointsBalance } }"


@pytest.mark.parametrize("points", [1, 2])
async def test_a_merge_moves_even_a_single_point(gql: GraphQL, brand: str, points: int) -> None:
    survivor = await _member(gql, brand, "s")
    merged = await _member(gql, brand, "m")
    assert (await gql(EARN, brand=brand, memberId=merged, amount=points, key="e"))["earnPoints"]["__typename"] == (
        "PointsPosted"
    )
    merge_id = (await _merge(gql, survivor, merged))["merge"]["id"]
    assert (await gql(BALANCE, id=survivor))["member"]["pointsBalance"] == points
    await gql(UNMERGE, mergeId=merge_id)
    assert [(await gql(BALANCE, id=m))["member"]["pointsBalance"] for m in (survivor, merged)] == [0, points]


DEFINE_TAG = """mutation($brand: String!, $code: String!) {
  defineTag(brand: $brand, code: $code, name: $code, category: CUSTOM) { ... on TagDefined { tag { id } } } }"""
TAG = """mutation($brand: String!, $code: String!, $ids: [ID!]!) {
  tagMembers(brand: $brand, tag: $code, memberIds: $ids) { __typename } }"""


@pytest.fixture
async def tagged_brand(brand: str, pool: AsyncConnectionPool[Any]) -> AsyncIterator[str]:
    """A brand whose tag assignments are deleted after the test: expired ones would meet other tests' sweeps."""
    yield brand
    async with pool.connection() as conn:
        await conn.execute(
            "DELETE FROM member_tags USING brands b WHERE b.id = member_tags.brand_id AND b.code = %s", (brand,)
        )


async def _tagged_pair(gql: GraphQL, pool: AsyncConnectionPool[Any], brand: str, **carried: list[str]) -> list[str]:
    """A survivor and a merged member; each code in ``carried`` names who carries the tag ("s", "m").
    Sources tell the two members' assignments apart."""
    pair = [await _member(gql, brand, "s"), await _member(gql, brand, "m")]
    for code, holders in carried.items():
        assert "tag" in (await gql(DEFINE_TAG, brand=brand, code=code))["defineTag"]
        ids = [pair["sm".index(holder)] for holder in holders]
        assert (await gql(TAG, brand=brand, code=code, ids=ids))["tagMembers"]["__typename"] == "MembersTagged"
    async with pool.connection() as conn:
        for member, source in zip(pair, ("survivor's", "merged's"), strict=True):
            await conn.execute("UPDATE member_tags SET source = %s WHERE member_id = %s", (source, int(member)))
    return pair


async def _assignments(conn: Any, member: str) -> list[tuple[str, str]]:
    """A member's assignments as stored, expired ones included: (code, source)."""
    cursor = await conn.execute(
        "SELECT d.code, t.source FROM member_tags t JOIN tag_definitions d ON d.id = t.tag_id"
        " WHERE t.member_id = %s ORDER BY d.code",
        (int(member),),
    )
    rows: list[tuple[str, str]] = await cursor.fetchall()
    return rows


async def test_an_assignment_expiring_at_the_merge_instant_gives_way_to_the_merged_members(
    gql: GraphQL, tagged_brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    survivor, merged = await _tagged_pair(gql, pool, tagged_brand, vip=["s", "m"])
    # now() is the transaction's start: the survivor's assignment expires exactly as the merge runs.
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("UPDATE member_tags SET expires_at = now() WHERE member_id = %s", (int(survivor),))
        await merges.merge(conn, survivor_id=int(survivor), merged_id=int(merged), reason="r")
        assert await _assignments(conn, survivor) == [("vip", "merged's")]


async def test_a_merge_replaces_only_expired_assignments_of_tags_the_merged_member_carries(
    gql: GraphQL, tagged_brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    survivor, merged = await _tagged_pair(gql, pool, tagged_brand, lapsed=["s"], vip=["m"])
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(
            "UPDATE member_tags SET expires_at = now() - interval '1 hour' WHERE member_id = %s", (int(survivor),)
        )
        await merges.merge(conn, survivor_id=int(survivor), merged_id=int(merged), reason="r")
        # The survivor's expired "lapsed" stays as it was: the merged member never carried that tag.
        assert await _assignments(conn, survivor) == [("lapsed", "survivor's"), ("vip", "merged's")]

"""A tag assignment is expired from its `expiresAt` on, inclusive (docs/tags.md#expiry): the sweep as
of T deletes what expires at T exactly, and reads at T no longer see it.

Other tests backdate assignments to a minute or an hour ago; none expires exactly at the sweep's
`as_of`, which is where `<` and `<=` differ. The sweep deletes across brands, so the instants here
lie in 2001, before any other test's rows: it takes nobody else's. What a test leaves expired it
deletes when done, so that no other test's sweep meets it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg_pool import AsyncConnectionPool

from store.tags import assignments as tags
from store.tags.catalog import live_counts
from tests.conftest import GraphQL, new_brand

AS_OF = dt.datetime(2001, 6, 30, 12, 0, 0, 123456, tzinfo=dt.UTC)
MICRO = dt.timedelta(microseconds=1)
DEFINE = """mutation($brand: String!, $code: String!) {
  defineTag(brand: $brand, code: $code, name: $code, category: CUSTOM) { ... on TagDefined { tag { id } } } }"""
TAG = """mutation($brand: String!, $code: String!, $ids: [ID!]!) {
  tagMembers(brand: $brand, tag: $code, memberIds: $ids) { __typename } }"""


@pytest.fixture
async def tag_ids(pool: AsyncConnectionPool[Any]) -> AsyncIterator[list[int]]:
    """The tags a test defines; their assignments are deleted after it."""
    ids: list[int] = []
    yield ids
    async with pool.connection() as conn:
        await conn.execute("DELETE FROM member_tags WHERE tag_id = ANY(%s)", (ids,))


async def _tagged_members(
    gql: GraphQL, pool: AsyncConnectionPool[Any], brand: str, count: int, tag_ids: list[int], code: str = "flash"
) -> tuple[int, list[int]]:
    """``count`` new members of ``brand`` carrying one new tag (no expiry yet): the tag id and the members."""
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "INSERT INTO members (brand_id, tier) SELECT b.id, 'silver' FROM brands b, generate_series(1, %s)"
            " WHERE b.code = %s RETURNING id",
            (count, brand),
        )
        ids = sorted(row[0] for row in await cursor.fetchall())
    tag_id = int((await gql(DEFINE, brand=brand, code=code))["defineTag"]["tag"]["id"])
    tag_ids.append(tag_id)
    assert (await gql(TAG, brand=brand, code=code, ids=[str(i) for i in ids]))["tagMembers"]["__typename"] == (
        "MembersTagged"
    )
    return tag_id, ids


async def _expire_at(pool: AsyncConnectionPool[Any], tag_id: int, expiries: dict[int, dt.datetime | None]) -> None:
    async with pool.connection() as conn:
        for member_id, at in expiries.items():
            await conn.execute(
                "UPDATE member_tags SET expires_at = %s WHERE member_id = %s AND tag_id = %s", (at, member_id, tag_id)
            )


async def _carried(pool: AsyncConnectionPool[Any], tag_id: int) -> list[int]:
    async with pool.connection() as conn:
        cursor = await conn.execute("SELECT member_id FROM member_tags WHERE tag_id = %s ORDER BY member_id", (tag_id,))
        return [row[0] for row in await cursor.fetchall()]


async def test_the_sweep_deletes_an_assignment_expiring_exactly_at_as_of(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any], tag_ids: list[int]
) -> None:
    tag_id, (before, at, after, never) = await _tagged_members(gql, pool, brand, 4, tag_ids)
    await _expire_at(pool, tag_id, {before: AS_OF - MICRO, at: AS_OF, after: AS_OF + MICRO, never: None})
    async with pool.connection() as conn:
        deleted = await tags.sweep_batch(conn, as_of=AS_OF)
    assert sorted(row["member_id"] for row in deleted if row["tag_id"] == tag_id) == [before, at]
    assert await _carried(pool, tag_id) == [after, never]
    async with pool.connection() as conn:
        await tags.sweep_expired(conn, as_of=AS_OF)  # again, batch by batch: nothing more of ours goes
    assert await _carried(pool, tag_id) == [after, never]
    async with pool.connection() as conn:
        await tags.sweep_expired(conn, as_of=AS_OF + MICRO)
    assert await _carried(pool, tag_id) == [never]


async def test_reads_stop_seeing_an_assignment_at_its_expiry_instant(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any], tag_ids: list[int]
) -> None:
    # A code no other test's tag has, so that a read joined to the wrong definition shows.
    tag_id, (at, after, bystander) = await _tagged_members(gql, pool, brand, 3, tag_ids, code="flash_read")
    # now() is the transaction's start: the one instant a test can make an assignment expire at.
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(
            "UPDATE member_tags SET expires_at = now() + (CASE WHEN member_id = %s THEN 0 ELSE 1 END)"
            " * interval '1 microsecond' WHERE tag_id = %s AND member_id <> %s",
            (at, tag_id, bystander),
        )
        read = await tags.tags_by_member(conn, [at, after])
        assert [(row["member_id"], row["tag_id"], row["code"]) for row in read] == [(after, tag_id, "flash_read")]
        assert [(row["tag_id"], row["members"]) for row in await live_counts(conn, [tag_id])] == [(tag_id, 2)]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(offsets=st.lists(st.none() | st.integers(-3, 3), min_size=1, max_size=6))
async def test_the_sweep_deletes_exactly_what_expired_by_as_of(
    gql: GraphQL, pool: AsyncConnectionPool[Any], tag_ids: list[int], offsets: list[int | None]
) -> None:
    brand = await new_brand(pool)
    tag_id, ids = await _tagged_members(gql, pool, brand, len(offsets), tag_ids)
    expiries = {m: None if o is None else AS_OF + o * MICRO for m, o in zip(ids, offsets, strict=True)}
    await _expire_at(pool, tag_id, expiries)
    async with pool.connection() as conn:
        await tags.sweep_expired(conn, as_of=AS_OF)
    assert await _carried(pool, tag_id) == [m for m, at in expiries.items() if at is None or at > AS_OF]


@pytest.mark.slow
async def test_the_sweep_runs_batches_until_one_is_not_full(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any], tag_ids: list[int]
) -> None:
    # Exactly two full batches: a sweep that stops after a full one leaves the second behind.
    tag_id, ids = await _tagged_members(gql, pool, brand, 2 * tags.SWEEP_BATCH, tag_ids)
    async with pool.connection() as conn:
        await conn.execute("UPDATE member_tags SET expires_at = %s WHERE tag_id = %s", (AS_OF, tag_id))
        await tags.sweep_expired(conn, as_of=AS_OF)
    assert await _carried(pool, tag_id) == []
    assert len(ids) == 2 * tags.SWEEP_BATCH

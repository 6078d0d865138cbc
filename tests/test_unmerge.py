"""Unmerge puts back what a merge changed, the tier included, for members of different tiers with
several orders each (docs/points.md#merges, store/members/merges.py).

A merge gives the survivor the higher of the two tiers; unmerge gives it back the tier it had,
unless the tier changed again since (then the newer tier stays until the tier review).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg_pool import AsyncConnectionPool

from store.tables import DEFAULT_TIERS
from tests.conftest import GraphQL, new_brand
from tests.fragments import MERGE, RECORD_ORDER, REGISTER, UNMERGE

NOW = dt.datetime.now(dt.UTC)
TIER_HISTORY = "query($id: ID!) { member(id: $id) { tier { code } tierHistory { fromTier toTier cause } } }"


async def _member(gql: GraphQL, brand: str, external_id: str) -> str:
    data = await gql(REGISTER, brand=brand, channel="pos", externalId=external_id)
    member_id: str = data["registerMember"]["member"]["id"]
    return member_id


async def _order(gql: GraphQL, brand: str, member: str, order_id: str, amount: str, paid: dt.datetime = NOW) -> str:
    result = (
        await gql(
            RECORD_ORDER,
            brand=brand,
            channel="pos",
            orderId=order_id,
            amount=amount,
            paidAt=paid.isoformat(),
            memberId=member,
        )
    )["recordOrder"]
    assert result["__typename"] == "OrderRecorded", result
    tier: str = result["member"]["tier"]["code"]
    return tier


async def _merge(gql: GraphQL, survivor: str, merged: str) -> dict[str, Any]:
    result: dict[str, Any] = (await gql(MERGE, survivorId=survivor, mergedId=merged, reason="same person"))[
        "mergeMembers"
    ]
    assert result["__typename"] == "MembersMerged", result
    merge: dict[str, Any] = result["merge"]
    return merge


async def _unmerge(gql: GraphQL, merge_id: str) -> dict[str, Any]:
    result: dict[str, Any] = (await gql(UNMERGE, mergeId=merge_id))["unmergeMembers"]
    assert result["__typename"] == "MembersUnmerged", result
    merge: dict[str, Any] = result["merge"]
    return merge


async def _rows(pool: AsyncConnectionPool[Any], *member_ids: str) -> tuple[Any, ...]:
    """The members' rows, and who owns their orders and lots (with what is left in each)."""
    ids = [int(m) for m in member_ids]
    async with pool.connection() as conn:
        members = await (
            await conn.execute("SELECT to_jsonb(m) FROM members m WHERE id = ANY(%s) ORDER BY id", (ids,))
        ).fetchall()
        orders = await (
            await conn.execute("SELECT id, member_id FROM orders WHERE member_id = ANY(%s) ORDER BY id", (ids,))
        ).fetchall()
        lots = await (
            await conn.execute(
                "SELECT id, member_id, remaining FROM points_lots WHERE member_id = ANY(%s) ORDER BY id", (ids,)
            )
        ).fetchall()
    return tuple(members), tuple(orders), tuple(lots)


async def test_unmerge_gives_the_survivor_back_its_lower_tier(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    survivor = await _member(gql, brand, "s")
    merged = await _member(gql, brand, "m")
    assert await _order(gql, brand, survivor, "s1", "10") == "silver"
    assert await _order(gql, brand, merged, "m1", "250") == "silver"
    assert await _order(gql, brand, merged, "m2", "400") == "platinum"  # 6,500 growth in the year
    before = await _rows(pool, survivor, merged)

    merge = await _merge(gql, survivor, merged)
    assert merge["survivor"]["tier"] == {"code": "platinum", "rank": 2}

    undone = await _unmerge(gql, merge["id"])
    assert undone["survivor"]["tier"] == {"code": "silver", "rank": 0}
    assert undone["merged"]["tier"] == {"code": "platinum", "rank": 2}
    assert await _rows(pool, survivor, merged) == before
    history = (await gql(TIER_HISTORY, id=survivor))["member"]["tierHistory"]
    assert sorted((h["fromTier"], h["toTier"], h["cause"]) for h in history) == [
        ("platinum", "silver", f"unmerge {merge['id']}"),
        ("silver", "platinum", f"merge {merge['id']}"),
    ]


async def test_a_survivor_of_the_higher_tier_keeps_it_through_merge_and_unmerge(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    survivor = await _member(gql, brand, "s")
    merged = await _member(gql, brand, "m")
    assert await _order(gql, brand, survivor, "s1", "300") == "gold"
    assert await _order(gql, brand, merged, "m1", "99.99") == "silver"
    before = await _rows(pool, survivor, merged)
    merge = await _merge(gql, survivor, merged)
    assert merge["survivor"]["tier"]["code"] == "gold"
    undone = await _unmerge(gql, merge["id"])
    assert (undone["survivor"]["tier"]["code"], undone["merged"]["tier"]["code"]) == ("gold", "silver")
    assert await _rows(pool, survivor, merged) == before


async def test_a_tier_reached_after_the_merge_stays_after_unmerge(gql: GraphQL, brand: str) -> None:
    survivor = await _member(gql, brand, "s")
    merged = await _member(gql, brand, "m")
    assert await _order(gql, brand, merged, "m1", "300") == "gold"
    merge = await _merge(gql, survivor, merged)
    assert merge["survivor"]["tier"]["code"] == "gold"
    # 3,000 growth from the merged member's order (now the survivor's) + 7,000: diamond.
    assert await _order(gql, brand, survivor, "s1", "700") == "diamond"
    undone = await _unmerge(gql, merge["id"])
    assert (undone["survivor"]["tier"]["code"], undone["merged"]["tier"]["code"]) == ("diamond", "gold")


# An order: cents, and days before now it was paid (400: outside the 365-day tier window).
order_lists = st.lists(st.tuples(st.integers(1, 80_000), st.sampled_from([0, 1, 30, 400])), max_size=3)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    left_orders=order_lists,
    right_orders=order_lists,
    left_tier=st.sampled_from(DEFAULT_TIERS),
    right_tier=st.sampled_from(DEFAULT_TIERS),
    right_survives=st.booleans(),
)
async def test_merge_takes_the_higher_tier_and_unmerge_restores_both_exactly(
    gql: GraphQL,
    pool: AsyncConnectionPool[Any],
    left_orders: list[tuple[int, int]],
    right_orders: list[tuple[int, int]],
    left_tier: str,
    right_tier: str,
    right_survives: bool,
) -> None:
    brand = await new_brand(pool)
    tiers = {}
    for side, history, tier in (("l", left_orders, left_tier), ("r", right_orders, right_tier)):
        member = await _member(gql, brand, side)
        async with pool.connection() as conn:  # where a review (or the demo's history) may have put it
            await conn.execute("UPDATE members SET tier = %s WHERE id = %s", (tier, int(member)))
        for n, (cents, days_ago) in enumerate(history):
            paid = NOW - dt.timedelta(days=days_ago, seconds=n)
            tier = await _order(gql, brand, member, f"{side}{n}", f"{cents / 100:.2f}", paid)
        tiers[member] = tier
    survivor, merged = sorted(tiers, key=int, reverse=right_survives)  # registration order: left first
    before = await _rows(pool, survivor, merged)

    merge = await _merge(gql, survivor, merged)
    higher = max(tiers.values(), key=DEFAULT_TIERS.index)
    assert merge["survivor"]["tier"]["code"] == higher
    assert merge["merged"]["tier"]["code"] == tiers[merged]

    undone = await _unmerge(gql, merge["id"])
    assert undone["survivor"]["tier"]["code"] == tiers[survivor]
    assert undone["merged"]["tier"]["code"] == tiers[merged]
    assert await _rows(pool, survivor, merged) == before

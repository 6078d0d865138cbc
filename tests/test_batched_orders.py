"""Orders batched per process (store.ledger.batched_orders) against the real database: a batch records
each order exactly as the single statement would, and leaves to it what it cannot apply."""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal
from typing import Any

from psycopg_pool import AsyncConnectionPool

from store.brands import brand_by_code
from store.ledger import batched_orders, orders
from store.ledger.batchers import Postings
from store.ledger.orders import OrderInput, Purchase
from tests.conftest import GraphQL
from tests.test_points import _blocked_on_locks, balance_check, new_member

NOW = dt.datetime.now(dt.UTC)
SHANGHAI = dt.timezone(dt.timedelta(hours=8))


async def _brand_id(pool: AsyncConnectionPool[Any], brand: str) -> int:
    async with pool.connection() as conn:
        brand_id: int = (await brand_by_code(conn, brand))["id"]
    return brand_id


def _purchase(brand_id: int, member: str | int, order_id: str, yuan: str, paid_at: dt.datetime = NOW) -> Purchase:
    order = OrderInput(brand_id, int(member), "pos", order_id, Decimal(yuan), paid_at, "s-1")
    return orders.purchase(order, "test")


async def _ledger_of(pool: AsyncConnectionPool[Any], member: str) -> dict[str, Any]:
    """Everything an order writes for a member, without ids and order numbers."""
    async with pool.connection() as conn:
        profile = await (
            await conn.execute(
                "SELECT status, tier, points_balance, points_earned, growth_value, order_count, total_spend,"
                " first_purchase_at, last_purchase_at FROM members WHERE id = %s",
                (int(member),),
            )
        ).fetchone()
        entries = await (
            await conn.execute(
                "SELECT kind, amount, balance_after, note FROM points_entries WHERE member_id = %s ORDER BY id",
                (int(member),),
            )
        ).fetchall()
        lots = await (
            await conn.execute(
                "SELECT amount, remaining, expires_at FROM points_lots WHERE member_id = %s ORDER BY id", (int(member),)
            )
        ).fetchall()
        bought = await (
            await conn.execute(
                "SELECT amount, paid_at, store, points_earned, growth_earned FROM orders WHERE member_id = %s"
                " ORDER BY id",
                (int(member),),
            )
        ).fetchall()
        changes = await (
            await conn.execute(
                "SELECT from_tier, to_tier FROM tier_changes WHERE member_id = %s ORDER BY id", (int(member),)
            )
        ).fetchall()
    return {"profile": profile, "entries": entries, "lots": lots, "orders": bought, "tier_changes": changes}


async def test_a_batch_records_orders_as_the_single_statement_does(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    """Twin members, one of each pair ordering in a batch, the other alone: the same rows result.
    The pairs differ in what an order's earnings depend on: a birthday this month, a tier with a
    bonus, an earlier order that this one lifts over the gold threshold (3,000 growth), an order
    large enough on its own (which must not lift the others of its batch)."""
    brand_id = await _brand_id(pool, brand)
    this_month = f"1990-{NOW.astimezone(SHANGHAI).month:02d}-01"
    profiles: list[dict[str, Any]] = [{}, {"birthday": this_month}, {}, {}, {}]
    earlier = [None, None, "400", "200", None]  # the third is gold already; the fourth crosses
    amounts = ["20", "150.55", "150.55", "150", "400"]
    twins = [
        [await new_member(gql, brand, external_id=f"tb-{side}-{n}", **profile) for side in "ab"]
        for n, profile in enumerate(profiles)
    ]
    async with pool.connection() as conn:
        for n, ((batched_member, alone_member), yuan) in enumerate(zip(twins, earlier, strict=True)):
            if yuan is not None:
                for side, member in (("a", batched_member), ("b", alone_member)):
                    await orders.record(conn, _purchase(brand_id, member, f"early-{side}-{n}", yuan, NOW))
        purchases = [_purchase(brand_id, pair[0], f"a-{n}", amounts[n]) for n, pair in enumerate(twins)]
        results = await batched_orders.record(conn, purchases)
        for n, pair in enumerate(twins):
            await orders.record(conn, _purchase(brand_id, pair[1], f"b-{n}", amounts[n]))
    assert all(result is not None for result in results)
    for (batched_member, alone_member), result in zip(twins, results, strict=True):
        assert result is not None
        assert result.order is not None
        assert result.posting.member is not None
        assert result.posting.member["id"] == int(batched_member)
        assert result.order["member_id"] == int(batched_member)
        assert await _ledger_of(pool, batched_member) == await _ledger_of(pool, alone_member)
        await balance_check(pool, batched_member)
    tiers = [(await _ledger_of(pool, pair[0]))["profile"][1] for pair in twins]
    assert tiers == ["silver", "silver", "gold", "gold", "gold"]
    birthday_entries = (await _ledger_of(pool, twins[1][0]))["entries"]
    assert [entry[3] for entry in birthday_entries] == ["order: 150.55 yuan x 1.00", "birthday month x2.00"]


async def test_a_batch_leaves_retries_and_members_it_cannot_post(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    brand_id = await _brand_id(pool, brand)
    kept, fresh = [await new_member(gql, brand, external_id=f"tb-{n}") for n in range(2)]
    async with pool.connection() as conn:
        first = await orders.record(conn, _purchase(brand_id, kept, "o1", "10"))
        results = await batched_orders.record(
            conn,
            [
                _purchase(brand_id, kept, "o1", "10"),  # a retry: the key is taken
                _purchase(brand_id, 10**12, "o2", "10"),  # no such member
                _purchase(brand_id, fresh, "o3", "25"),
            ],
        )
        replay = await orders.record(conn, _purchase(brand_id, kept, "o1", "10"))
    assert results[:2] == [None, None]
    assert results[2] is not None
    assert results[2].order is not None
    assert results[2].order["points_earned"] == 25
    assert (replay.posting.replayed, replay.order_id) == (True, first.order_id)
    assert await balance_check(pool, kept) == 10
    assert await balance_check(pool, fresh) == 25


async def test_a_batch_leaves_a_buyer_that_changed_under_it(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    """An order committed while the batch waited for the member's row moved what the batch's
    earnings were computed from (order count, tier metric): that member is left to the single
    path, which counts both orders for the tier (200 + 150 yuan: gold from 3,000 growth)."""
    brand_id = await _brand_id(pool, brand)
    member, other = [await new_member(gql, brand, external_id=f"tb-{n}") for n in range(2)]
    async with pool.connection() as conn:
        async with pool.connection() as holder, holder.transaction():
            await orders.record(holder, _purchase(brand_id, member, "first", "200"))
            batch = asyncio.create_task(
                batched_orders.record(
                    conn, [_purchase(brand_id, member, "second", "150"), _purchase(brand_id, other, "x", "150")]
                )
            )
            await _blocked_on_locks(pool, 1)
        results = await batch  # the holder committed: the batch goes on
        assert results[0] is None
        assert results[1] is not None
        alone = await orders.record(conn, _purchase(brand_id, member, "second", "150"))
    assert alone.posting.member is not None
    assert (alone.posting.member["tier"], alone.posting.member["order_count"]) == ("gold", 2)
    assert await balance_check(pool, member) == 350
    assert await balance_check(pool, other) == 150


async def test_concurrent_orders_share_batches_and_each_records_once(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    brand_id = await _brand_id(pool, brand)
    members = [await new_member(gql, brand, external_id=f"tb-{n}") for n in range(8)]
    postings = Postings(pool)
    purchases = [_purchase(brand_id, members[n % 8], f"o{n}", "12.50") for n in range(48)]
    twice = purchases + purchases[:8]  # eight sent twice, at the same time
    results = await asyncio.gather(*(postings.record(purchase) for purchase in twice))
    assert postings.orders.batched > 0, "no two orders ever shared a batch"
    assert sum(not result.posting.replayed for result in results) == 48
    assert [result.order_id for result in results[48:]] == [result.order_id for result in results[:8]]
    assert [await balance_check(pool, member) for member in members] == [72] * 8  # six orders of 12 points
    async with pool.connection() as conn:
        counts = await (
            await conn.execute(
                "SELECT order_count, total_spend FROM members WHERE id = ANY(%s) ORDER BY id",
                ([int(member) for member in members],),
            )
        ).fetchall()
    assert counts == [(6, Decimal("75.00"))] * 8

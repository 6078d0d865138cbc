"""Postings batched per process (store.ledger.batching, store.ledger.batched) against the real database: a batch
posts what it can exactly as the single path would, and leaves everything else to it."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any

from psycopg import AsyncConnection, errors
from psycopg_pool import AsyncConnectionPool

from store.brands import brand_by_code
from store.errors import ErrorCode
from store.ledger import batched, points
from store.ledger.batched import Change
from store.ledger.batchers import Postings
from store.ledger.batching import Batcher
from store.ledger.journal import Posting, Request
from tests.conftest import GraphQL
from tests.test_points import _blocked_on_locks, balance_check, new_member


async def _brand_id(pool: AsyncConnectionPool[Any], brand: str) -> int:
    async with pool.connection() as conn:
        brand_id: int = (await brand_by_code(conn, brand))["id"]
    return brand_id


def _earn(brand_id: int, member: str | int, key: str, amount: int) -> Change:
    return points.earning(Request(brand_id, int(member), key, "earn", {"amount": amount}, actor="test"), amount)


def _redeem(brand_id: int, member: str | int, key: str, amount: int) -> Change:
    return points.redemption(Request(brand_id, int(member), key, "redeem", {"amount": amount}, actor="test"), amount)


async def _postings_with_key(pool: AsyncConnectionPool[Any], brand_id: int, key: str) -> int:
    async with pool.connection() as conn:
        row = await (
            await conn.execute(
                "SELECT count(*) FROM points_postings WHERE brand_id = %s AND idempotency_key = %s", (brand_id, key)
            )
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_a_credit_batch_posts_the_clean_items_and_leaves_the_rest(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    brand_id = await _brand_id(pool, brand)
    live = [await new_member(gql, brand, external_id=f"tb-{n}") for n in range(3)]
    async with pool.connection() as conn:
        await points.earn(conn, _earn(brand_id, live[0], "held", 5).request, 5)
        changes = [
            _earn(brand_id, live[0], "held", 5),  # a retry: the key is taken
            _earn(brand_id, live[1], "b1", 100),
            _earn(brand_id, 10**12, "nobody", 7),  # no such member
            _earn(brand_id, live[2], "b2", 200),
        ]
        results = await batched.credit(conn, changes)
    assert results[0] is None
    assert results[2] is None
    posted = [result for result in results if result is not None]
    assert [(p.member_id, p.member and p.member["points_balance"]) for p in posted] == [
        (int(live[1]), 100),
        (int(live[2]), 200),
    ]
    assert [await balance_check(pool, member) for member in live] == [5, 100, 200]
    assert await _postings_with_key(pool, brand_id, "held") == 1
    assert await _postings_with_key(pool, brand_id, "nobody") == 0


async def test_a_debit_batch_draws_soonest_expiring_lots_and_leaves_refusals(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    brand_id = await _brand_id(pool, brand)
    rich, poor = [await new_member(gql, brand, external_id=f"tb-{n}") for n in range(2)]
    async with pool.connection() as conn:
        for n in range(3):
            await points.earn(conn, _earn(brand_id, rich, f"e{n}", 40).request, 40)
        await points.earn(conn, _earn(brand_id, poor, "p0", 10).request, 10)
        # Lot expiries differ by how they were written: make the newest lot expire first.
        await conn.execute(
            "UPDATE points_lots SET expires_at = expires_at - interval '1 day'"
            " WHERE id = (SELECT max(id) FROM points_lots WHERE member_id = %s)",
            (int(rich),),
        )
        results = await batched.debit(conn, [_redeem(brand_id, rich, "r1", 50), _redeem(brand_id, poor, "r2", 11)])
        remaining = await (
            await conn.execute("SELECT remaining FROM points_lots WHERE member_id = %s ORDER BY id", (int(rich),))
        ).fetchall()
    assert results[1] is None  # refused: the single path explains (InsufficientPoints)
    assert results[0] is not None
    assert results[0].member is not None
    assert results[0].member["points_balance"] == 70
    assert [row[0] for row in remaining] == [30, 40, 0]  # the newest lot first, then the oldest
    assert await balance_check(pool, rich) == 70
    assert await balance_check(pool, poor) == 10
    assert await _postings_with_key(pool, brand_id, "r2") == 0


async def test_concurrent_postings_share_batches_and_each_posts_once(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    brand_id = await _brand_id(pool, brand)
    members = [await new_member(gql, brand, external_id=f"tb-{n}") for n in range(6)]
    postings = Postings(pool)
    earns = [_earn(brand_id, members[n % 6], f"k{n}", 10) for n in range(60)]
    twice = earns + earns[:10]  # ten sent twice, at the same time
    results = await asyncio.gather(*(postings.post(change) for change in twice))
    assert postings.credits.batched > 0, "no two postings ever shared a batch"
    assert sum(not result.replayed for result in results) == 60
    assert [result.id for result in results[60:]] == [result.id for result in results[:10]]
    assert [await balance_check(pool, member) for member in members] == [100] * 6
    redemptions = [_redeem(brand_id, members[n % 6], f"r{n}", 30) for n in range(24)]
    outcomes = await asyncio.gather(*(postings.post(change) for change in redemptions), return_exceptions=True)
    assert sum(isinstance(outcome, Posting) for outcome in outcomes) == 18  # three of 30 per 100-point member
    refused = [outcome for outcome in outcomes if not isinstance(outcome, Posting)]
    assert [getattr(error, "code", error) for error in refused] == [ErrorCode.INSUFFICIENT_POINTS] * 6
    assert [await balance_check(pool, member) for member in members] == [10] * 6


async def test_a_batch_that_cannot_apply_posts_each_item_alone(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    brand_id = await _brand_id(pool, brand)
    members = [await new_member(gql, brand, external_id=f"tb-{n}") for n in range(4)]
    tried: list[int] = []

    async def refuse(conn: AsyncConnection[Any], changes: Sequence[Change]) -> list[Posting | None]:
        tried.append(len(changes))
        async with conn.transaction():  # writes, then fails: nothing of it may remain
            await batched.credit(conn, changes)
            raise errors.DeadlockDetected("test")

    batcher = Batcher(pool, refuse, batched.post_alone, batched.claims)
    results = await asyncio.gather(*(batcher.submit(_earn(brand_id, m, f"k{m}", 25)) for m in members * 2))
    assert max(tried) > 1
    assert batcher.batched == 0
    assert sum(not result.replayed for result in results) == 4  # each key once; the repeats replay
    assert [await balance_check(pool, member) for member in members] == [25] * 4


async def test_a_debit_batch_leaves_a_member_that_changed_under_it(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    """The batch plans its draws from its snapshot: a member whose lots changed after it (here a
    new lot that expires first, committed while the batch waited for the row) must be left to the
    single path, which then draws from that lot."""
    brand_id = await _brand_id(pool, brand)
    member, other = [await new_member(gql, brand, external_id=f"tb-{n}") for n in range(2)]
    async with pool.connection() as conn:
        await points.earn(conn, _earn(brand_id, member, "old", 100).request, 100)
        await points.earn(conn, _earn(brand_id, other, "other", 100).request, 100)
    async with pool.connection() as conn:
        async with pool.connection() as holder, holder.transaction():
            await points.earn(holder, _earn(brand_id, member, "new", 50).request, 50)
            await holder.execute(
                "UPDATE points_lots SET expires_at = now() + interval '1 day'"
                " WHERE id = (SELECT max(id) FROM points_lots WHERE member_id = %s)",
                (int(member),),
            )
            batch = asyncio.create_task(
                batched.debit(conn, [_redeem(brand_id, member, "r1", 30), _redeem(brand_id, other, "r2", 30)])
            )
            await _blocked_on_locks(pool, 1)
        results = await batch  # the holder committed: the batch goes on
    assert results[0] is None
    assert results[1] is not None
    async with pool.connection() as conn:
        await batched.post_alone(conn, _redeem(brand_id, member, "r1", 30))
        remaining = await (
            await conn.execute("SELECT remaining FROM points_lots WHERE member_id = %s ORDER BY id", (int(member),))
        ).fetchall()
    assert [row[0] for row in remaining] == [100, 20]
    assert await balance_check(pool, member) == 120
    assert await balance_check(pool, other) == 70


async def test_stragglers_wait_for_the_next_batch_instead_of_going_alone(pool: AsyncConnectionPool[Any]) -> None:
    """16 clients in a closed loop against batches that take 3-7 ms: sending whatever queued the
    moment a slot freed made about two thirds of the statements single postings (the costliest
    kind, measured with real orders too); waiting until as many queue as the batch in flight
    carries leaves few."""
    sizes: list[int] = []
    durations = random.Random(4)

    async def together(conn: AsyncConnection[Any], items: Sequence[int]) -> list[int | None]:
        sizes.append(len(items))
        await asyncio.sleep(durations.uniform(0.003, 0.007))
        return list(items)

    async def alone(conn: AsyncConnection[Any], item: int) -> int:
        sizes.append(1)
        await asyncio.sleep(durations.uniform(0.003, 0.007))
        return item

    batcher = Batcher(pool, together, alone, lambda item: [item])
    counter = iter(range(10**6))

    async def client() -> list[int]:
        return [await batcher.submit(next(counter)) for _ in range(25)]

    answers = await asyncio.gather(*(client() for _ in range(16)))
    assert sorted(n for answered in answers for n in answered) == list(range(400))
    assert sum(sizes) == 400
    assert sizes.count(1) <= 4, sizes
    assert len(sizes) <= 400 / 6, sizes

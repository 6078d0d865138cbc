"""The points ledger through the API: postings, idempotency, lots and expiry, orders and refunds."""

from __future__ import annotations

import asyncio
import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from store.brands import brand_by_code
from store.ledger import orders, postings
from store.ledger.journal import Request
from store.ledger.points import expire_member
from tests.conftest import GraphQL
from tests.fragments import ADJUST, CANCEL, EARN, RECORD_ORDER, REDEEM, REFUND_ORDER, REGISTER

NOW = dt.datetime.now(dt.UTC)


async def new_member(gql: GraphQL, brand: str, external_id: str = "tb-1", **extra: Any) -> str:
    data = await gql(REGISTER, brand=brand, channel="tmall", externalId=external_id, **extra)
    member_id: str = data["registerMember"]["member"]["id"]
    return member_id


async def balance_check(pool: AsyncConnectionPool[Any], member_id: str) -> int:
    """The three views of a balance agree and are never negative; returns the balance."""
    async with pool.connection() as conn:
        row = await (
            await conn.execute(
                "SELECT m.points_balance,"
                " (SELECT coalesce(sum(amount), 0) FROM points_entries WHERE member_id = m.id),"
                " (SELECT coalesce(sum(remaining), 0) FROM points_lots WHERE member_id = m.id)"
                " FROM members m WHERE m.id = %s",
                (int(member_id),),
            )
        ).fetchone()
    assert row is not None
    assert row[0] == row[1] == row[2] >= 0, row
    return int(row[0])


async def test_earn_then_redeem(gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]) -> None:
    member = await new_member(gql, brand)
    earned = (await gql(EARN, brand=brand, memberId=member, amount=500, key="e1", reason="sign-up gift"))["earnPoints"]
    assert earned["posting"]["entries"] == [
        {"kind": "EARN", "amount": 500, "balanceAfter": 500, "note": "sign-up gift"}
    ]
    assert earned["member"]["pointsBalance"] == 500
    redeemed = (await gql(REDEEM, brand=brand, memberId=member, amount=120, key="r1"))["redeemPoints"]
    assert redeemed["posting"]["entries"][0]["amount"] == -120
    assert redeemed["member"]["pointsBalance"] == 380
    assert await balance_check(pool, member) == 380


async def test_a_retried_key_replays_and_posts_nothing(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    member = await new_member(gql, brand)
    first = (await gql(EARN, brand=brand, memberId=member, amount=100, key="k"))["earnPoints"]
    again = (await gql(EARN, brand=brand, memberId=member, amount=100, key="k"))["earnPoints"]
    assert (first["replayed"], again["replayed"]) == (False, True)
    assert again["posting"]["id"] == first["posting"]["id"]
    assert again["member"]["pointsBalance"] == 100
    other = (await gql(EARN, brand=brand, memberId=member, amount=101, key="k"))["earnPoints"]
    assert (other["__typename"], other["code"], other["field"]) == (
        "DuplicateRequest",
        "DUPLICATE_REQUEST",
        "idempotencyKey",
    )
    assert await balance_check(pool, member) == 100


async def test_redeeming_more_than_the_balance_is_refused(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    member = await new_member(gql, brand)
    await gql(EARN, brand=brand, memberId=member, amount=50, key="e")
    refused = (await gql(REDEEM, brand=brand, memberId=member, amount=51, key="r"))["redeemPoints"]
    assert (refused["__typename"], refused["available"]) == ("InsufficientPoints", 50)
    assert await balance_check(pool, member) == 50
    # The refused request did not consume its key.
    ok = (await gql(REDEEM, brand=brand, memberId=member, amount=50, key="r"))["redeemPoints"]
    assert ok["member"]["pointsBalance"] == 0


async def test_redemptions_draw_the_soonest_expiring_lots(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    member = await new_member(gql, brand)
    late = NOW - dt.timedelta(days=10)
    early = NOW - dt.timedelta(days=800)  # earned two years ago: expires sooner
    await gql(
        RECORD_ORDER,
        brand=brand,
        channel="tmall",
        orderId="late",
        amount="100",
        paidAt=late.isoformat(),
        memberId=member,
    )
    await gql(
        RECORD_ORDER,
        brand=brand,
        channel="tmall",
        orderId="early",
        amount="100",
        paidAt=early.isoformat(),
        memberId=member,
    )
    await gql(REDEEM, brand=brand, memberId=member, amount=150, key="r")
    async with pool.connection() as conn:
        rows = await (
            await conn.execute(
                "SELECT remaining FROM points_lots WHERE member_id = %s ORDER BY expires_at", (int(member),)
            )
        ).fetchall()
    assert [r[0] for r in rows] == [0, 50]


async def test_a_redemption_waiting_on_another_draws_from_the_lots_that_one_left(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    """A one-statement redemption plans its draw from the lots its snapshot saw; if another posting
    for the member commits while it waits for the row, that plan is stale and must not be used."""
    member = await new_member(gql, brand)
    await gql(EARN, brand=brand, memberId=member, amount=100, key="e1")
    await gql(EARN, brand=brand, memberId=member, amount=100, key="e2")
    async with pool.connection() as holder:
        brand_id = (await (await holder.execute("SELECT id FROM brands WHERE code = %s", (brand,))).fetchone() or [0])[
            0
        ]
        async with holder.transaction():
            request = Request(brand_id, int(member), "first", "redeem", {"amount": 100})
            await postings.debit_posting(holder, request, kind="redeem", amount=100, note="first")  # all of lot 1
            second = asyncio.create_task(gql(REDEEM, brand=brand, memberId=member, amount=50, key="second"))
            await _blocked_on_locks(pool, 1)
        result = (await second)["redeemPoints"]
    assert result["member"]["pointsBalance"] == 50, result
    async with pool.connection() as conn:
        rows = await (
            await conn.execute("SELECT remaining FROM points_lots WHERE member_id = %s ORDER BY id", (int(member),))
        ).fetchall()
    assert [row[0] for row in rows] == [0, 50]
    assert await balance_check(pool, member) == 50


async def test_cancelling_a_redemption_restores_exactly_its_lots(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    member = await new_member(gql, brand)
    await gql(EARN, brand=brand, memberId=member, amount=30, key="e1")
    await gql(EARN, brand=brand, memberId=member, amount=70, key="e2")
    redemption = (await gql(REDEEM, brand=brand, memberId=member, amount=80, key="r"))["redeemPoints"]
    cancelled = (await gql(CANCEL, brand=brand, postingId=redemption["posting"]["id"], key="c"))["cancelRedemption"]
    assert cancelled["posting"]["entries"][0]["kind"] == "REVERSE"
    assert cancelled["member"]["pointsBalance"] == 100
    async with pool.connection() as conn:
        lots = await (
            await conn.execute("SELECT amount, remaining FROM points_lots WHERE member_id = %s", (int(member),))
        ).fetchall()
    assert all(amount == remaining for amount, remaining in lots)
    twice = (await gql(CANCEL, brand=brand, postingId=redemption["posting"]["id"], key="c2"))["cancelRedemption"]
    assert twice["code"] == "ALREADY_CANCELLED"
    retry = (await gql(CANCEL, brand=brand, postingId=redemption["posting"]["id"], key="c"))["cancelRedemption"]
    assert retry["replayed"] is True
    assert await balance_check(pool, member) == 100


async def test_adjustments_need_a_reason_and_respect_the_balance(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    member = await new_member(gql, brand)
    up = (await gql(ADJUST, brand=brand, memberId=member, delta=40, key="a1", reason="goodwill"))["adjustPoints"]
    assert up["posting"]["entries"][0] == {"kind": "ADJUST", "amount": 40, "balanceAfter": 40, "note": "goodwill"}
    down = (await gql(ADJUST, brand=brand, memberId=member, delta=-41, key="a2", reason="fix"))["adjustPoints"]
    assert down["available"] == 40
    empty = (await gql(ADJUST, brand=brand, memberId=member, delta=-1, key="a3", reason=" "))["adjustPoints"]
    assert empty["field"] == "reason"
    zero = (await gql(ADJUST, brand=brand, memberId=member, delta=0, key="a4", reason="x"))["adjustPoints"]
    assert zero["field"] == "delta"
    assert await balance_check(pool, member) == 40


@pytest.mark.parametrize(
    ("variables", "typename", "field"),
    [
        ({"amount": 0}, "InvalidInput", "amount"),
        ({"amount": 10**9 + 1}, "InvalidInput", "amount"),
        ({"key": ""}, "InvalidInput", "idempotencyKey"),
        ({"key": "k" * 201}, "InvalidInput", "idempotencyKey"),
        ({"memberId": "999999999"}, "UnknownMember", "memberId"),
        ({"memberId": "x"}, "UnknownMember", "memberId"),
        ({"brand": "nope"}, "UnknownBrand", "brand"),
    ],
)
async def test_posting_errors_are_typed(
    gql: GraphQL, brand: str, variables: dict[str, Any], typename: str, field: str
) -> None:
    member = await new_member(gql, brand)
    arguments = {"brand": brand, "memberId": member, "amount": 10, "key": "k", **variables}
    result = (await gql(EARN, **arguments))["earnPoints"]
    assert (result["__typename"], result["field"]) == (typename, field)


async def test_an_order_earns_points_growth_and_membership(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    member = await new_member(gql, brand)
    paid = (NOW - dt.timedelta(hours=1)).isoformat()
    result = await gql(
        RECORD_ORDER, brand=brand, channel="tmall", orderId="T1", amount="199.90", paidAt=paid, buyerId="tb-1"
    )
    recorded = result["recordOrder"]
    assert recorded["order"]["pointsEarned"] == 199
    assert recorded["order"]["growthEarned"] == 1999
    assert recorded["member"] == {
        "id": member,
        "status": "MEMBER",
        "pointsBalance": 199,
        "growthValue": 1999,
        "orderCount": 1,
        "totalSpend": "199.90",
        "tier": {"code": "silver"},
    }
    again = await gql(
        RECORD_ORDER, brand=brand, channel="tmall", orderId="T1", amount="199.90", paidAt=paid, buyerId="tb-1"
    )
    assert again["recordOrder"]["replayed"] is True
    assert again["recordOrder"]["member"]["orderCount"] == 1
    changed = await gql(
        RECORD_ORDER, brand=brand, channel="tmall", orderId="T1", amount="10", paidAt=paid, buyerId="tb-1"
    )
    assert changed["recordOrder"]["code"] == "DUPLICATE_REQUEST"
    assert await balance_check(pool, member) == 199


async def test_bonuses_are_separate_entries(gql: GraphQL, brand: str) -> None:
    paid = NOW - dt.timedelta(minutes=5)
    shanghai = paid.astimezone(dt.timezone(dt.timedelta(hours=8)))
    member = await new_member(gql, brand, birthday=f"1990-{shanghai.month:02d}-01")
    result = await gql(
        RECORD_ORDER, brand=brand, channel="pos", orderId="P1", amount="100", paidAt=paid.isoformat(), memberId=member
    )
    entries = result["recordOrder"]["posting"]["entries"]
    assert [(e["kind"], e["amount"]) for e in entries] == [("EARN", 100), ("EARN", 100)]
    assert entries[1]["note"] == "birthday month x2.00"


async def test_crossing_a_threshold_upgrades_at_once(gql: GraphQL, brand: str) -> None:
    member = await new_member(gql, brand)
    result = await gql(
        RECORD_ORDER, brand=brand, channel="jd", orderId="J1", amount="300", paidAt=NOW.isoformat(), memberId=member
    )
    assert result["recordOrder"]["member"]["tier"] == {"code": "gold"}
    history = await gql("query($id: ID!) { member(id: $id) { tierHistory { fromTier toTier cause } } }", id=member)
    assert history["member"]["tierHistory"] == [{"fromTier": "silver", "toTier": "gold", "cause": "order jd:J1"}]


async def _blocked_on_locks(pool: AsyncConnectionPool[Any], count: int) -> None:
    """Wait until ``count`` backends of this database wait for a lock."""
    for _ in range(500):
        async with pool.connection() as conn:
            waiting = await (
                await conn.execute(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            ).fetchone()
        if waiting is not None and waiting[0] >= count:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{count} backends never waited for the member's row")


async def test_orders_that_cross_a_threshold_together_upgrade(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    """Two orders of 150 yuan (1,500 growth each; gold from 3,000) computed side by side: the one
    that applies second must count the first, although both read the member before either wrote.
    One comes through the API, the other as from a second server process (one process queues
    its own orders of a member one behind the other)."""
    member = await new_member(gql, brand)
    async with pool.connection() as holder, pool.connection() as other_process:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM members WHERE id = %s FOR UPDATE", (int(member),))
            through_api = asyncio.create_task(
                gql(
                    RECORD_ORDER,
                    brand=brand,
                    channel="jd",
                    orderId="J1",
                    amount="150",
                    paidAt=NOW.isoformat(),
                    memberId=member,
                )
            )
            brand_id = (await brand_by_code(holder, brand))["id"]
            order = orders.OrderInput(brand_id, int(member), "jd", "J2", Decimal("150"), NOW, None)
            alongside = asyncio.create_task(orders.record(other_process, orders.purchase(order, "test")))
            await _blocked_on_locks(pool, 2)
        first = (await through_api)["recordOrder"]["member"]
        second = (await alongside).posting.member
    assert second is not None
    counts = {first["orderCount"]: (first["tier"]["code"], first["growthValue"])}
    counts[second["order_count"]] = (second["tier"], second["growth_value"])
    assert sorted(counts) == [1, 2]
    assert counts[2] == ("gold", 3000)
    history = await gql("query($id: ID!) { member(id: $id) { tierHistory { fromTier toTier } } }", id=member)
    assert history["member"]["tierHistory"] == [{"fromTier": "silver", "toTier": "gold"}]
    assert await balance_check(pool, member) == 300


async def test_many_orders_of_one_member_at_once_all_count(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    member = await new_member(gql, brand)
    results = await asyncio.gather(
        *(
            gql(
                RECORD_ORDER,
                brand=brand,
                channel="pos",
                orderId=f"P{n}",
                amount="10",
                paidAt=NOW.isoformat(),
                memberId=member,
            )
            for n in range(16)
        )
    )
    assert all(result["recordOrder"]["__typename"] == "OrderRecorded" for result in results), results
    assert sorted(result["recordOrder"]["member"]["orderCount"] for result in results) == list(range(1, 17))
    assert await balance_check(pool, member) == 160


async def test_a_partial_then_full_refund_takes_points_back_pro_rata(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    member = await new_member(gql, brand)
    await gql(
        RECORD_ORDER, brand=brand, channel="mall", orderId="M1", amount="100", paidAt=NOW.isoformat(), memberId=member
    )
    part = (await gql(REFUND_ORDER, brand=brand, channel="mall", orderId="M1", amount="30", key="rf1"))["refundOrder"]
    assert part["order"] == {
        "id": part["order"]["id"],
        "refunded": "30.00",
        "pointsReversed": 30,
        "growthReversed": 300,
        "pointsUnrecovered": 0,
    }
    assert part["member"]["pointsBalance"] == 70
    rest = (await gql(REFUND_ORDER, brand=brand, channel="mall", orderId="M1", key="rf2"))["refundOrder"]
    assert (rest["order"]["pointsReversed"], rest["member"]["pointsBalance"], rest["member"]["growthValue"]) == (
        100,
        0,
        0,
    )
    done = (await gql(REFUND_ORDER, brand=brand, channel="mall", orderId="M1", key="rf3"))["refundOrder"]
    assert done["code"] == "ORDER_FULLY_REFUNDED"
    assert await balance_check(pool, member) == 0


async def test_a_refund_of_spent_points_records_the_shortfall(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    member = await new_member(gql, brand)
    await gql(
        RECORD_ORDER, brand=brand, channel="mall", orderId="M2", amount="100", paidAt=NOW.isoformat(), memberId=member
    )
    await gql(REDEEM, brand=brand, memberId=member, amount=80, key="spend")
    refund = (await gql(REFUND_ORDER, brand=brand, channel="mall", orderId="M2", key="rf"))["refundOrder"]
    assert (refund["order"]["pointsReversed"], refund["order"]["pointsUnrecovered"]) == (20, 80)
    assert refund["member"]["pointsBalance"] == 0
    assert await balance_check(pool, member) == 0


async def test_expiry_posts_what_is_left_and_runs_idempotently(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    member = await new_member(gql, brand)
    old = NOW - dt.timedelta(days=3 * 366 + 30)
    await gql(
        RECORD_ORDER, brand=brand, channel="pos", orderId="old", amount="100", paidAt=old.isoformat(), memberId=member
    )
    await gql(
        RECORD_ORDER, brand=brand, channel="pos", orderId="new", amount="10", paidAt=NOW.isoformat(), memberId=member
    )
    await gql(REDEEM, brand=brand, memberId=member, amount=40, key="r")  # drawn from the old lot first
    async with pool.connection() as conn, conn.transaction():
        brand_id = await (await conn.execute("SELECT brand_id FROM members WHERE id = %s", (int(member),))).fetchone()
        assert brand_id is not None
        expired = await expire_member(conn, brand_id[0], int(member), NOW)
    async with pool.connection() as conn, conn.transaction():
        again = await expire_member(conn, brand_id[0], int(member), NOW)
    assert (expired, again) == (60, 0)
    assert await balance_check(pool, member) == 10
    query = "query($id: ID!) { member(id: $id) { pointsHistory(first: 1) { nodes { kind amount } } } }"
    assert (await gql(query, id=member))["member"]["pointsHistory"]["nodes"] == [{"kind": "EXPIRE", "amount": -60}]


async def test_expiring_points_and_history_pages(gql: GraphQL, brand: str) -> None:
    member = await new_member(gql, brand)
    for n in range(5):
        await gql(EARN, brand=brand, memberId=member, amount=n + 1, key=f"e{n}")
    query = """query($id: ID!, $after: String) { member(id: $id) {
        expiringPoints(withinDays: 3660) { total lots { points } }
        soon: expiringPoints(withinDays: 0) { total }
        pointsHistory(first: 2, after: $after) { nodes { amount } pageInfo { hasNextPage endCursor } } } }"""
    first = (await gql(query, id=member))["member"]
    assert first["expiringPoints"]["total"] == 15
    assert first["soon"]["total"] == 0
    assert [n["amount"] for n in first["pointsHistory"]["nodes"]] == [5, 4]
    second = (await gql(query, id=member, after=first["pointsHistory"]["pageInfo"]["endCursor"]))["member"]
    assert [n["amount"] for n in second["pointsHistory"]["nodes"]] == [3, 2]

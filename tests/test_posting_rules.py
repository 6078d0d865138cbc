"""Limits and answers of postings and orders that mutation testing found unchecked
(docs/testing.md#mutation-testing): the bounds of an amount and of an idempotency key, how far ahead
an order may be paid, the tier an order's answer names, and who may be credited an order."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from store.brands import brand_by_code
from store.errors import DomainError, ErrorCode
from store.ledger import orders
from tests.conftest import GraphQL, new_brand
from tests.fragments import EARN, RECORD_ORDER, REGISTER

MAX_POINTS = 10**9  # docs/errors.md: 1 to 10^9 points a posting
MAX_KEY = 200  # characters of an idempotency key


async def _member(gql: GraphQL, brand: str, external_id: str = "card-1") -> str:
    data = await gql(REGISTER, brand=brand, channel="pos", externalId=external_id)
    member_id: str = data["registerMember"]["member"]["id"]
    return member_id


async def _earn(gql: GraphQL, brand: str, member: str, amount: int, key: str) -> dict[str, Any]:
    posted: dict[str, Any] = (await gql(EARN, brand=brand, memberId=member, amount=amount, key=key))["earnPoints"]
    return posted


@pytest.mark.parametrize(("amount", "accepted"), [(0, False), (1, True), (MAX_POINTS, True), (MAX_POINTS + 1, False)])
async def test_a_posting_is_1_to_a_billion_points(gql: GraphQL, brand: str, amount: int, accepted: bool) -> None:
    member = await _member(gql, brand)
    posted = await _earn(gql, brand, member, amount, "k")
    if accepted:
        assert (posted["__typename"], posted["member"]["pointsBalance"]) == ("PointsPosted", amount)
    else:
        assert (posted["code"], posted["field"]) == ("INVALID_INPUT", "amount")


@pytest.mark.parametrize(("length", "accepted"), [(1, True), (MAX_KEY, True), (MAX_KEY + 1, False)])
async def test_an_idempotency_key_is_1_to_200_characters(gql: GraphQL, brand: str, length: int, accepted: bool) -> None:
    member = await _member(gql, brand)
    posted = await _earn(gql, brand, member, 5, "键" * length)
    if accepted:
        assert posted["__typename"] == "PointsPosted", posted
    else:
        assert (posted["code"], posted["field"]) == ("INVALID_INPUT", "idempotencyKey")


@pytest.mark.parametrize(("ahead", "accepted"), [(dt.timedelta(hours=1), True), (dt.timedelta(days=1, hours=1), False)])
async def test_an_order_may_be_paid_up_to_a_day_ahead(
    gql: GraphQL, brand: str, ahead: dt.timedelta, accepted: bool
) -> None:
    """Tills' clocks run fast: a day's grace, no more."""
    member = await _member(gql, brand)
    paid = (dt.datetime.now(dt.UTC) + ahead).isoformat()
    result = (
        await gql(RECORD_ORDER, brand=brand, channel="pos", orderId="o1", amount="10", paidAt=paid, memberId=member)
    )["recordOrder"]
    if accepted:
        assert result["__typename"] == "OrderRecorded", result
    else:
        assert (result["code"], result["field"]) == ("INVALID_INPUT", "paidAt")


ORDER_TIER = """mutation($brand: String!, $memberId: ID!, $amount: Decimal!, $paidAt: DateTime!) {
  recordOrder(brand: $brand, channel: "pos", externalOrderId: "o1", amount: $amount, paidAt: $paidAt,
              memberId: $memberId) {
    ... on OrderRecorded { member { tier { code name rank } } } } }"""


async def test_an_orders_answer_names_the_brands_own_tier(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    async with pool.connection() as conn:  # names no other brand's tiers have
        await conn.execute(
            "UPDATE brand_tiers SET name = 'Jade ' || rank FROM brands b"
            " WHERE b.id = brand_tiers.brand_id AND b.code = %s",
            (brand,),
        )
    member = await _member(gql, brand)
    paid = dt.datetime.now(dt.UTC).isoformat()
    answer = await gql(ORDER_TIER, brand=brand, memberId=member, amount="300", paidAt=paid)
    assert answer["recordOrder"]["member"]["tier"] == {"code": "gold", "name": "Jade 1", "rank": 1}


async def test_an_order_for_another_brands_member_is_refused(gql: GraphQL, pool: AsyncConnectionPool[Any]) -> None:
    brand, other = await new_brand(pool), await new_brand(pool)
    stranger = int(await _member(gql, other))
    async with pool.connection() as conn:
        brand_id = (await brand_by_code(conn, brand))["id"]
        entry = orders.OrderInput(brand_id, stranger, "pos", "o1", Decimal("10"), dt.datetime.now(dt.UTC), None)
        with pytest.raises(DomainError) as refused:
            await orders.record(conn, orders.purchase(entry, "test"))
    assert (refused.value.code, refused.value.field) == (ErrorCode.UNKNOWN_MEMBER, "memberId")


@pytest.mark.parametrize(
    ("amount", "accepted"),
    [
        ("0.01", True),
        ("100000000", True),
        ("100000000.00", True),
        ("0.00", False),
        ("100000000.01", False),
        ("10.001", False),
        ("0.001", False),
    ],
)
def test_an_order_is_a_cent_to_a_hundred_million_yuan_in_cents(amount: str, accepted: bool) -> None:
    if accepted:
        assert orders.check_amount(Decimal(amount)) == Decimal(amount)
    else:
        with pytest.raises(DomainError) as refused:
            orders.check_amount(Decimal(amount))
        assert (refused.value.code, refused.value.field) == (ErrorCode.INVALID_INPUT, "amount")

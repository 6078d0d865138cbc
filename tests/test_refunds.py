"""Refunds take an order's points and growth back pro rata, floored, exactly to the cent.

docs/points.md#refunds: a refund of r yuan of an order of a yuan that earned p points takes back
floor(p x (refunded so far) / a) minus what earlier refunds took. The older fixtures refund whole
shares (30 of 100 yuan), where flooring and rounding agree; here the shares are fractions of a yuan
and the points differ from the yuan (birthday and tier bonuses), so they do not.
"""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg_pool import AsyncConnectionPool

from tests.conftest import GraphQL, new_brand
from tests.fragments import RECORD_ORDER, REFUND_ORDER, REGISTER

SHANGHAI = ZoneInfo("Asia/Shanghai")
MULTIPLIERS = [Decimal("1"), Decimal("1.25"), Decimal("1.5"), Decimal("2")]
# Brand rules: points and growth per yuan, birthday multiplier (the defaults, 1, 10 and 2, make x and / agree).
RATES = [Decimal("1"), Decimal("2"), Decimal("0.5"), Decimal("1.25")]
BIRTHDAY_MULTIPLIERS = [Decimal("2"), Decimal("3"), Decimal("1.5")]


def _yuan(cents: int) -> str:
    return f"{Decimal(cents) / 100:.2f}"


async def _buyer(gql: GraphQL, brand: str, birthday: str | None = None) -> str:
    data = await gql(REGISTER, brand=brand, channel="pos", externalId="card-1", birthday=birthday)
    member_id: str = data["registerMember"]["member"]["id"]
    return member_id


async def _order(gql: GraphQL, brand: str, member: str, cents: int, paid: dt.datetime) -> dict[str, Any]:
    result = await gql(
        RECORD_ORDER,
        brand=brand,
        channel="pos",
        orderId="o1",
        amount=_yuan(cents),
        paidAt=paid.isoformat(),
        memberId=member,
    )
    recorded: dict[str, Any] = result["recordOrder"]
    assert recorded["__typename"] == "OrderRecorded", recorded
    return recorded


async def _refund(gql: GraphQL, brand: str, cents: int | None, key: str) -> dict[str, Any]:
    amount = None if cents is None else _yuan(cents)
    refunded: dict[str, Any] = (
        await gql(REFUND_ORDER, brand=brand, channel="pos", orderId="o1", amount=amount, key=key)
    )["refundOrder"]
    assert refunded["__typename"] == "OrderRefunded", refunded
    return refunded


async def test_a_refund_of_a_fraction_of_a_share_takes_back_the_floor(gql: GraphQL, brand: str) -> None:
    member = await _buyer(gql, brand)
    await _order(
        gql, brand, member, 10_000, dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    )  # 100 points, 1,000 growth

    # 0.99 of 100 yuan: 0.99 points (floor 0, rounded 1) and 9.9 growth (floor 9, rounded 10).
    first = await _refund(gql, brand, 99, "r1")
    assert (first["order"]["pointsReversed"], first["order"]["growthReversed"]) == (0, 9)
    assert (first["member"]["pointsBalance"], first["member"]["growthValue"]) == (100, 991)
    # 1.49 of 100 yuan in all: 1.49 points and 14.9 growth taken back so far, floored.
    second = await _refund(gql, brand, 50, "r2")
    assert (second["order"]["pointsReversed"], second["order"]["growthReversed"]) == (1, 14)
    assert second["order"]["refunded"] == "1.49"
    # The rest: everything, whatever was floored before.
    rest = await _refund(gql, brand, None, "r3")
    assert (rest["order"]["pointsReversed"], rest["order"]["growthReversed"], rest["order"]["pointsUnrecovered"]) == (
        100,
        1000,
        0,
    )
    assert (rest["member"]["pointsBalance"], rest["member"]["growthValue"], rest["member"]["totalSpend"]) == (
        0,
        0,
        "0.00",
    )


async def test_bonus_points_come_back_in_proportion_too(gql: GraphQL, brand: str) -> None:
    paid = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    member = await _buyer(gql, brand, birthday=f"1990-{paid.astimezone(SHANGHAI).month:02d}-15")
    # 99.99 yuan in the birthday month: 99 base + 99 birthday bonus = 198 points, 999 growth.
    recorded = await _order(gql, brand, member, 9_999, paid)
    assert (recorded["order"]["pointsEarned"], recorded["order"]["growthEarned"]) == (198, 999)
    # 12.34 of 99.99 yuan: 198 x 1234 / 9999 = 24.43 points, 999 x 1234 / 9999 = 123.29 growth.
    part = await _refund(gql, brand, 1_234, "r1")
    assert (part["order"]["pointsReversed"], part["order"]["growthReversed"]) == (24, 123)
    # 50.01 in all: 198 x 5001 / 9999 = 99.02 points, 999 x 5001 / 9999 = 499.65 growth (rounded: 500).
    more = await _refund(gql, brand, 3_767, "r2")
    assert (more["order"]["pointsReversed"], more["order"]["growthReversed"]) == (99, 499)
    assert more["member"]["pointsBalance"] == 198 - 99


refund_plans = st.lists(st.integers(1, 10_000), min_size=1, max_size=4)  # parts per ten thousand of what is left


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cents=st.integers(1, 200_000),
    multiplier=st.sampled_from(MULTIPLIERS),
    per_yuan=st.sampled_from(RATES),
    growth_per_yuan=st.sampled_from([Decimal("10"), Decimal("4"), Decimal("0.5")]),
    birthday_multiplier=st.sampled_from(BIRTHDAY_MULTIPLIERS),
    birthday=st.booleans(),
    plan=refund_plans,
    finish=st.booleans(),
)
async def test_refunds_take_back_the_floor_of_the_refunded_share(
    gql: GraphQL,
    pool: AsyncConnectionPool[Any],
    cents: int,
    multiplier: Decimal,
    per_yuan: Decimal,
    growth_per_yuan: Decimal,
    birthday_multiplier: Decimal,
    birthday: bool,
    plan: list[int],
    finish: bool,
) -> None:
    brand = await new_brand(pool)
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE brand_tiers SET points_multiplier = %s FROM brands b"
            " WHERE b.id = brand_tiers.brand_id AND b.code = %s AND brand_tiers.code = 'silver'",
            (multiplier, brand),
        )
        await conn.execute(
            "UPDATE brand_rules SET points_per_yuan = %s, growth_per_yuan = %s, birthday_multiplier = %s FROM brands b"
            " WHERE b.id = brand_rules.brand_id AND b.code = %s",
            (per_yuan, growth_per_yuan, birthday_multiplier, brand),
        )
    paid = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    month = paid.astimezone(SHANGHAI).month if birthday else paid.astimezone(SHANGHAI).month % 12 + 1
    member = await _buyer(gql, brand, birthday=f"1990-{month:02d}-15")
    base = math.floor(cents * per_yuan / 100)
    bonus = math.floor(base * (birthday_multiplier - 1)) if birthday else 0
    points = base + bonus + math.floor(base * (multiplier - 1))
    growth = math.floor(cents * growth_per_yuan / 100)
    recorded = await _order(gql, brand, member, cents, paid)
    assert (recorded["order"]["pointsEarned"], recorded["order"]["growthEarned"]) == (points, growth)

    refunded = 0
    steps: list[int | None] = [max(1, (cents - refunded) * share // 10_000) for share in plan]
    for n, step in enumerate([*steps, None] if finish else steps):
        if refunded == cents:
            break
        part = None if step is None else min(step, cents - refunded)
        done = await _refund(gql, brand, part, f"r{n}")
        refunded = cents if part is None else refunded + part
        order = done["order"]
        assert order["refunded"] == _yuan(refunded)
        assert order["pointsReversed"] == points * refunded // cents, (points, refunded, cents)
        assert order["growthReversed"] == growth * refunded // cents, (growth, refunded, cents)
        assert order["pointsUnrecovered"] == 0
        assert done["member"]["pointsBalance"] == points - order["pointsReversed"]
        assert done["member"]["growthValue"] == growth - order["growthReversed"]
        assert done["member"]["totalSpend"] == _yuan(cents - refunded)

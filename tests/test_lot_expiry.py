"""Each lot expires at the end of the year `expiry_years` after the year it was earned, in the
brand's time zone (docs/points.md#lots-and-expiry), and expiry takes it exactly at that instant.

The instants that matter are year ends: in Asia/Shanghai a year ends at 16:00 UTC on 31 December,
so an order paid a microsecond before or after that, or at midnight UTC, earns lots of different
years. Each lot's own expiry is checked, not totals.
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg_pool import AsyncConnectionPool

from store.ledger.points import expire_member
from tests.conftest import GraphQL, new_brand
from tests.fragments import EARN, RECORD_ORDER, REGISTER

SHANGHAI = ZoneInfo("Asia/Shanghai")
MICRO = dt.timedelta(microseconds=1)
# Lots of the brand's members with the instant their order was paid (null for an earn), oldest first.
LOTS = """
SELECT l.member_id, l.amount, l.expires_at, o.paid_at FROM points_lots l
JOIN points_entries e ON e.id = l.entry_id LEFT JOIN orders o ON o.posting_id = e.posting_id
JOIN brands b ON b.id = l.brand_id WHERE b.code = %s ORDER BY l.id
"""


def end_of_year_after(earned: dt.datetime, years: int, zone: ZoneInfo) -> dt.datetime:
    """Midnight starting 1 January of the year after the year `years` after ``earned``'s, in ``zone``."""
    return dt.datetime(earned.astimezone(zone).year + years + 1, 1, 1, tzinfo=zone)


async def _member(gql: GraphQL, brand: str, external_id: str = "card-1") -> str:
    data = await gql(REGISTER, brand=brand, channel="pos", externalId=external_id)
    member_id: str = data["registerMember"]["member"]["id"]
    return member_id


async def _order(gql: GraphQL, brand: str, member: str, order_id: str, paid: dt.datetime, amount: str = "10") -> None:
    result = await gql(
        RECORD_ORDER,
        brand=brand,
        channel="pos",
        orderId=order_id,
        amount=amount,
        paidAt=paid.isoformat(),
        memberId=member,
    )
    assert result["recordOrder"]["__typename"] == "OrderRecorded", result


async def _lots(pool: AsyncConnectionPool[Any], brand: str) -> list[tuple[Any, ...]]:
    async with pool.connection() as conn:
        rows: list[tuple[Any, ...]] = await (await conn.execute(LOTS, (brand,))).fetchall()
    return rows


YEAR_ENDS = [
    # (paid at, the lot's expiry with the default two years in Asia/Shanghai)
    ("2025-12-31T23:59:59.999999+08:00", "2028-01-01T00:00:00+08:00"),
    ("2026-01-01T00:00:00+08:00", "2029-01-01T00:00:00+08:00"),
    ("2025-12-31T15:59:59.999999+00:00", "2028-01-01T00:00:00+08:00"),  # 23:59:59.999999 in Shanghai
    ("2025-12-31T16:00:00+00:00", "2029-01-01T00:00:00+08:00"),  # midnight in Shanghai, not yet in UTC
    ("2024-12-31T23:59:59.999999+00:00", "2028-01-01T00:00:00+08:00"),  # the UTC year end: 2025 in Shanghai
    ("2024-02-29T12:00:00+08:00", "2027-01-01T00:00:00+08:00"),
]


async def test_a_lot_earned_at_a_year_end_expires_at_the_end_of_its_own_year_plus_two(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    member = await _member(gql, brand)
    for n, (paid, _) in enumerate(YEAR_ENDS):
        await _order(gql, brand, member, f"o{n}", dt.datetime.fromisoformat(paid))
    found = [(paid, expires) for _, _, expires, paid in await _lots(pool, brand)]
    assert found == [(dt.datetime.fromisoformat(p), dt.datetime.fromisoformat(e)) for p, e in YEAR_ENDS]


async def test_points_earned_now_expire_at_the_end_of_the_year_after_next(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    member = await _member(gql, brand)
    before = dt.datetime.now(dt.UTC)
    result = await gql(EARN, brand=brand, memberId=member, amount=5, key="e1")
    after = dt.datetime.now(dt.UTC)
    assert result["earnPoints"]["__typename"] == "PointsPosted"
    [(_, amount, expires, _)] = await _lots(pool, brand)
    assert amount == 5
    assert expires in {end_of_year_after(before, 2, SHANGHAI), end_of_year_after(after, 2, SHANGHAI)}
    query = "query($id: ID!) { member(id: $id) { expiringPoints(withinDays: 3660) { lots { expiresAt points } } } }"
    lots = (await gql(query, id=member))["member"]["expiringPoints"]["lots"]
    assert [(dt.datetime.fromisoformat(lot["expiresAt"]), lot["points"]) for lot in lots] == [(expires, 5)]


async def _brand_id(pool: AsyncConnectionPool[Any], brand: str) -> int:
    async with pool.connection() as conn:
        row = await (await conn.execute("SELECT id FROM brands WHERE code = %s", (brand,))).fetchone()
    assert row is not None
    return int(row[0])


async def test_expiry_takes_a_lot_at_its_expiry_instant_and_not_a_microsecond_before(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    member = await _member(gql, brand)
    # Paid in Shanghai's 2023: the lot expired at the start of 2026 there, in the past.
    await _order(gql, brand, member, "late", dt.datetime(2023, 12, 31, 23, 59, 59, 999999, tzinfo=SHANGHAI), "30")
    await _order(gql, brand, member, "next", dt.datetime(2024, 1, 1, tzinfo=SHANGHAI), "7")
    expiry = dt.datetime(2026, 1, 1, tzinfo=SHANGHAI)
    brand_id = await _brand_id(pool, brand)
    async with pool.connection() as conn, conn.transaction():
        assert await expire_member(conn, brand_id, int(member), expiry - MICRO) == 0
    async with pool.connection() as conn, conn.transaction():
        assert await expire_member(conn, brand_id, int(member), expiry) == 30
    async with pool.connection() as conn, conn.transaction():
        assert await expire_member(conn, brand_id, int(member), dt.datetime(2027, 1, 1, tzinfo=SHANGHAI) - MICRO) == 0
        assert await expire_member(conn, brand_id, int(member), dt.datetime(2027, 1, 1, tzinfo=SHANGHAI)) == 7
    assert [(amount, expires) for _, amount, expires, _ in await _lots(pool, brand)] == [
        (30, expiry),
        (7, dt.datetime(2027, 1, 1, tzinfo=SHANGHAI)),
    ]


# Around a year end, in the brand's zone and in UTC: a microsecond, a second, hours either side.
OFFSETS = [dt.timedelta(microseconds=m) for m in (-1, 0, 1)] + [
    dt.timedelta(seconds=s) for s in (-1, 1, 8 * 3600 - 1, 8 * 3600, -16 * 3600, 86399)
]
ZONES = ["Asia/Shanghai", "UTC", "America/Los_Angeles"]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    instants=st.lists(
        st.tuples(st.integers(2019, 2025), st.sampled_from(OFFSETS)),
        min_size=1,
        max_size=4,
    ),
    zone=st.sampled_from(ZONES),
    years=st.integers(0, 3),
)
async def test_every_lot_expires_at_the_end_of_its_year_in_the_brand_zone(
    gql: GraphQL, pool: AsyncConnectionPool[Any], instants: list[tuple[int, dt.timedelta]], zone: str, years: int
) -> None:
    brand = await new_brand(pool)
    tz = ZoneInfo(zone)
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE brand_rules SET timezone = %s, expiry_years = %s FROM brands b"
            " WHERE b.id = brand_rules.brand_id AND b.code = %s",
            (zone, years, brand),
        )
    member = await _member(gql, brand)
    # Orders around year ends, in whatever order they were drawn.
    paid = [dt.datetime(year, 1, 1, tzinfo=tz) + offset for year, offset in instants]
    for n, at in enumerate(paid):
        await _order(gql, brand, member, f"o{n}", at, f"{n + 1}.50")
    lots = await _lots(pool, brand)
    assert [(amount, expires) for _, amount, expires, _ in lots] == [
        (n + 1, end_of_year_after(at, years, tz)) for n, at in enumerate(paid)
    ]
    brand_id = await _brand_id(pool, brand)
    soonest = min(end_of_year_after(at, years, tz) for at in paid)
    async with pool.connection() as conn, conn.transaction():
        assert await expire_member(conn, brand_id, int(member), soonest - MICRO) == 0
        taken = await expire_member(conn, brand_id, int(member), soonest)
    assert taken == sum(n + 1 for n, at in enumerate(paid) if end_of_year_after(at, years, tz) == soonest)
    async with pool.connection() as conn, conn.transaction():  # no expired points left for other tests' jobs
        await expire_member(conn, brand_id, int(member), dt.datetime.now(dt.UTC))


@pytest.mark.parametrize("zone", ZONES)
def test_the_helper_agrees_with_a_calendar(zone: str) -> None:
    tz = ZoneInfo(zone)
    assert end_of_year_after(dt.datetime(2025, 12, 31, 23, 59, tzinfo=tz), 2, tz) == dt.datetime(2028, 1, 1, tzinfo=tz)
    assert end_of_year_after(dt.datetime(2026, 1, 1, tzinfo=tz), 0, tz) == dt.datetime(2027, 1, 1, tzinfo=tz)

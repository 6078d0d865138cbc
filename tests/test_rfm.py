"""RFM thresholds (store.audiences.rfm_store) against quintiles computed in Python from the rows, and
their recomputation; the terms themselves are checked three ways in tests/test_audience_differential.py."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg_pool import AsyncConnectionPool

from store.audiences import engine, rfm, rfm_store
from store.audiences.catalogs import load_catalog
from store.audiences.deltas import apply_brand
from store.brands import brand_by_code
from tagquery import bind, parse
from tests.conftest import GraphQL, new_brand
from tests.test_lifecycle import Shop, brand_id_of, catch_up

ZONE = ZoneInfo("Asia/Shanghai")
TODAY = date(2025, 6, 30)

# (days since the last purchase or None for a member who never bought, orders, spend)
_members = st.lists(
    st.tuples(
        st.none() | st.integers(0, 800),
        st.integers(1, 12),
        st.decimals(min_value=0, max_value=5000, places=2, allow_nan=False, allow_infinity=False),
    ),
    max_size=40,
)


def _quintiles(values: list[Any], empty: Any) -> tuple[Any, ...]:
    """percentile_disc: the first value whose cumulative share reaches the fraction."""
    ordered = sorted(values)
    if not ordered:
        return (empty,) * 4
    return tuple(ordered[max(0, math.ceil(q * len(ordered)) - 1)] for q in rfm_store.QUANTILES)


async def _brand(pool: AsyncConnectionPool[Any]) -> int:
    code = await new_brand(pool)
    async with pool.connection() as conn:
        row = await brand_by_code(conn, code)
    return int(row["id"])


async def _insert(pool: AsyncConnectionPool[Any], brand_id: int, rows: list[tuple[int | None, int, Decimal]]) -> None:
    async with pool.connection() as conn, conn.transaction():
        for days, orders, spend in rows:
            last = None
            if days is not None:
                local = datetime.combine(TODAY - timedelta(days=days), time(0, 30), ZONE)  # 16:30 UTC the day before
                last = local.astimezone(UTC)
            await conn.execute(
                "INSERT INTO members (brand_id, tier, last_purchase_at, order_count, total_spend)"
                " VALUES (%s, 'silver', %s, %s, %s)",
                (brand_id, last, 0 if days is None else orders, 0 if days is None else spend),
            )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=_members)
async def test_thresholds_are_the_quintiles_over_live_buyers(
    pool: AsyncConnectionPool[Any], rows: list[tuple[int | None, int, Decimal]]
) -> None:
    brand_id = await _brand(pool)
    await _insert(pool, brand_id, rows)
    # Merged and erased buyers count for nothing.
    await _insert(pool, brand_id, [(0, 99, Decimal(99999)), (1, 98, Decimal(99998))])
    async with pool.connection() as conn:
        await conn.execute("UPDATE members SET erased_at = now() WHERE brand_id = %s AND order_count = 98", (brand_id,))
        await conn.execute(
            "UPDATE members SET merged_at = now(),"
            " merged_into = (SELECT id FROM members WHERE brand_id = %s AND order_count = 98)"
            " WHERE brand_id = %s AND order_count = 99",
            (brand_id, brand_id),
        )
        stored = await rfm_store.recompute(conn, brand_id, TODAY)
        assert await rfm_store.stored(conn, brand_id) == stored
    buyers = [row for row in rows if row[0] is not None]
    assert stored.buyers == len(buyers)
    assert stored.day == TODAY
    assert stored.thresholds.recency_days == _quintiles([row[0] for row in buyers], 0)
    assert stored.thresholds.frequency == _quintiles([row[1] for row in buyers], 0)
    assert stored.thresholds.monetary == _quintiles([row[2] for row in buyers], Decimal(0))


def test_scores_follow_the_bounds() -> None:
    thresholds = rfm.RfmThresholds((10, 20, 30, 40), (1, 2, 3, 4), tuple(Decimal(n) for n in (10, 20, 30, 40)))  # type: ignore[arg-type]
    facts = {"last_purchase": TODAY - timedelta(days=10), "order_count": 5, "total_spend": Decimal("10.00")}
    assert rfm.scores(facts, TODAY, thresholds) == {"rfm_r": 5, "rfm_f": 5, "rfm_m": 1, "rfm": "potential_loyalist"}
    facts = {"last_purchase": TODAY - timedelta(days=41), "order_count": 1, "total_spend": Decimal("40.01")}
    assert rfm.scores(facts, TODAY, thresholds) == {"rfm_r": 1, "rfm_f": 1, "rfm_m": 5, "rfm": "at_risk"}
    never = rfm.scores({"last_purchase": None, "order_count": 0, "total_spend": Decimal(0)}, TODAY, thresholds)
    assert set(never.values()) == {None}


def test_the_grid_puts_every_score_in_exactly_one_named_cell() -> None:
    assert sorted(rfm.GRID) == [(r, fm) for r in rfm.SCORES for fm in rfm.SCORES]
    cells = {rfm.cell_of(r, f, m) for r in rfm.SCORES for f in rfm.SCORES for m in rfm.SCORES}
    assert cells == set(rfm.CELLS)
    assert rfm.cell_of(5, 5, 5) == "champions"
    assert rfm.cell_of(1, 1, 1) == "lost"
    assert rfm.cell_of(1, 5, 5) == "cant_lose_them"


async def test_recomputed_after_new_orders_and_computed_on_first_use(pool: AsyncConnectionPool[Any]) -> None:
    brand_id = await _brand(pool)
    async with pool.connection() as conn:
        first = await load_catalog(conn, brand_id)  # no row yet: computed on first use, no buyers
        assert (await rfm_store.stored(conn, brand_id)).buyers == 0
    assert first.rfm == rfm.NO_THRESHOLDS
    assert "rfm" in first.catalog.dimensions
    assert "rfm_r" in first.catalog.fields
    await _insert(pool, brand_id, [(d, 1 + d // 10, Decimal(d * 3)) for d in range(0, 50, 5)])
    async with pool.connection() as conn:
        before = await rfm_store.recompute(conn, brand_id, TODAY)
        await _insert(pool, brand_id, [(0, 40, Decimal(9000))] * 10)
        after = await rfm_store.recompute(conn, brand_id, TODAY)
        due_day = await rfm_store.recompute(conn, brand_id, TODAY - timedelta(days=2))
    assert before.buyers == 10
    assert after.buyers == 20
    assert after.thresholds.frequency[-1] == 40 > before.thresholds.frequency[-1]
    assert after.thresholds.monetary[-1] == Decimal(9000)
    assert after.thresholds.recency_days[0] == 0
    assert due_day.day == TODAY - timedelta(days=2)
    assert after.computed_at is not None
    assert before.computed_at is not None
    assert after.computed_at >= before.computed_at
    # A brand day behind the brand's today is due for the server's daily pass, and brought level.
    assert brand_id in await rfm_store.recompute_due(pool)
    assert brand_id not in await rfm_store.recompute_due(pool)


RFM = """
query($b: String!) {
  brands { code rfm { asOfDay buyers recencyDays frequency monetary cells { name definition } } }
  audience(brand: $b, expression: "rfm_r >= 4") { count }
}"""
BREAKDOWN = """query($b: String!) {
  audience(brand: $b, expression: "order_count >= 0") { breakdown(by: RFM) { value count } } }"""
MEMBER = "query($m: ID!) { member(id: $m) { rfm { r f m cell } } }"
CELL = """query($b: String!, $e: String!) {
  audience(brand: $b, expression: $e) { count } }"""


async def test_through_the_api_thresholds_visible_and_cells_partition_the_buyers(
    pool: AsyncConnectionPool[Any], gql: GraphQL
) -> None:
    shop = Shop(gql, await new_brand(pool))
    ids = [await shop.register() for _ in range(12)]
    for n, member_id in enumerate(ids[:10]):  # two never buy
        for k in range(1 + n % 4):
            await shop.order(member_id, 3 * n + k + 0.5)
    brand_id = await brand_id_of(pool, shop.code)
    await catch_up(pool, brand_id)
    async with pool.connection() as conn:
        stored = await rfm_store.recompute(conn, brand_id)
    data = await gql(RFM, b=shop.code)
    mine = next(b["rfm"] for b in data["brands"] if b["code"] == shop.code)
    assert mine["buyers"] == 10
    assert mine["recencyDays"] == list(stored.thresholds.recency_days)
    assert mine["frequency"] == [1, 2, 2, 3]  # orders 1,1,1,2,2,2,3,3,4,4
    assert [cell["name"] for cell in mine["cells"]] == list(rfm.CELLS)
    assert mine["cells"][0]["definition"] == "R 5, FM 4-5; R 4, FM 5"
    assert data["audience"]["count"] == 4  # the two most recent fifths of ten buyers, no ties in recency
    counts = [(await gql(CELL, b=shop.code, e=f"rfm:{cell}"))["audience"]["count"] for cell in rfm.CELLS]
    assert sum(counts) == 10
    breakdown = await gql(BREAKDOWN, b=shop.code)
    per_cell = {row["value"]: row["count"] for row in breakdown["audience"]["breakdown"]}
    assert per_cell == {cell: n for cell, n in zip(rfm.CELLS, counts, strict=True) if n}
    assert (await gql(CELL, b=shop.code, e="NOT rfm_r >= 1"))["audience"]["count"] == 2  # the NULL rule
    scores = [(await gql(MEMBER, m=member_id))["member"]["rfm"] for member_id in ids]
    assert scores[10:] == [None, None]
    assert sum(score["r"] >= 4 for score in scores[:10]) == 4
    assert [score["f"] for score in scores[:10]] == [1 + sum(1 + n % 4 > b for b in (1, 2, 2, 3)) for n in range(10)]
    by_cell = {cell: sum(score is not None and score["cell"] == cell for score in scores) for cell in rfm.CELLS}
    assert list(by_cell.values()) == counts


async def test_an_unknown_cell_names_the_valid_ones(pool: AsyncConnectionPool[Any], gql: GraphQL) -> None:
    code = await new_brand(pool)
    raw = await gql.raw(CELL, b=code, e="rfm:vip")
    assert raw["errors"][0]["extensions"]["code"] == "INVALID_EXPRESSION"
    assert "champions" in raw["errors"][0]["message"]
    assert "cant_lose_them" in raw["errors"][0]["message"]


async def test_counts_follow_recomputed_thresholds_not_a_cached_statement(pool: AsyncConnectionPool[Any]) -> None:
    """The compiled-statement cache keys on the thresholds: the same expression, recomputed bounds, a new count."""
    brand_id = await _brand(pool)
    await _insert(pool, brand_id, [(d, 1 + d % 7, Decimal(d)) for d in range(20)])
    async with pool.connection() as conn:
        assert await apply_brand(conn, brand_id, wait=True) is not None
        await rfm_store.recompute(conn, brand_id, TODAY)
        before = await load_catalog(conn, brand_id)
        query = bind(parse("rfm_f >= 5"), before.catalog)
        assert await engine.count(conn, before, query, TODAY) == 2  # orders above the 80th percentile (6): 7, 7
        await _insert(pool, brand_id, [(1, 1, Decimal(1))] * 20)  # twenty one-order buyers pull the bounds down
        assert await apply_brand(conn, brand_id, wait=True) is not None
        await rfm_store.recompute(conn, brand_id, TODAY)
        after = await load_catalog(conn, brand_id)
        assert after.rfm.frequency == (1, 1, 2, 4)
        assert await engine.count(conn, after, query, TODAY) == 8  # orders 5, 6, 7 above 4


FRESHNESS = """query($b: String!) {
  audience(brand: $b, expression: "rfm_r >= 1") { count freshness { rfm { computedAt lagSeconds buyers } } } }"""


async def test_the_audience_freshness_says_when_the_bounds_were_computed_and_how_old_they_are(
    pool: AsyncConnectionPool[Any], gql: GraphQL
) -> None:
    shop = Shop(gql, await new_brand(pool))
    for n in range(3):
        await shop.order(await shop.register(), 10 + n)
    brand_id = await brand_id_of(pool, shop.code)
    await catch_up(pool, brand_id)
    async with pool.connection() as conn:
        stored = await rfm_store.recompute(conn, brand_id)
        await conn.execute(
            "UPDATE rfm_thresholds SET computed_at = computed_at - interval '2 hours' WHERE brand_id = %s", (brand_id,)
        )
    found = (await gql(FRESHNESS, b=shop.code))["audience"]
    assert found["count"] == 3
    assert stored.computed_at is not None
    fresh = found["freshness"]["rfm"]
    assert datetime.fromisoformat(fresh["computedAt"]) == stored.computed_at - timedelta(hours=2)
    assert 7200 <= fresh["lagSeconds"] < 7200 + 60
    assert fresh["buyers"] == 3

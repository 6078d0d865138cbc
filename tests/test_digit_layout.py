"""A build lays each digit field out for its values (tagquery.bitmap_keys: digit size, a date's base);
deltas keep that layout, widening a field by more digits, and a day before the base rebuilds."""

from __future__ import annotations

from datetime import date
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from store.audiences import engine
from store.audiences.bitmaps import rebuild, stored_widths
from store.audiences.catalogs import load_catalog
from store.audiences.deltas import apply_brand
from store.brands import brand_by_code
from tagquery import bind, parse
from tagquery.bitmap_keys import day_offset
from tests.conftest import new_brand

TODAY = date(2026, 12, 7)


async def _count(conn: AsyncConnection[Any], brand_id: int, text: str) -> int:
    brand = await load_catalog(conn, brand_id)
    return await engine.count(conn, brand, bind(parse(text), brand.catalog), TODAY)


async def _built_brand(pool: AsyncConnectionPool[Any]) -> tuple[int, list[int]]:
    """Three members born 1990-1992 spending up to 300,000 yuan (24 bits of fen), then a build."""
    async with pool.connection() as conn:
        brand_id: int = (await brand_by_code(conn, await new_brand(pool)))["id"]
        rows = await conn.execute(
            "INSERT INTO members (brand_id, tier, birthday, total_spend) VALUES"
            " (%s, 'silver', '1990-03-01', 1.5), (%s, 'silver', '1991-06-30', 20000),"
            " (%s, 'silver', '1992-12-31', 150000)"
            " RETURNING id",
            (brand_id, brand_id, brand_id),
        )
        ids = [row[0] for row in await rows.fetchall()]
        async with conn.transaction():
            await rebuild(conn, brand_id)
    return brand_id, ids


async def test_a_build_records_each_fields_layout(pool: AsyncConnectionPool[Any]) -> None:
    brand_id, _ = await _built_brand(pool)
    async with pool.connection() as conn:
        state = await stored_widths(conn, brand_id)
        assert (state["total_spend"], state["total_spend/bits"], state["total_spend/base"]) == (24, 8, 0)
        # 1990-03-01 .. 1992-12-31 is 1,036 days: two 6-bit digits from a base at or below the first day
        assert state["birthday/bits"] == 6
        assert 0 <= day_offset(date(1990, 3, 1)) - state["birthday/base"] < 64
        assert await _count(conn, brand_id, "total_spend >= 20000") == 2
        assert await _count(conn, brand_id, "age >= 34") == 2  # the third turns 34 on 2026-12-31
        assert await _count(conn, brand_id, "age >= 33") == 3


async def test_a_day_before_the_base_rebuilds_and_is_counted(pool: AsyncConnectionPool[Any]) -> None:
    """Found building this: a delta stored such a day less the base, a negative number whose digits
    meant nothing; now the delta gives way to a rebuild that lays the field out again."""
    brand_id, ids = await _built_brand(pool)
    async with pool.connection() as conn:
        await conn.execute("UPDATE members SET birthday = '1950-01-01' WHERE id = %s", (ids[0],))
        applied = await apply_brand(conn, brand_id, wait=True)
        assert applied is not None
        assert applied.rebuilt
        assert await _count(conn, brand_id, "age >= 70") == 1
        assert await _count(conn, brand_id, "age BETWEEN 30 AND 40") == 2
        assert (await stored_widths(conn, brand_id))["birthday/base"] <= day_offset(date(1950, 1, 1))


async def test_a_delta_widens_a_field_by_digits_of_the_same_size(pool: AsyncConnectionPool[Any]) -> None:
    brand_id, ids = await _built_brand(pool)
    async with pool.connection() as conn:
        await conn.execute("UPDATE members SET total_spend = 1000000, birthday = '2001-02-03' WHERE id = %s", (ids[0],))
        applied = await apply_brand(conn, brand_id, wait=True)
        assert applied is not None
        assert not applied.rebuilt
        state = await stored_widths(conn, brand_id)
        assert (state["total_spend"], state["total_spend/bits"]) == (27, 8)  # 100,000,000 fen: a fourth digit
        assert await _count(conn, brand_id, "total_spend >= 999999.99") == 1
        assert await _count(conn, brand_id, "total_spend >= 150000") == 2
        assert await _count(conn, brand_id, "total_spend < 20000") == 0
        assert await _count(conn, brand_id, "age <= 25") == 1
        assert await _count(conn, brand_id, "age >= 33") == 2

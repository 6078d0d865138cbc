"""Full builds of a brand's audience index for the differential tests, and the check that deltas
leave the rows a build writes."""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool

from store.audiences.bitmaps import rebuild, stored_widths

_ROWS = "SELECT key, chunk, bits FROM audience_bitmaps WHERE brand_id = %s AND bit_count(bits) > 0 ORDER BY 1, 2"


async def build(pool: AsyncConnectionPool[Any], brand_id: int) -> None:
    """A full build, as `omnimember refresh` does (its reads on two other connections at once): a new
    brand's index is born empty and kept by deltas, so only a build lays each field's digits out for
    its values (digit size, a date's base)."""
    async with pool.connection() as conn, conn.transaction():
        await rebuild(conn, brand_id, parallel_reads=True)


async def rows_now_and_after_a_build(pool: AsyncConnectionPool[Any], brand_id: int) -> tuple[list[Any], list[Any]]:
    """The index's non-empty rows as they are, then after a build laid out as the deltas kept it (a
    build lays each field out anew for its values, which the three-way tests check after a build)."""
    async with pool.connection() as conn:
        now = await (await conn.execute(_ROWS, (brand_id,))).fetchall()
        async with conn.transaction():
            await rebuild(conn, brand_id, layout=await stored_widths(conn, brand_id))
        built = await (await conn.execute(_ROWS, (brand_id,))).fetchall()
    return now, built

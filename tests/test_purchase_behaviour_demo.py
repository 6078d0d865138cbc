"""The demo's orders carry lines (demo/products.py), and docs/audiences.md's purchase behaviour
examples count members on it, the index and the row compiler agreeing."""

from __future__ import annotations

import re
from datetime import date
from typing import Any

import sqlalchemy as sa
from psycopg_pool import AsyncConnectionPool

from demo.products import CATALOGS
from store.audiences import engine
from store.audiences.catalogs import BrandCatalog, load_catalog
from store.audiences.deltas import apply_brand
from store.audiences.facts import MemberRowFacts, expand_derived, live_members
from store.brands import brand_by_code
from store.members.phones import PhoneVault
from store.sql import Query
from store.tables import members
from tagquery import bind, parse
from tagquery.compile_rows import compile_rows
from tests.conftest import ROOT
from tests.test_demo import build, rows

_SECTION = (ROOT / "docs" / "audiences.md").read_text().split("## Purchase behaviour", 1)[1].split("\n## ", 1)[0]
EXAMPLES = re.findall(r"```text\n(.*?)```", _SECTION, re.S)[0].strip().splitlines()


async def test_demo_orders_have_lines_from_the_brands_catalog_that_add_up_to_the_order(
    database_url: str, vault: PhoneVault, pool: AsyncConnectionPool[Any]
) -> None:
    await build(database_url, vault, members=3000)
    totals = await rows(
        pool,
        "SELECT b.code, count(DISTINCT o.id), count(l.*), count(DISTINCT l.category), count(DISTINCT l.sku),"
        " count(*) FILTER (WHERE l.order_id IS NULL), bool_and(l.quantity BETWEEN 1 AND 3)"
        " FROM orders o JOIN brands b ON b.id = o.brand_id LEFT JOIN order_lines l ON l.order_id = o.id"
        " WHERE o.brand_id = ANY(%(demo)s) GROUP BY b.code ORDER BY b.code",
    )
    assert [row[0] for row in totals] == ["orchard", "teahouse"]
    for _code, orders, lines, categories, skus, without, quantities in totals:
        assert without == 0  # every order has a line
        assert 1.3 < lines / orders < 1.9
        assert (categories, skus) == (8, 32)
        assert quantities
    sold = await rows(
        pool,
        "SELECT b.code, array_agg(DISTINCT l.category) FROM order_lines l JOIN orders o ON o.id = l.order_id"
        " JOIN brands b ON b.id = o.brand_id WHERE o.brand_id = ANY(%(demo)s) GROUP BY b.code",
    )
    assert {code: set(categories) for code, categories in sold} == {
        code: set(CATALOGS[code].categories) for code in ("teahouse", "orchard")
    }
    mismatched = await rows(
        pool,
        "SELECT o.id FROM orders o JOIN order_lines l ON l.order_id = o.id WHERE o.brand_id = ANY(%(demo)s)"
        " GROUP BY o.id, o.amount HAVING sum(l.amount) <> o.amount",
    )
    assert mismatched == []


async def test_the_docs_examples_count_members_of_the_demo(
    database_url: str, vault: PhoneVault, pool: AsyncConnectionPool[Any]
) -> None:
    await build(database_url, vault, members=3000)
    async with pool.connection() as conn:
        brand_id = (await brand_by_code(conn, "teahouse"))["id"]
        await apply_brand(conn, brand_id, wait=True)  # the load asked for a full build
        brand = await load_catalog(conn, brand_id)
        today = brand.today()
        assert len(EXAMPLES) >= 6
        for text in EXAMPLES:
            bound = bind(parse(text), brand.catalog, source=text)
            counted = await engine.count(conn, brand, bound, today)
            assert counted > 0, text
            assert counted == len(await _row_compiled(conn, brand, bound, today)), text


async def _row_compiled(conn: Any, brand: BrandCatalog, bound: Any, today: date) -> list[int]:
    m = members.alias("m")
    where = compile_rows(expand_derived(bound, brand.lifecycle, brand.rfm), MemberRowFacts(m), today)
    query = Query(sa.select(m.c.id).where(live_members(m), where))
    return [row["id"] for row in await query.all(conn, brand_id=brand.brand_id, today=today, tz=brand.timezone)]

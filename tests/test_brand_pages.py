"""A page of one brand's members reads that brand's rows only, whatever the id layout (issue 13).

Found at 9bd6195: with `brand_id = :b AND id > :after ORDER BY id`, PostgreSQL walked the primary
key from id 1 and filtered, so the second demo brand's first page read the first brand's 600,000
rows (231 ms a page). The plan flips at a few tens of thousands of uniform rows, so each layout
here is 2 x 30,000 members in a database of its own, loaded with triggers off, and the statements
the service runs are checked with EXPLAIN ANALYZE: the members scan may touch the page's rows and
the look-ahead row, no more.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from resolvers.sqljson import Needs, Plans
from schema.root import build_schema
from store import migrate
from store.brands import BrandDirectory, ScopedBrands
from store.members.profiles import _members_page
from store.sql import Query
from tests.conftest import MASKED, throwaway_database

SCHEMA = build_schema()
PAGE = """query($brand: String!, $after: String) {
  members(brand: $brand, first: 100, after: $after) { nodes { id tier { code } pointsBalance } pageInfo { endCursor } }
}"""
PER_BRAND = 30_000
LOAD = """
INSERT INTO groups (code, name) VALUES ('pages', 'Pages');
INSERT INTO brands (code, name, group_id) SELECT code, code, (SELECT id FROM groups WHERE code = 'pages')
  FROM unnest(ARRAY['first', 'second']) AS code;
INSERT INTO brand_tiers (brand_id, code, name, rank, threshold) SELECT id, 'silver', 'Silver', 0, 0 FROM brands;
SET session_replication_role = replica;  -- no audience triggers: a bulk load, like the demo's
INSERT INTO members (brand_id, tier)
  SELECT (SELECT id FROM brands WHERE code = CASE WHEN {second} THEN 'second' ELSE 'first' END), 'silver'
  FROM generate_series(0, {total} - 1) AS i;
SET session_replication_role = DEFAULT;
ANALYZE members;
"""
LAYOUTS = {
    "contiguous": "i >= {per_brand}",  # the demo's: the first brand's ids, then the second's
    "interleaved": "i % 2 = 1",
}


@pytest.fixture(scope="module", params=list(LAYOUTS))
def layout(request: pytest.FixtureRequest, database_url: str) -> Iterator[str]:
    with throwaway_database(database_url, "pages") as url:
        migrate.upgrade(url)
        second = LAYOUTS[request.param].format(per_brand=PER_BRAND)
        with psycopg.connect(url, autocommit=True) as conn:
            for statement in LOAD.format(second=second, total=2 * PER_BRAND).split(";\n"):
                if statement.strip():
                    conn.execute(statement)  # fixed text: the layout's condition is ours
        yield url


def _members_scans(plan: Any) -> list[dict[str, Any]]:
    """The plan nodes that read the members table."""
    found = []
    stack = [plan]
    while stack:
        node = stack.pop()
        if node.get("Relation Name") == "members":
            found.append(node)
        stack.extend(node.get("Plans", []))
    return found


async def _rows_touched(conn: psycopg.AsyncConnection[Any], query: Query, params: dict[str, Any]) -> int:
    await conn.execute("SET plan_cache_mode = force_generic_plan")  # what a prepared statement gets
    scans = _members_scans(await query.explain(conn, **params))
    assert scans
    return sum(int(n["Actual Rows"]) + int(n.get("Rows Removed by Filter", 0)) for n in scans)


@pytest.mark.parametrize("brand", ["first", "second"])
async def test_a_compiled_page_reads_only_its_brands_rows(layout: str, brand: str) -> None:
    plan = Plans(SCHEMA._schema, SCHEMA.documents).plan(PAGE, None)
    assert plan is not None, "the page takes the compiled path"
    async with AsyncConnectionPool(layout, min_size=1, max_size=2, kwargs={"autocommit": True}) as pool:
        needs = Needs(brands=ScopedBrands(BrandDirectory(), None), pool=pool, principal=MASKED)
        params: dict[str, Any] = {}
        for binding in plan.bindings:
            params |= await binding.binder({"brand": brand, "first": 100, "after": None}, needs)
        async with pool.connection() as conn:
            assert await _rows_touched(conn, plan.query, params) <= 102


@pytest.mark.parametrize("brand", ["first", "second"])
async def test_a_page_on_the_general_path_reads_only_its_brands_rows(layout: str, brand: str) -> None:
    async with await psycopg.AsyncConnection.connect(layout, autocommit=True) as conn:
        brand_id = await (await conn.execute("SELECT id FROM brands WHERE code = %s", (brand,))).fetchone()
        assert brand_id is not None
        middle = await (
            await conn.execute("SELECT id FROM members WHERE brand_id = %s ORDER BY id OFFSET 15000 LIMIT 1", brand_id)
        ).fetchone()
        assert middle is not None
        for after in (None, middle[0]):
            params = {"brand_id": brand_id[0], "after_id": after, "limit": 101}
            assert await _rows_touched(conn, _members_page, params) <= 102

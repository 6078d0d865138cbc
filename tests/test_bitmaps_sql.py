"""The SQL the compilers emit: the pivot form, and no user text ever spliced into it."""

from __future__ import annotations

import re
from datetime import date

import sqlalchemy as sa

from store.audiences.facts import MemberRowFacts, expand_derived, live_members
from store.sql import Query
from store.tables import audience_bitmaps, members
from tagquery import bind, member_catalog, parse
from tagquery.compile_bitmap import BitmapCompiler, Encoding
from tagquery.compile_rows import compile_rows

HOSTILE = "上海'); DROP TABLE members; --"
CATALOG = member_catalog(
    tags={"price_sensitive": "价格敏感", "o'neil": "quote"},
    tiers=("silver", "gold"),
    channels=("tmall", "jd"),
    cities=(HOSTILE, "北京"),
    statuses=("prospect", "member"),
    genders=("male", "female", "unknown"),
    lifecycles=("introduction", "growth", "mature", "at_risk", "churned"),
)
TEXT = (
    'city:"上海\'); DROP TABLE members; --" AND NOT tag:"o\'neil" AND (points >= 1000 OR lifecycle:at_risk)'
    " AND last_purchase WITHIN 30d"
)
TODAY = date(2025, 3, 31)


def _bitmap_query() -> Query:
    bound = expand_derived(bind(parse(TEXT), CATALOG))
    compiler = BitmapCompiler(Encoding({"points": 17}), TODAY)
    pivot = compiler.pivot.select(audience_bitmaps, {"bits": compiler.bitmap(bound)}).subquery()
    return Query(sa.select(sa.func.sum(sa.func.bit_count(pivot.c.bits))))


def test_the_bitmap_compiler_emits_the_pivot_form() -> None:
    query = _bitmap_query()
    assert query.sql.count("FROM audience_bitmaps") == 1
    assert "audience_bitmaps.key = ANY (%(keys)s::TEXT[])" in query.sql
    assert "GROUP BY audience_bitmaps.chunk" in query.sql
    assert query.sql.count("OFFSET 0") == 2  # the zero row and the expression level stay fences
    aggregate = r"bit_or\(audience_bitmaps\.bits\) FILTER \(WHERE audience_bitmaps\.key = %\(k(\d+)\)s::VARCHAR\)"
    filters = re.findall(aggregate, query.sql)
    keys = query._constants["keys"]
    assert sorted(map(int, filters)) == list(range(len(keys)))
    assert [query._constants[f"k{i}"] for i in range(len(keys))] == keys
    # No "u", "has:last_purchase" or "has:order.4": every NOT here has a positive AND operand and no
    # chain needs a presence (tagquery.compile_bitmap; tests/test_compile_bitmap_keys.py).
    assert {f"city:{HOSTILE}", "tag:o'neil", "ge:last_purchase:d2:12", "bit:order.4:15", "ge:points:1000"} <= set(keys)


def test_user_values_travel_as_parameters_only() -> None:
    bitmap = _bitmap_query()
    m = members.alias("m")
    where = compile_rows(expand_derived(bind(parse(TEXT), CATALOG)), MemberRowFacts(m), TODAY)
    rows = Query(sa.select(m.c.id).where(live_members(m), where))
    for query in (bitmap, rows):
        assert "DROP TABLE" not in query.sql
        assert "o'neil" not in query.sql
        assert "1000" not in query.sql
    assert any(HOSTILE in str(value) for value in rows._constants.values())

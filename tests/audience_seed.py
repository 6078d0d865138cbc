"""A small brand for the audience API tests: members with known tiers, cities, points, tags and
identities, indexed; and the row compiler over the system of record as the reference."""

from __future__ import annotations

import dataclasses
from typing import Any

import sqlalchemy as sa
from psycopg_pool import AsyncConnectionPool

from store.audiences.catalogs import load_catalog
from store.audiences.deltas import apply_brand
from store.audiences.facts import MemberRowFacts, expand_derived, live_members
from store.brands import brand_by_code
from store.sql import Query
from store.tables import members
from store.tags import catalog
from tagquery import bind, parse
from tagquery.compile_rows import compile_rows
from tests.conftest import new_brand

TIERS = ("silver", "gold", "platinum", "diamond")


@dataclasses.dataclass(frozen=True)
class Seeded:
    code: str
    brand_id: int
    ids: list[int]
    """Member ids in order: ids[i] is member number i (0-based) of the rules below."""


def tier_of(i: int) -> str:
    return TIERS[i % 4]


def city_of(i: int) -> str:
    return "上海" if i % 3 == 0 else "北京"


def has_vip(i: int) -> bool:
    return i % 2 == 0


def has_churn(i: int) -> bool:
    return i % 3 == 0


def has_wechat(i: int) -> bool:
    return i % 4 == 0


async def seed(pool: AsyncConnectionPool[Any], count: int = 40) -> Seeded:
    """`count` members: tier by i % 4, city 上海 when i % 3 == 0, points 100 * i, tag vip on even i,
    churn_risk when i % 3 == 0, a wechat identity when i % 4 == 0, a masked phone on every one."""
    code = await new_brand(pool)
    async with pool.connection() as conn, conn.transaction():
        brand_id: int = (await brand_by_code(conn, code))["id"]
        vip = await catalog.define(conn, brand_id=brand_id, code="vip", name="贵宾", category="custom", ttl_days=None)
        churn = await catalog.define(
            conn, brand_id=brand_id, code="churn_risk", name="流失风险", category="lifecycle", ttl_days=None
        )
        cursor = await conn.execute(
            "INSERT INTO members (brand_id, tier, city, points_balance, phone_masked, phone_hash, phone_encrypted)"
            " SELECT %(b)s, (%(tiers)s::text[])[1 + i %% 4], CASE WHEN i %% 3 = 0 THEN '上海' ELSE '北京' END,"
            " 100 * i, '138****' || lpad(i::text, 4, '0'),"
            " int8send(%(b)s * 100000 + i), int8send(i) FROM generate_series(0, %(n)s - 1) i ORDER BY i RETURNING id",
            {"b": brand_id, "tiers": list(TIERS), "n": count},
        )
        ids = sorted(row[0] for row in await cursor.fetchall())
        for tag, rule in ((vip, has_vip), (churn, has_churn)):
            await conn.execute(
                "INSERT INTO member_tags (member_id, tag_id, brand_id, source)"
                " SELECT unnest(%s::bigint[]), %s, %s, 'test'",
                ([m for i, m in enumerate(ids) if rule(i)], tag["id"], brand_id),
            )
        await conn.execute(
            "INSERT INTO member_identities (brand_id, member_id, channel, external_id)"
            " SELECT %s, m, 'wechat', 'wx_' || m FROM unnest(%s::bigint[]) m",
            (brand_id, [m for i, m in enumerate(ids) if has_wechat(i)]),
        )
    await catch_up(pool, brand_id)
    return Seeded(code, brand_id, ids)


async def catch_up(pool: AsyncConnectionPool[Any], brand_id: int) -> None:
    """Apply the brand's queued changes to its index (the server's applier may be doing it too)."""
    async with pool.connection() as conn:
        await apply_brand(conn, brand_id, wait=True)


async def reference_ids(pool: AsyncConnectionPool[Any], brand_id: int, expression: str) -> list[int]:
    """The expression's live members by the row compiler over the system of record, ascending."""
    async with pool.connection() as conn:
        brand = await load_catalog(conn, brand_id)
        bound = bind(parse(expression), brand.catalog)
        today = brand.today()
        m = members.alias("m")
        where = compile_rows(expand_derived(bound), MemberRowFacts(m), today)
        query = Query(sa.select(m.c.id).where(live_members(m), where).order_by(m.c.id))
        rows = await query.all(conn, brand_id=brand_id, today=today, tz=brand.timezone)
    return [row["id"] for row in rows]

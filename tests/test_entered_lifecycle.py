"""`entered:<stage>` over the history store.audiences.lifecycle records (issue 15, item 1): with the
clock moved past the at-risk threshold, the scheduled pass moves members into at_risk, and the API's
audience counts exactly those, after the applier's pass (the incremental path) and after `omnimember
refresh` (a full rebuild) alike; and docs/lifecycle.md's example runs on the demo data."""

from __future__ import annotations

import asyncio
import os
import subprocess
from datetime import datetime, timedelta
from typing import Any

from psycopg_pool import AsyncConnectionPool

from store.audiences import engine, lifecycle
from store.audiences.catalogs import load_catalog
from store.audiences.deltas import apply_brand
from store.audiences.facts import LifecycleRules
from store.audiences.lifecycle_rules import current_rules, set_rules
from store.brands import brand_by_code
from store.members.phones import PhoneVault
from tagquery import bind, parse
from tests.conftest import ROOT, GraphQL, new_brand
from tests.server import OMNIMEMBER
from tests.test_demo import build
from tests.test_lifecycle import ZONE, _member_with_orders, at_noon, brand_id_of, catch_up, history, state_day
from tests.test_purchase_behaviour_differential import _rows_on

AUDIENCE = """
query($b: String!, $e: String!) {
  audience(brand: $b, expression: $e) { count sample(first: 50) { edges { node { id } } } }
}"""
WHY = """
query($b: String!, $e: String!, $m: ID!) { audience(brand: $b, expression: $e) { whyMember(id: $m) { matches } } }
"""
ENTERED = (
    "entered:at_risk WITHIN 1d",
    "entered:at_risk WITHIN 7d",
    "entered:at_risk",
    "entered IN (at_risk, churned) WITHIN 1d",
)


async def _audience(gql: GraphQL, code: str, expression: str) -> set[int]:
    found = (await gql(AUDIENCE, b=code, e=expression))["audience"]
    ids = {int(edge["node"]["id"]) for edge in found["sample"]["edges"]}
    assert found["count"] == len(ids), expression
    return ids


async def _built_at(pool: AsyncConnectionPool[Any], brand_id: int) -> datetime:
    async with pool.connection() as conn:
        row = await (
            await conn.execute("SELECT built_at FROM audience_index_state WHERE brand_id = %s", (brand_id,))
        ).fetchone()
    assert row is not None
    built: datetime = row[0]
    return built


async def test_days_passing_move_members_into_at_risk_and_entered_counts_exactly_them(
    pool: AsyncConnectionPool[Any], gql: GraphQL, database_url: str
) -> None:
    code = await new_brand(pool)
    brand_id = await brand_id_of(pool, code)
    today = datetime.now(ZONE).date()

    def days_ago(*days: int) -> list[datetime]:
        return [at_noon(today - timedelta(days=d)) for d in days]

    async with pool.connection() as conn, conn.transaction():
        soon = {  # 4 orders, the last 119 days ago: at risk in 2 days
            await _member_with_orders(conn, brand_id, days_ago(119, 130, 140, 150)),
            await _member_with_orders(conn, brand_id, days_ago(119, 125, 200, 300)),
        }
        later = await _member_with_orders(conn, brand_id, days_ago(100, 110, 120, 130))  # in 21 days
        old = await _member_with_orders(conn, brand_id, days_ago(200, 210, 220, 230))  # at risk already
        for paid in (days_ago(1, 30, 60, 90), days_ago(100), []):  # mature, growth, introduction
            await _member_with_orders(conn, brand_id, paid)
    await catch_up(pool, brand_id)
    async with pool.connection() as conn:
        assert await state_day(conn, brand_id) == today
        assert await history(conn, brand_id) == []  # the first computation records nothing
    assert await _audience(gql, code, "lifecycle:at_risk") == {old}
    assert await _audience(gql, code, "entered:at_risk") == set()  # `old` was at risk before history began

    async with pool.connection() as conn:  # the scheduled pass, two days on
        synced = await lifecycle.sync_locked(conn, brand_id, wait=True, now=at_noon(today + timedelta(days=2)))
        assert synced is not None
        assert synced.changes == {lifecycle.Cause.TIME: 2}
        moved = {row[0] for row in await history(conn, brand_id) if row[2] == "at_risk"}
    assert moved == soon
    assert later not in moved

    await catch_up(pool, brand_id)  # the applier's pass (the server's own may have run it already)
    incremental = {expression: await _audience(gql, code, expression) for expression in ENTERED}
    assert incremental == dict.fromkeys(ENTERED, soon)
    assert await _audience(gql, code, "lifecycle:at_risk AND NOT entered:at_risk") == {old}
    for member in (*soon, later, old):  # the reference evaluator, over the member's own rows
        why = (await gql(WHY, b=code, e="entered:at_risk WITHIN 1d", m=str(member)))["audience"]["whyMember"]
        assert why["matches"] is (member in soon), member
    async with pool.connection() as conn:  # on the moved days themselves
        brand = await load_catalog(conn, brand_id)
        for day, text, expected in (
            (today + timedelta(days=2), "entered:at_risk WITHIN 0d", soon),
            (today + timedelta(days=3), "entered:at_risk WITHIN 0d", set()),
            (today + timedelta(days=3), "entered:at_risk WITHIN 1d", soon),
        ):
            bound = bind(parse(text), brand.catalog)
            assert set((await engine.member_ids(conn, brand, bound, day)).tolist()) == expected, (day, text)
            assert set(await _rows_on(conn, brand, bound, day)) == expected, (day, text)

    built_at = await _built_at(pool, brand_id)
    env = {**os.environ, "DATABASE_URL": database_url}
    done = await asyncio.to_thread(
        subprocess.run, [*OMNIMEMBER, "refresh", "--brand", code], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert await _built_at(pool, brand_id) > built_at  # rebuilt from the system of record
    rebuilt = {expression: await _audience(gql, code, expression) for expression in ENTERED}
    assert rebuilt == incremental


LIFECYCLE_DOC = (ROOT / "docs" / "lifecycle.md").read_text()
EXAMPLE = "entered:at_risk WITHIN 30d"


async def test_the_docs_example_counts_who_a_rules_change_slid_into_at_risk_on_the_demo(
    database_url: str, vault: PhoneVault, pool: AsyncConnectionPool[Any]
) -> None:
    assert f'expression: "{EXAMPLE}"' in LIFECYCLE_DOC
    await build(database_url, vault, members=3000)
    async with pool.connection() as conn:
        brand_id = (await brand_by_code(conn, "teahouse"))["id"]
        assert await apply_brand(conn, brand_id, wait=True) is not None  # the load asked for a full build
        before = (await current_rules(conn, brand_id)).rules
        try:
            async with conn.transaction():  # docs/lifecycle.md step 2: atRiskDays 90
                await set_rules(conn, brand_id, LifecycleRules(at_risk_days=90), "test")
            synced = await lifecycle.sync_locked(conn, brand_id, wait=True)
            assert synced is not None
            assert synced.changes.get(lifecycle.Cause.RULES, 0) > 0
            assert await apply_brand(conn, brand_id, wait=True) is not None
            brand = await load_catalog(conn, brand_id)
            today = brand.today()
            slid = await (
                await conn.execute(
                    "SELECT DISTINCT c.member_id FROM member_stage_changes c JOIN members m ON m.id = c.member_id"
                    " WHERE c.brand_id = %s AND c.to_stage = 'at_risk' AND m.merged_into IS NULL"
                    " AND (c.changed_at AT TIME ZONE 'Asia/Shanghai')::date >= %s",
                    (brand_id, today - timedelta(days=30)),
                )
            ).fetchall()
            bound = bind(parse(EXAMPLE), brand.catalog, source=EXAMPLE)
            ids = set((await engine.member_ids(conn, brand, bound, today)).tolist())
            assert ids == {row[0] for row in slid}
            assert len(ids) >= synced.changes[lifecycle.Cause.RULES] > 0  # at least those the rules moved
            assert set(await _rows_on(conn, brand, bound, today)) == ids
        finally:  # the demo brands outlive a reload: leave their rules as they were
            async with conn.transaction():
                await set_rules(conn, brand_id, before, "test")
            await lifecycle.sync_locked(conn, brand_id, wait=True)

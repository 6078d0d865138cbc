"""Lifecycle per brand (issue 15, item 1): versioned rules, kept stages, every change recorded.

The kept stages are checked against a reference computed here from the system of record (members
and orders read with plain SQL, the stage derived in Python), and against a full recompute; the
history is checked to chain; the clock is moved to check the changes days make on their own.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import secrets
import subprocess
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from store.audiences import engine, lifecycle
from store.audiences.catalogs import load_catalog
from store.audiences.deltas import apply_brand
from store.audiences.facts import STAGES, LifecycleRules
from store.audiences.lifecycle_rules import current_rules
from store.brands import brand_by_code
from tagquery import bind, parse
from tests.conftest import GraphQL, new_brand
from tests.fragments import REGISTER
from tests.server import OMNIMEMBER

ZONE = ZoneInfo("Asia/Shanghai")  # the brands' default time zone
ORDER = """
mutation($b: String!, $m: ID!, $k: String!, $at: DateTime!) {
  recordOrder(brand: $b, channel: "pos", externalOrderId: $k, amount: "10.00", paidAt: $at, memberId: $m) {
    __typename ... on Error { code message }
  }
}"""
REFUND = """
mutation($b: String!, $k: String!, $i: String!) {
  refundOrder(brand: $b, channel: "pos", externalOrderId: $k, idempotencyKey: $i) { __typename }
}"""
MERGE = """
mutation($s: ID!, $m: ID!) {
  mergeMembers(survivorId: $s, mergedId: $m, reason: "same person") {
    __typename ... on MembersMerged { merge { id } }
  }
}"""
UNMERGE = "mutation($m: ID!) { unmergeMembers(mergeId: $m) { __typename } }"
SET_RULES = """
mutation($b: String!, $o: Int, $r: Int, $c: Int) {
  setLifecycleRules(brand: $b, matureOrders: $o, atRiskDays: $r, churnedDays: $c) {
    __typename
    ... on LifecycleRulesSet { moved rules { version matureOrders atRiskDays churnedDays createdBy } }
    ... on Error { code message field }
  }
}"""
COUNT = "query($b: String!, $e: String!) { audience(brand: $b, expression: $e) { count } }"
HISTORY = """
query($m: ID!) {
  member(id: $m) { lifecycleStage stageHistory { fromStage toStage changedAt cause rulesVersion } }
}"""


# --- the system of record, read plainly --------------------------------------------------------------


def reference_stage(last: date | None, order_days: Sequence[date], day: date, rules: LifecycleRules) -> str:
    """DOMAIN.md's stages under `rules`, on `day`, from a member's last purchase and order days."""
    if last is None:
        return "introduction"
    if last < day - timedelta(days=rules.churned_days):
        return "churned"
    if sum(1 for paid in order_days if paid >= day - timedelta(days=365)) < rules.mature_orders:
        return "growth"
    return "mature" if last >= day - timedelta(days=rules.at_risk_days) else "at_risk"


async def reference(conn: AsyncConnection[Any], brand_id: int, day: date, rules: LifecycleRules) -> dict[int, str]:
    """Every live member's stage from members and orders rows (no index, no store.audiences code)."""
    members = await (
        await conn.execute(
            "SELECT id, (last_purchase_at AT TIME ZONE 'Asia/Shanghai')::date FROM members"
            " WHERE brand_id = %s AND merged_into IS NULL AND erased_at IS NULL",
            (brand_id,),
        )
    ).fetchall()
    paid: dict[int, list[date]] = {}
    for member_id, day_paid in await (
        await conn.execute(
            "SELECT member_id, (paid_at AT TIME ZONE 'Asia/Shanghai')::date FROM orders WHERE brand_id = %s",
            (brand_id,),
        )
    ).fetchall():
        paid.setdefault(member_id, []).append(day_paid)
    return {member_id: reference_stage(last, paid.get(member_id, []), day, rules) for member_id, last in members}


async def kept(conn: AsyncConnection[Any], brand_id: int) -> dict[int, str]:
    """The kept stages, decoded bit by bit in SQL (not with the module's numpy decoding); a member
    in two stages fails here."""
    rows = await (
        await conn.execute(
            "SELECT s.stage, s.chunk * 65536 + g FROM lifecycle_stages s, generate_series(0, 65535) g"
            " WHERE s.brand_id = %s AND get_bit(s.bits, g) = 1",
            (brand_id,),
        )
    ).fetchall()
    stages: dict[int, str] = {}
    for stage, member_id in rows:
        assert member_id not in stages, f"member {member_id} in {stages[member_id]} and {stage}"
        stages[member_id] = stage
    return stages


async def history(conn: AsyncConnection[Any], brand_id: int) -> list[tuple[Any, ...]]:
    cursor = await conn.execute(
        "SELECT member_id, from_stage, to_stage, changed_at, rules_version, cause FROM member_stage_changes"
        " WHERE brand_id = %s ORDER BY id",
        (brand_id,),
    )
    return await cursor.fetchall()


async def state_day(conn: AsyncConnection[Any], brand_id: int) -> date:
    row = await (await conn.execute("SELECT day FROM lifecycle_state WHERE brand_id = %s", (brand_id,))).fetchone()
    assert row is not None, "the brand's stages were never computed"
    day: date = row[0]
    return day


async def catch_up(pool: AsyncConnectionPool[Any], brand_id: int) -> None:
    async with pool.connection() as conn:
        assert await apply_brand(conn, brand_id, wait=True) is not None


async def brand_id_of(pool: AsyncConnectionPool[Any], code: str) -> int:
    async with pool.connection() as conn:
        found: int = (await brand_by_code(conn, code))["id"]
        return found


def at_noon(day: date) -> datetime:
    return datetime.combine(day, time(12), ZONE)


# --- writes through the API ----------------------------------------------------------------------------


@dataclasses.dataclass
class Shop:
    """A brand driven through the API, remembering what it wrote."""

    gql: GraphQL
    code: str
    members: list[str] = dataclasses.field(default_factory=list)
    orders: list[str] = dataclasses.field(default_factory=list)
    merges: list[str] = dataclasses.field(default_factory=list)

    async def register(self) -> str:
        data = await self.gql(REGISTER, brand=self.code, channel="pos", externalId=f"card-{secrets.token_hex(6)}")
        member_id: str = data["registerMember"]["member"]["id"]
        self.members.append(member_id)
        return member_id

    async def order(self, member_id: str, days_ago: float) -> None:
        key = f"o-{secrets.token_hex(6)}"
        paid = datetime.now(UTC) - timedelta(days=days_ago)
        data = await self.gql(ORDER, b=self.code, m=member_id, k=key, at=paid.isoformat())
        if data["recordOrder"]["__typename"] == "OrderRecorded":
            self.orders.append(key)

    async def refund(self, key: str) -> None:
        await self.gql(REFUND, b=self.code, k=key, i=f"r-{secrets.token_hex(6)}")

    async def merge(self, survivor: str, merged: str) -> None:
        data = await self.gql(MERGE, s=survivor, m=merged)
        if data["mergeMembers"]["__typename"] == "MembersMerged":
            self.merges.append(data["mergeMembers"]["merge"]["id"])

    async def unmerge(self, merge_id: str) -> None:
        await self.gql(UNMERGE, m=merge_id)

    async def set_rules(self, rules: LifecycleRules) -> dict[str, Any]:
        data = await self.gql(SET_RULES, b=self.code, o=rules.mature_orders, r=rules.at_risk_days, c=rules.churned_days)
        result: dict[str, Any] = data["setLifecycleRules"]
        return result


# --- property: incremental = full recompute = reference, exactly one stage, history chains ------------

valid_rules = st.integers(1, 364).flatmap(
    lambda at_risk: st.builds(
        LifecycleRules, st.integers(1, 5), st.just(at_risk), st.integers(at_risk + 1, at_risk + 500)
    )
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("register")),
        st.tuples(st.just("order"), st.integers(0, 30), st.floats(0, 800)),
        st.tuples(st.just("order"), st.integers(0, 30), st.floats(0, 800)),  # orders twice as often
        st.tuples(st.just("refund"), st.integers(0, 60)),
        st.tuples(st.just("merge"), st.integers(0, 30), st.integers(0, 30)),
        st.tuples(st.just("unmerge"), st.integers(0, 10)),
        st.tuples(st.just("apply")),
        st.tuples(st.just("rules"), valid_rules),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=operations)
async def test_incremental_stages_equal_a_full_recompute_and_the_reference(
    pool: AsyncConnectionPool[Any], gql: GraphQL, steps: list[tuple[Any, ...]]
) -> None:
    shop = Shop(gql, await new_brand(pool))
    brand_id = await brand_id_of(pool, shop.code)
    for _ in range(3):
        await shop.register()
    await catch_up(pool, brand_id)  # the stages' first computation: nothing recorded
    async with pool.connection() as conn:
        # The app's own applier may have computed the stages first, with fewer members, and recorded
        # the rest as they came: the chains below start from this snapshot and the changes after it.
        initial = await kept(conn, brand_id)
        recorded_before = len(await history(conn, brand_id))
    for step in steps:
        match step:
            case ("register",):
                await shop.register()
            case ("order", which, days_ago):
                await shop.order(shop.members[which % len(shop.members)], days_ago)
            case ("refund", which) if shop.orders:
                await shop.refund(shop.orders[which % len(shop.orders)])
            case ("merge", a, b):
                await shop.merge(shop.members[a % len(shop.members)], shop.members[b % len(shop.members)])
            case ("unmerge", which) if shop.merges:
                await shop.unmerge(shop.merges[which % len(shop.merges)])
            case ("apply",):
                await catch_up(pool, brand_id)
            case ("rules", rules):
                await catch_up(pool, brand_id)
                async with pool.connection() as conn:
                    before = len(await history(conn, brand_id))
                result = await shop.set_rules(rules)
                assert result["__typename"] == "LifecycleRulesSet", result
                async with pool.connection() as conn:
                    rows = await history(conn, brand_id)
                version = result["rules"]["version"]
                # A new version; what was recorded before keeps the version it was computed under.
                assert all(row[4] < version for row in rows[:before])
                assert all(row[4] == version and row[5] == "rules" for row in rows[before:])
    await catch_up(pool, brand_id)

    async with pool.connection() as conn:
        await lifecycle.sync_locked(conn, brand_id, wait=True)  # the scheduled pass, if a recompute was left to it
        day = await state_day(conn, brand_id)
        rules = (await current_rules(conn, brand_id)).rules
        stages = await kept(conn, brand_id)
        # Exactly one stage for every live member, none for the others, each the reference's.
        assert stages == await reference(conn, brand_id, day, rules)
        # The full recompute (what a rebuilt index triggers) finds nothing the deltas missed.
        await conn.execute("UPDATE lifecycle_state SET index_built_at = NULL WHERE brand_id = %s", (brand_id,))
        synced = await lifecycle.sync_locked(conn, brand_id, wait=True)
        assert synced is not None
        assert synced.changes == {}
        # The query-time dimension agrees with the kept stages.
        catalog = await load_catalog(conn, brand_id)
        for stage in STAGES:
            ids = await engine.member_ids(conn, catalog, bind(parse(f"lifecycle:{stage}"), catalog.catalog), day)
            assert sorted(ids.tolist()) == sorted(m for m, s in stages.items() if s == stage), stage
        rows = await history(conn, brand_id)
    # Every member's recorded changes chain from where it started to where it is.
    where: dict[int, str | None] = dict(initial)
    for member_id, from_stage, to_stage, _, _, _ in rows[recorded_before:]:
        assert where.get(member_id) == from_stage, (member_id, from_stage, to_stage)
        where[member_id] = to_stage
    assert {m: s for m, s in where.items() if s is not None} == stages


# --- the clock moves: the scheduled pass --------------------------------------------------------------


async def _member_with_orders(conn: AsyncConnection[Any], brand_id: int, paid: Sequence[datetime]) -> int:
    """A member with these orders, written as the ledger does (aggregates on the member row)."""
    row = await (
        await conn.execute(
            "INSERT INTO members (brand_id, tier, first_purchase_at, last_purchase_at, order_count)"
            " VALUES (%s, 'silver', %s, %s, %s) RETURNING id",
            (brand_id, min(paid, default=None), max(paid, default=None), len(paid)),
        )
    ).fetchone()
    assert row is not None
    for n, moment in enumerate(paid):
        posting = await (
            await conn.execute(
                "INSERT INTO points_postings (brand_id, member_id, idempotency_key, operation, fingerprint, actor)"
                " VALUES (%s, %s, %s, 'order', '\\x00', 'test') RETURNING id",
                (brand_id, row[0], f"o-{row[0]}-{n}"),
            )
        ).fetchone()
        assert posting is not None
        await conn.execute(
            "INSERT INTO orders (brand_id, member_id, channel, external_order_id, amount, paid_at, posting_id,"
            " points_earned, growth_earned) VALUES (%s, %s, 'pos', %s, 10, %s, %s, 10, 100)",
            (brand_id, row[0], f"{row[0]}-{n}", moment, posting[0]),
        )
    member_id: int = row[0]
    return member_id


@pytest.fixture
async def clocked(pool: AsyncConnectionPool[Any]) -> tuple[int, date, dict[str, int]]:
    """A brand on its day `today` with: `soon` (4 orders, the last 119 days ago: at risk in 2 days),
    `later` (4 orders, the last 100 days ago: in 21 days), `steady` (mature for months), `single`
    (one order: growth), `none` (introduction)."""
    brand_id = await brand_id_of(pool, await new_brand(pool))
    today = datetime.now(ZONE).date()

    def days_ago(*days: int) -> list[datetime]:
        return [at_noon(today - timedelta(days=d)) for d in days]

    async with pool.connection() as conn, conn.transaction():
        named = {
            "soon": await _member_with_orders(conn, brand_id, days_ago(119, 130, 140, 150)),
            "later": await _member_with_orders(conn, brand_id, days_ago(100, 110, 120, 130)),
            "steady": await _member_with_orders(conn, brand_id, days_ago(1, 30, 60, 90)),
            "single": await _member_with_orders(conn, brand_id, days_ago(100)),
            "none": await _member_with_orders(conn, brand_id, []),
        }
    await catch_up(pool, brand_id)
    async with pool.connection() as conn:
        assert await state_day(conn, brand_id) == today
    return brand_id, today, named


async def _pass(pool: AsyncConnectionPool[Any], brand_id: int, on: date) -> lifecycle.Synced:
    async with pool.connection() as conn:
        synced = await lifecycle.sync_locked(conn, brand_id, wait=True, now=at_noon(on))
    assert synced is not None
    return synced


async def test_days_passing_move_exactly_the_expected_members_into_at_risk(
    pool: AsyncConnectionPool[Any], clocked: tuple[int, date, dict[str, int]]
) -> None:
    brand_id, today, named = clocked
    async with pool.connection() as conn:
        assert await kept(conn, brand_id) == {
            named["soon"]: "mature",
            named["later"]: "mature",
            named["steady"]: "mature",
            named["single"]: "growth",
            named["none"]: "introduction",
        }
        assert await history(conn, brand_id) == []  # the first computation records nothing

    assert (await _pass(pool, brand_id, today + timedelta(days=1))).changes == {}
    assert (await _pass(pool, brand_id, today + timedelta(days=2))).changes == {lifecycle.Cause.TIME: 1}
    async with pool.connection() as conn:
        assert [row[:3] for row in await history(conn, brand_id)] == [(named["soon"], "mature", "at_risk")]
    # 23 days later at once (a server down meanwhile): each day is compared, so the change is dated right.
    assert (await _pass(pool, brand_id, today + timedelta(days=25))).changes == {lifecycle.Cause.TIME: 1}
    async with pool.connection() as conn:
        rows = await history(conn, brand_id)
        stages = await kept(conn, brand_id)
        assert stages == await reference(conn, brand_id, today + timedelta(days=25), LifecycleRules())
    assert [row[:3] for row in rows] == [
        (named["soon"], "mature", "at_risk"),
        (named["later"], "mature", "at_risk"),
    ]
    starts = [datetime.combine(today + timedelta(days=d), time(), ZONE) for d in (2, 21)]
    assert [row[3] for row in rows] == starts  # dated at the start of the day they crossed
    assert {(row[4], row[5]) for row in rows} == {(0, "time")}
    assert stages[named["steady"]] == "mature"


async def test_a_clock_moved_back_changes_nothing_and_writes_follow_the_kept_day(
    pool: AsyncConnectionPool[Any], clocked: tuple[int, date, dict[str, int]]
) -> None:
    brand_id, today, named = clocked
    await _pass(pool, brand_id, today + timedelta(days=2))  # `soon` at risk
    synced = await _pass(pool, brand_id, today)  # the server's own clock, behind the moved one
    assert synced.changes == {}
    assert synced.day == today + timedelta(days=2)
    async with pool.connection() as conn:
        async with conn.transaction():  # `soon` buys again: a write, on the kept day
            await conn.execute(
                "UPDATE members SET last_purchase_at = %s WHERE id = %s", (at_noon(today), named["soon"])
            )
        assert await apply_brand(conn, brand_id, wait=True) is not None
        rows = await history(conn, brand_id)
    assert [row[:3] + row[5:] for row in rows[-1:]] == [(named["soon"], "at_risk", "mature", "write")]


# --- rules: versions, validation, what they change --------------------------------------------------


async def test_a_rule_change_is_a_new_version_and_moves_members_at_once(
    pool: AsyncConnectionPool[Any], gql: GraphQL
) -> None:
    shop = Shop(gql, await new_brand(pool))
    brand_id = await brand_id_of(pool, shop.code)
    old = await shop.register()
    await catch_up(pool, brand_id)
    fresh = await shop.register()  # after the first computation: its arrival is recorded
    for days in (100, 110, 120, 130):
        await shop.order(old, days)
    await catch_up(pool, brand_id)
    query = "{ brands { code lifecycleRules { version atRiskDays } lifecycleRuleVersions { version } } }"
    mine = next(b for b in (await gql(query))["brands"] if b["code"] == shop.code)
    assert mine["lifecycleRules"] == {"version": 0, "atRiskDays": 120}
    assert (await gql(COUNT, b=shop.code, e="lifecycle:at_risk"))["audience"]["count"] == 0

    result = await shop.set_rules(LifecycleRules(mature_orders=4, at_risk_days=90, churned_days=365))
    assert result["rules"] == {
        "version": 1,
        "matureOrders": 4,
        "atRiskDays": 90,
        "churnedDays": 365,
        "createdBy": "test admin",
    }
    assert result["moved"] == 1
    mine = next(b for b in (await gql(query))["brands"] if b["code"] == shop.code)
    assert mine["lifecycleRuleVersions"] == [{"version": 1}, {"version": 0}]
    assert (await gql(COUNT, b=shop.code, e="lifecycle:at_risk"))["audience"][
        "count"
    ] == 1  # the expression means the new rules at once

    old_history = (await gql(HISTORY, m=old))["member"]
    assert old_history["lifecycleStage"] == "AT_RISK"
    assert [(c["fromStage"], c["toStage"], c["cause"], c["rulesVersion"]) for c in old_history["stageHistory"]] == [
        ("INTRODUCTION", "MATURE", "WRITE", 0),
        ("MATURE", "AT_RISK", "RULES", 1),
    ]
    fresh_history = (await gql(HISTORY, m=fresh))["member"]["stageHistory"]
    assert [(c["fromStage"], c["toStage"], c["rulesVersion"]) for c in fresh_history] == [(None, "INTRODUCTION", 0)]


@pytest.mark.parametrize(
    ("rules", "field"),
    [
        ({"r": -5}, "atRiskDays"),
        ({"r": 0}, "atRiskDays"),
        ({"c": 4000}, "churnedDays"),
        ({"o": 0}, "matureOrders"),
        ({"r": 200, "c": 150}, "atRiskDays"),  # at risk would need a purchase the member cannot lack
        ({"r": 365, "c": 700}, "atRiskDays"),  # ... or more days than the orders are counted in
    ],
)
async def test_nonsense_rules_are_refused_naming_the_argument(
    pool: AsyncConnectionPool[Any], gql: GraphQL, rules: dict[str, int], field: str
) -> None:
    code = await new_brand(pool)
    result = (await gql(SET_RULES, b=code, **rules))["setLifecycleRules"]
    assert result["__typename"] == "InvalidInput"
    assert result["field"] == field
    async with pool.connection() as conn:
        assert (await current_rules(conn, await brand_id_of(pool, code))).version == 0  # nothing written


# --- merges, history, transitions --------------------------------------------------------------------


async def test_a_merge_and_its_undoing_are_recorded(pool: AsyncConnectionPool[Any], gql: GraphQL) -> None:
    shop = Shop(gql, await new_brand(pool))
    brand_id = await brand_id_of(pool, shop.code)
    survivor, merged = await shop.register(), await shop.register()
    await catch_up(pool, brand_id)
    for days in (5, 10, 20, 40):
        await shop.order(merged, days)
    await catch_up(pool, brand_id)
    await shop.merge(survivor, merged)
    await catch_up(pool, brand_id)
    survivor_history = (await gql(HISTORY, m=survivor))["member"]
    merged_history = (await gql(HISTORY, m=merged))["member"]
    assert survivor_history["lifecycleStage"] == "MATURE"  # the orders came with the merge
    assert [(c["fromStage"], c["toStage"]) for c in survivor_history["stageHistory"]] == [("INTRODUCTION", "MATURE")]
    assert merged_history["lifecycleStage"] is None
    # Into mature by its orders (through growth when the app's own applier saw it between two of
    # them), then out of every stage by the merge.
    changes = [(c["fromStage"], c["toStage"], c["cause"]) for c in merged_history["stageHistory"]]
    assert changes[-1] == ("MATURE", None, "WRITE")
    assert changes[:-1] in (
        [("INTRODUCTION", "MATURE", "WRITE")],
        [("INTRODUCTION", "GROWTH", "WRITE"), ("GROWTH", "MATURE", "WRITE")],
    )
    await shop.unmerge(shop.merges[0])
    await catch_up(pool, brand_id)
    assert (await gql(HISTORY, m=merged))["member"]["stageHistory"][-1]["toStage"] == "MATURE"
    assert (await gql(HISTORY, m=survivor))["member"]["lifecycleStage"] == "INTRODUCTION"


TRANSITIONS = """
query($b: String!, $since: DateTime!, $until: DateTime, $from: LifecycleStage, $to: LifecycleStage,
      $where: String, $first: Int!, $after: String) {
  lifecycleTransitions(brand: $b, since: $since, until: $until, from: $from, to: $to, where: $where) {
    count changes pairs { fromStage toStage changes members }
    members(first: $first, after: $after) { nodes { id } pageInfo { hasNextPage endCursor } }
  }
}"""


async def test_transitions_count_and_page_the_members_who_made_them(
    pool: AsyncConnectionPool[Any], gql: GraphQL
) -> None:
    shop = Shop(gql, await new_brand(pool))
    brand_id = await brand_id_of(pool, shop.code)
    members = [await shop.register() for _ in range(4)]
    await catch_up(pool, brand_id)
    started = datetime.now(UTC) - timedelta(seconds=1)
    for member in members[:3]:
        for days in (100, 110, 120, 130):
            await shop.order(member, days)  # introduction -> mature
    await catch_up(pool, brand_id)
    await shop.set_rules(LifecycleRules(at_risk_days=90))  # mature -> at risk, all three

    async def ask(**variables: Any) -> dict[str, Any]:
        found: dict[str, Any] = (await gql(TRANSITIONS, b=shop.code, since=started.isoformat(), first=2, **variables))[
            "lifecycleTransitions"
        ]
        return found

    slid = await ask(**{"from": "MATURE", "to": "AT_RISK"})
    assert (slid["count"], slid["changes"]) == (3, 3)
    assert slid["pairs"] == [{"fromStage": "MATURE", "toStage": "AT_RISK", "changes": 3, "members": 3}]
    assert [n["id"] for n in slid["members"]["nodes"]] == members[:2]
    assert slid["members"]["pageInfo"]["hasNextPage"]
    rest = await ask(**{"from": "MATURE", "to": "AT_RISK", "after": slid["members"]["pageInfo"]["endCursor"]})
    assert [n["id"] for n in rest["members"]["nodes"]] == members[2:3]
    every = await ask()
    # Into mature straight from introduction, or through growth when the app's own applier saw a
    # member between two of its orders: each of the three is counted once, each change once.
    pairs = {(p["fromStage"], p["toStage"]): p["changes"] for p in every["pairs"]}
    assert set(pairs) <= {
        ("INTRODUCTION", "MATURE"),
        ("INTRODUCTION", "GROWTH"),
        ("GROWTH", "MATURE"),
        ("MATURE", "AT_RISK"),
    }
    assert pairs[("MATURE", "AT_RISK")] == 3
    assert pairs.get(("INTRODUCTION", "MATURE"), 0) + pairs.get(("GROWTH", "MATURE"), 0) == 3
    assert pairs.get(("INTRODUCTION", "GROWTH"), 0) == pairs.get(("GROWTH", "MATURE"), 0)
    assert (every["count"], every["changes"]) == (3, sum(pairs.values()))
    assert (await ask(until=(started + timedelta(milliseconds=1)).isoformat()))["count"] == 0
    # As an audience: within those who made the change, only members an expression selects.
    other_tier = await ask(to="AT_RISK", where="tier:gold")
    assert other_tier["count"] == 0
    same = await ask(to="AT_RISK", where="NOT tier:gold")
    assert same["count"] == 3

    bad = await gql.raw(TRANSITIONS, b=shop.code, since=started.isoformat(), until=started.isoformat(), first=1)
    assert bad["errors"][0]["extensions"] == {"code": "INVALID_INPUT", "field": "until"}
    naive = await gql.raw(TRANSITIONS, b=shop.code, since="2026-01-01T00:00:00", first=1)
    assert naive["errors"][0]["extensions"]["field"] == "since"
    unknown = await gql.raw(TRANSITIONS, b="no_such_brand", since=started.isoformat(), first=1)
    assert unknown["errors"][0]["extensions"]["code"] == "UNKNOWN_BRAND"
    wrong = await gql.raw(TRANSITIONS, b=shop.code, since=started.isoformat(), first=1, where="lifecycle:nope")
    assert wrong["errors"][0]["extensions"]["code"] == "INVALID_EXPRESSION"


# --- freshness, and the applier's hook never stopping the index ---------------------------------------

FRESHNESS = """
query($b: String!) {
  audience(brand: $b, expression: "lifecycle:introduction") {
    count freshness { lifecycle { asOfDay rulesVersion computedAt asOf lagSeconds } }
  }
}"""


async def test_freshness_says_how_far_behind_the_stages_are(pool: AsyncConnectionPool[Any], gql: GraphQL) -> None:
    shop = Shop(gql, await new_brand(pool))
    brand_id = await brand_id_of(pool, shop.code)
    await shop.register()
    await catch_up(pool, brand_id)
    today = datetime.now(ZONE).date()
    fresh = (await gql(FRESHNESS, b=shop.code))["audience"]["freshness"]["lifecycle"]
    assert (fresh["asOfDay"], fresh["rulesVersion"]) == (today.isoformat(), 0)
    assert fresh["lagSeconds"] < 60
    async with pool.connection() as conn:
        # Holding the brand's lock (as a long rebuild would) keeps the server's pass from catching up.
        await conn.execute("SELECT pg_advisory_lock(%s, %s)", (0x617564, brand_id))
        try:  # the pass for today has not run: the stages are a day behind
            await conn.execute("UPDATE lifecycle_state SET day = day - 1 WHERE brand_id = %s", (brand_id,))
            behind = (await gql(FRESHNESS, b=shop.code))["audience"]["freshness"]["lifecycle"]
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s, %s)", (0x617564, brand_id))
    assert datetime.fromisoformat(behind["asOf"]) == datetime.combine(today, time(), ZONE)
    assert behind["lagSeconds"] >= (datetime.now(ZONE) - datetime.combine(today, time(), ZONE)).total_seconds() - 5


async def test_a_failing_stage_update_never_stops_the_index(
    pool: AsyncConnectionPool[Any], gql: GraphQL, monkeypatch: pytest.MonkeyPatch
) -> None:
    shop = Shop(gql, await new_brand(pool))
    brand_id = await brand_id_of(pool, shop.code)
    member = await shop.register()
    await catch_up(pool, brand_id)
    real_sync = lifecycle.sync

    async def broken(conn: AsyncConnection[Any], brand: int, **kwargs: Any) -> lifecycle.Synced | None:
        if brand == brand_id:
            raise RuntimeError("stages broke")
        return await real_sync(conn, brand, **kwargs)

    monkeypatch.setattr(lifecycle, "sync", broken)
    await shop.order(member, 3)
    await catch_up(pool, brand_id)
    assert (await gql(COUNT, b=shop.code, e="lifecycle:growth"))["audience"]["count"] == 1  # the index moved on
    monkeypatch.setattr(lifecycle, "sync", real_sync)
    async with pool.connection() as conn:
        # The stages did not follow, and the next pass (this one, or the server's) compares every member.
        assert await lifecycle.sync_locked(conn, brand_id, wait=True) is not None
        assert await kept(conn, brand_id) == {int(member): "growth"}
        rows = await history(conn, brand_id)
    assert [row[1:3] + row[5:] for row in rows if row[0] == int(member)][-1] == ("introduction", "growth", "rebuild")


async def test_refresh_rebuilds_and_records_what_writes_without_triggers_changed(
    pool: AsyncConnectionPool[Any], database_url: str
) -> None:
    code = await new_brand(pool)
    brand_id = await brand_id_of(pool, code)
    today = datetime.now(ZONE).date()
    async with pool.connection() as conn:
        async with conn.transaction():
            member = await _member_with_orders(conn, brand_id, [])
        assert await apply_brand(conn, brand_id, wait=True) is not None
        async with conn.transaction():  # a bulk load: no trigger sees it (as the demo loader's COPY)
            await conn.execute("SET LOCAL session_replication_role = replica")
            await conn.execute("DELETE FROM members WHERE id = %s", (member,))
            bought = await _member_with_orders(conn, brand_id, [at_noon(today - timedelta(days=3))])
    env = {**os.environ, "DATABASE_URL": database_url}
    done = await asyncio.to_thread(
        subprocess.run, [*OMNIMEMBER, "refresh", "--brand", code], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    assert f"{code}: lifecycle stages as of {today}: 2 changes recorded (rebuild 2)" in done.stdout
    async with pool.connection() as conn:
        assert await kept(conn, brand_id) == {bought: "growth"}
        rows = await history(conn, brand_id)
    assert {row[:3] + row[5:] for row in rows} == {
        (member, "introduction", None, "rebuild"),
        (bought, None, "growth", "rebuild"),
    }

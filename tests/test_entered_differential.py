"""`entered:<stage>` terms (issue 15, item 1): the bitmap compiler, the row compiler and the reference
evaluator agree, after a full build and after deltas (new changes of stage, changes edited and
deleted, merges, an unmerge, new members), and the delta-maintained index holds exactly the rows a
fresh build writes.

The history is written straight into member_stage_changes, as store.audiences.lifecycle writes it:
members who entered a stage several times, changes on the edges of the windows (N - 1, N, N + 1
days before TODAY) at random local times in the brand's time zone (America/Los_Angeles, whose
evenings are the next day in UTC and whose mornings the previous day in Shanghai), changes out of
every stage, members merged away with their history, members without any. The evaluator's facts are
computed here in Python from plain rows, not by store.audiences.
"""

from __future__ import annotations

import dataclasses
import random
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from store.audiences import engine
from store.audiences.catalogs import BrandCatalog, load_catalog
from store.tables import LIFECYCLE_STAGES, STAGE_CAUSES
from tagquery import bind, evaluate, parse
from tagquery.ast import Dimension, In, Node, Unit
from tests.conftest import new_brand
from tests.index_builds import build, rows_now_and_after_a_build
from tests.tagquery.strategies import TODAY, trees
from tests.test_audience_differential import brand_by_code_in
from tests.test_purchase_behaviour_differential import _rows_on

ZONE = ZoneInfo("America/Los_Angeles")
CHUNK = 1 << 16
MEMBERS = 200
SEED = 20261208
STAGES = tuple(sorted(LIFECYCLE_STAGES))
WINDOWS = (1, 7, 30, 90, 365)
EDGES = sorted({max(0, n + shift) for n in WINDOWS for shift in (-1, 0, 1)} | {0, 3})
LATER = (-1, -2)  # days after TODAY (negative: before), for changes in the future of the query


@dataclasses.dataclass
class Indexed:
    brand: BrandCatalog
    facts: dict[int, dict[str, Any]]
    """Every member's facts (merged-away ones included), from plain rows."""


def _moment(rng: random.Random) -> datetime:
    """Half on the edge of a window at a random local time, a few after TODAY, the rest anywhere in
    500 days."""
    roll = rng.random()
    before = rng.choice(EDGES) if roll < 0.5 else rng.choice(LATER) if roll < 0.55 else rng.randrange(500)
    day = TODAY - timedelta(days=before)
    local = datetime(day.year, day.month, day.day, tzinfo=ZONE) + timedelta(seconds=rng.randrange(86_400))
    return local.astimezone(UTC)


async def _history(conn: AsyncConnection[Any], brand_id: int, member_id: int, rng: random.Random, changes: int) -> None:
    """A chain of changes of stage, oldest first: often back into a stage entered before, now and then
    out of every stage (merged away, then back)."""
    current: str | None = None
    entered: list[str] = []
    for moment in sorted(_moment(rng) for _ in range(changes)):
        again = [stage for stage in entered if stage != current]
        if current is not None and rng.random() < 0.1:
            to: str | None = None
        elif again and rng.random() < 0.4:
            to = rng.choice(again)
        else:
            to = rng.choice([stage for stage in STAGES if stage != current])
        await _change(conn, brand_id, member_id, current, to, moment, rng.choice(STAGE_CAUSES))
        if to is not None:
            entered.append(to)
        current = to


async def _change(
    conn: AsyncConnection[Any],
    brand_id: int,
    member_id: int,
    from_stage: str | None,
    to_stage: str | None,
    moment: datetime,
    cause: str = "write",
) -> None:
    await conn.execute(
        "INSERT INTO member_stage_changes (brand_id, member_id, from_stage, to_stage, changed_at, rules_version, cause)"
        " VALUES (%s, %s, %s, %s, %s, 0, %s)",
        (brand_id, member_id, from_stage, to_stage, moment, cause),
    )


async def _members(conn: AsyncConnection[Any], brand_id: int, ids: range, rng: random.Random) -> None:
    await conn.execute(
        "SELECT setval(pg_get_serial_sequence('members', 'id'),"
        " greatest(nextval(pg_get_serial_sequence('members', 'id')), %s))",
        (ids[-1],),
    )
    for member_id in ids:
        await conn.execute(
            "INSERT INTO members (id, brand_id, tier, registered_at) VALUES (%s, %s, %s, %s)",
            (member_id, brand_id, rng.choice(("silver", "gold")), datetime(2024, 1, 1, tzinfo=UTC)),
        )
        await _history(conn, brand_id, member_id, rng, rng.choice((0, 0, 1, 2, 3, 5, 8)))


async def _first_id(pool: AsyncConnectionPool[Any]) -> int:
    """Ids across a chunk boundary in chunks no member has yet (ids are global across brands)."""
    async with pool.connection() as conn:
        row = await (await conn.execute("SELECT coalesce(max(id), 0) FROM members")).fetchone()
    assert row is not None
    return ((int(row[0]) >> 16) + 3) * CHUNK - MEMBERS // 2


async def _seed(pool: AsyncConnectionPool[Any], rng: random.Random) -> tuple[int, range]:
    brand_id: int = (await brand_by_code_in(pool, await new_brand(pool)))["id"]
    first = await _first_id(pool)
    ids = range(first, first + MEMBERS)
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("UPDATE brand_rules SET timezone = %s WHERE brand_id = %s", (ZONE.key, brand_id))
        await _members(conn, brand_id, ids, rng)
    return brand_id, ids


async def _apply(pool: AsyncConnectionPool[Any], brand_id: int) -> datetime:
    from store.audiences.deltas import apply_brand

    async with pool.connection() as conn:
        assert await apply_brand(conn, brand_id, wait=True) is not None
        row = await (
            await conn.execute("SELECT built_at FROM audience_index_state WHERE brand_id = %s", (brand_id,))
        ).fetchone()
    assert row is not None
    built_at: datetime = row[0]
    return built_at


async def _indexed(pool: AsyncConnectionPool[Any], brand_id: int) -> Indexed:
    async with pool.connection() as conn:
        brand = await load_catalog(conn, brand_id)
        people = await (
            await conn.execute("SELECT id, tier, merged_into, erased_at FROM members WHERE brand_id = %s", (brand_id,))
        ).fetchall()
        changes = await (
            await conn.execute(
                "SELECT member_id, to_stage, changed_at FROM member_stage_changes WHERE brand_id = %s", (brand_id,)
            )
        ).fetchall()
    facts: dict[int, dict[str, Any]] = {
        member_id: {"id": member_id, "tier": tier, "live": merged is None and erased is None, "entered": {}}
        for member_id, tier, merged, erased in people
    }
    for member in facts.values():
        member["history"] = []
    for member_id, stage, moment in changes:
        facts[member_id]["history"].append((stage, moment))
        if stage is not None:
            days: dict[str, date] = facts[member_id]["entered"]
            days[stage] = max(days.get(stage, date.min), moment.astimezone(ZONE).date())
    return Indexed(brand, facts)


@pytest.fixture(scope="module")
async def built(pool: AsyncConnectionPool[Any]) -> Indexed:
    brand_id, _ = await _seed(pool, random.Random(SEED))
    await build(pool, brand_id)
    return await _indexed(pool, brand_id)


async def _change_everything(conn: AsyncConnection[Any], brand_id: int, ids: range, rng: random.Random) -> None:
    live = list(ids)
    for member_id in rng.sample(live, 40):  # entered again, on the edges too
        await _history(conn, brand_id, member_id, rng, rng.choice((1, 2, 3)))
    for merged, survivor in zip(rng.sample(live[:100], 6), rng.sample(live[100:], 6), strict=True):
        await conn.execute("UPDATE members SET merged_into = %s, merged_at = now() WHERE id = %s", (survivor, merged))
    merged = live[0]  # an unmerge: live again, its history with it
    await conn.execute("UPDATE members SET merged_into = %s, merged_at = now() WHERE id = %s", (live[-1], merged))
    await conn.execute("UPDATE members SET merged_into = NULL, merged_at = NULL WHERE id = %s", (merged,))
    edited = rng.sample(live, 10)
    await conn.execute(  # a change moved back 40 days: the last entry may now be another one
        "UPDATE member_stage_changes SET changed_at = changed_at - interval '40 days'"
        " WHERE id IN (SELECT max(id) FROM member_stage_changes WHERE member_id = ANY(%s) GROUP BY member_id)",
        (edited[:5],),
    )
    await conn.execute(
        "DELETE FROM member_stage_changes"
        " WHERE id IN (SELECT max(id) FROM member_stage_changes WHERE member_id = ANY(%s) GROUP BY member_id)",
        (edited[5:],),
    )
    await _members(conn, brand_id, range(ids.stop, ids.stop + 20), rng)


@pytest.fixture(scope="module")
async def changed(pool: AsyncConnectionPool[Any]) -> Indexed:
    rng = random.Random(SEED + 1)
    brand_id, ids = await _seed(pool, rng)
    built_at = await _apply(pool, brand_id)
    async with pool.connection() as conn, conn.transaction():
        await _change_everything(conn, brand_id, ids, rng)
    assert await _apply(pool, brand_id) == built_at  # deltas only, never a rebuild
    async with pool.connection() as conn:
        queued = await (
            await conn.execute("SELECT count(*) FROM audience_changes WHERE brand_id = %s", (brand_id,))
        ).fetchone()
    assert queued == (0,)  # the changes the lifecycle hook recorded were applied in the same pass
    return await _indexed(pool, brand_id)


async def _three_ways(pool: AsyncConnectionPool[Any], indexed: Indexed, tree: Node, day: date = TODAY) -> None:
    bound = bind(tree, indexed.brand.catalog)
    expected = {i for i, facts in indexed.facts.items() if facts["live"] and evaluate(bound, facts, day)}
    async with pool.connection() as conn:
        bitmap = await engine.member_ids(conn, indexed.brand, bound, day)
        count = await engine.count(conn, indexed.brand, bound, day)
        rows = await _rows_on(conn, indexed.brand, bound, day)
    assert sorted(expected) == bitmap.tolist(), tree
    assert set(rows) == expected, tree
    assert count == len(expected)


_windows = st.tuples(st.sampled_from(EDGES), st.just(Unit.DAY)) | st.tuples(
    st.integers(0, 14), st.sampled_from((Unit.WEEK, Unit.MONTH, Unit.YEAR))
)
entered_terms: st.SearchStrategy[Node] = st.one_of(
    st.builds(Dimension, st.just("entered"), st.sampled_from(STAGES), st.none() | _windows),
    st.builds(
        In,
        st.just("entered"),
        st.lists(st.sampled_from(STAGES), min_size=1, max_size=3).map(tuple),
        st.none(),
        st.none() | _windows,
    ),
    st.builds(Dimension, st.just("tier"), st.sampled_from(("silver", "gold"))),
)
_examples = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_examples
@given(tree=trees(entered_terms, max_leaves=5))
async def test_three_implementations_agree_after_a_build(
    pool: AsyncConnectionPool[Any], built: Indexed, tree: Node
) -> None:
    await _three_ways(pool, built, tree)


@_examples
@given(tree=trees(entered_terms, max_leaves=5))
async def test_three_implementations_agree_after_deltas(
    pool: AsyncConnectionPool[Any], changed: Indexed, tree: Node
) -> None:
    await _three_ways(pool, changed, tree)


EDGE_TERMS = [
    *(f"entered:{stage} WITHIN {n}d" for stage in ("at_risk", "mature") for n in EDGES),
    *(f"entered:{stage}" for stage in STAGES),
    "entered IN (at_risk, churned) WITHIN 30d",
    "entered:at_risk AND NOT entered:at_risk WITHIN 90d",
    "NOT entered IN (introduction, growth, mature, at_risk, churned)",  # no history at all
]


@pytest.mark.parametrize("text", EDGE_TERMS)
async def test_window_edges_on_a_build_and_after_deltas(
    pool: AsyncConnectionPool[Any], built: Indexed, changed: Indexed, text: str
) -> None:
    await _three_ways(pool, built, parse(text))
    await _three_ways(pool, changed, parse(text))


@pytest.mark.parametrize("later", [-3, 1, 30, 200])
async def test_windows_move_with_the_day_asked(pool: AsyncConnectionPool[Any], changed: Indexed, later: int) -> None:
    day = TODAY + timedelta(days=later)
    for text in ("entered:at_risk WITHIN 30d", "entered IN (growth, mature) WITHIN 1d", "entered:churned WITHIN 0d"):
        await _three_ways(pool, changed, parse(text), day)


async def test_the_data_has_every_kind_of_history(built: Indexed, changed: Indexed) -> None:
    shanghai = ZoneInfo("Asia/Shanghai")
    for indexed in (built, changed):
        live = [facts for facts in indexed.facts.values() if facts["live"]]
        moments = [moment for facts in live for _, moment in facts["history"]]
        assert any(not facts["history"] for facts in live)
        assert any(_twice(facts["history"]) for facts in live)  # the same stage entered more than once
        assert any(to is None for facts in live for to, _ in facts["history"])  # out of every stage, then back
        assert {(TODAY - moment.astimezone(ZONE).date()).days for moment in moments} >= {-1, 0, 29, 30, 31, 90, 91}
        assert any(moment.astimezone(ZONE).date() != moment.astimezone(UTC).date() for moment in moments)
        assert any(moment.astimezone(ZONE).date() != moment.astimezone(shanghai).date() for moment in moments)
    assert sum(not facts["live"] and bool(facts["entered"]) for facts in changed.facts.values()) >= 3


def _twice(history: list[tuple[str | None, datetime]]) -> bool:
    entered = [to for to, _ in history if to is not None]
    return len(entered) > len(set(entered))


async def test_deltas_leave_exactly_the_rows_a_fresh_build_writes(
    pool: AsyncConnectionPool[Any], changed: Indexed
) -> None:
    incremental, fresh = await rows_now_and_after_a_build(pool, changed.brand.brand_id)
    assert any(row[0].startswith("has:stage.entered.") for row in fresh)
    assert incremental == fresh

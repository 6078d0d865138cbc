"""The bitmap compiler, the row compiler and the reference evaluator agree, on real PostgreSQL.

Two brands get the same random members (ids across a chunk boundary), tags (some expired),
identities, orders and profiles. One is indexed by a full build; the other is built, then changed
the way the service changes members (merges that move identities and tags, expiries, including
one that passes with no write at all, new tags, points, tiers, orders, new members) and brought
up to date by deltas only. For random expressions, all three implementations must return the
same member ids, and the delta-maintained index must hold exactly the rows a fresh build writes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from store.audiences import engine, rfm, rfm_store
from store.audiences.catalogs import BrandCatalog, load_catalog
from store.audiences.deltas import Freshness, apply_brand, freshness
from store.audiences.facts import MemberRowFacts, expand_derived, live_members
from store.brands import brand_by_code
from store.errors import DomainError
from store.sql import Query
from store.tables import CHANNELS, CONSENT_CHANNELS, members
from tagquery import bind, evaluate, parse
from tagquery.ast import Node
from tagquery.bitmap_keys import BANDS, EPOCH
from tagquery.bound import Bound, BoundAnd
from tagquery.compile_bitmap import Encoding
from tagquery.compile_rows import compile_rows
from tests.conftest import new_brand
from tests.index_builds import build, rows_now_and_after_a_build
from tests.tagquery.strategies import TAGS, TODAY, valid_trees

ZONE = ZoneInfo("Asia/Shanghai")
CHUNK = 1 << 16
TIERS = ("silver", "gold", "platinum", "diamond")
CITIES = ("上海", "北京", "杭州", "New York", None)
# Members with explicit ids around a chunk boundary, far above any sequence value (ids are global,
# so each brand gets its own pair of chunks: 40/41 and 50/51).
BUILT_FROM = 41 * CHUNK - 150
CHANGED_FROM = 51 * CHUNK - 150
MEMBERS = 300
# The data (not the expressions) may differ between runs only through the seed.
SEED = 20261124


@dataclasses.dataclass
class Indexed:
    brand: BrandCatalog
    facts: dict[int, dict[str, Any]]
    """Independently loaded facts of every member (merged-away ones included)."""


# Where a base-64 digit carries or is at its ends (tagquery.bitmap_keys: digits).
DIGIT_EDGES = sorted({max(0, m + shift) for m in (63, 64, 4032, 4095, 4096, 4159, 262_143) for shift in (-1, 0, 1)})


def _points(rng: random.Random) -> int:
    """Small balances (the expressions' own range), balances at and beside the band boundaries
    (one key answers `points >= b` there), and large ones."""
    kind = rng.random()
    if kind < 0.6:
        return rng.randrange(81)
    if kind < 0.85:
        return max(0, rng.choice(BANDS["points"]) + rng.choice((-1, 0, 1)))
    return rng.randrange(200_000)


def _at_digit_edges(
    member_id: int, points: int, growth: int, birthday: date | None, spend: Decimal
) -> tuple[int, int, date | None, Decimal]:
    """Some members' values moved to where the digits carry, drawn apart from the data's own random
    stream (which the kinds of member the tests rely on come from)."""
    edge = random.Random(-member_id)
    if edge.random() < 0.15:
        points = edge.choice(DIGIT_EDGES)
    if edge.random() < 0.15:
        growth = edge.choice(DIGIT_EDGES)
    if birthday is not None and edge.random() < 0.1:
        birthday = EPOCH + timedelta(days=edge.choice(_DAY_DIGIT_EDGES))
    if edge.random() < 0.1:
        spend = Decimal(edge.choice((127, 128, 129, 8191, 8192, 10000))) / 100
    return points, growth, birthday, spend


def _moment(rng: random.Random, start: date, end: date) -> datetime:
    seconds = rng.randrange(int((end - start).total_seconds()) + 86_400)
    return datetime(start.year, start.month, start.day, tzinfo=UTC) + timedelta(seconds=seconds)


# Days (since EPOCH) where the lowest digits carry: 8 * 4096 is 1989-09-17.
_DAY_DIGIT_EDGES = [8 * 4096 + shift for shift in (-65, -64, -63, -1, 0, 1, 63, 64)]
# Days the definitions turn on (windows of 30, 120 and 365 days), each side of the edge.
_EDGES = (0, 1, 29, 30, 31, 119, 120, 121, 364, 365, 366)


def _paid(rng: random.Random) -> datetime:
    """A payment, half of them on an edge day at a random local time (early morning local is the
    previous day in UTC, so the brand's time zone matters)."""
    if rng.random() < 0.5:
        return _moment(rng, TODAY - timedelta(days=500), TODAY)
    day = TODAY - timedelta(days=rng.choice(_EDGES))
    local = datetime(day.year, day.month, day.day, tzinfo=ZONE) + timedelta(seconds=rng.randrange(86_400))
    return local.astimezone(UTC)


def _birthday(rng: random.Random) -> date | None:
    """Many on or next to TODAY's anniversary (whole-year edges), a few on 02-29."""
    roll = rng.random()
    if roll < 0.2:
        return None
    if roll < 0.6:
        return date(TODAY.year - rng.randrange(5, 75), TODAY.month, TODAY.day) + timedelta(days=rng.choice((-1, 0, 1)))
    if roll < 0.65:
        return date(rng.choice((1960, 1984, 2000, 2012)), 2, 29)
    return date(1950, 1, 1) + timedelta(days=rng.randrange(25_000))


async def _insert_members(conn: AsyncConnection[Any], brand_id: int, ids: range, rng: random.Random) -> None:
    # Explicit ids: move the sequence past them so members created later never collide.
    await conn.execute(
        "SELECT setval(pg_get_serial_sequence('members', 'id'),"
        " greatest(nextval(pg_get_serial_sequence('members', 'id')), %s))",
        (ids[-1],),
    )
    for member_id in ids:
        paid = sorted((_paid(rng) for _ in range(rng.choice([0, 0, 1, 2, 4, 4, 5, 7]))), reverse=True)
        last = paid[0] if paid else (_moment(rng, date(2024, 1, 1), TODAY) if rng.random() < 0.1 else None)
        row: list[Any] = [
            member_id,
            brand_id,
            rng.choice(TIERS),
            _points(rng),
            rng.randrange(81),
            rng.choice(["male", "female", "unknown"]),
            _birthday(rng),
            rng.choice(CITIES),
            _moment(rng, date(2024, 1, 1), date(2025, 4, 30)),
            paid[-1] if paid else last,
            last,
            len(paid),
            Decimal(rng.randrange(10_001)) / 100,
        ]
        row[3], row[4], row[6], row[12] = _at_digit_edges(member_id, row[3], row[4], row[6], row[12])
        await conn.execute(
            "INSERT INTO members (id, brand_id, tier, points_balance, growth_value, gender, birthday, city,"
            " registered_at, first_purchase_at, last_purchase_at, order_count, total_spend)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            row,
        )
        await _insert_orders(conn, brand_id, member_id, paid)
        for channel in rng.sample(CHANNELS, rng.randrange(4)):
            await conn.execute(
                "INSERT INTO member_identities (brand_id, member_id, channel, external_id) VALUES (%s, %s, %s, %s)",
                (brand_id, member_id, channel, f"{channel}-{member_id}"),
            )
        for code in rng.sample(sorted(TAGS), rng.randrange(4)):
            await _tag(conn, brand_id, member_id, code, _expiry(rng))
        # Consents from a generator of their own: the other facts stay what SEED made them.
        await _consents(conn, brand_id, member_id, random.Random(member_id))


async def _consents(conn: AsyncConnection[Any], brand_id: int, member_id: int, rng: random.Random) -> None:
    """Granted or withdrawn consents for a few channels (the guardian's among them), or none."""
    for channel in rng.sample(CONSENT_CHANNELS, rng.randrange(4)):
        await conn.execute(
            "INSERT INTO member_consents (brand_id, member_id, channel, granted, given_at, source)"
            " VALUES (%s, %s, %s, %s, now(), 'test')"
            " ON CONFLICT (member_id, channel) DO UPDATE SET granted = EXCLUDED.granted",
            (brand_id, member_id, channel, rng.random() < 0.7),
        )


def _expiry(rng: random.Random) -> timedelta | None:
    """Expires in: None (never), already expired, or in a month."""
    return rng.choice([None, None, None, timedelta(days=-1), timedelta(days=30)])


async def _tag(conn: AsyncConnection[Any], brand_id: int, member_id: int, code: str, expiry: timedelta | None) -> None:
    await conn.execute(
        "INSERT INTO member_tags (member_id, tag_id, brand_id, source, expires_at)"
        " SELECT %s, id, brand_id, 'test', now() + %s::interval FROM tag_definitions"
        " WHERE brand_id = %s AND code = %s ON CONFLICT DO NOTHING",
        (member_id, expiry, brand_id, code),
    )


async def _insert_orders(conn: AsyncConnection[Any], brand_id: int, member_id: int, paid: list[datetime]) -> None:
    for n, moment in enumerate(paid):
        posting = await conn.execute(
            "INSERT INTO points_postings (brand_id, member_id, idempotency_key, operation, fingerprint, actor)"
            " VALUES (%s, %s, %s, 'order', '\\x00', 'test') RETURNING id",
            (brand_id, member_id, f"o-{member_id}-{n}-{moment.timestamp()}"),
        )
        row = await posting.fetchone()
        assert row is not None
        await conn.execute(
            "INSERT INTO orders (brand_id, member_id, channel, external_order_id, amount, paid_at, posting_id,"
            " points_earned, growth_earned) VALUES (%s, %s, 'pos', %s, 10, %s, %s, 10, 100)",
            (brand_id, member_id, f"{member_id}-{n}-{moment.timestamp()}", moment, row[0]),
        )


async def _seed(pool: AsyncConnectionPool[Any], first_id: int) -> int:
    brand_id: int = (await brand_by_code_in(pool, await new_brand(pool)))["id"]
    rng = random.Random(SEED)
    async with pool.connection() as conn, conn.transaction():
        for code, name in TAGS.items():
            await conn.execute(
                "INSERT INTO tag_definitions (brand_id, code, name, category) VALUES (%s, %s, %s, 'custom')",
                (brand_id, code, name),
            )
        await _insert_members(conn, brand_id, range(first_id, first_id + MEMBERS), rng)
    return brand_id


async def brand_by_code_in(pool: AsyncConnectionPool[Any], code: str) -> dict[str, Any]:
    async with pool.connection() as conn:
        return await brand_by_code(conn, code)


async def _apply(pool: AsyncConnectionPool[Any], brand_id: int) -> Freshness:
    async with pool.connection() as conn:
        # The server's applier may run too (same database): wait for it rather than skip.
        assert await apply_brand(conn, brand_id, wait=True) is not None
        return await freshness(conn, brand_id)


async def load_facts(pool: AsyncConnectionPool[Any], brand_id: int) -> dict[int, dict[str, Any]]:
    """Every member's facts, read with plain queries and derived in Python (not via store.audiences.facts)."""
    now = datetime.now(UTC)
    async with pool.connection() as conn:
        rows = await (await conn.execute("SELECT * FROM members WHERE brand_id = %s", (brand_id,))).fetchall()
        columns = [c.name for c in (await conn.execute("SELECT * FROM members LIMIT 0")).description or ()]
        tags = await (
            await conn.execute(
                "SELECT t.member_id, d.code, t.expires_at FROM member_tags t"
                " JOIN tag_definitions d ON d.id = t.tag_id WHERE t.brand_id = %s",
                (brand_id,),
            )
        ).fetchall()
        channels = await (
            await conn.execute("SELECT member_id, channel FROM member_identities WHERE brand_id = %s", (brand_id,))
        ).fetchall()
        paid = await (
            await conn.execute("SELECT member_id, paid_at FROM orders WHERE brand_id = %s", (brand_id,))
        ).fetchall()
        consents = await (
            await conn.execute(
                "SELECT member_id, channel FROM member_consents WHERE brand_id = %s AND granted", (brand_id,)
            )
        ).fetchall()
    facts = {row[0]: _member(dict(zip(columns, row, strict=True))) for row in rows}
    for member_id, code, expires in tags:
        if expires is None or expires > now:
            facts[member_id]["tag"].add(code)
    for member_id, channel in channels:
        facts[member_id]["channel"].add(channel)
    for member_id, channel in consents:
        facts[member_id]["consent"].add(channel)
    for member_id, moment in paid:
        if member_id in facts and moment.astimezone(ZONE).date() >= TODAY - timedelta(days=365):
            facts[member_id]["orders_365d"] += 1
    for member in facts.values():
        member["lifecycle"] = _lifecycle(member)
    return facts


def _member(row: dict[str, Any]) -> dict[str, Any]:
    def day(moment: datetime | None) -> date | None:
        return None if moment is None else moment.astimezone(ZONE).date()

    return {
        "id": row["id"],
        "live": row["merged_into"] is None and row["erased_at"] is None,
        "erased": row["erased_at"] is not None,
        "tag": set(),
        "channel": set(),
        "consent": set(),
        "tier": row["tier"],
        "city": row["city"],
        "status": row["status"],
        "gender": row["gender"],
        "points": row["points_balance"],
        "growth": row["growth_value"],
        "order_count": row["order_count"],
        "total_spend": row["total_spend"],
        "registered": day(row["registered_at"]),
        "last_purchase": day(row["last_purchase_at"]),
        "birthday": row["birthday"],
        "orders_365d": 0,
    }


def _lifecycle(member: dict[str, Any]) -> str:
    last: date | None = member["last_purchase"]
    if last is None:
        return "introduction"
    if last < TODAY - timedelta(days=365):
        return "churned"
    if member["orders_365d"] < 4:
        return "growth"
    return "mature" if last >= TODAY - timedelta(days=120) else "at_risk"


async def _indexed(pool: AsyncConnectionPool[Any], brand_id: int) -> Indexed:
    async with pool.connection() as conn:
        await rfm_store.recompute(conn, brand_id, TODAY)  # as `omnimember refresh` does, on the tests' day
        brand = await load_catalog(conn, brand_id)
    facts = await load_facts(pool, brand_id)
    for member in facts.values():
        member.update(rfm.scores(member, TODAY, brand.rfm))
    return Indexed(brand=brand, facts=facts)


@pytest.fixture(scope="module")
async def built(pool: AsyncConnectionPool[Any]) -> Indexed:
    brand_id = await _seed(pool, BUILT_FROM)
    await build(pool, brand_id)
    return await _indexed(pool, brand_id)


async def _change_everything(conn: AsyncConnection[Any], brand_id: int, rng: random.Random) -> None:
    ids = list(range(CHANGED_FROM, CHANGED_FROM + MEMBERS))
    for merged, survivor in zip(rng.sample(ids[:150], 8), rng.sample(ids[150:], 8), strict=True):
        await conn.execute(
            "UPDATE members SET merged_into = %s, merged_at = now() WHERE id = %s AND merged_into IS NULL",
            (survivor, merged),
        )
        await conn.execute("UPDATE member_identities SET member_id = %s WHERE member_id = %s", (survivor, merged))
        await conn.execute(
            "UPDATE member_tags t SET member_id = %s WHERE member_id = %s AND NOT EXISTS"
            " (SELECT 1 FROM member_tags s WHERE s.member_id = %s AND s.tag_id = t.tag_id)",
            (survivor, merged, survivor),
        )
    for member_id in rng.sample(ids, 20):
        await conn.execute(
            "UPDATE member_tags SET expires_at = now() - interval '1 second' WHERE member_id = %s", [member_id]
        )
    for member_id in rng.sample(ids, 30):
        await _tag(conn, brand_id, member_id, rng.choice(sorted(TAGS)), None)
    for member_id in rng.sample(ids, 30):
        await conn.execute(
            "UPDATE members SET points_balance = %s, tier = %s, city = %s WHERE id = %s",
            (_points(rng), rng.choice(TIERS), rng.choice(CITIES), member_id),
        )
    for member_id in rng.sample(ids, 20):
        await _insert_orders(conn, brand_id, member_id, [_moment(rng, TODAY - timedelta(days=100), TODAY)])
    await conn.execute("DELETE FROM member_identities WHERE member_id = ANY(%s)", [rng.sample(ids, 10)])
    consent_rng = random.Random(SEED + 2)  # the rest of the changes stay what they were
    for member_id in consent_rng.sample(ids, 40):  # grants, withdrawals, survivors and merged-away ones
        await _consents(conn, brand_id, member_id, consent_rng)
    await conn.execute("DELETE FROM member_consents WHERE member_id = ANY(%s)", [consent_rng.sample(ids, 10)])
    await _insert_members(conn, brand_id, range(CHANGED_FROM + MEMBERS, CHANGED_FROM + MEMBERS + 40), rng)


@pytest.fixture(scope="module")
async def changed(pool: AsyncConnectionPool[Any]) -> Indexed:
    brand_id = await _seed(pool, CHANGED_FROM)
    await build(pool, brand_id)
    built_at = (await _apply(pool, brand_id)).built_at
    rng = random.Random(SEED + 1)
    async with pool.connection() as conn, conn.transaction():
        await _change_everything(conn, brand_id, rng)
        # Expires with no write at all: only the applier's sweep can notice.
        await conn.execute(
            "UPDATE member_tags SET expires_at = now() + interval '1 second' WHERE member_id = ANY(%s)",
            [rng.sample(range(CHANGED_FROM, CHANGED_FROM + MEMBERS), 10)],
        )
    await _apply(pool, brand_id)
    await asyncio.sleep(1.2)
    after = await _apply(pool, brand_id)
    assert after.built_at == built_at  # deltas only, never a rebuild
    assert after.pending == 0
    return await _indexed(pool, brand_id)


async def _three_ways(pool: AsyncConnectionPool[Any], indexed: Indexed, tree: Node) -> None:
    bound = bind(tree, indexed.brand.catalog)
    expected = {i for i, facts in indexed.facts.items() if facts["live"] and evaluate(bound, facts, TODAY)}
    async with pool.connection() as conn:
        bitmap = await engine.member_ids(conn, indexed.brand, bound, TODAY)
        count = await engine.count(conn, indexed.brand, bound, TODAY)
        rows = await row_compiled(conn, indexed.brand, bound)
    assert sorted(expected) == bitmap.tolist()
    assert set(rows) == expected
    assert count == len(expected)


async def row_compiled(conn: AsyncConnection[Any], brand: BrandCatalog, bound: Bound) -> list[int]:
    m = members.alias("m")
    where = compile_rows(expand_derived(bound, brand.lifecycle, brand.rfm), MemberRowFacts(m), TODAY)
    query = Query(sa.select(m.c.id).where(live_members(m), where))
    return [row["id"] for row in await query.all(conn, brand_id=brand.brand_id, today=TODAY, tz=brand.timezone)]


_examples = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_examples
@given(tree=valid_trees)
async def test_three_implementations_agree_after_a_build(
    pool: AsyncConnectionPool[Any], built: Indexed, tree: Node
) -> None:
    await _three_ways(pool, built, tree)


@_examples
@given(tree=valid_trees)
async def test_three_implementations_agree_after_deltas(
    pool: AsyncConnectionPool[Any], changed: Indexed, tree: Node
) -> None:
    await _three_ways(pool, changed, tree)


async def test_data_crosses_a_chunk_boundary_and_has_every_kind_of_member(built: Indexed) -> None:
    live = [facts for facts in built.facts.values() if facts["live"]]
    assert {facts["id"] // CHUNK for facts in live} == {40, 41}
    assert {facts["lifecycle"] for facts in live} == {"introduction", "growth", "mature", "at_risk", "churned"}


async def test_deltas_leave_exactly_the_rows_a_fresh_build_writes(
    pool: AsyncConnectionPool[Any], changed: Indexed
) -> None:
    merged = [facts for facts in changed.facts.values() if not facts["live"]]
    assert merged
    incremental, fresh = await rows_now_and_after_a_build(pool, changed.brand.brand_id)
    assert incremental == fresh


_EDGE_TERMS = [
    *(f"age {op} {n}" for op in ("=", "!=", "<", "<=", ">", ">=") for n in (-1, 0, 5, 20, 40, 41, 60, 74, 75)),
    *(f"days_since_last_purchase {op} {n}" for op in ("=", "<", ">=") for n in (-1, *_EDGES, 500, 900)),
    *(f"orders_365d {op} {n}" for op in ("=", "!=", "<", ">=") for n in (-1, 0, 1, 3, 4, 5, 7, 8)),
    *(f"last_purchase WITHIN {n}{unit}" for n in (0, 1, 30, 120, 365) for unit in ("d", "w")),
    *(f"last_purchase WITHIN {n}{unit}" for n in (0, 1, 4, 12) for unit in ("m", "y")),
    "age BETWEEN 20 AND 40",
    "age IN (5, 30, 74)",
    "days_since_last_purchase BETWEEN 30 AND 120",
    "orders_365d BETWEEN 1 AND 4",
    "total_spend >= 50.5 OR total_spend = 0.01",
    "points IN (0, 80) OR growth BETWEEN 10 AND 11",
]


@pytest.mark.parametrize("text", _EDGE_TERMS)
async def test_edges_of_derived_fields(pool: AsyncConnectionPool[Any], built: Indexed, text: str) -> None:
    await _three_ways(pool, built, parse(text))


_BAND_TERMS = [
    *(f"points {op} {b}" for op in (">=", ">", "<", "<=", "=") for b in (100, 1000, 100000)),
    "points BETWEEN 1000 AND 4999",
    "points BETWEEN 200 AND 300 OR points IN (99, 5000)",
    "NOT points >= 500 AND points >= 100",
    # where a digit carries, and digits at 63 (the top of a digit has no D(>= c + 1))
    *(f"points {op} {v}" for op in (">=", ">", "<=", "=") for v in DIGIT_EDGES),
    *(f"growth >= {v}" for v in (63, 64, 4096, 4159)),
    "total_spend >= 40.95 OR total_spend BETWEEN 40.96 AND 41.59",
    # dates where the lowest digit carries (45,376 = 709 * 64 is 2024-03-27), and ages over birthdays
    # that sit where digits carry (_DAY_DIGIT_EDGES)
    *(
        f"last_purchase {op} {(EPOCH + timedelta(days=45_376 + shift)).isoformat()}"
        for shift in (-1, 0, 1)
        for op in (">=", "<", "=")
    ),
    *(f"age {op} {n}" for n in (35, 36) for op in (">=", "=")),
    # dates are stored from the brand's base (its earliest day, rounded down): at, before and past it
    *(f"registered {op} {day}" for op in (">=", "<", "<=") for day in ("2000-01-01", "2024-01-01", "2024-01-02")),
    "last_purchase >= 1990-01-01 OR last_purchase < 1990-01-01",
    "age < 200 AND age >= 0",
    # total_spend's 14 bits are two 7-bit digits (tagquery.bitmap_keys.digit_bits): where they carry
    *(f"total_spend {op} {fen / 100}" for op in (">=", ">", "<=", "=") for fen in (127, 128, 129, 8191, 8192, 10000)),
]


@pytest.mark.parametrize("text", _BAND_TERMS)
async def test_thresholds_at_bands_and_digit_edges_on_a_build_and_after_deltas(
    pool: AsyncConnectionPool[Any], built: Indexed, changed: Indexed, text: str
) -> None:
    """Thresholds at the band boundaries read band keys, elsewhere digits (tests/test_compile_bitmap_keys.py)."""
    await _three_ways(pool, built, parse(text))
    await _three_ways(pool, changed, parse(text))


# RFM (store.audiences.rfm): every score and comparison, and every cell, over the quintiles of each
# brand's own buyers (the changed brand's recomputed after its new orders and merges).
_RFM_TERMS = [
    *(f"rfm_{x} {op} {k}" for x in "rfm" for op in ("=", "!=", "<", ">=") for k in (0, 1, 2, 3, 4, 5, 6)),
    *(f"rfm_{x} {op} {k}" for x in "rfm" for op in ("<=", ">") for k in (1, 3, 5)),
    "rfm_r IN (1, 3, 5)",
    "rfm_m BETWEEN 2 AND 4",
    "NOT rfm_f >= 3",
    *(f"rfm:{cell}" for cell in rfm.CELLS),
    "rfm IN (champions, lost) OR rfm_r = 3",
    "NOT rfm:champions AND lifecycle:mature",
]


@pytest.mark.parametrize("text", _RFM_TERMS)
async def test_rfm_terms_on_a_build_and_after_deltas(
    pool: AsyncConnectionPool[Any], built: Indexed, changed: Indexed, text: str
) -> None:
    await _three_ways(pool, built, parse(text))
    await _three_ways(pool, changed, parse(text))


async def test_every_live_buyer_is_in_exactly_one_rfm_cell(built: Indexed, changed: Indexed) -> None:
    for indexed in (built, changed):
        live = [facts for facts in indexed.facts.values() if facts["live"]]
        buyers = [facts for facts in live if facts["last_purchase"] is not None]
        assert buyers
        assert len(buyers) < len(live)
        assert all(facts["rfm"] is None for facts in live if facts["last_purchase"] is None)
        cells = {cell: _expected(indexed, bind(parse(f"rfm:{cell}"), indexed.brand.catalog)) for cell in rfm.CELLS}
        for facts in buyers:
            assert [cell for cell, ids in cells.items() if facts["id"] in ids] == [facts["rfm"]]
        assert len({facts["rfm"] for facts in buyers}) >= 6  # the data spreads over the grid


async def test_a_count_in_two_halves_adds_up(
    pool: AsyncConnectionPool[Any], changed: Indexed, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large brands count their chunks in two halves on two connections (store.audiences.engine.count);
    this brand spans chunks 50 and 51, so split it from two chunks on."""
    monkeypatch.setattr(engine, "SPLIT_CHUNKS", 2)
    halves: list[dict[str, int]] = []
    run = engine.run_pivot

    async def spy(*args: Any, **chunks: Any) -> Any:
        halves.append(chunks)
        return await run(*args, **chunks)

    monkeypatch.setattr(engine, "run_pivot", spy)
    assert changed.brand.chunks == (50, 51)
    for text in ("tag:price_sensitive OR points >= 40", "NOT tag:churn_risk", "points >= 1000 AND age >= 30"):
        bound = bind(parse(text), changed.brand.catalog)
        async with pool.connection() as conn:
            assert await engine.count(conn, changed.brand, bound, TODAY, pool=pool) == len(_expected(changed, bound))
    assert halves == [{"to_chunk": 51}, {"from_chunk": 51}] * 3


def _expected(indexed: Indexed, bound: Bound) -> set[int]:
    return {i for i, facts in indexed.facts.items() if facts["live"] and evaluate(bound, facts, TODAY)}


@pytest.mark.parametrize("by", engine.BREAKDOWNS)
async def test_breakdown_counts_each_value_from_bitmaps(
    pool: AsyncConnectionPool[Any], changed: Indexed, by: str
) -> None:
    bound = bind(parse("NOT tag:churn_risk OR points >= 40"), changed.brand.catalog)
    chosen = [changed.facts[i] for i in _expected(changed, bound)]
    async with pool.connection() as conn:
        total, counts = await engine.breakdown(conn, changed.brand, bound, TODAY, by)
    assert total == len(chosen)
    for value, n in counts.items():
        assert n == sum(value in f[by] if isinstance(f[by], set) else f[by] == value for f in chosen), value


async def test_funnel_counts_after_each_and_operand(pool: AsyncConnectionPool[Any], changed: Indexed) -> None:
    text = "tier IN (gold, platinum, diamond) AND NOT tag:churn_risk AND (channel:tmall OR age >= 30)"
    bound = bind(parse(text), changed.brand.catalog)
    async with pool.connection() as conn:
        steps = await engine.funnel(conn, changed.brand, bound, TODAY)
    assert isinstance(bound, BoundAnd)
    live = sum(f["live"] for f in changed.facts.values())
    prefixes = [BoundAnd(bound.operands[: n + 1]) for n in range(len(bound.operands))]
    expected = [live, *(len(_expected(changed, prefix)) for prefix in prefixes)]
    assert [step.count for step in steps] == expected
    assert [step.removed for step in steps] == [0, *(a - b for a, b in itertools.pairwise(expected))]
    assert [engine.is_exclusion(step) for step in steps] == [False, False, True, False]


async def test_sample_pages_through_the_audience_in_id_order(pool: AsyncConnectionPool[Any], changed: Indexed) -> None:
    bound = bind(parse("NOT tag:likes_live"), changed.brand.catalog)
    seen: list[int] = []
    async with pool.connection() as conn:
        while page := await engine.sample(conn, changed.brand, bound, TODAY, first=50, after=seen[-1] if seen else 0):
            seen += page
    assert seen == sorted(_expected(changed, bound))
    assert {member_id >> 16 for member_id in seen} == {50, 51}


async def test_why_member_gives_every_node_its_value(pool: AsyncConnectionPool[Any], changed: Indexed) -> None:
    bound = bind(
        parse("(tag:price_sensitive OR lifecycle:mature) AND NOT (age < 30 AND city:上海)"), changed.brand.catalog
    )
    matching = _expected(changed, bound)
    async with pool.connection() as conn:
        for member_id, facts in list(changed.facts.items())[:60]:
            why = await engine.why_member(conn, changed.brand, bound, TODAY, member_id)
            assert why.matches == (member_id in matching)
            assert why.live == facts["live"]
            stack = [why.tree]
            while stack:
                node = stack.pop()
                assert node.value == evaluate(node.node, facts, TODAY)
                stack.extend(node.children)
        with pytest.raises(DomainError):
            await engine.why_member(conn, changed.brand, bound, TODAY, 1)


async def test_a_stale_catalog_still_counts_right_when_slices_grew(
    pool: AsyncConnectionPool[Any], changed: Indexed
) -> None:
    stale = dataclasses.replace(changed.brand, encoding=Encoding({**changed.brand.encoding.widths, "points": 3}))
    bound = bind(parse("points >= 5 AND points < 150000"), changed.brand.catalog)
    async with pool.connection() as conn:
        assert await engine.count(conn, stale, bound, TODAY) == len(_expected(changed, bound))

"""Purchase behaviour terms (issue 15): the bitmap compiler, the row compiler and the reference
evaluator agree, after a full build and after deltas (new orders with lines, refunds, merges and an
unmerge), and the delta-maintained index holds exactly the rows a fresh build writes.

The data puts purchases on the edges of every window (N - 1, N, N + 1 days before TODAY, at a random
local time in the brand's zone, Asia/Shanghai), several orders per member and several lines per
order, amounts with cents and exactly on the spend steps, partial and full refunds (which lower
spend, never a count), and members who never ordered. The evaluator's facts are computed here in
Python from plain rows, not by store.audiences.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from store.audiences import engine
from store.audiences.catalogs import BrandCatalog, load_catalog
from store.audiences.deltas import apply_brand
from store.audiences.facts import MemberRowFacts, expand_derived, live_members
from store.sql import Query
from store.tables import members
from tagquery import bind, evaluate, parse
from tagquery.ast import Between, Compare, Dimension, In, Node, Op, Unit, Within
from tagquery.catalog import SPEND_STEPS, WINDOWS, orders_field, spend_field
from tagquery.compile_rows import compile_rows
from tagquery.evaluate import Purchase
from tests.conftest import new_brand
from tests.index_builds import build, rows_now_and_after_a_build
from tests.tagquery.strategies import TODAY, trees
from tests.test_audience_differential import brand_by_code_in, load_facts, row_compiled

ZONE = ZoneInfo("Asia/Shanghai")
CHUNK = 1 << 16
BUILT_FROM = 61 * CHUNK - 80  # a chunk boundary of its own (tests/test_audience_differential.py uses 40-51)
CHANGED_FROM = 71 * CHUNK - 80
MEMBERS = 160
SEED = 20261207
# "tea" is a category and a sku of snacks too: `bought:tea` is either (store.audiences.purchases).
CATEGORIES = {"stage3_formula": ("S3-800", "S3-400"), "snacks": ("SN-PUFF", "SN-BAR", "tea"), "tea": ("TEA-GREEN",)}
PRODUCTS = sorted({*CATEGORIES, *(sku for skus in CATEGORIES.values() for sku in skus)})
CHANNELS = ("tmall", "jd", "douyin", "pos")
EDGES = sorted({max(0, n + shift) for n in WINDOWS for shift in (-1, 0, 1)} | {0, 1, 2, 7})
STEP_AMOUNTS = [step + shift for step in SPEND_STEPS[:9] for shift in (Decimal("-0.01"), 0, Decimal("0.01"))]


@dataclasses.dataclass
class Indexed:
    brand: BrandCatalog
    facts: dict[int, dict[str, Any]]


def _paid(rng: random.Random) -> datetime:
    """Half on the edge of a window at a random local time, the rest anywhere in 500 days."""
    day = TODAY - timedelta(days=rng.choice(EDGES) if rng.random() < 0.5 else rng.randrange(500))
    local = datetime(day.year, day.month, day.day, tzinfo=ZONE) + timedelta(seconds=rng.randrange(86_400))
    return local.astimezone(UTC)


def _amount(rng: random.Random) -> Decimal:
    if rng.random() < 0.3:
        return max(Decimal("0.01"), rng.choice(STEP_AMOUNTS))
    return Decimal(rng.randrange(1, 60_000)) / 100


def _lines(rng: random.Random, amount: Decimal) -> list[tuple[str, str, int, Decimal]]:
    """0-4 lines of random products whose amounts add up to at most the order's (cents included)."""
    left = int(amount * 100)
    lines = []
    for _ in range(rng.choice((0, 1, 1, 2, 3, 4))):
        category = rng.choice(sorted(CATEGORIES))
        share = rng.randrange(left + 1) if rng.random() < 0.8 else left
        left -= share
        lines.append((rng.choice(CATEGORIES[category]), category, rng.randrange(1, 4), Decimal(share) / 100))
    return lines


async def _order(conn: AsyncConnection[Any], brand_id: int, member_id: int, rng: random.Random, n: int) -> None:
    amount, paid = _amount(rng), _paid(rng)
    posting = await conn.execute(
        "INSERT INTO points_postings (brand_id, member_id, idempotency_key, operation, fingerprint, actor)"
        " VALUES (%s, %s, %s, 'order', '\\x00', 'test') RETURNING id",
        (brand_id, member_id, f"p-{member_id}-{n}"),
    )
    row = await posting.fetchone()
    assert row is not None
    refund = rng.random()
    refunded = (
        Decimal(0) if refund < 0.6 else amount if refund < 0.75 else Decimal(rng.randrange(int(amount * 100))) / 100
    )
    order = await conn.execute(
        "INSERT INTO orders (brand_id, member_id, channel, external_order_id, amount, refunded, paid_at, posting_id,"
        " points_earned, growth_earned) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 0, 0) RETURNING id",
        (brand_id, member_id, rng.choice(CHANNELS), f"o-{member_id}-{n}", amount, refunded, paid, row[0]),
    )
    order_row = await order.fetchone()
    assert order_row is not None
    for line, (sku, category, quantity, share) in enumerate(_lines(rng, amount), start=1):
        await conn.execute(
            "INSERT INTO order_lines (order_id, line, sku, category, quantity, amount) VALUES (%s, %s, %s, %s, %s, %s)",
            (order_row[0], line, sku, category, quantity, share),
        )


async def _members(conn: AsyncConnection[Any], brand_id: int, ids: range, rng: random.Random) -> None:
    await conn.execute(
        "SELECT setval(pg_get_serial_sequence('members', 'id'),"
        " greatest(nextval(pg_get_serial_sequence('members', 'id')), %s))",
        (ids[-1],),
    )
    for member_id in ids:
        await conn.execute(
            "INSERT INTO members (id, brand_id, tier, registered_at) VALUES (%s, %s, 'silver', %s)",
            (member_id, brand_id, datetime(2024, 1, 1, tzinfo=UTC)),
        )
        for n in range(rng.choice((0, 0, 1, 2, 3, 5, 8))):
            await _order(conn, brand_id, member_id, rng, n)


async def _seed(pool: AsyncConnectionPool[Any], first_id: int) -> int:
    brand_id: int = (await brand_by_code_in(pool, await new_brand(pool)))["id"]
    async with pool.connection() as conn, conn.transaction():
        await _members(conn, brand_id, range(first_id, first_id + MEMBERS), random.Random(SEED))
        await _floored(conn, brand_id, first_id + MEMBERS + 50)
        # Erased members keep their orders and lines (store.members.erasure): none of it may reach a key.
        await conn.execute(
            "UPDATE members SET erased_at = now() WHERE id IN (SELECT DISTINCT o.member_id FROM orders o"
            " JOIN order_lines l ON l.order_id = o.id WHERE o.brand_id = %s ORDER BY 1 LIMIT 3)",
            (brand_id,),
        )
    return brand_id


async def _floored(conn: AsyncConnection[Any], brand_id: int, member_id: int) -> None:
    """A member whose snacks spend is 49.99 when each refunded line is floored to the fen (50.00 if
    rounded): a line of 50.00 in an order of 100.00 with 0.03 refunded nets 49.985, floored 49.98,
    and another order adds 0.01 (`spend_365d:snacks >= 50` tells the two apart)."""
    await conn.execute(  # an explicit id: the sequence moves past it, so later members never collide
        "SELECT setval(pg_get_serial_sequence('members', 'id'),"
        " greatest(nextval(pg_get_serial_sequence('members', 'id')), %s))",
        (member_id,),
    )
    await conn.execute(
        "INSERT INTO members (id, brand_id, tier, registered_at) VALUES (%s, %s, 'silver', %s)",
        (member_id, brand_id, datetime(2024, 1, 1, tzinfo=UTC)),
    )
    paid = datetime(TODAY.year, TODAY.month, TODAY.day, 12, tzinfo=ZONE) - timedelta(days=10)
    for n, (amount, refunded, line) in enumerate(
        ((Decimal(100), Decimal("0.03"), Decimal(50)), (Decimal(10), 0, Decimal("0.01")))
    ):
        posting = await conn.execute(
            "INSERT INTO points_postings (brand_id, member_id, idempotency_key, operation, fingerprint, actor)"
            " VALUES (%s, %s, %s, 'order', '\\x00', 'test') RETURNING id",
            (brand_id, member_id, f"floored-{n}"),
        )
        posting_id = (await posting.fetchone() or (0,))[0]
        order = await conn.execute(
            "INSERT INTO orders (brand_id, member_id, channel, external_order_id, amount, refunded, paid_at,"
            " posting_id, points_earned, growth_earned) VALUES (%s, %s, 'pos', %s, %s, %s, %s, %s, 0, 0) RETURNING id",
            (brand_id, member_id, f"floored-{n}", amount, refunded, paid, posting_id),
        )
        order_id = (await order.fetchone() or (0,))[0]
        await conn.execute(
            "INSERT INTO order_lines (order_id, line, sku, category, quantity, amount)"
            " VALUES (%s, 1, 'SN-BAR', 'snacks', 1, %s)",
            (order_id, line),
        )


async def _apply(pool: AsyncConnectionPool[Any], brand_id: int) -> None:
    async with pool.connection() as conn:
        assert await apply_brand(conn, brand_id, wait=True) is not None


async def _purchase_facts(pool: AsyncConnectionPool[Any], brand_id: int) -> dict[int, dict[str, Any]]:
    """Each member's purchase facts, from plain rows, by the rules of store.audiences.purchases."""
    async with pool.connection() as conn:
        orders = await (
            await conn.execute(
                "SELECT id, member_id, channel, paid_at, amount, refunded FROM orders WHERE brand_id = %s"
                " ORDER BY paid_at, id",
                (brand_id,),
            )
        ).fetchall()
        lines = await (
            await conn.execute(
                "SELECT l.order_id, l.sku, l.category, l.amount FROM order_lines l JOIN orders o ON o.id = l.order_id"
                " WHERE o.brand_id = %s",
                (brand_id,),
            )
        ).fetchall()
    by_order: dict[int, list[tuple[str, str, Decimal]]] = {}
    for order_id, sku, category, amount in lines:
        by_order.setdefault(order_id, []).append((sku, category, amount))
    facts: dict[int, dict[str, Any]] = {}
    for order_id, member_id, channel, paid_at, amount, refunded in orders:
        member = facts.setdefault(member_id, {"purchases": [], "bought": {}, "first_channel": channel})
        day = paid_at.astimezone(ZONE).date()
        member.setdefault("first_purchase", day)
        total, net = int(amount * 100), int((amount - refunded) * 100)
        categories: dict[str, Decimal] = {}
        for sku, category, share in by_order.get(order_id, []):
            categories[category] = categories.get(category, Decimal(0)) + Decimal(int(share * 100) * net // total) / 100
            for product in (sku, category):
                member["bought"][product] = max(member["bought"].get(product, day), day)
        member["purchases"].append(Purchase(day, Decimal(net) / 100, categories))
    return facts


async def _indexed(pool: AsyncConnectionPool[Any], brand_id: int) -> Indexed:
    async with pool.connection() as conn:
        brand = await load_catalog(conn, brand_id)
    facts = await load_facts(pool, brand_id)
    bought = await _purchase_facts(pool, brand_id)
    for member_id, member in facts.items():
        member.update(bought.get(member_id, {"purchases": [], "bought": {}, "first_channel": None}))
        member.setdefault("first_purchase", None)
    return Indexed(brand, facts)


@pytest.fixture(scope="module")
async def built(pool: AsyncConnectionPool[Any]) -> Indexed:
    brand_id = await _seed(pool, BUILT_FROM)
    await build(pool, brand_id)
    return await _indexed(pool, brand_id)


async def _change(conn: AsyncConnection[Any], brand_id: int, rng: random.Random) -> None:
    ids = list(range(CHANGED_FROM, CHANGED_FROM + MEMBERS))
    for merged, survivor in zip(rng.sample(ids[:80], 6), rng.sample(ids[80:], 6), strict=True):
        await conn.execute("UPDATE members SET merged_into = %s, merged_at = now() WHERE id = %s", (survivor, merged))
        await conn.execute("UPDATE orders SET member_id = %s WHERE member_id = %s", (survivor, merged))
    # An unmerge: the member is live again and takes its orders back.
    merged, survivor = ids[0], ids[150]
    await conn.execute("UPDATE members SET merged_into = %s, merged_at = now() WHERE id = %s", (survivor, merged))
    moved = await (await conn.execute("SELECT id FROM orders WHERE member_id = %s", (merged,))).fetchall()
    await conn.execute("UPDATE orders SET member_id = %s WHERE member_id = %s", (survivor, merged))
    await conn.execute("UPDATE members SET merged_into = NULL, merged_at = NULL WHERE id = %s", (merged,))
    await conn.execute("UPDATE orders SET member_id = %s WHERE id = ANY(%s)", (merged, [row[0] for row in moved]))
    for n, member_id in enumerate(rng.sample(ids[80:], 25)):  # new orders, some with lines
        await _order(conn, brand_id, member_id, rng, 100 + n)
    for member_id in rng.sample(ids, 25):  # refunds: full and partial, to the cent
        await conn.execute(
            "UPDATE orders SET refunded = CASE WHEN id %% 2 = 0 THEN amount ELSE round(amount * 0.37, 2) END"
            " WHERE member_id = %s AND refunded = 0",
            (member_id,),
        )
    await _members(conn, brand_id, range(CHANGED_FROM + MEMBERS, CHANGED_FROM + MEMBERS + 20), rng)


@pytest.fixture(scope="module")
async def changed(pool: AsyncConnectionPool[Any]) -> Indexed:
    brand_id = await _seed(pool, CHANGED_FROM)
    await _apply(pool, brand_id)
    async with pool.connection() as conn:
        built_at = (
            await (
                await conn.execute("SELECT built_at FROM audience_index_state WHERE brand_id = %s", (brand_id,))
            ).fetchone()
            or (None,)
        )[0]
        async with conn.transaction():
            await _change(conn, brand_id, random.Random(SEED + 1))
    await _apply(pool, brand_id)
    async with pool.connection() as conn:
        after = await (
            await conn.execute("SELECT built_at FROM audience_index_state WHERE brand_id = %s", (brand_id,))
        ).fetchone()
    assert after is not None
    assert after[0] == built_at  # deltas only, never a rebuild
    return await _indexed(pool, brand_id)


async def _three_ways(pool: AsyncConnectionPool[Any], indexed: Indexed, tree: Node) -> None:
    bound = bind(tree, indexed.brand.catalog)
    expected = {i for i, facts in indexed.facts.items() if facts["live"] and evaluate(bound, facts, TODAY)}
    async with pool.connection() as conn:
        bitmap = await engine.member_ids(conn, indexed.brand, bound, TODAY)
        count = await engine.count(conn, indexed.brand, bound, TODAY)
        rows = await row_compiled(conn, indexed.brand, bound)
    assert sorted(expected) == bitmap.tolist(), tree
    assert set(rows) == expected, tree
    assert count == len(expected)


# Terms, with values near the data's: windows on their edges, counts 0-6, every spend step.
_windows = st.tuples(st.sampled_from([*EDGES, 3, 12]), st.just(Unit.DAY)) | st.tuples(
    st.integers(0, 14), st.sampled_from((Unit.WEEK, Unit.MONTH, Unit.YEAR))
)
_categories = st.none() | st.sampled_from(sorted(CATEGORIES))
_dates = st.sampled_from(EDGES).map(lambda n: (TODAY - timedelta(days=n)).isoformat())
_ops = st.sampled_from(Op)
purchase_terms: st.SearchStrategy[Node] = st.one_of(
    st.builds(Dimension, st.just("bought"), st.sampled_from(PRODUCTS), st.none() | _windows),
    st.builds(
        In,
        st.just("bought"),
        st.lists(st.sampled_from(PRODUCTS), min_size=1, max_size=3).map(tuple),
        st.none(),
        st.none() | _windows,
    ),
    st.builds(Dimension, st.just("first_channel"), st.sampled_from(CHANNELS)),
    st.builds(Compare, st.just("first_purchase"), _ops, _dates),
    _windows.map(lambda window: Within("first_purchase", *window)),
    st.builds(Between, st.just("first_purchase"), _dates, _dates),
    st.builds(
        Compare, st.sampled_from([orders_field(n) for n in WINDOWS]), _ops, st.integers(-1, 6).map(str), _categories
    ),
    st.builds(
        In,
        st.sampled_from([orders_field(n) for n in WINDOWS]),
        st.lists(st.integers(0, 5).map(str), min_size=1, max_size=3).map(tuple),
        _categories,
    ),
    st.builds(
        Between,
        st.sampled_from([orders_field(n) for n in WINDOWS]),
        st.integers(0, 4).map(str),
        st.integers(0, 6).map(str),
        _categories,
    ),
    st.builds(
        Compare,
        st.sampled_from([spend_field(n) for n in WINDOWS]),
        st.sampled_from((Op.GTE, Op.LT)),
        st.sampled_from(SPEND_STEPS).map(str),
        _categories,
    ),
)
_examples = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@_examples
@given(tree=trees(purchase_terms, max_leaves=5))
async def test_three_implementations_agree_after_a_build(
    pool: AsyncConnectionPool[Any], built: Indexed, tree: Node
) -> None:
    await _three_ways(pool, built, tree)


@_examples
@given(tree=trees(purchase_terms, max_leaves=5))
async def test_three_implementations_agree_after_deltas(
    pool: AsyncConnectionPool[Any], changed: Indexed, tree: Node
) -> None:
    await _three_ways(pool, changed, tree)


EDGE_TERMS = [
    *(f"orders_{n}d {op} {k}" for n in WINDOWS for op in (">=", "=", "<") for k in (1, 2)),
    *(f"spend_{n}d >= {step}" for n in WINDOWS for step in (1, 50, 100, 500)),
    *(f"spend_{n}d:{c} < 100" for n in (30, 365) for c in CATEGORIES),
    *(f"bought:{p} WITHIN {n}d" for p in ("snacks", "S3-800") for n in (29, 30, 31, 90, 365)),
    *(f"first_purchase WITHIN {n}d" for n in (0, 1, 30, 90)),
    "bought:tea AND NOT bought:tea WITHIN 30d",
    "NOT first_purchase >= 1900-01-01",  # never ordered
    "orders_365d >= 1 AND spend_365d < 1",  # ordered, everything refunded
    "spend_365d:snacks >= 50 AND spend_30d:snacks < 100",  # a line's refunded share floored (_floored)
]


@pytest.mark.parametrize("text", EDGE_TERMS)
async def test_window_edges_on_a_build_and_after_deltas(
    pool: AsyncConnectionPool[Any], built: Indexed, changed: Indexed, text: str
) -> None:
    await _three_ways(pool, built, parse(text))
    await _three_ways(pool, changed, parse(text))


async def test_the_data_has_every_kind_of_purchase(built: Indexed, changed: Indexed) -> None:
    for indexed in (built, changed):
        live = [facts for facts in indexed.facts.values() if facts["live"]]
        purchases = [p for facts in live for p in facts["purchases"]]
        assert any(not facts["purchases"] for facts in live)
        assert sum(len(facts["purchases"]) > 2 for facts in live) > 10
        assert any(len(p.categories) > 1 for p in purchases)
        assert any(p.spend == 0 for p in purchases)  # fully refunded
        assert any(p.spend % 1 for p in purchases)  # cents
        assert {(TODAY - p.day).days for p in purchases} >= {29, 30, 31, 89, 90, 91, 364, 365, 366}
        assert set(indexed.brand.catalog.dimensions["bought"].values) == set(PRODUCTS)
        erased = [facts for facts in indexed.facts.values() if facts["erased"]]
        assert len(erased) == 3
        assert all(facts["purchases"] for facts in erased)  # their orders and lines kept
    assert sum(not facts["live"] and not facts["erased"] for facts in changed.facts.values()) == 6  # merged


async def test_deltas_leave_exactly_the_rows_a_fresh_build_writes(
    pool: AsyncConnectionPool[Any], changed: Indexed
) -> None:
    incremental, fresh = await rows_now_and_after_a_build(pool, changed.brand.brand_id)
    assert any(row[0].startswith(("has:buy.", "first_channel:")) for row in fresh)
    assert incremental == fresh


async def test_a_refund_alone_moves_spend_through_the_queue(pool: AsyncConnectionPool[Any]) -> None:
    """A refund changes no member column: the orders trigger (migration 0015) queues the purchase family."""
    brand_id = await _seed(pool, 81 * CHUNK)
    await _apply(pool, brand_id)
    async with pool.connection() as conn:
        found = await (
            await conn.execute(
                "SELECT member_id FROM orders WHERE brand_id = %s AND refunded = 0 ORDER BY amount DESC LIMIT 1",
                (brand_id,),
            )
        ).fetchone()
        assert found is not None
        await conn.execute("UPDATE orders SET refunded = amount WHERE member_id = %s", (found[0],))
        queued = await (
            await conn.execute("SELECT families FROM audience_changes WHERE brand_id = %s", (brand_id,))
        ).fetchall()
    assert queued
    assert all(row[0] & 65536 for row in queued)
    await _apply(pool, brand_id)
    indexed = await _indexed(pool, brand_id)
    for text in ("spend_365d >= 1", "spend_30d >= 50", "orders_365d >= 1"):
        await _three_ways(pool, indexed, parse(text))
    assert not evaluate(bind(parse("spend_365d >= 1"), indexed.brand.catalog), indexed.facts[found[0]], TODAY)


@pytest.mark.parametrize("later", [1, 30, 91, 200])
async def test_windows_move_with_the_day_asked_without_a_rebuild(
    pool: AsyncConnectionPool[Any], built: Indexed, later: int
) -> None:
    """The same index, asked on later days: every window is computed against the day of the query."""
    day = TODAY + timedelta(days=later)
    for text in ("orders_30d >= 1", "spend_90d >= 100", "bought:snacks WITHIN 90d", "first_purchase WITHIN 365d"):
        bound = bind(parse(text), built.brand.catalog)
        expected = {i for i, facts in built.facts.items() if facts["live"] and evaluate(bound, facts, day)}
        async with pool.connection() as conn:
            assert (await engine.member_ids(conn, built.brand, bound, day)).tolist() == sorted(expected), text
            assert set(await _rows_on(conn, built.brand, bound, day)) == expected, text
        before = {i for i, facts in built.facts.items() if facts["live"] and evaluate(bound, facts, TODAY)}
        if text.startswith("orders_30d") and later >= 30:
            assert expected < before  # nobody ordered after TODAY: the window emptied out


async def _rows_on(conn: AsyncConnection[Any], brand: BrandCatalog, bound: Any, day: date) -> list[int]:
    m = members.alias("m")
    where = compile_rows(expand_derived(bound, brand.lifecycle, brand.rfm), MemberRowFacts(m), day)
    query = Query(sa.select(m.c.id).where(live_members(m), where))
    return [row["id"] for row in await query.all(conn, brand_id=brand.brand_id, today=day, tz=brand.timezone)]


@pytest.mark.parametrize("refused", [0, 1, 2, None])
async def test_a_build_writes_the_same_rows_however_many_reading_connections_it_gets(
    pool: AsyncConnectionPool[Any], built: Indexed, monkeypatch: pytest.MonkeyPatch, refused: int | None
) -> None:
    """A rebuild reads on two other connections when it can (the lines' keys written first), on one
    beside its own when the server refuses the other, on its own when it refuses both; `refused`
    None: one connection asked for. Every way writes the rows the three-way tests checked."""
    from store.audiences import bitmaps

    opened = bitmaps._reader

    @contextlib.asynccontextmanager
    async def reader(conn: AsyncConnection[Any]) -> AsyncIterator[AsyncConnection[Any] | None]:
        nonlocal refused
        if refused:
            refused -= 1
            yield None  # as when the server is at its connection limit
            return
        async with opened(conn) as other:
            yield other

    monkeypatch.setattr(bitmaps, "_reader", reader)
    brand_id = built.brand.brand_id
    rows = "SELECT key, chunk, bits FROM audience_bitmaps WHERE brand_id = %s ORDER BY 1, 2"
    async with pool.connection() as conn:
        before = await (await conn.execute(rows, (brand_id,))).fetchall()
        async with conn.transaction(force_rollback=True):
            await bitmaps.rebuild(conn, brand_id, parallel_reads=refused is not None)
            after = await (await conn.execute(rows, (brand_id,))).fetchall()
    assert after == before
    assert any(key.startswith("has:buy.order.") for key, _, _ in after)

"""The demo's opening-balance ledger (`--ledger opening`) and its loads on two connections."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from demo import loading as demo
from demo import opening as demo_opening
from demo.build import DemoSummary, build_demo
from demo.loading import Ledger
from store.ledger import points
from store.members.phones import PhoneVault
from tests.conftest import GraphQL
from tests.test_demo import INCONSISTENT_MEMBERS, SNAPSHOT, WRONG_DRAWS, WRONG_RUNNING_BALANCES, _cli, rows, value


async def build(
    database_url: str, vault: PhoneVault, members: int, ledger: Ledger, seed: int = 7, replace: bool = True
) -> DemoSummary:
    return await asyncio.to_thread(
        build_demo, database_url, vault, members=members, seed=seed, replace=replace, ledger=ledger, tags=True
    )


# Ids relative to the demo's first ones (first.id), so that two builds (fresh ids each) compare equal.
ORDERS = """
WITH first AS (SELECT min(id) AS id FROM members WHERE brand_id = ANY(%(demo)s))
SELECT o.member_id - first.id, o.channel, o.amount, o.refunded, o.paid_at, o.points_earned, o.growth_earned,
       o.points_reversed, o.growth_reversed
FROM orders o, first WHERE o.brand_id = ANY(%(demo)s) ORDER BY o.member_id, o.paid_at, o.id
"""
# What each member still holds per expiry date: the points the expiry job and expiringPoints read.
OPEN_POINTS = """
WITH first AS (SELECT min(id) AS id FROM members WHERE brand_id = ANY(%(demo)s))
SELECT l.member_id - first.id, l.expires_at, sum(l.remaining)::bigint FROM points_lots l, first
WHERE l.brand_id = ANY(%(demo)s) AND l.remaining > 0 GROUP BY 1, 2 ORDER BY 1, 2
"""
PURCHASES = """
SELECT first_purchase_at, last_purchase_at FROM members WHERE brand_id = ANY(%(demo)s) ORDER BY brand_id, id
"""
TAGS = """
WITH first AS (SELECT min(id) AS id FROM members WHERE brand_id = ANY(%(demo)s))
SELECT t.member_id - first.id, t.tag_id, t.assigned_at FROM member_tags t, first
WHERE t.brand_id = ANY(%(demo)s) ORDER BY 1, 2
"""
# Buyers without exactly one opening posting, postings of another kind, orders not on their member's one.
WRONG_OPENINGS = """
SELECT 'member', m.id FROM members m LEFT JOIN points_postings p ON p.member_id = m.id
WHERE m.brand_id = ANY(%(demo)s) GROUP BY m.id, m.order_count HAVING count(p.id) <> sign(m.order_count)
UNION ALL
SELECT 'posting', p.id FROM points_postings p WHERE p.brand_id = ANY(%(demo)s)
    AND NOT (p.idempotency_key = 'demo-opening:' || p.member_id AND p.operation = 'adjust' AND p.actor = 'demo')
UNION ALL
SELECT 'order', o.id FROM orders o JOIN points_postings p ON p.id = o.posting_id
WHERE o.brand_id = ANY(%(demo)s) AND p.member_id <> o.member_id
UNION ALL
SELECT 'entry', e.id FROM points_entries e JOIN members m ON m.id = e.member_id
WHERE e.brand_id = ANY(%(demo)s) AND NOT (e.kind = 'adjust' AND e.amount = m.points_balance)
UNION ALL
SELECT 'lot', l.id FROM points_lots l WHERE l.brand_id = ANY(%(demo)s) AND NOT (l.remaining = l.amount
    AND l.expires_at > now() AND l.entry_id = (SELECT e.id FROM points_entries e WHERE e.member_id = l.member_id))
"""


async def test_the_opening_ledger_has_the_full_ledgers_members_orders_and_open_points(
    database_url: str, vault: PhoneVault, pool: AsyncConnectionPool[Any]
) -> None:
    full = await build(database_url, vault, 3000, Ledger.FULL)
    expected = [await rows(pool, query) for query in (SNAPSHOT, ORDERS, OPEN_POINTS, PURCHASES, TAGS)]
    full_rows = await value(pool, "SELECT count(*) FROM points_postings WHERE brand_id = ANY(%(demo)s)")

    opening = await build(database_url, vault, 3000, Ledger.OPENING)

    assert [await rows(pool, query) for query in (SNAPSHOT, ORDERS, OPEN_POINTS, PURCHASES, TAGS)] == expected
    assert opening.orders == full.orders > 3000
    assert await rows(pool, INCONSISTENT_MEMBERS) == []
    assert await rows(pool, WRONG_RUNNING_BALANCES) == []
    assert await rows(pool, WRONG_DRAWS) == []
    assert await rows(pool, WRONG_OPENINGS) == []
    draws = "SELECT count(*) FROM lot_draws d JOIN points_lots l ON l.id = d.lot_id WHERE l.brand_id = ANY(%(demo)s)"
    assert await value(pool, draws) == 0  # the demo's draws; other tests share the database
    buyers = await value(pool, "SELECT count(*) FROM members WHERE brand_id = ANY(%(demo)s) AND order_count > 0")
    assert await value(pool, "SELECT count(*) FROM points_postings WHERE brand_id = ANY(%(demo)s)") == buyers
    assert buyers < full_rows / 3
    # Some members hold points of two expiry years: one lot each, under the one entry.
    assert await value(
        pool,
        "SELECT count(*) FROM (SELECT member_id FROM points_lots WHERE brand_id = ANY(%(demo)s)"
        " GROUP BY member_id HAVING count(*) > 1) AS m",
    )


async def test_opening_balances_are_served_expire_nothing_and_take_a_refund(
    database_url: str, vault: PhoneVault, pool: AsyncConnectionPool[Any], gql: GraphQL
) -> None:
    await build(database_url, vault, 1000, Ledger.OPENING)
    [(member, brand_id, brand, balance, channel, external, earned)] = await rows(
        pool,
        "SELECT m.id, m.brand_id, b.code, m.points_balance, o.channel, o.external_order_id, o.points_earned"
        " FROM members m JOIN brands b ON b.id = m.brand_id JOIN orders o ON o.member_id = m.id"
        " WHERE m.brand_id = ANY(%(demo)s) AND m.points_balance > 0 AND o.refunded = 0 AND o.points_earned > 0"
        " ORDER BY m.points_balance DESC, m.id, o.paid_at DESC LIMIT 1",
    )
    query = (
        "query($id: ID!) { member(id: $id) { pointsBalance pointsHistory(first: 10) { nodes { kind amount note } } } }"
    )
    found = (await gql(query, id=str(member)))["member"]
    assert found == {
        "pointsBalance": balance,
        "pointsHistory": {"nodes": [{"kind": "ADJUST", "amount": balance, "note": demo_opening.NOTE}]},
    }
    demo_brands = {brand_id for (brand_id,) in await rows(pool, "SELECT unnest(%(demo)s::bigint[])")}
    async with pool.connection() as conn, conn.transaction():
        # Other tests leave expired lots in the shared database: only the demo's brands are this test's.
        assert [pair for pair in await _expired_lot_holders(conn) if pair[1] in demo_brands] == []
        assert await points.expire_member(conn, brand_id, member, dt.datetime.now(dt.UTC)) == 0

    refund = """mutation($brand: String!, $channel: String!, $order: String!, $key: String!) {
      refundOrder(brand: $brand, channel: $channel, externalOrderId: $order, idempotencyKey: $key) {
        ... on OrderRefunded { member { pointsBalance } } } }"""
    result = await gql(refund, brand=brand, channel=channel, order=external, key="opening-refund")
    assert result["refundOrder"]["member"]["pointsBalance"] == balance - min(earned, balance)
    assert await rows(pool, INCONSISTENT_MEMBERS) == []
    assert await rows(pool, WRONG_DRAWS) == []


async def _expired_lot_holders(conn: psycopg.AsyncConnection[Any]) -> list[tuple[int, int]]:
    """Every (member, brand) holding expired points now, page by page as the expiry job reads them."""
    now, after, found = dt.datetime.now(dt.UTC), 0, []
    while page := await points.members_with_expired_lots(conn, now, after, 10_000):
        found += page
        after = page[-1][0]
    return found


IDENTITIES = """
WITH first AS (SELECT min(id) AS id FROM members WHERE brand_id = ANY(%(demo)s))
SELECT i.id - (SELECT min(id) FROM member_identities WHERE brand_id = ANY(%(demo)s)), i.member_id - first.id,
       i.channel, i.external_id, i.bound_at
FROM member_identities i, first WHERE i.brand_id = ANY(%(demo)s) ORDER BY i.id
"""
LEDGER_IDS = """
WITH first AS (SELECT min(id) AS id FROM members WHERE brand_id = ANY(%(demo)s))
SELECT 'entry', e.id - (SELECT min(id) FROM points_entries WHERE brand_id = ANY(%(demo)s)), e.member_id - first.id,
       e.amount
FROM points_entries e, first WHERE e.brand_id = ANY(%(demo)s)
UNION ALL
SELECT 'order', o.id - (SELECT min(id) FROM orders WHERE brand_id = ANY(%(demo)s)), o.member_id - first.id,
       o.points_earned
FROM orders o, first WHERE o.brand_id = ANY(%(demo)s)
ORDER BY 1, 2
"""


async def test_a_fresh_load_on_two_connections_builds_what_one_connection_builds(
    database_url: str, vault: PhoneVault, pool: AsyncConnectionPool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo, "BLOCK", 300)  # a dozen blocks, taken by whichever loader is free
    serial = await build(database_url, vault, 3000, Ledger.OPENING)  # a replacement: one connection
    expected = [await rows(pool, query) for query in (SNAPSHOT, IDENTITIES, LEDGER_IDS, TAGS)]
    with psycopg.connect(database_url) as conn, conn.transaction():
        conn.execute("SET LOCAL session_replication_role = replica")
        brands = [brand for (brand,) in conn.execute("SELECT id FROM brands WHERE code IN ('teahouse', 'orchard')")]
        demo._delete_members(conn, brands)
    connections = []
    original = demo._copy_chunk

    def copy_chunk(conn: psycopg.Connection[Any], chunk: Any) -> None:
        connections.append(conn.info.backend_pid)
        original(conn, chunk)

    monkeypatch.setattr(demo, "_copy_chunk", copy_chunk)

    fresh = await build(database_url, vault, 3000, Ledger.OPENING, replace=False)

    assert len(set(connections)) == demo.LOADERS == 2
    assert [await rows(pool, query) for query in (SNAPSHOT, IDENTITIES, LEDGER_IDS, TAGS)] == expected
    assert (fresh.members, fresh.orders, fresh.identities, fresh.tag_assignments) == (
        serial.members,
        serial.orders,
        serial.identities,
        serial.tag_assignments,
    )
    assert await rows(pool, INCONSISTENT_MEMBERS) == []


async def test_the_command_takes_a_ledger_mode(database_url: str, tmp_path: Path) -> None:
    opening = await asyncio.to_thread(
        _cli, database_url, tmp_path, "--members", "300", "--replace", "--ledger", "opening"
    )
    assert opening.returncode == 0, opening.stderr
    both = await asyncio.to_thread(_cli, database_url, tmp_path, "--members", "300", "--points", "--ledger", "opening")
    assert both.returncode == 2
    assert "--points writes the full ledger" in both.stderr
    unknown = await asyncio.to_thread(_cli, database_url, tmp_path, "--members", "300", "--ledger", "some")
    assert unknown.returncode == 2

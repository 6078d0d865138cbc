"""Reads of the ledger, orders and tier history, batched or keyset-paginated."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from psycopg import AsyncConnection
from sqlalchemy.dialects.postgresql import ARRAY

from store.ledger.orders import ORDER_COLUMNS
from store.sql import ZERO, Query, Row
from store.tables import orders, points_entries, points_lots, points_postings, tier_changes

_IDS = sa.bindparam("ids", type_=ARRAY(sa.BigInteger))
_LIMIT = sa.bindparam("limit", type_=sa.Integer)

ENTRY_COLUMNS = (
    points_entries.c.id,
    points_entries.c.posting_id,
    points_entries.c.member_id,
    points_entries.c.kind,
    points_entries.c.amount,
    points_entries.c.balance_after,
    points_entries.c.note,
    points_entries.c.created_at,
)
POSTING_COLUMNS = (
    points_postings.c.id,
    points_postings.c.brand_id,
    points_postings.c.member_id,
    points_postings.c.idempotency_key,
    points_postings.c.operation,
    points_postings.c.channel,
    points_postings.c.reason,
    points_postings.c.actor,
    points_postings.c.reverses_posting_id,
    points_postings.c.created_at,
)

_entries = sa.select(*ENTRY_COLUMNS).order_by(points_entries.c.id.desc()).limit(_LIMIT)
_newest_entries = Query(_entries.where(points_entries.c.member_id == sa.bindparam("member_id")))
_older_entries = Query(
    _entries.where(
        points_entries.c.member_id == sa.bindparam("member_id"),
        points_entries.c.id < sa.bindparam("before_id", type_=sa.BigInteger),
    )
)
_entries_by_posting = Query(
    sa.select(*ENTRY_COLUMNS).where(points_entries.c.posting_id == sa.any_(_IDS)).order_by(points_entries.c.id)
)
_postings_by_id = Query(sa.select(*POSTING_COLUMNS).where(points_postings.c.id == sa.any_(_IDS)))
_orders = sa.select(*ORDER_COLUMNS).order_by(orders.c.paid_at.desc(), orders.c.id.desc()).limit(_LIMIT)
_newest_orders = Query(_orders.where(orders.c.member_id == sa.bindparam("member_id")))
_older_orders = Query(
    _orders.where(
        orders.c.member_id == sa.bindparam("member_id"),
        sa.tuple_(orders.c.paid_at, orders.c.id)
        < sa.tuple_(
            sa.bindparam("before_paid_at", type_=sa.DateTime(timezone=True)),
            sa.bindparam("before_id", type_=sa.BigInteger),
        ),
    )
)
_orders_by_id = Query(sa.select(*ORDER_COLUMNS).where(orders.c.id == sa.any_(_IDS)))
_expiring = Query(
    sa.select(points_lots.c.expires_at, sa.func.sum(points_lots.c.remaining).label("points"))
    .where(
        points_lots.c.member_id == sa.bindparam("member_id"),
        points_lots.c.remaining > ZERO,
        points_lots.c.expires_at <= sa.bindparam("until", type_=sa.DateTime(timezone=True)),
    )
    .group_by(points_lots.c.expires_at)
    .order_by(points_lots.c.expires_at)
)
_tier_changes = Query(
    sa.select(tier_changes)
    .where(tier_changes.c.member_id == sa.any_(_IDS))
    .order_by(tier_changes.c.changed_at, tier_changes.c.id)
)


async def entries_page(conn: AsyncConnection[Any], *, member_id: int, before_id: int | None, limit: int) -> list[Row]:
    """A member's entries, newest first, older than ``before_id``."""
    if before_id is None:
        return await _newest_entries.all(conn, member_id=member_id, limit=limit)
    return await _older_entries.all(conn, member_id=member_id, before_id=before_id, limit=limit)


async def orders_page(
    conn: AsyncConnection[Any], *, member_id: int, before: tuple[dt.datetime, int] | None, limit: int
) -> list[Row]:
    """A member's orders, newest payment first, before (paid_at, id)."""
    if before is None:
        return await _newest_orders.all(conn, member_id=member_id, limit=limit)
    return await _older_orders.all(
        conn, member_id=member_id, before_paid_at=before[0], before_id=before[1], limit=limit
    )


async def entries_by_posting(conn: AsyncConnection[Any], ids: Sequence[int]) -> list[Row]:
    return await _entries_by_posting.all(conn, ids=list(ids))


async def postings_by_id(conn: AsyncConnection[Any], ids: Sequence[int]) -> list[Row]:
    return await _postings_by_id.all(conn, ids=list(ids))


async def orders_by_id(conn: AsyncConnection[Any], ids: Sequence[int]) -> list[Row]:
    return await _orders_by_id.all(conn, ids=list(ids))


async def expiring(conn: AsyncConnection[Any], *, member_id: int, until: dt.datetime) -> list[Row]:
    """Points left in lots expiring by ``until``, summed per expiry time."""
    return await _expiring.all(conn, member_id=member_id, until=until)


async def tier_changes_by_member(conn: AsyncConnection[Any], ids: Sequence[int]) -> list[Row]:
    return await _tier_changes.all(conn, ids=list(ids))

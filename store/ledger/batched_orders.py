"""Many orders in one statement: the set-based form of `store.ledger.orders`' one-statement order, for
`store.ledger.batching` (the way `store.ledger.batched` batches earns and redemptions).

Each order's earnings are worked out in SQL from its member's tier, birthday and brand rules as
the statement's snapshot saw them, exactly as the single statement does; the member UPDATE
applies only where those are unchanged (and the member is live), then the postings (a plain
INSERT: a key taken meanwhile fails the whole statement), the orders, the EARN entries with their
lots and the tier upgrades follow. An order left out (its key already held, its member not live
or changed under the statement) returns no row and takes the single path, which replays, refuses
or posts it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from psycopg import AsyncConnection
from sqlalchemy.dialects.postgresql import BYTEA

from store.ledger import journal, postings, tiers
from store.ledger.batched import arrays, fresh, matched, posted, request_params
from store.ledger.order_lines import insert_lines, line_params
from store.ledger.orders import (
    CURRENT_TIER,
    EARNING_FROM,
    ORDER_COLUMNS,
    ORDER_PREFIX,
    ORDER_WRITTEN,
    OrderResult,
    Purchase,
    bought,
    cause,
    earning_columns,
    parts,
    split_order,
    unchanged_buyer,
)
from store.sql import Query
from store.tables import brand_rules, brand_tiers, members, orders, points_entries, points_lots

_items = sa.select(
    arrays(
        brand_id=sa.BigInteger(),
        member_id=sa.BigInteger(),
        key=sa.Text(),
        operation=sa.Text(),
        fingerprint=BYTEA(),
        channel=sa.Text(),
        reason=sa.Text(),
        actor=sa.Text(),
        external_order_id=sa.Text(),
        amount=sa.Numeric(14, 2),
        amount_text=sa.Text(),
        paid_at=sa.DateTime(timezone=True),
        store=sa.Text(),
        cause=sa.Text(),
    )
).cte("order_items")
_fresh = fresh(_items, "fresh_orders")
_ITEM_COLUMNS = (
    "key",
    "operation",
    "fingerprint",
    "channel",
    "reason",
    "actor",
    "external_order_id",
    "amount",
    "paid_at",
    "store",
    "cause",
)
_earning = (
    sa.select(
        *earning_columns(_fresh.c.amount, _fresh.c.amount_text, _fresh.c.paid_at),
        *(_fresh.c[name].label(f"item_{name}") for name in _ITEM_COLUMNS),
    )
    .select_from(
        EARNING_FROM.join(_fresh, sa.and_(_fresh.c.member_id == members.c.id, _fresh.c.brand_id == members.c.brand_id))
    )
    .where(members.c.merged_into.is_(None))
    .cte("order_earnings")
)
_buyers = (
    sa.update(members)
    .where(*unchanged_buyer(_earning))
    .values(bought(_earning, _earning.c.item_amount, _earning.c.item_paid_at))
    .returning(
        *members.c,
        CURRENT_TIER.c.code.label("from_tier"),
        *(_earning.c[f"item_{name}"] for name in _ITEM_COLUMNS),
        _earning.c.points.label("item_points"),
        _earning.c.growth.label("item_growth"),
    )
    .cte("order_buyers")
)
_postings = posted(_buyers, "order_postings")
_order_rows = (
    sa.insert(orders)
    .from_select(
        ORDER_WRITTEN,
        sa.select(
            _postings.c.brand_id,
            _postings.c.member_id,
            _postings.c.channel,
            _buyers.c.item_external_order_id,
            _buyers.c.item_amount,
            _buyers.c.item_paid_at,
            _buyers.c.item_store,
            _postings.c.id,
            _buyers.c.item_points,
            _buyers.c.item_growth,
        ).select_from(_postings.join(_buyers, _buyers.c.id == _postings.c.member_id)),
    )
    .returning(*ORDER_COLUMNS)
    .cte("order_rows")
)
_parts = parts(_earning)  # a function of each earning row, so implicitly LATERAL
_entries = (
    sa.insert(points_entries)
    .from_select(
        journal.ENTRY_COLUMNS,
        sa.select(
            _postings.c.id,
            _postings.c.brand_id,
            _buyers.c.id,
            sa.literal("earn"),
            _parts.c.amount,
            # each entry's balance after it, as if the order's parts were posted one after the other
            _buyers.c.points_balance
            - _buyers.c.item_points
            + sa.func.sum(_parts.c.amount).over(partition_by=_postings.c.id, order_by=_parts.c.n),
            _parts.c.note,
        )
        .select_from(
            _postings.join(_buyers, _buyers.c.id == _postings.c.member_id)
            .join(_earning, _earning.c.id == _buyers.c.id)
            .join(_parts, _parts.c.amount > 0)
        )
        .order_by(_postings.c.id, _parts.c.n),
    )
    .returning(points_entries.c.id, points_entries.c.brand_id, points_entries.c.member_id, points_entries.c.amount)
    .cte("order_entries")
)
_lots = (
    sa.insert(points_lots)
    .from_select(
        ["brand_id", "member_id", "entry_id", "amount", "remaining", "expires_at"],
        sa.select(
            _entries.c.brand_id,
            _entries.c.member_id,
            _entries.c.id,
            _entries.c.amount,
            _entries.c.amount,
            journal.expiry_at(_buyers.c.item_paid_at),
        )
        .select_from(_entries)
        .join(_buyers, _buyers.c.id == _entries.c.member_id)
        .join(brand_rules, brand_rules.c.brand_id == _entries.c.brand_id),
    )
    .cte("order_lots")
)
_upgraded = (
    sa.select(
        _buyers.c.id, _buyers.c.brand_id, _buyers.c.from_tier, _buyers.c.tier.label("to_tier"), _buyers.c.item_cause
    )
    .where(_buyers.c.tier != _buyers.c.from_tier)
    .cte("order_upgrades")
)
_tier_changes = tiers.recorded_changes(_upgraded, _upgraded.c.item_cause).cte("order_tier_changes")
_lines = insert_lines(_order_rows, "order_lines_written")
_orders_posted = Query(
    sa.select(
        *postings.posting_columns(_postings),
        *(column.label(f"{ORDER_PREFIX}{column.name}") for column in _order_rows.c),
        *(_buyers.c[column.name] for column in members.c),
        brand_tiers.c.name.label("tier_name"),
        brand_tiers.c.rank.label("tier_rank"),
    )
    .select_from(
        _postings.join(_order_rows, _order_rows.c.posting_id == _postings.c.id)
        .join(_buyers, _buyers.c.id == _postings.c.member_id)
        .join(brand_tiers, postings.tier_of(_buyers))
    )
    .add_cte(
        _items, _fresh, _earning, _buyers, _postings, _order_rows, _entries, _lots, _upgraded, _tier_changes, _lines
    )
)


def _params(purchases: Sequence[Purchase]) -> dict[str, list[Any]]:
    placed = [purchase.order for purchase in purchases]
    return {
        **request_params([purchase.request for purchase in purchases]),
        "external_order_id": [order.external_order_id for order in placed],
        "amount": [order.amount for order in placed],
        "amount_text": [str(order.amount) for order in placed],
        "paid_at": [order.paid_at for order in placed],
        "store": [order.store for order in placed],
        "cause": [cause(order) for order in placed],
        **line_params([(order.brand_id, order.channel, order.external_order_id, order.lines) for order in placed]),
    }


async def record(conn: AsyncConnection[Any], purchases: Sequence[Purchase]) -> list[OrderResult | None]:
    """Record the orders that can be: an OrderResult each, None for one to record alone."""
    return matched(purchases, await _orders_posted.all(conn, **_params(purchases)), split_order)

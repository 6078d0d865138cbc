"""Recording many orders at once, with the ledger's own rules: the set-based plumbing around the
expressions `store.ledger.orders` builds its one-statement order from.

What an order earns (`earning_columns`: base points, birthday-month and tier bonuses, growth), what
it changes on its member's row (`bought`: balance, purchase aggregates, growth, the tier upgrade
read from the member's earlier orders), its EARN entries (`parts`), their lots' expiry
(`journal.expiry_at`) and the tier change (`tiers.recorded_changes`) are those expressions, not
copies of them. What differs is only how rows travel: `store.ledger.batched_orders` feeds them as
array parameters through CTEs, which PostgreSQL plans as nested loops over CTE scans (quadratic:
20,000 orders took 3 minutes); here they sit in indexed temporary tables between statements.

An order depends on its member's earlier orders (the tier they reached sets the tier bonus; the
upgrade sums them), so a chunk goes in rounds: round k holds the k-th order of each member in file
order, and each round sees the rows the rounds before it wrote, as one order after another would.
Every id comes from its table's sequence, drawn in file order.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from psycopg import AsyncConnection
from sqlalchemy.dialects.postgresql import BYTEA

from store.imports.rows import staging_table
from store.ledger import journal, tiers
from store.ledger.orders import (
    CURRENT_TIER,
    EARNING_FROM,
    ORDER_WRITTEN,
    bought,
    earning_columns,
    parts,
    unchanged_buyer,
)
from store.sql import Query
from store.tables import (
    audience_changes,
    brand_rules,
    member_identities,
    members,
    orders,
    points_entries,
    points_lots,
    points_postings,
)

_TIME = sa.DateTime(timezone=True)
_MONEY = sa.Numeric(14, 2)
_ROUND = sa.bindparam("round", type_=sa.Integer)
_BRAND = sa.bindparam("brand_id", type_=sa.BigInteger)

# The orders to record, one row each, as `store.ledger.orders.purchase` made their requests.
ITEMS = staging_table(
    "import_orders",
    sa.Column("round", sa.Integer),
    sa.Column("line", sa.BigInteger),
    sa.Column("member_id", sa.BigInteger),
    sa.Column("buyer_id", sa.Text),
    sa.Column("key", sa.Text),
    sa.Column("operation", sa.Text),
    sa.Column("fingerprint", BYTEA),
    sa.Column("channel", sa.Text),
    sa.Column("actor", sa.Text),
    sa.Column("external_order_id", sa.Text),
    sa.Column("amount", _MONEY),
    sa.Column("amount_text", sa.Text),
    sa.Column("paid_at", _TIME),
    sa.Column("store", sa.Text),
    sa.Column("cause", sa.Text),
    sa.Column("posting_id", sa.BigInteger),
    sa.Column("order_id", sa.BigInteger),
)
ITEM_COLUMNS = [column.name for column in ITEMS.c if column.name not in ("posting_id", "order_id")]
# Each order's earnings, from its member as the round found it (`earning_columns`' labels).
_EARNED = (
    "id",
    "tier",
    "birthday",
    "order_count",
    "base",
    "birthday_bonus",
    "tier_bonus",
    "points",
    "growth",
    "base_note",
    "birthday_note",
    "tier_note",
)
_EARNED_TYPES: dict[str, sa.types.TypeEngine[Any]] = {
    "id": sa.BigInteger(),
    "tier": sa.Text(),
    "birthday": sa.Date(),
    "order_count": sa.Integer(),
    "base_note": sa.Text(),
    "birthday_note": sa.Text(),
    "tier_note": sa.Text(),
}
_CARRIED = ("line", "round", "amount", "paid_at", "posting_id", "order_id")
EARNINGS = staging_table(
    "import_order_earnings",
    *(sa.Column(name, _EARNED_TYPES.get(name, sa.BigInteger())) for name in _EARNED),
    sa.Column("line", sa.BigInteger),
    sa.Column("round", sa.Integer),
    sa.Column("amount", _MONEY),
    sa.Column("paid_at", _TIME),
    sa.Column("posting_id", sa.BigInteger),
    sa.Column("order_id", sa.BigInteger),
)
# The members a round changed, after the change, and the tier each had before it.
BUYERS = staging_table(
    "import_order_buyers",
    sa.Column("line", sa.BigInteger),
    sa.Column("round", sa.Integer),
    sa.Column("id", sa.BigInteger),
    sa.Column("points_balance", sa.BigInteger),
    sa.Column("tier", sa.Text),
    sa.Column("from_tier", sa.Text),
)
# A round's EARN entries, numbered before they are written (an entry and its lot in two statements).
PARTS = staging_table(
    "import_order_parts",
    sa.Column("round", sa.Integer),
    sa.Column("entry_id", sa.BigInteger),
    sa.Column("posting_id", sa.BigInteger),
    sa.Column("member_id", sa.BigInteger),
    sa.Column("amount", sa.BigInteger),
    sa.Column("balance_after", sa.BigInteger),
    sa.Column("note", sa.Text),
    sa.Column("paid_at", _TIME),
)
INDEXES = (
    sa.Index("import_orders_round", ITEMS.c.round, ITEMS.c.member_id),
    sa.Index("import_order_earnings_line", EARNINGS.c.line),
    sa.Index("import_order_buyers_line", BUYERS.c.line),
    sa.Index("import_order_parts_round", PARTS.c.round),
)


def _next(sequence: str) -> sa.ColumnElement[int]:
    return sa.func.nextval(sa.cast(sa.bindparam(sequence, type_=sa.Text), sa.dialects.postgresql.REGCLASS))


_number = Query(sa.update(ITEMS).values(posting_id=_next("posting_sequence"), order_id=_next("order_sequence")))
# The ledger's lock order (store.ledger.journal): the chunk's members first, in id order, as a batch does.
_lock = Query(
    sa.select(members.c.id)
    .where(members.c.id.in_(sa.select(ITEMS.c.member_id)))
    .order_by(members.c.id)
    .with_for_update(key_share=True)
)
_rounds = Query(sa.select(sa.func.coalesce(sa.func.max(ITEMS.c.round), 0)))
_earn = Query(
    sa.insert(EARNINGS).from_select(
        [*_EARNED, *_CARRIED],
        sa.select(
            *earning_columns(ITEMS.c.amount, ITEMS.c.amount_text, ITEMS.c.paid_at),
            *(ITEMS.c[name] for name in _CARRIED),
        )
        .select_from(EARNING_FROM.join(ITEMS, ITEMS.c.member_id == members.c.id))
        .where(ITEMS.c.round == _ROUND, members.c.merged_into.is_(None)),
    )
)
_bought = (
    sa.update(members)
    .where(*unchanged_buyer(EARNINGS), EARNINGS.c.round == _ROUND)
    .values(bought(EARNINGS, EARNINGS.c.amount, EARNINGS.c.paid_at))
    .returning(
        EARNINGS.c.line,
        EARNINGS.c.round,
        members.c.id,
        members.c.points_balance,
        members.c.tier,
        CURRENT_TIER.c.code.label("from_tier"),
    )
    .cte("bought")
)
_buy = Query(sa.insert(BUYERS).from_select([column.name for column in BUYERS.c], sa.select(_bought)))
_round_items = ITEMS.join(BUYERS, BUYERS.c.line == ITEMS.c.line).join(EARNINGS, EARNINGS.c.line == ITEMS.c.line)
_post = Query(
    sa.insert(points_postings).from_select(
        ["id", "brand_id", "member_id", "idempotency_key", "operation", "fingerprint", "channel", "actor"],
        sa.select(
            ITEMS.c.posting_id,
            _BRAND,
            ITEMS.c.member_id,
            ITEMS.c.key,
            ITEMS.c.operation,
            ITEMS.c.fingerprint,
            ITEMS.c.channel,
            ITEMS.c.actor,
        )
        .select_from(_round_items)
        .where(ITEMS.c.round == _ROUND, BUYERS.c.round == _ROUND)
        .order_by(ITEMS.c.line),
    )
)
_order = Query(
    sa.insert(orders).from_select(
        ["id", *ORDER_WRITTEN],  # the columns recording an order writes (store.ledger.orders)
        sa.select(
            ITEMS.c.order_id,
            _BRAND,
            ITEMS.c.member_id,
            ITEMS.c.channel,
            ITEMS.c.external_order_id,
            ITEMS.c.amount,
            ITEMS.c.paid_at,
            ITEMS.c.store,
            ITEMS.c.posting_id,
            EARNINGS.c.points,
            EARNINGS.c.growth,
        )
        .select_from(_round_items)
        .where(ITEMS.c.round == _ROUND, BUYERS.c.round == _ROUND)
        .order_by(ITEMS.c.line),
    )
)
_parts = parts(EARNINGS)
_each_part = (
    sa.select(
        EARNINGS.c.posting_id,
        EARNINGS.c.id.label("member_id"),
        _parts.c.amount,
        # each entry's balance after it, as if the order's parts were posted one after the other
        (
            BUYERS.c.points_balance
            - EARNINGS.c.points
            + sa.func.sum(_parts.c.amount).over(partition_by=EARNINGS.c.posting_id, order_by=_parts.c.n)
        ).label("balance_after"),
        _parts.c.note,
        EARNINGS.c.paid_at,
    )
    .select_from(EARNINGS.join(BUYERS, BUYERS.c.line == EARNINGS.c.line).join(_parts, _parts.c.amount > 0))
    .where(EARNINGS.c.round == _ROUND)
    .order_by(EARNINGS.c.posting_id, _parts.c.n)
    .subquery("each_part")
)
_number_parts = Query(
    sa.insert(PARTS).from_select(
        ["round", "entry_id", "posting_id", "member_id", "amount", "balance_after", "note", "paid_at"],
        sa.select(
            _ROUND,
            _next("entry_sequence"),
            _each_part.c.posting_id,
            _each_part.c.member_id,
            _each_part.c.amount,
            _each_part.c.balance_after,
            _each_part.c.note,
            _each_part.c.paid_at,
        ),
    )
)
_entries = Query(
    sa.insert(points_entries).from_select(
        ["id", *journal.ENTRY_COLUMNS],
        sa.select(
            PARTS.c.entry_id,
            PARTS.c.posting_id,
            _BRAND,
            PARTS.c.member_id,
            sa.literal("earn"),
            PARTS.c.amount,
            PARTS.c.balance_after,
            PARTS.c.note,
        )
        .where(PARTS.c.round == _ROUND)
        .order_by(PARTS.c.entry_id),
    )
)
_lots = Query(
    sa.insert(points_lots).from_select(
        ["brand_id", "member_id", "entry_id", "amount", "remaining", "expires_at"],
        sa.select(
            _BRAND,
            PARTS.c.member_id,
            PARTS.c.entry_id,
            PARTS.c.amount,
            PARTS.c.amount,
            journal.expiry_at(PARTS.c.paid_at),
        )
        .select_from(PARTS.join(brand_rules, brand_rules.c.brand_id == _BRAND))
        .where(PARTS.c.round == _ROUND)
        .order_by(PARTS.c.entry_id),
    )
)
_upgraded = (
    sa.select(
        BUYERS.c.id,
        _BRAND.label("brand_id"),
        BUYERS.c.from_tier,
        BUYERS.c.tier.label("to_tier"),
        ITEMS.c.cause,
    )
    .select_from(BUYERS.join(ITEMS, ITEMS.c.line == BUYERS.c.line))
    .where(BUYERS.c.round == _ROUND, BUYERS.c.tier != BUYERS.c.from_tier)
    .order_by(BUYERS.c.line)
    .subquery("upgraded")
)
_tier_changes = Query(tiers.recorded_changes(_upgraded, _upgraded.c.cause))
# Orders whose buyer a merge moved to another member since the worker found it (their members now
# locked, no merge moves it further): they go alone, with the buyer found again.
_moved = Query(
    sa.delete(ITEMS)
    .where(
        ~sa.exists().where(
            member_identities.c.brand_id == _BRAND,
            member_identities.c.channel == ITEMS.c.channel,
            member_identities.c.external_id == ITEMS.c.buyer_id,
            member_identities.c.member_id == ITEMS.c.member_id,
        )
    )
    .returning(ITEMS.c.line)
)
# Orders no round recorded: their member was not live. The single path says why.
_left_out = Query(sa.select(ITEMS.c.line).where(~sa.exists().where(BUYERS.c.line == ITEMS.c.line)))
# Without triggers: the chunk's buyers, for the audience index (every family: an order moves many).
_queue = Query(
    sa.insert(audience_changes).from_select(["brand_id", "member_id"], sa.select(_BRAND, ITEMS.c.member_id).distinct())
)
_sequences = Query(
    sa.select(
        sa.func.pg_get_serial_sequence("points_postings", "id").label("posting_sequence"),
        sa.func.pg_get_serial_sequence("orders", "id").label("order_sequence"),
        sa.func.pg_get_serial_sequence("points_entries", "id").label("entry_sequence"),
    )
)


async def sequences(conn: AsyncConnection[Any]) -> dict[str, str]:
    row = await _sequences.one(conn)
    assert row is not None
    return dict(row)


async def queue_changes(conn: AsyncConnection[Any], brand_id: int) -> None:
    await _queue.run(conn, brand_id=brand_id)


async def record_rounds(conn: AsyncConnection[Any], brand_id: int, sequence: dict[str, str]) -> list[int]:
    """Record the staged orders round by round in the caller's transaction; the lines of those to
    record alone, in order (their buyer moved, or their member is not live)."""
    await _number.run(conn, **sequence)
    await conn.execute("ANALYZE import_orders")
    await _lock.run(conn)
    moved = [row["line"] for row in await _moved.all(conn, brand_id=brand_id)]
    for number in range(1, int(await _rounds.scalar(conn)) + 1):
        params = {"round": number, "brand_id": brand_id}
        await _earn.run(conn, **params)
        await _buy.run(conn, **params)
        await _post.run(conn, **params)
        await _order.run(conn, **params)
        await _number_parts.run(conn, **params, entry_sequence=sequence["entry_sequence"])
        await _entries.run(conn, **params)
        await _lots.run(conn, **params)
        await _tier_changes.run(conn, **params)
    return sorted(moved + [row["line"] for row in await _left_out.all(conn)])

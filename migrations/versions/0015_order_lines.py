"""order lines and purchase behaviour facts

An order may carry lines (sku, category, quantity, amount). The audience index's purchase
behaviour keys (tagquery.bitmap_keys, family `purchase`) follow orders, their lines and refunds:
the orders trigger of 0004 is replaced by one that also queues that family, and a refund (which
queued nothing, since no fact the index kept depended on it) now queues it, as spend in a window
is net of refunds. Lines are written with their order; a trigger on them covers any later change.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 13:45:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PRODUCT_CODE = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
ORDER = 8  # tagquery.bitmap_keys.FAMILIES["order"]
PURCHASE = 65536  # tagquery.bitmap_keys.FAMILIES["purchase"]


def _orders_function(moved: int, refunded: str) -> str:
    """audience_queue_orders: `moved` is the families an order's insert, delete or move queues;
    `refunded` the SQL that queues a refund (or nothing)."""
    return f"""
CREATE OR REPLACE FUNCTION audience_queue_orders() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO audience_changes (brand_id, member_id, families)
        SELECT DISTINCT brand_id, member_id, {moved} FROM new_rows;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO audience_changes (brand_id, member_id, families)
        SELECT DISTINCT brand_id, member_id, {moved} FROM old_rows;
    ELSE
        INSERT INTO audience_changes (brand_id, member_id, families)
        SELECT b.brand_id, b.member_id, {moved}
        FROM new_rows n JOIN old_rows o ON o.id = n.id,
             LATERAL (VALUES (n.brand_id, n.member_id), (o.brand_id, o.member_id)) AS b (brand_id, member_id)
        WHERE (n.member_id, n.paid_at) IS DISTINCT FROM (o.member_id, o.paid_at);{refunded}
    END IF;
    RETURN NULL;
END $$
"""


# A refund lowers spend (purchase family); a move or a new payment time is handled above.
_REFUNDED = f"""
        INSERT INTO audience_changes (brand_id, member_id, families)
        SELECT DISTINCT n.brand_id, n.member_id, {PURCHASE}
        FROM new_rows n JOIN old_rows o ON o.id = n.id
        WHERE n.member_id = o.member_id AND (n.amount, n.refunded) IS DISTINCT FROM (o.amount, o.refunded);"""

_LINES_FUNCTION = f"""
CREATE FUNCTION audience_queue_order_lines() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO audience_changes (brand_id, member_id, families)
        SELECT DISTINCT o.brand_id, o.member_id, {PURCHASE} FROM old_rows l JOIN orders o ON o.id = l.order_id;
    ELSE
        INSERT INTO audience_changes (brand_id, member_id, families)
        SELECT DISTINCT o.brand_id, o.member_id, {PURCHASE} FROM new_rows l JOIN orders o ON o.id = l.order_id;
    END IF;
    RETURN NULL;
END $$
"""
_REFERENCING = {
    "INSERT": "REFERENCING NEW TABLE AS new_rows",
    "UPDATE": "REFERENCING NEW TABLE AS new_rows",
    "DELETE": "REFERENCING OLD TABLE AS old_rows",
}


def upgrade() -> None:
    op.create_table(
        "order_lines",
        sa.Column("order_id", sa.BigInteger(), nullable=False),
        sa.Column("line", sa.SmallInteger(), nullable=False),
        sa.Column("sku", sa.Text(), nullable=False),
        sa.Column("category", sa.Text(), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("amount", sa.Numeric(14, 2), nullable=False),
        sa.CheckConstraint("line >= 1", name=op.f("ck_order_lines_line_positive")),
        sa.CheckConstraint(f"sku ~ '{PRODUCT_CODE}'", name=op.f("ck_order_lines_sku_format")),
        sa.CheckConstraint(f"category ~ '{PRODUCT_CODE}'", name=op.f("ck_order_lines_category_format")),
        sa.CheckConstraint("quantity >= 1", name=op.f("ck_order_lines_quantity_positive")),
        sa.CheckConstraint("amount >= 0", name=op.f("ck_order_lines_amount_not_negative")),
        sa.ForeignKeyConstraint(["order_id"], ["orders.id"], name=op.f("fk_order_lines_order_id_orders")),
        sa.PrimaryKeyConstraint("order_id", "line", name=op.f("pk_order_lines")),
    )
    op.execute(_orders_function(ORDER | PURCHASE, _REFUNDED))
    op.execute(_LINES_FUNCTION)
    for event, referencing in _REFERENCING.items():
        op.execute(
            f"CREATE TRIGGER audience_order_lines_{event.lower()} AFTER {event} ON order_lines {referencing} "
            "FOR EACH STATEMENT EXECUTE FUNCTION audience_queue_order_lines()"
        )
    # Indexes built before hold no purchase keys: their encoding version (tagquery.bitmap_keys) is
    # older, so the applier rebuilds every brand's index on its own; nothing to queue here.


def downgrade() -> None:
    for event in _REFERENCING:
        op.execute(f"DROP TRIGGER audience_order_lines_{event.lower()} ON order_lines")
    op.execute("DROP FUNCTION audience_queue_order_lines()")
    op.execute(_orders_function(ORDER, ""))
    op.drop_table("order_lines")

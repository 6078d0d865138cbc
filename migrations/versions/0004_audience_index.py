"""audience index: bitmap rows, the change queue its triggers fill, per-brand state

The triggers are statement-level with transition tables: one INSERT into the queue per statement,
whatever the number of rows, and a members UPDATE that changes no fact (a phone, a name) queues
nothing. Existing brands are queued for a full build (member_id 0).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24 15:27:26.609627
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# lz4 where the server was built with it; otherwise the default (pglz) compression.
LZ4 = """
DO $$ BEGIN
    ALTER TABLE audience_bitmaps ALTER COLUMN bits SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
    RAISE NOTICE 'lz4 unavailable: audience bitmaps keep the default compression';
END $$
"""

# Which part of the index a change can touch, as bits (tagquery.bitmap_keys.FAMILIES), so a
# points posting makes the applier look at the points slices only, not at every key.
ALL = 32767
_MEMBER_FAMILIES = {
    "tier": 16,
    "city": 32,
    "first_purchase_at": 64,  # status
    "gender": 128,
    "points_balance": 256,
    "growth_value": 512,
    "order_count": 1024,
    "total_spend": 2048,
    "registered_at": 4096,
    "last_purchase_at": 8192,
    "birthday": 16384,
}
_changed = " | ".join(
    f"CASE WHEN n.{column} IS DISTINCT FROM o.{column} THEN {bit} ELSE 0 END"
    for column, bit in _MEMBER_FAMILIES.items()
)

MEMBERS = f"""
CREATE FUNCTION audience_queue_members() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO audience_changes (brand_id, member_id, families) SELECT brand_id, id, {ALL} FROM new_rows;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO audience_changes (brand_id, member_id, families) SELECT brand_id, id, {ALL} FROM old_rows;
    ELSE
        INSERT INTO audience_changes (brand_id, member_id, families)
        SELECT brand_id, id, families FROM (
            SELECT n.brand_id, n.id,
                   CASE WHEN (n.merged_into, n.brand_id) IS DISTINCT FROM (o.merged_into, o.brand_id) THEN {ALL}
                        ELSE {_changed} END AS families
            FROM new_rows n JOIN old_rows o ON o.id = n.id
        ) changed
        WHERE families <> 0;
    END IF;
    RETURN NULL;
END $$
"""

# Rows that belong to a member (tags, identities, orders); the family is the trigger's argument.
# Both sides of an update: merges move them from one member to another.
OWNED = """
CREATE FUNCTION audience_queue_owned() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO audience_changes (brand_id, member_id, families)
        SELECT DISTINCT brand_id, member_id, TG_ARGV[0]::int FROM new_rows;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO audience_changes (brand_id, member_id, families)
        SELECT DISTINCT brand_id, member_id, TG_ARGV[0]::int FROM old_rows;
    ELSE
        INSERT INTO audience_changes (brand_id, member_id, families)
        SELECT brand_id, member_id, TG_ARGV[0]::int FROM new_rows
        UNION SELECT brand_id, member_id, TG_ARGV[0]::int FROM old_rows;
    END IF;
    RETURN NULL;
END $$
"""

# Orders: a refund changes no fact the index keeps (orders count refunded or not), so an update
# queues only when an order moves (merge) or its payment time changes.
ORDERS = """
CREATE FUNCTION audience_queue_orders() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO audience_changes (brand_id, member_id, families)
        SELECT DISTINCT brand_id, member_id, 8 FROM new_rows;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO audience_changes (brand_id, member_id, families)
        SELECT DISTINCT brand_id, member_id, 8 FROM old_rows;
    ELSE
        INSERT INTO audience_changes (brand_id, member_id, families)
        SELECT b.brand_id, b.member_id, 8
        FROM new_rows n JOIN old_rows o ON o.id = n.id,
             LATERAL (VALUES (n.brand_id, n.member_id), (o.brand_id, o.member_id)) AS b (brand_id, member_id)
        WHERE (n.member_id, n.paid_at) IS DISTINCT FROM (o.member_id, o.paid_at);
    END IF;
    RETURN NULL;
END $$
"""

# A time zone or a tag code change re-encodes a whole brand: queue a rebuild (member 0).
REBUILD = """
CREATE FUNCTION audience_queue_rebuild() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'brand_rules' THEN
        INSERT INTO audience_changes (brand_id, member_id, families)
        SELECT DISTINCT n.brand_id, 0, 32767 FROM new_rows n JOIN old_rows o ON o.brand_id = n.brand_id
        WHERE n.timezone IS DISTINCT FROM o.timezone;
    ELSE
        INSERT INTO audience_changes (brand_id, member_id, families)
        SELECT DISTINCT n.brand_id, 0, 32767 FROM new_rows n JOIN old_rows o ON o.id = n.id
        WHERE n.code IS DISTINCT FROM o.code;
    END IF;
    RETURN NULL;
END $$
"""


def _triggers(table: str, function: str, events: Sequence[str]) -> list[str]:
    name, _, argument = function.partition("(")
    argument = argument.rstrip(")")
    referencing = {
        "INSERT": "REFERENCING NEW TABLE AS new_rows",
        "UPDATE": "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
        "DELETE": "REFERENCING OLD TABLE AS old_rows",
    }
    return [
        f"CREATE TRIGGER audience_{table}_{event.lower()} AFTER {event} ON {table} {referencing[event]} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION {name}({argument})"
        for event in events
    ]


_ALL = ("INSERT", "UPDATE", "DELETE")
_ON = {
    "members": ("audience_queue_members", _ALL),
    "member_tags": ("audience_queue_owned(2)", _ALL),
    "member_identities": ("audience_queue_owned(4)", _ALL),
    "orders": ("audience_queue_orders", _ALL),
    "tag_definitions": ("audience_queue_rebuild", ("UPDATE",)),
    "brand_rules": ("audience_queue_rebuild", ("UPDATE",)),
}
TRIGGERS = [MEMBERS, OWNED, ORDERS, REBUILD] + [
    statement for table, (function, events) in _ON.items() for statement in _triggers(table, function, events)
]
DROP_TRIGGERS = [
    f"DROP TRIGGER audience_{table}_{event.lower()} ON {table}"
    for table, (_, events) in _ON.items()
    for event in events
] + [
    f"DROP FUNCTION {name}()"
    for name in ("audience_queue_members", "audience_queue_owned", "audience_queue_orders", "audience_queue_rebuild")
]


def upgrade() -> None:
    op.create_table(
        "audience_bitmaps",
        sa.Column("brand_id", sa.BigInteger(), nullable=False),
        sa.Column("key", sa.Text(collation="C"), nullable=False),
        sa.Column("chunk", sa.Integer(), nullable=False),
        sa.Column("bits", postgresql.BIT(varying=True), nullable=False),
        sa.CheckConstraint("length(bits) = 65536", name=op.f("ck_audience_bitmaps_chunk_length")),
        sa.PrimaryKeyConstraint("brand_id", "key", "chunk", name=op.f("pk_audience_bitmaps")),
    )
    op.create_index(
        "ix_audience_bitmaps_brand_id_chunk", "audience_bitmaps", ["brand_id", "chunk", "key"], unique=False
    )
    op.create_table(
        "audience_changes",
        sa.Column("brand_id", sa.BigInteger(), nullable=False),
        sa.Column("member_id", sa.BigInteger(), nullable=False),
        sa.Column("families", sa.Integer(), server_default="32767", nullable=False),
        sa.Column("queued_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
    )
    op.create_table(
        "audience_index_state",
        sa.Column("brand_id", sa.BigInteger(), nullable=False),
        sa.Column("built_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("applied_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column(
            "widths", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.ForeignKeyConstraint(["brand_id"], ["brands.id"], name=op.f("fk_audience_index_state_brand_id_brands")),
        sa.PrimaryKeyConstraint("brand_id", name=op.f("pk_audience_index_state")),
    )
    op.execute(LZ4)
    for statement in TRIGGERS:
        op.execute(statement)
    op.execute("INSERT INTO audience_changes (brand_id, member_id) SELECT id, 0 FROM brands")


def downgrade() -> None:
    for statement in DROP_TRIGGERS:
        op.execute(statement)
    op.drop_table("audience_index_state")
    op.drop_table("audience_changes")
    op.drop_table("audience_bitmaps")

"""person index: a group's persons as dense ids, and each brand's persons as bitmaps

brandOverlap counted the persons a group's brands share from the system of record (every brand's
live phone hashes merged in one statement: seconds at 10M). Now each phone hash of a group gets a
dense person id (`group_persons`), each live member with a phone the person it is
(`brand_persons`, what the bitmaps were built from, so a change knows what it replaces), and each
brand a bitmap of its persons per chunk of 65,536 person ids (`person_bitmaps`), kept by the
index's applier. The members trigger also queues a change of phone (family bit 1 << 20, outside the
index's families), which changes no index key but may change the member's person. Existing brands
have no `person_index_state` row, which makes them due for the applier, whose first pass builds them.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 14:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LZ4 = """
DO $$ BEGIN
    ALTER TABLE person_bitmaps ALTER COLUMN bits SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
    RAISE NOTICE 'lz4 unavailable: person bitmaps keep the default compression';
END $$
"""

# The members trigger function of 0004, with or without the phone's family bit.
ALL = 32767
PHONE = 1 << 20
_MEMBER_FAMILIES = {
    "tier": 16,
    "city": 32,
    "first_purchase_at": 64,
    "gender": 128,
    "points_balance": 256,
    "growth_value": 512,
    "order_count": 1024,
    "total_spend": 2048,
    "registered_at": 4096,
    "last_purchase_at": 8192,
    "birthday": 16384,
}


def _members_function(families: dict[str, int]) -> str:
    changed = " | ".join(
        f"CASE WHEN n.{column} IS DISTINCT FROM o.{column} THEN {bit} ELSE 0 END" for column, bit in families.items()
    )
    return f"""
CREATE OR REPLACE FUNCTION audience_queue_members() RETURNS trigger LANGUAGE plpgsql AS $$
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
                        ELSE {changed} END AS families
            FROM new_rows n JOIN old_rows o ON o.id = n.id
        ) changed
        WHERE families <> 0;
    END IF;
    RETURN NULL;
END $$
"""  # noqa: S608 (constant text)


def upgrade() -> None:
    op.create_table(
        "group_persons",
        sa.Column("group_id", sa.BigInteger(), nullable=False),
        sa.Column("phone_hash", postgresql.BYTEA(), nullable=False),
        sa.Column("person_id", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("person_id >= 0", name=op.f("ck_group_persons_person_id_natural")),
        sa.ForeignKeyConstraint(["group_id"], ["groups.id"], name=op.f("fk_group_persons_group_id_groups")),
        sa.PrimaryKeyConstraint("group_id", "phone_hash", name=op.f("pk_group_persons")),
        sa.UniqueConstraint("group_id", "person_id", name=op.f("uq_group_persons_group_id_person_id")),
    )
    op.create_table(
        "brand_persons",
        sa.Column("member_id", sa.BigInteger(), nullable=False),
        sa.Column("brand_id", sa.BigInteger(), nullable=False),
        sa.Column("person_id", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("member_id", name=op.f("pk_brand_persons")),
    )
    op.create_index("ix_brand_persons_brand_id_person_id", "brand_persons", ["brand_id", "person_id"])
    op.create_table(
        "person_bitmaps",
        sa.Column("brand_id", sa.BigInteger(), nullable=False),
        sa.Column("chunk", sa.Integer(), nullable=False),
        sa.Column("bits", postgresql.BIT(varying=True), nullable=False),
        sa.CheckConstraint("length(bits) = 65536", name=op.f("ck_person_bitmaps_chunk_length")),
        sa.PrimaryKeyConstraint("brand_id", "chunk", name=op.f("pk_person_bitmaps")),
    )
    op.execute(LZ4)
    op.create_table(
        "person_index_state",
        sa.Column("brand_id", sa.BigInteger(), nullable=False),
        sa.Column("built_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["brand_id"], ["brands.id"], name=op.f("fk_person_index_state_brand_id_brands")),
        sa.PrimaryKeyConstraint("brand_id", name=op.f("pk_person_index_state")),
    )
    op.execute(_members_function({**_MEMBER_FAMILIES, "phone_hash": PHONE}))


def downgrade() -> None:
    op.execute(_members_function(_MEMBER_FAMILIES))
    op.drop_table("person_index_state")
    op.drop_table("person_bitmaps")
    op.drop_index("ix_brand_persons_brand_id_person_id", table_name="brand_persons")
    op.drop_table("brand_persons")
    op.drop_table("group_persons")

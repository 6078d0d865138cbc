"""saved audiences and their frozen snapshots

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 16:20:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "saved_audiences",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("brand_id", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("expression", sa.Text(), nullable=False),
        sa.Column("grammar_version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint("length(name) BETWEEN 1 AND 200", name=op.f("ck_saved_audiences_name_length")),
        sa.ForeignKeyConstraint(["brand_id"], ["brands.id"], name=op.f("fk_saved_audiences_brand_id_brands")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_saved_audiences")),
        sa.UniqueConstraint("id", "brand_id", name=op.f("uq_saved_audiences_id_brand_id")),
    )
    op.create_index("ix_saved_audiences_brand_id", "saved_audiences", ["brand_id"], unique=False)
    op.create_table(
        "audience_snapshots",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("audience_id", sa.BigInteger(), nullable=False),
        sa.Column("brand_id", sa.BigInteger(), nullable=False),
        sa.Column("taken_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("as_of_day", sa.Date(), nullable=False),
        sa.Column("member_count", sa.BigInteger(), nullable=False),
        sa.Column("members", postgresql.BYTEA(), nullable=False),
        sa.CheckConstraint("member_count >= 0", name=op.f("ck_audience_snapshots_member_count_positive")),
        sa.ForeignKeyConstraint(
            ["audience_id", "brand_id"],
            ["saved_audiences.id", "saved_audiences.brand_id"],
            name=op.f("fk_audience_snapshots_audience_id_saved_audiences"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audience_snapshots")),
    )
    op.create_index("ix_audience_snapshots_audience_id_id", "audience_snapshots", ["audience_id", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_audience_snapshots_audience_id_id", table_name="audience_snapshots")
    op.drop_table("audience_snapshots")
    op.drop_index("ix_saved_audiences_brand_id", table_name="saved_audiences")
    op.drop_table("saved_audiences")

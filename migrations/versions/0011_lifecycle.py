"""lifecycle: each brand's stage rules by version, members' current stages, every change of stage

Existing brands keep the default rules (version 0, not stored); their stages are first computed
by the server (or `omnimember refresh`) once their audience index is built, and the history starts
then.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-18 09:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STAGES = "'introduction', 'growth', 'mature', 'at_risk', 'churned'"
CAUSES = "'write', 'time', 'rules', 'rebuild'"
# lz4 where the server was built with it, as for the index (0004); otherwise the default.
LZ4 = """
DO $$ BEGIN
    ALTER TABLE lifecycle_stages ALTER COLUMN bits SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
    RAISE NOTICE 'lz4 unavailable: lifecycle stages keep the default compression';
END $$
"""


def upgrade() -> None:
    op.create_table(
        "lifecycle_rules",
        sa.Column("brand_id", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("params", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("created_by", sa.Text(), nullable=False),
        sa.CheckConstraint("version >= 1", name=op.f("ck_lifecycle_rules_version_positive")),
        sa.ForeignKeyConstraint(["brand_id"], ["brands.id"], name=op.f("fk_lifecycle_rules_brand_id_brands")),
        sa.PrimaryKeyConstraint("brand_id", "version", name=op.f("pk_lifecycle_rules")),
    )
    op.create_table(
        "lifecycle_stages",
        sa.Column("brand_id", sa.BigInteger(), nullable=False),
        sa.Column("stage", sa.Text(), nullable=False),
        sa.Column("chunk", sa.Integer(), nullable=False),
        sa.Column("bits", postgresql.BIT(varying=True), nullable=False),
        sa.CheckConstraint(f"stage IN ({STAGES})", name=op.f("ck_lifecycle_stages_stage_known")),
        sa.CheckConstraint("length(bits) = 65536", name=op.f("ck_lifecycle_stages_chunk_length")),
        sa.PrimaryKeyConstraint("brand_id", "stage", "chunk", name=op.f("pk_lifecycle_stages")),
    )
    op.execute(LZ4)
    op.create_table(
        "lifecycle_state",
        sa.Column("brand_id", sa.BigInteger(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("rules_version", sa.Integer(), nullable=False),
        sa.Column("index_built_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("computed_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(["brand_id"], ["brands.id"], name=op.f("fk_lifecycle_state_brand_id_brands")),
        sa.PrimaryKeyConstraint("brand_id", name=op.f("pk_lifecycle_state")),
    )
    op.create_table(
        "member_stage_changes",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("brand_id", sa.BigInteger(), nullable=False),
        sa.Column("member_id", sa.BigInteger(), nullable=False),
        sa.Column("from_stage", sa.Text(), nullable=True),
        sa.Column("to_stage", sa.Text(), nullable=True),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rules_version", sa.Integer(), nullable=False),
        sa.Column("cause", sa.Text(), nullable=False),
        sa.CheckConstraint(
            f"from_stage IS NULL OR from_stage IN ({STAGES})", name=op.f("ck_member_stage_changes_from_stage_known")
        ),
        sa.CheckConstraint(
            f"to_stage IS NULL OR to_stage IN ({STAGES})", name=op.f("ck_member_stage_changes_to_stage_known")
        ),
        sa.CheckConstraint("from_stage IS DISTINCT FROM to_stage", name=op.f("ck_member_stage_changes_a_change")),
        sa.CheckConstraint(f"cause IN ({CAUSES})", name=op.f("ck_member_stage_changes_cause_known")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_member_stage_changes")),
    )
    op.create_index("ix_member_stage_changes_member_id_changed_at", "member_stage_changes", ["member_id", "changed_at"])
    op.create_index(
        "ix_member_stage_changes_brand_id_to_stage_changed_at",
        "member_stage_changes",
        ["brand_id", "to_stage", "changed_at"],
    )
    op.create_index(
        "ix_member_stage_changes_brand_id_from_stage_changed_at",
        "member_stage_changes",
        ["brand_id", "from_stage", "changed_at"],
    )
    op.create_index("ix_member_stage_changes_brand_id_changed_at", "member_stage_changes", ["brand_id", "changed_at"])


def downgrade() -> None:
    op.drop_table("member_stage_changes")
    op.drop_table("lifecycle_state")
    op.drop_table("lifecycle_stages")
    op.drop_table("lifecycle_rules")

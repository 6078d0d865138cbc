"""rule tags: a tag may be computed from an expression, versioned

Every version of a tag's rule is kept (`tag_rules`); `rule_tag_state` says which is current and how
current the tag's assignments are; an assignment a rule made records the rule's version and when
it was computed (two nullable columns of member_tags: no rewrite of the table).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 13:45:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tag_rules",
        sa.Column("tag_id", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("brand_id", sa.BigInteger(), nullable=False),
        sa.Column("rule", sa.Text(), nullable=False),
        sa.Column("grammar_version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("created_by", sa.Text(), nullable=False),
        sa.CheckConstraint("version >= 1", name=op.f("ck_tag_rules_version_positive")),
        sa.CheckConstraint("length(rule) BETWEEN 1 AND 4000", name=op.f("ck_tag_rules_rule_length")),
        sa.ForeignKeyConstraint(
            ["tag_id", "brand_id"],
            ["tag_definitions.id", "tag_definitions.brand_id"],
            name=op.f("fk_tag_rules_tag_id_brand_id_tag_definitions"),
        ),
        sa.PrimaryKeyConstraint("tag_id", "version", name=op.f("pk_tag_rules")),
    )
    op.create_table(
        "rule_tag_state",
        sa.Column("tag_id", sa.BigInteger(), nullable=False),
        sa.Column("brand_id", sa.BigInteger(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=True),
        sa.Column("lifecycle_version", sa.Integer(), nullable=True),
        sa.Column("rfm_computed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tag_id", "brand_id"],
            ["tag_definitions.id", "tag_definitions.brand_id"],
            name=op.f("fk_rule_tag_state_tag_id_brand_id_tag_definitions"),
        ),
        sa.ForeignKeyConstraint(
            ["tag_id", "version"],
            ["tag_rules.tag_id", "tag_rules.version"],
            name=op.f("fk_rule_tag_state_tag_id_version_tag_rules"),
        ),
        sa.PrimaryKeyConstraint("tag_id", name=op.f("pk_rule_tag_state")),
    )
    op.create_index("ix_rule_tag_state_brand_id", "rule_tag_state", ["brand_id"], unique=False)
    # Nullable without a default: a catalog change only, whatever the size of member_tags.
    op.add_column("member_tags", sa.Column("rule_version", sa.Integer(), nullable=True))
    op.add_column("member_tags", sa.Column("computed_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("member_tags", "computed_at")
    op.drop_column("member_tags", "rule_version")
    op.drop_index("ix_rule_tag_state_brand_id", table_name="rule_tag_state")
    op.drop_table("rule_tag_state")
    op.drop_table("tag_rules")

"""rfm: each brand's RFM quintile bounds over its live buyers

Computed by the server's daily pass, `omnimember refresh`, or on first use (store.audiences.rfm_store).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-19 09:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rfm_thresholds",
        sa.Column("brand_id", sa.BigInteger(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("buyers", sa.Integer(), nullable=False),
        sa.Column("recency_days", sa.ARRAY(sa.Integer()), nullable=False),
        sa.Column("frequency", sa.ARRAY(sa.Integer()), nullable=False),
        sa.Column("monetary", sa.ARRAY(sa.Numeric(14, 2)), nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "cardinality(recency_days) = 4 AND cardinality(frequency) = 4 AND cardinality(monetary) = 4",
            name=op.f("ck_rfm_thresholds_four_bounds"),
        ),
        sa.ForeignKeyConstraint(["brand_id"], ["brands.id"], name=op.f("fk_rfm_thresholds_brand_id_brands")),
        sa.PrimaryKeyConstraint("brand_id", name=op.f("pk_rfm_thresholds")),
    )


def downgrade() -> None:
    op.drop_table("rfm_thresholds")

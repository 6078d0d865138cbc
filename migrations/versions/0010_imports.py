"""imports: a checkpoint per imported file, so that an interrupted import resumes

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-15 08:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "import_checkpoints",
        sa.Column("brand_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("file_sha256", postgresql.BYTEA(), nullable=False),
        sa.Column("file_name", sa.Text(), nullable=False),
        sa.Column("line", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column(
            "counts", postgresql.JSONB(astext_type=sa.Text()), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.Column("started_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("kind IN ('members', 'orders', 'tags')", name=op.f("ck_import_checkpoints_kind_known")),
        sa.CheckConstraint("line >= 0", name=op.f("ck_import_checkpoints_line_non_negative")),
        sa.ForeignKeyConstraint(["brand_id"], ["brands.id"], name=op.f("fk_import_checkpoints_brand_id_brands")),
        sa.PrimaryKeyConstraint("brand_id", "kind", "file_sha256", name=op.f("pk_import_checkpoints")),
    )


def downgrade() -> None:
    op.drop_table("import_checkpoints")

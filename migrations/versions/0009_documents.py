"""documents: registered (trusted) documents, and keys held to them

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-14 08:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # One operation per row, found by the SHA-256 of its text: the database checks the hash, so a row
    # can never run under a hash that is not its own (api.persisted trusts what it finds).
    op.create_table(
        "persisted_documents",
        sa.Column("sha256", sa.Text(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("operation_type", sa.Text(), nullable=False),
        sa.Column("operation_name", sa.Text(), nullable=True),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "sha256 = encode(sha256(convert_to(body, 'UTF8')), 'hex')",
            name=op.f("ck_persisted_documents_sha256_of_body"),
        ),
        sa.CheckConstraint(
            "operation_type IN ('query', 'mutation', 'subscription')",
            name=op.f("ck_persisted_documents_operation_type_known"),
        ),
        sa.CheckConstraint("length(source) BETWEEN 1 AND 500", name=op.f("ck_persisted_documents_source_length")),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_persisted_documents")),
    )
    op.add_column("api_keys", sa.Column("trusted_documents", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    op.drop_column("api_keys", "trusted_documents")
    op.drop_table("persisted_documents")

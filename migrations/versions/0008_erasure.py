"""erasure: members.erased_at, and no personal data on an erased member

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 08:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("members", sa.Column("erased_at", sa.DateTime(timezone=True), nullable=True))
    # The database refuses an erased member that holds personal data again (a merge filling it in,
    # a registration completing its profile): store/members/erasure.py.
    op.create_check_constraint(
        op.f("ck_members_erased_holds_no_personal_data"),
        "members",
        "erased_at IS NULL OR (display_name IS NULL AND birthday IS NULL AND city IS NULL"
        " AND phone_hash IS NULL AND phone_encrypted IS NULL AND phone_masked IS NULL)",
    )
    # Exports of frozen snapshots leave erased members out: a brand's erased ids in one short range.
    op.create_index(
        "ix_members_erased",
        "members",
        ["brand_id", "id"],
        unique=False,
        postgresql_where=sa.text("erased_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_members_erased", table_name="members", postgresql_where=sa.text("erased_at IS NOT NULL"))
    op.drop_constraint(op.f("ck_members_erased_holds_no_personal_data"), "members", type_="check")
    op.drop_column("members", "erased_at")

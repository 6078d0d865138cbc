"""audience_changes: an index by brand, as every reader of the queue asks

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 12:30:00.000000

The queue of changes for the audience index had no index: the applier's drain, each brand's
readiness and freshness, and /readyz's list of brands with a rebuild requested each scanned the
whole queue, once per brand. With thousands of brands and a queue behind a bulk load, /readyz took
1.7 s (found in CI: a test server never answered its readiness probe within a second).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_audience_changes_brand_id_member_id", "audience_changes", ["brand_id", "member_id"])


def downgrade() -> None:
    op.drop_index("ix_audience_changes_brand_id_member_id", table_name="audience_changes")

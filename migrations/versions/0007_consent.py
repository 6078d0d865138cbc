"""marketing consent per member and touch channel (PIPL), and the guardian's consent for minors

One row per (member, channel): the latest decision, a withdrawal kept as `granted = false`. The
audience index follows the table like tags and identities: statement-level triggers queue the
members whose consent changed, for the `consent` key family (tagquery.bitmap_keys.FAMILIES).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 08:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CONSENT_FAMILY = 32768  # tagquery.bitmap_keys.FAMILIES["consent"]
_EVENTS = {
    "INSERT": "REFERENCING NEW TABLE AS new_rows",
    "UPDATE": "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
    "DELETE": "REFERENCING OLD TABLE AS old_rows",
}


def upgrade() -> None:
    op.create_table(
        "member_consents",
        sa.Column("member_id", sa.BigInteger(), nullable=False),
        sa.Column("channel", sa.Text(), nullable=False),
        sa.Column("brand_id", sa.BigInteger(), nullable=False),
        sa.Column("granted", sa.Boolean(), nullable=False),
        sa.Column("given_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(
            "channel IN ('sms', 'ai_call', 'wecom', 'mini_program', 'email', 'guardian')",
            name=op.f("ck_member_consents_channel_known"),
        ),
        sa.CheckConstraint("length(source) BETWEEN 1 AND 200", name=op.f("ck_member_consents_source_length")),
        sa.ForeignKeyConstraint(
            ["member_id", "brand_id"],
            ["members.id", "members.brand_id"],
            name=op.f("fk_member_consents_member_id_brand_id_members"),
        ),
        sa.PrimaryKeyConstraint("member_id", "channel", name=op.f("pk_member_consents")),
    )
    op.create_index("ix_member_consents_brand_id_channel", "member_consents", ["brand_id", "channel"], unique=False)
    # The function of migration 0004 for rows a member owns; its argument is the key family.
    for event, referencing in _EVENTS.items():
        op.execute(
            f"CREATE TRIGGER audience_member_consents_{event.lower()} AFTER {event} ON member_consents {referencing} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION audience_queue_owned({CONSENT_FAMILY})"
        )


def downgrade() -> None:
    for event in _EVENTS:
        op.execute(f"DROP TRIGGER audience_member_consents_{event.lower()} ON member_consents")
    op.drop_index("ix_member_consents_brand_id_channel", table_name="member_consents")
    op.drop_table("member_consents")

"""stage entries in the audience index: a recorded change of stage queues the member's `stage` family

`entered:<stage> WITHIN 30d` (issue 15) reads the day of each member's last recorded change into
each lifecycle stage from the audience index (tagquery.bitmap_keys: `stage.entered.<stage>`, family
`stage`). The index follows member_stage_changes like any other fact, through the change queue: a
trigger queues the members of every inserted, updated or deleted row. store.audiences.lifecycle is
the one writer today, in the applier's own transaction (which applies what it queued before it
commits: store.audiences.deltas) or in the scheduled pass and `omnimember refresh` (applied by the
applier's next pass). Indexes built before hold no stage keys: their encoding version is older, so
the applier rebuilds them on its own; nothing to queue here.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-08 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STAGE = 131072  # tagquery.bitmap_keys.FAMILIES["stage"]

_FUNCTION = f"""
CREATE FUNCTION audience_queue_stage_changes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO audience_changes (brand_id, member_id, families)
        SELECT DISTINCT brand_id, member_id, {STAGE} FROM new_rows WHERE to_stage IS NOT NULL;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO audience_changes (brand_id, member_id, families)
        SELECT DISTINCT brand_id, member_id, {STAGE} FROM old_rows;
    ELSE
        INSERT INTO audience_changes (brand_id, member_id, families)
        SELECT brand_id, member_id, {STAGE} FROM new_rows UNION SELECT brand_id, member_id, {STAGE} FROM old_rows;
    END IF;
    RETURN NULL;
END $$
"""
_REFERENCING = {
    "INSERT": "REFERENCING NEW TABLE AS new_rows",
    "UPDATE": "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows",
    "DELETE": "REFERENCING OLD TABLE AS old_rows",
}


def upgrade() -> None:
    op.execute(_FUNCTION)
    for event, referencing in _REFERENCING.items():
        op.execute(
            f"CREATE TRIGGER audience_member_stage_changes_{event.lower()} AFTER {event} ON member_stage_changes "
            f"{referencing} FOR EACH STATEMENT EXECUTE FUNCTION audience_queue_stage_changes()"
        )


def downgrade() -> None:
    for event in _REFERENCING:
        op.execute(f"DROP TRIGGER audience_member_stage_changes_{event.lower()} ON member_stage_changes")
    op.execute("DROP FUNCTION audience_queue_stage_changes()")

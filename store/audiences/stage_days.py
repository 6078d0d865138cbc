"""Stage entries for audiences: the day of each member's last recorded change into each lifecycle stage.

    entered:<stage>            the member has a member_stage_changes row into the stage (any day)
    entered:<stage> WITHIN w   ... and the last one's day (brand time zone) is in the window

One definition, kept by the row compiler's EXISTS (store.audiences.facts.MemberRowFacts), the
index's bulk read here (`entry_rows`, then `stage_keys`: `stage.entered.<stage>` days, bit-sliced
with a `has:` key like the purchase days, tagquery.bitmap_keys) and the reference evaluator's facts
(`member_entries`); the differential tests hold them to it. Changes out of every stage (a member
merged away or erased: `to_stage` NULL) enter nothing, and a member who is not live is in no
audience whatever its history says. History starts when a brand's stages are first computed, so a
member already at risk then has no entry into at_risk (`lifecycle:at_risk` holds it, not
`entered:at_risk`). The index follows new changes through the change queue: migration 0017's
trigger queues the `stage` family of every member whose history changed, and the applier rewrites
those keys in the same transaction when the history changed under it (store.audiences.deltas).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date
from typing import Any

import sqlalchemy as sa
from psycopg import AsyncConnection

from store.audiences.purchases import Ids, Keys, sliced_days
from store.sql import Query
from store.tables import member_stage_changes
from tagquery.bitmap_keys import entered_field


def entry_rows(ids: bool) -> str:
    """Per stage: (member, day of its last entry) pairs, flat, for the index's queries (which define
    the CTE `tz`, the brand's time zone). The brand's changes by (brand_id, to_stage, changed_at)."""
    only = " AND c.member_id = ANY(:ids)" if ids else ""
    return f"""
SELECT e.to_stage AS name, string_agg(int8send(e.member_id) || int8send(e.day), ''::bytea) AS rows FROM (
    SELECT c.member_id, c.to_stage,
           ((max(c.changed_at) AT TIME ZONE tz.name)::date - DATE '1900-01-01')::bigint AS day
    FROM member_stage_changes c, tz
    WHERE c.brand_id = :brand_id AND c.to_stage IS NOT NULL{only}
    GROUP BY c.member_id, c.to_stage, tz.name
) e GROUP BY e.to_stage
"""  # noqa: S608 (constant text: no input reaches these strings)


def stage_keys(stages: Mapping[str, Ids]) -> Keys:
    """Every `stage.entered.*` key, from `entry_rows`' (member, day) pairs of live members."""
    for stage, rows in stages.items():
        table = rows.reshape(-1, 2)
        yield from sliced_days(entered_field(stage), table[:, 0], table[:, 1])


_c = member_stage_changes.c
_member_entries = Query(
    sa.select(
        _c.to_stage,
        sa.cast(sa.func.timezone(sa.bindparam("tz", type_=sa.Text), sa.func.max(_c.changed_at)), sa.Date).label("day"),
    )
    .where(_c.member_id == sa.bindparam("member_id"), _c.to_stage.is_not(None))
    .group_by(_c.to_stage)
)


async def member_entries(conn: AsyncConnection[Any], member_id: int, timezone: str) -> dict[str, date]:
    """Each stage the member has a recorded change into -> the day of the last one (`entered`, as
    tagquery.evaluate reads it)."""
    return {row["to_stage"]: row["day"] for row in await _member_entries.all(conn, member_id=member_id, tz=timezone)}

"""Merging without row triggers, where that is safe and allowed, as the demo loads and as
`pg_restore --disable-triggers` does.

Row triggers are the foreign key checks and the audience index's queue. The checks cost more than
the rows themselves (an order writes five rows; each checks one or two keys: measured, an import
of orders ran twice as fast without them), and an import's rows are consistent by construction:
they reference members it created or locked, postings and entries it just numbered, tags it just
read. What the checks also did, lock the referenced members against a concurrent merge, each kind
does explicitly, once per member rather than once per row. The audience queue is written by each
kind for the members it touched (`queue_changes`), as the triggers would have.

Safe: the tables an import writes have no user triggers but the audience index's. Allowed:
superusers, or roles granted SET on session_replication_role. Otherwise the triggers run.
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import AsyncConnection

# Tables whose rows an import inserts or updates (audit_log only receives one INSERT per chunk; its
# own trigger refuses updates and deletes and would not fire).
WRITTEN = (
    "members",
    "member_identities",
    "orders",
    "points_postings",
    "points_entries",
    "points_lots",
    "tier_changes",
    "member_tags",
)
_OTHER_TRIGGERS = (
    "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal AND tgrelid = ANY(%(tables)s::text[]::regclass[])"
    " AND tgname NOT LIKE 'audience\\_%%'"
)
SKIP = "SET LOCAL session_replication_role = replica"


async def may_skip(conn: AsyncConnection[Any]) -> bool:
    """Whether chunks may be merged without row triggers (see the module docstring)."""
    cursor = await conn.execute(_OTHER_TRIGGERS, {"tables": list(WRITTEN)})
    row = await cursor.fetchone()
    if row is None or row[0]:
        return False
    try:
        async with conn.transaction(force_rollback=True):
            await conn.execute(SKIP)
    except psycopg.errors.InsufficientPrivilege:
        return False
    return True

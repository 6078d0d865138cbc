"""After an import: the brand's audience index catches up with what the import wrote.

Every write of an import is an ordinary INSERT or UPDATE, so the triggers of migration 0004 have
queued its members as they queue any writer's; applying the queue here (as `omnimember audience
count` does) means counts are current as soon as the command ends, whether a server runs or not.
A queue of more than `store.audiences.deltas.REBUILD_OVER` members becomes a full rebuild.
"""

from __future__ import annotations

from psycopg import AsyncConnection

from store.audiences.deltas import Applied, apply_brand
from store.brands import brand_by_code
from store.urls import libpq_url


async def catch_up(url: str, brand: str) -> Applied | None:
    async with await AsyncConnection.connect(libpq_url(url), autocommit=True) as conn:
        brand_id: int = (await brand_by_code(conn, brand))["id"]
        return await apply_brand(conn, brand_id, wait=True)

"""Erasing a member's personal data (PIPL's right to deletion): store.members.erasure."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from resolvers.context import Info
from store.members import erasure
from store.members.erasure import Erasure
from store.transactions import transact


async def erase_member(info: Info, *, brand: str, member_id: int, reason: str) -> Erasure:
    """Erase in one transaction; UNKNOWN_BRAND for a brand out of the key's scope, UNKNOWN_MEMBER
    (word for word as for a missing id) for another brand's member."""
    brand_id = await info.context.brands.id_of(info.context.pool, brand)
    reason = erasure.check_reason(reason)

    async def work(conn: AsyncConnection[Any]) -> Erasure:
        return await erasure.erase(conn, brand_id=brand_id, member_id=member_id, reason=reason)

    done = await transact(info.context.pool, work)
    loaders = info.context.loaders
    for loader in (loaders.member_by_id, loaders.identities_by_member, loaders.merges_by_member, loaders.merge_by_id):
        loader.clear_all()  # the request reads the member as it is now
    return done

"""Marketing consent: set it, read it (batched), and an audience's reach on a touch channel."""

from __future__ import annotations

import datetime as dt
from typing import Any

from psycopg import AsyncConnection

from resolvers.context import Info
from resolvers.cursors import parse_id
from store.audiences import reach as audience_reach
from store.audiences.selections import Selection
from store.errors import DomainError, ErrorCode
from store.members import consent
from store.sql import Row
from store.transactions import transact


def _member_id(text: str) -> int:
    member_id = parse_id(text)
    if member_id is None:
        raise DomainError(ErrorCode.UNKNOWN_MEMBER, f"no member {text} in this brand", field="memberId")
    return member_id


async def set_consent(
    info: Info,
    *,
    brand: str,
    member_id: str,
    channel: str,
    granted: bool,
    source: str,
    given_at: dt.datetime | None,
) -> consent.Recorded:
    chosen = _member_id(member_id)

    async def work(conn: AsyncConnection[Any]) -> consent.Recorded:
        brand_id: int = (await info.context.brands.get(conn, brand))["id"]
        return await consent.set_consent(
            conn,
            brand_id=brand_id,
            member_id=chosen,
            channel=channel,
            granted=granted,
            source=source,
            given_at=given_at,
        )

    recorded = await transact(info.context.pool, work)
    info.context.loaders.consents_by_member.clear_all()  # the request's cached reads are stale
    return recorded


async def get_consents(info: Info, *, member_id: int) -> list[Row]:
    return await info.context.loaders.consents_by_member.load(member_id)


async def reach(info: Info, chosen: Selection, touch: str) -> audience_reach.Reach:
    async with info.context.pool.connection() as conn:
        return await audience_reach.reach(conn, chosen.brand, chosen.bound, chosen.today, touch)

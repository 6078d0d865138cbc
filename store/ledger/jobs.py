"""Scheduled jobs: expire points, review tiers. Safe to re-run and to run while serving."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from psycopg import AsyncConnection

from store.brands import brand_by_code
from store.ledger import tiers
from store.ledger.points import expire_member, members_with_expired_lots
from store.urls import libpq_url

BATCH = 1000


@dataclass(frozen=True, slots=True)
class ExpiryReport:
    members: int
    points: int


async def expire_points(url: str, as_of: dt.datetime) -> ExpiryReport:
    """Post EXPIRE entries for every lot expired by ``as_of``; one transaction per member."""
    members = points = 0
    after = 0
    async with await AsyncConnection.connect(libpq_url(url), autocommit=True) as conn:
        while batch := await members_with_expired_lots(conn, as_of, after, BATCH):
            for member_id, brand_id in batch:
                async with conn.transaction():
                    expired = await expire_member(conn, brand_id, member_id, as_of)
                members += expired > 0
                points += expired
            after = batch[-1][0]
    return ExpiryReport(members, points)


async def review_tiers(url: str, brand: str, as_of: dt.datetime) -> int:
    """Move every member of ``brand`` to the tier it qualifies for; returns how many changed."""
    async with await AsyncConnection.connect(libpq_url(url), autocommit=True) as conn, conn.transaction():
        brand_id: int = (await brand_by_code(conn, brand))["id"]
        return await tiers.review(conn, brand_id, as_of)

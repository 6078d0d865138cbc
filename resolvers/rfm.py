"""RFM: a brand's quintile thresholds and the named cells (store.audiences.rfm, rfm_store)."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from resolvers.context import Info
from store.audiences import rfm
from store.audiences.rfm_store import StoredThresholds
from store.audiences.selections import catalog_cache

CELLS = rfm.CELLS
definition = rfm.definition
__all__ = ["CELLS", "MemberScores", "StoredThresholds", "brand_thresholds", "definition", "member_scores"]


async def brand_thresholds(info: Info, brand_id: int) -> StoredThresholds:
    """The brand's stored thresholds (computed now if it has none yet)."""
    return await info.context.loaders.rfm_by_brand.load(brand_id)


@dataclasses.dataclass(frozen=True, slots=True)
class MemberScores:
    r: int
    f: int
    m: int
    cell: str


async def member_scores(
    info: Info, brand_id: int, last_purchase_at: datetime | None, order_count: int, total_spend: Decimal
) -> MemberScores | None:
    """A member's scores and cell under its brand's thresholds in force, on the brand's day (None:
    it never bought). The thresholds come from the per-process catalog cache, so a page of members
    costs one load per brand at most."""
    if last_purchase_at is None:
        return None
    async with info.context.pool.connection() as conn:
        brand = await catalog_cache(info.context.pool).get(conn, brand_id)
    facts = {
        "last_purchase": last_purchase_at.astimezone(ZoneInfo(brand.timezone)).date(),
        "order_count": order_count,
        "total_spend": total_spend,
    }
    found = rfm.scores(facts, brand.today(), brand.rfm)
    return MemberScores(found["rfm_r"], found["rfm_f"], found["rfm_m"], found[rfm.DIMENSION])

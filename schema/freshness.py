"""How current a brand's audience index is: on an audience (`Audience.freshness`) and on a brand
(`Brand.audienceIndex`, readable while the index is being built)."""

from __future__ import annotations

import datetime as dt

import strawberry

from resolvers import audiences
from resolvers.context import Info
from resolvers.domain import Freshness
from schema.enums import AudienceIndexState
from schema.lifecycle import LifecycleFreshness, lifecycle_freshness
from schema.rfm import RfmThresholds, brand_rfm


@strawberry.type(description="How current the bitmap index is.")
class IndexFreshness:
    as_of: dt.datetime | None = strawberry.field(
        description="Every write committed before this instant is counted; null: the index was never built."
    )
    lag_seconds: float | None = strawberry.field(description="Now minus `asOf`.")
    pending: int = strawberry.field(description="Member changes queued and not applied yet.")
    built_at: dt.datetime | None = strawberry.field(description="When the brand's index was last fully rebuilt.")
    state: AudienceIndexState = strawberry.field(
        description="READY: counts are right (as of `asOf`); BUILDING: a full build is due or running, and "
        "audience reads answer INDEX_NOT_READY until it is done."
    )

    fresh: strawberry.Private[Freshness]
    brand_id: strawberry.Private[int | None]

    @classmethod
    def of(cls, fresh: Freshness, brand_id: int | None = None) -> IndexFreshness:
        return cls(
            as_of=fresh.as_of,
            lag_seconds=audiences.lag_seconds(fresh),
            pending=fresh.pending,
            built_at=fresh.built_at,
            state=AudienceIndexState(fresh.state.value),
            fresh=fresh,
            brand_id=brand_id,
        )

    @strawberry.field(
        description="How current the brand's kept lifecycle stages (stage history, transitions) are; null where "
        "this freshness is not one brand's."
    )
    async def lifecycle(self, info: Info) -> LifecycleFreshness | None:
        return None if self.brand_id is None else await lifecycle_freshness(info, self.brand_id, self.fresh)

    @strawberry.field(
        description="The brand's RFM bounds in force, with when they were computed and their age (`lagSeconds`); "
        "null where this freshness is not one brand's."
    )
    async def rfm(self, info: Info) -> RfmThresholds | None:
        return None if self.brand_id is None else await brand_rfm(info, self.brand_id)

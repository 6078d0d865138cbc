"""RFM: the quintile bounds a brand's scores are read against, and the named cells (docs/audiences.md#rfm)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import strawberry

from resolvers import rfm
from resolvers.context import Info


@strawberry.type(description="A named RFM cell: the buyers whose R and FM = ceil((F + M) / 2) fall in its squares.")
class RfmCell:
    name: str = strawberry.field(description="As used in expressions: `rfm:<name>`.")
    definition: str = strawberry.field(description="Its squares, e.g. `R 5, FM 4-5; R 4, FM 5`.")


@strawberry.type(
    description="A brand's RFM quintile bounds (20th, 40th, 60th, 80th percentiles over its live buyers), "
    "recomputed once a brand day and by `omnimember refresh`. Scores 1-5: R = 1 + the bounds the days "
    "since the last purchase are at or below; F and M = 1 + the bounds order_count and total_spend exceed. "
    "In expressions: `rfm_r`, `rfm_f`, `rfm_m` and `rfm:<cell>`; a member who never bought has none."
)
class RfmThresholds:
    as_of_day: dt.date | None = strawberry.field(description="The brand day recency was measured on.")
    computed_at: dt.datetime | None = strawberry.field(description="When they were computed.")
    lag_seconds: float | None = strawberry.field(
        description="Now minus `computedAt`: how old the bounds are (null: never computed). A member's own scores "
        "follow its orders at once; only the bounds wait for the daily pass."
    )
    buyers: int = strawberry.field(description="The live buyers they were computed over.")
    recency_days: list[int] = strawberry.field(description="Days since the last purchase: R 5 at or below the first.")
    frequency: list[int] = strawberry.field(description="order_count bounds: F 5 above the last.")
    monetary: list[Decimal] = strawberry.field(description="total_spend bounds in yuan: M 5 above the last.")
    cells: list[RfmCell] = strawberry.field(description="The eleven named cells; every buyer is in exactly one.")

    @classmethod
    def of(cls, found: rfm.StoredThresholds) -> RfmThresholds:
        bounds = found.thresholds
        return cls(
            as_of_day=found.day,
            computed_at=found.computed_at,
            lag_seconds=None
            if found.computed_at is None
            else (dt.datetime.now(dt.UTC) - found.computed_at).total_seconds(),
            buyers=found.buyers,
            recency_days=list(bounds.recency_days),
            frequency=list(bounds.frequency),
            monetary=list(bounds.monetary),
            cells=[RfmCell(name=cell, definition=rfm.definition(cell)) for cell in rfm.CELLS],
        )


async def brand_rfm(info: Info, brand_id: int) -> RfmThresholds:
    """`Brand.rfm` (wired in schema/brand.py)."""
    return RfmThresholds.of(await rfm.brand_thresholds(info, brand_id))


@strawberry.type(description="A member's RFM scores (1-5) and cell under its brand's thresholds in force (Brand.rfm).")
class RfmScores:
    r: int = strawberry.field(description="Recency: 5 for the most recent fifth of buyers.")
    f: int = strawberry.field(description="Frequency (order_count): 5 for the most frequent fifth.")
    m: int = strawberry.field(description="Monetary (total_spend): 5 for the highest-spending fifth.")
    cell: str = strawberry.field(description="The named cell, as in `rfm:<cell>`.")


async def member_rfm(
    info: Info, brand_id: int, last_purchase_at: dt.datetime | None, order_count: int, total_spend: Decimal
) -> RfmScores | None:
    """`Member.rfm` (wired in schema/member.py)."""
    found = await rfm.member_scores(info, brand_id, last_purchase_at, order_count, total_spend)
    return None if found is None else RfmScores(r=found.r, f=found.f, m=found.m, cell=found.cell)

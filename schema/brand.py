"""Brands, the groups that own them, and their tiers."""

from __future__ import annotations

import datetime as dt

import strawberry

from resolvers import brands
from resolvers.context import Info
from resolvers.domain import Row
from schema.freshness import IndexFreshness
from schema.lifecycle import LifecycleRules, brand_rule_versions, brand_rules
from schema.rfm import RfmThresholds, brand_rfm


@strawberry.type(description="A company that owns several brands and may look across them.")
class Group:
    id: strawberry.ID = strawberry.field(description="Group id.")
    code: str = strawberry.field(description="Short stable code, e.g. `minigroup`.")
    name: str = strawberry.field(description="Display name.")

    @classmethod
    def from_row(cls, row: Row) -> Group:
        return cls(id=strawberry.ID(str(row["id"])), code=row["code"], name=row["name"])


@strawberry.type(description="A membership level of a brand; higher rank is better.")
class Tier:
    code: str = strawberry.field(description="Stable code used in audience expressions, e.g. `gold`.")
    name: str = strawberry.field(description="Display name.")
    rank: int = strawberry.field(description="0 for the entry tier, ascending.")


@strawberry.type(description="A brand running its own member programme: tiers, points and tags.")
class Brand:
    id: strawberry.ID = strawberry.field(description="Brand id.")
    code: str = strawberry.field(description="Short stable code that API arguments name the brand by.")
    name: str = strawberry.field(description="Display name.")
    created_at: dt.datetime = strawberry.field(description="When the brand was created.")
    group_id: strawberry.Private[int]

    @classmethod
    def from_row(cls, row: Row) -> Brand:
        return cls(
            id=strawberry.ID(str(row["id"])),
            code=row["code"],
            name=row["name"],
            created_at=row["created_at"],
            group_id=row["group_id"],
        )

    @strawberry.field(description="The group that owns the brand.")
    async def group(self, info: Info) -> Group:
        row = await brands.get_group(info, group_id=self.group_id)
        assert row is not None
        return Group.from_row(row)

    @strawberry.field(
        description="How current the brand's audience index is, and whether it can answer (READY) or is being "
        "built (BUILDING: audience reads answer INDEX_NOT_READY until it is done)."
    )
    async def audience_index(self, info: Info) -> IndexFreshness:
        return IndexFreshness.of(await brands.audience_index(info, brand_id=int(self.id)), int(self.id))

    @strawberry.field(description="The lifecycle rules in force: the thresholds of the five stages.")
    async def lifecycle_rules(self, info: Info) -> LifecycleRules:
        return await brand_rules(info, int(self.id))

    @strawberry.field(
        description="The RFM quintile bounds in force and the named cells (`rfm_r >= 4`, `rfm:champions`)."
    )
    async def rfm(self, info: Info) -> RfmThresholds:
        return await brand_rfm(info, int(self.id))

    @strawberry.field(description="Every version of the brand's lifecycle rules, newest first; the defaults last.")
    async def lifecycle_rule_versions(self, info: Info) -> list[LifecycleRules]:
        return await brand_rule_versions(info, int(self.id))

    @strawberry.field(description="The brand's tiers, entry tier first.")
    async def tiers(self, info: Info) -> list[Tier]:
        rows = await brands.get_tiers(info, brand_id=int(self.id))
        return [Tier(code=r["code"], name=r["name"], rank=r["rank"]) for r in rows]

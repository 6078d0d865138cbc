"""Lifecycle: the five stages, a brand's rules for them (versioned), members' stage history, and how
current the kept stages are (docs/lifecycle.md). Transitions, which page members, are in
schema/lifecycle_transitions.py."""

from __future__ import annotations

import datetime as dt
from enum import Enum
from typing import Annotated

import strawberry

from resolvers import lifecycle
from resolvers.audit import audited
from resolvers.context import Info
from resolvers.domain import DomainError, Freshness, Row
from schema.errors import InvalidInput, UnknownBrand, error_result

BrandCode = Annotated[str, strawberry.argument(description="Brand code.")]


@strawberry.enum(description="Where a member is in its life with the brand (DOMAIN.md; thresholds: LifecycleRules).")
class LifecycleStage(Enum):
    INTRODUCTION = strawberry.enum_value("introduction", description="Registered, never purchased.")
    GROWTH = strawberry.enum_value(
        "growth", description="Purchased within churnedDays, fewer than matureOrders orders in the past 365 days."
    )
    MATURE = strawberry.enum_value(
        "mature", description="matureOrders+ orders in the past 365 days and a purchase within atRiskDays."
    )
    AT_RISK = strawberry.enum_value(
        "at_risk", description="matureOrders+ orders in the past 365 days but none within atRiskDays (预流失)."
    )
    CHURNED = strawberry.enum_value("churned", description="Purchased, but not within churnedDays.")


@strawberry.enum(description="What made a member change stage.")
class StageChangeCause(Enum):
    WRITE = strawberry.enum_value(
        "write", description="A write to the member: an order, a merge or unmerge, a registration, an erasure."
    )
    TIME = strawberry.enum_value("time", description="Days passed: the member crossed a threshold with no write.")
    RULES = strawberry.enum_value("rules", description="The brand's lifecycle rules changed (setLifecycleRules).")
    REBUILD = strawberry.enum_value(
        "rebuild", description="Found when the audience index was rebuilt (a bulk load, `omnimember refresh`)."
    )


def _stage(value: str | None) -> LifecycleStage | None:
    return None if value is None else LifecycleStage(value)


@strawberry.type(description="One change of a member's lifecycle stage.")
class StageChange:
    from_stage: LifecycleStage | None = strawberry.field(
        description="The stage it left; null: it had none (it became live: registered, or unmerged)."
    )
    to_stage: LifecycleStage | None = strawberry.field(
        description="The stage it entered; null: it has none (it stopped being live: merged away or erased)."
    )
    changed_at: dt.datetime = strawberry.field(
        description="When: the write's time as the index applied it, or for TIME the start of the brand's day on "
        "which the member crossed the threshold."
    )
    cause: StageChangeCause = strawberry.field(description="What made it change.")
    rules_version: int = strawberry.field(description="The version of the brand's rules it was computed under.")

    @classmethod
    def from_row(cls, row: Row) -> StageChange:
        return cls(
            from_stage=_stage(row["from_stage"]),
            to_stage=_stage(row["to_stage"]),
            changed_at=row["changed_at"],
            cause=StageChangeCause(row["cause"]),
            rules_version=row["rules_version"],
        )


@strawberry.type(description="A version of a brand's lifecycle rules: the thresholds of the five stages.")
class LifecycleRules:
    version: int = strawberry.field(description="1, 2, ... as set; 0: the defaults, never set.")
    mature_orders: int = strawberry.field(
        description="Orders in the past `ordersWindowDays` days from which a member is mature (or at risk)."
    )
    at_risk_days: int = strawberry.field(description="A frequent buyer with no purchase in this many days is at risk.")
    churned_days: int = strawberry.field(description="A buyer with no purchase in this many days has churned.")
    orders_window_days: int = strawberry.field(description="The window orders are counted in (365, fixed).")
    created_at: dt.datetime | None = strawberry.field(description="When this version was set; null for the defaults.")
    created_by: str | None = strawberry.field(description="The name of the API key that set it.")

    @classmethod
    def of(cls, found: lifecycle.RulesVersion) -> LifecycleRules:
        rules = found.rules
        return cls(
            version=found.version,
            mature_orders=rules.mature_orders,
            at_risk_days=rules.at_risk_days,
            churned_days=rules.churned_days,
            orders_window_days=lifecycle.ORDERS_WINDOW_DAYS,
            created_at=found.created_at,
            created_by=found.created_by,
        )


@strawberry.type(
    description="How current the kept lifecycle stages (stageHistory, lifecycleTransitions) are. "
    "`lifecycle:<stage>` in an expression is computed from the index as each query runs."
)
class LifecycleFreshness:
    as_of_day: dt.date | None = strawberry.field(
        description="The brand day the stages are evaluated for; null: not computed yet (the index is being built)."
    )
    computed_at: dt.datetime | None = strawberry.field(description="When the stages were last brought up to date.")
    rules_version: int | None = strawberry.field(description="The version of the brand's rules they follow.")
    as_of: dt.datetime | None = strawberry.field(
        description="Every stage change that happened before this instant is recorded (writes applied to the "
        "index, days passed); null: not computed yet."
    )
    lag_seconds: float | None = strawberry.field(description="Now minus `asOf`.")

    @classmethod
    def of(cls, found: lifecycle.StageFreshness) -> LifecycleFreshness:
        now = dt.datetime.now(dt.UTC)
        as_of = None if found.day is None else (found.behind_since or now)
        return cls(
            as_of_day=found.day,
            computed_at=found.computed_at,
            rules_version=found.rules_version,
            as_of=as_of,
            lag_seconds=None if as_of is None else max((now - as_of).total_seconds(), 0.0),
        )


async def lifecycle_freshness(info: Info, brand_id: int, index: Freshness) -> LifecycleFreshness:
    """`IndexFreshness.lifecycle` (wired in schema/freshness.py)."""
    return LifecycleFreshness.of(await lifecycle.freshness(info, brand_id, index))


async def brand_rules(info: Info, brand_id: int) -> LifecycleRules:
    """`Brand.lifecycleRules` (wired in schema/brand.py)."""
    return LifecycleRules.of(await lifecycle.current_rules(info, brand_id))


async def brand_rule_versions(info: Info, brand_id: int) -> list[LifecycleRules]:
    """`Brand.lifecycleRuleVersions`."""
    return [LifecycleRules.of(found) for found in await lifecycle.rules_versions(info, brand_id)]


async def stage_history(info: Info, member_id: int) -> list[StageChange]:
    """`Member.stageHistory` (wired in schema/member.py)."""
    return [StageChange.from_row(row) for row in await lifecycle.stage_history_of(info, member_id)]


async def current_stage(info: Info, member_id: int) -> LifecycleStage | None:
    """`Member.lifecycleStage`."""
    return _stage(await lifecycle.current_stage(info, member_id))


@strawberry.type(description="A new version of the brand's lifecycle rules is in force.")
class LifecycleRulesSet:
    rules: LifecycleRules = strawberry.field(description="The new version.")
    moved: int | None = strawberry.field(
        description="Members whose stage changed under it (recorded with cause RULES); null when the brand's "
        "index was busy or the recompute ran past the request's share (a brand of millions): the server's "
        "scheduled pass recomputes them shortly."
    )


SetLifecycleRulesResult = Annotated[
    LifecycleRulesSet | UnknownBrand | InvalidInput,
    strawberry.union("SetLifecycleRulesResult", description="Result of setLifecycleRules."),
]


@strawberry.type(description="Set lifecycle rules.")
class LifecycleMutation:
    @strawberry.mutation(
        description="Set a brand's lifecycle thresholds as a new version (the old ones are kept: "
        "`Brand.lifecycleRuleVersions`). `lifecycle:<stage>` means the new rules at once; every member's "
        "stage is recomputed and the changes recorded with cause RULES. Thresholds that leave a stage no "
        "member could be in are refused (InvalidInput naming the argument)."
    )
    @audited("setLifecycleRules")
    async def set_lifecycle_rules(
        self,
        info: Info,
        brand: BrandCode,
        mature_orders: Annotated[
            int | None,
            strawberry.argument(
                description="Orders in the past 365 days that make a member mature (1-1000); omitted: unchanged."
            ),
        ] = None,
        at_risk_days: Annotated[
            int | None,
            strawberry.argument(
                description="Days without a purchase after which a frequent buyer is at risk (1-364, less than "
                "churnedDays); omitted: unchanged."
            ),
        ] = None,
        churned_days: Annotated[
            int | None,
            strawberry.argument(
                description="Days without a purchase after which a buyer has churned (1-3650); omitted: unchanged."
            ),
        ] = None,
    ) -> SetLifecycleRulesResult:
        try:
            done = await lifecycle.set_rules(
                info, brand=brand, mature_orders=mature_orders, at_risk_days=at_risk_days, churned_days=churned_days
            )
        except DomainError as error:
            return error_result(error)  # type: ignore[no-any-return]
        return LifecycleRulesSet(rules=LifecycleRules.of(done.rules), moved=done.moved)

"""Lifecycle: a brand's stage rules and their versions, members' stage history, transitions."""

from __future__ import annotations

import dataclasses
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from psycopg import AsyncConnection

from resolvers import audiences
from resolvers.context import Info
from resolvers.members import Page
from store.audiences import lifecycle, lifecycle_rules, stage_history
from store.audiences.deltas import Freshness
from store.audiences.facts import DEFAULT_RULES, LifecycleRules
from store.audiences.lifecycle import StageFreshness, Synced
from store.audiences.lifecycle_rules import RulesVersion
from store.audiences.selections import catalog_cache
from store.errors import DomainError, ErrorCode
from store.sql import Row
from store.transactions import transact
from tagquery.compile_bitmap import ORDERS_WINDOW_DAYS

if TYPE_CHECKING:
    from store.audiences.stage_history import Transitions

log = logging.getLogger(__name__)
RECOMPUTE_WAIT = 2.0  # seconds setLifecycleRules waits for the brand's index lock, then leaves it to the schedule
RECOMPUTE_BUDGET = 10.0  # seconds a statement of that recompute may take within the request, likewise
__all__ = ["DEFAULT_RULES", "ORDERS_WINDOW_DAYS", "LifecycleRules", "RulesVersion", "StageFreshness"]


async def current_rules(info: Info, brand_id: int) -> RulesVersion:
    return await info.context.loaders.lifecycle_rules_by_brand.load(brand_id)


async def rules_versions(info: Info, brand_id: int) -> list[RulesVersion]:
    return await info.context.loaders.lifecycle_rule_versions_by_brand.load(brand_id)


@dataclasses.dataclass(frozen=True, slots=True)
class RulesSet:
    rules: RulesVersion
    moved: int | None
    """Stage changes recorded by recomputing every member under the new rules; None when that was
    left to the server's scheduled pass (the brand's index busy or not built)."""


async def set_rules(
    info: Info, *, brand: str, mature_orders: int | None, at_risk_days: int | None, churned_days: int | None
) -> RulesSet:
    """A new version of the brand's rules (omitted thresholds keep their current values); then every
    member's stage recomputed under them, if the brand's index is free (else the scheduled pass does)."""

    async def work(conn: AsyncConnection[Any]) -> tuple[int, RulesVersion]:
        brand_id: int = (await info.context.brands.get(conn, brand))["id"]
        now = (await lifecycle_rules.current_rules(conn, brand_id)).rules
        chosen = LifecycleRules(
            mature_orders=now.mature_orders if mature_orders is None else mature_orders,
            at_risk_days=now.at_risk_days if at_risk_days is None else at_risk_days,
            churned_days=now.churned_days if churned_days is None else churned_days,
        )
        return brand_id, await lifecycle_rules.set_rules(conn, brand_id, chosen, info.context.principal.key_name)

    brand_id, version = await transact(info.context.pool, work)
    catalog_cache(info.context.pool).invalidate(brand_id)  # `lifecycle:` means the new rules at once
    return RulesSet(version, await _recompute(info, brand_id))


async def _recompute(info: Info, brand_id: int) -> int | None:
    """The stages under the brand's new rules, in a transaction of its own: the rules are set
    whatever happens here, and the scheduled pass recomputes what this could not."""
    try:
        async with info.context.pool.connection() as conn:
            synced: Synced | None = await lifecycle.sync_locked(
                conn, brand_id, wait=True, lock_timeout=RECOMPUTE_WAIT, budget=RECOMPUTE_BUDGET
            )
    except Exception:
        log.exception("lifecycle stages of brand %s: not recomputed now; the scheduled pass will", brand_id)
        return None
    return None if synced is None else sum(synced.changes.values())


async def stage_history_of(info: Info, member_id: int) -> list[Row]:
    return await info.context.loaders.stage_changes_by_member.load(member_id)


async def current_stage(info: Info, member_id: int) -> str | None:
    row = await info.context.loaders.stage_by_member.load(member_id)
    return None if row is None else str(row["stage"])


@dataclasses.dataclass(frozen=True, slots=True)
class Found:
    brand_id: int
    transitions: Transitions


async def transitions(
    info: Info,
    *,
    brand: str,
    from_stage: str | None,
    to_stage: str | None,
    since: datetime,
    until: datetime | None,
    where: str | None,
) -> Found:
    """The brand's stage changes in [since, until), and the live members who made them (within the
    audience `where` selects, when given)."""
    end = until or datetime.now(UTC)
    if end <= since:
        raise DomainError(ErrorCode.INVALID_INPUT, "until must be later than since", field="until")
    async with info.context.pool.connection() as conn:
        brand_id: int = (await info.context.brands.get(conn, brand))["id"]
        found = await stage_history.transitions(
            conn, brand_id, from_stage=from_stage, to_stage=to_stage, since=since, until=end
        )
    if where is not None:
        chosen = await audiences.selection(info, brand=brand, expression=where, filter=None, field="where")
        ids = stage_history.intersect(found.members, await audiences.member_ids(info, chosen))
        found = dataclasses.replace(found, members=ids)
    return Found(brand_id, found)


async def members_page(info: Info, found: Found, *, first: int, after: str | None) -> Page:
    return await audiences.id_page(info, found.brand_id, found.transitions.members, first=first, after=after)


async def freshness(info: Info, brand_id: int, index: Freshness) -> StageFreshness:
    """How current the brand's stages are (they follow the index: `index` is its freshness)."""
    async with info.context.pool.connection() as conn:
        return await lifecycle.stage_freshness(conn, brand_id, index.as_of, datetime.now(UTC))

"""A brand's lifecycle rules, versioned: the thresholds of the five stages (store.audiences.facts).

Every change is a new row (`lifecycle_rules`, version 1, 2, ...); nothing is overwritten, so a
recorded stage change keeps naming the version it was computed under. A brand that never set its
rules has the defaults, as version 0 (never stored).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from store.audiences.facts import DEFAULT_RULES, LifecycleRules
from store.errors import DomainError, ErrorCode
from store.sql import Query
from store.tables import lifecycle_rules
from tagquery.compile_bitmap import ORDERS_WINDOW_DAYS

MAX_DAYS = 3650
MAX_ORDERS = 1000
_r = lifecycle_rules.c


@dataclasses.dataclass(frozen=True, slots=True)
class RulesVersion:
    version: int
    """0: the defaults, never set."""
    rules: LifecycleRules
    created_at: datetime | None
    created_by: str | None
    """The name of the API key that set them."""


DEFAULT_VERSION = RulesVersion(0, DEFAULT_RULES, None, None)

_newest_first = (
    sa.select(_r.version, _r.params, _r.created_at, _r.created_by)
    .where(_r.brand_id == sa.bindparam("brand_id"))
    .order_by(_r.version.desc())
)
_versions = Query(_newest_first)
_current = Query(_newest_first.limit(1))
_add = Query(
    sa.insert(lifecycle_rules)
    .from_select(
        ["brand_id", "version", "params", "created_by"],
        sa.select(
            sa.bindparam("brand_id"),
            sa.func.coalesce(sa.func.max(_r.version), 0) + 1,
            sa.bindparam("params"),
            sa.bindparam("created_by"),
        ).where(_r.brand_id == sa.bindparam("brand_id")),
    )
    .returning(_r.version, _r.params, _r.created_at, _r.created_by)
)


def _params(rules: LifecycleRules) -> dict[str, int]:
    return dataclasses.asdict(rules)


def _version(row: Mapping[str, Any]) -> RulesVersion:
    known = {name: value for name, value in row["params"].items() if name in _params(DEFAULT_RULES)}
    return RulesVersion(row["version"], LifecycleRules(**known), row["created_at"], row["created_by"])


async def current_rules(conn: AsyncConnection[Any], brand_id: int) -> RulesVersion:
    """The brand's rules in force."""
    row = await _current.one(conn, brand_id=brand_id)
    return DEFAULT_VERSION if row is None else _version(row)


async def rules_history(conn: AsyncConnection[Any], brand_id: int) -> list[RulesVersion]:
    """Every version the brand set, newest first, then the defaults (version 0)."""
    return [*(_version(row) for row in await _versions.all(conn, brand_id=brand_id)), DEFAULT_VERSION]


def check_rules(rules: LifecycleRules) -> None:
    """INVALID_INPUT naming the argument at fault for thresholds that are out of range or leave a
    stage no member could ever be in."""

    def refuse(field: str, message: str) -> DomainError:
        return DomainError(ErrorCode.INVALID_INPUT, message, field=field)

    if not 1 <= rules.mature_orders <= MAX_ORDERS:
        raise refuse("matureOrders", f"matureOrders must be 1-{MAX_ORDERS}, not {rules.mature_orders}")
    for field, days in (("atRiskDays", rules.at_risk_days), ("churnedDays", rules.churned_days)):
        if not 1 <= days <= MAX_DAYS:
            raise refuse(field, f"{field} must be 1-{MAX_DAYS} days, not {days}")
    if rules.at_risk_days >= rules.churned_days:
        raise refuse(
            "atRiskDays",
            f"atRiskDays ({rules.at_risk_days}) must be less than churnedDays ({rules.churned_days}): a member with "
            "no purchase in churnedDays has churned, so none could ever be at risk",
        )
    if rules.at_risk_days >= ORDERS_WINDOW_DAYS:
        raise refuse(
            "atRiskDays",
            f"atRiskDays ({rules.at_risk_days}) must be less than {ORDERS_WINDOW_DAYS}: at risk means matureOrders "
            f"orders in the past {ORDERS_WINDOW_DAYS} days but none in the last atRiskDays, so none could ever be",
        )


async def set_rules(conn: AsyncConnection[Any], brand_id: int, rules: LifecycleRules, created_by: str) -> RulesVersion:
    """Add the brand's next version of its rules (checked first: nothing is written on INVALID_INPUT)."""
    check_rules(rules)
    row = await _add.one(conn, brand_id=brand_id, params=Jsonb(_params(rules)), created_by=created_by)
    assert row is not None
    return _version(row)

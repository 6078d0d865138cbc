"""Tiers: qualify on what a member earned in the last 365 days; upgrade at once, downgrade on review.

A brand qualifies members by growth value (default) or by points earned from purchases
(`brand_rules.tier_basis`), net of refunds, over a rolling 365 days. An order that lifts a member
over a threshold upgrades immediately; `review` (run on a schedule, `omnimember review-tiers`)
moves every member of a brand to the tier it qualifies for, which is how downgrades happen.
Every change is recorded in `tier_changes` with its cause.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import sqlalchemy as sa
from psycopg import AsyncConnection

from store.sql import Query
from store.tables import brand_rules, brand_tiers, members, orders, tier_changes

WINDOW = dt.timedelta(days=365)

_AS_OF = sa.bindparam("as_of", type_=sa.DateTime(timezone=True))


def _qualifying(basis_is_growth: sa.ColumnElement[bool]) -> sa.ColumnElement[Any]:
    """Growth or purchase points earned in the window, net of refunds (per order row)."""
    return sa.case(
        (basis_is_growth, orders.c.growth_earned - orders.c.growth_reversed),
        else_=orders.c.points_earned - orders.c.points_reversed - orders.c.points_unrecovered,
    )


_metric = (
    sa.select(orders.c.member_id, sa.func.sum(_qualifying(brand_rules.c.tier_basis == "growth")).label("metric"))
    .join(brand_rules, brand_rules.c.brand_id == orders.c.brand_id)
    .where(orders.c.brand_id == sa.bindparam("brand_id"), orders.c.paid_at > _AS_OF - sa.text("interval '365 days'"))
    .group_by(orders.c.member_id)
)


def recorded_changes(changed: Any, cause: sa.ColumnElement[str] | None = None) -> sa.Insert:
    """Tier changes, one per row of ``changed`` (id, brand_id, from_tier, to_tier), with the cause
    (by default the ``cause`` parameter)."""
    return sa.insert(tier_changes).from_select(
        ["brand_id", "member_id", "from_tier", "to_tier", "cause"],
        sa.select(
            changed.c.brand_id,
            changed.c.id,
            changed.c.from_tier,
            changed.c.to_tier,
            sa.bindparam("cause", type_=sa.Text) if cause is None else cause,
        ),
    )


_WINDOW_START = sa.func.now() - sa.text("interval '365 days'")


def upgraded_tier(
    current: Any,
    order_growth: sa.ColumnElement[int],
    order_points: sa.ColumnElement[int],
    paid_at: sa.ColumnElement[dt.datetime],
) -> sa.ColumnElement[str]:
    """The tier to SET in an UPDATE of ``members`` (FROM ``current``, the member's tier row, and
    ``brand_rules``) that records an order: the best tier the member's qualifying metric reaches
    with the order counted (its earlier orders are read from ``orders``, this one is not there
    yet), if it ranks above the current one; else the tier it has. Upgrades only."""
    growth_basis = brand_rules.c.tier_basis == "growth"
    earlier = (
        sa.select(sa.func.coalesce(sa.func.sum(_qualifying(growth_basis)), 0))
        .where(orders.c.member_id == members.c.id, orders.c.paid_at > _WINDOW_START)
        .correlate_except(orders)
        .scalar_subquery()
    )
    this_order = sa.case((paid_at <= _WINDOW_START, 0), (growth_basis, order_growth), else_=order_points)
    target = brand_tiers.alias("target_tier")
    best = (
        sa.select(target.c.code)
        .where(
            target.c.brand_id == members.c.brand_id,
            target.c.threshold <= earlier + this_order,
            target.c.rank > current.c.rank,
        )
        .order_by(target.c.rank.desc())
        .limit(1)
        .correlate_except(target)  # the order's own figures come from the UPDATE's FROM too
        .scalar_subquery()
    )
    return sa.func.coalesce(best, members.c.tier)


_record = Query(
    sa.insert(tier_changes).values(
        brand_id=sa.bindparam("brand_id"),
        member_id=sa.bindparam("member_id"),
        from_tier=sa.bindparam("from_tier"),
        to_tier=sa.bindparam("to_tier"),
        cause=sa.bindparam("cause"),
    )
)

# The whole brand in one statement: each live member's qualifying tier, then the changes.
_earned = _metric.subquery("earned")
_target = brand_tiers.alias("target")
_targets = (
    sa.select(
        members.c.id.label("member_id"),
        members.c.tier.label("from_tier"),
        sa.select(_target.c.code)
        .where(
            _target.c.brand_id == members.c.brand_id,
            _target.c.threshold <= sa.func.coalesce(_earned.c.metric, 0),
        )
        .order_by(_target.c.rank.desc())
        .limit(1)
        .scalar_subquery()
        .label("to_tier"),
    )
    .select_from(members.outerjoin(_earned, _earned.c.member_id == members.c.id))
    .where(members.c.brand_id == sa.bindparam("brand_id"), members.c.merged_into.is_(None))
    .cte("targets")
)
# The members to move, locked in id order first (the ledger's lock order, `store.ledger.journal`):
# the UPDATE alone would lock them in whatever order its join yields them. A member whose tier an
# order changed after the snapshot the targets come from keeps that tier until the next review.
_moving = (
    sa.select(members.c.id)
    .where(members.c.id.in_(sa.select(_targets.c.member_id).where(_targets.c.from_tier != _targets.c.to_tier)))
    .order_by(members.c.id)
    .with_for_update(key_share=True)
    .cte("moving")
)
_changed = (
    sa.update(members)
    .where(
        members.c.id == _targets.c.member_id,
        members.c.id.in_(sa.select(_moving.c.id)),
        members.c.tier == _targets.c.from_tier,
        _targets.c.from_tier != _targets.c.to_tier,
    )
    .values(tier=_targets.c.to_tier)
    .returning(members.c.id, members.c.brand_id, _targets.c.from_tier, _targets.c.to_tier)
    .cte("changed")
)
_review = Query(recorded_changes(_changed).returning(tier_changes.c.id))


async def record_change(
    conn: AsyncConnection[Any], *, brand_id: int, member_id: int, from_tier: str, to_tier: str, cause: str
) -> None:
    await _record.run(conn, brand_id=brand_id, member_id=member_id, from_tier=from_tier, to_tier=to_tier, cause=cause)


async def review(conn: AsyncConnection[Any], brand_id: int, as_of: dt.datetime) -> int:
    """Move every live member of the brand to the tier it qualifies for; returns how many changed."""
    rows = await _review.all(conn, brand_id=brand_id, as_of=as_of, cause=f"review as of {as_of.date().isoformat()}")
    return len(rows)

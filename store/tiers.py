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


def _recorded(changed: Any) -> sa.Insert:
    """Tier changes, one per row of ``changed`` (id, brand_id, from_tier, to_tier), with the cause."""
    return sa.insert(tier_changes).from_select(
        ["brand_id", "member_id", "from_tier", "to_tier", "cause"],
        sa.select(
            changed.c.brand_id,
            changed.c.id,
            changed.c.from_tier,
            changed.c.to_tier,
            sa.bindparam("cause", type_=sa.Text),
        ),
    )


# Upgrade in one statement: the member's tier, its qualifying metric (orders written earlier in
# the transaction included), the best tier that metric reaches, and the change if it is higher.
_MEMBER = sa.bindparam("member_id", type_=sa.BigInteger)
_current = brand_tiers.alias("current_tier")
_now_in = (
    sa.select(members.c.id, members.c.brand_id, members.c.tier, _current.c.rank)
    .join(_current, sa.and_(_current.c.brand_id == members.c.brand_id, _current.c.code == members.c.tier))
    .where(members.c.id == _MEMBER)
    .cte("now_in")
)
_member_metric = (
    sa.select(sa.func.coalesce(sa.func.sum(_qualifying(brand_rules.c.tier_basis == "growth")), 0))
    .select_from(orders.join(brand_rules, brand_rules.c.brand_id == orders.c.brand_id))
    .where(orders.c.member_id == _MEMBER, orders.c.paid_at > _AS_OF - sa.text("interval '365 days'"))
    .scalar_subquery()
)
_reaches = (
    sa.select(brand_tiers.c.code, brand_tiers.c.rank)
    .where(brand_tiers.c.brand_id == _now_in.c.brand_id, brand_tiers.c.threshold <= _member_metric)
    .order_by(brand_tiers.c.rank.desc())
    .limit(1)
    .lateral("reaches")
)
_raise = (
    sa.update(members)
    .where(members.c.id == _now_in.c.id, _reaches.c.rank > _now_in.c.rank)
    .values(tier=_reaches.c.code)
    .returning(members.c.id, members.c.brand_id, _now_in.c.tier.label("from_tier"), _reaches.c.code.label("to_tier"))
    .cte("raised")
)
_upgrade = Query(_recorded(_raise).returning(tier_changes.c.to_tier).add_cte(_now_in, _raise))
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
_changed = (
    sa.update(members)
    .where(members.c.id == _targets.c.member_id, _targets.c.from_tier != _targets.c.to_tier)
    .values(tier=_targets.c.to_tier)
    .returning(members.c.id, members.c.brand_id, _targets.c.from_tier, _targets.c.to_tier)
    .cte("changed")
)
_review = Query(_recorded(_changed).returning(tier_changes.c.id))


async def record_change(
    conn: AsyncConnection[Any], *, brand_id: int, member_id: int, from_tier: str, to_tier: str, cause: str
) -> None:
    await _record.run(conn, brand_id=brand_id, member_id=member_id, from_tier=from_tier, to_tier=to_tier, cause=cause)


async def upgrade(conn: AsyncConnection[Any], member_id: int, as_of: dt.datetime, cause: str) -> str | None:
    """Raise the member to the best tier it qualifies for, never lower; returns the new tier if any."""
    to_tier: str | None = await _upgrade.scalar(conn, member_id=member_id, as_of=as_of, cause=cause)
    return to_tier


async def review(conn: AsyncConnection[Any], brand_id: int, as_of: dt.datetime) -> int:
    """Move every live member of the brand to the tier it qualifies for; returns how many changed."""
    rows = await _review.all(conn, brand_id=brand_id, as_of=as_of, cause=f"review as of {as_of.date().isoformat()}")
    return len(rows)

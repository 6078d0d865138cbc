"""What every name of the tag language means, read from the system of record. One place.

A member is in a brand's audiences while it is live: not merged into another (`merged_into IS
NULL`) and not erased (`erased_at IS NULL`, store.members.erasure). Dates are calendar days in the
brand's time zone (`brand_rules.timezone`).

    tag:<code>        a member_tags row for the tag that has not expired (`expires_at` NULL or > now)
    tier, city, gender, status    the members columns (status: prospect until a first purchase)
    channel:<c>       the member has an identity of that channel (a set: any number of channels)
    consent:<c>       the member's member_consents row for channel c (or `guardian`) is granted (a set)
    points, growth    points_balance, growth_value
    order_count, total_spend      the members aggregates (refunds lower spend, not the count)
    registered, last_purchase     the day of registered_at / last_purchase_at
    age               whole years since `birthday`, on the day the query runs
    days_since_last_purchase      today - last_purchase
    orders_365d       orders (refunded or not, as order_count) paid on or after today - 365
    lifecycle         derived from the above by the brand's LifecycleRules: exactly one stage per member
    rfm_r, rfm_f, rfm_m, rfm      RFM scores 1-5 and cell, derived by the brand's RfmThresholds (store.audiences.rfm)
    bought, first_purchase, first_channel, spend_<N>d, orders_<N>d (and per category)
                      purchase behaviour from orders and their lines (store.audiences.purchases)
    entered:<stage>   the member has a member_stage_changes row into the stage (store.audiences.lifecycle
                      records them); with WITHIN, the day of the last one is in the window

The row compiler reads these through MemberRowFacts, the bitmap index is built from
`load_index_facts`, `member_facts` feeds the reference evaluator, and lifecycle is expanded into
the same bound terms for all three (`expand_derived`, with the brand's rules), as RFM is.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from datetime import date
from decimal import Decimal
from types import MappingProxyType
from typing import Any

import sqlalchemy as sa
from psycopg import AsyncConnection
from sqlalchemy.dialects.postgresql import ARRAY

from store.audiences import purchases, rfm, stage_days
from store.sql import Query
from store.tables import (
    brand_rules,
    member_consents,
    member_identities,
    member_stage_changes,
    member_tags,
    members,
    order_lines,
    orders,
    tag_definitions,
)
from tagquery.ast import TAG, Op, Unit
from tagquery.bound import (
    Bound,
    BoundAnd,
    BoundNot,
    BoundOr,
    FieldBetween,
    FieldCompare,
    FieldIn,
    FieldWithin,
    Membership,
)
from tagquery.catalog import BOUGHT, ENTERED, FIRST_CHANNEL, FieldType, window_of
from tagquery.evaluate import Purchase, evaluate

DEFAULT_TIMEZONE = "Asia/Shanghai"
STAGES = ("introduction", "growth", "mature", "at_risk", "churned")


@dataclasses.dataclass(frozen=True, slots=True)
class LifecycleRules:
    """A brand's lifecycle thresholds (DOMAIN.md). The five stage shapes are fixed; only these
    numbers are the brand's (store.audiences.lifecycle keeps their versions). The year in which
    orders are counted is `orders_365d`'s: 365 days."""

    mature_orders: int = 4
    """Orders in the past 365 days from which a member is mature (or, without a recent one, at risk)."""
    at_risk_days: int = 120
    """A frequent buyer with no purchase in this many days is at risk (预流失)."""
    churned_days: int = 365
    """A buyer with no purchase in this many days has churned."""


DEFAULT_RULES = LifecycleRules()


@functools.cache
def lifecycle_terms(rules: LifecycleRules) -> Mapping[str, Bound]:
    """The stages as terms of the language: a partition of the live members by construction (a
    decision tree: purchased? within churned_days? frequent? recent?), whatever the numbers; a
    purchase within a window implies one at all (a missing date is in no window).

    introduction  registered, never purchased (no last purchase)
    churned       purchased, but not in the last `churned_days`
    growth        purchased in the last `churned_days`, fewer than `mature_orders` orders in the last 365 days
    mature        ... `mature_orders`+ orders in the last 365 days and a purchase in the last `at_risk_days`
    at_risk       ... `mature_orders`+ orders in the last 365 days but none in the last `at_risk_days`
    """
    purchased = FieldCompare("last_purchase", FieldType.DATE, Op.GTE, date(1, 1, 1))
    active = FieldWithin("last_purchase", rules.churned_days, Unit.DAY)
    recent = FieldWithin("last_purchase", rules.at_risk_days, Unit.DAY)
    frequent = FieldCompare("orders_365d", FieldType.INTEGER, Op.GTE, rules.mature_orders)
    terms: dict[str, Bound] = {
        "introduction": BoundNot(purchased),
        "growth": BoundAnd((active, BoundNot(frequent))),
        "mature": BoundAnd((active, frequent, recent)),
        "at_risk": BoundAnd((active, frequent, BoundNot(recent))),
        "churned": BoundAnd((purchased, BoundNot(active))),
    }
    return MappingProxyType({stage: terms[stage] for stage in STAGES})


# The default stages (what every brand has until it sets its own rules).
LIFECYCLE: Mapping[str, Bound] = lifecycle_terms(DEFAULT_RULES)


def expand_derived(
    node: Bound, rules: LifecycleRules = DEFAULT_RULES, thresholds: rfm.RfmThresholds = rfm.NO_THRESHOLDS
) -> Bound:
    """`node` with every lifecycle and RFM term replaced by its definition under the brand's `rules`
    and RFM `thresholds` (compilers never see lifecycle or RFM)."""
    stages = lifecycle_terms(rules)

    def expand(node: Bound) -> Bound:
        match node:
            case BoundAnd(operands):
                return BoundAnd(tuple(map(expand, operands)))
            case BoundOr(operands):
                return BoundOr(tuple(map(expand, operands)))
            case BoundNot(operand):
                return BoundNot(expand(operand))
            case Membership("lifecycle", values):
                chosen = tuple(stages[value] for value in values)
                return chosen[0] if len(chosen) == 1 else BoundOr(chosen)
            case Membership(rfm.DIMENSION, values):
                cells = tuple(rfm.cell_terms(thresholds)[value] for value in values)
                return cells[0] if len(cells) == 1 else BoundOr(cells)
            case FieldCompare() | FieldIn() | FieldBetween() if node.field in rfm.FIELDS:
                return rfm.field_term(thresholds, node)
        return node

    return expand(node)


def lifecycle_of(facts: Mapping[str, Any], today: date, rules: LifecycleRules = DEFAULT_RULES) -> str:
    """The stage of a member whose other facts are known (for the reference evaluator)."""
    return next(stage for stage, rule in lifecycle_terms(rules).items() if evaluate(rule, facts, today))


def local_date(moment: sa.ColumnElement[Any], timezone: sa.ColumnElement[str]) -> sa.ColumnElement[date]:
    return sa.cast(sa.func.timezone(timezone, moment), sa.Date)


class MemberRowFacts:
    """The facts of one `members` row as SQL (tagquery.compile_rows.RowFacts).

    `:today` (the brand's date) and `:tz` (its time zone) are bound parameters of the statement.
    """

    def __init__(self, member: sa.FromClause) -> None:
        self.m = member
        self.today = sa.bindparam("today", type_=sa.Date)
        self.tz = sa.bindparam("tz", type_=sa.Text)

    def membership(self, dimension: str, values: tuple[str, ...], since: date | None = None) -> sa.ColumnElement[bool]:
        wanted = sa.literal(list(values), ARRAY(sa.Text))
        if dimension == BOUGHT:
            return self._bought(wanted, since)
        if dimension == ENTERED:
            return self._entered(wanted, since)
        if dimension == FIRST_CHANNEL:
            return sa.func.coalesce(self._first_order(orders.c.channel) == sa.any_(wanted), sa.false())
        if dimension == TAG:
            return sa.exists().where(
                member_tags.c.member_id == self.m.c.id,
                tag_definitions.c.id == member_tags.c.tag_id,
                tag_definitions.c.code == sa.any_(wanted),
                sa.or_(member_tags.c.expires_at.is_(None), member_tags.c.expires_at > sa.func.now()),
            )
        if dimension == "channel":
            return sa.exists().where(
                member_identities.c.member_id == self.m.c.id, member_identities.c.channel == sa.any_(wanted)
            )
        if dimension == "consent":
            return sa.exists().where(
                member_consents.c.member_id == self.m.c.id,
                member_consents.c.channel == sa.any_(wanted),
                member_consents.c.granted,
            )
        return sa.func.coalesce(self.m.c[dimension] == sa.any_(wanted), sa.false())

    def field(self, name: str, qualifier: str | None = None) -> sa.ColumnElement[Any]:
        m = self.m.c
        windowed = window_of(name)
        if windowed is not None:
            return self._windowed(*windowed, qualifier)
        match name:
            case "first_purchase":
                return self._first_order(local_date(orders.c.paid_at, self.tz))
            case "registered":
                return local_date(m.registered_at, self.tz)
            case "last_purchase":
                return local_date(m.last_purchase_at, self.tz)
            case "days_since_last_purchase":
                return self.today - local_date(m.last_purchase_at, self.tz)
            case "age":
                return _age(self.today, m.birthday)
        return m[_COLUMNS[name]]

    # Purchase behaviour (store.audiences.purchases says what each name means).

    def _bought(self, wanted: sa.ColumnElement[Any], since: date | None) -> sa.ColumnElement[bool]:
        o, line = orders.alias("o"), order_lines.alias("l")
        when = [] if since is None else [local_date(o.c.paid_at, self.tz) >= sa.literal(since, sa.Date)]
        return sa.exists().where(
            o.c.member_id == self.m.c.id,
            line.c.order_id == o.c.id,
            sa.or_(line.c.category == sa.any_(wanted), line.c.sku == sa.any_(wanted)),
            *when,
        )

    def _entered(self, wanted: sa.ColumnElement[Any], since: date | None) -> sa.ColumnElement[bool]:
        """A recorded change into one of the stages (on `since` or later: some change is then, so the
        last one is), by the history's (member_id, changed_at) index."""
        change = member_stage_changes.alias("c")
        when = [] if since is None else [local_date(change.c.changed_at, self.tz) >= sa.literal(since, sa.Date)]
        return sa.exists().where(change.c.member_id == self.m.c.id, change.c.to_stage == sa.any_(wanted), *when)

    def _first_order(self, what: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        """`what` of the member's first order (earliest paid_at, then lowest id); NULL without one."""
        return (
            sa.select(what)
            .where(orders.c.member_id == self.m.c.id)
            .order_by(orders.c.paid_at, orders.c.id)
            .limit(1)
            .scalar_subquery()
        )

    def _windowed(self, kind: str, days: int, category: str | None) -> sa.ColumnElement[Any]:
        """Orders or net spend (yuan) paid on or after today - `days`, of `category`'s lines if given."""
        o, line = orders.alias("o"), order_lines.alias("l")
        in_window = [o.c.member_id == self.m.c.id, local_date(o.c.paid_at, self.tz) >= self.today - days]
        of_category = sa.and_(line.c.order_id == o.c.id, line.c.category == sa.literal(category, sa.Text))
        if kind == "orders":
            counted = sa.select(sa.func.count()).select_from(o).where(*in_window)
            if category is not None:
                counted = counted.where(sa.exists().where(of_category))
            return counted.scalar_subquery()
        if category is None:
            net = sa.literal_column(purchases.ORDER_NET_FEN, sa.BigInteger)
            spent = sa.select(sa.func.sum(net)).select_from(o).where(*in_window)
        else:
            net = sa.literal_column(purchases.LINE_NET_FEN, sa.BigInteger)
            spent = sa.select(sa.func.sum(net)).select_from(o).join(line, of_category).where(*in_window)
        fen = sa.func.coalesce(spent.scalar_subquery(), 0)
        return sa.cast(fen, sa.Numeric(16, 2)) / 100


_COLUMNS = {
    "points": "points_balance",
    "growth": "growth_value",
    "order_count": "order_count",
    "total_spend": "total_spend",
}


def _age(today: sa.ColumnElement[date], birthday: sa.ColumnElement[date]) -> sa.ColumnElement[int]:
    def part(field: str, day: sa.ColumnElement[date]) -> sa.ColumnElement[int]:
        return sa.cast(sa.extract(field, day), sa.Integer)

    before_birthday = sa.tuple_(part("month", today), part("day", today)) < sa.tuple_(
        part("month", birthday), part("day", birthday)
    )
    return part("year", today) - part("year", birthday) - sa.case((before_birthday, 1), else_=0)


def brand_timezone() -> sa.ColumnElement[str]:
    """The brand's time zone (`:brand_id`), the default when it has no rules row."""
    rules = sa.select(brand_rules.c.timezone).where(brand_rules.c.brand_id == sa.bindparam("brand_id"))
    return sa.func.coalesce(rules.scalar_subquery(), DEFAULT_TIMEZONE)


def live_members(member: sa.FromClause) -> sa.ColumnElement[bool]:
    return sa.and_(
        member.c.brand_id == sa.bindparam("brand_id"), member.c.merged_into.is_(None), member.c.erased_at.is_(None)
    )


_m = members.alias("m")
_row_facts = MemberRowFacts(_m)
_SCALARS = (
    "points",
    "growth",
    "order_count",
    "total_spend",
    "registered",
    "last_purchase",
    "orders_365d",
    "first_purchase",
)
_member = Query(
    sa.select(
        *(_m.c[name] for name in ("tier", "city", "status", "gender", "birthday", "merged_into", "erased_at")),
        *(_row_facts.field(name).label(name) for name in _SCALARS),
        sa.func.array(
            sa.select(tag_definitions.c.code)
            .join(member_tags, member_tags.c.tag_id == tag_definitions.c.id)
            .where(
                member_tags.c.member_id == _m.c.id,
                sa.or_(member_tags.c.expires_at.is_(None), member_tags.c.expires_at > sa.func.now()),
            )
            .scalar_subquery()
        ).label("tags"),
        sa.func.array(
            sa.select(member_identities.c.channel).where(member_identities.c.member_id == _m.c.id).scalar_subquery()
        ).label("channels"),
        sa.func.array(
            sa.select(member_consents.c.channel)
            .where(member_consents.c.member_id == _m.c.id, member_consents.c.granted)
            .scalar_subquery()
        ).label("consents"),
    ).where(_m.c.id == sa.bindparam("member_id"), _m.c.brand_id == sa.bindparam("brand_id"))
)


async def member_facts(
    conn: AsyncConnection[Any],
    brand_id: int,
    timezone: str,
    member_id: int,
    today: date,
    rules: LifecycleRules = DEFAULT_RULES,
    thresholds: rfm.RfmThresholds = rfm.NO_THRESHOLDS,
) -> dict[str, Any] | None:
    """One member's facts as tagquery.evaluate reads them (None: no such member in the brand)."""
    row = await _member.one(conn, brand_id=brand_id, member_id=member_id, today=today, tz=timezone)
    if row is None:
        return None
    facts: dict[str, Any] = {
        **row,
        "tag": frozenset(row.pop("tags")),
        "channel": frozenset(row.pop("channels")),
        "consent": frozenset(row.pop("consents")),
    }
    facts.update(await _purchase_facts(conn, member_id, timezone))
    facts[ENTERED] = await stage_days.member_entries(conn, member_id, timezone)
    facts["lifecycle"] = lifecycle_of(facts, today, rules)
    facts.update(rfm.scores(facts, today, thresholds))
    return facts


_o, _l = orders.alias("o"), order_lines.alias("l")
_member_orders = Query(
    sa.select(
        _o.c.id,
        _o.c.channel,
        local_date(_o.c.paid_at, sa.bindparam("tz", type_=sa.Text)).label("day"),
        sa.literal_column(purchases.ORDER_NET_FEN, sa.BigInteger).label("net"),
        _l.c.category,
        _l.c.sku,
        sa.literal_column(purchases.LINE_NET_FEN, sa.BigInteger).label("line_net"),
    )
    .select_from(_o.outerjoin(_l, _l.c.order_id == _o.c.id))
    .where(_o.c.member_id == sa.bindparam("member_id"))
    .order_by(_o.c.paid_at, _o.c.id, _l.c.line)
)


async def _purchase_facts(conn: AsyncConnection[Any], member_id: int, timezone: str) -> dict[str, Any]:
    """`purchases`, `bought`, `first_channel` as tagquery.evaluate reads them (first_purchase is a scalar)."""
    rows = await _member_orders.all(conn, member_id=member_id, tz=timezone)
    by_order: dict[int, tuple[date, Decimal, dict[str, Decimal]]] = {}
    bought: dict[str, date] = {}
    for row in rows:
        day, _, categories = by_order.setdefault(row["id"], (row["day"], Decimal(row["net"]) / 100, {}))
        if row["category"] is None:
            continue  # an order without lines
        categories[row["category"]] = categories.get(row["category"], Decimal(0)) + Decimal(row["line_net"]) / 100
        for product in (row["category"], row["sku"]):
            bought[product] = max(bought.get(product, day), day)
    return {
        "purchases": [Purchase(day, spend, categories) for day, spend, categories in by_order.values()],
        "bought": bought,
        "first_channel": rows[0]["channel"] if rows else None,
    }

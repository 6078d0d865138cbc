"""Orders from every channel: they earn points and growth, and refunds take them back.

Earning: base points = floor(amount x points_per_yuan); a birthday-month bonus and a tier bonus
are separate EARN entries (each explainable on its own), each opening a lot that expires at the
end of the year `expiry_years` after the order was paid.

Refund policy: a refund of r yuan takes back the order's points pro rata (all of them on a full
refund), drawing from the order's own lots first, then from the lots expiring soonest. If the
member has already spent them, only what the balance holds is taken (the balance never goes
negative) and the rest is recorded on the order as `points_unrecovered`. Growth is taken back the
same way, never below zero. A refund never downgrades at once; the tier review does.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from psycopg import AsyncConnection
from sqlalchemy.dialects.postgresql import insert

from store import ledger, tiers
from store.errors import DomainError, ErrorCode
from store.ledger import Posting, Request
from store.sql import Query, Row
from store.tables import brand_rules, brand_tiers, members, orders, points_entries, points_lots

MAX_AMOUNT = Decimal("100000000")  # 100 million yuan: larger is a data error, not a basket
CENT = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class OrderInput:
    brand_id: int
    member_id: int
    channel: str
    external_order_id: str
    amount: Decimal
    paid_at: dt.datetime
    store: str | None


@dataclass(frozen=True, slots=True)
class OrderResult:
    order_id: int
    posting: Posting
    order: Row | None = None  # the order row as the write left it, when the write returned it


ORDER_COLUMNS = (
    orders.c.id,
    orders.c.brand_id,
    orders.c.member_id,
    orders.c.channel,
    orders.c.external_order_id,
    orders.c.amount,
    orders.c.refunded,
    orders.c.paid_at,
    orders.c.store,
    orders.c.posting_id,
    orders.c.points_earned,
    orders.c.growth_earned,
    orders.c.points_reversed,
    orders.c.growth_reversed,
    orders.c.points_unrecovered,
    orders.c.created_at,
)
# The member, locked, with its tier's multiplier and its brand's rules: one round trip.
_lock_member = Query(
    sa.select(
        members.c.id,
        members.c.brand_id,
        members.c.merged_into,
        members.c.birthday,
        brand_tiers.c.points_multiplier,
        *(column for column in brand_rules.c if column.name != "brand_id"),
    )
    .join(brand_tiers, sa.and_(brand_tiers.c.brand_id == members.c.brand_id, brand_tiers.c.code == members.c.tier))
    .join(brand_rules, brand_rules.c.brand_id == members.c.brand_id)
    .where(members.c.id == sa.bindparam("member_id"))
    .with_for_update(of=members)
)
# The member's purchase aggregates move with the order, in the order's statement.
_purchase = (
    sa.update(members)
    .where(members.c.id == sa.bindparam("member_id"))
    .values(
        first_purchase_at=sa.func.least(
            members.c.first_purchase_at, sa.bindparam("paid_at", type_=sa.DateTime(timezone=True))
        ),
        last_purchase_at=sa.func.greatest(
            members.c.last_purchase_at, sa.bindparam("paid_at", type_=sa.DateTime(timezone=True))
        ),
        order_count=members.c.order_count + 1,
        total_spend=members.c.total_spend + sa.bindparam("amount", type_=sa.Numeric(14, 2)),
        growth_value=members.c.growth_value + sa.bindparam("growth", type_=sa.BigInteger),
        points_earned=members.c.points_earned + sa.bindparam("points", type_=sa.BigInteger),
    )
    .cte("purchase")
)
_insert_order = Query(
    insert(orders)
    .values(
        brand_id=sa.bindparam("brand_id"),
        member_id=sa.bindparam("member_id"),
        channel=sa.bindparam("channel"),
        external_order_id=sa.bindparam("external_order_id"),
        amount=sa.bindparam("amount", type_=sa.Numeric(14, 2)),
        paid_at=sa.bindparam("paid_at", type_=sa.DateTime(timezone=True)),
        store=sa.bindparam("store", type_=sa.Text),
        posting_id=sa.bindparam("posting_id"),
        points_earned=sa.bindparam("points_earned", type_=sa.BigInteger),
        growth_earned=sa.bindparam("growth_earned", type_=sa.BigInteger),
    )
    .returning(*ORDER_COLUMNS)
    .add_cte(_purchase)
)
_order_of_posting = Query(sa.select(orders.c.id).where(orders.c.posting_id == sa.bindparam("posting_id")))
_lock_order = Query(
    sa.select(*ORDER_COLUMNS)
    .where(
        orders.c.brand_id == sa.bindparam("brand_id"),
        orders.c.channel == sa.bindparam("channel"),
        orders.c.external_order_id == sa.bindparam("external_order_id"),
    )
    .with_for_update()
)
_order_lots = Query(
    sa.select(points_lots.c.id)
    .join(points_entries, points_entries.c.id == points_lots.c.entry_id)
    .where(points_entries.c.posting_id == sa.bindparam("posting_id"))
)
_balance = Query(
    sa.select(members.c.points_balance, members.c.growth_value)
    .where(members.c.id == sa.bindparam("member_id"))
    .with_for_update()
)
_record_refund = Query(
    sa.update(orders)
    .where(orders.c.id == sa.bindparam("order_id"))
    .values(
        refunded=orders.c.refunded + sa.bindparam("refund", type_=sa.Numeric(14, 2)),
        points_reversed=orders.c.points_reversed + sa.bindparam("clawed", type_=sa.BigInteger),
        points_unrecovered=orders.c.points_unrecovered + sa.bindparam("unrecovered", type_=sa.BigInteger),
        growth_reversed=orders.c.growth_reversed + sa.bindparam("growth", type_=sa.BigInteger),
    )
)
_unspend = Query(
    sa.update(members)
    .where(members.c.id == sa.bindparam("member_id"))
    .values(
        growth_value=members.c.growth_value - sa.bindparam("growth", type_=sa.BigInteger),
        total_spend=sa.func.greatest(members.c.total_spend - sa.bindparam("refund", type_=sa.Numeric(14, 2)), 0),
    )
)


def check_amount(amount: Decimal) -> Decimal:
    if not (CENT <= amount <= MAX_AMOUNT) or amount != amount.quantize(CENT):
        raise DomainError(
            ErrorCode.INVALID_INPUT, f"amount must be 0.01-{MAX_AMOUNT} yuan with at most 2 decimals", field="amount"
        )
    return amount


def _floor(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=ROUND_FLOOR))


def _pro_rata(earned: int, refunded: Decimal, amount: Decimal) -> int:
    """floor(earned x refunded / amount), exactly: in integer cents, so a full refund takes all back."""
    return earned * int(refunded / CENT) // int(amount / CENT)


def earnings(amount: Decimal, rules: Row, *, birthday_month: bool, tier_multiplier: Decimal) -> list[tuple[int, str]]:
    """The EARN entries an order makes: (points, note), zero amounts left out."""
    base = _floor(amount * rules["points_per_yuan"])
    parts = [(base, f"order: {amount} yuan x {rules['points_per_yuan']}")]
    if birthday_month:
        multiplier = rules["birthday_multiplier"]
        parts.append((_floor(base * (multiplier - 1)), f"birthday month x{multiplier}"))
    if tier_multiplier > 1:
        parts.append((_floor(base * (tier_multiplier - 1)), f"tier bonus x{tier_multiplier}"))
    return [(points, note) for points, note in parts if points > 0]


async def record(conn: AsyncConnection[Any], order: OrderInput, actor: str) -> OrderResult:
    """Record an order once per (brand, channel, external id): earn points and growth, update the profile."""
    check_amount(order.amount)
    if order.paid_at > dt.datetime.now(dt.UTC) + dt.timedelta(days=1):
        raise DomainError(ErrorCode.INVALID_INPUT, "paidAt is in the future", field="paidAt")
    request = Request(
        brand_id=order.brand_id,
        member_id=order.member_id,
        key=f"order:{order.channel}:{order.external_order_id}",
        operation="order",
        channel=order.channel,
        actor=actor,
        payload={
            "order": order.external_order_id,
            "amount": str(order.amount),
            "paid_at": order.paid_at.isoformat(),
            "store": order.store,
        },
    )
    posting = await ledger.claim(conn, request)
    if posting.replayed:
        return OrderResult(await _order_of_posting.scalar(conn, posting_id=posting.id), posting)
    member = await _lock_member.one(conn, member_id=order.member_id)
    if member is None or member["brand_id"] != order.brand_id or member["merged_into"] is not None:
        raise DomainError(ErrorCode.UNKNOWN_MEMBER, f"no live member {order.member_id} in this brand", field="memberId")
    zone_paid = order.paid_at.astimezone(ZoneInfo(member["timezone"]))
    birthday = member["birthday"]
    parts = earnings(
        order.amount,
        member,  # carries the brand's rules
        birthday_month=birthday is not None and birthday.month == zone_paid.month,
        tier_multiplier=member["points_multiplier"],
    )
    points = sum(p for p, _ in parts)
    growth = _floor(order.amount * member["growth_per_yuan"])
    inserted = await _insert_order.one(
        conn,
        brand_id=order.brand_id,
        member_id=order.member_id,
        channel=order.channel,
        external_order_id=order.external_order_id,
        amount=order.amount,
        paid_at=order.paid_at,
        store=order.store,
        posting_id=posting.id,
        points_earned=points,
        growth_earned=growth,
        growth=growth,
        points=points,
    )
    for amount, note in parts:
        await ledger.post_credit(
            conn, posting, order.brand_id, kind="earn", amount=amount, note=note, earned_at=order.paid_at
        )
    await tiers.upgrade(
        conn, order.member_id, dt.datetime.now(dt.UTC), cause=f"order {order.channel}:{order.external_order_id}"
    )
    assert inserted is not None
    return OrderResult(inserted["id"], posting, order=inserted)


async def find_for_refund(conn: AsyncConnection[Any], brand_id: int, channel: str, external_order_id: str) -> Row:
    row = await _lock_order.one(conn, brand_id=brand_id, channel=channel, external_order_id=external_order_id)
    if row is None:
        raise DomainError(
            ErrorCode.UNKNOWN_ORDER, f"no {channel} order {external_order_id!r} in this brand", field="externalOrderId"
        )
    return row


async def refund(
    conn: AsyncConnection[Any], order: Row, amount: Decimal | None, key: str, reason: str | None, actor: str
) -> OrderResult:
    """Refund part or all of an order under the policy in the module docstring."""
    open_amount: Decimal = order["amount"] - order["refunded"]
    refund_amount = open_amount if amount is None else check_amount(amount)
    request = Request(
        brand_id=order["brand_id"],
        member_id=order["member_id"],
        key=key,
        operation="refund",
        channel=order["channel"],
        reason=reason,
        actor=actor,
        payload={"order": order["id"], "amount": str(amount)},
    )
    posting = await ledger.claim(conn, request)
    if posting.replayed:
        return OrderResult(order["id"], posting)
    if open_amount <= 0:
        raise DomainError(
            ErrorCode.ORDER_FULLY_REFUNDED, "the order is already fully refunded", field="externalOrderId"
        )
    if refund_amount > open_amount:
        raise DomainError(
            ErrorCode.INVALID_INPUT, f"only {open_amount} yuan of the order is left to refund", field="amount"
        )

    refunded_after = order["refunded"] + refund_amount
    points_due = _pro_rata(order["points_earned"], refunded_after, order["amount"]) - (
        order["points_reversed"] + order["points_unrecovered"]
    )
    growth_due = _pro_rata(order["growth_earned"], refunded_after, order["amount"]) - order["growth_reversed"]
    state = await _balance.one(conn, member_id=order["member_id"])
    assert state is not None
    clawed = min(points_due, state["points_balance"])
    growth = min(growth_due, state["growth_value"])
    if clawed > 0:
        own_lots = [row["id"] for row in await _order_lots.all(conn, posting_id=order["posting_id"])]
        note = f"refund of {refund_amount} yuan on order {order['external_order_id']}"
        await ledger.post_debit(
            conn, posting, order["brand_id"], kind="reverse", amount=clawed, note=note, preferred=own_lots
        )
    await _record_refund.run(
        conn, order_id=order["id"], refund=refund_amount, clawed=clawed, unrecovered=points_due - clawed, growth=growth
    )
    await _unspend.run(conn, member_id=order["member_id"], growth=growth, refund=refund_amount)
    return OrderResult(order["id"], posting)

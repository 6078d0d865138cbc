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

import dataclasses
import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from psycopg import AsyncConnection, errors
from sqlalchemy.dialects import postgresql

from store.errors import DomainError, ErrorCode
from store.ledger import journal, order_lines, postings, tiers
from store.ledger.journal import Posting, Request
from store.ledger.order_lines import OrderLine, check_lines, insert_lines, line_params
from store.sql import Query, Row
from store.tables import brand_rules, brand_tiers, members, orders, points_entries, points_lots, points_postings
from store.transactions import Retry

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
    lines: tuple[OrderLine, ...] = ()  # what it bought (store.ledger.order_lines), written with it


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
# What recording an order writes into its row (the rest are defaults).
ORDER_WRITTEN = [
    "brand_id",
    "member_id",
    "channel",
    "external_order_id",
    "amount",
    "paid_at",
    "store",
    "posting_id",
    "points_earned",
    "growth_earned",
]
# The whole order in one statement, like `postings.credit_posting`. `earning` reads the member, its
# tier's multiplier and the brand's rules from the statement's snapshot and works out the order's
# parts (base points, birthday-month and tier bonuses, each its own EARN entry) and growth. Then
# the member row (balance, purchase aggregates, growth, tier upgrade; this locks it), a plain
# INSERT of the posting (a key already held fails the statement and nothing remains), the order,
# the entries with their lots, and the tier change. The member UPDATE applies only if the row's
# tier, birthday and order count are still those `earning` saw (another order committed in
# between could have lifted the tier or moved the tier metric, and the upgrade reads earlier
# orders from the snapshot); otherwise, or when the member is not live, there is no row.
_PAID_AT = sa.bindparam("paid_at", type_=sa.DateTime(timezone=True))
_YUAN = sa.bindparam("amount", type_=sa.Numeric(14, 2))
_YUAN_TEXT = sa.bindparam("amount_text", type_=sa.Text)  # as the client wrote it, for the note


def _points(value: sa.ColumnElement[Any]) -> sa.ColumnElement[int]:
    return sa.cast(sa.func.floor(value), sa.BigInteger)


def _text(value: sa.ColumnElement[Any]) -> sa.ColumnElement[str]:
    return sa.cast(value, sa.Text)


def earning_columns(
    yuan: sa.ColumnElement[Any], yuan_text: sa.ColumnElement[str], paid_at: sa.ColumnElement[dt.datetime]
) -> list[sa.ColumnElement[Any]]:
    """An order's earnings, from `members` joined to its tier in `brand_tiers` and `brand_rules`:
    the member as seen (what the earnings depend on), the parts, their sum and the growth."""
    base = _points(yuan * brand_rules.c.points_per_yuan)
    paid_month = sa.extract("month", sa.func.timezone(brand_rules.c.timezone, paid_at))
    birthday_bonus = sa.case(
        (
            sa.extract("month", members.c.birthday) == paid_month,
            _points(base * (brand_rules.c.birthday_multiplier - 1)),
        ),
        else_=0,
    )
    tier_bonus = _points(base * (brand_tiers.c.points_multiplier - 1))
    return [
        members.c.id,
        members.c.tier,
        members.c.birthday,
        members.c.order_count,
        base.label("base"),
        birthday_bonus.label("birthday_bonus"),
        tier_bonus.label("tier_bonus"),
        (base + birthday_bonus + tier_bonus).label("points"),
        _points(yuan * brand_rules.c.growth_per_yuan).label("growth"),
        (sa.literal("order: ") + yuan_text + " yuan x " + _text(brand_rules.c.points_per_yuan)).label("base_note"),
        ("birthday month x" + _text(brand_rules.c.birthday_multiplier)).label("birthday_note"),
        ("tier bonus x" + _text(brand_tiers.c.points_multiplier)).label("tier_note"),
    ]


EARNING_FROM = members.join(brand_tiers, postings.tier_of(members)).join(
    brand_rules, brand_rules.c.brand_id == members.c.brand_id
)
CURRENT_TIER = brand_tiers.alias("current_tier")


def unchanged_buyer(earning: Any) -> list[sa.ColumnElement[bool]]:
    """An UPDATE of `members` FROM ``earning``, `CURRENT_TIER` and `brand_rules` applies to the
    member ``earning`` saw, only if what its earnings depend on did not change since."""
    return [
        members.c.id == earning.c.id,
        members.c.merged_into.is_(None),
        members.c.tier == earning.c.tier,
        members.c.birthday.is_not_distinct_from(earning.c.birthday),
        members.c.order_count == earning.c.order_count,
        CURRENT_TIER.c.brand_id == members.c.brand_id,
        CURRENT_TIER.c.code == members.c.tier,
        brand_rules.c.brand_id == members.c.brand_id,
    ]


def bought(
    earning: Any, yuan: sa.ColumnElement[Any], paid_at: sa.ColumnElement[dt.datetime]
) -> dict[str, sa.ColumnElement[Any]]:
    """What an order changes on its member's row, the tier upgrade included."""
    return {
        "points_balance": members.c.points_balance + earning.c.points,
        "points_earned": members.c.points_earned + earning.c.points,
        "growth_value": members.c.growth_value + earning.c.growth,
        "first_purchase_at": sa.func.least(members.c.first_purchase_at, paid_at),
        "last_purchase_at": sa.func.greatest(members.c.last_purchase_at, paid_at),
        "order_count": members.c.order_count + 1,
        "total_spend": members.c.total_spend + yuan,
        "tier": tiers.upgraded_tier(CURRENT_TIER, earning.c.growth, earning.c.points, paid_at),
    }


def parts(earning: Any) -> Any:
    """An order's EARN entries as rows (amount, note, n), zero amounts included."""
    return (
        sa.func.unnest(
            postgresql.array([earning.c.base, earning.c.birthday_bonus, earning.c.tier_bonus]),
            postgresql.array([earning.c.base_note, earning.c.birthday_note, earning.c.tier_note]),
        )
        .table_valued("amount", "note", with_ordinality="n")
        .render_derived(name="parts")
    )


_earning = (
    sa.select(*earning_columns(_YUAN, _YUAN_TEXT, _PAID_AT))
    .select_from(EARNING_FROM)
    .where(journal.LIVE_MEMBER)
    .cte("earning")
)
_buyer = (
    sa.update(members)
    .where(journal.LIVE_MEMBER, *unchanged_buyer(_earning))
    .values(bought(_earning, _YUAN, _PAID_AT))
    .returning(*members.c, CURRENT_TIER.c.code.label("from_tier"))
    .cte("buyer")
)
_order_posting = (
    sa.insert(points_postings)
    .from_select(["member_id", *postings.POSTING_VALUES], sa.select(_buyer.c.id, *postings.POSTING_VALUES.values()))
    .returning(*points_postings.c)
    .cte("order_posting")
)
_order_row = (
    sa.insert(orders)
    .from_select(
        ORDER_WRITTEN,
        sa.select(
            _order_posting.c.brand_id,
            _order_posting.c.member_id,
            _order_posting.c.channel,
            sa.bindparam("external_order_id", type_=sa.Text),
            _YUAN,
            _PAID_AT,
            sa.bindparam("store", type_=sa.Text),
            _order_posting.c.id,
            _earning.c.points,
            _earning.c.growth,
        ).select_from(_order_posting.join(_earning, sa.true())),
    )
    .returning(*ORDER_COLUMNS)
    .cte("order_row")
)
_parts = parts(_earning)
_order_entries = (
    sa.insert(points_entries)
    .from_select(
        journal.ENTRY_COLUMNS,
        sa.select(
            _order_posting.c.id,
            _order_posting.c.brand_id,
            _buyer.c.id,
            sa.literal("earn"),
            _parts.c.amount,
            # each entry's balance after it, as if the parts were posted one after the other
            _buyer.c.points_balance - _earning.c.points + sa.func.sum(_parts.c.amount).over(order_by=_parts.c.n),
            _parts.c.note,
        )
        .select_from(_order_posting.join(_buyer, sa.true()).join(_earning, sa.true()).join(_parts, _parts.c.amount > 0))
        .order_by(_parts.c.n),
    )
    .returning(points_entries.c.id, points_entries.c.member_id, points_entries.c.amount)
    .cte("order_entries")
)
_lots_opened = (
    sa.insert(points_lots)
    .from_select(
        ["brand_id", "member_id", "entry_id", "amount", "remaining", "expires_at"],
        sa.select(
            sa.bindparam("brand_id", type_=sa.BigInteger),
            _order_entries.c.member_id,
            _order_entries.c.id,
            _order_entries.c.amount,
            _order_entries.c.amount,
            journal.LOT_EXPIRY,
        ),
    )
    .cte("order_lots")
)
_upgraded = (
    sa.select(_buyer.c.id, _buyer.c.brand_id, _buyer.c.from_tier, _buyer.c.tier.label("to_tier"))
    .where(_buyer.c.tier != _buyer.c.from_tier)
    .cte("upgraded")
)
_tier_change = tiers.recorded_changes(_upgraded).cte("tier_change")
_order_lines = insert_lines(_order_row, "order_lines_written")
ORDER_PREFIX = "order_row_"  # apart from the member's order_count
_ORDER_NAMES = [(f"{ORDER_PREFIX}{column.name}", column.name) for column in ORDER_COLUMNS]
_member_after = [column for column in _buyer.c if column.name != "from_tier"]
_order_posted = Query(
    sa.select(
        *postings.posting_columns(_order_posting),
        *(column.label(f"{ORDER_PREFIX}{column.name}") for column in _order_row.c),
        *_member_after,
        brand_tiers.c.name.label("tier_name"),
        brand_tiers.c.rank.label("tier_rank"),
    )
    .select_from(
        _order_posting.join(_order_row, sa.true())
        .join(_buyer, sa.true())
        .join(brand_tiers, sa.and_(brand_tiers.c.brand_id == _buyer.c.brand_id, brand_tiers.c.code == _buyer.c.tier))
    )
    .add_cte(
        _earning,
        _buyer,
        _order_posting,
        _order_row,
        _order_entries,
        _lots_opened,
        _upgraded,
        _tier_change,
        _order_lines,
    )
)
# A retried order fails the statement on one of these (which one first is the server's choice).
_ORDER_KEYS = frozenset({postings.KEY_CONSTRAINT, "uq_orders_brand_id_channel_external_order_id"})
_order_of_posting = Query(sa.select(orders.c.id).where(orders.c.posting_id == sa.bindparam("posting_id")))
_ORDER_KEY = sa.and_(
    orders.c.brand_id == sa.bindparam("brand_id"),
    orders.c.channel == sa.bindparam("channel"),
    orders.c.external_order_id == sa.bindparam("external_order_id"),
)
# A refund's locks, in the ledger's order (`store.ledger.journal`): first the member the order
# belongs to, found through the order (read, not locked), locked as `journal.lock_members` does;
# then the order row, only while it still belongs to that member.
_lock_buyer = Query(
    sa.select(members.c.id)
    .where(members.c.id == sa.select(orders.c.member_id).where(_ORDER_KEY).scalar_subquery())
    .with_for_update(key_share=True)
)
_lock_order = Query(
    sa.select(*ORDER_COLUMNS).where(_ORDER_KEY, orders.c.member_id == sa.bindparam("member_id")).with_for_update()
)
_order_lots = Query(
    sa.select(points_lots.c.id)
    .join(points_entries, points_entries.c.id == points_lots.c.entry_id)
    .where(points_entries.c.posting_id == sa.bindparam("posting_id"))
)
_balance = Query(  # of a member `find_for_refund` locked
    sa.select(members.c.points_balance, members.c.growth_value).where(members.c.id == sa.bindparam("member_id"))
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


def _pro_rata(earned: int, refunded: Decimal, amount: Decimal) -> int:
    """floor(earned x refunded / amount), exactly: in integer cents, so a full refund takes all back."""
    return earned * int(refunded / CENT) // int(amount / CENT)


@dataclass(frozen=True, slots=True)
class Purchase:
    """An order checked and ready to post, with the ledger request it posts under."""

    order: OrderInput
    request: Request


def purchase(order: OrderInput, actor: str) -> Purchase:
    check_amount(order.amount)
    order = dataclasses.replace(order, lines=check_lines(order.lines, order.amount))
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
            **order_lines.payload(order.lines),
        },
    )
    return Purchase(order, request)


def cause(order: OrderInput) -> str:
    """What a tier change an order brings records as its cause."""
    return f"order {order.channel}:{order.external_order_id}"


async def record(conn: AsyncConnection[Any], purchase: Purchase) -> OrderResult:
    """Record an order once per (brand, channel, external id): earn points and growth, update the
    profile, upgrade the tier. One statement, so it is whole on its own (run it outside a
    transaction to save the BEGIN and COMMIT round trips)."""
    order, request = purchase.order, purchase.request
    result = await _post(conn, order, request)
    if result is not None:
        return result
    # Nothing posted: a retry, a member that is not live, or one that changed under the statement.
    held = await postings.held_posting(conn, request)
    if held is not None:
        return await _replayed(conn, held)
    async with conn.transaction():  # again, with the member's row held from before the statement
        member = (await journal.lock_members(conn, [order.member_id])).get(order.member_id)
        if member is None or member["brand_id"] != order.brand_id or member["merged_into"] is not None:
            raise DomainError(
                ErrorCode.UNKNOWN_MEMBER, f"no live member {order.member_id} in this brand", field="memberId"
            )
        result = await _post(conn, order, request)
        if result is not None:
            return result
    held = await postings.held_posting(conn, request)  # a retry of this order committed in between
    assert held is not None, "the member's row was locked: the statement cannot have missed it"
    return await _replayed(conn, held)


async def _post(conn: AsyncConnection[Any], order: OrderInput, request: Request) -> OrderResult | None:
    """The order's statement; None when it did not apply (see `_order_posted`) or the key is held."""
    try:
        async with postings.statement_fence(conn):
            row = await _order_posted.one(
                conn,
                **postings.claim_params(request),
                external_order_id=order.external_order_id,
                amount=order.amount,
                amount_text=str(order.amount),
                paid_at=order.paid_at,
                earned_at=order.paid_at,
                store=order.store,
                cause=cause(order),
                **line_params([(order.brand_id, order.channel, order.external_order_id, order.lines)]),
            )
    except errors.UniqueViolation as error:
        if error.diag.constraint_name not in _ORDER_KEYS:
            raise
        return None
    if row is None:
        return None
    return split_order(row, request)


def split_order(row: Row, request: Request) -> OrderResult:
    """The posting, order and member rows an order's statement returned, apart."""
    order_row = {name: row.pop(label) for label, name in _ORDER_NAMES}
    return OrderResult(order_row["id"], postings.split_posting(row, request), order=order_row)


async def _replayed(conn: AsyncConnection[Any], posting: Posting) -> OrderResult:
    return OrderResult(await _order_of_posting.scalar(conn, posting_id=posting.id), posting)


async def find_for_refund(conn: AsyncConnection[Any], brand_id: int, channel: str, external_order_id: str) -> Row:
    """The order to refund, locked after its member (a refund changes both); run `refund` next, in
    the same transaction. Raises `Retry` when a merge moved the order to another member while
    this waited for the first one: the refund then starts again and finds the survivor."""
    key = {"brand_id": brand_id, "channel": channel, "external_order_id": external_order_id}
    buyer = await _lock_buyer.one(conn, **key)
    if buyer is None:
        raise DomainError(
            ErrorCode.UNKNOWN_ORDER, f"no {channel} order {external_order_id!r} in this brand", field="externalOrderId"
        )
    row = await _lock_order.one(conn, **key, member_id=buyer["id"])
    if row is None:
        raise Retry(f"{channel} order {external_order_id!r} moved from member {buyer['id']} while it was locked")
    return row


async def refund(
    conn: AsyncConnection[Any], order: Row, amount: Decimal | None, key: str, reason: str | None, actor: str
) -> OrderResult:
    """Refund part or all of an order under the policy in the module docstring; ``order`` as
    `find_for_refund` locked it, with its member, in this transaction."""
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
    posting = await journal.claim(conn, request)
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
        await journal.post_debit(
            conn, posting, order["brand_id"], kind="reverse", amount=clawed, note=note, preferred=own_lots
        )
    await _record_refund.run(
        conn, order_id=order["id"], refund=refund_amount, clawed=clawed, unrecovered=points_due - clawed, growth=growth
    )
    await _unspend.run(conn, member_id=order["member_id"], growth=growth, refund=refund_amount)
    return OrderResult(order["id"], posting)

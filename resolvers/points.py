"""Points postings, orders and their history."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from psycopg import AsyncConnection

from resolvers import cursors
from resolvers.context import Info
from resolvers.members import cursor_key
from store.errors import DomainError, ErrorCode
from store.ledger import history, orders, points
from store.ledger.batched import Change
from store.ledger.journal import Posting, Request, check_key
from store.ledger.order_lines import OrderLine
from store.members import profiles
from store.members.unification import check_channel, check_external_id
from store.sql import Row
from store.transactions import transact

MAX_PAGE = 100
_UNIX_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
Line = tuple[str, str, int, Decimal]
"""An order line as the API sends it: sku, category, quantity, amount (store.ledger.order_lines)."""
ACTOR = "api"  # until API keys say who is calling (security issue)


@dataclass(frozen=True, slots=True)
class PostingOutcome:
    posting_id: int
    member_id: int
    replayed: bool
    order_id: int | None = None


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[Row]
    cursors: list[str]
    has_next_page: bool
    has_previous_page: bool


def _optional_channel(channel: str | None) -> str | None:
    return None if channel is None else check_channel(channel)


async def _post(info: Info, work: Callable[[AsyncConnection[Any]], Awaitable[Posting]]) -> PostingOutcome:
    return _answered(info, await transact(info.context.pool, work))


def _answered(info: Info, posting: Posting, order_id: int | None = None) -> PostingOutcome:
    _forget_cached(info)
    _prime(info, posting)
    return PostingOutcome(posting.id, posting.member_id, posting.replayed, order_id)


async def _post_order(
    info: Info, work: Callable[[AsyncConnection[Any]], Awaitable[orders.OrderResult]]
) -> PostingOutcome:
    return _order_answered(info, await transact(info.context.pool, work))


def _order_answered(info: Info, result: orders.OrderResult) -> PostingOutcome:
    answer = _answered(info, result.posting, result.order_id)
    if result.order is not None:
        info.context.loaders.order_by_id.prime(result.order_id, result.order)
    return answer


def _prime(info: Info, posting: Posting) -> None:
    """The write returned the posting (and for one-statement postings the member after it):
    answer from those rather than reading them back."""
    loaders = info.context.loaders
    if posting.row is not None:
        loaders.posting_by_id.prime(posting.id, posting.row)
    if posting.member is not None:
        loaders.member_by_id.prime(posting.member_id, posting.member)


def _forget_cached(info: Info) -> None:
    """Drop the request's cached members and ledger rows: the posting just changed them."""
    loaders = info.context.loaders
    loaders.member_by_id.clear_all()
    loaders.tier_changes_by_member.clear_all()


async def _request(
    info: Info, brand: str, member_id: int, key: str, operation: str, payload: dict[str, Any], **extra: Any
) -> Request:
    brand_id = await info.context.brands.id_of(info.context.pool, brand)
    return Request(brand_id, member_id, check_key(key), operation, payload, actor=ACTOR, **extra)


async def _post_change(info: Info, change: Change) -> PostingOutcome:
    """Earn, redeem and adjust go through the process's batches (see store.ledger.batching)."""
    return _answered(info, await info.context.postings.post(change))


async def earn(
    info: Info, *, brand: str, member_id: int, amount: int, key: str, reason: str | None, channel: str | None
) -> PostingOutcome:
    request = await _request(
        info, brand, member_id, key, "earn", {"amount": amount}, reason=reason, channel=_optional_channel(channel)
    )
    return await _post_change(info, points.earning(request, amount))


async def redeem(
    info: Info, *, brand: str, member_id: int, amount: int, key: str, reason: str | None, channel: str | None
) -> PostingOutcome:
    request = await _request(
        info, brand, member_id, key, "redeem", {"amount": amount}, reason=reason, channel=_optional_channel(channel)
    )
    return await _post_change(info, points.redemption(request, amount))


async def adjust(info: Info, *, brand: str, member_id: int, delta: int, key: str, reason: str) -> PostingOutcome:
    request = await _request(info, brand, member_id, key, "adjust", {"delta": delta}, reason=reason.strip())
    return await _post_change(info, points.adjustment(request, delta))


async def cancel_redemption(info: Info, *, brand: str, posting_id: int, key: str, reason: str | None) -> PostingOutcome:
    async def work(conn: AsyncConnection[Any]) -> Posting:
        brand_id: int = (await info.context.brands.get(conn, brand))["id"]
        return await points.cancel_redemption(
            conn, brand_id=brand_id, redemption_id=posting_id, key=check_key(key), reason=reason, actor=ACTOR
        )

    return await _post(info, work)


async def record_order(
    info: Info,
    *,
    brand: str,
    channel: str,
    external_order_id: str,
    member_id: int | None,
    buyer_id: str | None,
    amount: Decimal,
    paid_at: dt.datetime,
    store: str | None,
    lines: Sequence[Line] = (),
) -> PostingOutcome:
    if (member_id is None) == (buyer_id is None):
        raise DomainError(ErrorCode.INVALID_INPUT, "give exactly one of memberId and buyerId", field="memberId")

    brand_id = await info.context.brands.id_of(info.context.pool, brand)
    code = check_channel(channel)
    if buyer_id is not None:
        async with info.context.pool.connection() as conn:
            member_id = await _buyer(conn, brand_id, code, buyer_id)
    assert member_id is not None
    order = orders.OrderInput(
        brand_id,
        member_id,
        code,
        check_external_id(external_order_id),
        amount,
        paid_at,
        store and store.strip(),
        tuple(OrderLine(*line) for line in lines),
    )
    # through the process's batches (see store.ledger.batching), like earn and redeem
    return _order_answered(info, await info.context.postings.record(orders.purchase(order, ACTOR)))


async def _buyer(conn: AsyncConnection[Any], brand_id: int, channel: str, buyer_id: str) -> int:
    member_id = await profiles.member_id_by_identity(
        conn, brand_id=brand_id, channel=channel, external_id=check_external_id(buyer_id)
    )
    if member_id is None:
        raise DomainError(
            ErrorCode.UNKNOWN_MEMBER, f"no member has the {channel} identity {buyer_id!r}", field="buyerId"
        )
    return member_id


async def refund_order(
    info: Info,
    *,
    brand: str,
    channel: str,
    external_order_id: str,
    amount: Decimal | None,
    key: str,
    reason: str | None,
) -> PostingOutcome:
    async def work(conn: AsyncConnection[Any]) -> orders.OrderResult:
        brand_id: int = (await info.context.brands.get(conn, brand))["id"]
        order = await orders.find_for_refund(conn, brand_id, check_channel(channel), external_order_id)
        return await orders.refund(conn, order, amount, check_key(key), reason, ACTOR)

    return await _post_order(info, work)


async def get_posting(info: Info, *, posting_id: int) -> Row | None:
    return await info.context.loaders.posting_by_id.load(posting_id)


async def get_posting_entries(info: Info, *, posting_id: int) -> list[Row]:
    return await info.context.loaders.entries_by_posting.load(posting_id)


async def get_order(info: Info, *, order_id: int) -> Row | None:
    return await info.context.loaders.order_by_id.load(order_id)


async def get_tier_changes(info: Info, *, member_id: int) -> list[Row]:
    return await info.context.loaders.tier_changes_by_member.load(member_id)


async def points_history(info: Info, *, member_id: int, first: int, after: str | None) -> Page:
    """A member's entries, newest first."""
    cursors.check_first(first, MAX_PAGE)
    before_id = cursor_key(cursors.decode(after, "entry", 1)[0]) if after is not None else None
    async with info.context.pool.connection() as conn:
        rows = await history.entries_page(conn, member_id=member_id, before_id=before_id, limit=first + 1)
    page = rows[:first]
    return Page(page, [cursors.encode("entry", r["id"]) for r in page], len(rows) > first, after is not None)


async def order_history(info: Info, *, member_id: int, first: int, after: str | None) -> Page:
    """A member's orders, newest payment first."""
    cursors.check_first(first, MAX_PAGE)
    before = None if after is None else _order_cursor(after)
    async with info.context.pool.connection() as conn:
        rows = await history.orders_page(conn, member_id=member_id, before=before, limit=first + 1)
    page = rows[:first]
    keys = [cursors.encode("order", _micros(r["paid_at"]), r["id"]) for r in page]
    return Page(page, keys, len(rows) > first, after is not None)


def _micros(moment: dt.datetime) -> int:
    return (moment - _UNIX_EPOCH) // dt.timedelta(microseconds=1)


def _order_cursor(after: str) -> tuple[dt.datetime, int]:
    """The (paid at, order id) an `order` cursor points after; INVALID_INPUT for one no page gave."""
    micros, order_id = cursors.decode(after, "order", 2)
    try:
        paid_at = _UNIX_EPOCH + dt.timedelta(microseconds=micros)
    except OverflowError:
        raise DomainError(ErrorCode.INVALID_INPUT, "after is not a cursor of this connection", field="after") from None
    return paid_at, cursor_key(order_id)


async def expiring_points(info: Info, *, member_id: int, within_days: int) -> list[Row]:
    if not 0 <= within_days <= 3660:
        raise DomainError(ErrorCode.INVALID_INPUT, "withinDays must be between 0 and 3660", field="withinDays")
    until = dt.datetime.now(dt.UTC) + dt.timedelta(days=within_days)
    async with info.context.pool.connection() as conn:
        return await history.expiring(conn, member_id=member_id, until=until)

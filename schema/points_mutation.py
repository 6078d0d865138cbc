"""Mutations of the points ledger and orders: idempotent, with typed failures."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Annotated, Any

import strawberry

from resolvers import points
from resolvers.audit import audited
from resolvers.context import Info
from resolvers.cursors import parse_id
from resolvers.domain import DomainError, ErrorCode, Row
from resolvers.members import get_member
from schema import inputs
from schema.errors import (
    AlreadyCancelled,
    AlreadyMerged,
    DuplicateRequest,
    InsufficientPoints,
    InvalidInput,
    OrderFullyRefunded,
    UnknownBrand,
    UnknownChannel,
    UnknownMember,
    UnknownOrder,
    UnknownPosting,
    error_result,
)
from schema.member import Member
from schema.points import Order, PointsPosting

Key = Annotated[
    str,
    strawberry.argument(
        description="Unique per brand and request (1-200 characters): a retry with the same key returns the "
        "original result and posts nothing; the same key with another payload is DuplicateRequest."
    ),
]
BrandCode = Annotated[str, strawberry.argument(description="Brand code.")]
MemberId = Annotated[strawberry.ID, strawberry.argument(description="The member.")]
Reason = Annotated[
    str | None, strawberry.argument(description=f"Why, shown in the history (1-{inputs.REASON} characters).")
]
ChannelCode = Annotated[str | None, strawberry.argument(description="Channel the request came from.")]
OrderNumber = Annotated[
    str, strawberry.argument(description=f"The channel's order number (1-{inputs.EXTERNAL_ID} characters).")
]


@strawberry.input(description="A line of an order: what it bought (docs/audiences.md#purchase-behaviour).")
class OrderLineInput:
    sku: str = strawberry.field(description="The product's code (1-64 letters, digits, `_`, `.`, `-`).")
    category: str = strawberry.field(
        description="The product's category code, one word like the sku (`stage3_formula`, `snacks`)."
    )
    quantity: int = strawberry.field(description="Units bought, 1 or more.")
    amount: Decimal = strawberry.field(
        description="Yuan paid for the line (0 for a gift), 2 decimals at most; the lines together at most the "
        "order's amount."
    )

    def to_line(self, index: int) -> points.Line:
        return (self.sku, self.category, self.quantity, inputs.yuan(self.amount, f"lines[{index}].amount"))


@strawberry.type(description="The posting was made (or, for a retried key, found).")
class PointsPosted:
    posting_id: strawberry.Private[int]
    member_id: strawberry.Private[int]
    replayed: bool = strawberry.field(description="True when this answers a retry of an earlier request.")

    # Resolved only when selected, from loaders the posting itself primed (no read-back).
    @strawberry.field(description="The posting and its entries.")
    async def posting(self, info: Info) -> PointsPosting:
        return await _posting(info, self.posting_id)

    @strawberry.field(description="The member after the posting.")
    async def member(self, info: Info) -> Member:
        return await _member(info, self.member_id)


@strawberry.type(description="The order was recorded (or, when sent again, found).")
class OrderRecorded:
    order_id: strawberry.Private[int]
    posting_id: strawberry.Private[int]
    replayed: bool = strawberry.field(description="True when the order had been recorded before.")

    # Resolved only when selected, from loaders the write primed where it could.
    @strawberry.field(description="The order and what it earned.")
    async def order(self, info: Info) -> Order:
        return Order.from_row(await _order_row(info, self.order_id))

    @strawberry.field(description="The posting with its EARN entries.")
    async def posting(self, info: Info) -> PointsPosting:
        return await _posting(info, self.posting_id)

    @strawberry.field(description="The member after the order.")
    async def member(self, info: Info) -> Member:
        return await _member(info, (await _order_row(info, self.order_id))["member_id"])


@strawberry.type(description="The refund was applied (or, for a retried key, found).")
class OrderRefunded:
    order_id: strawberry.Private[int]
    posting_id: strawberry.Private[int]
    replayed: bool = strawberry.field(description="True when this answers a retry of an earlier request.")

    @strawberry.field(description="The order with its refund totals.")
    async def order(self, info: Info) -> Order:
        return Order.from_row(await _order_row(info, self.order_id))

    @strawberry.field(description="The posting with its REVERSE entry, if any.")
    async def posting(self, info: Info) -> PointsPosting:
        return await _posting(info, self.posting_id)

    @strawberry.field(description="The member after the refund.")
    async def member(self, info: Info) -> Member:
        return await _member(info, (await _order_row(info, self.order_id))["member_id"])


_PostingErrors = UnknownBrand | UnknownChannel | UnknownMember | AlreadyMerged | InvalidInput | DuplicateRequest
EarnPointsResult = Annotated[
    PointsPosted | _PostingErrors, strawberry.union("EarnPointsResult", description="Result of earnPoints.")
]
RedeemPointsResult = Annotated[
    PointsPosted | InsufficientPoints | _PostingErrors,
    strawberry.union("RedeemPointsResult", description="Result of redeemPoints."),
]
AdjustPointsResult = Annotated[
    PointsPosted | InsufficientPoints | _PostingErrors,
    strawberry.union("AdjustPointsResult", description="Result of adjustPoints."),
]
CancelRedemptionResult = Annotated[
    PointsPosted | UnknownBrand | UnknownPosting | AlreadyCancelled | InvalidInput | DuplicateRequest,
    strawberry.union("CancelRedemptionResult", description="Result of cancelRedemption."),
]
RecordOrderResult = Annotated[
    OrderRecorded | UnknownBrand | UnknownChannel | UnknownMember | InvalidInput | DuplicateRequest,
    strawberry.union("RecordOrderResult", description="Result of recordOrder."),
]
RefundOrderResult = Annotated[
    OrderRefunded | UnknownBrand | UnknownChannel | UnknownOrder | OrderFullyRefunded | InvalidInput | DuplicateRequest,
    strawberry.union("RefundOrderResult", description="Result of refundOrder."),
]


def _id(value: strawberry.ID, code: ErrorCode, field: str) -> int:
    parsed = parse_id(value)
    if parsed is None:
        raise DomainError(code, f"{value!r} is not an id", field=field)
    return parsed


async def _member(info: Info, member_id: int) -> Member:
    row = await get_member(info, member_id=member_id)
    assert row is not None
    return Member.from_row(row)


async def _posting(info: Info, posting_id: int) -> PointsPosting:
    row = await points.get_posting(info, posting_id=posting_id)
    assert row is not None
    return PointsPosting.from_row(row)


async def _posted(info: Info, post: Callable[[], Awaitable[points.PostingOutcome]]) -> Any:
    """Run a posting; its typed result, or the typed error (argument errors included)."""
    try:
        done = await post()
    except DomainError as error:
        return error_result(error)
    return PointsPosted(posting_id=done.posting_id, member_id=done.member_id, replayed=done.replayed)


async def _order(info: Info, post: Callable[[], Awaitable[points.PostingOutcome]], result: type[Any]) -> Any:
    try:
        done = await post()
    except DomainError as error:
        return error_result(error)
    assert done.order_id is not None
    return result(order_id=done.order_id, posting_id=done.posting_id, replayed=done.replayed)


async def _order_row(info: Info, order_id: int) -> Row:
    row = await points.get_order(info, order_id=order_id)
    assert row is not None
    return row


def _member_id(value: strawberry.ID) -> int:
    return _id(value, ErrorCode.UNKNOWN_MEMBER, "memberId")


def _reason(reason: str | None) -> str | None:
    return inputs.text(reason, "reason", inputs.REASON)


def _external_id(value: str, field: str) -> str:
    """An order number or a buyer's identity: checked here, so that a refusal names the argument."""
    return inputs.text(value, field, inputs.EXTERNAL_ID)


@strawberry.type(description="Post to the points ledger and record orders.")
class PointsMutation:
    @strawberry.mutation(description="Give a member points (a campaign reward, a sign-up gift). Opens an expiring lot.")
    @audited("earnPoints")
    async def earn_points(
        self,
        info: Info,
        brand: BrandCode,
        member_id: MemberId,
        amount: Annotated[int, strawberry.argument(description="Points to add, 1 to 10^9.")],
        idempotency_key: Key,
        reason: Reason = None,
        channel: ChannelCode = None,
    ) -> EarnPointsResult:
        return await _posted(  # type: ignore[no-any-return]
            info,
            lambda: points.earn(
                info,
                brand=brand,
                member_id=_member_id(member_id),
                amount=amount,
                key=idempotency_key,
                reason=_reason(reason),
                channel=channel,
            ),
        )

    @strawberry.mutation(
        description="Spend points (points mall, cash offset), drawing the lots that expire soonest first. "
        "Never takes the balance below zero: InsufficientPoints says what is available."
    )
    @audited("redeemPoints")
    async def redeem_points(
        self,
        info: Info,
        brand: BrandCode,
        member_id: MemberId,
        amount: Annotated[int, strawberry.argument(description="Points to spend, 1 to 10^9.")],
        idempotency_key: Key,
        reason: Reason = None,
        channel: ChannelCode = None,
    ) -> RedeemPointsResult:
        return await _posted(  # type: ignore[no-any-return]
            info,
            lambda: points.redeem(
                info,
                brand=brand,
                member_id=_member_id(member_id),
                amount=amount,
                key=idempotency_key,
                reason=_reason(reason),
                channel=channel,
            ),
        )

    @strawberry.mutation(
        description="Cancel a redemption (e.g. a refunded points-mall order): its points go back to exactly the "
        "lots they came from, with their original expiry."
    )
    @audited("cancelRedemption")
    async def cancel_redemption(
        self,
        info: Info,
        brand: BrandCode,
        posting_id: Annotated[strawberry.ID, strawberry.argument(description="The redemption's posting id.")],
        idempotency_key: Key,
        reason: Reason = None,
    ) -> CancelRedemptionResult:
        return await _posted(  # type: ignore[no-any-return]
            info,
            lambda: points.cancel_redemption(
                info,
                brand=brand,
                posting_id=_id(posting_id, ErrorCode.UNKNOWN_POSTING, "postingId"),
                key=idempotency_key,
                reason=_reason(reason),
            ),
        )

    @strawberry.mutation(description="Correct a balance by hand, up or down; a reason is required for the audit.")
    @audited("adjustPoints")
    async def adjust_points(
        self,
        info: Info,
        brand: BrandCode,
        member_id: MemberId,
        delta: Annotated[int, strawberry.argument(description="Signed change, not zero.")],
        idempotency_key: Key,
        reason: Annotated[
            str, strawberry.argument(description=f"Why the correction is made (1-{inputs.REASON} characters).")
        ],
    ) -> AdjustPointsResult:
        return await _posted(  # type: ignore[no-any-return]
            info,
            lambda: points.adjust(
                info,
                brand=brand,
                member_id=_member_id(member_id),
                delta=delta,
                key=idempotency_key,
                reason=inputs.text(reason, "reason", inputs.REASON),
            ),
        )

    @strawberry.mutation(
        description="Record an order once per (brand, channel, externalOrderId): earns points (base, birthday and "
        "tier bonuses as separate entries) and growth, updates the purchase history, makes a prospect a member "
        "and upgrades the tier when it qualifies. Sending it again returns the first result."
    )
    @audited("recordOrder")
    async def record_order(
        self,
        info: Info,
        brand: BrandCode,
        channel: Annotated[str, strawberry.argument(description="Channel code of the order.")],
        external_order_id: OrderNumber,
        amount: Annotated[
            Decimal, strawberry.argument(description="Amount paid in yuan: 0.01 to 100,000,000, 2 decimals at most.")
        ],
        paid_at: Annotated[
            dt.datetime,
            strawberry.argument(
                description=f"When it was paid, {inputs.ZONED}, {inputs.MOMENTS} (docs/errors.md#argument-limits)."
            ),
        ],
        member_id: Annotated[
            strawberry.ID | None, strawberry.argument(description="The buyer as a member id (or give buyerId).")
        ] = None,
        buyer_id: Annotated[
            str | None,
            strawberry.argument(
                description=f"The buyer's identity on the order's channel (1-{inputs.EXTERNAL_ID} characters)."
            ),
        ] = None,
        store: Annotated[
            str | None,
            strawberry.argument(description=f"Store code, for offline orders (1-{inputs.STORE} characters)."),
        ] = None,
        lines: Annotated[
            list[OrderLineInput] | None,
            strawberry.argument(
                description="What the order bought (at most 200 lines): what purchase behaviour in audiences reads "
                "(`bought:stage3_formula WITHIN 90d`). Part of the request: resent with the same lines it "
                "replays, with others it is DuplicateRequest."
            ),
        ] = None,
    ) -> RecordOrderResult:
        return await _order(  # type: ignore[no-any-return]
            info,
            lambda: points.record_order(
                info,
                brand=brand,
                channel=channel,
                external_order_id=_external_id(external_order_id, "externalOrderId"),
                member_id=None if member_id is None else _member_id(member_id),
                buyer_id=None if buyer_id is None else _external_id(buyer_id, "buyerId"),
                amount=inputs.yuan(amount, "amount"),
                paid_at=inputs.moment(paid_at, "paidAt"),
                store=inputs.text(store, "store", inputs.STORE),
                lines=tuple(line.to_line(i) for i, line in enumerate(lines or ())),
            ),
            OrderRecorded,
        )

    @strawberry.mutation(
        description="Refund an order in full or in part: takes back its points and growth pro rata. Points the "
        "member already spent are not taken below zero; the shortfall is recorded as pointsUnrecovered."
    )
    @audited("refundOrder")
    async def refund_order(
        self,
        info: Info,
        brand: BrandCode,
        channel: Annotated[str, strawberry.argument(description="Channel code of the order.")],
        external_order_id: OrderNumber,
        idempotency_key: Key,
        amount: Annotated[
            Decimal | None,
            strawberry.argument(description="Yuan refunded (2 decimals at most); default: all that is left."),
        ] = None,
        reason: Reason = None,
    ) -> RefundOrderResult:
        return await _order(  # type: ignore[no-any-return]
            info,
            lambda: points.refund_order(
                info,
                brand=brand,
                channel=channel,
                external_order_id=_external_id(external_order_id, "externalOrderId"),
                amount=None if amount is None else inputs.yuan(amount, "amount"),
                key=idempotency_key,
                reason=_reason(reason),
            ),
            OrderRefunded,
        )

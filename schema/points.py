"""Points ledger, orders and tier history types."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from enum import Enum

import strawberry

from resolvers import points
from resolvers.context import Info
from resolvers.domain import Row
from schema.enums import Channel


@strawberry.enum(description="What a ledger entry did to the balance.")
class PointsEntryKind(Enum):
    EARN = "earn"
    REDEEM = "redeem"
    EXPIRE = "expire"
    REVERSE = "reverse"
    ADJUST = "adjust"
    TRANSFER = "transfer"


@strawberry.enum(description="The request a posting answered.")
class PointsOperation(Enum):
    EARN = "earn"
    REDEEM = "redeem"
    CANCEL_REDEMPTION = "cancel_redemption"
    ADJUST = "adjust"
    ORDER = "order"
    REFUND = "refund"
    EXPIRE = "expire"
    MERGE = "merge"
    UNMERGE = "unmerge"


@strawberry.type(description="One append-only line of a member's points journal.")
class PointsEntry:
    id: strawberry.ID = strawberry.field(description="Entry id.")
    kind: PointsEntryKind = strawberry.field(description="Earn, redeem, expire, reverse, adjust or transfer.")
    amount: int = strawberry.field(description="Signed change of the balance.")
    balance_after: int = strawberry.field(description="The member's balance right after this entry.")
    note: str = strawberry.field(description="Why, in words (e.g. `birthday month x2`).")
    created_at: dt.datetime = strawberry.field(description="When it was posted.")
    posting_id: strawberry.ID = strawberry.field(description="The posting (request) this entry belongs to.")

    @classmethod
    def from_row(cls, row: Row) -> PointsEntry:
        return cls(
            id=strawberry.ID(str(row["id"])),
            kind=PointsEntryKind(row["kind"]),
            amount=row["amount"],
            balance_after=row["balance_after"],
            note=row["note"],
            created_at=row["created_at"],
            posting_id=strawberry.ID(str(row["posting_id"])),
        )


@strawberry.type(description="One idempotent request to the ledger and the entries it posted.")
class PointsPosting:
    id: strawberry.ID = strawberry.field(description="Posting id (cancelRedemption takes a redemption's).")
    operation: PointsOperation = strawberry.field(description="What was asked.")
    idempotency_key: str = strawberry.field(description="The key the request was posted under.")
    channel: Channel | None = strawberry.field(description="Channel the request came from, if given.")
    reason: str | None = strawberry.field(description="Reason given with the request.")
    actor: str = strawberry.field(description="Who posted it.")
    created_at: dt.datetime = strawberry.field(description="When it was posted.")

    @classmethod
    def from_row(cls, row: Row) -> PointsPosting:
        return cls(
            id=strawberry.ID(str(row["id"])),
            operation=PointsOperation(row["operation"]),
            idempotency_key=row["idempotency_key"],
            channel=Channel(row["channel"]) if row["channel"] else None,
            reason=row["reason"],
            actor=row["actor"],
            created_at=row["created_at"],
        )

    @strawberry.field(description="Entries this posting made, in order (none for a replay-free no-op).")
    async def entries(self, info: Info) -> list[PointsEntry]:
        rows = await points.get_posting_entries(info, posting_id=int(self.id))
        return [PointsEntry.from_row(row) for row in rows]


@strawberry.type(description="An order from any channel and what it earned.")
class Order:
    id: strawberry.ID = strawberry.field(description="Order id in omnimember.")
    channel: Channel = strawberry.field(description="Where the order was placed.")
    external_order_id: str = strawberry.field(description="The channel's order number.")
    amount: Decimal = strawberry.field(description="Amount paid, in yuan.")
    refunded: Decimal = strawberry.field(description="Amount refunded so far, in yuan.")
    paid_at: dt.datetime = strawberry.field(description="When it was paid.")
    store: str | None = strawberry.field(description="Store code, for offline orders.")
    points_earned: int = strawberry.field(description="Points the order earned, bonuses included.")
    growth_earned: int = strawberry.field(description="Growth value the order earned.")
    points_reversed: int = strawberry.field(description="Points refunds took back.")
    growth_reversed: int = strawberry.field(description="Growth value refunds took back.")
    points_unrecovered: int = strawberry.field(
        description="Points refunds should have taken back but the member had already spent."
    )

    @classmethod
    def from_row(cls, row: Row) -> Order:
        return cls(
            id=strawberry.ID(str(row["id"])),
            channel=Channel(row["channel"]),
            external_order_id=row["external_order_id"],
            amount=row["amount"],
            refunded=row["refunded"],
            paid_at=row["paid_at"],
            store=row["store"],
            points_earned=row["points_earned"],
            growth_earned=row["growth_earned"],
            points_reversed=row["points_reversed"],
            growth_reversed=row["growth_reversed"],
            points_unrecovered=row["points_unrecovered"],
        )


@strawberry.type(description="A change of tier and its cause.")
class TierChange:
    from_tier: str = strawberry.field(description="Tier code before.")
    to_tier: str = strawberry.field(description="Tier code after.")
    cause: str = strawberry.field(description="What caused it: an order, a review, a merge.")
    changed_at: dt.datetime = strawberry.field(description="When.")


@strawberry.type(description="Points that expire at one moment.")
class ExpiringLot:
    expires_at: dt.datetime = strawberry.field(description="When these points expire.")
    points: int = strawberry.field(description="How many.")


@strawberry.type(description="Points expiring within a window, for reminders.")
class ExpiringPoints:
    total: int = strawberry.field(description="All points expiring within the window.")
    lots: list[ExpiringLot] = strawberry.field(description="Per expiry time, soonest first.")


@strawberry.type(description="Relay page information.")
class HistoryPageInfo:
    has_next_page: bool = strawberry.field(description="Older items follow `endCursor`.")
    has_previous_page: bool = strawberry.field(description="The page started after a cursor.")
    end_cursor: str | None = strawberry.field(description="Pass as `after` for the next page.")


@strawberry.type(description="A points entry and its cursor.")
class PointsEntryEdge:
    cursor: str = strawberry.field(description="Opaque position.")
    node: PointsEntry = strawberry.field(description="The entry.")


@strawberry.type(description="A member's points journal, newest first.")
class PointsEntryConnection:
    edges: list[PointsEntryEdge] = strawberry.field(description="Entries with cursors.")
    page_info: HistoryPageInfo = strawberry.field(description="Where this page sits.")

    @strawberry.field(description="The entries of this page.")
    def nodes(self) -> list[PointsEntry]:
        return [edge.node for edge in self.edges]

    @classmethod
    def from_page(cls, page: points.Page) -> PointsEntryConnection:
        edges = [
            PointsEntryEdge(cursor=c, node=PointsEntry.from_row(r))
            for r, c in zip(page.rows, page.cursors, strict=True)
        ]
        return cls(edges=edges, page_info=page_info(page))


@strawberry.type(description="An order and its cursor.")
class OrderEdge:
    cursor: str = strawberry.field(description="Opaque position.")
    node: Order = strawberry.field(description="The order.")


@strawberry.type(description="A member's orders, newest payment first.")
class OrderConnection:
    edges: list[OrderEdge] = strawberry.field(description="Orders with cursors.")
    page_info: HistoryPageInfo = strawberry.field(description="Where this page sits.")

    @strawberry.field(description="The orders of this page.")
    def nodes(self) -> list[Order]:
        return [edge.node for edge in self.edges]

    @classmethod
    def from_page(cls, page: points.Page) -> OrderConnection:
        edges = [OrderEdge(cursor=c, node=Order.from_row(r)) for r, c in zip(page.rows, page.cursors, strict=True)]
        return cls(edges=edges, page_info=page_info(page))


def page_info(page: points.Page) -> HistoryPageInfo:
    return HistoryPageInfo(
        has_next_page=page.has_next_page,
        has_previous_page=page.has_previous_page,
        end_cursor=page.cursors[-1] if page.cursors else None,
    )

"""Points operations a client asks for: earn, redeem, cancel a redemption, adjust, expire.

Each posts everything or raises (nothing posted); earn, redeem and adjust are whole on their own,
the others run inside the caller's transaction.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

import sqlalchemy as sa
from psycopg import AsyncConnection

from store.errors import DomainError, ErrorCode
from store.ledger import journal
from store.ledger.batched import Change, post_alone
from store.ledger.journal import Draws, Posting, Request
from store.sql import ZERO, Query
from store.tables import lot_draws, points_entries, points_lots, points_postings
from store.transactions import Retry

_posting = Query(
    sa.select(
        points_postings.c.id, points_postings.c.brand_id, points_postings.c.member_id, points_postings.c.operation
    ).where(points_postings.c.id == sa.bindparam("posting_id"))
)
_cancellation = Query(
    sa.select(points_postings.c.id, points_postings.c.idempotency_key).where(
        points_postings.c.reverses_posting_id == sa.bindparam("posting_id")
    )
)
# What a redemption drew, lot by lot, with each lot's current owner (merges may have moved it).
_redemption_draws = Query(
    sa.select(lot_draws.c.lot_id, lot_draws.c.amount, points_lots.c.member_id)
    .join(points_entries, points_entries.c.id == lot_draws.c.entry_id)
    .join(points_lots, points_lots.c.id == lot_draws.c.lot_id)
    .where(points_entries.c.posting_id == sa.bindparam("posting_id"))
    .order_by(points_lots.c.member_id, lot_draws.c.lot_id)
)
_expired_lots = Query(
    sa.select(points_lots.c.id, points_lots.c.remaining)
    .where(
        points_lots.c.member_id == sa.bindparam("member_id"),
        points_lots.c.remaining > ZERO,
        points_lots.c.expires_at <= sa.bindparam("as_of", type_=sa.DateTime(timezone=True)),
    )
    .order_by(points_lots.c.expires_at, points_lots.c.id)
)
_members_with_expired_lots = Query(
    sa.select(points_lots.c.member_id, points_lots.c.brand_id)
    .where(
        points_lots.c.remaining > ZERO,
        points_lots.c.expires_at <= sa.bindparam("as_of", type_=sa.DateTime(timezone=True)),
        points_lots.c.member_id > sa.bindparam("after_member", type_=sa.BigInteger),
    )
    .group_by(points_lots.c.member_id, points_lots.c.brand_id)
    .order_by(points_lots.c.member_id)
    .limit(sa.bindparam("limit", type_=sa.Integer))
)


def earning(request: Request, amount: int) -> Change:
    journal.check_amount(amount)
    return Change(request, "earn", amount, request.reason or "earned")


def redemption(request: Request, amount: int) -> Change:
    journal.check_amount(amount)
    return Change(request, "redeem", amount, request.reason or "redeemed", debit=True)


def adjustment(request: Request, delta: int) -> Change:
    """A manual correction: positive opens a lot, negative draws like a redemption."""
    journal.check_amount(abs(delta), "delta")
    if not request.reason:
        raise DomainError(ErrorCode.INVALID_INPUT, "an adjustment needs a reason", field="reason")
    return Change(request, "adjust", abs(delta), request.reason, debit=delta < 0)


# Earn, redeem and adjust one at a time, whole without a transaction (the API batches them).
async def earn(conn: AsyncConnection[Any], request: Request, amount: int) -> Posting:
    return await post_alone(conn, earning(request, amount))


async def redeem(conn: AsyncConnection[Any], request: Request, amount: int) -> Posting:
    return await post_alone(conn, redemption(request, amount))


async def adjust(conn: AsyncConnection[Any], request: Request, delta: int) -> Posting:
    return await post_alone(conn, adjustment(request, delta))


async def cancel_redemption(
    conn: AsyncConnection[Any], *, brand_id: int, redemption_id: int, key: str, reason: str | None, actor: str
) -> Posting:
    """Give a redemption's points back to exactly the lots it drew from. Raises `Retry` when a
    merge moved those lots to another member while this waited for their owners."""
    redemption = await _posting.one(conn, posting_id=redemption_id)
    if redemption is None or redemption["brand_id"] != brand_id or redemption["operation"] != "redeem":
        raise DomainError(ErrorCode.UNKNOWN_POSTING, f"no redemption {redemption_id} in this brand", field="postingId")
    request = Request(
        brand_id,
        redemption["member_id"],
        key,
        "cancel_redemption",
        {"redemption": redemption_id},
        reason=reason,
        actor=actor,
        reverses_posting_id=redemption_id,
    )
    # The ledger's lock order (`store.ledger.journal`): the redeemer, whom the posting names, and
    # whoever holds the lots now (merges move them), in id order, before anything else; then the
    # draws again, as they are once nobody can move them.
    seen = _by_owner(await _redemption_draws.all(conn, posting_id=redemption_id))
    locked = await journal.lock_members(conn, [redemption["member_id"], *seen])
    owners = _by_owner(await _redemption_draws.all(conn, posting_id=redemption_id))
    if not owners.keys() <= locked.keys():
        raise Retry(f"the lots of redemption {redemption_id} moved while their owners were locked")
    # A cancellation under another key, committed while this waited, holds the redemption now.
    cancelled_by = await _cancellation.one(conn, posting_id=redemption_id)
    if cancelled_by is not None and cancelled_by["idempotency_key"] != request.key:
        raise DomainError(
            ErrorCode.ALREADY_CANCELLED,
            f"redemption {redemption_id} was already cancelled by posting {cancelled_by['id']}",
            field="postingId",
        )
    posting = await journal.claim(conn, request)
    if posting.replayed:
        return posting
    for owner, draws in owners.items():
        # The lot owner may differ from the redeemer after a merge: credit whoever holds the lots now.
        balance = await journal.credit(conn, brand_id, owner, draws.total)
        await journal.give_back(conn, draws)
        owner_posting = Posting(posting.id, owner)
        note = f"redemption {redemption_id} cancelled"
        await journal.entry(conn, owner_posting, brand_id, "reverse", draws.total, balance, note)
    return posting


def _by_owner(rows: list[dict[str, Any]]) -> dict[int, Draws]:
    owners: dict[int, Draws] = {}
    for row in rows:
        owners.setdefault(row["member_id"], Draws()).add(row["lot_id"], row["amount"])
    return owners


async def expire_member(conn: AsyncConnection[Any], brand_id: int, member_id: int, as_of: dt.datetime) -> int:
    """Post one EXPIRE entry for what is left in the member's lots expired by ``as_of``; returns points."""
    await journal.lock_members(conn, [member_id])
    lots = await _expired_lots.all(conn, member_id=member_id, as_of=as_of)
    if not lots:
        return 0
    draws = Draws()
    for lot in lots:
        draws.add(lot["id"], lot["remaining"])
    # The key names exactly what expires, so a re-run (or a retry) posts nothing new.
    digest = hashlib.sha256(repr(list(zip(draws.lot_ids, draws.amounts, strict=True))).encode()).hexdigest()[:32]
    request = Request(
        brand_id=brand_id,
        member_id=member_id,
        key=f"expire:{member_id}:{digest}",
        operation="expire",
        payload={"lots": draws.lot_ids, "amounts": draws.amounts},
        actor="expiry",
        reason=f"expired by {as_of.isoformat()}",
    )
    posting = await journal.claim(conn, request)
    if posting.replayed:
        return 0
    balance = await journal.debit(conn, brand_id, member_id, draws.total)
    entry_id = await journal.entry(conn, posting, brand_id, "expire", -draws.total, balance, "points expired")
    await journal.take(conn, entry_id, draws)
    return draws.total


async def members_with_expired_lots(
    conn: AsyncConnection[Any], as_of: dt.datetime, after_member: int, limit: int
) -> list[tuple[int, int]]:
    """(member id, brand id) pairs holding expired points, in member id order after ``after_member``."""
    rows = await _members_with_expired_lots.all(conn, as_of=as_of, after_member=after_member, limit=limit)
    return [(row["member_id"], row["brand_id"]) for row in rows]

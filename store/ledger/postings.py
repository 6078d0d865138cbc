"""Whole postings in one statement: an earn, a redemption or an adjustment claims its key,
changes the balance, writes its entry and opens or draws its lots together.

Credits run as one statement outside a transaction; a debit plans its draw from the statement's
snapshot and applies only to the member row version that snapshot saw, else it takes two statements
in a transaction. The invariants these rely on are in `store.ledger.journal`'s docstring.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import sqlalchemy as sa
from psycopg import AsyncConnection, errors
from psycopg.pq import TransactionStatus

from store.errors import DomainError, ErrorCode
from store.ledger.journal import (
    AMOUNT,
    CLAIM_VALUES,
    ENTRY_COLUMNS,
    LIVE_MEMBER,
    LOT_EXPIRY,
    Posting,
    Request,
    draw_soonest,
    held_by_key,
    open_lots_cte,
    planned,
    refuse_debit,
)
from store.sql import Query, Row
from store.tables import brand_tiers, lot_draws, members, points_entries, points_lots, points_postings

# --- Whole postings in one statement (earn, redeem, adjust) ---------------------------------------
# The claim, the balance change and the entry travel together, and the statement returns the
# posting and the member after it: a posting costs one round trip (credits, outside a transaction)
# or two (debits: the draw needs its own statement, see `draw_soonest`), and the API answers
# from what came back instead of reading it again.

KEY_CONSTRAINT = "uq_points_postings_brand_id_idempotency_key"
POSTING_VALUES = {name: param for name, param in CLAIM_VALUES.items() if name != "member_id"}


def tiered(member: Any) -> list[sa.ColumnElement[Any]]:
    """A member row as the member loaders return it: its columns, its tier's name and rank."""
    return [*member.c, brand_tiers.c.name.label("tier_name"), brand_tiers.c.rank.label("tier_rank")]


def tier_of(member: Any) -> sa.ColumnElement[bool]:
    return sa.and_(brand_tiers.c.brand_id == member.c.brand_id, brand_tiers.c.code == member.c.tier)


def posting_columns(posting: Any) -> list[sa.ColumnElement[Any]]:
    return [column.label(f"posting_{column.name}") for column in posting.c]


# Credit first: the update locks the member row, then a plain INSERT claims the key. A key already
# held fails the whole statement (unique violation) and nothing of it remains; a member that is not
# live yields no row. Either way `_replay_or_refuse` explains.
_credit_member = (
    (sa.update(members).where(LIVE_MEMBER).values(points_balance=members.c.points_balance + AMOUNT))
    .returning(*members.c)
    .cte("credit_member")
)
_credit_posting = (
    sa.insert(points_postings)
    .from_select(["member_id", *POSTING_VALUES], sa.select(_credit_member.c.id, *POSTING_VALUES.values()))
    .returning(*points_postings.c)
    .cte("credit_posting")
)
_credit_line = (
    sa.insert(points_entries)
    .from_select(
        ENTRY_COLUMNS,
        sa.select(
            _credit_posting.c.id,
            _credit_posting.c.brand_id,
            _credit_member.c.id,
            sa.bindparam("kind", type_=sa.Text),
            AMOUNT,
            _credit_member.c.points_balance,
            sa.bindparam("note", type_=sa.Text),
        ).select_from(_credit_posting.join(_credit_member, sa.true())),
    )
    .returning(points_entries.c.id, points_entries.c.member_id)
    .cte("credit_line")
)
_credit_lot_opened = (
    sa.insert(points_lots)
    .from_select(
        ["brand_id", "member_id", "entry_id", "amount", "remaining", "expires_at"],
        sa.select(
            sa.bindparam("brand_id", type_=sa.BigInteger),
            _credit_line.c.member_id,
            _credit_line.c.id,
            AMOUNT,
            AMOUNT,
            LOT_EXPIRY,
        ),
    )
    .cte("credit_lot_opened")
)
_credit_posted = Query(
    sa.select(*posting_columns(_credit_posting), *tiered(_credit_member))
    .select_from(_credit_posting.join(_credit_member, sa.true()).join(brand_tiers, tier_of(_credit_member)))
    .add_cte(_credit_member, _credit_posting, _credit_line, _credit_lot_opened)
)

# The whole debit in one statement, for autocommit: the member's conditional debit (which locks the
# row: step 1 of the ledger's lock order), then a plain INSERT of the posting (a held key fails the
# statement, and nothing of it remains), the entry, and the draw planned from the lots as the
# statement's snapshot saw them. That plan is only sound if no posting for the member committed
# between the snapshot and the lock; every change to a member's open lots changes its member row
# in the same transaction, so the debit applies only to the row version the snapshot saw (same
# xmin: optimistic concurrency on PostgreSQL's row version) and otherwise yields no row;
# `debit_posting` then takes the two-statement path: the same debit without that condition and
# without the draw, then the draw planned after the lock (`draw_soonest`), in a transaction.
_row_version: sa.ColumnElement[Any] = sa.literal_column("members.xmin")
_seen = members.alias("seen")
# In an UPDATE of members: the row is still the version the statement's snapshot saw.
AS_SEEN = _row_version == sa.select(sa.literal_column("seen.xmin")).where(_seen.c.id == members.c.id).scalar_subquery()


def _debit_ctes(name: str, *conditions: sa.ColumnElement[bool]) -> tuple[Any, Any, Any]:
    """The debited member, its posting and its entry: no rows when the member is not live, the
    balance does not cover the amount or ``conditions`` do not hold."""
    member = (
        sa.update(members)
        .where(LIVE_MEMBER, members.c.points_balance >= AMOUNT, *conditions)
        .values(points_balance=members.c.points_balance - AMOUNT)
        .returning(*members.c)
        .cte(f"{name}_member")
    )
    posting = (
        sa.insert(points_postings)
        .from_select(["member_id", *POSTING_VALUES], sa.select(member.c.id, *POSTING_VALUES.values()))
        .returning(*points_postings.c)
        .cte(f"{name}_posting")
    )
    line = (
        sa.insert(points_entries)
        .from_select(
            ENTRY_COLUMNS,
            sa.select(
                posting.c.id,
                posting.c.brand_id,
                member.c.id,
                sa.bindparam("kind", type_=sa.Text),
                -AMOUNT,
                member.c.points_balance,
                sa.bindparam("note", type_=sa.Text),
            ).select_from(posting.join(member, sa.true())),
        )
        .returning(points_entries.c.id)
        .cte(f"{name}_line")
    )
    return member, posting, line


_at_once_member, _at_once_posting, _at_once_line = _debit_ctes("at_once", AS_SEEN)
# Joined to the entry, so lots are only touched once the member row is locked (lock order).
_at_once_drawn = (
    sa.update(points_lots)
    .where(points_lots.c.id == planned.c.lot_id, _at_once_line.c.id.is_not(None))
    .values(remaining=points_lots.c.remaining - planned.c.amount)
    .returning(points_lots.c.id, planned.c.amount, _at_once_line.c.id.label("entry_id"))
    .cte("at_once_drawn")
)
_at_once_draws = (
    sa.insert(lot_draws)
    .from_select(
        ["entry_id", "lot_id", "amount"],
        sa.select(_at_once_drawn.c.entry_id, _at_once_drawn.c.id, _at_once_drawn.c.amount),
    )
    .cte("at_once_draws")
)
_debited_at_once = Query(
    sa.select(*posting_columns(_at_once_posting), *tiered(_at_once_member))
    .select_from(_at_once_posting.join(_at_once_member, sa.true()).join(brand_tiers, tier_of(_at_once_member)))
    .add_cte(_at_once_member, _at_once_posting, _at_once_line, open_lots_cte, planned, _at_once_drawn, _at_once_draws)
)
_debit_member, _debit_posting, _debit_line = _debit_ctes("debit")
_debit_posted = Query(
    sa.select(*posting_columns(_debit_posting), _debit_line.c.id.label("entry_id"), *tiered(_debit_member))
    .select_from(
        _debit_posting.join(_debit_member, sa.true())
        .join(brand_tiers, tier_of(_debit_member))
        .join(_debit_line, sa.true())
    )
    .add_cte(_debit_member, _debit_posting, _debit_line)
)


def claim_params(request: Request) -> dict[str, Any]:
    return {
        "brand_id": request.brand_id,
        "member_id": request.member_id,
        "key": request.key,
        "operation": request.operation,
        "fingerprint": request.fingerprint(),
        "channel": request.channel,
        "reason": request.reason,
        "actor": request.actor,
        "reverses_posting_id": request.reverses_posting_id,
    }


_POSTING_NAMES = [(f"posting_{column.name}", column.name) for column in points_postings.c]


def split_posting(row: Row, request: Request) -> Posting:
    """The posting and member rows a one-statement posting returned, apart (``row`` keeps the
    member's columns)."""
    posting = {name: row.pop(label) for label, name in _POSTING_NAMES}
    return Posting(posting["id"], request.member_id, row=posting, member=row)


@contextlib.asynccontextmanager
async def statement_fence(conn: AsyncConnection[Any]) -> AsyncIterator[None]:
    """A failed statement aborts an open transaction: fence it there; in autocommit it is its own."""
    if conn.info.transaction_status == TransactionStatus.IDLE:
        yield
    else:
        async with conn.transaction():
            yield


async def credit_posting(conn: AsyncConnection[Any], request: Request, *, kind: str, amount: int, note: str) -> Posting:
    """Claim the key, credit the member, write the entry and open its lot: one statement, so it is
    whole on its own (run it outside a transaction to save the BEGIN and COMMIT round trips)."""
    try:
        async with statement_fence(conn):
            row = await _credit_posted.one(
                conn, **claim_params(request), amount=amount, kind=kind, note=note, earned_at=None
            )
    except errors.UniqueViolation as error:
        if error.diag.constraint_name != KEY_CONSTRAINT:
            raise
        row = None
    return split_posting(row, request) if row is not None else await _replay_or_refuse(conn, request)


async def debit_posting(conn: AsyncConnection[Any], request: Request, *, kind: str, amount: int, note: str) -> Posting:
    """Debit the member if the balance covers it, claim the key, write the entry, draw the lots
    soonest-expiring first. One statement when no other posting for the member got in its way
    (whole on its own: run it outside a transaction to save BEGIN and COMMIT); else two, in a
    transaction."""
    params = {**claim_params(request), "amount": amount, "kind": kind, "note": note, "preferred": []}
    try:
        async with statement_fence(conn):
            row = await _debited_at_once.one(conn, **params)
    except errors.UniqueViolation as error:
        if error.diag.constraint_name != KEY_CONSTRAINT:
            raise
        return await _replay_or_refuse(conn, request)
    if row is not None:
        return split_posting(row, request)
    return await _debit_in_two(conn, request, params)


async def _debit_in_two(conn: AsyncConnection[Any], request: Request, params: dict[str, Any]) -> Posting:
    amount = params["amount"]
    try:
        async with conn.transaction():  # a savepoint when the caller has a transaction open
            row = await _debit_posted.one(conn, **params)
            if row is not None:
                await _draw(conn, row.pop("entry_id"), request.member_id, amount)
                return split_posting(row, request)
    except errors.UniqueViolation as error:
        if error.diag.constraint_name != KEY_CONSTRAINT:
            raise
        return await _replay_or_refuse(conn, request)
    # Nothing debited: the key's earlier posting (a retry), DUPLICATE_REQUEST, or why not.
    held = await held_posting(conn, request)
    if held is None:
        raise await refuse_debit(conn, request.brand_id, request.member_id, amount)
    return held


async def _draw(conn: AsyncConnection[Any], entry_id: int, member_id: int, amount: int) -> None:
    """Draw the debit's lots, planned now that the member's row is locked (`draw_soonest`)."""
    drawn = await draw_soonest.all(conn, entry_id=entry_id, member_id=member_id, amount=amount, preferred=[])
    if sum(draw["amount"] for draw in drawn) != amount:
        raise AssertionError(f"member {member_id}: lots hold less than the balance; ledger invariant broken")


async def _replay_or_refuse(conn: AsyncConnection[Any], request: Request) -> Posting:
    """Nothing was posted: the key's earlier posting (a retry), DUPLICATE_REQUEST, or why not."""
    held = await held_posting(conn, request)
    if held is None:
        raise await refuse_debit(conn, request.brand_id, request.member_id, 0)
    return held


async def held_posting(conn: AsyncConnection[Any], request: Request) -> Posting | None:
    """The posting that already holds the request's key (to replay), None when the key is free;
    DUPLICATE_REQUEST when it holds a different request."""
    held = await held_by_key.one(conn, brand_id=request.brand_id, key=request.key)
    if held is None:
        return None
    if bytes(held["fingerprint"]) != request.fingerprint():
        raise DomainError(
            ErrorCode.DUPLICATE_REQUEST,
            f"idempotency key {request.key!r} was already used for a different request",
            field="idempotencyKey",
        )
    return Posting(held["id"], held["member_id"], replayed=True)

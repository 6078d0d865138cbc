"""The points ledger: postings, append-only entries and expiring lots.

Invariants, for every member at every commit: points_balance = sum of its entries = sum of the
remaining amounts of its lots, and points_balance >= 0 (a CHECK constraint backs the last one).

How they hold under concurrency: every write to a member's points first locks the member row,
with a single conditional UPDATE (`... WHERE points_balance >= :x RETURNING`) or `lock_members`;
lots and entries of that member are only touched after that, so two postings for one member
serialise on the row and never read stale lots. No balance is ever read, changed in Python and
written back. A one-statement debit plans its lot draw from its snapshot and applies only if the
member row is still the version that snapshot saw (see `store.ledger.postings`), which is sound
because of the same rule: whatever changes a member's open lots also updates its member row, in
the same transaction. Keep it so.

Lock order (issue 12): every transaction that touches points, whatever it posts (earn, redeem,
adjust, order, refund, cancelRedemption, expiry, a merge's or an unmerge's transfer, a tier review;
one posting or a batch of them), takes its locks in this order:

1. the member rows, in ascending id order, each at once with the lock the transaction keeps: a
   single posting's conditional UPDATE of its one member, `lock_members` (`ORDER BY id ... FOR NO
   KEY UPDATE`), a batch's or a tier review's members locked the same way before they are
   updated, a merge's two members `FOR UPDATE`. Never a weaker lock first: the foreign key check
   of an INSERT referencing a member takes `FOR KEY SHARE`, and two transactions holding that
   which then both ask for `FOR UPDATE` wait for each other (two refunds of one member did). So
   nothing referencing a member is inserted before the member is locked;
2. then the order row (a refund, `FOR UPDATE`, found again through the member it locked; a merge
   moving orders) and the merge record (an unmerge);
3. then the idempotency key, the INSERT of the posting (and of a new order, under its external
   id), which waits only for a concurrent insert of the same key;
4. then lots, entries, draws and tier changes, only of members the transaction has locked.

Why no deadlock: a transaction waits for a member row only while it holds member rows with
smaller ids and nothing else, so along a chain of such waits the ids grow and it cannot close.
Order rows and the merge record are locked only by whoever holds their member, so nobody waits
for them but a refund whose order a merge moved while it waited for the merged member; that
refund waits for the order's current holder, which waits for nothing it holds, then finds the
order gone from its member and starts again (`Retry`). A key is inserted only after its member is
locked, so a second request under a key waits for the member, not the key; keys are contended
only when a client sends one key for two members at once. Two batches (of two processes) doing
that with two keys in crossed order could still deadlock: PostgreSQL then breaks the cycle
(40P01), the batch's postings go one by one and the duplicate is refused (DUPLICATE_REQUEST).
Deadlocks and serialization failures that happen anyway are retried with jitter by
`store.transactions.transact`, as is a unit of work that raises `Retry` because a row moved under
it (a refund's order or a cancellation's lots, by a merge); all of it is safe to run again
because of the keys. Lots are only touched under their owner's lock, so they never wait.

Idempotency: each request claims its key (a plain INSERT of its posting, which fails when the key
is held, or `claim`'s `INSERT ... ON CONFLICT DO NOTHING`) in the same transaction as its entries.
A retry finds the key taken with the same fingerprint and replays the original posting; a
different payload under the same key is DUPLICATE_REQUEST. A crash before commit leaves neither
the key nor any entry.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from psycopg import AsyncConnection
from sqlalchemy.dialects.postgresql import ARRAY, BYTEA, insert

from store.errors import DomainError, ErrorCode
from store.sql import ZERO, Query, Row
from store.tables import brand_rules, lot_draws, members, points_entries, points_lots, points_postings

MAX_POINTS = 10**9  # per posting: far above any real basket, far below bigint overflow
MAX_KEY = 200
_IDS = sa.bindparam("ids", type_=ARRAY(sa.BigInteger))
_AMOUNTS = sa.bindparam("amounts", type_=ARRAY(sa.BigInteger))


@dataclass(frozen=True, slots=True)
class Request:
    """Who asks for a posting, under which idempotency key, with which payload."""

    brand_id: int
    member_id: int
    key: str
    operation: str
    payload: dict[str, Any]
    channel: str | None = None
    reason: str | None = None
    actor: str = "api"
    reverses_posting_id: int | None = None

    def fingerprint(self) -> bytes:
        canonical = json.dumps(
            {"operation": self.operation, "member": self.member_id, "channel": self.channel, **self.payload},
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(canonical.encode()).digest()


@dataclass(frozen=True, slots=True)
class Posting:
    id: int
    member_id: int
    replayed: bool = False
    # What the write itself returned, when it did: the posting row and the member row after it
    # (with its tier's name and rank), so the API answers without reading them back.
    row: Row | None = None
    member: Row | None = None


@dataclass(slots=True)
class Draws:
    """Which lots a debit took points from, and how many from each."""

    lot_ids: list[int] = field(default_factory=list)
    amounts: list[int] = field(default_factory=list)

    def add(self, lot_id: int, amount: int) -> None:
        self.lot_ids.append(lot_id)
        self.amounts.append(amount)

    @property
    def total(self) -> int:
        return sum(self.amounts)


# Claims the key only for an existing member of the brand (no row otherwise), so an unknown member
# costs no extra query on the happy path and never trips the foreign key mid-transaction.
CLAIM_VALUES: dict[str, sa.BindParameter[Any]] = {
    "brand_id": sa.bindparam("brand_id", type_=sa.BigInteger),
    "member_id": sa.bindparam("member_id", type_=sa.BigInteger),
    "idempotency_key": sa.bindparam("key", type_=sa.Text),
    "operation": sa.bindparam("operation", type_=sa.Text),
    "fingerprint": sa.bindparam("fingerprint", type_=BYTEA),
    "channel": sa.bindparam("channel", type_=sa.Text),
    "reason": sa.bindparam("reason", type_=sa.Text),
    "actor": sa.bindparam("actor", type_=sa.Text),
    "reverses_posting_id": sa.bindparam("reverses_posting_id", type_=sa.BigInteger),
}
claim_insert = (
    insert(points_postings)
    .from_select(
        list(CLAIM_VALUES),
        sa.select(*CLAIM_VALUES.values()).where(
            sa.exists().where(
                members.c.id == sa.bindparam("member_id", type_=sa.BigInteger),
                members.c.brand_id == sa.bindparam("brand_id", type_=sa.BigInteger),
            )
        ),
    )
    .on_conflict_do_nothing(index_elements=[points_postings.c.brand_id, points_postings.c.idempotency_key])
    .returning(*points_postings.c)
)
_claim = Query(claim_insert)
held_by_key = Query(
    sa.select(points_postings.c.id, points_postings.c.member_id, points_postings.c.fingerprint).where(
        points_postings.c.brand_id == sa.bindparam("brand_id"),
        points_postings.c.idempotency_key == sa.bindparam("key"),
    )
)
LIVE_MEMBER = sa.and_(
    members.c.id == sa.bindparam("member_id"),
    members.c.brand_id == sa.bindparam("brand_id"),
    members.c.merged_into.is_(None),
)
_credit = Query(
    sa.update(members)
    .where(LIVE_MEMBER)
    .values(points_balance=members.c.points_balance + sa.bindparam("amount", type_=sa.BigInteger))
    .returning(members.c.points_balance)
)
_debit = Query(
    sa.update(members)
    .where(LIVE_MEMBER, members.c.points_balance >= sa.bindparam("amount", type_=sa.BigInteger))
    .values(points_balance=members.c.points_balance - sa.bindparam("amount", type_=sa.BigInteger))
    .returning(members.c.points_balance)
)
_member_state = Query(
    sa.select(members.c.brand_id, members.c.merged_into, members.c.points_balance).where(
        members.c.id == sa.bindparam("member_id")
    )
)
# Step 1 of the lock order (module docstring): the rows sorted before they are locked (PostgreSQL
# locks them as the sort hands them out), with the lock an UPDATE takes (not FOR UPDATE, which
# would also hold up foreign key checks of other writers, e.g. tag assignments).
_lock_members = Query(
    sa.select(members.c.id, members.c.brand_id, members.c.merged_into, members.c.points_balance)
    .where(members.c.id == sa.any_(_IDS))
    .order_by(members.c.id)
    .with_for_update(key_share=True)
)
_insert_entry = Query(
    sa.insert(points_entries)
    .values(
        posting_id=sa.bindparam("posting_id"),
        brand_id=sa.bindparam("brand_id"),
        member_id=sa.bindparam("member_id"),
        kind=sa.bindparam("kind"),
        amount=sa.bindparam("amount", type_=sa.BigInteger),
        balance_after=sa.bindparam("balance_after", type_=sa.BigInteger),
        note=sa.bindparam("note"),
    )
    .returning(points_entries.c.id)
)
# Draw ``amount`` from the member's open lots, preferred lots first, then soonest expiry: plan,
# consume and record in one statement. Run it only after the member row is locked (by the debit),
# so its snapshot already sees every earlier change to these lots.
AMOUNT = sa.bindparam("amount", type_=sa.BigInteger)
open_lots_cte = (
    sa.select(
        points_lots.c.id,
        points_lots.c.remaining,
        sa.func.sum(points_lots.c.remaining)
        .over(
            order_by=(
                sa.not_(points_lots.c.id == sa.any_(sa.bindparam("preferred", type_=ARRAY(sa.BigInteger)))),
                points_lots.c.expires_at,
                points_lots.c.id,
            )
        )
        .label("running"),
    )
    .where(points_lots.c.member_id == sa.bindparam("member_id"), points_lots.c.remaining > ZERO)
    .cte("open_lots")
)
planned = (
    sa.select(
        open_lots_cte.c.id.label("lot_id"),
        sa.func.least(open_lots_cte.c.remaining, AMOUNT - (open_lots_cte.c.running - open_lots_cte.c.remaining)).label(
            "amount"
        ),
    )
    .where(open_lots_cte.c.running - open_lots_cte.c.remaining < AMOUNT)
    .cte("planned")
)
_drawn = (
    sa.update(points_lots)
    .where(points_lots.c.id == planned.c.lot_id)
    .values(remaining=points_lots.c.remaining - planned.c.amount)
    .cte("drawn")
)
draw_soonest = Query(
    sa.insert(lot_draws)
    .from_select(
        ["entry_id", "lot_id", "amount"],
        sa.select(sa.bindparam("entry_id", type_=sa.BigInteger), planned.c.lot_id, planned.c.amount),
    )
    .add_cte(open_lots_cte, planned, _drawn)
    .returning(lot_draws.c.amount)
)
_draw_rows = sa.select(sa.func.unnest(_IDS).label("lot_id"), sa.func.unnest(_AMOUNTS).label("amount")).subquery("d")
_draw_cte = sa.select(sa.func.unnest(_IDS).label("lot_id"), sa.func.unnest(_AMOUNTS).label("amount")).cte("draws")
_taken = (
    sa.update(points_lots)
    .where(points_lots.c.id == _draw_cte.c.lot_id)
    .values(remaining=points_lots.c.remaining - _draw_cte.c.amount)
    .cte("taken")
)
_take_and_record = Query(
    sa.insert(lot_draws)
    .from_select(
        ["entry_id", "lot_id", "amount"],
        sa.select(sa.bindparam("entry_id", type_=sa.BigInteger), _draw_cte.c.lot_id, _draw_cte.c.amount),
    )
    .add_cte(_draw_cte, _taken)
)
_give_back_to_lots = Query(
    sa.update(points_lots)
    .where(points_lots.c.id == _draw_rows.c.lot_id)
    .values(remaining=points_lots.c.remaining + _draw_rows.c.amount)
)


# End of the year `expiry_years` after the year of earning, in the brand's time zone: the one
# definition of a lot's expiry, evaluated where the lot is written (with `brand_rules` in FROM).
def expiry_at(earned_at: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    return sa.func.make_timestamptz(
        sa.cast(sa.extract("year", sa.func.timezone(brand_rules.c.timezone, earned_at)), sa.Integer)
        + brand_rules.c.expiry_years
        + 1,
        1,
        1,
        0,
        0,
        0,
        brand_rules.c.timezone,
    )


_EARNED_AT = sa.func.coalesce(sa.bindparam("earned_at", type_=sa.DateTime(timezone=True)), sa.func.now())
LOT_EXPIRY = (
    sa.select(expiry_at(_EARNED_AT)).where(brand_rules.c.brand_id == sa.bindparam("brand_id")).scalar_subquery()
)


def _entry_values(balance: sa.ColumnElement[Any], member: sa.ColumnElement[Any], sign: int) -> sa.Select[Any]:
    return sa.select(
        sa.bindparam("posting_id", type_=sa.BigInteger),
        sa.bindparam("brand_id", type_=sa.BigInteger),
        member,
        sa.bindparam("kind", type_=sa.Text),
        sign * sa.bindparam("amount", type_=sa.BigInteger),
        balance,
        sa.bindparam("note", type_=sa.Text),
    )


ENTRY_COLUMNS = ["posting_id", "brand_id", "member_id", "kind", "amount", "balance_after", "note"]
_debited = (
    sa.update(members)
    .where(LIVE_MEMBER, members.c.points_balance >= sa.bindparam("amount", type_=sa.BigInteger))
    .values(points_balance=members.c.points_balance - sa.bindparam("amount", type_=sa.BigInteger))
    .returning(members.c.id, members.c.points_balance)
    .cte("debited")
)
_debit_entry = (
    sa.insert(points_entries)
    .from_select(ENTRY_COLUMNS, _entry_values(_debited.c.points_balance, _debited.c.id, -1))
    .returning(points_entries.c.id)
    .cte("debit_entry")
)
# Balance and entry in one round trip; no row when the balance does not cover it (or no such member).
_debit_with_entry = Query(sa.select(_debit_entry.c.id).add_cte(_debited, _debit_entry))


def check_amount(amount: int, field: str = "amount") -> int:
    if not 1 <= amount <= MAX_POINTS:
        raise DomainError(ErrorCode.INVALID_INPUT, f"{field} must be between 1 and {MAX_POINTS}", field=field)
    return amount


def check_key(key: str) -> str:
    if not 1 <= len(key) <= MAX_KEY or key != key.strip():
        raise DomainError(
            ErrorCode.INVALID_INPUT,
            f"idempotencyKey must be 1-{MAX_KEY} characters without surrounding spaces",
            field="idempotencyKey",
        )
    return key


async def claim(conn: AsyncConnection[Any], request: Request) -> Posting:
    """Claim the request's key: a new posting, or the replay of the one that already holds it."""
    fingerprint = request.fingerprint()
    claimed = await _claim.one(
        conn,
        brand_id=request.brand_id,
        member_id=request.member_id,
        key=request.key,
        operation=request.operation,
        fingerprint=fingerprint,
        channel=request.channel,
        reason=request.reason,
        actor=request.actor,
        reverses_posting_id=request.reverses_posting_id,
    )
    if claimed is not None:
        return Posting(claimed["id"], request.member_id, row=claimed)
    held = await held_by_key.one(conn, brand_id=request.brand_id, key=request.key)
    if held is None:  # nothing conflicted: the member is not one of the brand's
        raise await refuse_debit(conn, request.brand_id, request.member_id, 0)
    if bytes(held["fingerprint"]) != fingerprint:
        raise DomainError(
            ErrorCode.DUPLICATE_REQUEST,
            f"idempotency key {request.key!r} was already used for a different request",
            field="idempotencyKey",
        )
    return Posting(held["id"], held["member_id"], replayed=True)


async def lock_members(conn: AsyncConnection[Any], member_ids: Iterable[int]) -> dict[int, Row]:
    """Lock the members' rows in id order, as an UPDATE would, before anything else the transaction
    locks (see the module docstring); returns the rows found, by id, as they are now."""
    rows = await _lock_members.all(conn, ids=sorted(set(member_ids)))
    return {row["id"]: row for row in rows}


async def refuse_debit(conn: AsyncConnection[Any], brand_id: int, member_id: int, amount: int) -> DomainError:
    row = await _member_state.one(conn, member_id=member_id)
    if row is None or row["brand_id"] != brand_id:
        return DomainError(ErrorCode.UNKNOWN_MEMBER, f"no member {member_id} in this brand", field="memberId")
    if row["merged_into"] is not None:
        return DomainError(
            ErrorCode.ALREADY_MERGED,
            f"member {member_id} was merged into member {row['merged_into']}",
            field="memberId",
            member_id=row["merged_into"],
        )
    return DomainError(
        ErrorCode.INSUFFICIENT_POINTS,
        f"member {member_id} has {row['points_balance']} points, {amount} needed",
        field="amount",
        available=row["points_balance"],
    )


async def credit(conn: AsyncConnection[Any], brand_id: int, member_id: int, amount: int) -> int:
    """Add to a live member's balance (locking its row); returns the new balance."""
    balance = await _credit.scalar(conn, member_id=member_id, brand_id=brand_id, amount=amount)
    if balance is None:
        raise await refuse_debit(conn, brand_id, member_id, 0)
    return int(balance)


async def debit(conn: AsyncConnection[Any], brand_id: int, member_id: int, amount: int) -> int:
    """Take from a live member's balance if it covers ``amount``; returns the new balance."""
    balance = await _debit.scalar(conn, member_id=member_id, brand_id=brand_id, amount=amount)
    if balance is None:
        raise await refuse_debit(conn, brand_id, member_id, amount)
    return int(balance)


async def entry(
    conn: AsyncConnection[Any], posting: Posting, brand_id: int, kind: str, amount: int, balance_after: int, note: str
) -> int:
    entry_id: int = await _insert_entry.scalar(
        conn,
        posting_id=posting.id,
        brand_id=brand_id,
        member_id=posting.member_id,
        kind=kind,
        amount=amount,
        balance_after=balance_after,
        note=note,
    )
    return entry_id


async def take(conn: AsyncConnection[Any], entry_id: int, draws: Draws) -> None:
    """Consume the planned draws and record them against the debiting entry (one statement)."""
    await _take_and_record.run(conn, entry_id=entry_id, ids=draws.lot_ids, amounts=draws.amounts)


async def give_back(conn: AsyncConnection[Any], draws: Draws) -> None:
    """Return drawn points to the lots they came from (a cancelled redemption)."""
    await _give_back_to_lots.run(conn, ids=draws.lot_ids, amounts=draws.amounts)


async def post_debit(
    conn: AsyncConnection[Any],
    posting: Posting,
    brand_id: int,
    *,
    kind: str,
    amount: int,
    note: str,
    preferred: Sequence[int] = (),
) -> int:
    """Debit the posting's member, drawing lots soonest-expiring first; returns the entry id."""
    entry_id = await _debit_with_entry.scalar(
        conn, posting_id=posting.id, brand_id=brand_id, member_id=posting.member_id, kind=kind, amount=amount, note=note
    )
    if entry_id is None:
        raise await refuse_debit(conn, brand_id, posting.member_id, amount)
    drawn = await draw_soonest.all(
        conn, entry_id=entry_id, member_id=posting.member_id, amount=amount, preferred=list(preferred)
    )
    if sum(row["amount"] for row in drawn) != amount:
        raise AssertionError(f"member {posting.member_id}: lots hold less than the balance; ledger invariant broken")
    return int(entry_id)


_lots_of = Query(
    sa.select(points_lots.c.id, points_lots.c.remaining).where(
        points_lots.c.member_id == sa.bindparam("member_id"),
        sa.or_(sa.bindparam("all", type_=sa.Boolean), points_lots.c.id == sa.any_(_IDS)),
    )
)
_reown_lots = Query(
    sa.update(points_lots).where(points_lots.c.id == sa.any_(_IDS)).values(member_id=sa.bindparam("member_id"))
)


async def transfer(
    conn: AsyncConnection[Any],
    *,
    brand_id: int,
    from_id: int,
    to_id: int,
    lot_ids: Sequence[int] | None,
    key: str,
    operation: str,
    note: str,
) -> list[int]:
    """Move lots (all of the member's, or ``lot_ids``) with their expiry from one member to another.
    The caller has locked both members (`lock_members`, or as `store.members.merges` does).

    Spent lots move too, so a later cancelled redemption gives its points back to whoever holds
    the lot. What is left in them is posted as TRANSFER entries out of one member and into the
    other under one posting; both members must be live. Returns the ids of the lots that moved.
    """
    lots = await _lots_of.all(conn, member_id=from_id, all=lot_ids is None, ids=list(lot_ids or ()))
    ids = [lot["id"] for lot in lots]
    total = sum(lot["remaining"] for lot in lots)
    if total > 0:
        posting = await claim(conn, Request(brand_id, from_id, key, operation, {"to": to_id, "lots": ids}))
        assert not posting.replayed, f"transfer key {key} reused"
        out_balance = await debit(conn, brand_id, from_id, total)
        await entry(conn, posting, brand_id, "transfer", -total, out_balance, note)
        in_balance = await credit(conn, brand_id, to_id, total)
        await entry(conn, Posting(posting.id, to_id), brand_id, "transfer", total, in_balance, note)
    await _reown_lots.run(conn, ids=ids, member_id=to_id)
    return ids

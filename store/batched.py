"""Many credits or debits in one transaction: the set-based form of `ledger.credit_posting` and
`ledger.debit_posting`, for `store.batching`.

Each batch statement claims the items' keys first (`INSERT ... ON CONFLICT DO NOTHING`, only for
members that are live in the statement's snapshot), then changes the claimed members' rows
(which locks them), then writes the entries (and a credit's lot). Its result has one row per
claimed key: with the member after it when the member's row took the change, without when it
did not (merged since the snapshot, or, for a debit, a balance that does not cover it). An item
with no row posted nothing here. The invariants hold as in `store.ledger`: a member's row changes
in the same transaction as its entries and lots, and a debit draws its lots in a second
statement, after its member's row is locked, so it sees every earlier change to them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.dialects.postgresql import ARRAY, BYTEA, insert
from sqlalchemy.types import TypeEngine

from store import ledger
from store.batching import Batcher, Unbatchable
from store.ledger import Posting, Request
from store.sql import ZERO, Query, Row
from store.tables import brand_rules, brand_tiers, lot_draws, members, points_entries, points_lots, points_postings


@dataclass(frozen=True, slots=True)
class Change:
    """One earn, redemption or adjustment: who asks, the entry's kind, how many points (> 0), and
    whether they are taken (a debit) or given."""

    request: Request
    kind: str
    amount: int
    note: str
    debit: bool = False


def claims(change: Change) -> tuple[tuple[str, int], tuple[str, int, str]]:
    """What two changes of one batch must not share: the member, the key."""
    request = change.request
    return ("member", request.member_id), ("key", request.brand_id, request.key)


def arrays(**columns: TypeEngine[Any]) -> Any:
    """A batch's items as rows: ``unnest`` of one array parameter per column, numbered ``n``."""
    return (
        sa.func.unnest(*(sa.bindparam(name, type_=ARRAY(type_)) for name, type_ in columns.items()))
        .table_valued(*columns, with_ordinality="n")
        .render_derived(name="items")
    )


_items = sa.select(
    arrays(
        brand_id=sa.BigInteger(),
        member_id=sa.BigInteger(),
        key=sa.Text(),
        operation=sa.Text(),
        fingerprint=BYTEA(),
        channel=sa.Text(),
        reason=sa.Text(),
        actor=sa.Text(),
        kind=sa.Text(),
        amount=sa.BigInteger(),
        note=sa.Text(),
    )
).cte("items")
_LIVE = sa.and_(
    members.c.id == _items.c.member_id, members.c.brand_id == _items.c.brand_id, members.c.merged_into.is_(None)
)
_claimed = (
    insert(points_postings)
    .from_select(
        ["brand_id", "member_id", "idempotency_key", "operation", "fingerprint", "channel", "reason", "actor"],
        sa.select(
            _items.c.brand_id,
            _items.c.member_id,
            _items.c.key,
            _items.c.operation,
            _items.c.fingerprint,
            _items.c.channel,
            _items.c.reason,
            _items.c.actor,
        )
        .select_from(_items.join(members, _LIVE))
        .order_by(_items.c.member_id),  # row locks in one order: two batches never deadlock
    )
    .on_conflict_do_nothing(index_elements=[points_postings.c.brand_id, points_postings.c.idempotency_key])
    .returning(*points_postings.c)
    .cte("claimed")
)
_OF_CLAIMED = sa.and_(
    members.c.id == _claimed.c.member_id,
    members.c.brand_id == _claimed.c.brand_id,
    members.c.merged_into.is_(None),
    _items.c.brand_id == _claimed.c.brand_id,
    _items.c.key == _claimed.c.idempotency_key,
)


def _changed(balance: sa.ColumnElement[int], *conditions: sa.ColumnElement[bool], name: str) -> Any:
    """The claimed members' rows with the new balance, and what each item asked for."""
    return (
        sa.update(members)
        .where(_OF_CLAIMED, *conditions)
        .values(points_balance=balance)
        .returning(
            *members.c,
            _claimed.c.id.label("item_posting_id"),
            _items.c.kind.label("item_kind"),
            _items.c.amount.label("item_amount"),
            _items.c.note.label("item_note"),
        )
        .cte(name)
    )


def _lines(changed: Any, sign: int, name: str) -> Any:
    return (
        sa.insert(points_entries)
        .from_select(
            ledger.ENTRY_COLUMNS,
            sa.select(
                changed.c.item_posting_id,
                changed.c.brand_id,
                changed.c.id,
                changed.c.item_kind,
                sign * changed.c.item_amount,
                changed.c.points_balance,
                changed.c.item_note,
            ),
        )
        .returning(
            points_entries.c.id, points_entries.c.posting_id, points_entries.c.brand_id, points_entries.c.member_id
        )
        .cte(name)
    )


def _result(changed: Any, *extra: sa.ColumnElement[Any], joined: Any = None) -> sa.Select[Any]:
    """One row per claimed key: the posting, and the member after it when its row changed."""
    member_after = [changed.c[column.name] for column in members.c]
    tier = sa.and_(brand_tiers.c.brand_id == changed.c.brand_id, brand_tiers.c.code == changed.c.tier)
    changed_rows = changed.join(brand_tiers, tier)
    if joined is not None:
        changed_rows = changed_rows.join(*joined)
    return sa.select(
        *ledger.posting_columns(_claimed),
        *member_after,
        brand_tiers.c.name.label("tier_name"),
        brand_tiers.c.rank.label("tier_rank"),
        *extra,
    ).select_from(_claimed.outerjoin(changed_rows, changed.c.item_posting_id == _claimed.c.id))


_credited = _changed(members.c.points_balance + _items.c.amount, name="credited")
_credit_lines = _lines(_credited, 1, "credit_lines")
_credit_lots = (
    sa.insert(points_lots)
    .from_select(
        ["brand_id", "member_id", "entry_id", "amount", "remaining", "expires_at"],
        sa.select(
            _credit_lines.c.brand_id,
            _credit_lines.c.member_id,
            _credit_lines.c.id,
            _credited.c.item_amount,
            _credited.c.item_amount,
            ledger.expiry_at(sa.func.now()),
        )
        .select_from(_credit_lines)
        .join(_credited, _credited.c.item_posting_id == _credit_lines.c.posting_id)
        .join(brand_rules, brand_rules.c.brand_id == _credit_lines.c.brand_id),
    )
    .cte("credit_lots")
)
_credits_posted = Query(_result(_credited).add_cte(_items, _claimed, _credited, _credit_lines, _credit_lots))

_debited = _changed(
    members.c.points_balance - _items.c.amount, members.c.points_balance >= _items.c.amount, name="debited"
)
_debit_lines = _lines(_debited, -1, "debit_lines")
_debits_posted = Query(
    _result(
        _debited,
        _debit_lines.c.id.label("entry_id"),
        joined=(_debit_lines, _debit_lines.c.posting_id == _debited.c.item_posting_id),
    ).add_cte(_items, _claimed, _debited, _debit_lines)
)

# The second statement of a debit batch: give back the claims of the items that were refused,
# and draw each debit's points from its member's lots, soonest expiry first (as `ledger`'s draw).
_wanted = sa.select(arrays(entry_id=sa.BigInteger(), member_id=sa.BigInteger(), amount=sa.BigInteger())).cte("wanted")
_unclaimed = (
    sa.delete(points_postings)
    .where(points_postings.c.id == sa.any_(sa.bindparam("refused", type_=ARRAY(sa.BigInteger))))
    .cte("unclaimed")
)
_open_lots = (
    sa.select(
        points_lots.c.id,
        points_lots.c.remaining,
        _wanted.c.entry_id,
        _wanted.c.amount,
        sa.func.sum(points_lots.c.remaining)
        .over(partition_by=points_lots.c.member_id, order_by=(points_lots.c.expires_at, points_lots.c.id))
        .label("running"),
    )
    .join(_wanted, _wanted.c.member_id == points_lots.c.member_id)
    .where(points_lots.c.remaining > ZERO)
    .cte("open_lots")
)
_planned = (
    sa.select(
        _open_lots.c.id.label("lot_id"),
        _open_lots.c.entry_id,
        sa.func.least(
            _open_lots.c.remaining, _open_lots.c.amount - (_open_lots.c.running - _open_lots.c.remaining)
        ).label("amount"),
    )
    .where(_open_lots.c.running - _open_lots.c.remaining < _open_lots.c.amount)
    .cte("planned")
)
_drawn = (
    sa.update(points_lots)
    .where(points_lots.c.id == _planned.c.lot_id)
    .values(remaining=points_lots.c.remaining - _planned.c.amount)
    .cte("drawn")
)
_draw_all = Query(
    sa.insert(lot_draws)
    .from_select(["entry_id", "lot_id", "amount"], sa.select(_planned.c.entry_id, _planned.c.lot_id, _planned.c.amount))
    .add_cte(_wanted, _unclaimed, _open_lots, _planned, _drawn)
    .returning(lot_draws.c.entry_id, lot_draws.c.amount)
)


def _params(changes: Sequence[Change]) -> dict[str, list[Any]]:
    requests = [change.request for change in changes]
    return {
        "brand_id": [request.brand_id for request in requests],
        "member_id": [request.member_id for request in requests],
        "key": [request.key for request in requests],
        "operation": [request.operation for request in requests],
        "fingerprint": [request.fingerprint() for request in requests],
        "channel": [request.channel for request in requests],
        "reason": [request.reason for request in requests],
        "actor": [request.actor for request in requests],
        "kind": [change.kind for change in changes],
        "amount": [change.amount for change in changes],
        "note": [change.note for change in changes],
    }


def _by_key(rows: list[Row]) -> dict[tuple[int, str], Row]:
    return {(row["posting_brand_id"], row["posting_idempotency_key"]): row for row in rows}


async def credit(conn: AsyncConnection[Any], changes: Sequence[Change]) -> list[Posting | None]:
    """Post the credits that can be: a Posting each, None for one to post alone."""
    rows = _by_key(await _credits_posted.all(conn, **_params(changes)))
    postings: list[Posting | None] = []
    for change in changes:
        row = rows.get((change.request.brand_id, change.request.key))
        if row is not None and row["id"] is None:  # claimed, but the member was merged meanwhile
            raise Unbatchable(f"member {change.request.member_id} changed under the batch")
        postings.append(None if row is None else ledger.split_posting(row, change.request))
    return postings


async def debit(conn: AsyncConnection[Any], changes: Sequence[Change]) -> list[Posting | None]:
    """Post the debits the balances cover: a Posting each, None for one to post (or refuse) alone."""
    rows = _by_key(await _debits_posted.all(conn, **_params(changes)))
    found = [rows.get((change.request.brand_id, change.request.key)) for change in changes]
    posted = [(change, row) for change, row in zip(changes, found, strict=True) if row and row["id"] is not None]
    refused = [row["posting_id"] for row in found if row is not None and row["id"] is None]
    drawn = await _draw_all.all(
        conn,
        refused=refused,
        entry_id=[row["entry_id"] for _, row in posted],
        member_id=[change.request.member_id for change, _ in posted],
        amount=[change.amount for change, _ in posted],
    )
    totals: dict[int, int] = {}
    for draw in drawn:
        totals[draw["entry_id"]] = totals.get(draw["entry_id"], 0) + draw["amount"]
    for change, row in posted:
        if totals.get(row["entry_id"], 0) != change.amount:
            raise Unbatchable(f"member {change.request.member_id}: lots hold less than the balance")
    postings: list[Posting | None] = []
    for change, found_row in zip(changes, found, strict=True):
        if found_row is None or found_row["id"] is None:
            postings.append(None)
        else:
            del found_row["entry_id"]
            postings.append(ledger.split_posting(found_row, change.request))
    return postings


async def post_alone(conn: AsyncConnection[Any], change: Change) -> Posting:
    """The change on its own, as `ledger` posts it (whole without a transaction)."""
    post = ledger.debit_posting if change.debit else ledger.credit_posting
    return await post(conn, change.request, kind=change.kind, amount=change.amount, note=change.note)


class Postings:
    """The process's batchers of credits and debits (see `store.batching`)."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.credits = Batcher(pool, credit, post_alone, claims)
        self.debits = Batcher(pool, debit, post_alone, claims)

    async def post(self, change: Change) -> Posting:
        return await (self.debits if change.debit else self.credits).submit(change)

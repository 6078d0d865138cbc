"""Many credits or debits in one statement: the set-based form of `postings.credit_posting` and
`postings.debit_posting`'s one-statement debit, for `store.ledger.batching`.

Like them, a batch statement is whole on its own (run outside a transaction: one round trip):
it changes the members' rows first (which locks them), then inserts the postings with a plain
INSERT (a key taken meanwhile fails the statement, and nothing of it remains), then the entries,
the lots a credit opens and the draws a debit makes. Items whose key is already taken, whose
member is not live, whose balance does not cover a debit, or (for a debit) whose member changed
since the statement's snapshot are left out: no row comes back for them, and they take the
single path, which replays, refuses or posts them. A debit plans its draws from the snapshot,
sound for the same reason as `ledger`'s one-statement debit: every change to a member's open
lots changes its member row, and the debit applies only to the row version the snapshot saw.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import sqlalchemy as sa
from psycopg import AsyncConnection
from sqlalchemy.dialects.postgresql import ARRAY, BYTEA
from sqlalchemy.types import TypeEngine

from store.ledger import journal, postings
from store.ledger.journal import Posting, Request
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


class Requested(Protocol):
    """A batch item: a change, an order."""

    @property
    def request(self) -> Request: ...


R = TypeVar("R", bound=Requested)
T = TypeVar("T")


def claims(item: Requested) -> tuple[tuple[str, int], tuple[str, int, str]]:
    """What two items of one batch must not share: the member, the key."""
    request = item.request
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


def fresh(items: Any, name: str) -> Any:
    """The items whose key no committed posting holds yet, once their members' rows are locked.

    The lock comes first and in id order, step 1 of the ledger's lock order (`store.ledger.journal`):
    the UPDATE of the members alone would lock them in whatever order its join yields them, and two
    batches (of two processes) on the same members could each hold one the other waits for. The
    rows are sorted before they are locked, as the sort hands them out."""
    locked = (
        sa.select(members.c.id)
        .where(members.c.id.in_(sa.select(items.c.member_id)))
        .order_by(members.c.id)
        .with_for_update(key_share=True)
        .cte(f"{name}_locked")
    )
    return (
        sa.select(items)
        .where(
            sa.exists().where(locked.c.id == items.c.member_id),
            ~sa.exists().where(
                points_postings.c.brand_id == items.c.brand_id, points_postings.c.idempotency_key == items.c.key
            ),
        )
        .cte(name)
    )


_fresh = fresh(_items, "fresh")
_ITEM_COLUMNS = ("key", "operation", "fingerprint", "channel", "reason", "actor", "kind", "amount", "note")


def _changed(balance: sa.ColumnElement[int], *conditions: sa.ColumnElement[bool], name: str) -> Any:
    """The fresh items' live members with the new balance, and what each item asked for."""
    return (
        sa.update(members)
        .where(
            members.c.id == _fresh.c.member_id,
            members.c.brand_id == _fresh.c.brand_id,
            members.c.merged_into.is_(None),
            *conditions,
        )
        .values(points_balance=balance)
        .returning(*members.c, *(_fresh.c[column].label(f"item_{column}") for column in _ITEM_COLUMNS))
        .cte(name)
    )


def posted(changed: Any, name: str) -> Any:
    """A plain INSERT of the changed members' postings (``changed`` returns each item's request as
    ``item_<column>``): a key taken meanwhile fails the statement."""
    return (
        sa.insert(points_postings)
        .from_select(
            ["brand_id", "member_id", "idempotency_key", "operation", "fingerprint", "channel", "reason", "actor"],
            sa.select(
                changed.c.brand_id,
                changed.c.id,
                changed.c.item_key,
                changed.c.item_operation,
                changed.c.item_fingerprint,
                changed.c.item_channel,
                changed.c.item_reason,
                changed.c.item_actor,
            ),
        )
        .returning(*points_postings.c)
        .cte(name)
    )


def _lines(posted: Any, changed: Any, sign: int, name: str) -> Any:
    return (
        sa.insert(points_entries)
        .from_select(
            journal.ENTRY_COLUMNS,
            sa.select(
                posted.c.id,
                posted.c.brand_id,
                posted.c.member_id,
                changed.c.item_kind,
                sign * changed.c.item_amount,
                changed.c.points_balance,
                changed.c.item_note,
            ).select_from(posted.join(changed, changed.c.id == posted.c.member_id)),
        )
        .returning(points_entries.c.id, points_entries.c.brand_id, points_entries.c.member_id)
        .cte(name)
    )


def _result(posted: Any, changed: Any) -> sa.Select[Any]:
    """One row per posting: the posting and the member after it (as `ledger`'s statements)."""
    member_after = [changed.c[column.name] for column in members.c]
    tier = sa.and_(brand_tiers.c.brand_id == changed.c.brand_id, brand_tiers.c.code == changed.c.tier)
    return sa.select(
        *postings.posting_columns(posted),
        *member_after,
        brand_tiers.c.name.label("tier_name"),
        brand_tiers.c.rank.label("tier_rank"),
    ).select_from(posted.join(changed, changed.c.id == posted.c.member_id).join(brand_tiers, tier))


_credited = _changed(members.c.points_balance + _fresh.c.amount, name="credited")
_credit_postings = posted(_credited, "credit_postings")
_credit_lines = _lines(_credit_postings, _credited, 1, "credit_lines")
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
            journal.expiry_at(sa.func.now()),
        )
        .select_from(_credit_lines)
        .join(_credited, _credited.c.id == _credit_lines.c.member_id)
        .join(brand_rules, brand_rules.c.brand_id == _credit_lines.c.brand_id),
    )
    .cte("credit_lots")
)
_credits_posted = Query(
    _result(_credit_postings, _credited).add_cte(
        _items, _fresh, _credited, _credit_postings, _credit_lines, _credit_lots
    )
)

_debited = _changed(
    members.c.points_balance - _fresh.c.amount,
    members.c.points_balance >= _fresh.c.amount,
    postings.AS_SEEN,
    name="debited",
)
_debit_postings = posted(_debited, "debit_postings")
_debit_lines = _lines(_debit_postings, _debited, -1, "debit_lines")
# Each debit's draws, soonest expiry first, planned from the lots as the snapshot saw them.
_open_lots = (
    sa.select(
        points_lots.c.id,
        points_lots.c.member_id,
        points_lots.c.remaining,
        _fresh.c.amount,
        sa.func.sum(points_lots.c.remaining)
        .over(partition_by=points_lots.c.member_id, order_by=(points_lots.c.expires_at, points_lots.c.id))
        .label("running"),
    )
    .join(_fresh, _fresh.c.member_id == points_lots.c.member_id)
    .where(points_lots.c.remaining > ZERO)
    .cte("open_lots")
)
_planned = (
    sa.select(
        _open_lots.c.id.label("lot_id"),
        _open_lots.c.member_id,
        sa.func.least(
            _open_lots.c.remaining, _open_lots.c.amount - (_open_lots.c.running - _open_lots.c.remaining)
        ).label("amount"),
    )
    .where(_open_lots.c.running - _open_lots.c.remaining < _open_lots.c.amount)
    .cte("planned")
)
# Joined to the entries, so only debits that applied draw, after their member's row is locked.
_drawn = (
    sa.update(points_lots)
    .where(points_lots.c.id == _planned.c.lot_id, _debit_lines.c.member_id == _planned.c.member_id)
    .values(remaining=points_lots.c.remaining - _planned.c.amount)
    .returning(points_lots.c.id, _planned.c.amount, _debit_lines.c.id.label("entry_id"))
    .cte("drawn")
)
_draws = (
    sa.insert(lot_draws)
    .from_select(["entry_id", "lot_id", "amount"], sa.select(_drawn.c.entry_id, _drawn.c.id, _drawn.c.amount))
    .cte("draws")
)
_debits_posted = Query(
    _result(_debit_postings, _debited).add_cte(
        _items, _fresh, _debited, _debit_postings, _debit_lines, _open_lots, _planned, _drawn, _draws
    )
)


def request_params(requests: Sequence[Request]) -> dict[str, list[Any]]:
    """A batch's requests as one array per posting column its statement writes."""
    return {
        "brand_id": [request.brand_id for request in requests],
        "member_id": [request.member_id for request in requests],
        "key": [request.key for request in requests],
        "operation": [request.operation for request in requests],
        "fingerprint": [request.fingerprint() for request in requests],
        "channel": [request.channel for request in requests],
        "reason": [request.reason for request in requests],
        "actor": [request.actor for request in requests],
    }


def matched(items: Sequence[R], rows: list[Row], split: Callable[[Row, Request], T]) -> list[T | None]:
    """Each item's result from the rows of its batch (found by brand and key); None for an item
    the batch left out."""
    found = {(row["posting_brand_id"], row["posting_idempotency_key"]): row for row in rows}
    results: list[T | None] = []
    for item in items:
        row = found.get((item.request.brand_id, item.request.key))
        results.append(None if row is None else split(row, item.request))
    return results


def _params(changes: Sequence[Change]) -> dict[str, list[Any]]:
    return {
        **request_params([change.request for change in changes]),
        "kind": [change.kind for change in changes],
        "amount": [change.amount for change in changes],
        "note": [change.note for change in changes],
    }


async def credit(conn: AsyncConnection[Any], changes: Sequence[Change]) -> list[Posting | None]:
    """Post the credits that can be: a Posting each, None for one to post alone."""
    return matched(changes, await _credits_posted.all(conn, **_params(changes)), postings.split_posting)


async def debit(conn: AsyncConnection[Any], changes: Sequence[Change]) -> list[Posting | None]:
    """Post the debits that can be: a Posting each, None for one to post (or refuse) alone."""
    return matched(changes, await _debits_posted.all(conn, **_params(changes)), postings.split_posting)


async def post_alone(conn: AsyncConnection[Any], change: Change) -> Posting:
    """The change on its own, as `ledger` posts it (whole without a transaction)."""
    post = postings.debit_posting if change.debit else postings.credit_posting
    return await post(conn, change.request, kind=change.kind, amount=change.amount, note=change.note)

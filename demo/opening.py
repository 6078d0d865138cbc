"""The demo's lighter ledger (``omnimember demo --ledger opening``): what a brand moving over from a
legacy CRM imports, instead of the whole points history of demo/ledger.py.

The numbers are the full ledger's, computed by the same code (demo/orders.py) for the same seed:
every buyer has the same orders (paid times, amounts, channels, refunds, points and growth earned
and reversed) and the members row the same totals, balance included. What is not written is how the
balance came about: per buyer ONE posting (``demo-opening:<member>``, an ``adjust`` by the actor
``demo``) that every order of the member refers to; when the balance is positive, one ADJUST entry
of the whole balance and one lot per expiry date still open, holding what the full ledger's lots of
that date hold. No refund, expiry or draw rows: about a fifth of the ledger's rows.

The invariants hold as in the full ledger: balance = the entry's amount (its balance_after) = the sum
of the lots' remaining points, never negative; a lot is never drawn (remaining = amount). A refund
through the API draws the order's "own lots", here the opening lots, like any debit.
"""

from __future__ import annotations

import numpy as np

from demo.ledger_rows import Copies, Ids, fingerprints, lines, order_text, text, timestamps
from demo.orders import I64, Buyers, Earnings, Randomness, Rules, Totals, earnings, order_labels, totals

NOTE = "opening balance imported from the legacy CRM"
_NULL = "\\N"
_OPENING = np.uint64(0xFFFE)  # an order number no member reaches: the opening posting's random stream
_ORDER_BITS = np.uint64(16)


def open_balances(buyers: Buyers, ids: Ids, rand: Randomness, rules: Rules, as_of: int) -> tuple[Totals, Copies]:
    """A block's orders and opening balances: the members' totals (those of `demo.ledger.post`) and
    the rows to copy. Ids are taken from ``ids`` as `demo.ledger_rows.upper_bounds` reserved them."""
    earned = earnings(buyers, rand, rules, as_of)
    buying = np.flatnonzero(buyers.orders > 0)
    posting_of = np.full(len(buyers.member_id), -1, dtype=np.int64)
    posting_of[buying] = ids.posting + np.arange(len(buying))
    member_totals = totals(buyers, earned)
    holding = np.flatnonzero(member_totals.points_balance > 0)
    entry_of = np.full(len(buyers.member_id), -1, dtype=np.int64)
    entry_of[holding] = ids.entry + np.arange(len(holding))
    external, channel = order_labels(buyers, earned.orders)
    orders = earned.orders
    return member_totals, Copies(
        postings=_posting_text(buyers, buying, posting_of, rand, as_of),
        entries=_entry_text(buyers, holding, posting_of, entry_of, member_totals.points_balance, as_of),
        lots=_lot_text(buyers, ids, entry_of, *_open_lots(earned)),
        draws=b"",
        orders=order_text(buyers, ids.order, orders, external, channel, posting_of[orders.owner]),
        order_count=len(orders.owner),
    )


def _open_lots(earned: Earnings) -> tuple[I64, I64, I64]:
    """Per member and expiry date (owner, expiry, points): what its full-ledger lots of that date still hold."""
    left = earned.remaining()
    held = left > 0
    owner = earned.orders.owner[earned.earning][held]
    expires, points = earned.expires[held], left[held]
    order = np.lexsort((expires, owner))
    owner, expires, points = owner[order], expires[order], points[order]
    starts = np.flatnonzero(np.concatenate([[True], (np.diff(owner) != 0) | (np.diff(expires) != 0)]))
    if not len(points):
        return owner, expires, points
    summed: I64 = np.add.reduceat(points, starts)
    return owner[starts], expires[starts], summed


def _posting_text(buyers: Buyers, buying: I64, posting_of: I64, rand: Randomness, as_of: int) -> bytes:
    count = len(buying)
    members = buyers.member_id[buying]
    key = (((buyers.index[buying] << _ORDER_BITS) | _OPENING) << np.uint64(2)) | np.uint64(3)
    columns = [
        text(posting_of[buying]),
        [str(buyers.brand_id)] * count,
        text(members),
        text(np.strings.add("demo-opening:", members.astype(str))),
        ["adjust"] * count,
        fingerprints(rand, key),
        [_NULL] * count,
        [NOTE] * count,
        ["demo"] * count,
        [_NULL] * count,
        timestamps(np.full(count, as_of, dtype=np.int64)),
    ]
    return lines(columns)


def _entry_text(buyers: Buyers, holding: I64, posting_of: I64, entry_of: I64, balance: I64, as_of: int) -> bytes:
    count = len(holding)
    amount = text(balance[holding])
    columns = [
        text(entry_of[holding]),
        text(posting_of[holding]),
        [str(buyers.brand_id)] * count,
        text(buyers.member_id[holding]),
        ["adjust"] * count,
        amount,
        amount,
        [NOTE] * count,
        timestamps(np.full(count, as_of, dtype=np.int64)),
    ]
    return lines(columns)


def _lot_text(buyers: Buyers, ids: Ids, entry_of: I64, owner: I64, expires: I64, points: I64) -> bytes:
    count = len(owner)
    amount = text(points)
    columns = [
        text(ids.lot + np.arange(count)),
        [str(buyers.brand_id)] * count,
        text(buyers.member_id[owner]),
        text(entry_of[owner]),
        amount,
        amount,
        timestamps(expires),
    ]
    return lines(columns)

"""The demo members' full points ledger, in bulk: the rows `store.ledger.orders.record`, `refund` and
`store.ledger.points.expire_member` would have written, computed with numpy and copied in.

The orders and what they earn come from `demo.orders`; here they become ledger rows. One posting per
order (``order:<channel>:<id>``) and one EARN entry opening the order's lot. A refunded order gets a
refund posting and a REVERSE entry drawing the order's own lot. Lots expired by the time of the load
are emptied by one EXPIRE entry per member (``demo-expire:<member>``), so the live expiry job finds
nothing left to expire.

Every ledger invariant holds by construction: entries are numbered in time order per member with
running balances (never negative: a refund follows its own earning, the expiry comes last), the
balance is the sum of the entries and of the lots' remaining points.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from demo.ledger_rows import NULL, Copies, Ids, fingerprints, lines, order_text, text, timestamps, yuan
from demo.orders import (
    I64,
    ORDER_BITS,
    Bools,
    Buyers,
    Orders,
    Randomness,
    Rules,
    Strings,
    Totals,
    earnings,
    order_labels,
    totals,
)

_EARN, _REVERSE, _EXPIRE = 0, 1, 2  # entry kinds, in the order they sort at equal times
_KINDS = ("earn", "reverse", "expire")


@dataclass(frozen=True, slots=True)
class _Entries:
    """Entries in id order: kind, owner, amount, balance after, time, and what each refers to."""

    kind: I64
    owner: I64
    amount: I64
    balance: I64
    at: I64
    ref: I64  # the order (earn, reverse) or the member (expire)
    id_of: dict[int, I64]  # per kind: entry ids by ref position in that kind's source


def _entries(orders: Orders, earning: I64, expired: Bools, as_of: int) -> tuple[_Entries, I64, I64]:
    """Entries sorted per member by time; also the expiring members and their expired points."""
    reversing = earning[orders.refunded[earning]]
    lost = np.bincount(orders.owner[earning][expired], orders.points[earning][expired]).astype(np.int64)
    expiring = np.flatnonzero(lost)
    parts = (
        (earning, orders.owner[earning], orders.points[earning], orders.paid[earning]),
        (reversing, orders.owner[reversing], -orders.points[reversing], orders.refund_at[reversing]),
        (expiring, expiring, -lost[expiring], np.full(len(expiring), as_of, dtype=np.int64)),
    )
    kind = np.concatenate([np.full(len(p[0]), k, dtype=np.int64) for k, p in enumerate(parts)])
    ref, owner, amount, at = (np.concatenate([p[i] for p in parts]) for i in range(4))
    order = np.lexsort((kind, at, owner))
    kind, ref, owner, amount, at = kind[order], ref[order], owner[order], amount[order], at[order]
    running = np.cumsum(amount)
    group_start = np.searchsorted(owner, owner, side="left")
    balance = running - running[group_start] + amount[group_start]
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(len(order))
    offsets = np.cumsum([0, len(earning), len(reversing)])
    id_of = {k: position[offsets[k] : offsets[k] + len(parts[k][0])] for k in range(3)}
    return _Entries(kind, owner, amount, balance, at, ref, id_of), expiring, lost[expiring]


@dataclass(frozen=True, slots=True)
class _Posted:
    """Everything one block writes, as numbers and strings, before formatting."""

    buyers: Buyers
    ids: Ids
    orders: Orders
    external: Strings
    channel: Strings
    earning: I64  # orders with points: one entry and one lot each
    expires: I64  # per earning order
    expired: Bools  # per earning order
    entries: _Entries
    expiring: I64  # members with an EXPIRE entry
    order_posting: I64
    refund_posting: I64
    expire_posting: I64


def post(buyers: Buyers, ids: Ids, rand: Randomness, rules: Rules, as_of: int) -> tuple[Totals, Copies]:
    """A block's orders, refunds and expiry: the members' totals and the rows to copy."""
    earned = earnings(buyers, rand, rules, as_of)
    orders, earning, expires, expired = earned.orders, earned.earning, earned.expires, earned.expired
    entries, expiring, _ = _entries(orders, earning, expired, as_of)
    refunds = np.flatnonzero(orders.refunded)
    external, channel = order_labels(buyers, orders)
    count = len(orders.owner)
    posted = _Posted(
        buyers=buyers,
        ids=ids,
        orders=orders,
        external=external,
        channel=channel,
        earning=earning,
        expires=expires,
        expired=expired,
        entries=entries,
        expiring=expiring,
        order_posting=ids.posting + np.arange(count),
        refund_posting=np.full(count, -1, dtype=np.int64),
        expire_posting=ids.posting + count + len(refunds) + np.arange(len(expiring)),
    )
    posted.refund_posting[refunds] = ids.posting + count + np.arange(len(refunds))
    return totals(buyers, earned), _copies(posted, rand, rules, as_of)


# --- COPY text ---------------------------------------------------------------------------------------------


def _copies(posted: _Posted, rand: Randomness, rules: Rules, as_of: int) -> Copies:
    return Copies(
        postings=_posting_text(posted, rand, as_of),
        entries=_entry_text(posted, rules),
        lots=_lot_text(posted),
        draws=_draw_text(posted),
        orders=order_text(
            posted.buyers, posted.ids.order, posted.orders, posted.external, posted.channel, posted.order_posting
        ),
        order_count=len(posted.orders.owner),
    )


def _posting_text(posted: _Posted, rand: Randomness, as_of: int) -> bytes:
    """Order postings, then refund postings, then expiry postings (their ids were given that way)."""
    orders, buyers = posted.orders, posted.buyers
    refunds = np.flatnonzero(orders.refunded)
    refs = np.strings.add(np.strings.add(posted.channel, ":"), posted.external)
    expire_key = (buyers.index[posted.expiring] << ORDER_BITS) | np.uint64(0xFFFF)
    n_orders, n_refunds, n_expiring = len(orders.owner), len(refunds), len(posted.expiring)
    count = n_orders + n_refunds + n_expiring
    members = np.concatenate([orders.owner, orders.owner[refunds], posted.expiring])
    columns: list[Sequence[str]] = [
        text(np.concatenate([posted.order_posting, posted.refund_posting[refunds], posted.expire_posting])),
        [str(buyers.brand_id)] * count,
        text(buyers.member_id[members]),
        [
            *text(np.strings.add("order:", refs)),
            *text(np.strings.add("refund:", refs[refunds])),
            *text(np.strings.add("demo-expire:", buyers.member_id[posted.expiring].astype(str))),
        ],
        ["order"] * n_orders + ["refund"] * n_refunds + ["expire"] * n_expiring,
        fingerprints(
            rand,
            np.concatenate(
                [
                    orders.key << np.uint64(2),
                    (orders.key[refunds] << np.uint64(2)) | np.uint64(1),
                    (expire_key << np.uint64(2)) | np.uint64(2),
                ]
            ),
        ),
        [*text(posted.channel), *text(posted.channel[refunds]), *[NULL] * n_expiring],
        [NULL] * n_orders + ["demo refund"] * n_refunds + [f"expired by {_iso(as_of)}"] * n_expiring,
        ["demo"] * count,
        [NULL] * count,
        timestamps(np.concatenate([orders.paid, orders.refund_at[refunds], np.full(n_expiring, as_of)])),
    ]
    return lines(columns)


def _iso(seconds: int) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat()


def _entry_text(posted: _Posted, rules: Rules) -> bytes:
    entries, orders = posted.entries, posted.orders
    kind, ref = entries.kind, entries.ref
    is_expire = kind == _EXPIRE
    order_ref = np.where(is_expire, 0, ref)
    postings = np.where(
        kind == _EARN,
        posted.order_posting[order_ref],
        np.where(kind == _REVERSE, posted.refund_posting[order_ref], 0),
    )
    postings[is_expire] = posted.expire_posting[np.searchsorted(posted.expiring, ref[is_expire])]
    amount = yuan(orders.cents[order_ref])
    notes = np.where(
        kind == _EARN,
        np.strings.add(np.strings.add("order: ", amount), f" yuan x {rules.points_per_yuan}"),
        np.strings.add(
            np.strings.add(np.strings.add("refund of ", amount), " yuan on order "), posted.external[order_ref]
        ),
    )
    notes = np.where(is_expire, "points expired", notes)
    columns: list[Sequence[str]] = [
        text(posted.ids.entry + np.arange(len(kind))),
        text(postings),
        [str(posted.buyers.brand_id)] * len(kind),
        text(posted.buyers.member_id[entries.owner]),
        text(np.asarray(_KINDS)[kind]),
        text(entries.amount),
        text(entries.balance),
        text(notes),
        timestamps(entries.at),
    ]
    return lines(columns)


def _lot_ids(posted: _Posted) -> I64:
    ids: I64 = posted.ids.lot + np.arange(len(posted.earning))
    return ids


def _lot_text(posted: _Posted) -> bytes:
    orders, earning = posted.orders, posted.earning
    points = orders.points[earning]
    remaining = np.where(posted.expired | orders.refunded[earning], 0, points)
    columns: list[Sequence[str]] = [
        text(_lot_ids(posted)),
        [str(posted.buyers.brand_id)] * len(earning),
        text(posted.buyers.member_id[orders.owner[earning]]),
        text(posted.ids.entry + posted.entries.id_of[_EARN]),
        text(points),
        text(remaining),
        timestamps(posted.expires),
    ]
    return lines(columns)


def _draw_text(posted: _Posted) -> bytes:
    """The refunds draw their order's own lot; the expiry draws every expired lot of its member."""
    orders, earning, entries = posted.orders, posted.earning, posted.entries
    refunded = orders.refunded[earning]
    expire_entry = np.full(len(posted.buyers.member_id), -1, dtype=np.int64)
    expire_entry[posted.expiring] = entries.id_of[_EXPIRE]
    lot_ids = _lot_ids(posted)
    columns: list[Sequence[str]] = [
        text(
            posted.ids.entry
            + np.concatenate([entries.id_of[_REVERSE], expire_entry[orders.owner[earning][posted.expired]]])
        ),
        text(np.concatenate([lot_ids[refunded], lot_ids[posted.expired]])),
        text(np.concatenate([orders.points[earning][refunded], orders.points[earning][posted.expired]])),
    ]
    return lines(columns)

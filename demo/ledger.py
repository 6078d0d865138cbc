"""Orders and points for the demo members, in bulk: the rows `store.orders.record`, `refund` and
`store.points.expire_member` would have written, computed with numpy and copied in.

Per buyer: exactly ``order_count`` orders whose amounts add up to the drawn spend, the first and the
last paid at the member's first and last purchase. One posting per order (``order:<channel>:<id>``)
and one EARN entry opening one lot (floor(amount x points_per_yuan) points, expiring at the end of
the year ``expiry_years`` after the paid year in the brand's time zone). About 5% of the orders are
refunded in full a few days later: a REVERSE entry drawing the order's own lot. Lots expired by the
time of the load are emptied by one EXPIRE entry per member (``demo-expire:<member>``), so the live
expiry job finds nothing left to expire.

Every ledger invariant holds by construction: entries are numbered in time order per member with
running balances (never negative: a refund follows its own earning, the expiry comes last), the
balance is the sum of the entries and of the lots' remaining points.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
import psycopg
from psycopg import sql

from store import tables
from store.tables import CHANNELS

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]
Strings = npt.NDArray[np.str_]
Connection = psycopg.Connection[Any]

REFUND_SHARE = 0.05
_REFUND_DELAY = 14 * 86_400  # refunds come within two weeks of the payment
_NULL = "\\N"
_ORDER_BITS = np.uint64(16)  # an order's random stream index: member index << 16 | order number
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_EARN, _REVERSE, _EXPIRE = 0, 1, 2  # entry kinds, in the order they sort at equal times
_KINDS = ("earn", "reverse", "expire")


class Randomness(Protocol):
    def bits(self, stream: str, index: U64) -> U64: ...

    def uniform(self, stream: str, index: U64) -> F64: ...


@dataclass(frozen=True, slots=True)
class Rules:
    """A brand's earning rules (brand_rules), as integers where the arithmetic must be exact."""

    points_per_yuan: Decimal
    growth_per_yuan: Decimal
    expiry_years: int
    timezone: str

    def year_starts(self) -> I64:
        """Epoch seconds of 1 January 1970…2199 at midnight in the brand's time zone."""
        zone = ZoneInfo(self.timezone)
        return np.array([int(dt.datetime(y, 1, 1, tzinfo=zone).timestamp()) for y in range(1970, 2200)])


@dataclass(frozen=True, slots=True)
class Ids:
    """The first of the ids reserved for one block, per table."""

    posting: int
    entry: int
    lot: int
    order: int


@dataclass(frozen=True, slots=True)
class Buyers:
    """One block of members (prospects included, with no orders)."""

    brand_id: int
    member_id: I64
    index: U64  # position in the brand: the random streams' index
    orders: I64
    spend_cents: I64
    first: I64  # epoch seconds (anything for prospects)
    last: I64
    channels: I64  # (members, 4): indexes into CHANNELS, -1 past the member's identity count


@dataclass(frozen=True, slots=True)
class Totals:
    """Per member, what the members row says after the orders, refunds and expiry."""

    spend_cents: I64
    points_balance: I64
    growth_value: I64
    points_earned: I64

    @staticmethod
    def without_points(buyers: Buyers) -> Totals:
        zeros = np.zeros(len(buyers.member_id), dtype=np.int64)
        return Totals(buyers.spend_cents, zeros, zeros, zeros)


@dataclass(frozen=True, slots=True)
class Copies:
    """COPY text of one block's ledger rows, in foreign-key order."""

    postings: bytes
    entries: bytes
    lots: bytes
    draws: bytes
    orders: bytes
    order_count: int


def upper_bounds(orders: int, members: int) -> Ids:
    """At most how many rows per table a block with ``orders`` orders and ``members`` members writes."""
    return Ids(posting=2 * orders + members, entry=2 * orders + members, lot=orders, order=orders)


# --- the numbers -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Orders:
    owner: I64  # index of the member in the block
    number: I64  # 0-based within the member, in paid order
    key: U64  # random stream index
    paid: I64
    cents: I64
    channel: I64
    points: I64
    growth: I64
    refunded: Bools
    refund_at: I64


def _orders(buyers: Buyers, rand: Randomness, rules: Rules, as_of: int) -> Orders:
    counts = buyers.orders
    owner = np.repeat(np.arange(len(counts)), counts)
    number = np.arange(len(owner)) - (np.cumsum(counts) - counts)[owner]
    key = (buyers.index[owner] << _ORDER_BITS) | number.astype(np.uint64)
    cents = _split_spend(buyers, owner, number, rand.uniform("order/amount", key))
    channels = buyers.channels[owner]
    slot = (rand.uniform("order/channel", key) * (channels >= 0).sum(axis=1)).astype(np.int64)
    refunded = rand.uniform("order/refund", key) < REFUND_SHARE
    paid = _paid_times(buyers, owner, number, rand.uniform("order/paid", key))
    delay = 3600 + (rand.uniform("order/refund-delay", key) * _REFUND_DELAY).astype(np.int64)
    return Orders(
        owner=owner,
        number=number,
        key=key,
        paid=paid,
        cents=cents,
        channel=channels[np.arange(len(owner)), slot],
        points=cents * int(rules.points_per_yuan * 100) // 10_000,  # floor(yuan x rate), exactly
        growth=cents * int(rules.growth_per_yuan * 100) // 10_000,
        refunded=refunded,
        refund_at=np.minimum(paid + delay, np.maximum(paid, as_of)),
    )


def _paid_times(buyers: Buyers, owner: I64, number: I64, u: F64) -> I64:
    """The first and last orders at the first and last purchase, the others in between, sorted."""
    first, last = buyers.first[owner], buyers.last[owner]
    paid = first + (u * (last - first)).astype(np.int64)
    paid = np.where(number == 0, first, np.where(number == buyers.orders[owner] - 1, last, paid))
    sorted_paid: I64 = paid[np.lexsort((paid, owner))]  # owners stay in place: they are already sorted
    return sorted_paid


def _split_spend(buyers: Buyers, owner: I64, number: I64, u: F64) -> I64:
    """Cents per order, at least one yuan where the spend allows, summing to the member's spend."""
    counts = np.maximum(buyers.orders, 1)
    weights = -np.log1p(-u)  # exponential: a flat Dirichlet split
    total_weight = np.bincount(owner, weights, minlength=len(counts))
    floor = np.minimum(100, buyers.spend_cents // counts)
    extra = buyers.spend_cents - floor * buyers.orders
    cents = floor[owner] + np.floor(extra[owner] * weights / total_weight[owner]).astype(np.int64)
    short = buyers.spend_cents - np.bincount(owner, cents, minlength=len(counts)).astype(np.int64)
    last = number == buyers.orders[owner] - 1
    cents[last] += short[owner[last]]
    return cents


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


# --- COPY text ---------------------------------------------------------------------------------------------


def timestamps(seconds: I64) -> list[str]:
    text: list[str] = np.datetime_as_string(seconds.astype("datetime64[s]"), unit="s", timezone="UTC").tolist()
    return text


def text(values: npt.NDArray[Any]) -> list[str]:
    out: list[str] = values.astype(str).tolist()
    return out


def lines(columns: Sequence[Sequence[str]]) -> bytes:
    if not columns or not len(columns[0]):
        return b""
    return ("\n".join(map("\t".join, zip(*columns, strict=True))) + "\n").encode()


def _yuan(cents: I64) -> Strings:
    whole = (cents // 100).astype(str)
    return np.strings.add(np.strings.add(whole, "."), np.strings.zfill((cents % 100).astype(str), 2))


def fingerprints(rand: Randomness, index: U64) -> list[str]:
    """32 random bytes per posting (a stand-in for the request's SHA-256), as COPY text bytea."""
    words = np.stack([rand.bits(f"fingerprint/{w}", index) for w in range(4)], axis=1)
    raw = np.ascontiguousarray(words).view(np.uint8).reshape(len(index), 32)
    chars = np.empty((len(index), 64), dtype=np.uint8)
    chars[:, 0::2] = _HEX[raw >> 4]
    chars[:, 1::2] = _HEX[raw & 15]
    hexes = chars.view("S64").ravel().astype(str)
    return text(np.strings.add("\\\\x", hexes)) if len(index) else []


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


@dataclass(frozen=True, slots=True)
class Earnings:
    """A block's orders and the lots they opened, before any ledger row is laid out."""

    orders: Orders
    earning: I64  # orders with points: one lot each
    expires: I64  # per earning order
    expired: Bools  # per earning order: emptied by the expiry (refunded lots are emptied by their refund)

    def remaining(self) -> I64:
        """Points left in each earning order's lot."""
        left: I64 = np.where(self.expired | self.orders.refunded[self.earning], 0, self.orders.points[self.earning])
        return left


def earnings(buyers: Buyers, rand: Randomness, rules: Rules, as_of: int) -> Earnings:
    orders = _orders(buyers, rand, rules, as_of)
    earning = np.flatnonzero(orders.points > 0)
    starts = rules.year_starts()
    year = np.searchsorted(starts, orders.paid[earning], side="right") - 1
    expires = starts[year + rules.expiry_years + 1]
    return Earnings(orders, earning, expires, (expires <= as_of) & ~orders.refunded[earning])


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


def order_labels(buyers: Buyers, orders: Orders) -> tuple[Strings, Strings]:
    """Each order's external id (``DEMO<member>-<n>``) and channel name."""
    member_ids = buyers.member_id[orders.owner].astype(str)
    external = np.strings.add(np.strings.add(np.strings.add("DEMO", member_ids), "-"), (orders.number + 1).astype(str))
    channel: Strings = np.asarray(CHANNELS)[orders.channel]
    return external, channel


def totals(buyers: Buyers, earned: Earnings) -> Totals:
    """What the members rows say after the block's orders, refunds and expiry (both ledger modes)."""
    orders, n = earned.orders, len(buyers.member_id)
    refunded = orders.refunded

    def per_member(values: I64, owner: I64 = orders.owner) -> I64:
        summed: I64 = np.bincount(owner, values, minlength=n).astype(np.int64)
        return summed

    return Totals(
        spend_cents=buyers.spend_cents - per_member(orders.cents * refunded),
        points_balance=per_member(earned.remaining(), orders.owner[earned.earning]),
        growth_value=per_member(orders.growth * ~refunded),
        points_earned=per_member(orders.points),
    )


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
    expire_key = (buyers.index[posted.expiring] << _ORDER_BITS) | np.uint64(0xFFFF)
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
        [*text(posted.channel), *text(posted.channel[refunds]), *[_NULL] * n_expiring],
        [_NULL] * n_orders + ["demo refund"] * n_refunds + [f"expired by {_iso(as_of)}"] * n_expiring,
        ["demo"] * count,
        [_NULL] * count,
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
    amount = _yuan(orders.cents[order_ref])
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


def order_text(
    buyers: Buyers, first_id: int, orders: Orders, external: Strings, channel: Strings, posting: I64
) -> bytes:
    """The orders rows, ids from ``first_id``, each pointing at the posting given for it."""
    count = len(orders.owner)
    refunded = orders.refunded
    columns: list[Sequence[str]] = [
        text(first_id + np.arange(count)),
        [str(buyers.brand_id)] * count,
        text(buyers.member_id[orders.owner]),
        text(channel),
        text(external),
        text(_yuan(orders.cents)),
        text(_yuan(orders.cents * refunded)),
        timestamps(orders.paid),
        [_NULL] * count,
        text(posting),
        text(orders.points),
        text(orders.growth),
        text(orders.points * refunded),
        text(orders.growth * refunded),
        timestamps(orders.paid),
    ]
    return lines(columns)


# --- the database ------------------------------------------------------------------------------------------


def _copy_statement(table: str, columns: Sequence[str]) -> sql.Composed:
    return sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )


_COPIES = (
    (
        "postings",
        _copy_statement(
            tables.points_postings.name,
            (
                "id",
                "brand_id",
                "member_id",
                "idempotency_key",
                "operation",
                "fingerprint",
                "channel",
                "reason",
                "actor",
                "reverses_posting_id",
                "created_at",
            ),
        ),
    ),
    (
        "entries",
        _copy_statement(
            tables.points_entries.name,
            ("id", "posting_id", "brand_id", "member_id", "kind", "amount", "balance_after", "note", "created_at"),
        ),
    ),
    (
        "lots",
        _copy_statement(
            tables.points_lots.name, ("id", "brand_id", "member_id", "entry_id", "amount", "remaining", "expires_at")
        ),
    ),
    ("draws", _copy_statement(tables.lot_draws.name, ("entry_id", "lot_id", "amount"))),
    (
        "orders",
        _copy_statement(
            tables.orders.name,
            (
                "id",
                "brand_id",
                "member_id",
                "channel",
                "external_order_id",
                "amount",
                "refunded",
                "paid_at",
                "store",
                "posting_id",
                "points_earned",
                "growth_earned",
                "points_reversed",
                "growth_reversed",
                "created_at",
            ),
        ),
    ),
)
TABLES = (tables.points_postings, tables.points_entries, tables.points_lots, tables.lot_draws, tables.orders)


def copy(conn: Connection, copies: Copies) -> None:
    for field, statement in _COPIES:
        data: bytes = getattr(copies, field)
        if data:
            with conn.cursor() as cur, cur.copy(statement) as out:
                out.write(data)


_RULES = "SELECT points_per_yuan, growth_per_yuan, expiry_years, timezone FROM brand_rules WHERE brand_id = %s"


def rules(conn: Connection, brand_id: int) -> Rules:
    row = conn.execute(_RULES, (brand_id,)).fetchone()
    assert row is not None, f"brand {brand_id} has no rules"
    return Rules(points_per_yuan=row[0], growth_per_yuan=row[1], expiry_years=int(row[2]), timezone=row[3])


def reserve(conn: Connection, table: str, count: int) -> int:
    """The first of ``count`` consecutive ids taken from ``table``'s identity sequence (see demo.py)."""
    sequence = sql.SQL("pg_get_serial_sequence({}, 'id')").format(sql.Literal(table))
    with conn.transaction():
        conn.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(sql.Identifier(table)))
        row = conn.execute(sql.SQL("SELECT nextval({})").format(sequence)).fetchone()
        assert row is not None
        first = int(row[0])
        if count > 1:
            conn.execute(sql.SQL("SELECT setval({}, %s)").format(sequence), (first + count - 1,))
    return first

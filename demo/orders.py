"""What the demo's buyers bought and earned, in bulk: the numbers both demo ledgers write, the full one
(`demo.ledger`) and the opening balances (`demo.opening`), so that both give a buyer the same orders and
the members row the same totals for the same seed.

Per buyer: exactly ``order_count`` orders whose amounts add up to the drawn spend, the first and the
last paid at the member's first and last purchase. Each order earns floor(amount x points_per_yuan)
points in one lot, expiring at the end of the year ``expiry_years`` after the paid year in the brand's
time zone. About 5% of the orders are refunded in full a few days later.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt
import psycopg

from store.tables import CHANNELS

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]
Strings = npt.NDArray[np.str_]
Connection = psycopg.Connection[Any]

REFUND_SHARE = 0.05
_REFUND_DELAY = 14 * 86_400  # refunds come within two weeks of the payment
ORDER_BITS = np.uint64(16)  # an order's random stream index: member index << 16 | order number


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
    key = (buyers.index[owner] << ORDER_BITS) | number.astype(np.uint64)
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


def order_amounts(buyers: Buyers, rand: Randomness) -> tuple[U64, I64]:
    """Each order's random stream index and cents, in the order `earnings` gives the orders (their ids'
    order): what the order lines (demo.products) split, without the rest of an order's numbers."""
    counts = buyers.orders
    owner = np.repeat(np.arange(len(counts)), counts)
    number = np.arange(len(owner)) - (np.cumsum(counts) - counts)[owner]
    key = (buyers.index[owner] << ORDER_BITS) | number.astype(np.uint64)
    return key, _split_spend(buyers, owner, number, rand.uniform("order/amount", key))


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


# --- the database ------------------------------------------------------------------------------------------


_RULES = "SELECT points_per_yuan, growth_per_yuan, expiry_years, timezone FROM brand_rules WHERE brand_id = %s"


def rules(conn: Connection, brand_id: int) -> Rules:
    row = conn.execute(_RULES, (brand_id,)).fetchone()
    assert row is not None, f"brand {brand_id} has no rules"
    return Rules(points_per_yuan=row[0], growth_per_yuan=row[1], expiry_years=int(row[2]), timezone=row[3])

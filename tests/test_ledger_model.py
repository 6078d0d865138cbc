"""A stateful property test: random ledger operations against the real database and a model.

The model holds every lot: its owner, what it earned, what is left, what redemptions, expiry and
refunds took from it, and when it expires. After every step, lot by lot, the database holds what the
model holds, and each lot adds up: earned = remaining + redeemed + expired + reversed (from
`lot_draws` by the kind of the drawing entry; a cancelled redemption's draws count as given back).
Per member: balance = sum of entries = sum of remaining lots, never negative, and the tier, the
growth value and the points earned from orders are the model's; per order: points and growth earned and taken back.

The operations vary what the ledger's arithmetic depends on: members of different tiers (with
different point multipliers) and birthdays, several orders per member with amounts to the cent,
paid now, years ago or around Asia/Shanghai year ends (a microsecond either side), refunds of any
share down to a cent, expiry years ahead and at exactly a lot's expiry instant, merges and unmerges.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import math
import secrets
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from psycopg import AsyncConnection

from store.brands import create_brand
from store.errors import DomainError, ErrorCode
from store.ledger import orders, points
from store.ledger.journal import Posting, Request
from store.members import merges
from store.members.phones import PhoneVault
from store.members.unification import bind_identity
from tests.conftest import TEST_SECRET

NOW = dt.datetime.now(dt.UTC)
SHANGHAI = ZoneInfo("Asia/Shanghai")  # the brand's zone (the default)
EXPIRY_YEARS = 2  # the default
TIER_WINDOW = dt.timedelta(days=365)
MICRO = dt.timedelta(microseconds=1)


@dataclass(frozen=True)
class Tier:
    code: str
    rank: int
    threshold: int  # growth in the last 365 days
    multiplier: Decimal


# The brand's tiers, set up unlike the defaults so that each tier earns differently.
TIERS = {
    t.code: t
    for t in (
        Tier("silver", 0, 0, Decimal("1")),
        Tier("gold", 1, 3000, Decimal("1.25")),
        Tier("platinum", 2, 6000, Decimal("1.5")),
        Tier("diamond", 3, 9000, Decimal("2")),
    )
}
BIRTHDAY_MULTIPLIER = 2  # the default


def expiry(earned: dt.datetime) -> dt.datetime:
    """The end of the year EXPIRY_YEARS after the year of ``earned``, in Shanghai."""
    return dt.datetime(earned.astimezone(SHANGHAI).year + EXPIRY_YEARS + 1, 1, 1, tzinfo=SHANGHAI)


def year_end(year: int, offset: dt.timedelta) -> dt.datetime:
    return dt.datetime(year, 1, 1, tzinfo=SHANGHAI) + offset


# When an order was paid: now, years ago (outside the tier window), or around a Shanghai year end
# (midnight there, a microsecond either side, and midnight UTC, 8 hours later).
YEAR_END_OFFSETS = [-MICRO, dt.timedelta(0), MICRO, dt.timedelta(hours=8) - MICRO, dt.timedelta(hours=8)]
PAID = st.one_of(
    st.sampled_from([0, 400, 800, 1200]).map(lambda days: NOW - dt.timedelta(days=days)),
    st.builds(
        year_end,
        st.integers(NOW.astimezone(SHANGHAI).year - 3, NOW.astimezone(SHANGHAI).year),
        st.sampled_from(YEAR_END_OFFSETS),
    ),
)


@dataclass
class Lot:
    """One lot: the database's id (redemptions draw the soonest expiry, then the lowest id)."""

    id: int
    owner: int
    amount: int
    remaining: int
    expires_at: dt.datetime
    order: str | None = None
    redeemed: int = 0
    expired: int = 0
    reversed: int = 0


@dataclass
class Order:
    owner: int
    cents: int
    paid_at: dt.datetime
    points: int
    growth: int
    refunded: int = 0  # cents
    points_reversed: int = 0
    points_unrecovered: int = 0
    growth_reversed: int = 0


@dataclass
class Member:
    tier: str = "silver"
    growth: int = 0
    points_earned: int = 0  # from orders; a refund leaves it
    birthday_month: int | None = None


@dataclass
class Merge:
    id: int
    survivor: int
    merged: int
    lots: list[Lot]
    orders: list[str]
    tier_before: str
    tier_after: str
    birthday_before: int | None
    birthday_after: int | None


@dataclass
class Model:
    members: dict[int, Member] = field(default_factory=dict)
    lots: list[Lot] = field(default_factory=list)
    orders: dict[str, Order] = field(default_factory=dict)
    redemptions: dict[int, list[tuple[Lot, int]]] = field(default_factory=dict)
    merged_into: dict[int, int] = field(default_factory=dict)
    merges: list[Merge] = field(default_factory=list)

    def balance(self, member: int) -> int:
        return sum(lot.remaining for lot in self.lots if lot.owner == member)

    def draw(self, member: int, amount: int, preferred: str | None = None) -> list[tuple[Lot, int]]:
        """Take ``amount`` from the member's lots: the preferred order's first, then soonest expiry."""
        mine = [lot for lot in self.lots if lot.owner == member and lot.remaining > 0]
        mine.sort(key=lambda lot: (preferred is not None and lot.order != preferred, lot.expires_at, lot.id))
        taken = []
        for lot in mine:
            if amount == 0:
                break
            part = min(lot.remaining, amount)
            lot.remaining -= part
            amount -= part
            taken.append((lot, part))
        assert amount == 0, "the model drew more than the member holds"
        return taken

    def qualifying_growth(self, member: int, since: dt.datetime) -> int:
        return sum(
            o.growth - o.growth_reversed for o in self.orders.values() if o.owner == member and o.paid_at > since
        )

    def upgraded(self, member: int, growth: int, paid_at: dt.datetime) -> str:
        """The tier after an order: the best one the year's growth reaches, if above the current one."""
        since = dt.datetime.now(dt.UTC) - TIER_WINDOW
        reached = self.qualifying_growth(member, since) + (growth if paid_at > since else 0)
        current = TIERS[self.members[member].tier]
        better = [t for t in TIERS.values() if t.threshold <= reached and t.rank > current.rank]
        return max(better, key=lambda t: t.rank).code if better else current.code


# Per lot: amount, remaining, expiry, owner and what each kind of draw took (cancelled redemptions aside).
LOTS = """
SELECT l.id, l.member_id, l.amount, l.remaining, l.expires_at,
       coalesce(sum(d.amount) FILTER (WHERE e.kind = 'redeem' AND c.id IS NULL), 0)::bigint,
       coalesce(sum(d.amount) FILTER (WHERE e.kind = 'expire'), 0)::bigint,
       coalesce(sum(d.amount) FILTER (WHERE e.kind = 'reverse'), 0)::bigint,
       coalesce(sum(d.amount) FILTER (WHERE e.kind NOT IN ('redeem', 'expire', 'reverse')), 0)::bigint
FROM points_lots l LEFT JOIN lot_draws d ON d.lot_id = l.id LEFT JOIN points_entries e ON e.id = d.entry_id
LEFT JOIN points_postings c ON c.reverses_posting_id = e.posting_id
WHERE l.brand_id = %s GROUP BY l.id ORDER BY l.id
"""
MEMBERS = """
SELECT m.id, m.points_balance,
       (SELECT coalesce(sum(amount), 0) FROM points_entries WHERE member_id = m.id)::bigint,
       (SELECT coalesce(sum(remaining), 0) FROM points_lots WHERE member_id = m.id)::bigint,
       m.tier, m.growth_value, m.points_earned
FROM members m WHERE m.brand_id = %s ORDER BY m.id
"""
ORDERS = """
SELECT external_order_id, member_id, points_earned, growth_earned, (refunded * 100)::bigint, points_reversed,
       points_unrecovered, growth_reversed
FROM orders WHERE brand_id = %s ORDER BY external_order_id
"""
POSTED_LOTS = """
SELECT l.id FROM points_lots l JOIN points_entries e ON e.id = l.entry_id WHERE e.posting_id = %s ORDER BY l.id
"""


class LedgerMachine(RuleBasedStateMachine):
    url = ""  # set by the test: the throwaway database

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.conn: AsyncConnection[Any] = self.run(AsyncConnection.connect(self.url, autocommit=True))
        self.model = Model()
        self.keys = itertools.count()
        self.requests: list[tuple[str, int, int, str]] = []
        self.brand_id, self.member_ids = self.run(self._setup())
        self.model.members = {member: Member() for member in self.member_ids}

    def run(self, work: Any) -> Any:
        return self.loop.run_until_complete(work)

    async def _setup(self) -> tuple[int, list[int]]:
        vault = PhoneVault(TEST_SECRET.encode())
        async with self.conn.transaction():
            brand = await create_brand(self.conn, code=f"m_{secrets.token_hex(4)}", name="Model", group_code="model")
            for tier in TIERS.values():
                await self.conn.execute(
                    "UPDATE brand_tiers SET threshold = %s, points_multiplier = %s WHERE brand_id = %s AND code = %s",
                    (tier.threshold, tier.multiplier, brand["id"], tier.code),
                )
            ids = []
            for n in range(3):
                binding = await bind_identity(self.conn, vault, brand=brand["code"], channel="pos", external_id=f"c{n}")
                ids.append(binding.member_id)
        return brand["id"], ids

    def teardown(self) -> None:
        # Expire what the run left expired: other tests' expiry jobs read the whole shared database.
        if not self.conn.closed:
            for member in self.member_ids:
                now = dt.datetime.now(dt.UTC)
                self.run(self._in_transaction(points.expire_member(self.conn, self.brand_id, member, now)))
        self.run(self.conn.close())
        self.loop.close()

    async def _in_transaction(self, work: Any) -> Any:
        async with self.conn.transaction():
            return await work

    def _attempt(self, work: Any) -> Any:
        """The posting, or the DomainError that refused it (and rolled it back)."""
        try:
            return self.run(self._in_transaction(work))
        except DomainError as error:
            return error

    def _request(self, member: int, operation: str, payload: dict[str, Any], key: str | None = None) -> Request:
        return Request(self.brand_id, member, key or f"k{next(self.keys)}", operation, payload)

    def _fetch(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        async def fetch() -> list[tuple[Any, ...]]:
            return await (await self.conn.execute(query, params)).fetchall()

        rows: list[tuple[Any, ...]] = self.run(fetch())
        return rows

    def live(self) -> list[int]:
        return [m for m in self.member_ids if m not in self.model.merged_into]

    def _open_lots(
        self, posting_id: int, owner: int, parts: list[int], expires_at: dt.datetime, order: str | None
    ) -> None:
        """Model the lots a posting opened, one per positive part, with the ids the database gave them."""
        opened = [lot_id for (lot_id,) in self._fetch(POSTED_LOTS, posting_id)]
        amounts = [part for part in parts if part > 0]
        assert len(opened) == len(amounts), (posting_id, opened, amounts)
        for lot_id, amount in zip(opened, amounts, strict=True):
            self.model.lots.append(Lot(lot_id, owner, amount, amount, expires_at, order))

    @initialize(
        tiers=st.lists(st.sampled_from(list(TIERS)), min_size=3, max_size=3),
        birthdays=st.lists(st.sampled_from([None, 1, 6, 12]), min_size=3, max_size=3),
    )
    def profiles(self, tiers: list[str], birthdays: list[int | None]) -> None:
        """Members start in different tiers (as a review may leave them) with birthdays in different months."""
        for member, tier, month in zip(self.member_ids, tiers, birthdays, strict=True):
            self.run(
                self.conn.execute(
                    "UPDATE members SET tier = %s, birthday = make_date(1990, %s, 15) WHERE id = %s",
                    (tier, month, member),
                )
            )
            self.model.members[member] = Member(tier=tier, birthday_month=month)

    @rule(data=st.data(), amount=st.integers(1, 300))
    def earn(self, data: st.DataObject, amount: int) -> None:
        member = data.draw(st.sampled_from(self.member_ids))
        request = self._request(member, "earn", {"amount": amount})
        outcome = self._attempt(points.earn(self.conn, request, amount))
        if member in self.model.merged_into:
            assert isinstance(outcome, DomainError)
            assert outcome.code is ErrorCode.ALREADY_MERGED
            return
        assert isinstance(outcome, Posting)
        self._open_lots(outcome.id, member, [amount], expiry(dt.datetime.now(dt.UTC)), None)
        self.requests.append(("earn", member, amount, request.key))

    @rule(data=st.data(), amount=st.integers(1, 400))
    def redeem(self, data: st.DataObject, amount: int) -> None:
        member = data.draw(st.sampled_from(self.live()))
        request = self._request(member, "redeem", {"amount": amount})
        available = self.model.balance(member)
        outcome = self._attempt(points.redeem(self.conn, request, amount))
        if amount > available:
            assert isinstance(outcome, DomainError)
            assert (outcome.code, outcome.available) == (ErrorCode.INSUFFICIENT_POINTS, available)
            return
        assert isinstance(outcome, Posting)
        taken = self.model.draw(member, amount)
        for lot, part in taken:
            lot.redeemed += part
        self.model.redemptions[outcome.id] = taken
        self.requests.append(("redeem", member, amount, request.key))

    @precondition(lambda self: self.requests)
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        operation, member, amount, key = data.draw(st.sampled_from(self.requests))
        request = self._request(member, operation, {"amount": amount}, key)
        action = points.earn if operation == "earn" else points.redeem
        posting = self.run(self._in_transaction(action(self.conn, request, amount)))
        assert posting.replayed

    @precondition(lambda self: self.model.redemptions)
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        redemption = data.draw(st.sampled_from(sorted(self.model.redemptions)))
        cancel = points.cancel_redemption(
            self.conn,
            brand_id=self.brand_id,
            redemption_id=redemption,
            key=f"k{next(self.keys)}",
            reason=None,
            actor="m",
        )
        self.run(self._in_transaction(cancel))
        for lot, part in self.model.redemptions.pop(redemption):
            lot.remaining += part
            lot.redeemed -= part

    @rule(data=st.data(), cents=st.integers(1, 60_000), paid=PAID)
    def order(self, data: st.DataObject, cents: int, paid: dt.datetime) -> None:
        member = data.draw(st.sampled_from(self.member_ids))
        buyer = self.model.members[member]
        order_id = f"o{next(self.keys)}"
        if member in self.model.merged_into:  # its orders go to the survivor, by the caller's choice
            entry = orders.OrderInput(self.brand_id, member, "pos", order_id, Decimal(cents) / 100, paid, None)
            outcome = self._attempt(orders.record(self.conn, orders.purchase(entry, "model")))
            assert isinstance(outcome, DomainError)
            assert outcome.code is ErrorCode.UNKNOWN_MEMBER
            return
        base = cents // 100  # 1 point per yuan, floored
        birthday = base * (BIRTHDAY_MULTIPLIER - 1) if buyer.birthday_month == paid.astimezone(SHANGHAI).month else 0
        bonus = math.floor(base * (TIERS[buyer.tier].multiplier - 1))  # the tier before this order
        growth = cents // 10
        upgraded = self.model.upgraded(member, growth, paid)
        entry = orders.OrderInput(self.brand_id, member, "pos", order_id, Decimal(cents) / 100, paid, None)
        result = self.run(self._in_transaction(orders.record(self.conn, orders.purchase(entry, "model"))))
        self._open_lots(result.posting.id, member, [base, birthday, bonus], expiry(paid), order_id)
        self.model.orders[order_id] = Order(member, cents, paid, base + birthday + bonus, growth)
        buyer.growth += growth
        buyer.points_earned += base + birthday + bonus
        buyer.tier = upgraded

    @precondition(lambda self: any(o.refunded < o.cents for o in self.model.orders.values()))
    @rule(data=st.data())
    def refund(self, data: st.DataObject) -> None:
        open_orders = sorted(order_id for order_id, o in self.model.orders.items() if o.refunded < o.cents)
        order_id = data.draw(st.sampled_from(open_orders))
        order = self.model.orders[order_id]
        left = order.cents - order.refunded
        part = data.draw(st.none() | st.integers(1, left))  # none: the rest of the order

        async def work() -> None:
            row = await orders.find_for_refund(self.conn, self.brand_id, "pos", order_id)
            amount = None if part is None else Decimal(part) / 100
            await orders.refund(self.conn, row, amount, f"k{next(self.keys)}", None, "model")

        self.run(self._in_transaction(work()))
        order.refunded += left if part is None else part
        owner = self.model.members[order.owner]
        due = order.points * order.refunded // order.cents - order.points_reversed - order.points_unrecovered
        clawed = min(due, self.model.balance(order.owner))
        for lot, taken in self.model.draw(order.owner, clawed, preferred=order_id):
            lot.reversed += taken
        order.points_reversed += clawed
        order.points_unrecovered += due - clawed
        growth = min(order.growth * order.refunded // order.cents - order.growth_reversed, owner.growth)
        order.growth_reversed += growth
        owner.growth -= growth

    def _expire(self, as_of: dt.datetime) -> None:
        for member in self.member_ids:
            self.run(self._in_transaction(points.expire_member(self.conn, self.brand_id, member, as_of)))
        for lot in self.model.lots:
            if lot.expires_at <= as_of:
                lot.expired += lot.remaining
                lot.remaining = 0

    @rule(years=st.sampled_from([0, 1, 2, 3, 4]))
    def expire(self, years: int) -> None:
        self._expire(NOW + dt.timedelta(days=365 * years))

    @precondition(lambda self: self.model.lots)
    @rule(data=st.data(), offset=st.sampled_from([-MICRO, dt.timedelta(0)]))
    def expire_at_a_lots_expiry(self, data: st.DataObject, offset: dt.timedelta) -> None:
        """Expiry as of a lot's expiry instant takes it; a microsecond before, it does not."""
        lot = data.draw(st.sampled_from(self.model.lots))
        self._expire(lot.expires_at + offset)

    @precondition(lambda self: len(self.live()) >= 2)
    @rule(data=st.data())
    def merge(self, data: st.DataObject) -> None:
        survivor, merged = data.draw(st.lists(st.sampled_from(self.live()), min_size=2, max_size=2, unique=True))
        merge_id = self.run(
            self._in_transaction(merges.merge(self.conn, survivor_id=survivor, merged_id=merged, reason="model"))
        )
        moved = [lot for lot in self.model.lots if lot.owner == merged]
        for lot in moved:
            lot.owner = survivor
        moved_orders = [order_id for order_id, o in self.model.orders.items() if o.owner == merged]
        for order_id in moved_orders:
            self.model.orders[order_id].owner = survivor
        kept, joining = self.model.members[survivor], self.model.members[merged]
        before = kept.tier
        if TIERS[joining.tier].rank > TIERS[kept.tier].rank:
            kept.tier = joining.tier
        kept.growth += joining.growth
        kept.points_earned += joining.points_earned
        birthday = kept.birthday_month
        if kept.birthday_month is None:  # an empty profile field is filled from the merged member
            kept.birthday_month = joining.birthday_month
        self.model.merged_into[merged] = survivor
        self.model.merges.append(
            Merge(merge_id, survivor, merged, moved, moved_orders, before, kept.tier, birthday, kept.birthday_month)
        )

    @precondition(lambda self: self.model.merges and self.model.merges[-1].survivor not in self.model.merged_into)
    @rule()
    def unmerge(self) -> None:
        merge = self.model.merges.pop()
        self.run(self._in_transaction(merges.unmerge(self.conn, merge_id=merge.id)))
        for lot in merge.lots:
            if lot.owner == merge.survivor:
                lot.owner = merge.merged
        for order_id in merge.orders:
            self.model.orders[order_id].owner = merge.merged
        survivor, merged = self.model.members[merge.survivor], self.model.members[merge.merged]
        if survivor.tier == merge.tier_after:  # a tier changed since the merge stays
            survivor.tier = merge.tier_before
        if survivor.birthday_month == merge.birthday_after:
            survivor.birthday_month = merge.birthday_before
        survivor.growth = max(survivor.growth - merged.growth, 0)
        survivor.points_earned = max(survivor.points_earned - merged.points_earned, 0)
        del self.model.merged_into[merge.merged]

    @invariant()
    def every_lot_is_the_models(self) -> None:
        found = {row[0]: row[1:] for row in self._fetch(LOTS, self.brand_id)}
        expected = {
            lot.id: (lot.owner, lot.amount, lot.remaining, lot.expires_at, lot.redeemed, lot.expired, lot.reversed, 0)
            for lot in self.model.lots
        }
        assert found == expected
        for lot_id, (_, amount, remaining, _, redeemed, expired, reversed_, other) in found.items():
            assert amount == remaining + redeemed + expired + reversed_ + other, lot_id

    @invariant()
    def every_member_is_the_models(self) -> None:
        found = {row[0]: row[1:] for row in self._fetch(MEMBERS, self.brand_id)}
        expected = {}
        for member_id, member in self.model.members.items():
            balance = self.model.balance(member_id)
            expected[member_id] = (balance, balance, balance, member.tier, member.growth, member.points_earned)
        assert found == expected
        assert all(balance >= 0 for balance, *_ in found.values())

    @invariant()
    def every_order_is_the_models(self) -> None:
        found = {row[0]: row[1:] for row in self._fetch(ORDERS, self.brand_id)}
        expected = {
            order_id: (
                o.owner,
                o.points,
                o.growth,
                o.refunded,
                o.points_reversed,
                o.points_unrecovered,
                o.growth_reversed,
            )
            for order_id, o in self.model.orders.items()
        }
        assert found == expected


def test_ledger_against_a_model(database_url: str) -> None:
    machine = type("LedgerOnTestDatabase", (LedgerMachine,), {"url": database_url})
    run_state_machine_as_test(
        machine,
        settings=settings(max_examples=30, stateful_step_count=30, deadline=None),
    )

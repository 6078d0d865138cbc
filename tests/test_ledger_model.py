"""A stateful property test: random ledger operations against the real database and a model.

After every step, for every member: balance = sum of entries = sum of remaining lot amounts,
never negative, and equal to the model; lot by lot, the database holds what the model holds.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import secrets
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test
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
SHANGHAI = dt.timezone(dt.timedelta(hours=8))


@dataclass
class Lot:
    """The model of one lot: where it is, how much is left, when it expires."""

    key: int
    owner: int
    amount: int
    remaining: int
    expires_at: dt.datetime
    order: str | None = None


@dataclass
class Model:
    lots: list[Lot] = field(default_factory=list)
    order_owner: dict[str, int] = field(default_factory=dict)
    order_points: dict[str, tuple[int, int]] = field(default_factory=dict)  # earned, reversed+unrecovered
    order_refunded: dict[str, int] = field(default_factory=dict)
    order_amount: dict[str, int] = field(default_factory=dict)
    redemptions: dict[int, list[tuple[Lot, int]]] = field(default_factory=dict)
    merged_into: dict[int, int] = field(default_factory=dict)
    merges: list[tuple[int, int, int, list[Lot], list[str]]] = field(default_factory=list)
    counter: itertools.count[int] = field(default_factory=itertools.count)

    def balance(self, member: int) -> int:
        return sum(lot.remaining for lot in self.lots if lot.owner == member)

    def open_lots(self, member: int, preferred: str | None = None) -> list[Lot]:
        mine = [lot for lot in self.lots if lot.owner == member and lot.remaining > 0]
        mine.sort(key=lambda lot: (lot.order != preferred if preferred else False, lot.expires_at, lot.key))
        return mine

    def draw(self, member: int, amount: int, preferred: str | None = None) -> list[tuple[Lot, int]]:
        taken = []
        for lot in self.open_lots(member, preferred):
            if amount == 0:
                break
            part = min(lot.remaining, amount)
            lot.remaining -= part
            amount -= part
            taken.append((lot, part))
        assert amount == 0
        return taken

    def credit(self, member: int, amount: int, expires_at: dt.datetime, order: str | None = None) -> None:
        self.lots.append(Lot(next(self.counter), member, amount, amount, expires_at, order))


def _expiry(earned: dt.datetime) -> dt.datetime:
    return dt.datetime(earned.astimezone(SHANGHAI).year + 3, 1, 1, tzinfo=SHANGHAI)


class LedgerMachine(RuleBasedStateMachine):
    url = ""  # set by the test: the throwaway database

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.conn: AsyncConnection[Any] = self.run(AsyncConnection.connect(self.url, autocommit=True))
        self.model = Model()
        self.keys = itertools.count()
        self.requests: list[tuple[str, int, int, str]] = []
        self.brand_id, self.members = self.run(self._setup())

    def run(self, work: Any) -> Any:
        return self.loop.run_until_complete(work)

    async def _setup(self) -> tuple[int, list[int]]:
        vault = PhoneVault(TEST_SECRET.encode())
        async with self.conn.transaction():
            brand = await create_brand(self.conn, code=f"m_{secrets.token_hex(4)}", name="Model", group_code="model")
            ids = []
            for n in range(3):
                binding = await bind_identity(self.conn, vault, brand=brand["code"], channel="pos", external_id=f"c{n}")
                ids.append(binding.member_id)
        return brand["id"], ids

    def teardown(self) -> None:
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

    def live(self) -> list[int]:
        return [m for m in self.members if m not in self.model.merged_into]

    @rule(data=st.data(), amount=st.integers(1, 300))
    def earn(self, data: st.DataObject, amount: int) -> None:
        member = data.draw(st.sampled_from(self.members))
        request = self._request(member, "earn", {"amount": amount})
        outcome = self._attempt(points.earn(self.conn, request, amount))
        if member in self.model.merged_into:
            assert isinstance(outcome, DomainError)
            assert outcome.code is ErrorCode.ALREADY_MERGED
            return
        assert isinstance(outcome, Posting)
        self.model.credit(member, amount, _expiry(dt.datetime.now(dt.UTC)))
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
        posting = outcome
        self.model.redemptions[posting.id] = self.model.draw(member, amount)
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

    @rule(data=st.data(), yuan=st.integers(1, 500), days_ago=st.sampled_from([0, 400, 800, 1200]))
    def order(self, data: st.DataObject, yuan: int, days_ago: int) -> None:
        member = data.draw(st.sampled_from(self.live()))
        order_id = f"o{next(self.keys)}"
        paid = NOW - dt.timedelta(days=days_ago)
        entry = orders.OrderInput(self.brand_id, member, "pos", order_id, Decimal(yuan), paid, None)
        self.run(self._in_transaction(orders.record(self.conn, orders.purchase(entry, "model"))))
        self.model.credit(member, yuan, _expiry(paid), order=order_id)
        self.model.order_owner[order_id] = member
        self.model.order_points[order_id] = (yuan, 0)
        self.model.order_amount[order_id] = yuan
        self.model.order_refunded[order_id] = 0

    @precondition(
        lambda self: any(self.model.order_refunded[o] < self.model.order_amount[o] for o in self.model.order_amount)
    )
    @rule(data=st.data())
    def refund(self, data: st.DataObject) -> None:
        open_orders = [o for o in self.model.order_amount if self.model.order_refunded[o] < self.model.order_amount[o]]
        order_id = data.draw(st.sampled_from(sorted(open_orders)))
        left = self.model.order_amount[order_id] - self.model.order_refunded[order_id]
        part = data.draw(st.integers(1, left))

        async def work() -> None:
            row = await orders.find_for_refund(self.conn, self.brand_id, "pos", order_id)
            await orders.refund(self.conn, row, Decimal(part), f"k{next(self.keys)}", None, "model")

        self.run(self._in_transaction(work()))
        self.model.order_refunded[order_id] += part
        earned, settled = self.model.order_points[order_id]
        due = earned * self.model.order_refunded[order_id] // self.model.order_amount[order_id] - settled
        owner = self.model.order_owner[order_id]
        clawed = min(due, self.model.balance(owner))
        self.model.draw(owner, clawed, preferred=order_id)
        self.model.order_points[order_id] = (earned, settled + due)

    @rule(years=st.sampled_from([0, 1, 2, 3, 4]))
    def expire(self, years: int) -> None:
        as_of = NOW + dt.timedelta(days=365 * years)
        for member in self.members:
            self.run(self._in_transaction(points.expire_member(self.conn, self.brand_id, member, as_of)))
        for lot in self.model.lots:
            if lot.expires_at <= as_of:
                lot.remaining = 0

    @precondition(lambda self: len([m for m in self.members if m not in self.model.merged_into]) >= 2)
    @rule(data=st.data())
    def merge(self, data: st.DataObject) -> None:
        survivor, merged = data.draw(st.lists(st.sampled_from(self.live()), min_size=2, max_size=2, unique=True))
        merge_id = self.run(
            self._in_transaction(merges.merge(self.conn, survivor_id=survivor, merged_id=merged, reason="model"))
        )
        moved = [lot for lot in self.model.lots if lot.owner == merged]
        for lot in moved:
            lot.owner = survivor
        moved_orders = [o for o, owner in self.model.order_owner.items() if owner == merged]
        for order_id in moved_orders:
            self.model.order_owner[order_id] = survivor
        self.model.merged_into[merged] = survivor
        self.model.merges.append((merge_id, survivor, merged, moved, moved_orders))

    @precondition(lambda self: self.model.merges and self.model.merges[-1][1] not in self.model.merged_into)
    @rule()
    def unmerge(self) -> None:
        merge_id, survivor, merged, moved, moved_orders = self.model.merges.pop()
        self.run(self._in_transaction(merges.unmerge(self.conn, merge_id=merge_id)))
        for lot in moved:
            if lot.owner == survivor:
                lot.owner = merged
        for order_id in moved_orders:
            self.model.order_owner[order_id] = merged
        del self.model.merged_into[merged]

    @invariant()
    def ledger_agrees_with_the_model(self) -> None:
        rows = self.run(self._balances())
        for member in self.members:
            balance, entries, lots = rows[member]
            assert balance == entries == lots == self.model.balance(member) >= 0, (member, rows[member])

    async def _balances(self) -> dict[int, tuple[int, int, int]]:
        cursor = await self.conn.execute(
            "SELECT m.id, m.points_balance,"
            " (SELECT coalesce(sum(amount), 0) FROM points_entries WHERE member_id = m.id),"
            " (SELECT coalesce(sum(remaining), 0) FROM points_lots WHERE member_id = m.id)"
            " FROM members m WHERE m.id = ANY(%s)",
            (self.members,),
        )
        return {row[0]: (row[1], int(row[2]), int(row[3])) for row in await cursor.fetchall()}


def test_ledger_against_a_model(database_url: str) -> None:
    machine = type("LedgerOnTestDatabase", (LedgerMachine,), {"url": database_url})
    run_state_machine_as_test(
        machine,
        settings=settings(max_examples=25, stateful_step_count=20, deadline=None),
    )

"""The process's batchers of postings (see `store.ledger.batching`): earns, redemptions and
adjustments (`store.ledger.batched`) and orders (`store.ledger.batched_orders`)."""

from __future__ import annotations

from typing import Any

from psycopg_pool import AsyncConnectionPool

from store.ledger import batched, batched_orders, orders
from store.ledger.batched import Change
from store.ledger.batching import Batcher
from store.ledger.journal import Posting
from store.ledger.orders import OrderResult, Purchase


class Postings:
    """One batcher per kind of posting, shared by the process's requests."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.credits = Batcher(pool, batched.credit, batched.post_alone, batched.claims)
        self.debits = Batcher(pool, batched.debit, batched.post_alone, batched.claims)
        self.orders = Batcher(pool, batched_orders.record, orders.record, batched.claims)

    async def post(self, change: Change) -> Posting:
        return await (self.debits if change.debit else self.credits).submit(change)

    async def record(self, purchase: Purchase) -> OrderResult:
        return await self.orders.submit(purchase)

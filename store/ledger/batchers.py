"""The process's batchers of postings (see `store.ledger.batching`): earns, redemptions and
adjustments (`store.ledger.batched`) and orders (`store.ledger.batched_orders`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from psycopg_pool import AsyncConnectionPool

from store.ledger import batched, batched_orders, orders
from store.ledger.batched import Change
from store.ledger.batching import Batcher
from store.ledger.journal import Posting
from store.ledger.orders import OrderResult, Purchase


class Postings:
    """One batcher per kind of posting, shared by the process's requests; ``on_batch`` is told the
    kind (credits, debits, orders) and size of every batch launched."""

    def __init__(self, pool: AsyncConnectionPool[Any], on_batch: Callable[[str, int], None] | None = None) -> None:
        def told(kind: str) -> Callable[[int], None] | None:
            return None if on_batch is None else (lambda size: on_batch(kind, size))

        self.credits = Batcher(pool, batched.credit, batched.post_alone, batched.claims, on_batch=told("credits"))
        self.debits = Batcher(pool, batched.debit, batched.post_alone, batched.claims, on_batch=told("debits"))
        self.orders = Batcher(pool, batched_orders.record, orders.record, batched.claims, on_batch=told("orders"))

    async def post(self, change: Change) -> Posting:
        return await (self.debits if change.debit else self.credits).submit(change)

    async def record(self, purchase: Purchase) -> OrderResult:
        return await self.orders.submit(purchase)

"""Postings that arrive together go to the database together.

Under load, every posting paid for its own statement: a round trip, PostgreSQL's executor
start-up, its constraint and trigger set-up, and the commit's WAL flush; together more CPU than
the rows themselves. A `Batcher` sends the postings that queued while its previous batch was in
the database as one set-based statement (`store.ledger.batched`), which costs little more than one
posting. Nobody waits for a timer: a lone request goes straight through, and batches grow only
as fast as requests queue behind the ones in flight. How they are cut keeps both the database and
the process busy (two batches in flight, each about half of what is waiting) and the costliest
kind of statement, a single posting, rare: a launch happens once the callbacks already due have
run (clients an answered batch released, bodies that arrived together, all queue first); it
splits what waits over the free slots; and a second batch joins one in flight only once as many
items wait as that one carries (fewer wait for it and go together next). Sending whatever queued
the moment a slot freed made two of three statements single postings: with 16 clients in one
process, 330 statements per 1,500 orders against about 190 this way.

A batch is an optimisation only, never a second set of rules. An item it cannot apply cleanly
(its key already held, its member not live or changed under it, a balance that does not cover it)
posts nothing in it and goes down the single-posting path, which replays, refuses or posts it
exactly as it would have without batching. A batch that fails as a whole (a key taken by a
concurrent retry, a lost connection) commits nothing, and each of its items takes the single
path too. No two items in flight touch the same member or idempotency key: such an item waits
for the next batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from psycopg import AsyncConnection, Error
from psycopg_pool import AsyncConnectionPool

from store.transactions import transact

Item = TypeVar("Item")
Result = TypeVar("Result")

MAX_BATCH = 64
# Batches one process keeps in the database at once: while one waits for its commit to be flushed,
# the next is already running (4 measured no better than 2).
IN_FLIGHT = 2

# Applies a batch, whole or not at all: one result per item, None for an item to post alone.
BatchRun = Callable[[AsyncConnection[Any], Sequence[Item]], Awaitable[list[Result | None]]]
# Posts one item on its own (whole without a transaction), as if there were no batching.
SingleRun = Callable[[AsyncConnection[Any], Item], Awaitable[Result]]
# What two items of one batch must not share (their member, their key).
Claims = Callable[[Item], Sequence[Hashable]]


@dataclass(slots=True)
class _Waiting(Generic[Item, Result]):
    item: Item
    result: asyncio.Future[Result]


class Batcher(Generic[Item, Result]):
    """One kind of posting, batched per process (see the module docstring)."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        batch: BatchRun[Item, Result],
        single: SingleRun[Item, Result],
        claims: Claims[Item],
        *,
        max_size: int = MAX_BATCH,
        in_flight: int = IN_FLIGHT,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._pool = pool
        self._batch = batch
        self._single = single
        self._claims = claims
        self._max_size = max_size
        self._max_in_flight = in_flight
        self._queue: list[_Waiting[Item, Result]] = []
        self._held: set[Hashable] = set()  # the claims of the batches in flight
        self._flying: list[int] = []  # the sizes of the batches in flight
        self._launching = False  # a launch is scheduled for the end of this turn of the loop
        self._tasks: set[asyncio.Task[None]] = set()
        self.batched = 0  # items posted by batches of two or more (tests and benchmarks read it)
        self._on_batch = on_batch  # told the size of every batch launched (the /metrics histogram)

    async def submit(self, item: Item) -> Result:
        waiting: _Waiting[Item, Result] = _Waiting(item, asyncio.get_running_loop().create_future())
        self._queue.append(waiting)
        self._launch_soon()
        return await waiting.result

    def _launch_soon(self) -> None:
        """Launch once the callbacks already due have run: requests whose bodies arrived together
        (or whose clients an answered batch just released) queue together."""
        if not self._launching:
            self._launching = True
            asyncio.get_running_loop().call_soon(self._launch)

    def _launch(self) -> None:
        self._launching = False
        while len(self._flying) < self._max_in_flight and self._queue:
            if self._flying and len(self._queue) < max(self._flying):
                return  # fewer than in flight: they wait to join the next batch (see below)
            free = self._max_in_flight - len(self._flying)
            batch = self._take(min(self._max_size, -(-len(self._queue) // free)))  # a share per free slot
            if not batch:  # everything queued waits for a batch in flight
                return
            self._flying.append(len(batch))
            if self._on_batch is not None:
                self._on_batch(len(batch))
            self._spawn(self._run(batch))

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)  # keep a reference until it is done
        task.add_done_callback(self._tasks.discard)

    def _take(self, size: int) -> list[_Waiting[Item, Result]]:
        """Up to ``size`` queued items that share no claim with each other or a batch in flight,
        oldest first."""
        taken: list[_Waiting[Item, Result]] = []
        left: list[_Waiting[Item, Result]] = []
        for waiting in self._queue:
            claims = self._claims(waiting.item)
            if len(taken) < size and self._held.isdisjoint(claims):
                taken.append(waiting)
                self._held.update(claims)
            else:
                left.append(waiting)
        self._queue = left
        return taken

    async def _run(self, batch: list[_Waiting[Item, Result]]) -> None:
        try:
            if len(batch) == 1:
                await self._post_alone(batch[0])
            else:
                await self._post_together(batch)
        finally:
            for waiting in batch:
                self._held.difference_update(self._claims(waiting.item))
            self._flying.remove(len(batch))
            self._launch_soon()

    async def _post_together(self, batch: list[_Waiting[Item, Result]]) -> None:
        items = [waiting.item for waiting in batch]
        try:
            async with self._pool.connection() as conn:
                results = await self._batch(conn, items)
        except Error:
            results = [None] * len(batch)
        for waiting, result in zip(batch, results, strict=True):
            if waiting.result.done():  # its client went away
                continue
            if result is None:
                self._spawn(self._post_alone(waiting))
            else:
                self.batched += 1
                waiting.result.set_result(result)

    async def _post_alone(self, waiting: _Waiting[Item, Result]) -> None:
        async def work(conn: AsyncConnection[Any]) -> Result:
            return await self._single(conn, waiting.item)

        try:
            result = await transact(self._pool, work, transaction=False)
        except Exception as error:  # the caller's to handle, as without batching
            if not waiting.result.done():
                waiting.result.set_exception(error)
        else:
            if not waiting.result.done():
                waiting.result.set_result(result)

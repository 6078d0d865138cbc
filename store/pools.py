"""The service's connection pool: psycopg's, made safe against cancelled callers, and watched.

graphql-core cancels the sibling resolvers of a field that failed; some of them wait in `getconn`.
psycopg_pool can lose a connection handed to a waiter at the moment it is cancelled (psycopg issues
1345 and 1401), and a pool of ten lost them all in minutes (issue 12). Here the pool's own waiting
runs in a task of its own that no caller's cancellation reaches: a caller cancelled while waiting
leaves, and the connection the task receives goes straight back. Returns are shielded the same way.

Every checkout is recorded with when and by which task; `watch` logs connections held far longer
than any statement may run and gives back those held past `reclaim_after` (closed, so the pool
replaces them), so a leak costs capacity for minutes, not for the life of the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Checkout:
    conn: AsyncConnection[Any]
    since: float  # time.monotonic()
    holder: str  # the task's name


class Pool(AsyncConnectionPool[AsyncConnection[Any]]):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.checkouts: dict[int, Checkout] = {}
        self._reclaimed: weakref.WeakSet[AsyncConnection[Any]] = weakref.WeakSet()
        self._returning: set[asyncio.Task[None]] = set()  # strong references to background returns

    async def getconn(self, timeout: float | None = None) -> AsyncConnection[Any]:  # noqa: ASYNC109 (the override)
        acquiring = asyncio.ensure_future(super().getconn(timeout))
        try:
            conn = await asyncio.shield(acquiring)
        except asyncio.CancelledError:
            acquiring.add_done_callback(self._give_back_abandoned)
            raise
        task = asyncio.current_task()
        self.checkouts[id(conn)] = Checkout(conn, time.monotonic(), task.get_name() if task else "-")
        return conn

    async def putconn(self, conn: AsyncConnection[Any]) -> None:
        self.checkouts.pop(id(conn), None)
        if conn in self._reclaimed:  # the watchdog gave it back already
            self._reclaimed.discard(conn)
            return
        await asyncio.shield(super().putconn(conn))

    def _give_back_abandoned(self, acquiring: asyncio.Future[AsyncConnection[Any]]) -> None:
        """A connection got for a caller who stopped waiting: back to the pool at once."""
        if acquiring.cancelled() or acquiring.exception() is not None:
            return
        returning = asyncio.ensure_future(super().putconn(acquiring.result()))
        self._returning.add(returning)
        returning.add_done_callback(self._returning.discard)

    def held_longer_than(self, seconds: float) -> list[Checkout]:
        cutoff = time.monotonic() - seconds
        return [checkout for checkout in self.checkouts.values() if checkout.since < cutoff]

    async def reclaim(self, checkout: Checkout) -> None:
        """Close a connection its holder never gave back, and give it back for them."""
        if self.checkouts.pop(id(checkout.conn), None) is None:
            return
        self._reclaimed.add(checkout.conn)
        with contextlib.suppress(Exception):
            await checkout.conn.close()
        await asyncio.shield(super().putconn(checkout.conn))


async def watch(pool: Pool, *, warn_after: float, reclaim_after: float, every: float = 5.0) -> None:
    """Log connections held past ``warn_after`` seconds, reclaim those past ``reclaim_after``; runs
    until cancelled."""
    warned: set[int] = set()
    while True:
        await asyncio.sleep(every)
        for checkout in pool.held_longer_than(warn_after):
            held = time.monotonic() - checkout.since
            if held > reclaim_after:
                log.error("reclaiming a connection %s has held for %.0f s", checkout.holder, held)
                await pool.reclaim(checkout)
            elif id(checkout.conn) not in warned:
                log.warning("connection held for %.0f s by %s", held, checkout.holder)
                warned.add(id(checkout.conn))
        warned &= set(pool.checkouts)

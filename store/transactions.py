"""Run a unit of work in one transaction, retrying when a concurrent writer won a race.

Unification writes rely on unique constraints instead of check-then-act: two requests binding the
same identity or phone at once both try, one gets a unique violation, and its retry sees the
winner's row. A connection lost mid-transaction (a restarted or terminated backend) is retried on
a fresh connection too: if the commit did land before the connection died, the retry finds the
idempotency key (or the unique row) already there and replays. The retried function must be safe
to run again from the start.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from psycopg import AsyncConnection, OperationalError, errors
from psycopg_pool import AsyncConnectionPool

T = TypeVar("T")
_nothing = contextlib.nullcontext
_CONFLICTS = (errors.UniqueViolation, errors.SerializationFailure, errors.DeadlockDetected)
_ATTEMPTS = 5


async def transact(
    pool: AsyncConnectionPool[Any], work: Callable[[AsyncConnection[Any]], Awaitable[T]], *, transaction: bool = True
) -> T:
    """Run ``work`` in a transaction; ``transaction=False`` for work whose only write is one
    statement (atomic by itself in autocommit), which saves the BEGIN and COMMIT round trips."""
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            # Not in pipeline mode: it saves the BEGIN round trip but, measured with bench/points.py,
            # costs more CPU than it saves (earn 359/s without it, 209/s with it).
            async with pool.connection() as conn, conn.transaction() if transaction else _nothing():
                return await work(conn)
        except _CONFLICTS:
            if attempt == _ATTEMPTS:
                raise
        except OperationalError:
            if attempt == _ATTEMPTS:
                raise
            # Connections idle in the pool may have died with this one: drop them before retrying.
            await pool.check()
    raise AssertionError("unreachable")

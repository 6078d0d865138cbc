"""Run a unit of work in one transaction, retrying when a concurrent writer won a race.

Unification writes rely on unique constraints instead of check-then-act: two requests binding the
same identity or phone at once both try, one gets a unique violation, and its retry sees the
winner's row. PostgreSQL's own verdicts on contention are retried the same way: a deadlock
(40P01; the ledger's lock order, in `store.ledger.journal`, leaves none in practice) or a
serialization failure (40001). So is a unit of work that raises `Retry` because a row it meant to
lock moved under it. A connection lost mid-transaction (a restarted or terminated backend) is
retried on a fresh connection too: if the commit did land before the connection died, the retry
finds the idempotency key (or the unique row) already there and replays. The retried function
must be safe to run again from the start.

Retries wait a random moment, growing with each attempt (full jitter): transactions that
collided once must not collide again in lockstep. After `ATTEMPTS` the error goes to the caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from psycopg import AsyncConnection, OperationalError, errors
from psycopg_pool import AsyncConnectionPool

T = TypeVar("T")
_nothing = contextlib.nullcontext
ATTEMPTS = 8
FIRST_PAUSE = 0.005  # seconds: the first retry waits up to this, each further one up to twice as long
MAX_PAUSE = 0.25


class Retry(Exception):
    """Raised by a unit of work that found a row it had to lock changed under it (e.g. a refund's
    order moved to another member by a merge while it waited): roll back and run it again."""


_CONFLICTS = (errors.UniqueViolation, errors.SerializationFailure, errors.DeadlockDetected, Retry)


def pause(attempt: int) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based): uniform up to a doubling cap."""
    return random.uniform(0, min(MAX_PAUSE, FIRST_PAUSE * 2 ** (attempt - 1)))  # noqa: S311 (not a secret)


async def transact(
    pool: AsyncConnectionPool[Any], work: Callable[[AsyncConnection[Any]], Awaitable[T]], *, transaction: bool = True
) -> T:
    """Run ``work`` in a transaction; ``transaction=False`` for work whose only write is one
    statement (atomic by itself in autocommit), which saves the BEGIN and COMMIT round trips."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            # Not in pipeline mode: it saves the BEGIN round trip but, measured with bench/points.py,
            # costs more CPU than it saves (earn 359/s without it, 209/s with it).
            async with pool.connection() as conn, conn.transaction() if transaction else _nothing():
                return await work(conn)
        except _CONFLICTS:
            if attempt == ATTEMPTS:
                raise
        except OperationalError:
            if attempt == ATTEMPTS:
                raise
            # Connections idle in the pool may have died with this one: drop them before retrying.
            await pool.check()
        # Outside the connection block: the connection goes back to the pool while we wait.
        await asyncio.sleep(pause(attempt))
    raise AssertionError("unreachable")

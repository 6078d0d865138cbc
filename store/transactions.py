"""Run a unit of work in one transaction, retrying when a concurrent writer won a race.

Unification writes rely on unique constraints instead of check-then-act: two requests binding the
same identity or phone at once both try, one gets a unique violation, and its retry sees the
winner's row. The retried function must be safe to run again from the start.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from psycopg import AsyncConnection, errors
from psycopg_pool import AsyncConnectionPool

T = TypeVar("T")
_RETRYABLE = (
    errors.UniqueViolation,
    errors.SerializationFailure,
    errors.DeadlockDetected,
)
_ATTEMPTS = 5


async def transact(pool: AsyncConnectionPool[Any], work: Callable[[AsyncConnection[Any]], Awaitable[T]]) -> T:
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            async with pool.connection() as conn, conn.transaction():
                return await work(conn)
        except _RETRYABLE:
            if attempt == _ATTEMPTS:
                raise
    raise AssertionError("unreachable")

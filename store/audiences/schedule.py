"""The server's background passes (the index applier, lifecycle stages and RFM bounds, rule tags): one
loop for each, and one way to go over the brands a pass is due for."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from store.sql import Query

MAX_DELAY = 600.0  # seconds between tries while a pass keeps failing


async def every(interval: float, what: str, log: logging.Logger, one_pass: Callable[[], Awaitable[None]]) -> None:
    """`one_pass` every `interval` seconds until cancelled; a failure is logged (once while it
    persists) and retried, backing off to MAX_DELAY (a database not migrated yet should not fill the
    log every 30 seconds)."""
    delay = interval
    while True:
        try:
            await one_pass()
            delay = interval
        except Exception:
            if delay == interval:
                log.exception("%s: the scheduled pass failed; retrying", what)
            delay = min(delay * 2, MAX_DELAY)
        await asyncio.sleep(delay)


Done = TypeVar("Done")


async def each_due(
    pool: AsyncConnectionPool[Any], due: Query, work: Callable[[AsyncConnection[Any], int], Awaitable[Done]]
) -> list[Done]:
    """`work` for each brand `due` names (rows with a `brand_id`), on a connection of its own: a pass
    over many brands never holds one long (found in the suite: with a pool of one connection, a
    request waited past its pool timeout behind a whole pass over the suite's brands)."""
    async with pool.connection() as conn:
        brands = [row["brand_id"] for row in await due.all(conn)]
    done = []
    for brand_id in brands:
        async with pool.connection() as conn:
            done.append(await work(conn, brand_id))
    return done

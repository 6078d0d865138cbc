"""counted_statements counts a request's statements, not those of loops running beside it."""

import asyncio
from typing import Any

import sqlalchemy as sa
from psycopg_pool import AsyncConnectionPool

from store.sql import Query, counted_statements

ONE = Query(sa.select(sa.literal(1)))


async def test_counts_the_blocks_statements_and_those_of_tasks_it_starts_but_not_a_loop_beside_it(
    pool: AsyncConnectionPool[Any],
) -> None:
    stop, beside = asyncio.Event(), asyncio.Event()
    runs, target = 0, -1

    async def background_loop() -> None:  # what the index applier and the lifecycle pass are to a request
        nonlocal runs
        async with pool.connection() as conn:
            while not stop.is_set():
                await ONE.scalar(conn)
                runs += 1
                if 0 <= target <= runs:
                    beside.set()
                await asyncio.sleep(0)

    loop = asyncio.create_task(background_loop())
    async with pool.connection() as conn, pool.connection() as other:
        with counted_statements() as counted:
            target = runs + 3
            for _ in range(3):
                assert await ONE.scalar(conn) == 1
            await asyncio.gather(ONE.scalar(other), asyncio.sleep(0))  # a task the block starts
            # The loop runs statements while the block counts (found flaky in the suite, when the
            # block happened to finish before the loop had run a statement beside it).
            await beside.wait()
    stop.set()
    await loop
    assert counted.value == 4
    with counted_statements() as nested:
        async with pool.connection() as conn:
            await ONE.scalar(conn)
    assert (nested.value, counted.value) == (1, 4)  # a finished block no longer counts

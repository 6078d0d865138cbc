"""Lifecycle stages (issue 15, item 1): what keeping them current costs, on the demo data.

    .venv/bin/python bench/lifecycle.py --database-url URL [--brand teahouse] [--rounds 5]
    .venv/bin/python bench/lifecycle.py --database-url URL --read-only

On a database with migration 0011 whose demo was built (`omnimember demo --points --tags`), every
measurement runs in a transaction that is rolled back, so the data is left as it was:

    full       every member compared, nothing moved (what a rebuilt index costs: REBUILD)
    day        the scheduled pass for tomorrow (TIME); `days` 30 days at once (a catch-up)
    rules      at-risk at 90 days instead of 120: a recompute that moves and records many (RULES)
    delta      1,000 members touched by a write: the applier's hook alone (WRITE), and the applier
               with it (index delta + stages), which bounds the lag at 1,000 writes a second

`--read-only` (any database with a built index, e.g. one without migration 0011): only the part of
a full recompute that scales with the brand, the five stage bitmaps computed over every chunk,
counted, written nowhere. Prints medians; the per-chunk figures extrapolate to larger brands (a
chunk is 65,536 member ids).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import psycopg
import sqlalchemy as sa
from psycopg import AsyncConnection

from store.audiences import lifecycle
from store.audiences.bitmaps import lock_brand, stored_widths
from store.audiences.deltas import apply_brand
from store.audiences.facts import DEFAULT_RULES, DEFAULT_TIMEZONE, STAGES, lifecycle_terms
from store.brands import brand_by_code
from store.sql import Query
from store.tables import audience_bitmaps
from store.urls import libpq_url
from tagquery.compile_bitmap import BitmapCompiler, Encoding


async def _rolled_back(
    conn: AsyncConnection[Any], setup: Callable[[], Awaitable[None]], work: Callable[[], Awaitable[object]]
) -> tuple[float, object]:
    """Seconds `work` took inside a transaction (after `setup`, not timed) that is then rolled back."""
    result: object = None
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL statement_timeout = 0")
            await setup()
            started = time.perf_counter()
            result = await work()
            elapsed = time.perf_counter() - started
            raise psycopg.Rollback
    except psycopg.Rollback:  # pragma: no cover - the transaction block swallows it
        pass
    return elapsed, result


def _report(name: str, seconds: list[float], chunks: int, note: str = "") -> None:
    median = statistics.median(seconds)
    print(f"{name:<44} {median * 1000:9.1f} ms  ({median * 1000 / max(chunks, 1):6.1f} ms/chunk) {note}")


async def _chunks(conn: AsyncConnection[Any], brand_id: int) -> int:
    row = await (
        await conn.execute("SELECT count(*) FROM audience_bitmaps WHERE brand_id = %s AND key = 'u'", (brand_id,))
    ).fetchone()
    assert row is not None
    return int(row[0])


async def read_only(conn: AsyncConnection[Any], brand_id: int, rounds: int) -> None:
    # Not load_catalog: a database without migration 0011 has no rules table (the defaults apply).
    today = datetime.now(ZoneInfo(DEFAULT_TIMEZONE)).date()
    compiler = BitmapCompiler(Encoding(dict(await stored_widths(conn, brand_id))), today)
    terms = lifecycle_terms(DEFAULT_RULES)
    columns = {f"s{i}": compiler.bitmap(terms[stage]) for i, stage in enumerate(STAGES)}
    pivot = compiler.pivot.select(audience_bitmaps, columns).subquery()
    counts = [sa.func.coalesce(sa.func.sum(sa.func.bit_count(pivot.c[f"s{i}"])), 0) for i in range(len(STAGES))]
    query = Query(sa.select(*counts))
    chunks = await _chunks(conn, brand_id)
    seconds = []
    for _ in range(rounds):
        started = time.perf_counter()
        row = await query.one(conn, brand_id=brand_id)
        seconds.append(time.perf_counter() - started)
    assert row is not None
    print(f"stages: {dict(zip(STAGES, row.values(), strict=True))}, {len(compiler.pivot.keys)} keys, {chunks} chunks")
    _report("five stage bitmaps over every chunk", seconds, chunks)


_COPY_KEYS = (
    "INSERT INTO audience_bitmaps SELECT t.brand_id, t.key, c, t.bits"
    " FROM audience_bitmaps t, generate_series(%s::int, %s::int) c WHERE t.brand_id = %s AND t.chunk = %s"
    " AND (t.key = 'u' OR t.key LIKE 'has:%%' OR t.key LIKE 'ge:last_purchase:%%' OR t.key LIKE 'bit:order.%%')"
)
_COPY_STAGES = (
    "INSERT INTO lifecycle_stages SELECT t.brand_id, t.stage, c, t.bits"
    " FROM lifecycle_stages t, generate_series(%s::int, %s::int) c WHERE t.brand_id = %s AND t.chunk = %s"
)


async def _first_chunk(conn: AsyncConnection[Any], brand_id: int) -> int:
    row = await (
        await conn.execute("SELECT min(chunk) FROM audience_bitmaps WHERE brand_id = %s AND key = 'u'", (brand_id,))
    ).fetchone()
    assert row is not None
    return int(row[0])


async def read_write(conn: AsyncConnection[Any], brand_id: int, rounds: int, scale: int) -> None:
    chunks = await _chunks(conn, brand_id)
    copies = max(scale - chunks, 0)
    tomorrow = datetime.now(UTC) + timedelta(days=1)

    async def setup() -> None:
        """What the stages read (the universe, presence, last-purchase digits, order-day slices) and the
        kept stages of the brand's first chunk, copied to `copies` more chunks: a brand of `scale`
        chunks' worth of members as far as the stages go."""
        if copies:
            first = await _first_chunk(conn, brand_id)
            for copy in (_COPY_KEYS, _COPY_STAGES):
                await conn.execute(copy, (1000, 1000 + copies - 1, brand_id, first))

    async def locked_sync(**kwargs: Any) -> object:
        await lock_brand(conn, brand_id, wait=True)
        return await lifecycle.sync(conn, brand_id, **kwargs)

    async def full() -> object:
        await conn.execute("UPDATE lifecycle_state SET index_built_at = NULL WHERE brand_id = %s", (brand_id,))
        return await locked_sync()

    async def rules() -> object:
        await conn.execute(
            "INSERT INTO lifecycle_rules (brand_id, version, params, created_by) SELECT %s, coalesce(max(version), 0)"
            ' + 1, \'{"mature_orders": 4, "at_risk_days": 90, "churned_days": 365}\', \'bench\''
            " FROM lifecycle_rules WHERE brand_id = %s",
            (brand_id, brand_id),
        )
        return await locked_sync()

    rng = np.random.default_rng(7)
    live = "SELECT id FROM members WHERE brand_id = %s AND merged_into IS NULL AND erased_at IS NULL"
    ids = np.array([row[0] for row in await (await conn.execute(live, (brand_id,))).fetchall()], dtype=np.int64)

    def touched() -> list[int]:
        """1,000 members, spread over the copied chunks too."""
        chosen = rng.choice(ids, 1000, replace=False)
        if copies:
            chosen = (chosen & 0xFFFF) | (rng.integers(1000, 1000 + copies, 1000) << 16)
        return sorted({int(i) for i in chosen})

    async def hook() -> object:
        return await locked_sync(touched=np.array(touched(), dtype=np.int64))

    async def delta() -> object:
        await conn.execute("UPDATE members SET last_purchase_at = now() WHERE id = ANY(%s)", (touched(),))
        return await apply_brand(conn, brand_id, wait=True)

    cases: list[tuple[str, Callable[[], Awaitable[object]]]] = [
        ("full: every member compared, none moved", full),
        ("day: tomorrow's scheduled pass", lambda: locked_sync(now=tomorrow)),
        ("days: 30 days at once (30 compared)", lambda: locked_sync(now=tomorrow + timedelta(days=29))),
        ("rules: at risk at 90 days (recorded)", rules),
        ("delta: the hook for 1,000 touched", hook),
        *([] if copies else [("delta: applier + hook, 1,000 last purchases", delta)]),
    ]
    for name, work in cases:
        seconds, results = [], []
        for _ in range(rounds):
            elapsed, result = await _rolled_back(conn, setup, work)
            seconds.append(elapsed)
            results.append(result)
        _report(name, seconds, chunks + copies, _what(results[-1]))


_BUY = "UPDATE members SET last_purchase_at = clock_timestamp() WHERE id = ANY(%s)"


async def lag(url: str, brand_id: int, seconds: float, rate: int) -> None:
    """Writes at `rate` members a second for `seconds` while the applier runs as in the server (every
    second): members never bought get a last purchase (introduction -> growth, a WRITE each); the lag
    is when the change was recorded minus when the write committed. Writes stay (use a scratch demo)."""
    from psycopg_pool import AsyncConnectionPool

    from store.audiences.deltas import run_applier

    async with AsyncConnectionPool(libpq_url(url), min_size=2, max_size=4, kwargs={"autocommit": True}) as pool:
        async with pool.connection() as conn:
            rows = await (
                await conn.execute(
                    "SELECT id FROM members WHERE brand_id = %s AND last_purchase_at IS NULL"
                    " AND merged_into IS NULL AND erased_at IS NULL ORDER BY random() LIMIT %s",
                    (brand_id, int(seconds * rate)),
                )
            ).fetchall()
        ids = [row[0] for row in rows]
        batch = max(rate // 10, 1)
        applier = asyncio.create_task(run_applier(pool, interval=1.0))
        started = time.perf_counter()
        async with pool.connection() as conn:
            for n, at in enumerate(range(0, len(ids), batch)):
                await conn.execute(_BUY, (ids[at : at + batch],))
                await asyncio.sleep(max(started + (n + 1) * batch / rate - time.perf_counter(), 0))
            written = time.perf_counter() - started
            await asyncio.sleep(3)
            found = await (
                await conn.execute(
                    "SELECT extract(epoch FROM c.changed_at - m.last_purchase_at)::float8 FROM member_stage_changes c"
                    " JOIN members m ON m.id = c.member_id WHERE c.member_id = ANY(%s) AND c.cause = 'write'"
                    " AND c.to_stage = 'growth'",
                    (ids,),
                )
            ).fetchall()
        applier.cancel()
    lags = sorted(row[0] for row in found)
    print(f"lag: {len(ids)} writes in {written:.1f} s ({len(ids) / written:.0f}/s), {len(lags)} changes recorded")
    if lags:
        p95 = lags[int(0.95 * (len(lags) - 1))]
        print(f"lag: median {statistics.median(lags):.2f} s, p95 {p95:.2f} s, max {lags[-1]:.2f} s")


def _what(result: object) -> str:
    if isinstance(result, lifecycle.Synced):
        return ", ".join(f"{cause} {n}" for cause, n in result.changes.items()) or "no change"
    return "" if result is None else type(result).__name__


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--brand", default="teahouse")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--read-only", action="store_true")
    parser.add_argument("--lag", type=float, default=0, help="seconds of writes at --rate while the applier runs")
    parser.add_argument("--rate", type=int, default=1000, help="member writes a second for --lag")
    parser.add_argument(
        "--scale-to-chunks",
        type=int,
        default=0,
        help="copy the brand's first chunk (stage keys and kept stages) to this many chunks, rolled back after",
    )
    args = parser.parse_args()
    async with await AsyncConnection.connect(libpq_url(args.database_url), autocommit=True) as conn:
        brand_id: int = (await brand_by_code(conn, args.brand))["id"]
        if args.lag:
            await lag(args.database_url, brand_id, args.lag, args.rate)
            return
        await read_only(conn, brand_id, args.rounds)
        if not args.read_only:
            await read_write(conn, brand_id, args.rounds, args.scale_to_chunks)


if __name__ == "__main__":
    asyncio.run(main())

"""Segments kept fresh (issue 15's benchmark): a full recompute, part by part, and the lag of the
incremental path under a stream of writes, on the demo data.

    .venv/bin/python bench/refresh.py --database-url URL [--brand teahouse] [--rounds 3] [--rules]
    .venv/bin/python bench/refresh.py --database-url URL --lag 30 --rate 1000   # writes stay: a scratch demo

Full recompute (each part in a transaction that is rolled back, so the data is left as it was;
medians of `--rounds`):

    index       the brand's audience index rebuilt from the system of record: every key, the
                behaviour facts and the thresholds' digits among them (store.audiences.bitmaps)
    stages      every member's lifecycle stage computed from the index and compared with the kept
                ones (store.audiences.lifecycle, as after a rebuild)
    rfm         the RFM quintile bounds over the live buyers (store.audiences.rfm_store)
    persons     the brand's persons for brandOverlap (store.audiences.persons)
    rule tags   every rule tag of the brand evaluated for every member (store.audiences.rule_tags)

`--rules`: first define (once, committed: the bench's database keeps them) two rule tags, as
`defineTag(rule:)` does, and compute them, so that the rule tags part has work and the index their
assignments: RULES below.

`--lag`: for `--lag` seconds, `--rate` member writes a second (a last purchase set on members, in
batches of a tenth of a second) while the applier runs as in the server, a pass a second; a write's
lag is the end of the first pass that began after it committed minus that commit. Reported: the
writes, the passes, the median / p95 / max lag. Floors (issue 15): the full recompute of 10M members
under 5 minutes; the lag under 5 s at 1,000 writes a second.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg import AsyncConnection

from store.audiences import lifecycle, persons, rfm_store, rule_tags
from store.audiences.bitmaps import lock_brand, rebuild
from store.audiences.deltas import apply_brand
from store.brands import brand_by_code
from store.tags import catalog, rules
from store.urls import libpq_url
from tagquery import GRAMMAR_VERSION

Work = Callable[[AsyncConnection[Any], int], Awaitable[object]]


async def _index(conn: AsyncConnection[Any], brand_id: int) -> object:
    await lock_brand(conn, brand_id, wait=True)
    return f"{await rebuild(conn, brand_id, two_connections=True):,} index rows"  # as `omnimember refresh` does


async def _stages(conn: AsyncConnection[Any], brand_id: int) -> object:
    await lock_brand(conn, brand_id, wait=True)
    # As after a rebuild: the kept stages no longer vouch for the index, so every member is compared.
    await conn.execute("UPDATE lifecycle_state SET index_built_at = NULL WHERE brand_id = %s", (brand_id,))
    synced = await lifecycle.sync(conn, brand_id)
    changes = ", ".join(f"{cause} {n}" for cause, n in synced.changes.items()) if synced else ""
    return changes or "no change"


async def _rfm(conn: AsyncConnection[Any], brand_id: int) -> object:
    found = await rfm_store.recompute(conn, brand_id)
    return f"{found.buyers:,} buyers"


async def _persons(conn: AsyncConnection[Any], brand_id: int) -> object:
    await lock_brand(conn, brand_id, wait=True)
    return f"{await persons.build(conn, brand_id):,} persons"


async def _rule_tags(conn: AsyncConnection[Any], brand_id: int) -> object:
    await lock_brand(conn, brand_id, wait=True)
    found = await rule_tags.evaluate(conn, brand_id)
    return f"{found.tags} rule tags, every member (+{found.added:,} -{found.removed:,})"


PARTS: dict[str, Work] = {
    "index": _index,
    "stages": _stages,
    "rfm": _rfm,
    "persons": _persons,
    "rule tags": _rule_tags,
}


# The tables the parts rewrite: vacuumed before each run, as autovacuum would have between two
# recomputes. A run rolled back leaves its rows dead as a committed one leaves the old rows, and
# three runs' dead rows slowed the next index part's delete of the brand's rows by half.
_REWRITTEN = "audience_bitmaps, person_bitmaps, brand_persons"


async def _rolled_back(conn: AsyncConnection[Any], brand_id: int, work: Work) -> tuple[float, object]:
    """Seconds `work` took inside a transaction that is then rolled back, and what it returned."""
    await conn.execute(f"VACUUM {_REWRITTEN}")
    result: object = None
    elapsed = 0.0
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL statement_timeout = 0")
            started = time.perf_counter()
            result = await work(conn, brand_id)
            elapsed = time.perf_counter() - started
            raise psycopg.Rollback
    except psycopg.Rollback:
        pass
    return elapsed, result


async def full(conn: AsyncConnection[Any], brand_id: int, members: int, rounds: int) -> None:
    print(f"full recompute, {members:,} live members, medians of {rounds}:")
    total = 0.0
    for name, work in PARTS.items():
        runs = [await _rolled_back(conn, brand_id, work) for _ in range(rounds)]
        seconds = statistics.median(elapsed for elapsed, _ in runs)
        total += seconds
        print(f"  {name:<10} {seconds:8.2f} s   {runs[-1][1]}", flush=True)
    print(f"  {'all':<10} {total:8.2f} s   ({total / members * 1e7 / 60:.1f} min per 10M members, linear)")


RULES = {
    "bench_recent_gold": "last_purchase WITHIN 30d AND tier IN (gold, platinum)",
    "bench_lapsed_oolong": "tag:buys_oolong AND NOT last_purchase WITHIN 90d",
}


async def define_rules(conn: AsyncConnection[Any], brand_id: int) -> None:
    """RULES as rule tags of the brand (those not defined yet), computed for every member."""
    async with conn.transaction():
        await rules.lock(conn, brand_id)
        found = await conn.execute("SELECT code FROM tag_definitions WHERE brand_id = %s", (brand_id,))
        known = {row[0] for row in await found.fetchall()}
        for code, text in RULES.items():
            if code in known:
                continue
            tag = await catalog.define(
                conn, brand_id=brand_id, code=code, name=code, category="custom", ttl_days=None, ruled=True
            )
            checked = await rule_tags.check_rule(conn, brand_id, text)
            await rules.set_rule(conn, tag=tag, rule=checked.text, grammar_version=GRAMMAR_VERSION, created_by="bench")
    async with conn.transaction():
        await lock_brand(conn, brand_id, wait=True)
        computed = await rule_tags.evaluate(conn, brand_id)
    defined = ", ".join(f"{code}: {text}" for code, text in RULES.items())
    print(f"rule tags: {defined} (+{computed.added:,} -{computed.removed:,})")


_BUY = "UPDATE members SET last_purchase_at = clock_timestamp() WHERE id = ANY(%s)"


async def lag(url: str, brand_id: int, seconds: float, rate: int) -> None:
    """Writes at `rate` a second for `seconds` beside a pass of the applier a second (module docstring)."""
    async with (
        await AsyncConnection.connect(libpq_url(url), autocommit=True) as writer,
        await AsyncConnection.connect(libpq_url(url), autocommit=True) as applier,
    ):
        found = await writer.execute(
            "SELECT id FROM members WHERE brand_id = %s AND merged_into IS NULL AND erased_at IS NULL"
            " ORDER BY random() LIMIT %s",
            (brand_id, int(seconds * rate)),
        )
        ids = [row[0] for row in await found.fetchall()]
        passes: list[tuple[float, float]] = []  # (began, ended)
        done = asyncio.Event()

        async def apply_every_second() -> None:
            while not done.is_set() or (passes and passes[-1][0] < committed[-1]):
                began = time.perf_counter()
                await apply_brand(applier, brand_id, wait=True)
                passes.append((began, time.perf_counter()))
                await asyncio.sleep(max(0.0, began + 1.0 - time.perf_counter()))

        committed: list[float] = [time.perf_counter()]
        task = asyncio.create_task(apply_every_second())
        batch = max(rate // 10, 1)
        started = time.perf_counter()
        for n, at in enumerate(range(0, len(ids), batch)):
            await writer.execute(_BUY, (ids[at : at + batch],))
            committed.append(time.perf_counter())
            await asyncio.sleep(max(started + (n + 1) * batch / rate - time.perf_counter(), 0))
        written = time.perf_counter() - started
        done.set()
        await task
    lags = sorted(next(ended for began, ended in passes if began >= at) - at for at in committed[1:])
    p95 = lags[int(0.95 * (len(lags) - 1))]
    print(f"lag: {len(ids):,} writes in {written:.1f} s ({len(ids) / written:,.0f}/s), {len(passes)} passes")
    print(f"lag: median {statistics.median(lags):.2f} s, p95 {p95:.2f} s, max {lags[-1]:.2f} s")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--brand", default="teahouse")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rules", action="store_true", help="define and compute RULES first (kept)")
    parser.add_argument("--lag", type=float, default=0, help="seconds of writes at --rate while the applier runs")
    parser.add_argument("--rate", type=int, default=1000, help="member writes a second for --lag")
    args = parser.parse_args()
    print(
        f"$ .venv/bin/python bench/refresh.py --brand {args.brand}"
        + (f" --lag {args.lag:g} --rate {args.rate}" if args.lag else f" --rounds {args.rounds}")
        + (" --rules" if args.rules else "")
    )
    async with await AsyncConnection.connect(libpq_url(args.database_url), autocommit=True) as conn:
        brand_id: int = (await brand_by_code(conn, args.brand))["id"]
        if args.rules:
            await define_rules(conn, brand_id)
        if args.lag:
            await lag(args.database_url, brand_id, args.lag, args.rate)
            return
        live = await conn.execute(
            "SELECT count(*) FROM members WHERE brand_id = %s AND merged_into IS NULL AND erased_at IS NULL",
            (brand_id,),
        )
        row = await live.fetchone()
        assert row is not None
        await full(conn, brand_id, int(row[0]), args.rounds)


if __name__ == "__main__":
    asyncio.run(main())

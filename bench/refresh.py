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

Then the index and the persons at once, each on a connection of its own, as `omnimember refresh`
runs them; `all` is reported both ways: the parts one after another, and as the command runs them.

`--rules`: first define (once, committed: the bench's database keeps them) two rule tags, as
`defineTag(rule:)` does, and compute them, so that the rule tags part has work and the index their
assignments: RULES below.

`--lag`: for `--lag` seconds, `--rate` writes a second in batches of a tenth of a second: member
writes (a last purchase set on members) or, with `--writes orders`, orders as `recordOrder` records
them (the ledger's batched statement, with lines: _Orders), while the applier runs as in the server,
a pass a second. A write's lag is the end of the first pass that began after it committed minus that
commit. Reported: the writes, the passes, the median / p95 / max lag, and the share of the time the
applier was busy (what it could keep up with: the incremental path's throughput). Floors (issue 15):
the full recompute of 10M members under 5 minutes; the lag under 5 s at 1,000 writes a second.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import random
import statistics
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any

import psycopg
from psycopg import AsyncConnection

from demo.products import CATALOGS, Catalog
from store.audiences import lifecycle, persons, rfm_store, rule_tags
from store.audiences.bitmaps import lock_brand, rebuild
from store.audiences.deltas import apply_brand
from store.brands import brand_by_code
from store.ledger import batched_orders
from store.ledger.order_lines import OrderLine
from store.ledger.orders import OrderInput, purchase
from store.tags import catalog, rules
from store.urls import libpq_url
from tagquery import GRAMMAR_VERSION

Work = Callable[[AsyncConnection[Any], int], Awaitable[object]]


async def _index(conn: AsyncConnection[Any], brand_id: int) -> object:
    await lock_brand(conn, brand_id, wait=True)
    return f"{await rebuild(conn, brand_id, parallel_reads=True):,} index rows"  # as `omnimember refresh` does


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
    return f"{await persons.build(conn, brand_id):,} persons"  # under the group's lock, as refresh


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


async def _rolled_back(
    conn: AsyncConnection[Any], brand_id: int, work: Work, *, vacuum: bool = True
) -> tuple[float, object]:
    """Seconds `work` took inside a transaction that is then rolled back, and what it returned."""
    if vacuum:
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


async def _side_by_side(conn: AsyncConnection[Any], other: AsyncConnection[Any], brand_id: int) -> float:
    """Seconds the index and the persons took at once, each on its connection, as `omnimember
    refresh` runs them (the later of the two to finish)."""
    await conn.execute(f"VACUUM {_REWRITTEN}")
    runs = await asyncio.gather(
        _rolled_back(conn, brand_id, _index, vacuum=False), _rolled_back(other, brand_id, _persons, vacuum=False)
    )
    return max(elapsed for elapsed, _ in runs)


async def full(
    conn: AsyncConnection[Any], other: AsyncConnection[Any], brand_id: int, members: int, rounds: int
) -> None:
    print(f"full recompute, {members:,} live members, medians of {rounds}:")
    medians: dict[str, float] = {}
    for name, work in PARTS.items():
        runs = [await _rolled_back(conn, brand_id, work) for _ in range(rounds)]
        medians[name] = statistics.median(elapsed for elapsed, _ in runs)
        print(f"  {name:<10} {medians[name]:8.2f} s   {runs[-1][1]}", flush=True)
    both = statistics.median([await _side_by_side(conn, other, brand_id) for _ in range(rounds)])
    print(f"  index and persons at once, as `omnimember refresh` runs them: {both:.2f} s", flush=True)
    for total, what in (
        (sum(medians.values()), "one part after another"),
        (sum(medians.values()) - medians["index"] - medians["persons"] + both, "as `omnimember refresh`"),
    ):
        print(f"  {'all':<10} {total:8.2f} s   {what}: {total / members * 1e7 / 60:.1f} min per 10M members, linear")


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


async def lag(url: str, brand: str, brand_id: int, seconds: float, rate: int, writes: str) -> None:
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

        orders = _Orders(writer, brand_id, CATALOGS.get(brand))
        committed: list[float] = [time.perf_counter()]
        task = asyncio.create_task(apply_every_second())
        batch = max(rate // 10, 1)
        started = time.perf_counter()
        for n, at in enumerate(range(0, len(ids), batch)):
            if writes == "orders":
                await orders.record(ids[at : at + batch])
            else:
                await writer.execute(_BUY, (ids[at : at + batch],))
            committed.append(time.perf_counter())
            await asyncio.sleep(max(started + (n + 1) * batch / rate - time.perf_counter(), 0))
        written = time.perf_counter() - started
        done.set()
        await task
    lags = sorted(next(ended for began, ended in passes if began >= at) - at for at in committed[1:])
    p95 = lags[int(0.95 * (len(lags) - 1))]
    busy = sum(ended - began for began, ended in passes) / (passes[-1][1] - passes[0][0])
    what = (
        f"orders ({orders.recorded:,} recorded with {orders.lines:,} lines)" if writes == "orders" else "member writes"
    )
    print(f"lag: {len(ids):,} {what} in {written:.1f} s ({len(ids) / written:,.0f}/s), {len(passes)} passes")
    print(f"lag: median {statistics.median(lags):.2f} s, p95 {p95:.2f} s, max {lags[-1]:.2f} s")
    print(
        f"lag: the applier was busy {busy:.0%} of the time: it keeps up with ~{len(ids) / written / busy:,.0f} a second"
    )


class _Orders:
    """Orders as `recordOrder` records them (the ledger's batched statement: points, growth, tiers,
    lines), each of a member of its own, paid now, of 10-500 yuan, with 1-2 lines of the brand's
    demo catalog (none for a brand without one)."""

    def __init__(self, conn: AsyncConnection[Any], brand_id: int, catalog: Catalog | None) -> None:
        self.conn, self.brand_id, self.catalog = conn, brand_id, catalog
        self.rng = random.Random(15)
        self.recorded = self.lines = 0

    async def record(self, members: list[int]) -> None:
        now = dt.datetime.now(dt.UTC)
        bought = [purchase(self._order(member_id, now), "bench") for member_id in members]
        async with self.conn.transaction():
            found = await batched_orders.record(self.conn, bought)
        self.recorded += sum(result is not None for result in found)

    def _order(self, member_id: int, now: dt.datetime) -> OrderInput:
        amount = Decimal(self.rng.randrange(1_000, 50_000)) / 100
        lines: list[OrderLine] = []
        if self.catalog is not None:
            first = (amount * Decimal("0.6")).quantize(Decimal("0.01"))
            for share in (first, amount - first)[: self.rng.choice((1, 2))]:
                at = self.rng.randrange(len(self.catalog.skus))
                lines.append(OrderLine(self.catalog.skus[at], self.catalog.categories[at], 1, share))
        self.lines += len(lines)
        key = f"bench-{time.time_ns()}-{member_id}"
        return OrderInput(self.brand_id, member_id, "mall", key, amount, now, None, tuple(lines))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--brand", default="teahouse")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rules", action="store_true", help="define and compute RULES first (kept)")
    parser.add_argument("--lag", type=float, default=0, help="seconds of writes at --rate while the applier runs")
    parser.add_argument("--writes", choices=("members", "orders"), default="members", help="what --lag writes")
    parser.add_argument("--rate", type=int, default=1000, help="member writes a second for --lag")
    args = parser.parse_args()
    print(
        f"$ .venv/bin/python bench/refresh.py --brand {args.brand}"
        + (f" --lag {args.lag:g} --rate {args.rate} --writes {args.writes}" if args.lag else f" --rounds {args.rounds}")
        + (" --rules" if args.rules else "")
    )
    async with await AsyncConnection.connect(libpq_url(args.database_url), autocommit=True) as conn:
        brand_id: int = (await brand_by_code(conn, args.brand))["id"]
        if args.rules:
            await define_rules(conn, brand_id)
        if args.lag:
            await lag(args.database_url, args.brand, brand_id, args.lag, args.rate, args.writes)
            return
        live = await conn.execute(
            "SELECT count(*) FROM members WHERE brand_id = %s AND merged_into IS NULL AND erased_at IS NULL",
            (brand_id,),
        )
        row = await live.fetchone()
        assert row is not None
        async with await AsyncConnection.connect(libpq_url(args.database_url), autocommit=True) as other:
            await full(conn, other, brand_id, int(row[0]), args.rounds)


if __name__ == "__main__":
    asyncio.run(main())

"""All ids of one audience into the process: `store.audiences.engine.member_ids`, as the export calls it.

    .venv/bin/python bench/export_ids.py --members 10000000 --expression 'NOT tag:mobile_verified'

Runs against the audience benchmark's database for that size (bench/audience.py builds it and its
index; this reads them as they are) and prints p50/p95 over --repeat runs after --warmup, with the
audience's size and the command. For the issue's "4.2M-member audience" at 10M, where the fixed
query set's export query selects fewer.
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import statistics
import sys
import time
from collections.abc import Sequence

import psycopg
from audience import DEFAULT_SERVER

from store.audiences import engine
from store.audiences.catalogs import load_catalog
from store.brands import brand_by_code
from tagquery import bind, parse


async def measure(args: argparse.Namespace) -> tuple[int, list[float]]:
    url = args.database_url or f"{DEFAULT_SERVER}/omnimember_audience_{args.members}"
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        brand = await load_catalog(conn, (await brand_by_code(conn, args.brand))["id"])
        node = bind(parse(args.expression), brand.catalog, source=args.expression)
        today = brand.today()
        for _ in range(args.warmup):
            await engine.member_ids(conn, brand, node, today)
        timings, size = [], 0
        for _ in range(args.repeat):
            started = time.perf_counter()
            ids = await engine.member_ids(conn, brand, node, today)
            timings.append((time.perf_counter() - started) * 1000)
            size = int(ids.size)
    return size, timings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=10_000_000, help="the audience benchmark's demo size")
    parser.add_argument("--database-url", help=f"default {DEFAULT_SERVER}/omnimember_audience_<members>")
    parser.add_argument("--brand", default="teahouse")
    parser.add_argument("--expression", default="NOT tag:mobile_verified")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    size, timings = asyncio.run(measure(args))
    ordered = sorted(timings)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    p50 = statistics.median(timings)
    print(f"{size:,} ids of `{args.expression}` into the process: p50 {p50:.1f} ms, p95 {p95:.1f} ms")
    print("reproduce with: .venv/bin/python bench/export_ids.py " + shlex.join(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

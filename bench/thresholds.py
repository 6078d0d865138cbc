"""Thresholds at any value (issue 13, item 2): COUNTs with a threshold on a band value against the
same COUNTs off the bands, in one run, in process and over HTTP.

    .venv/bin/python bench/thresholds.py --members 1000000 [--database-url URL] [--brand teahouse]

Works on bench/audience.py's data (the demo with tags, `omnimember demo --points --tags`; built by
it when missing, reused otherwise) and rebuilds the brand's index unless it is current. The query
is the issue's five terms, `A AND (B OR C) AND NOT D AND <threshold>`, with tags picked from the
brand's own frequencies (a ~50%, ~8%, ~5% and ~12% tag), and the threshold one of:

    on a band (one key)      points >= 300, points >= 1000
    off the bands (digits)   points >= 350, points >= 1234, total_spend >= 777.5, total_spend >= 1234.56,
                             last_purchase >= <today - 137 days>, registered >= <a day that starts no block>,
                             days_since_last_purchase <= 45, age >= 33

In process: `store.audiences.engine.count` as the API calls it, round robin over the queries (a
noisy neighbour hits all alike), each query's count checked against the row compiler once. The
ratio is each query's p50 over the p50 of the same five terms with `points >= 1000` (the band
value); the issue's floor is 2x. Over HTTP: `omnimember serve --dev` (as a campaign key would, no
rate limit), the five-term count with `points >= 350` and with `points >= 1000`: p50 at one client
(floor 3 ms for the off-band one) and counts a second at 16 clients (floor 400), with wrk when
installed. Prints the table and the command; `--no-write` leaves docs/benchmarks.md alone.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import shutil
import sys
from pathlib import Path

import audience
import loadgen
import numpy as np
import profile_read as common
import psycopg
from profile_read import BenchError
from psycopg_pool import AsyncConnectionPool

from store.audiences import engine
from tagquery.bitmap_keys import CHUNK_BITS, CHUNK_SIZE
from tagquery.bound import Bound

DOCS = common.ROOT / "docs" / "benchmarks.md"
SECTION = "## Thresholds at any value: thresholds"
REFERENCE = "points >= 1000"  # a band value: one key
HTTP_OFF_BAND = "points >= 350"
SINGLE_FLOOR_MS = 3.0
CONCURRENT_FLOOR = 400.0
RATIO_FLOOR = 2.0
COUNT = "query($b: String!, $e: String!) { audience(brand: $b, expression: $e) { count } }"


@dataclasses.dataclass(frozen=True, slots=True)
class Threshold:
    text: str
    band: bool


def thresholds(today: dt.date) -> list[Threshold]:
    recent = today - dt.timedelta(days=137)
    return [
        Threshold("points >= 300", True),
        Threshold(REFERENCE, True),
        Threshold("points >= 350", False),
        Threshold("points >= 1234", False),
        Threshold("total_spend >= 777.5", False),
        Threshold("total_spend >= 1234.56", False),
        Threshold(f"last_purchase >= {recent.isoformat()}", False),
        Threshold("registered >= 2024-03-03", False),
        Threshold("days_since_last_purchase <= 45", False),
        Threshold("age >= 33", False),
    ]


@dataclasses.dataclass(frozen=True, slots=True)
class Counted:
    threshold: Threshold
    members: int
    timings: audience.Timings
    keys: int


@dataclasses.dataclass(frozen=True, slots=True)
class OverHttp:
    expression: str
    single: loadgen.LoadStats
    concurrent: loadgen.LoadStats
    command: str


def five_terms(picker: audience.Picker) -> str:
    a = picker.tag(0.50, "A: a ~50% tag")
    b = picker.tag(0.08, "B: a ~8% tag")
    c = picker.tag(0.05, "C: a ~5% tag")
    d = picker.tag(0.12, "D: a ~12% tag (NOT)")
    return f"{a} AND ({b} OR {c}) AND NOT {d}"


async def in_process(args: argparse.Namespace, brand_id: int, base: str) -> tuple[list[Counted], list[Counted]]:
    """The COUNTs on the brand's index, and (with --scale-to) on its rows repeated to that size."""
    url = args.database_url
    async with (
        await psycopg.AsyncConnection.connect(url, autocommit=True) as conn,
        await psycopg.AsyncConnection.connect(url, autocommit=True) as row_conn,
        AsyncConnectionPool(url, min_size=1, max_size=1, kwargs={"autocommit": True}) as split_pool,
    ):
        bench = audience.Bench(conn, row_conn, split_pool)
        await bench.load(brand_id)
        chosen = thresholds(bench.today)
        queries = [audience.BenchQuery(t.text, t.text, f"{base} AND {t.text}", False) for t in chosen]
        bound = {q.key: bench.bind(q) for q in queries}
        members: dict[str, int] = {}
        for q in queries:
            _, ids = await bench.export(bound[q.key])
            found, _ = await bench.row_members(bound[q.key])
            if found != audience.Members.of(ids):
                raise BenchError(f"{q.key}: the compilers disagree: bitmap {audience.Members.of(ids)}, row {found}")
            members[q.key] = found.count
            for _ in range(args.warmup):
                await bench.bitmap_count(bound[q.key])
        ms: dict[str, list[float]] = {q.key: [] for q in queries}
        print(f"bitmap COUNT: {args.repeat} rounds over {len(queries)} queries …", flush=True)
        for _ in range(args.repeat):
            for q in queries:
                ms[q.key].append(await bench.bitmap_count(bound[q.key]))
        counted = [
            Counted(t, members[t.text], audience.Timings(ms[t.text]), len(bench.keys_of(bound[t.text]))) for t in chosen
        ]
        scaled = await on_scaled_index(args, bench, chosen, bound) if args.scale_to else []
        return counted, scaled


async def on_scaled_index(
    args: argparse.Namespace, bench: audience.Bench, chosen: list[Threshold], bound: dict[str, Bound]
) -> list[Counted]:
    """The same COUNTs on the brand's index rows repeated to `--scale-to` members' worth of chunks, in
    a transaction rolled back after (as bench/audience.py's --scale-to). A repeated chunk holds the
    same members shifted, so every count is known in advance and checked. One connection: the API
    counts a brand of 32+ chunks in two halves on two, which cannot see these uncommitted rows."""
    conn, brand_id = bench.conn, bench.brand.brand_id
    per_chunk: dict[str, dict[int, int]] = {}
    for t in chosen:
        _, ids = await bench.export(bound[t.text])
        found, counts = np.unique(ids >> CHUNK_BITS, return_counts=True)
        per_chunk[t.text] = dict(zip(found.tolist(), counts.tolist(), strict=True))
    rows = await (
        await conn.execute("SELECT DISTINCT chunk FROM audience_bitmaps WHERE brand_id = %s", (brand_id,))
    ).fetchall()
    chunks = sorted(int(row[0]) for row in rows)
    total = -(-args.scale_to // CHUNK_SIZE)
    sources = [chunks[i % len(chunks)] for i in range(len(chunks), total)]
    targets = list(range(chunks[-1] + 1, chunks[-1] + 1 + len(sources)))
    keys = sorted({key for t in chosen for key in bench.keys_of(bound[t.text])} | {"u"})
    expected = {t: sum(n.values()) + sum(n.get(c, 0) for c in sources) for t, n in per_chunk.items()}
    print(f"scaled index: {len(chunks)} chunks repeated to {total} ({total * CHUNK_SIZE:,} members' worth) …")
    ms: dict[str, list[float]] = {t.text: [] for t in chosen}
    async with conn.transaction(force_rollback=True):
        params = {"brand_id": brand_id, "sources": sources, "targets": targets, "keys": keys}
        await conn.execute(audience._COPY_CHUNKS, params)
        for t in chosen:
            found = await engine.count(conn, bench.brand, bound[t.text], bench.today)
            if found != expected[t.text]:
                raise BenchError(f"scaled index, {t.text}: counted {found:,}, expected {expected[t.text]:,}")
            for _ in range(args.warmup):
                await bench.bitmap_count(bound[t.text])
        for _ in range(max(1, args.repeat // 2)):
            for t in chosen:
                ms[t.text].append(await bench.bitmap_count(bound[t.text]))
    await conn.execute("VACUUM audience_bitmaps")  # the rolled-back rows
    return [
        Counted(t, expected[t.text], audience.Timings(ms[t.text]), len(bench.keys_of(bound[t.text]))) for t in chosen
    ]


def over_http(args: argparse.Namespace, env: dict[str, str], workdir: Path, base: str) -> list[OverHttp]:
    port = common.free_port()
    url = f"http://127.0.0.1:{port}"
    wrk = shutil.which("wrk")
    driver: loadgen.Driver = loadgen.WrkDriver(wrk, workdir) if wrk else loadgen.PythonDriver()
    server_env = {**env, "OMNIMEMBER_DEV_ROLE": "campaign", "OMNIMEMBER_RATE_LIMIT": "0"}
    command = [str(common.venv_bin("omnimember")), "serve", "--dev"]
    results = []
    with common.running_server(command, port, server_env, workdir / "server.log"):
        for threshold in (HTTP_OFF_BAND, REFERENCE):
            expression = f"{base} AND {threshold}"
            body = common.graphql_body(COUNT, {"b": args.brand, "e": expression})
            key = "offband" if threshold == HTTP_OFF_BAND else "band"
            scenario = loadgen.Scenario(key, expression, "POST", "/graphql", (body,), '"count":', COUNT)
            common.probe(url, scenario)
            print(f"HTTP: {threshold}, 1 then {args.clients} clients, {args.duration} s each …", flush=True)
            driver.run(url, scenario, 1, 2).check(scenario)  # warm-up
            single = driver.run(url, scenario, 1, args.duration)
            single.check(scenario)
            concurrent = driver.run(url, scenario, args.clients, args.duration)
            concurrent.check(scenario)
            results.append(
                OverHttp(expression, single, concurrent, driver.command(url, scenario, args.clients, args.duration))
            )
    return results


def count_table(counted: list[Counted]) -> list[str]:
    reference = next(c for c in counted if c.threshold.text == REFERENCE).timings.p50
    lines = [
        "| threshold | kind | members | keys read | p50 | p95 | ratio to the band value |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for c in counted:
        kind = "band" if c.threshold.band else "digits"
        lines.append(
            f"| `{c.threshold.text}` | {kind} | {c.members:,} | {c.keys} | {c.timings.p50:.2f} ms "
            f"| {c.timings.p95:.2f} ms | {c.timings.p50 / reference:.2f}x |"
        )
    worst = max((c for c in counted if not c.threshold.band), key=lambda c: c.timings.p50)
    ratio = worst.timings.p50 / reference
    return [
        *lines,
        "",
        f"- Off-band within {RATIO_FLOOR:g}x of the band value: {audience.mark(ratio <= RATIO_FLOOR)}"
        f" (slowest `{worst.threshold.text}`, {ratio:.2f}x).",
    ]


def report(
    args: argparse.Namespace,
    counted: list[Counted],
    scaled: list[Counted],
    http: list[OverHttp],
    base: str,
    host: audience.Machine,
) -> str:
    lines = [
        SECTION,
        "",
        f"Measured {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC by `bench/thresholds.py`. Reproduce with:",
        "",
        "```sh",
        f".venv/bin/python bench/thresholds.py --members {args.members}"
        + (f" --scale-to {args.scale_to}" if args.scale_to else ""),
        "```",
        "",
        f"- Machine: {host.cpus} CPUs ({host.cpu_model}), {host.ram_gib:.1f} GiB RAM, shared with the database.",
        f"- Database: {host.postgres}; {host.settings}.",
        f"- Data: the demo of {args.members:,} members (bench/audience.py's), brand `{args.brand}`; its index"
        " rebuilt with range-encoded digits (tagquery/bitmap_keys.py).",
        f"- Query: `{base} AND <threshold>`; every count checked equal to the row compiler's members.",
        f"- In process: `store.audiences.engine.count`, {args.repeat} rounds round robin after {args.warmup} warm-ups;"
        f" ratio = p50 / p50 of the same query with `{REFERENCE}` (one band key). Floor: {RATIO_FLOOR:g}x.",
        "",
    ]
    lines += count_table(counted)
    if scaled:
        size = -(-args.scale_to // CHUNK_SIZE) * CHUNK_SIZE
        lines += [
            "",
            f"The same COUNTs on the brand's index rows repeated to {size:,} members' worth of chunks (`--scale-to"
            f" {args.scale_to}`, rolled back; counts checked; one connection, where the API splits a brand of 32+"
            f" chunks over two), {max(1, args.repeat // 2)} rounds:",
            "",
            *count_table(scaled),
        ]
    if http:
        lines += [
            "",
            "Over HTTP (`omnimember serve --dev` as a campaign key, one uvicorn worker, the count as GraphQL):",
            "",
            f"| threshold | 1 client p50 | 1 client p99 | {args.clients} clients: counts/s | p50 | p99 |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for h in http:
            threshold = h.expression.rsplit(" AND ", 1)[1]
            lines.append(
                f"| `{threshold}` | {h.single.p50_ms:.2f} ms | {h.single.p99_ms:.2f} ms | {h.concurrent.rps:,.0f} "
                f"| {h.concurrent.p50_ms:.2f} ms | {h.concurrent.p99_ms:.2f} ms |"
            )
        off = http[0]
        single_ok = audience.mark(off.single.p50_ms <= SINGLE_FLOOR_MS)
        concurrent_ok = audience.mark(off.concurrent.rps >= CONCURRENT_FLOOR)
        lines += [
            "",
            f"- `{HTTP_OFF_BAND}`: p50 <= {SINGLE_FLOOR_MS:g} ms at one client: {single_ok};"
            f" >= {CONCURRENT_FLOOR:g} counts/s at {args.clients} clients: {concurrent_ok}.",
            f"- Load: `{off.command}`",
        ]
    return "\n".join(lines) + "\n"


def write_section(text: str) -> None:
    current = DOCS.read_text()
    start = current.find(SECTION)
    if start < 0:
        DOCS.write_text(current.rstrip("\n") + "\n\n" + text)
        return
    end = current.find("\n## ", start + len(SECTION))
    DOCS.write_text(current[:start] + text + ("" if end < 0 else current[end:]))


def run(args: argparse.Namespace, workdir: Path) -> int:
    env = audience.bench_env(args.database_url, workdir / "home")
    audience.prepare(args, env)
    with psycopg.connect(args.database_url) as conn:
        brand_id = audience.brand_id_of(conn, args.brand)
        stats = audience.index_stats(conn, brand_id)
        host = audience.machine(conn, brand_id)
    picker = audience.Picker(stats.tags, stats.live_members)
    base = five_terms(picker)
    print(f"brand {args.brand}: {stats.live_members:,} live members; the five terms: {base} AND <threshold>")
    counted, scaled = asyncio.run(in_process(args, brand_id, base))
    for c in counted:
        print(f"  {c.threshold.text:<36} {c.members:>8,}  {c.keys:>2} keys  p50 {c.timings.p50:6.2f} ms")
    http = [] if args.no_http else over_http(args, env, workdir, base)
    text = report(args, counted, scaled, http, base, host)
    print()
    print(text)
    if not args.no_write:
        write_section(text)
        print(f"wrote {DOCS.relative_to(common.ROOT)}")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--members", type=int, default=1_000_000, help="demo size, both brands (default 1000000)")
    parser.add_argument("--seed", type=int, default=42, help="demo data seed (default 42)")
    parser.add_argument("--brand", default="teahouse", help="the brand measured (default teahouse)")
    parser.add_argument("--database-url", help=f"default {audience.DEFAULT_SERVER}/omnimember_audience_<members>")
    parser.add_argument("--repeat", type=int, default=200, help="COUNT rounds over the queries (default 200)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed COUNTs per query first (default 10)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent HTTP clients (default 16)")
    parser.add_argument("--duration", type=int, default=10, help="seconds of each HTTP load (default 10)")
    parser.add_argument("--no-http", action="store_true", help="in process only")
    parser.add_argument(
        "--scale-to", type=int, default=0, help="also on the index repeated to this many members' worth (rolled back)"
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    # What bench/audience.py's prepare() reads: reuse its data, rebuild the index unless current.
    args.ledger, args.reuse_index = "auto", True
    args.database_url = common.libpq_url(
        args.database_url or f"{audience.DEFAULT_SERVER}/omnimember_audience_{args.members}"
    )
    return args


def main(argv: list[str] | None = None) -> int:
    return common.bench_main(run, parse_args(argv), "thresholds-", (BenchError, loadgen.LoadError, psycopg.Error))


if __name__ == "__main__":
    sys.exit(main())

"""Overlap (issue 15, item 5): channelOverlap and brandOverlap latency on the demo, and channelOverlap
on the index repeated to 10M members' worth of chunks.

    .venv/bin/python bench/overlap.py [--members 1000000] [--database-url URL] [--brand teahouse]
                                      [--scale-to 10000000] [--repeat 50] [--no-write]

Reads bench/audience.py's demo database (`omnimember_audience_<members>`, built by that benchmark)
and writes nothing to it: a missing database or an index that is not current is an error (run
bench/audience.py first), never a rebuild. Measured, each checked first:

- channelOverlap of the brand's seven channels, among every live member and within an audience,
  as the API runs it (`store.audiences.overlap.channel_overlap`: one statement, pairs in SQL over
  the pivot), against the alternative of fetching every chunk's channel bitmaps once and counting
  the pairs with numpy; both checked equal to a count over member_identities in SQL;
- brandOverlap of the brand's group (`store.audiences.overlap.brand_overlap`), checked equal to a
  count over members in SQL;
- with `--scale-to N`, channelOverlap on the brand's index rows repeated to N members' worth of
  chunks, in a transaction that is rolled back (as bench/audience.py's `--scale-to`), every count
  checked against the per-chunk counts of the real index. One connection: the API sums a brand of
  32+ chunks in two halves on two connections, which cannot see those uncommitted rows, so each
  half is timed on its own too (two cores run them at once: the slower half is the estimate).

Prints the tables and writes its section of docs/benchmarks.md (`--no-write`: print only).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import itertools
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import audience
import numpy as np
import numpy.typing as npt
import profile_read as common
import psycopg
import sqlalchemy as sa
from profile_read import BenchError
from psycopg_pool import AsyncConnectionPool

from store.audiences import overlap, persons
from store.audiences.catalogs import BrandCatalog, load_catalog
from store.audiences.engine import run_pivot
from store.audiences.facts import expand_derived
from store.tables import CHANNELS, audience_bitmaps
from tagquery import bind, parse
from tagquery.bitmap_keys import CHUNK_SIZE, UNIVERSE, value_key
from tagquery.bound import Bound
from tagquery.compile_bitmap import BitmapCompiler

DOCS = common.ROOT / "docs" / "benchmarks.md"
SECTION = "## Overlap: overlap"
AUDIENCE = "tier IN (gold, platinum) OR points >= 1000"
FLOOR_MS = 200.0  # issue 15: overlap of 7 channels at 10M under 200 ms
_BITS = 4 + CHUNK_SIZE // 8  # varbit_send: bit length (int4), then the bits
Words = npt.NDArray[np.uint64]


# --- the numpy alternative: every chunk's bitmaps fetched once, pairs counted in the process ----------


def _fetch_statement(audience: Bound | None) -> Callable[[BitmapCompiler], sa.Select[Any]]:
    """Every chunk's scope (the audience, expanded, or the universe) and channel bitmaps, as records."""

    def statement(compiler: BitmapCompiler) -> sa.Select[Any]:
        scope = compiler.universe if audience is None else compiler.bitmap(audience)
        keys = {f"k{i}": compiler.pivot(value_key("channel", c)) for i, c in enumerate(CHANNELS)}
        p = compiler.pivot.select(audience_bitmaps, {"t": scope, **keys}).subquery()
        record: sa.ColumnElement[Any] = sa.func.int4send(p.c.chunk)
        for name in ("t", *keys):
            record = record.op("||")(sa.func.varbit_send(p.c[name]))
        return sa.select(sa.func.string_agg(record, sa.literal_column("''::bytea")).label("chunks"))

    return statement


def _words(data: bytes, bitmaps: int) -> tuple[npt.NDArray[np.int64], Words]:
    """(chunks, bitmaps[chunk, bitmap, word]) from `int4send(chunk) || varbit_send(b0) || ...` records."""
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, 4 + bitmaps * _BITS)
    chunks = records[:, :4].copy().view(">i4").astype(np.int64).ravel()
    bits = np.stack([records[:, 4 + i * _BITS + 4 : 4 + (i + 1) * _BITS] for i in range(bitmaps)], axis=1)
    return chunks, np.ascontiguousarray(bits).view(np.uint64)


def _popcount(words: Words) -> npt.NDArray[np.int64]:
    """Members per chunk."""
    counts: npt.NDArray[np.int64] = np.bitwise_count(words).sum(axis=-1, dtype=np.int64)
    return counts


@dataclasses.dataclass(frozen=True, slots=True)
class PerChunk:
    """channelOverlap's numbers per chunk (summed, they are the brand's)."""

    chunks: npt.NDArray[np.int64]
    columns: dict[str, npt.NDArray[np.int64]]  # total, any, multi, n<i>, s<i>, p<i>_<j> (as channel_sums)

    def summed(self, multiplicity: dict[int, int] | None = None) -> dict[str, int]:
        weights = np.ones(self.chunks.size, dtype=np.int64)
        if multiplicity is not None:
            weights = np.array([multiplicity.get(int(c), 0) for c in self.chunks], dtype=np.int64)
        return {name: int((values * weights).sum()) for name, values in self.columns.items()}


async def numpy_overlap(
    conn: psycopg.AsyncConnection[Any], brand: BrandCatalog, node: Bound | None, today: dt.date
) -> PerChunk:
    audience = None if node is None else expand_derived(node, brand.lifecycle)
    row = await run_pivot(conn, brand, today, ("bench_numpy_overlap", node), _fetch_statement(audience))
    chunks, bits = _words(row["chunks"] or b"", 1 + len(CHANNELS))
    scope, keys = bits[:, 0], bits[:, 1:]
    within = keys if node is None else keys & scope[:, None, :]
    one = np.zeros_like(scope)
    two = np.zeros_like(scope)
    for i in range(len(CHANNELS)):
        two |= one & within[:, i]
        one |= within[:, i]
    columns = {"total": _popcount(scope), "any": _popcount(one), "multi": _popcount(two)}
    for i in range(len(CHANNELS)):
        columns[f"n{i}"] = _popcount(within[:, i])
        columns[f"s{i}"] = _popcount(within[:, i] & two)
    for i, j in itertools.combinations(range(len(CHANNELS)), 2):
        columns[f"p{i}_{j}"] = _popcount(within[:, i] & within[:, j])
    return PerChunk(chunks, columns)


def as_overlap(numbers: dict[str, int]) -> overlap.ChannelOverlap:
    counts = [numbers[f"n{i}"] for i in range(len(CHANNELS))]
    return overlap.ChannelOverlap(
        total=numbers["total"],
        with_channel=numbers["any"],
        multi_channel=numbers["multi"],
        channels=[overlap.Part(c, counts[i], counts[i] - numbers[f"s{i}"]) for i, c in enumerate(CHANNELS)],
        pairs=[
            overlap.Pair(CHANNELS[i], CHANNELS[j], counts[i], counts[j], numbers[f"p{i}_{j}"])
            for i, j in itertools.combinations(range(len(CHANNELS)), 2)
        ],
    )


# --- references in SQL over the system of record -----------------------------------------------------

_IDENTITIES = """
WITH live AS (SELECT id FROM members WHERE brand_id = %(brand)s AND merged_into IS NULL AND erased_at IS NULL),
held AS (SELECT DISTINCT i.member_id, i.channel FROM member_identities i JOIN live ON live.id = i.member_id)
SELECT a.channel, b.channel, count(*) FROM held a JOIN held b ON a.member_id = b.member_id AND a.channel < b.channel
GROUP BY 1, 2"""
_PHONES = """
WITH live AS (SELECT brand_id, phone_hash FROM members
              WHERE brand_id = ANY(%(brands)s) AND merged_into IS NULL AND erased_at IS NULL AND phone_hash IS NOT NULL)
SELECT a.brand_id, b.brand_id, count(*) FROM live a
JOIN live b ON a.phone_hash = b.phone_hash AND a.brand_id < b.brand_id GROUP BY 1, 2"""


async def sql_pairs(
    conn: psycopg.AsyncConnection[Any], sql: str, **params: Any
) -> tuple[dict[frozenset[Any], int], float]:
    started = time.perf_counter()
    rows = await (await conn.execute(sql, params)).fetchall()
    return {frozenset((a, b)): int(n) for a, b, n in rows}, (time.perf_counter() - started) * 1000


# --- measuring -------------------------------------------------------------------------------------------


async def timed(repeat: int, warmup: int, call: Callable[[], Awaitable[Any]]) -> audience.Timings:
    for _ in range(warmup):
        await call()
    ms = []
    for _ in range(repeat):
        started = time.perf_counter()
        await call()
        ms.append((time.perf_counter() - started) * 1000)
    return audience.Timings(ms)


@dataclasses.dataclass(frozen=True, slots=True)
class Row:
    what: str
    members: int
    chunks: int
    timings: audience.Timings
    note: str = ""


@dataclasses.dataclass
class Findings:
    live: int = 0
    chunks: int = 0
    rows: list[Row] = dataclasses.field(default_factory=list)
    scaled: list[Row] = dataclasses.field(default_factory=list)
    scaled_members: int = 0
    reference_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    brands: list[overlap.Part] = dataclasses.field(default_factory=list)
    scaled_brands: Row | None = None


async def measure(args: argparse.Namespace, brand_id: int) -> Findings:
    url = args.database_url
    found = Findings()
    async with (
        await psycopg.AsyncConnection.connect(url, autocommit=True) as conn,
        AsyncConnectionPool(url, min_size=1, max_size=2, kwargs={"autocommit": True}) as pool,
    ):
        brand = await load_catalog(conn, brand_id)
        today = brand.today()
        found.chunks = brand.chunks[1] - brand.chunks[0] + 1
        within = bind(parse(AUDIENCE), brand.catalog, source=AUDIENCE)
        everyone = await overlap.channel_overlap(conn, brand, None, today)
        found.live = everyone.total
        expected, found.reference_ms["channels"] = await sql_pairs(conn, _IDENTITIES, brand=brand_id)
        for pair in everyone.pairs:
            if pair.both != expected.get(frozenset((pair.a, pair.b)), 0):
                raise BenchError(f"channelOverlap {pair.a}/{pair.b}: {pair.both:,}, member_identities say otherwise")
        for label, node in (("every live member", None), (f"`{AUDIENCE}`", within)):
            in_sql = await overlap.channel_overlap(conn, brand, node, today)
            in_numpy = as_overlap((await numpy_overlap(conn, brand, node, today)).summed())
            if in_sql != in_numpy:
                raise BenchError(f"channelOverlap of {label}: the SQL pairs and the numpy pairs disagree")
            print(f"channelOverlap, {label}: {in_sql.total:,} members, {args.repeat} runs each way …", flush=True)
            found.rows += [
                Row(
                    f"channelOverlap, {label}: pairs in SQL (the API)",
                    in_sql.total,
                    found.chunks,
                    await timed(
                        args.repeat,
                        args.warmup,
                        partial(overlap.channel_overlap, conn, brand, node, today, pool=pool),
                    ),
                ),
                Row(
                    f"channelOverlap, {label}: bitmaps fetched, pairs in numpy",
                    in_numpy.total,
                    found.chunks,
                    await timed(args.repeat, args.warmup, partial(numpy_overlap, conn, brand, node, today)),
                ),
            ]
        found.rows.append(await brands_row(args, conn, brand_id, found))
        if args.scale_to > found.chunks * CHUNK_SIZE:
            found.scaled = await scaled(args, conn, brand, within, found)
    return found


async def brands_row(
    args: argparse.Namespace, conn: psycopg.AsyncConnection[Any], brand_id: int, found: Findings
) -> Row:
    rows = await (
        await conn.execute(
            "SELECT b.id, b.code FROM brands b WHERE b.group_id = (SELECT group_id FROM brands WHERE id = %s)"
            " ORDER BY b.id",
            (brand_id,),
        )
    ).fetchall()
    ids, codes = [int(r[0]) for r in rows], [str(r[1]) for r in rows]
    catalogs = [await load_catalog(conn, i) for i in ids]
    result = await overlap.brand_overlap(conn, catalogs, codes)
    expected, found.reference_ms["brands"] = await sql_pairs(conn, _PHONES, brands=ids)
    by_code = dict(zip(codes, ids, strict=True))
    for pair in result.pairs:
        if pair.both != expected.get(frozenset((by_code[pair.a], by_code[pair.b])), 0):
            raise BenchError(f"brandOverlap {pair.a}/{pair.b}: {pair.both:,}, the members table says otherwise")
    found.brands = result.brands
    print(f"brandOverlap of {len(ids)} brands ({sum(p.count for p in result.brands):,} members) …", flush=True)
    repeat = max(3, args.repeat // 5)
    timings = await timed(repeat, 2, lambda: overlap.brand_overlap(conn, catalogs, codes))
    shared = ", ".join(f"{p.a}/{p.b} {p.both:,}" for p in result.pairs)
    if args.scale_to:
        found.scaled_brands = await scaled_brands(args, conn, catalogs, codes, result)
    return Row(f"brandOverlap of the group ({len(ids)} brands)", result.persons, found.chunks, timings, shared)


# Every brand's person bitmaps again `factor - 1` times, each copy in chunks past the group's last:
# as many more persons in as many more chunks, shared as the real ones are.
_REPEAT_PERSONS = """
INSERT INTO person_bitmaps (brand_id, chunk, bits)
SELECT p.brand_id, p.chunk + %(span)s * k, p.bits
FROM person_bitmaps p, generate_series(1, %(copies)s) AS k
WHERE p.brand_id = ANY(%(brands)s)
"""


async def scaled_brands(
    args: argparse.Namespace,
    conn: psycopg.AsyncConnection[Any],
    catalogs: list[BrandCatalog],
    codes: list[str],
    result: overlap.BrandOverlap,
) -> Row:
    """brandOverlap with the group's persons repeated to about `--scale-to` members (rolled back): the
    person bitmaps are what grows with the group; the brands' member counts (one `u` row each) are
    read as they are."""
    ids = [catalog.brand_id for catalog in catalogs]
    members = sum(p.count for p in result.brands)
    factor = max(2, round(args.scale_to / members))
    row = await (
        await conn.execute("SELECT max(chunk) FROM person_bitmaps WHERE brand_id = ANY(%s)", (ids,))
    ).fetchone()
    span = int(row[0] if row and row[0] is not None else 0) + 1
    _, base = await persons.shared_persons(conn, ids)
    print(f"brandOverlap with the persons repeated {factor}x ({span * factor} person chunks) …", flush=True)
    async with conn.transaction(force_rollback=True):
        await conn.execute(_REPEAT_PERSONS, {"span": span, "copies": factor - 1, "brands": ids})
        _, scaled = await persons.shared_persons(conn, ids)
        if sorted(scaled) != sorted((combo, n * factor) for combo, n in base):
            raise BenchError("scaled person index: the shared persons are not the repeated ones'")
        timings = await timed(max(3, args.repeat // 5), 2, lambda: overlap.brand_overlap(conn, catalogs, codes))
    return Row(
        f"brandOverlap of the group, persons repeated {factor}x",
        result.persons * factor,
        span * factor,
        timings,
    )


async def scaled(
    args: argparse.Namespace, conn: psycopg.AsyncConnection[Any], brand: BrandCatalog, within: Bound, found: Findings
) -> list[Row]:
    """channelOverlap on the brand's rows repeated to `--scale-to` members' worth of chunks (rolled back)."""
    today = brand.today()
    base = {
        label: await numpy_overlap(conn, brand, node, today) for label, node in (("all", None), ("audience", within))
    }
    rows = await (
        await conn.execute("SELECT DISTINCT chunk FROM audience_bitmaps WHERE brand_id = %s", (brand.brand_id,))
    ).fetchall()
    chunks = sorted(int(row[0]) for row in rows)
    total = -(-args.scale_to // CHUNK_SIZE)
    sources = [chunks[i % len(chunks)] for i in range(len(chunks), total)]
    targets = list(range(chunks[-1] + 1, chunks[-1] + 1 + len(sources)))
    multiplicity = {c: 1 + sources.count(c) for c in chunks}
    compiler = BitmapCompiler(brand.encoding, today)
    compiler.bitmap(expand_derived(within, brand.lifecycle))
    keys = sorted({UNIVERSE, *(value_key("channel", c) for c in CHANNELS), *compiler.pivot.keys})
    found.scaled_members = total * CHUNK_SIZE
    print(f"scaled index: {len(chunks)} chunks repeated to {total} ({found.scaled_members:,} members' worth) …")
    measured = []
    async with conn.transaction(force_rollback=True):
        params = {"brand_id": brand.brand_id, "sources": sources, "targets": targets, "keys": keys}
        await conn.execute(audience._COPY_CHUNKS, params)
        big = await load_catalog(conn, brand.brand_id)  # its chunk span, as the API would load it
        middle = (big.chunks[0] + big.chunks[1] + 1) // 2
        for label, node in (("every live member", None), (f"`{AUDIENCE}`", within)):
            expected = as_overlap(base["all" if node is None else "audience"].summed(multiplicity))
            if await overlap.channel_overlap(conn, big, node, today) != expected:
                raise BenchError(f"scaled index, channelOverlap of {label}: not the repeated chunks' numbers")
            measured += [
                Row(
                    f"channelOverlap, {label}: one statement, all chunks",
                    expected.total,
                    total,
                    await timed(args.repeat, args.warmup, partial(overlap.channel_overlap, conn, big, node, today)),
                ),
                Row(
                    f"channelOverlap, {label}: lower half alone",
                    0,
                    middle - big.chunks[0],
                    await timed(
                        args.repeat,
                        args.warmup,
                        partial(overlap.channel_sums, conn, big, node, today, to_chunk=middle),
                    ),
                ),
                Row(
                    f"channelOverlap, {label}: upper half alone",
                    0,
                    big.chunks[1] - middle + 1,
                    await timed(
                        args.repeat,
                        args.warmup,
                        partial(overlap.channel_sums, conn, big, node, today, from_chunk=middle),
                    ),
                ),
                Row(
                    f"channelOverlap, {label}: bitmaps fetched, pairs in numpy",
                    expected.total,
                    total,
                    await timed(max(5, args.repeat // 5), 1, partial(numpy_overlap, conn, big, node, today)),
                ),
            ]
    await conn.execute("VACUUM audience_bitmaps")  # the rolled-back rows
    return measured


# --- the report ------------------------------------------------------------------------------------------


def table(rows: list[Row]) -> list[str]:
    lines = ["| what | members | chunks | p50 | p95 |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        members = f"{r.members:,}" if r.members else "-"
        lines.append(
            f"| {r.what} | {members} | {r.chunks} | {audience.ms(r.timings.p50)} | {audience.ms(r.timings.p95)} |"
        )
    return lines


def report(args: argparse.Namespace, f: Findings, host: audience.Machine) -> str:
    command = f".venv/bin/python bench/overlap.py --members {args.members}"
    command += f" --scale-to {args.scale_to}" if args.scale_to else ""
    lines = [
        SECTION,
        "",
        f"Measured {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC by `bench/overlap.py`. Reproduce with:",
        "",
        "```sh",
        command,
        "```",
        "",
        f"- Machine: {host.cpus} CPUs ({host.cpu_model}), {host.ram_gib:.1f} GiB RAM, shared with the database"
        " (and, during this run, with other work).",
        f"- Database: {host.postgres}; {host.settings}; index rows {host.compression}.",
        f"- Software: {host.software}.",
        f"- Data: bench/audience.py's demo of {args.members:,} members; brand `{args.brand}`, {f.live:,} live members"
        f" in {f.chunks} chunks; its group: "
        + ", ".join(f"`{p.name}` {p.count:,}" for p in f.brands)
        + ". Read only: the index as built, nothing rebuilt.",
        f"- Checked before timing: every pair equal to a count over member_identities (channels; that SQL took "
        f"{audience.ms(f.reference_ms.get('channels', float('nan')))}) and over members' phones (brands; "
        f"{audience.ms(f.reference_ms.get('brands', float('nan')))}); the SQL pairs equal the numpy pairs.",
        f"- {args.repeat} runs after {args.warmup} warm-ups (brandOverlap: {max(3, args.repeat // 5)} after 2).",
        "",
        *table(f.rows),
        "",
        "- The pairs in SQL are what the API runs: faster than fetching the bitmaps and pairing them in numpy at "
        "10M (below), about even at 1M. brandOverlap's members column counts persons; "
        + "; ".join(f"{r.what.split(' (')[0]}: {r.note} shared" for r in f.rows if r.note)
        + ".",
    ]
    if f.scaled:
        api = [r for r in f.scaled if "half" in r.what]
        estimate = max(r.timings.p50 for r in api[:2]) if api else float("nan")
        lines += [
            "",
            f"On the brand's index rows repeated to {f.scaled_members:,} members' worth of chunks (`--scale-to "
            f"{args.scale_to}`, the real bit patterns, rolled back; every count checked against the real chunks'). "
            "One connection: the API sums a brand of 32+ chunks in two halves on two connections at once, which "
            "cannot see these uncommitted rows, so each half is timed alone as well:",
            "",
            *table(f.scaled),
            "",
            f"- Overlap of 7 channels at 10M under {FLOOR_MS:g} ms (every live member): "
            f"{audience.mark(estimate <= FLOOR_MS)}: the API's two halves at once, about the slower half "
            f"({audience.ms(estimate)}); on one connection {audience.ms(f.scaled[0].timings.p50)}.",
        ]
    lines += [
        "",
        "brandOverlap reads the person index (store.audiences.persons, migration 0016): one statement fetches "
        "each brand's person bitmaps (a chunk per 65,536 of the group's persons with a phone) and numpy counts "
        "the persons per set of brands, so its time grows with the group's persons. Before the person index it "
        "merged every brand's live phone hashes from the members table per request: 0.25-0.4 s at 1M.",
    ]
    if f.scaled_brands is not None:
        lines += [
            "",
            "The same with every brand's person bitmaps repeated (the real bit patterns in chunks past the "
            "group's last, rolled back; the shared persons checked to be the repeated ones'); the members "
            "column counts persons:",
            "",
            *table([f.scaled_brands]),
        ]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace, workdir: Path) -> int:
    del workdir
    with psycopg.connect(args.database_url) as conn:
        brand_id = audience.brand_id_of(conn, args.brand)
        host = audience.machine(conn, brand_id)
    if not audience.index_is_current(args.database_url, args.brand):
        raise BenchError(
            f"the index of {args.brand} is not current: run bench/audience.py (or omnimember refresh) first"
        )
    found = asyncio.run(measure(args, brand_id))
    text = report(args, found, host)
    print()
    print(text)
    if not args.no_write:
        common.write_section(DOCS, text, SECTION)
        print(f"wrote {DOCS.relative_to(common.ROOT)}")
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--members", type=int, default=1_000_000, help="the demo's size (default 1000000)")
    parser.add_argument("--brand", default="teahouse", help="the brand measured (default teahouse)")
    parser.add_argument("--database-url", help=f"default {audience.DEFAULT_SERVER}/omnimember_audience_<members>")
    parser.add_argument("--repeat", type=int, default=50, help="timed runs of each measurement (default 50)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    parser.add_argument(
        "--scale-to", type=int, default=10_000_000, help="members' worth of chunks to repeat the index to (0: none)"
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    args.database_url = common.libpq_url(
        args.database_url or f"{audience.DEFAULT_SERVER}/omnimember_audience_{args.members}"
    )
    return args


def main(argv: list[str] | None = None) -> int:
    return common.bench_main(run, parse_args(argv), "overlap-", (BenchError, psycopg.Error))


if __name__ == "__main__":
    sys.exit(main())

"""Audiences of a brand, answered from the bitmap index: the functions the API calls.

Every function takes a bound query (tagquery.bind against the brand's catalog) and the brand's
day. Lifecycle terms are expanded (store.audiences.facts) and the rest compiled to the pivot form
(tagquery.compile_bitmap). Each statement also reads the index's slice widths in the same
snapshot: if they grew since the catalog was loaded, the statement is compiled again with them, so
a result never mixes an old encoding with newer bits. Ids travel as whole chunks in one bytea and
are decoded here with numpy (never unnested in SQL).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from datetime import date
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from store.audiences import rfm
from store.audiences.bitmaps import stored_widths
from store.audiences.catalogs import BrandCatalog
from store.audiences.deltas import Freshness
from store.audiences.deltas import freshness as index_freshness
from store.audiences.facts import expand_derived, lifecycle_terms, member_facts
from store.errors import DomainError, ErrorCode
from store.sql import Query, Row
from store.tables import audience_bitmaps, audience_index_state
from tagquery.bitmap_keys import CHUNK_BITS, CHUNK_SIZE, value_key
from tagquery.bound import Bound, BoundAnd, BoundNot, BoundOr
from tagquery.compile_bitmap import BitmapCompiler, Bits, Encoding, bitand
from tagquery.evaluate import evaluate

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

# From this many chunks (2^21 members' worth of ids) a COUNT with a pool runs in two halves at once;
# below it the second statement's fixed cost (a connection, planning) is more than half the work.
SPLIT_CHUNKS = 32
BREAKDOWNS = ("tier", "channel", "city", "lifecycle", "status", "gender", "rfm")
_RECORD = 4 + 4 + CHUNK_SIZE // 8  # chunk (int4), bit count (int4), bits
_WIDTHS = (
    sa.select(audience_index_state.c.widths)
    .where(audience_index_state.c.brand_id == sa.bindparam("brand_id"))
    .scalar_subquery()
    .label("widths")
)
Statement = Callable[[BitmapCompiler], sa.Select[Any]]
Columns = list[sa.ColumnElement[Any]]


@dataclasses.dataclass(frozen=True, slots=True)
class FunnelStep:
    operand: Bound | None
    """The AND operand applied at this step (None: the brand's live members, before any)."""
    count: int
    removed: int
    """Members this step removed from the previous count (what a NOT excluded, for a NOT)."""


def _count(bits: Bits) -> sa.ColumnElement[int]:
    return sa.func.coalesce(sa.func.sum(sa.func.bit_count(bits)), 0)


class _Compiled:
    """Compiled statements by (what, query, day, widths): compiling a range term costs ~10 ms of
    SQLAlchemy, an operator re-counting the same audience should not pay it again."""

    def __init__(self, size: int = 512) -> None:
        self.size = size
        self._queries: OrderedDict[Hashable, Query] = OrderedDict()

    def get(self, key: Hashable, today: date, encoding: Encoding, statement: Statement) -> Query:
        full = (key, today, tuple(sorted(encoding.widths.items())))
        query = self._queries.get(full)
        if query is None:
            query = self._queries[full] = Query(statement(BitmapCompiler(encoding, today)).add_columns(_WIDTHS))
            if len(self._queries) > self.size:
                self._queries.popitem(last=False)
        else:
            self._queries.move_to_end(full)
        return query


_compiled = _Compiled()


async def run_pivot(
    conn: AsyncConnection[Any], brand: BrandCatalog, today: date, key: Hashable, statement: Statement, **params: Any
) -> Row:
    """Run a one-row statement; compile again if the index's widths moved since `brand` was loaded.

    `key` identifies `statement` (it must differ whenever the statement would, the brand's lifecycle
    rules and RFM thresholds aside: they are part of the cache's key here)."""
    encoding = brand.encoding
    for _ in range(3):
        query = _compiled.get((key, brand.lifecycle, brand.rfm), today, encoding, statement)
        row = await query.one(conn, brand_id=brand.brand_id, **params)
        assert row is not None
        if (row["widths"] or {}) == encoding.widths:
            return row
        encoding = Encoding(dict(await stored_widths(conn, brand.brand_id)))
    raise RuntimeError("the audience index's encoding keeps changing; try again")


def _audience(node: Bound, brand: BrandCatalog) -> Callable[[BitmapCompiler], Bits]:
    # Expanded when compiled: a statement already compiled for this node (engine._compiled) needs none.
    return lambda compiler: compiler.bitmap(expand_derived(node, brand.lifecycle, brand.rfm))


async def count(
    conn: AsyncConnection[Any],
    brand: BrandCatalog,
    node: Bound,
    today: date,
    *,
    pool: AsyncConnectionPool[Any] | None = None,
) -> int:
    """How many members the audience holds. With a `pool`, a brand of SPLIT_CHUNKS chunks or more
    is counted in two halves at once, the upper half on a second connection: a COUNT's time is
    per key per chunk on one core, and there are two. Each half reads its own snapshot, so a
    delta applied between them shows in one half only, as it would in two counts a moment apart."""
    audience = _audience(node, brand)

    def statement(compiler: BitmapCompiler) -> sa.Select[Any]:
        pivot = compiler.pivot.select(audience_bitmaps, {"bits": audience(compiler)}).subquery()
        return sa.select(_count(pivot.c.bits).label("n"))

    async def counted(on: AsyncConnection[Any], **chunks: int) -> int:
        return int((await run_pivot(on, brand, today, ("count", node), statement, **chunks))["n"])

    first, last = brand.chunks
    if pool is None or last - first + 1 < SPLIT_CHUNKS:
        return await counted(conn)
    middle = (first + last + 1) // 2

    async def upper() -> int:
        async with pool.connection() as second:
            return await counted(second, from_chunk=middle)

    lower, higher = await asyncio.gather(counted(conn, to_chunk=middle), upper())
    return lower + higher


async def member_ids(
    conn: AsyncConnection[Any], brand: BrandCatalog, node: Bound, today: date, *, after: int = 0
) -> npt.NDArray[np.int64]:
    """The ids of the audience's members above `after`, ascending."""
    audience = _audience(node, brand)

    def statement(compiler: BitmapCompiler) -> sa.Select[Any]:
        rows = compiler.pivot.select(audience_bitmaps, {"bits": audience(compiler)}).subquery()
        record = sa.func.int4send(rows.c.chunk).op("||")(sa.func.varbit_send(rows.c.bits))
        return sa.select(sa.func.string_agg(record, sa.literal_column("''::bytea")).label("chunks"))

    row = await run_pivot(conn, brand, today, ("ids", node), statement, from_chunk=after >> CHUNK_BITS)
    ids = decode_chunks(row["chunks"])
    return ids[ids > after]


def decode_chunks(data: bytes | None) -> npt.NDArray[np.int64]:
    """Ids from `int4send(chunk) || varbit_send(bits)` records: numpy unpackbits, no Python loop."""
    import numpy as np  # lazily: a count needs none (issue 16)

    if not data:
        return np.empty(0, dtype=np.int64)
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, _RECORD)
    chunks = records[:, :4].copy().view(">i4").astype(np.int64).ravel()
    ordered = bool(np.all(chunks[1:] > chunks[:-1]))
    if not ordered:  # string_agg promises no order; one argsort of the records, not of the ids
        order = np.argsort(chunks, kind="stable")
        records, chunks = records[order], chunks[order]
    # Flat over the records, booleans: nonzero of a 2-D uint8 array took 10-20x longer (280k ids:
    # ~20 ms against ~1 ms), and ids come out ascending without a sort.
    flat = np.flatnonzero(np.unpackbits(records[:, 8:]).view(np.bool_))
    ids: npt.NDArray[np.int64] = flat + ((chunks - np.arange(chunks.size)) << CHUNK_BITS)[flat >> CHUNK_BITS]
    if not ordered and bool(np.any(chunks[1:] == chunks[:-1])):
        ids.sort()  # a chunk in two records
    return ids


async def sample(
    conn: AsyncConnection[Any], brand: BrandCatalog, node: Bound, today: date, *, first: int, after: int = 0
) -> list[int]:
    """Up to `first` member ids of the audience above `after` (a keyset cursor), ascending."""
    return [int(member_id) for member_id in (await member_ids(conn, brand, node, today, after=after))[:first]]


async def breakdown(
    conn: AsyncConnection[Any], brand: BrandCatalog, node: Bound, today: date, by: str
) -> tuple[int, dict[str, int]]:
    """The audience's size and its members per value of `by` (a channel counts each member once
    per channel it has; a city-less member is in no city)."""
    if by not in BREAKDOWNS:
        raise ValueError(f"cannot break down by {by!r}")
    audience = _audience(node, brand)
    values = sorted(brand.catalog.dimensions[by].values)

    def value_bits(compiler: BitmapCompiler, value: str) -> Bits:
        if by == "lifecycle":
            return compiler.bitmap(lifecycle_terms(brand.lifecycle)[value])
        if by == rfm.DIMENSION:  # buyers only: a member who never bought is in no cell
            return compiler.bitmap(rfm.cell_terms(brand.rfm)[value])
        return compiler.pivot(value_key(by, value))

    def statement(compiler: BitmapCompiler) -> sa.Select[Any]:
        columns = {"bits": audience(compiler)} | {f"v{i}": value_bits(compiler, v) for i, v in enumerate(values)}
        pivot = compiler.pivot.select(audience_bitmaps, columns).subquery()
        counts: Columns = [_count(bitand(pivot.c.bits, pivot.c[f"v{i}"])).label(f"v{i}") for i in range(len(values))]
        total: Columns = [_count(pivot.c.bits).label("total")]
        return sa.select(*total, *counts)

    row = await run_pivot(conn, brand, today, ("breakdown", node, by, tuple(values)), statement)
    return int(row["total"]), {value: int(row[f"v{i}"]) for i, value in enumerate(values)}


async def funnel(conn: AsyncConnection[Any], brand: BrandCatalog, node: Bound, today: date) -> list[FunnelStep]:
    """Live members, then the count after each operand of the top-level AND, in order."""
    operands: Sequence[Bound] = node.operands if isinstance(node, BoundAnd) else (node,)
    parts = [_audience(operand, brand) for operand in operands]

    def statement(compiler: BitmapCompiler) -> sa.Select[Any]:
        columns = {"u": compiler.universe} | {f"o{i}": part(compiler) for i, part in enumerate(parts)}
        pivot = compiler.pivot.select(audience_bitmaps, columns).subquery()
        steps: Columns = []
        acc: Bits = pivot.c.u
        for i in range(len(parts)):
            acc = bitand(acc, pivot.c[f"o{i}"])
            steps.append(_count(acc).label(f"s{i}"))
        return sa.select(*[_count(pivot.c.u).label("u"), *steps])

    row = await run_pivot(conn, brand, today, ("funnel", node), statement)
    counts = [int(row["u"]), *(int(row[f"s{i}"]) for i in range(len(parts)))]
    steps = [FunnelStep(None, counts[0], 0)]
    steps += [FunnelStep(op, counts[i + 1], counts[i] - counts[i + 1]) for i, op in enumerate(operands)]
    return steps


def is_exclusion(step: FunnelStep) -> bool:
    """A step that removes members by a NOT (`AND NOT tag:x`)."""
    return isinstance(step.operand, BoundNot)


async def freshness(conn: AsyncConnection[Any], brand: BrandCatalog) -> Freshness:
    return await index_freshness(conn, brand.brand_id)


@dataclasses.dataclass(frozen=True, slots=True)
class Why:
    node: Bound
    value: bool
    children: tuple[Why, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class WhyMember:
    member_id: int
    live: bool
    """False for a member merged into another or erased: it is in no audience, whatever the tree says."""
    matches: bool
    tree: Why


async def why_member(
    conn: AsyncConnection[Any], brand: BrandCatalog, node: Bound, today: date, member_id: int
) -> WhyMember:
    """Each node's truth value for one member, from its facts in the system of record."""
    facts = await member_facts(conn, brand.brand_id, brand.timezone, member_id, today, brand.lifecycle, brand.rfm)
    if facts is None:
        raise DomainError(ErrorCode.UNKNOWN_MEMBER, f"no member {member_id} in this brand", field="id")
    tree = _why(node, facts, today)
    live = facts["merged_into"] is None and facts["erased_at"] is None
    return WhyMember(member_id=member_id, live=live, matches=live and tree.value, tree=tree)


def _why(node: Bound, facts: Mapping[str, Any], today: date) -> Why:
    children = tuple(_why(child, facts, today) for child in _children(node))
    return Why(node, evaluate(node, facts, today), children)


def _children(node: Bound) -> Sequence[Bound]:
    if isinstance(node, BoundAnd | BoundOr):
        return node.operands
    return (node.operand,) if isinstance(node, BoundNot) else ()

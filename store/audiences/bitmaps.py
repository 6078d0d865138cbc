"""Building the audience bitmap index: facts -> bits (numpy) -> rows (binary COPY).

`bit_sets` turns IndexFacts into "key -> members whose bit is set" (tagquery.bitmap_keys has the
scheme); `chunk_rows` packs each key's members into 2^16-bit rows per chunk; `copy_rows` writes
them with COPY in the binary format (a varbit is a bit count and packed bytes, MSB first, which
is exactly what numpy's packbits gives).

`rebuild` replaces a brand's rows in one transaction, so readers see the old index or the new one,
never a half-built one.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
import sqlalchemy as sa
from psycopg import AsyncConnection, AsyncCursor
from psycopg.conninfo import make_conninfo
from psycopg.errors import LockNotAvailable, QueryCanceled
from psycopg.types.json import Jsonb

from store.audiences.index_facts import (
    NULL,
    VALUE_COLUMNS,
    Ids,
    IndexFacts,
    Lines,
    among,
    line_facts,
    live_lines,
    load_index_facts,
    member_facts,
)
from store.audiences.purchases import by_rank, line_keys, purchase_keys
from store.audiences.stage_days import stage_keys
from store.brands import for_each_brand
from store.sql import Query
from store.tables import audience_bitmaps, audience_changes, audience_index_state
from tagquery.bitmap_keys import (
    BANDS,
    CHUNK_BITS,
    CHUNK_SIZE,
    DATE_FIELDS,
    DATE_WIDTH,
    ENCODING_STATE,
    ENCODING_VERSION,
    INTEGER_FIELDS,
    MAX_DAY,
    NULLABLE,
    Layout,
    band_key,
    bit_key,
    built_layout,
    digit_key,
    has_key,
    layout_state,
    order_field,
    stored_layout,
)

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

log = logging.getLogger(__name__)
Progress = Callable[[str, int, int], None]
"""(stage, done, total): how far a rebuild is."""
Row = tuple[str, int, bytes]
"""(key, chunk, packed bits)."""


_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_COPY_TRAILER = struct.pack(">h", -1)
_BITS_HEADER = struct.pack(">ii", 4 + CHUNK_SIZE // 8, CHUNK_SIZE)
_COPY_BATCH = 1 << 20
# Below this many members a key's rows are set bit by bit (measured: 10-100 ids 35-50 us against
# 50-90 us packing booleans; from about 1,000 packing wins). Purchase keys are mostly this sparse.
_SPARSE = 512
_SPARSE_BATCH = 4096  # members of the sparse keys packed together: at most as many 8 KB rows
_SPAN = 256  # chunks a large key's booleans may span (16 MB), empty ones included; beyond, only its own

_lock = Query(sa.select(sa.func.pg_advisory_xact_lock(sa.literal(0x617564), sa.bindparam("brand_id"))))
_try_lock = Query(sa.select(sa.func.pg_try_advisory_xact_lock(sa.literal(0x617564), sa.bindparam("brand_id"))))
drain = Query(
    sa.delete(audience_changes)
    .where(audience_changes.c.brand_id == sa.bindparam("brand_id"))
    .returning(audience_changes.c.member_id, audience_changes.c.families)
)
_clear = Query(sa.delete(audience_bitmaps).where(audience_bitmaps.c.brand_id == sa.bindparam("brand_id")))
_upsert_state = Query(
    sa.text(
        "INSERT INTO audience_index_state (brand_id, built_at, applied_at, widths) "
        "VALUES (:brand_id, now(), now(), :widths) "
        "ON CONFLICT (brand_id) DO UPDATE SET built_at = now(), applied_at = now(), widths = EXCLUDED.widths"
    )
)
_widths = Query(
    sa.select(audience_index_state.c.widths).where(audience_index_state.c.brand_id == sa.bindparam("brand_id"))
)


def lock_brand(conn: AsyncConnection[Any], brand_id: int, *, wait: bool) -> Any:
    """Serialise index writers of one brand for the rest of the transaction."""
    return (_lock if wait else _try_lock).scalar(conn, brand_id=brand_id)


# Bitmaps (8 KB a chunk) landing in a temporary table are compressed as the table they are bound
# for compresses its own (lz4 where the server has it, set in 0004 and 0011), not with the default
# pglz, which measured 15x the CPU of lz4 for a delta's rows (60 ms against 4 ms for 200 of them).
_compress_like = Query(
    sa.text("""
SELECT set_config('default_toast_compression',
                  CASE attcompression WHEN 'l' THEN 'lz4' ELSE current_setting('default_toast_compression') END,
                  true)
FROM pg_attribute WHERE attrelid = CAST(:table AS regclass) AND attname = 'bits'
""")
)


async def compress_like(conn: AsyncConnection[Any], table: str) -> None:
    """For the rest of the transaction, new TOASTed values compressed as `table`'s `bits` column is."""
    await _compress_like.run(conn, table=table)


_setting = Query(sa.select(sa.func.set_config(sa.bindparam("name"), sa.bindparam("value"), True)))
Done = TypeVar("Done")


async def locked_pass(
    conn: AsyncConnection[Any],
    brand_id: int,
    work: Callable[[], Awaitable[Done]],
    *,
    wait: bool,
    lock_timeout: float | None = None,
    budget: float | None = None,
) -> Done | None:
    """`work` in a transaction of its own under the brand's index lock (the lifecycle and rule-tag
    passes). None, with nothing written, when another process holds the lock (unless `wait`; with
    `lock_timeout`, after waiting that many seconds for it) or when a statement ran past `budget`
    seconds: a request's share of work its brand is too large for, which the scheduled pass does.
    Without a budget, statements have no time limit (maintenance: a whole brand)."""
    waits = wait or lock_timeout is not None
    try:
        async with conn.transaction():
            await _setting.run(conn, name="statement_timeout", value=_milliseconds(budget))
            if lock_timeout is not None:
                await _setting.run(conn, name="lock_timeout", value=_milliseconds(lock_timeout))
            if not await lock_brand(conn, brand_id, wait=waits) and not waits:
                return None
            return await work()
    except (LockNotAvailable, QueryCanceled):
        return None


def _milliseconds(seconds: float | None) -> str:
    return "0" if seconds is None else f"{max(1, round(seconds * 1000))}ms"


@dataclasses.dataclass(frozen=True, slots=True)
class DigitColumn:
    """A field stored as range-encoded digits: its present members (ascending), their values as
    encoded (less the layout's base), and the layout."""

    field: str
    ids: Ids
    values: Ids
    layout: Layout


@dataclasses.dataclass(frozen=True, slots=True)
class BitSets:
    keys: dict[str, Ids]
    """Key -> members whose bit is set, for every key but the digits'."""
    digits: list[DigitColumn]
    """The digit fields, packed chunk by chunk straight into rows (`digit_rows`)."""
    widths: dict[str, int]
    """The digit fields' layouts as the index state records them (tagquery.bitmap_keys.layout_state)."""


class BeforeBase(Exception):
    """A delta holds a day before its field's base: only a rebuild can store it."""


def bit_sets(facts: IndexFacts, state: Mapping[str, int] | None = None) -> BitSets:
    """What the index holds for these members (tagquery.bitmap_keys), before it is packed into rows:
    for a build, each digit field laid out for its values; for a delta, as the index `state` has it
    (widened where a value needs more digits; BeforeBase where a day is before its field's base)."""
    import numpy as np  # lazily: a count needs none (issue 16)

    keys = dict(facts.sets)
    values = facts.values
    order = np.argsort(values[:, 0], kind="stable")  # by member id: digit_rows walks chunk by chunk
    values = values[order]
    ids = values[:, 0]
    widths: dict[str, int] = {}
    digits: list[DigitColumn] = []
    for field in (*INTEGER_FIELDS, *DATE_FIELDS):
        column = values[:, VALUE_COLUMNS.index(field)]
        if field in DATE_FIELDS:
            present = column != NULL
            if field in NULLABLE:
                keys[has_key(field)] = ids[present]
            members, column = ids[present], np.clip(column[present], 0, MAX_DAY)
        else:
            members, column = ids, np.maximum(column, 0)
            keys.update(_bands(field, ids, column, BANDS.get(field, ())))
        lowest, highest = int(column.min(initial=MAX_DAY)), int(column.max(initial=0))
        layout = _layout(field, lowest, highest, state)
        widths.update(layout_state(field, layout))
        digits.append(DigitColumn(field, members, column - layout.base, layout))
    for k, nth in by_rank(facts.orders, 1):
        field = order_field(k)
        keys[has_key(field)] = nth[:, 0]
        keys.update(_slices(field, nth[:, 0], np.clip(nth[:, 2], 0, MAX_DAY), DATE_WIDTH))
    keys.update(purchase_keys(facts.orders, facts.categories, facts.products))
    keys.update(stage_keys(facts.stages))
    return BitSets(keys, digits, widths)


def _layout(field: str, lowest: int, highest: int, state: Mapping[str, int] | None) -> Layout:
    if state is None:
        return built_layout(field, min(lowest, highest), highest)
    stored = stored_layout(state, field)
    if lowest < stored.base and lowest <= highest:
        raise BeforeBase(f"{field}: day {lowest} is before the index's base {stored.base}")
    width = max(stored.width, (highest - stored.base).bit_length())
    return dataclasses.replace(stored, width=width)


def index_rows(
    sets: BitSets,
    members: Callable[[str], Ids | None] = lambda key: None,
    progress: Callable[[int, int], None] = lambda done, total: None,
) -> Iterator[Row]:
    """Every row of `sets`: each key's members packed per chunk, then each digit field's. With
    `members`, only those it names for a key (sorted; None: all), as a delta recomputes them;
    `progress` hears (keys and digit fields done, of how many) after each."""
    total = len(sets.keys) + len(sets.digits)
    sparse: list[tuple[str, Ids]] = []  # consecutive sparse keys, packed together (sparse_rows)
    pending = 0  # their members
    for done, (key, ids) in enumerate(sorted(sets.keys.items()), start=1):
        chosen = members(key)
        ids = ids if chosen is None else ids[among(ids, chosen)]
        if ids.size >= _SPARSE or pending + ids.size > _SPARSE_BATCH:
            yield from sparse_rows(sparse)
            sparse.clear()
            pending = 0
        if ids.size >= _SPARSE:
            yield from chunk_rows(key, ids)
        else:
            sparse.append((key, ids))
            pending += ids.size
        progress(done, total)
    yield from sparse_rows(sparse)
    for done, column in enumerate(sets.digits, start=len(sets.keys) + 1):
        yield from digit_rows(column, members(digit_key(column.field, 0, 1)))
        progress(done, total)


def digit_rows(column: DigitColumn, members: Ids | None = None) -> Iterator[Row]:
    """The column's range-encoded digits (digit i >= j for j = 1 .. 2^bits - 1), chunk by chunk: per chunk
    and digit, one row for each j up to the chunk's highest digit. Built from a (digit, member)
    matrix OR-accumulated down the digits, not from the members of each key: sorting and copying
    the members once per key was a third of a rebuild. `members` (sorted): only those."""
    import numpy as np  # lazily: a count needs none (issue 16)

    ids, values = column.ids, column.values
    if members is not None:
        keep = among(ids, members)
        ids, values = ids[keep], values[keep]
    if not ids.size:
        return
    high = ids >> CHUNK_BITS
    starts = np.flatnonzero(np.diff(high, prepend=-1))
    for start, end in zip(starts.tolist(), [*starts[1:].tolist(), ids.size], strict=True):
        chunk, low, chunk_values = int(high[start]), ids[start:end] & (CHUNK_SIZE - 1), values[start:end]
        for digit in range(column.layout.digits):
            digits = column.layout.digit(chunk_values, digit)
            top = int(digits.max())
            if not top:
                continue
            packed = _at_least_rows(low, digits, top)
            for at_least in range(1, top + 1):
                yield digit_key(column.field, digit, at_least), chunk, packed[at_least - 1].tobytes()


def _at_least_rows(low: Ids, digits: Ids, top: int) -> npt.NDArray[np.uint8]:
    """Row j - 1: the members (bit `low`) whose digit is >= j, for j = 1 .. top, packed."""
    import numpy as np  # lazily: a count needs none (issue 16)

    if low.size < _SPARSE:  # set the bits in place: (member, j) pairs, one per j up to its digit
        rows = np.zeros((top, CHUNK_SIZE // 8), dtype=np.uint8)
        member = np.repeat(np.arange(low.size), digits)
        at_least = np.arange(member.size) - np.repeat(np.cumsum(digits) - digits, digits)
        bits = low[member]
        np.bitwise_or.at(rows, (at_least, bits >> 3), np.uint8(128) >> (bits & 7).astype(np.uint8))
        return rows
    held = np.zeros((top + 1, CHUNK_SIZE), dtype=np.bool_)
    held[digits, low] = True
    rows = np.packbits(held[1:], axis=1)  # row j - 1: the members whose digit is j
    # ... then >= j, OR-ed from the top down a packed row at a time: logical_or.accumulate down the
    # first axis walked the matrix column by column, 12 of a 600,000-member rebuild's 15 s of packing.
    for row in range(top - 2, -1, -1):
        np.bitwise_or(rows[row], rows[row + 1], out=rows[row])
    return rows


def _bands(field: str, ids: Ids, values: Ids, boundaries: Iterable[int]) -> Iterator[tuple[str, Ids]]:
    for boundary in boundaries:
        chosen = ids[values >= boundary]
        if chosen.size:
            yield band_key(field, boundary), chosen


def _slices(field: str, ids: Ids, values: Ids, width: int) -> Iterator[tuple[str, Ids]]:
    for bit in range(width):
        chosen = ids[(values >> bit) & 1 == 1]
        if chosen.size:
            yield bit_key(field, bit), chosen


def chunk_rows(key: str, ids: Ids) -> Iterator[Row]:
    """One row per chunk that holds any of `ids` (in any order, repeats allowed): 2^16 bits, bit
    (id & 0xFFFF) set."""
    import numpy as np  # lazily: a count needs none (issue 16)

    if ids.size < _SPARSE:  # set the bits in place: no 64 Ki booleans per chunk to pack
        yield from sparse_rows([(key, ids)])
        return
    high = ids >> CHUNK_BITS
    first, last = int(high.min()), int(high.max())
    # Every chunk from the first to the last, the empty ones dropped once packed: a key this large
    # holds members of nearly every chunk of its brand, and no sort or grouping of its members is
    # needed (they were most of its packing). Members spread over more chunks: only those held.
    spread = last - first >= _SPAN
    chunks, row_of = np.unique(high, return_inverse=True) if spread else (None, high - first)
    held = np.zeros((last - first + 1 if chunks is None else chunks.size, CHUNK_SIZE), dtype=np.bool_)
    held[row_of, ids & (CHUNK_SIZE - 1)] = True
    rows = np.packbits(held, axis=1)
    if chunks is None:
        present = np.flatnonzero(rows.any(axis=1))
        chunks, rows = present + first, rows[present]
    for chunk, packed in zip(chunks.tolist(), rows, strict=True):
        yield key, chunk, packed.tobytes()


def sparse_rows(keys: Sequence[tuple[str, Ids]]) -> Iterator[Row]:
    """chunk_rows of each of these keys (each of few members), in their order, packed at once: a
    rebuild has thousands of sparse keys (purchase days), and numpy's fixed cost per call, paid per
    key, was most of their packing."""
    import numpy as np  # lazily: a count needs none (issue 16)

    if not keys:
        return
    ids = np.concatenate([members for _, members in keys])
    key_of = np.repeat(np.arange(len(keys)), [members.size for _, members in keys])
    rows, row_of = np.unique((key_of << 32) | (ids >> CHUNK_BITS), return_inverse=True)  # by key, then chunk
    low = ids & (CHUNK_SIZE - 1)
    packed = np.zeros((rows.size, CHUNK_SIZE // 8), dtype=np.uint8)
    np.bitwise_or.at(packed, (row_of, low >> 3), np.uint8(128) >> (low & 7).astype(np.uint8))
    for row, bits in zip(rows.tolist(), packed, strict=True):
        yield keys[row >> 32][0], row & 0xFFFFFFFF, bits.tobytes()


def binary_rows(rows: Iterator[tuple[Any, ...]], formats: str) -> Iterator[bytes]:
    """COPY BINARY data for rows of (int8 'q' | int4 'i' | text 't' | chunk bits 'b') fields."""
    yield _COPY_HEADER
    count = struct.pack(">h", len(formats))
    for row in rows:
        parts = [count]
        for kind, value in zip(formats, row, strict=True):
            if kind == "q":
                parts.append(struct.pack(">iq", 8, value))
            elif kind == "i":
                parts.append(struct.pack(">ii", 4, value))
            elif kind == "t":
                text = value.encode()
                parts.append(struct.pack(">i", len(text)) + text)
            else:
                parts.append(_BITS_HEADER + value)
        yield b"".join(parts)
    yield _COPY_TRAILER


async def copy_rows(cur: AsyncCursor[Any], statement: str, data: Iterator[bytes]) -> None:
    """COPY `data`, each batch packed in a worker thread: packing bits is CPU work (seconds for a large
    brand's rebuild), and the server's applier shares its event loop with every request."""
    async with cur.copy(statement) as copy:
        while (batch := await asyncio.to_thread(_next_batch, data)) is not None:
            await copy.write(batch)


def _next_batch(data: Iterator[bytes]) -> bytes | None:
    """About _COPY_BATCH bytes of `data` (None once it is spent)."""
    buffer: list[bytes] = []
    size = 0
    for part in data:
        buffer.append(part)
        size += len(part)
        if size >= _COPY_BATCH:
            break
    return b"".join(buffer) if buffer else None


async def rebuild(
    conn: AsyncConnection[Any],
    brand_id: int,
    progress: Progress | None = None,
    layout: Mapping[str, int] | None = None,
    *,
    parallel_reads: bool = False,
) -> int:
    """Replace the brand's index with one built from the system of record; returns rows written.

    Runs inside the caller's transaction. Changes queued before it are covered by the build and
    dropped; changes committed while it runs stay queued for the next delta. Each digit field is
    laid out for its values, or as `layout` (an index state's) says. With `parallel_reads`, the
    reads run on two other connections at once, and the order lines' keys are written while the rest
    is read (_lines_first): only for a caller whose transaction has written no fact of the brand (the
    applier, `omnimember refresh`), the others cannot see those.
    """
    report = progress or (lambda stage, done, total: None)
    report("waiting for the brand's lock", 0, 1)  # a running applier or build holds it meanwhile
    await lock_brand(conn, brand_id, wait=True)
    await drain.all(conn, brand_id=brand_id)
    report("clearing the old index", 0, 1)
    await _clear.run(conn, brand_id=brand_id)  # first: no read below reads the index
    written = 0
    async with contextlib.AsyncExitStack() as stack:
        first, second = (
            [await stack.enter_async_context(_reader(conn)) for _ in range(2)] if parallel_reads else [None, None]
        )
        if first is not None and second is not None:
            written, sets = await _lines_first(conn, brand_id, first, second, layout, report)
        else:
            report("reading facts", 0, 1)
            facts = await load_index_facts(conn, brand_id, None, first or second)
            report("computing bitmaps", 0, 1)
            sets = await asyncio.to_thread(bit_sets, facts, layout)  # CPU work, off the event loop (copy_rows)
    written += await _write(conn, brand_id, sets, lambda done, total: report("writing bitmaps", done, total))
    # Only a full build writes every key of the encoding: deltas keep this marker, never set it.
    await _upsert_state.run(conn, brand_id=brand_id, widths=Jsonb({**sets.widths, ENCODING_STATE: ENCODING_VERSION}))
    return written


async def _lines_first(
    conn: AsyncConnection[Any],
    brand_id: int,
    first: AsyncConnection[Any],
    second: AsyncConnection[Any],
    layout: Mapping[str, int] | None,
    report: Progress,
) -> tuple[int, BitSets]:
    """A rebuild's reads on two other connections, `second` reading the order lines while `first`
    reads the rest; the lines' keys (most of a brand's keys, and of its computing) are computed and
    written as soon as the lines and the live members are in, and the other keys are computed as
    soon as their facts are, each while the rest is read or written. Returns the rows written and
    the other keys, to be written. Measured on a 600,000-member brand: one core idled through a
    third of a rebuild done in turn, Python computing and packing while PostgreSQL waited, then the
    reverse."""
    report("reading facts", 0, 1)
    universe_known: asyncio.Future[Ids] = asyncio.get_running_loop().create_future()
    members = asyncio.ensure_future(member_facts(first, brand_id, None, universe_known))

    async def member_sets() -> BitSets:
        return await asyncio.to_thread(bit_sets, await members, layout)  # CPU work, off the event loop

    computing = asyncio.ensure_future(member_sets())
    try:
        lines = await line_facts(second, brand_id)
        await asyncio.wait((universe_known, members), return_when=asyncio.FIRST_COMPLETED)
        if not universe_known.done():
            members.result()  # raises what stopped it before the live members were read
        keys = await asyncio.to_thread(_line_sets, lines, universe_known.result())
        report("writing purchase keys", 0, len(keys))
        written = await _write(
            conn, brand_id, BitSets(keys, [], {}), lambda done, total: report("writing purchase keys", done, total)
        )
        report("computing bitmaps", 0, 1)
        return written, await computing
    finally:
        for task in (computing, members):  # stopped if still running; their outcome retrieved either way
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


def _line_sets(lines: Lines, universe: Ids) -> dict[str, Ids]:
    return dict(line_keys(*live_lines(lines, universe)))


async def _write(conn: AsyncConnection[Any], brand_id: int, sets: BitSets, progress: Callable[[int, int], None]) -> int:
    """COPY the rows of `sets` into the brand's index; returns how many."""
    written = 0

    def rows() -> Iterator[tuple[int, str, int, bytes]]:
        nonlocal written
        for row in index_rows(sets, progress=progress):
            written += 1
            yield (brand_id, *row)

    async with conn.cursor() as cur:
        copy = "COPY audience_bitmaps (brand_id, key, chunk, bits) FROM STDIN (FORMAT BINARY)"
        await copy_rows(cur, copy, binary_rows(rows(), "qtib"))
    return written


@contextlib.asynccontextmanager
async def _reader(conn: AsyncConnection[Any]) -> AsyncIterator[AsyncConnection[Any] | None]:
    """Another connection to `conn`'s database, without a statement time limit (maintenance); None
    when the server refuses one (its connection limit): the reads then run on fewer."""
    try:
        conninfo = make_conninfo(conn.info.dsn, password=conn.info.password)
        other = await AsyncConnection.connect(conninfo, autocommit=True)
    except psycopg.OperationalError:
        log.warning("index rebuild: the server refused a reading connection; reading on fewer")
        yield None
        return
    async with other:
        await other.execute("SET statement_timeout = 0")
        yield other


async def stored_widths(conn: AsyncConnection[Any], brand_id: int) -> Mapping[str, int]:
    widths: Mapping[str, int] | None = await _widths.scalar(conn, brand_id=brand_id)
    return widths or {}


@dataclasses.dataclass(frozen=True, slots=True)
class Refreshed:
    brand: str
    rows: int
    seconds: float


async def refresh(url: str, brand: str | None, progress: Callable[[str], Progress] | None = None) -> list[Refreshed]:
    """Rebuild the index of one brand (by code) or of every brand, one transaction per brand."""

    async def rebuilt(conn: AsyncConnection[Any], row: dict[str, Any]) -> Refreshed:
        started = time.perf_counter()
        report = progress(row["code"]) if progress is not None else (lambda stage, done, total: None)
        async with conn.transaction():
            rows = await rebuild(conn, row["id"], report, parallel_reads=True)
            report("committing", 0, 1)
        report("done", 1, 1)
        return Refreshed(row["code"], rows, time.perf_counter() - started)

    return [refreshed for _, refreshed in await for_each_brand(url, brand, rebuilt)]

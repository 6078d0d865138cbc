"""Overlap: how a brand's channels share its members, and a group's brands share persons.

**Channels** (多渠道会员重合率), from the bitmap index in one statement over the pivot form: the
`channel:<c>` keys of every chunk (and the audience's bitmap, compiled like any count, when an
expression narrows it), then per chunk each channel's members, every pair's intersection
(`bit_count(bitand(a, b))`), the members in two channels or more, and the sums over the chunks.
Like `engine.count`, a brand of SPLIT_CHUNKS chunks or more is summed in two halves on two
connections.

**Brands**, through the person key: members of different brands are different rows, and the same
person is the same phone hash within a group (`Member.person`). A brand's count is its live
members, from its index's universe (`u`), as every audience count is; who is in two brands comes
from the person index (store.audiences.persons): each brand's persons as bitmaps over the group's
person ids, read in one statement, each person's brands as the bits of an integer (numpy), and the
persons in two brands or more counted per set of brands. Both are as of the applier's last pass.

Rates: `rate` is both / (A + B - both), those in both over those in either (Jaccard: symmetric, 1
when the two hold the same members); `share_of_a` is both / A (of A's members, the share also in B:
what 重合率 usually means when said of one channel), `share_of_b` likewise. Each is None when its
denominator is 0.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Callable, Mapping, Sequence
from datetime import date
from typing import Any

import sqlalchemy as sa
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from store.audiences import persons
from store.audiences.catalogs import BrandCatalog
from store.audiences.engine import SPLIT_CHUNKS, run_pivot
from store.audiences.facts import expand_derived
from store.audiences.selections import IndexNotReadyError
from store.errors import DomainError, ErrorCode
from store.sql import Query, Row
from store.tables import CHANNELS, audience_bitmaps
from tagquery.bitmap_keys import UNIVERSE, value_key
from tagquery.bound import Bound
from tagquery.compile_bitmap import BitmapCompiler, Bits, bitand, bitor, or_all

# A person's brands travel as the bits of a bigint.
MAX_GROUP_BRANDS = 63
# OFFSET 0 keeps each level a subquery of its own, so a column used by several expressions above
# is computed once per chunk, not once per use (the planner would inline it otherwise).
_FENCE: sa.ColumnElement[int] = sa.literal_column("0", sa.Integer)


@dataclasses.dataclass(frozen=True, slots=True)
class Pair:
    """Two channels (or brands) and how many members (persons) they share."""

    a: str
    b: str
    count_a: int
    count_b: int
    both: int

    @property
    def rate(self) -> float | None:
        """Those in both over those in either (Jaccard)."""
        return _ratio(self.both, self.count_a + self.count_b - self.both)

    @property
    def share_of_a(self) -> float | None:
        """The share of A's members also in B."""
        return _ratio(self.both, self.count_a)

    @property
    def share_of_b(self) -> float | None:
        return _ratio(self.both, self.count_b)


@dataclasses.dataclass(frozen=True, slots=True)
class Part:
    """One channel (or brand): its members, and those in no other channel (brand)."""

    name: str
    count: int
    exclusive: int


@dataclasses.dataclass(frozen=True, slots=True)
class ChannelOverlap:
    total: int
    """Members considered: the audience's, or every live member of the brand."""
    with_channel: int
    """Members with an identity of at least one channel."""
    multi_channel: int
    """Members with identities of two channels or more."""
    channels: list[Part]
    pairs: list[Pair]
    """Every pair of channels once, in CHANNELS order."""


@dataclasses.dataclass(frozen=True, slots=True)
class BrandOverlap:
    brand_ids: list[int]
    """The group's brands, in `brands` order."""
    brands: list[Part]
    pairs: list[Pair]
    persons: int
    """Distinct persons among the brands' live members (a member without a phone is a person of its own)."""
    multi_brand: int
    """Persons with a live member in two brands or more."""


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _count(bits: Bits) -> sa.ColumnElement[int]:
    return sa.func.coalesce(sa.func.sum(sa.func.bit_count(bits)), 0)


def _pairs(names: Sequence[str], counts: Sequence[int], both: Mapping[tuple[int, int], int]) -> list[Pair]:
    return [
        Pair(names[i], names[j], counts[i], counts[j], both.get((i, j), 0))
        for i, j in itertools.combinations(range(len(names)), 2)
    ]


# --- channels ------------------------------------------------------------------------------------------


def _at_least_two(columns: Sequence[Bits]) -> Bits:
    """Members in two or more of `columns`: fold `two |= one & c; one |= c` over them."""
    one, two = columns[0], None
    for column in columns[1:]:
        both = bitand(one, column)
        two = both if two is None else bitor(two, both)
        one = bitor(one, column)
    assert two is not None, "two channels or more"
    return two


def _channel_statement(audience: Bound | None, channels: Sequence[str]) -> Callable[[BitmapCompiler], sa.Select[Any]]:
    """Per chunk: the scope (the audience, or the universe), each channel's members within it, the
    members in two channels or more; then the sums."""

    def statement(compiler: BitmapCompiler) -> sa.Select[Any]:
        scope = compiler.universe if audience is None else compiler.bitmap(audience)
        keys = {f"k{i}": compiler.pivot(value_key("channel", c)) for i, c in enumerate(channels)}
        pivot = compiler.pivot.select(audience_bitmaps, {"t": scope, **keys}).subquery("p")
        # Channel rows hold live members only (store.audiences.bitmaps), so without an audience a
        # channel's row is its members; with one, its members within the audience.
        within = [pivot.c[k] if audience is None else bitand(pivot.c[k], pivot.c.t) for k in keys]
        level = sa.select(pivot.c.t, *(bits.label(f"c{i}") for i, bits in enumerate(within))).offset(_FENCE)
        c = level.subquery("c")
        each = [c.c[f"c{i}"] for i in range(len(channels))]
        folded = sa.select(c, or_all(each).label("any"), _at_least_two(each).label("multi")).offset(_FENCE)
        f = folded.subquery("f")
        sums: list[sa.ColumnElement[Any]] = [
            _count(f.c.t).label("total"),
            _count(f.c.any).label("any"),
            _count(f.c.multi).label("multi"),
        ]
        for i in range(len(channels)):
            sums.append(_count(f.c[f"c{i}"]).label(f"n{i}"))
            # Its members in another channel too: one operation where `c & ~multi` took two.
            sums.append(_count(bitand(f.c[f"c{i}"], f.c.multi)).label(f"s{i}"))
        for i, j in itertools.combinations(range(len(channels)), 2):
            sums.append(_count(bitand(f.c[f"c{i}"], f.c[f"c{j}"])).label(f"p{i}_{j}"))
        return sa.select(*sums)

    return statement


async def channel_sums(
    conn: AsyncConnection[Any],
    brand: BrandCatalog,
    node: Bound | None,
    today: date,
    *,
    channels: Sequence[str] = CHANNELS,
    **chunks: int,
) -> Row:
    """One statement's sums (`total`, `any`, `multi`, `n<i>`, `s<i>`, `p<i>_<j>`) over the chunks
    from `from_chunk` and below `to_chunk` (default: all of them)."""
    statement = _channel_statement(None if node is None else expand_derived(node, brand.lifecycle, brand.rfm), channels)
    return await run_pivot(conn, brand, today, ("channel_overlap", node, tuple(channels)), statement, **chunks)


async def channel_overlap(
    conn: AsyncConnection[Any],
    brand: BrandCatalog,
    node: Bound | None,
    today: date,
    *,
    pool: AsyncConnectionPool[Any] | None = None,
    channels: Sequence[str] = CHANNELS,
) -> ChannelOverlap:
    """Every channel's members and every pair's intersection, among the brand's live members or the
    audience `node` selects (bound against the brand's catalog)."""
    first, last = brand.chunks
    if pool is None or last - first + 1 < SPLIT_CHUNKS:
        return _channels_of(await channel_sums(conn, brand, node, today, channels=channels), channels)
    middle = (first + last + 1) // 2

    async def upper() -> Row:
        async with pool.connection() as second:
            return await channel_sums(second, brand, node, today, channels=channels, from_chunk=middle)

    lower, higher = await asyncio.gather(
        channel_sums(conn, brand, node, today, channels=channels, to_chunk=middle), upper()
    )
    summed = {name: int(lower[name]) + int(higher[name]) for name in lower if name != "widths"}
    return _channels_of(summed, channels)


def _channels_of(row: Row, channels: Sequence[str]) -> ChannelOverlap:
    counts = [int(row[f"n{i}"]) for i in range(len(channels))]
    parts = [Part(c, counts[i], counts[i] - int(row[f"s{i}"])) for i, c in enumerate(channels)]
    both = {(i, j): int(row[f"p{i}_{j}"]) for i, j in itertools.combinations(range(len(channels)), 2)}
    return ChannelOverlap(
        total=int(row["total"]),
        with_channel=int(row["any"]),
        multi_channel=int(row["multi"]),
        channels=parts,
        pairs=_pairs(channels, counts, both),
    )


# --- brands --------------------------------------------------------------------------------------------

_universes = Query(
    sa.select(audience_bitmaps.c.brand_id, _count(audience_bitmaps.c.bits).label("n"))
    .where(
        audience_bitmaps.c.brand_id == sa.any_(sa.bindparam("brand_ids", type_=sa.ARRAY(sa.BigInteger))),
        audience_bitmaps.c.key == UNIVERSE,
    )
    .group_by(audience_bitmaps.c.brand_id)
)


async def brand_overlap(
    conn: AsyncConnection[Any], catalogs: Sequence[BrandCatalog], codes: Sequence[str]
) -> BrandOverlap:
    """Every brand's live members and every pair's shared persons, for the brands of one group
    (`catalogs` and their `codes` in the same order)."""
    if len(catalogs) > MAX_GROUP_BRANDS:
        message = f"brandOverlap covers groups of up to {MAX_GROUP_BRANDS} brands, this one has {len(catalogs)}"
        raise DomainError(ErrorCode.INVALID_INPUT, message, field="group")
    ids = [catalog.brand_id for catalog in catalogs]
    rows = await _universes.all(conn, brand_ids=ids)
    by_brand = {row["brand_id"]: int(row["n"]) for row in rows}
    counts = [by_brand.get(brand_id, 0) for brand_id in ids]
    shared: list[tuple[int, int]] = []
    if len(ids) > 1:
        unbuilt, shared = await persons.shared_persons(conn, ids)
        for brand_id in unbuilt:
            if by_brand.get(brand_id, 0):  # a brand without live members has no persons to build
                # A brand older than the person index: the applier's next pass builds it.
                raise IndexNotReadyError(codes[ids.index(brand_id)], 0, index="person index")
    return _brands_of(ids, codes, counts, shared)


def _brands_of(ids: list[int], codes: Sequence[str], counts: list[int], shared: list[tuple[int, int]]) -> BrandOverlap:
    linked = [0] * len(ids)  # members whose person is in another brand too
    both: dict[tuple[int, int], int] = {}
    multi = extra = 0  # persons in 2+ brands; members beyond each such person's first
    for bits, n in shared:
        held = [i for i in range(len(ids)) if bits >> i & 1]
        multi += n
        extra += n * (len(held) - 1)
        for i in held:
            linked[i] += n
        for pair in itertools.combinations(held, 2):
            both[pair] = both.get(pair, 0) + n
    # Counts come from the audience index and links from the person index, both kept by the same
    # passes of the applier; should they ever disagree, never fewer than none exclusive.
    parts = [Part(code, counts[i], max(counts[i] - linked[i], 0)) for i, code in enumerate(codes)]
    return BrandOverlap(
        brand_ids=ids,
        brands=parts,
        pairs=_pairs(codes, counts, both),
        persons=max(sum(counts) - extra, multi),
        multi_brand=multi,
    )

"""Audiences: count, sample, break down, explain and save what an expression selects.

Reads go to the bitmap index through store.audiences.engine; each call opens one pooled connection for
its statement. Saving freezes the ids the index returns into a snapshot (store.audiences.saved).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any

import numpy as np
import numpy.typing as npt
from psycopg import AsyncConnection

from resolvers import cursors
from resolvers.context import Info
from resolvers.members import MAX_PAGE, Page, after_id
from store.audiences import engine, saved
from store.audiences.deltas import Freshness
from store.audiences.facts import expand_derived
from store.audiences.selections import Selection, catalog_cache, read_expression, select
from store.errors import DomainError, ErrorCode
from store.sql import Row
from store.tags.assignments import MAX_MEMBER_IDS, TooManyIdsError
from store.transactions import transact
from tagquery import GRAMMAR_VERSION, to_text
from tagquery.ast import And, Node, Not, Or
from tagquery.bitmap_keys import CHUNK_BITS
from tagquery.compile_bitmap import BitmapCompiler

Ids = npt.NDArray[np.int64]
_CHUNKS = range(-(2**31), 2**31)  # the index's chunk numbers (member id >> CHUNK_BITS) are int4
PLAN = "bitmap"
"""The plan every API read uses: the pivot form over the bitmap index (the row compiler and the
evaluator are references for tests, never served)."""


async def selection(
    info: Info, *, brand: str, expression: str | None, filter: object | None, field: str = "expression"
) -> Selection:
    """The brand's audience for exactly one of `expression` / `filter` (a plain-data AudienceFilter)."""
    node = read_expression(expression, filter, field=field)
    async with info.context.pool.connection() as conn:
        brand_row = await info.context.brands.get(conn, brand)
        return await _select(info, conn, brand_row, node, source=expression, field=field)


async def _select(
    info: Info, conn: AsyncConnection[Any], brand: Row, node: Node, *, source: str | None, field: str
) -> Selection:
    return await select(conn, catalog_cache(info.context.pool), brand, node, source=source, field=field)


async def count(info: Info, chosen: Selection) -> int:
    async with info.context.pool.connection() as conn:
        return await engine.count(conn, chosen.brand, chosen.bound, chosen.today, pool=info.context.pool)


async def member_ids(info: Info, chosen: Selection) -> Ids:
    async with info.context.pool.connection() as conn:
        return await engine.member_ids(conn, chosen.brand, chosen.bound, chosen.today)


async def capped_ids(info: Info, chosen: Selection) -> list[int]:
    """The audience's ids for a write that takes at most MAX_MEMBER_IDS (TOO_MANY_IDS beyond)."""
    ids = await member_ids(info, chosen)
    if ids.size > MAX_MEMBER_IDS:
        raise TooManyIdsError(int(ids.size))
    return [int(member_id) for member_id in ids]


async def sample(info: Info, chosen: Selection, *, first: int, after: str | None) -> Page:
    """A page of the audience's members in id order (keyset: ids above the cursor's)."""
    cursors.check_first(first, MAX_PAGE)
    after_id = _after(after)
    async with info.context.pool.connection() as conn:
        ids = await engine.sample(conn, chosen.brand, chosen.bound, chosen.today, first=first + 1, after=after_id)
    return await _page(info, chosen.brand.brand_id, ids, first, after_id, lambda: count(info, chosen))


async def id_page(info: Info, brand_id: int, ids: Ids, *, first: int, after: str | None) -> Page:
    """A page of members out of a sorted id array (a snapshot, a comparison)."""
    cursors.check_first(first, MAX_PAGE)
    after_id = _after(after)
    start = int(np.searchsorted(ids, after_id, side="right"))
    chosen = [int(member_id) for member_id in ids[start : start + first + 1]]

    async def total() -> int:
        return int(ids.size)

    return await _page(info, brand_id, chosen, first, after_id, total)


def _after(after: str | None) -> int:
    """The member id an audience page's cursor points after (0: from the start)."""
    found = after_id(after) or 0
    if found >> CHUNK_BITS not in _CHUNKS:  # no member of the index is that far: no page gave it
        raise DomainError(ErrorCode.INVALID_INPUT, "after is not a cursor of this connection", field="after")
    return found


async def _page(
    info: Info, brand_id: int, ids: Sequence[int], first: int, after_id: int, total: Callable[[], Awaitable[int]]
) -> Page:
    loaded = await info.context.loaders.member_by_id.load_many(list(ids[:first]))
    rows = [row for row in loaded if row is not None]
    return Page(brand_id, rows, has_next_page=len(ids) > first, has_previous_page=after_id > 0, total=total)


async def breakdown(info: Info, chosen: Selection, by: str) -> list[tuple[str, int]]:
    """Members per value of `by`, most first (values no member has are left out)."""
    async with info.context.pool.connection() as conn:
        _, per_value = await engine.breakdown(conn, chosen.brand, chosen.bound, chosen.today, by)
    return sorted(((v, n) for v, n in per_value.items() if n), key=lambda item: (-item[1], item[0]))


@dataclasses.dataclass(frozen=True, slots=True)
class Step:
    clause: str | None
    """The AND operand's canonical text (None: the brand's live members, before any operand)."""
    count: int
    removed: int
    exclusion: bool


@dataclasses.dataclass(frozen=True, slots=True)
class Explanation:
    expression: str
    plan: str
    index_keys: list[str]
    steps: list[Step]


async def explain(info: Info, chosen: Selection) -> Explanation:
    """The canonical text, the plan and the keys it reads, and the funnel of the top-level AND."""
    compiler = BitmapCompiler(chosen.brand.encoding, chosen.today)
    compiler.bitmap(expand_derived(chosen.bound, chosen.brand.lifecycle, chosen.brand.rfm))
    async with info.context.pool.connection() as conn:
        funnel = await engine.funnel(conn, chosen.brand, chosen.bound, chosen.today)
    clauses = chosen.node.operands if isinstance(chosen.node, And) else (chosen.node,)
    steps = [Step(None, funnel[0].count, 0, False)]
    steps += [
        Step(to_text(clause), step.count, step.removed, engine.is_exclusion(step))
        for clause, step in zip(clauses, funnel[1:], strict=True)
    ]
    return Explanation(chosen.text, PLAN, compiler.pivot.keys, steps)


@dataclasses.dataclass(frozen=True, slots=True)
class WhyLine:
    index: int
    parent: int | None
    depth: int
    text: str
    value: bool


@dataclasses.dataclass(frozen=True, slots=True)
class Why:
    member_id: int
    live: bool
    matches: bool
    nodes: list[WhyLine]
    """The expression tree in pre-order (a node, then its operands), each with its truth value."""


async def why_member(info: Info, chosen: Selection, member_id: int) -> Why:
    async with info.context.pool.connection() as conn:
        why = await engine.why_member(conn, chosen.brand, chosen.bound, chosen.today, member_id)
    lines: list[WhyLine] = []
    _flatten(chosen.node, why.tree, None, 0, lines)
    return Why(member_id, why.live, why.matches, lines)


def _flatten(node: Node, why: engine.Why, parent: int | None, depth: int, out: list[WhyLine]) -> None:
    index = len(out)
    out.append(WhyLine(index, parent, depth, to_text(node), why.value))
    for child, child_why in zip(_operands(node), why.children, strict=True):
        _flatten(child, child_why, index, depth + 1, out)


def _operands(node: Node) -> Sequence[Node]:
    if isinstance(node, And | Or):
        return node.operands
    return (node.operand,) if isinstance(node, Not) else ()


async def freshness(info: Info, chosen: Selection) -> Freshness:
    async with info.context.pool.connection() as conn:
        return await engine.freshness(conn, chosen.brand)


# --- saved audiences -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Saved:
    audience: Row
    snapshots: list[Row]
    """Newest first."""


async def save_audience(info: Info, *, brand: str, name: str, expression: str) -> Saved:
    """Store the canonical expression and a first snapshot, in one transaction."""
    saved.check_name(name)
    chosen = await selection(info, brand=brand, expression=expression, filter=None)
    ids = await member_ids(info, chosen)

    async def work(conn: AsyncConnection[Any]) -> int:
        audience_id = await saved.save(
            conn,
            brand_id=chosen.brand.brand_id,
            name=name,
            expression=chosen.text,
            grammar_version=GRAMMAR_VERSION,
        )
        await saved.take_snapshot(
            conn, audience_id=audience_id, brand_id=chosen.brand.brand_id, ids=ids, as_of_day=chosen.today
        )
        return audience_id

    return await saved_audience(info, await transact(info.context.pool, work))


async def saved_selection(info: Info, audience: Row) -> Selection:
    """The saved expression checked against the brand's catalog as it is now."""
    async with info.context.pool.connection() as conn:
        brand = await info.context.brands.get(conn, audience["brand_code"])
        node = read_expression(audience["expression"], None)
        return await _select(info, conn, brand, node, source=audience["expression"], field="expression")


async def refresh_audience(info: Info, *, audience_id: int) -> tuple[Saved, Row]:
    """A new snapshot of a saved audience, evaluated now; returns it with the audience."""
    found = await saved_audience(info, audience_id)
    chosen = await saved_selection(info, found.audience)
    ids = await member_ids(info, chosen)

    async def work(conn: AsyncConnection[Any]) -> Row:
        return await saved.take_snapshot(
            conn, audience_id=audience_id, brand_id=chosen.brand.brand_id, ids=ids, as_of_day=chosen.today
        )

    taken = await transact(info.context.pool, work, transaction=False)
    return await saved_audience(info, audience_id), taken


async def saved_audience(info: Info, audience_id: int) -> Saved:
    """The saved audience with its snapshots; raises UNKNOWN_AUDIENCE."""
    async with info.context.pool.connection() as conn:
        row = await saved.audience(conn, audience_id, info.context.brands.brand_ids)
        return Saved(row, await saved.snapshots_of(conn, [audience_id]))


async def saved_audiences(info: Info, *, brand: str) -> list[Saved]:
    """The brand's saved audiences, oldest first, their snapshots read in the same two statements."""
    brand_id = await info.context.brands.id_of(info.context.pool, brand)
    async with info.context.pool.connection() as conn:
        rows = await saved.audiences_of_brand(conn, brand_id)
        snapshots = await saved.snapshots_of(conn, [row["id"] for row in rows]) if rows else []
    return [Saved(row, [s for s in snapshots if s["audience_id"] == row["id"]]) for row in rows]


async def snapshot_ids(info: Info, snapshot_id: int) -> Ids:
    async with info.context.pool.connection() as conn:
        return await saved.snapshot_members(conn, snapshot_id)


@dataclasses.dataclass(frozen=True, slots=True)
class Comparison:
    before: Row
    after: Row
    difference: saved.Difference


async def compare_snapshots(info: Info, *, before_id: int, after_id: int) -> Comparison:
    """Who entered and who exited between two snapshots of one brand (any order of taking)."""
    async with info.context.pool.connection() as conn:
        before = await saved.snapshot(conn, before_id, info.context.brands.brand_ids, field="before")
        after = await saved.snapshot(conn, after_id, info.context.brands.brand_ids, field="after")
        if before["brand_id"] != after["brand_id"]:
            raise DomainError(ErrorCode.INVALID_INPUT, "the snapshots belong to different brands", field="after")
        difference = saved.compare(
            await saved.snapshot_members(conn, before_id), await saved.snapshot_members(conn, after_id)
        )
    return Comparison(before, after, difference)


def lag_seconds(fresh: Freshness) -> float | None:
    return None if fresh.lag is None else fresh.lag / timedelta(seconds=1)

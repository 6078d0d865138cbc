"""Keeping the bitmap index current: drain the change queue, rewrite the touched rows once.

Writers never touch the index: triggers (migration 0004) queue the ids of members whose facts
changed. `apply_brand` takes a brand's queue, adds members whose tags expired since the last run,
reloads those members' facts (the same queries as a full build), and per touched chunk rewrites
each (key, chunk) row whose bits for those members differ, in one UPDATE: `(bits & ~mask) | new`.
No per-member set_bit anywhere. A queue too large for a delta, or a rebuild request (member 0),
becomes a full rebuild. The lifecycle hook that follows may record changes of stage, which
queue the members' `stage` keys (`entered:`, migration 0017): a second delta applies them before
the transaction commits (`_apply_entries`). `run_applier` does this every second;
`freshness` says how far behind the index is.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from store.audiences.bitmaps import (
    BeforeBase,
    BitSets,
    binary_rows,
    bit_sets,
    chunk_rows,
    compress_like,
    copy_rows,
    drain,
    index_rows,
    lock_brand,
    rebuild,
)
from store.audiences.index_facts import Ids, load_index_facts
from store.audiences.lifecycle import after_apply
from store.audiences.persons import after_apply as persons_after_apply
from store.audiences.schedule import each_due
from store.sql import Query
from store.tables import audience_changes, audience_index_state, member_tags
from tagquery.bitmap_keys import (
    ALL_FAMILIES,
    CHUNK_SIZE,
    ENCODING_STATE,
    ENCODING_VERSION,
    FAMILIES,
    family_of,
    family_sql,
)

log = logging.getLogger(__name__)
REBUILD_OVER = 100_000  # queued members beyond which a full rebuild is cheaper than a delta
_state = audience_index_state.c
# An index built with another encoding (tagquery.bitmap_keys) holds no key the compiler may read:
# it counts as not built, and the applier rebuilds it (an upgrade's first start, a restore).
_OUTDATED = f"(s.widths ->> '{ENCODING_STATE}') IS DISTINCT FROM '{ENCODING_VERSION}'"
_ZERO = f"repeat('0', {CHUNK_SIZE})::varbit"

_read_state = Query(sa.select(_state.applied_at, _state.widths).where(_state.brand_id == sa.bindparam("brand_id")))
_expired = Query(
    sa.select(member_tags.c.member_id)
    .distinct()
    .where(
        member_tags.c.brand_id == sa.bindparam("brand_id"),
        member_tags.c.expires_at > sa.bindparam("since"),
        member_tags.c.expires_at <= sa.func.now(),
    )
)
_mark_applied = Query(
    sa.update(audience_index_state)
    .where(_state.brand_id == sa.bindparam("brand_id"))
    .values(applied_at=sa.func.now(), widths=sa.bindparam("widths"))
)
# Brands with queued changes, with tags that expired since their last apply (no write marks those),
# whose index has another encoding, or whose persons are not built (store.audiences.persons: a
# database older than migration 0016, a failed pass, a rebuild outside the applier).
_due = Query(
    sa.text(f"""
SELECT DISTINCT brand_id FROM audience_changes
UNION
SELECT s.brand_id FROM audience_index_state s
WHERE {_OUTDATED} OR EXISTS (SELECT 1 FROM member_tags t
              WHERE t.brand_id = s.brand_id AND t.expires_at > s.applied_at AND t.expires_at <= now())
   OR NOT EXISTS (SELECT 1 FROM person_index_state p WHERE p.brand_id = s.brand_id)
""")  # noqa: S608 (constant text)
)
# Behind by the oldest queued change or the earliest expiry not swept yet; else current. With what
# `readiness` reads, for many brands in one statement.
_freshness = Query(
    sa.text(f"""
SELECT b.id AS brand_id, now() AS now, s.built_at, s.applied_at AS applied,
       s.built_at IS NOT NULL AND NOT {_OUTDATED} AS built,
       q.oldest, coalesce(q.pending, 0) AS pending, coalesce(q.rebuild_due, false) AS rebuild_due, e.expired,
       EXISTS (SELECT 1 FROM members m WHERE m.brand_id = b.id) AS has_members
FROM unnest(CAST(:brand_ids AS bigint[])) AS b(id)
LEFT JOIN audience_index_state s ON s.brand_id = b.id
LEFT JOIN LATERAL (SELECT min(c.queued_at) AS oldest, count(*) AS pending, bool_or(c.member_id = 0) AS rebuild_due
                   FROM audience_changes c WHERE c.brand_id = b.id) q ON true
LEFT JOIN LATERAL (SELECT min(t.expires_at) AS expired FROM member_tags t
                   WHERE t.brand_id = b.id AND t.expires_at > s.applied_at AND t.expires_at <= now()) e ON true
""")  # noqa: S608 (constant text)
)
_TEMP = [
    'CREATE TEMP TABLE IF NOT EXISTS audience_delta (key text COLLATE "C", chunk int, bits varbit, '
    "PRIMARY KEY (key, chunk)) ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS audience_mask (family text, chunk int, bits varbit, "
    "PRIMARY KEY (family, chunk)) ON COMMIT DELETE ROWS",
    # A transaction's second delta (the stage entries after the hooks: _apply_entries) starts empty.
    "DELETE FROM audience_delta",
    "DELETE FROM audience_mask",
]
# Rows of the touched families and chunks whose bits for the changed members differ from the new.
_rewrite = Query(
    sa.text(f"""
WITH changed AS (
    SELECT b.key, b.chunk, bitor(bitand(b.bits, bitnot(m.bits)), coalesce(d.bits, {_ZERO})) AS bits
    FROM audience_mask m
    JOIN audience_bitmaps b ON b.brand_id = :brand_id AND b.chunk = m.chunk AND {family_sql("b.key")} = m.family
    LEFT JOIN audience_delta d ON d.key = b.key AND d.chunk = b.chunk
    WHERE bitand(b.bits, m.bits) <> coalesce(d.bits, {_ZERO})
)
UPDATE audience_bitmaps b SET bits = changed.bits FROM changed
WHERE b.brand_id = :brand_id AND b.key = changed.key AND b.chunk = changed.chunk
""")  # noqa: S608 (constant text)
)
_add_new = Query(
    sa.text(
        "INSERT INTO audience_bitmaps (brand_id, key, chunk, bits) "
        "SELECT :brand_id, key, chunk, bits FROM audience_delta ON CONFLICT DO NOTHING"
    )
)
# A city is the member's own word: a row of a touched chunk left empty (the last member of that
# city there moved or was erased) goes, as a full build never writes one, so no key keeps the name.
_drop_empty_cities = Query(
    sa.text(f"""
DELETE FROM audience_bitmaps b USING audience_mask m
WHERE m.family = 'city' AND b.brand_id = :brand_id AND b.chunk = m.chunk AND b.key LIKE 'city:%'
  AND b.bits = {_ZERO}
""")  # noqa: S608 (constant text)
)


@dataclasses.dataclass(frozen=True, slots=True)
class Applied:
    brand_id: int
    members: int
    """Members whose bits were recomputed (0 when nothing had changed)."""
    rebuilt: bool


class IndexState(StrEnum):
    """Whether a brand's index can answer: READY (maybe a moment behind: see Freshness), or a full
    build is due or running (after a bulk load, a restore, or before the first), when counts from
    it would be wrong rather than late."""

    READY = "READY"
    BUILDING = "BUILDING"


@dataclasses.dataclass(frozen=True, slots=True)
class Readiness:
    state: IndexState
    pending: int  # queued member changes (counted up to REBUILD_OVER + 1)


_readiness = Query(
    sa.text(f"""
SELECT s.built_at IS NOT NULL AND NOT {_OUTDATED} AS built,
       EXISTS (SELECT 1 FROM audience_changes c WHERE c.brand_id = :brand_id AND c.member_id = 0) AS rebuild_due,
       (SELECT count(*) FROM (SELECT 1 FROM audience_changes c WHERE c.brand_id = :brand_id LIMIT :over) q) AS pending,
       EXISTS (SELECT 1 FROM members m WHERE m.brand_id = :brand_id) AS has_members
FROM (SELECT 1) AS one LEFT JOIN audience_index_state s ON s.brand_id = :brand_id
""")  # noqa: S608 (constant text)
)
# Member 0 asks the applier for a full build of the brand (as a demo load does).
_request_build = Query(
    sa.text("""
INSERT INTO audience_changes (brand_id, member_id)
SELECT :brand_id, 0 WHERE NOT EXISTS (SELECT 1 FROM audience_changes WHERE brand_id = :brand_id AND member_id = 0)
""")
)


_building = Query(
    sa.text(f"""
SELECT b.code FROM brands b LEFT JOIN audience_index_state s ON s.brand_id = b.id
WHERE EXISTS (SELECT 1 FROM audience_changes c WHERE c.brand_id = b.id AND c.member_id = 0)
   OR ((s.built_at IS NULL OR {_OUTDATED}) AND EXISTS (SELECT 1 FROM members m WHERE m.brand_id = b.id))
ORDER BY b.code
""")  # noqa: S608 (constant text)
)


async def building(conn: AsyncConnection[Any]) -> list[str]:
    """Codes of the brands whose index has a full build due (one statement, for /readyz)."""
    return [row["code"] for row in await _building.all(conn)]


async def readiness(conn: AsyncConnection[Any], brand_id: int) -> Readiness:
    """Whether the brand's index can answer now. An index never built for a brand with members
    (and nothing queued that would build it) gets a build queued here: the applier runs it."""
    row = await _readiness.one(conn, brand_id=brand_id, over=REBUILD_OVER + 1)
    assert row is not None
    return await _ready(conn, brand_id, row)


async def _ready(conn: AsyncConnection[Any], brand_id: int, row: Mapping[str, Any]) -> Readiness:
    pending = int(row["pending"])
    if row["rebuild_due"] or pending > REBUILD_OVER:
        return Readiness(IndexState.BUILDING, pending)
    if row["built"] or not row["has_members"]:
        return Readiness(IndexState.READY, pending)
    if pending == 0:
        await _request_build.run(conn, brand_id=brand_id)
    return Readiness(IndexState.BUILDING, pending)


@dataclasses.dataclass(frozen=True, slots=True)
class Freshness:
    as_of: datetime | None
    """Every write committed and every tag expired before this instant is in the index (now when
    nothing is pending; None: never built)."""
    lag: timedelta | None
    pending: int
    """Queued member changes not applied yet."""
    built_at: datetime | None
    state: IndexState


async def apply_brand(conn: AsyncConnection[Any], brand_id: int, *, wait: bool = False) -> Applied | None:
    """Bring one brand's index up to date in one transaction; None if another process holds it
    (unless `wait`)."""
    async with conn.transaction():
        # Maintenance, not a request: a rebuild of a large brand may take minutes.
        await conn.execute("SET LOCAL statement_timeout = 0")
        if not await lock_brand(conn, brand_id, wait=wait) and not wait:
            return None
        changed: dict[int, int] = {}  # member id -> families its changes can touch
        for row in await drain.all(conn, brand_id=brand_id):
            changed[row["member_id"]] = changed.get(row["member_id"], 0) | _families(row["families"])
        state = await _read_state.one(conn, brand_id=brand_id)
        if state is None or 0 in changed or len(changed) > REBUILD_OVER or _outdated(state["widths"]):
            return await _rebuilt(conn, brand_id, len(changed))
        for row in await _expired.all(conn, brand_id=brand_id, since=state["applied_at"]):
            changed[row["member_id"]] = changed.get(row["member_id"], 0) | FAMILIES["tag"]
        try:
            widths = await _apply_delta(conn, brand_id, changed, state["widths"]) if changed else state["widths"]
        except BeforeBase:  # a day the index's layout cannot hold: lay it out again (rare: see bitmap_keys)
            return await _rebuilt(conn, brand_id, len(changed))
        await _mark_applied.run(conn, brand_id=brand_id, widths=Jsonb(widths))
        await after_apply(conn, brand_id, changed)  # lifecycle stages of the members just applied
        await persons_after_apply(conn, brand_id, changed)  # the persons of those members
        await _rule_tags_after_apply(conn, brand_id, changed)  # rule tags of the members just applied
        await _apply_entries(conn, brand_id)  # the changes of stage the lifecycle hook just recorded
        return Applied(brand_id, len(changed), rebuilt=False)


async def _rebuilt(conn: AsyncConnection[Any], brand_id: int, changed: int) -> Applied:
    await rebuild(conn, brand_id, parallel_reads=True)  # this transaction has only drained the queue
    await after_apply(conn, brand_id, None)  # lifecycle stages: every member compared
    await persons_after_apply(conn, brand_id, None)  # the brand's persons, rebuilt
    await _rule_tags_after_apply(conn, brand_id, None)  # rule tags: every member computed
    await _apply_entries(conn, brand_id)  # the changes of stage the lifecycle hook just recorded
    return Applied(brand_id, changed, rebuilt=True)


# Members queued with the `stage` family alone: only migration 0017's trigger on member_stage_changes
# queues that, and the one writer of that table is store.audiences.lifecycle.
_drain_entries = Query(
    sa.delete(audience_changes)
    .where(
        audience_changes.c.brand_id == sa.bindparam("brand_id"),
        audience_changes.c.families == FAMILIES["stage"],
    )
    .returning(audience_changes.c.member_id)
)


async def _apply_entries(conn: AsyncConnection[Any], brand_id: int) -> None:
    """The `stage` keys of the members whose changes of stage were recorded in this transaction (the
    lifecycle hook runs after the delta it reads the stages from), or queued by a scheduled pass
    since the drain: a second delta before commit. Why not leave them queued for the next pass: an
    applied index would then lag the history it is read beside (`lifecycleTransitions` would show
    a change `entered:` misses until the next second), and would differ from a fresh build of the
    same moment. Like the hooks, it never stops the index: on failure the rows stay queued (the
    savepoint rolls the drain back) and the next pass applies them as any other change."""
    try:
        async with conn.transaction():  # a savepoint
            entered = {row["member_id"]: FAMILIES["stage"] for row in await _drain_entries.all(conn, brand_id=brand_id)}
            if not entered:
                return
            if len(entered) > REBUILD_OVER:  # as a queue that long would be: the next pass rebuilds
                await _request_build.run(conn, brand_id=brand_id)
                return
            state = await _read_state.one(conn, brand_id=brand_id)
            assert state is not None  # a delta or a build has just written it
            widths = await _apply_delta(conn, brand_id, entered, state["widths"])
            await _mark_applied.run(conn, brand_id=brand_id, widths=Jsonb(widths))
        await _rule_tags_after_apply(conn, brand_id, entered)  # rules on `entered:` (they read every family)
    except Exception:
        log.exception("entered stages of brand %s: not applied with this pass; the next pass applies them", brand_id)


async def _rule_tags_after_apply(conn: AsyncConnection[Any], brand_id: int, changed: Mapping[int, int] | None) -> None:
    # Imported here: store.audiences.rule_tags reads catalogs, which import this module.
    from store.audiences.rule_tags import after_apply as rule_tags_after_apply

    await rule_tags_after_apply(conn, brand_id, changed)


async def _apply_delta(
    conn: AsyncConnection[Any], brand_id: int, changed: Mapping[int, int], widths: Mapping[str, int]
) -> dict[str, int]:
    import numpy as np  # lazily: a count needs none (issue 16)

    ids = np.fromiter(changed, dtype=np.int64, count=len(changed))
    families = np.fromiter(changed.values(), dtype=np.int64, count=len(changed))
    facts = await load_index_facts(conn, brand_id, ids.tolist())
    sets = await asyncio.to_thread(bit_sets, facts, widths)  # CPU work, off the event loop (copy_rows)
    await compress_like(conn, "audience_bitmaps")
    async with conn.cursor() as cur:
        for statement in _TEMP:
            await cur.execute(statement)
        masks = binary_rows(_masks(ids, families), "tib")
        await copy_rows(cur, "COPY audience_mask (family, chunk, bits) FROM STDIN (FORMAT BINARY)", masks)
        delta = binary_rows(_delta_rows(sets, ids, families), "tib")
        await copy_rows(cur, "COPY audience_delta (key, chunk, bits) FROM STDIN (FORMAT BINARY)", delta)
    await _rewrite.run(conn, brand_id=brand_id)
    await _add_new.run(conn, brand_id=brand_id)
    await _drop_empty_cities.run(conn, brand_id=brand_id)
    return {**widths, **sets.widths}  # the same layouts, widened where the delta needed it


def _outdated(widths: Mapping[str, int] | None) -> bool:
    return (widths or {}).get(ENCODING_STATE) != ENCODING_VERSION


def _families(queued: int) -> int:
    """The families a queued change touches: all of them when it touches the universe (a member
    added, deleted or merged; the triggers' and the queue's "all" predates later families)."""
    return ALL_FAMILIES if queued & FAMILIES["u"] else queued


def _in_family(ids: Ids, families: Ids, family: str) -> Ids:
    chosen: Ids = ids[(families & FAMILIES[family]) != 0]
    return chosen


def _masks(ids: Ids, families: Ids) -> Iterator[tuple[str, int, bytes]]:
    """Per family and chunk, the changed members whose bits in that family are recomputed."""
    for family in FAMILIES:
        yield from chunk_rows(family, _in_family(ids, families, family))


def _delta_rows(sets: BitSets, ids: Ids, families: Ids) -> Iterator[tuple[str, int, bytes]]:
    """The new bits of those members, key by key (only members whose change touches its family)."""
    import numpy as np  # lazily: a count needs none (issue 16)

    recomputed = {family: np.sort(_in_family(ids, families, family)) for family in FAMILIES}
    return index_rows(sets, lambda key: recomputed[family_of(key)])


async def apply_all(pool: AsyncConnectionPool[Any]) -> list[Applied]:
    """One pass over every brand with queued changes or unswept expiries."""
    applied = await each_due(pool, _due, lambda conn, brand_id: apply_brand(conn, brand_id))
    return [report for report in applied if report is not None]


async def run_applier(pool: AsyncConnectionPool[Any], interval: float = 1.0) -> None:
    """Apply deltas every `interval` seconds until cancelled (the server's lifespan runs this).

    Failures are logged and retried, backing off to a minute while they persist (a database not
    migrated yet should not fill the log every second)."""
    delay = interval
    while True:
        try:
            for report in await apply_all(pool):
                if report.members:
                    log.debug("audience index: %s", report)
            delay = interval
        except Exception:
            if delay == interval:
                log.exception("audience index: applying deltas failed; retrying")
            delay = min(delay * 2, 60.0)
        await asyncio.sleep(delay)


@dataclasses.dataclass(frozen=True, slots=True)
class Lag:
    brand_code: str
    seconds: float  # how far behind the oldest queued change or unswept tag expiry is (0: current)
    pending: int  # queued member changes


# Every brand in one statement (for /metrics): the queue grouped once, expiries through their index.
_lags = Query(
    sa.text("""
SELECT b.code, coalesce(q.pending, 0) AS pending,
       coalesce(extract(epoch FROM now() - least(q.oldest, e.expired)), 0)::float8 AS lag
FROM brands b
LEFT JOIN audience_index_state s ON s.brand_id = b.id
LEFT JOIN (SELECT brand_id, count(*) AS pending, min(queued_at) AS oldest FROM audience_changes GROUP BY brand_id) q
       ON q.brand_id = b.id
LEFT JOIN LATERAL (SELECT min(t.expires_at) AS expired FROM member_tags t
                   WHERE t.brand_id = b.id AND t.expires_at > s.applied_at AND t.expires_at <= now()) e ON true
ORDER BY b.code
""")
)


async def lags(conn: AsyncConnection[Any]) -> list[Lag]:
    """Every brand's index lag and queued changes, in one statement (what /metrics reports)."""
    return [Lag(row["code"], max(float(row["lag"]), 0.0), int(row["pending"])) for row in await _lags.all(conn)]


async def freshness(conn: AsyncConnection[Any], brand_id: int) -> Freshness:
    return (await freshness_of_brands(conn, [brand_id]))[brand_id]


async def freshness_of_brands(conn: AsyncConnection[Any], brand_ids: Sequence[int]) -> dict[int, Freshness]:
    """Each brand's freshness and readiness in one statement, whatever the number of brands (a list of
    every brand took two statements a brand, and went past its deadline with thousands of them)."""
    found = {}
    for row in await _freshness.all(conn, brand_ids=list(brand_ids)):
        behind = [moment for moment in (row["oldest"], row["expired"]) if moment is not None]
        as_of = None if row["applied"] is None else min(behind, default=row["now"])
        found[row["brand_id"]] = Freshness(
            as_of=as_of,
            lag=None if as_of is None else max(row["now"] - as_of, timedelta(0)),
            pending=int(row["pending"]),
            built_at=row["built_at"],
            state=(await _ready(conn, row["brand_id"], row)).state,
        )
    return found

"""Each member's lifecycle stage kept current, and every change of stage recorded (issue 15).

A member's stage is what `lifecycle:<stage>` selects (store.audiences.facts.lifecycle_terms under
the brand's current rules), read from the bitmap index for one brand day. The stages a brand's
members are in are kept as bitmaps (`lifecycle_stages`: per stage and chunk, like the index), as
of one day (`lifecycle_state.day`), so a change of stage is a difference of bitmaps: one
statement compares the new stages with the kept ones chunk by chunk, writes what moved and
returns only the differences, which numpy decodes into (member, from, to) rows of
`member_stage_changes`. Every live member is in exactly one stage by construction: the terms
partition the universe, and what is kept is what they gave.

`sync` brings a brand's stages up to date, in the caller's transaction, under the index's brand
lock (so the index does not move under it). In order:

  - the first time: stages computed, nothing recorded (the history starts there);
  - the brand's rules changed: every member compared under the new version (RULES);
    else the index was rebuilt since (a bulk load, `omnimember refresh`): every member (REBUILD);
  - the brand's day moved on: every member compared on each new day (TIME), dated at the start of
    that day in the brand's time zone, when the change happened;
  - the members whose writes the applier just applied (`touched`): those, on the current day (WRITE).

Members just touched are left out of the first three, so a write is recorded as a write. What is
recorded is what `entered:<stage> WITHIN 30d` selects (store.audiences.stage_days): migration 0017's
trigger queues the members' entry days for the index, which the applier writes in the same
transaction when it ran the hook, else on its next pass (store.audiences.deltas). The
applier calls `sync` after each delta (store.audiences.deltas.apply_brand), `run_lifecycle` every
`interval` seconds for brands whose day or rules moved with no write, `omnimember refresh` through
`refresh_stages`; each takes `now` so a test can move the clock.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from enum import Enum, StrEnum
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.dialects.postgresql import insert

from store.audiences import rfm_store
from store.audiences.bitmaps import binary_rows, chunk_rows, compress_like, copy_rows, locked_pass
from store.audiences.facts import DEFAULT_TIMEZONE, STAGES, LifecycleRules, lifecycle_terms
from store.audiences.index_facts import Ids
from store.audiences.lifecycle_rules import RulesVersion, current_rules
from store.audiences.schedule import each_due, every
from store.brands import for_each_brand
from store.sql import Query
from store.tables import audience_bitmaps, lifecycle_state
from tagquery.bitmap_keys import CHUNK_BITS, CHUNK_SIZE, ENCODING_STATE, ENCODING_VERSION, FAMILIES
from tagquery.compile_bitmap import NO_CHUNK_LIMIT, BitmapCompiler, Encoding

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)
# A change in these families can move a stage: the universe (a member added, merged away, erased,
# unmerged), the days of its orders, its last purchase.
STAGE_FAMILIES = FAMILIES["u"] | FAMILIES["order"] | FAMILIES["last_purchase"]
CATCH_UP_DAYS = 31
"""Days compared one by one when a brand's day moved on by more (a server down for weeks): the
changes of the days before are dated at the first of these."""
INTERVAL = 30.0  # seconds between the scheduled passes of run_lifecycle


class Cause(StrEnum):
    WRITE = "write"
    TIME = "time"
    RULES = "rules"
    REBUILD = "rebuild"


class _Scope(Enum):
    ALL = "every member"
    EXCEPT = "every member but the touched"
    ONLY = "the touched members"


@dataclasses.dataclass(frozen=True, slots=True)
class Synced:
    brand_id: int
    day: date
    """The brand day the stages are now as of."""
    rules_version: int
    changes: Mapping[Cause, int]
    """Stage changes recorded, by cause."""
    initialized: bool = False
    """The brand's stages were computed for the first time (nothing recorded)."""


_ZERO = f"repeat('0', {CHUNK_SIZE})::varbit"
_ONES = f"bitnot({_ZERO})"
_MASKS = {
    _Scope.ALL: _ONES,
    _Scope.EXCEPT: f"coalesce(bitnot(k.bits), {_ONES})",
    _Scope.ONLY: f"coalesce(k.bits, {_ZERO})",
}
_TEMP = [
    "CREATE TEMP TABLE IF NOT EXISTS lifecycle_new (chunk int PRIMARY KEY, "
    + ", ".join(f"s{i} varbit" for i in range(len(STAGES)))
    + ") ON COMMIT DELETE ROWS",
    "CREATE TEMP TABLE IF NOT EXISTS lifecycle_mask (chunk int PRIMARY KEY, bits varbit) ON COMMIT DELETE ROWS",
]
_clear_new = Query(sa.text("DELETE FROM lifecycle_new"))
_clear_mask = Query(sa.text("DELETE FROM lifecycle_mask"))
_new = sa.table("lifecycle_new", sa.column("chunk"), *(sa.column(f"s{i}") for i in range(len(STAGES))))


def _compare_sql(scope: _Scope) -> str:
    """New stages (lifecycle_new) against the kept ones, within the scope's members (`m`): the kept
    bitmaps rewritten where they differ, and per chunk with any change the members who entered (e_i)
    and left (l_i) each stage, as varbit_send bytes (NULL when none). Fixed text: stage names and
    the scope's mask are constants."""
    stages = list(enumerate(STAGES))

    def each(template: str) -> str:
        return ", ".join(template.format(i=i, stage=stage) for i, stage in stages)

    changed = " OR ".join(f"bit_count(d.e{i}) > 0 OR bit_count(d.l{i}) > 0" for i, _ in stages)
    return f"""
WITH o AS (
    SELECT chunk, {each("bit_or(bits) FILTER (WHERE stage = '{stage}') AS o{i}")}
    FROM lifecycle_stages
    WHERE brand_id = :brand_id AND chunk >= :from_chunk AND chunk < :to_chunk
    GROUP BY chunk
), j AS (
    SELECT coalesce(n.chunk, o.chunk) AS chunk, {_MASKS[scope]} AS m,
           {each(f"coalesce(n.s{{i}}, {_ZERO}) AS n{{i}}")}, {each(f"coalesce(o.o{{i}}, {_ZERO}) AS o{{i}}")}
    FROM lifecycle_new n FULL JOIN o ON o.chunk = n.chunk
    LEFT JOIN lifecycle_mask k ON k.chunk = coalesce(n.chunk, o.chunk)
), d AS (
    SELECT chunk, {each("o{i}")},
           {each("bitand(bitand(n{i}, m), bitnot(o{i})) AS e{i}")},
           {each("bitand(bitand(o{i}, m), bitnot(n{i})) AS l{i}")},
           {each("bitor(bitand(o{i}, bitnot(m)), bitand(n{i}, m)) AS w{i}")}
    FROM j
), written AS (
    INSERT INTO lifecycle_stages (brand_id, stage, chunk, bits)
    SELECT :brand_id, v.stage, d.chunk, v.bits
    FROM d CROSS JOIN LATERAL (VALUES {each("('{stage}', d.w{i}, d.o{i})")}) AS v (stage, bits, old)
    WHERE v.bits <> v.old
    ON CONFLICT (brand_id, stage, chunk) DO UPDATE SET bits = EXCLUDED.bits
)
SELECT d.chunk,
       {each("CASE WHEN bit_count(d.e{i}) > 0 THEN varbit_send(d.e{i}) END AS e{i}")},
       {each("CASE WHEN bit_count(d.l{i}) > 0 THEN varbit_send(d.l{i}) END AS l{i}")}
FROM d WHERE {changed}
"""  # noqa: S608 (constant text)


_compare = {scope: Query(sa.text(_compare_sql(scope))) for scope in _Scope}
_record = Query(
    sa.text("""
INSERT INTO member_stage_changes (brand_id, member_id, from_stage, to_stage, changed_at, rules_version, cause)
SELECT :brand_id, c.member_id, c.from_stage, c.to_stage, :changed_at, :rules_version, :cause
FROM unnest(CAST(:members AS bigint[]), CAST(:froms AS text[]), CAST(:tos AS text[]))
     AS c (member_id, from_stage, to_stage)
""")
)
_state = Query(
    sa.text(f"""
SELECT s.day, s.rules_version, s.index_built_at, i.built_at, i.widths,
       (i.widths ->> '{ENCODING_STATE}') IS NOT DISTINCT FROM '{ENCODING_VERSION}' AS current_encoding,
       coalesce((SELECT timezone FROM brand_rules WHERE brand_id = :brand_id), '{DEFAULT_TIMEZONE}') AS timezone
FROM (SELECT 1) AS one
LEFT JOIN lifecycle_state s ON s.brand_id = :brand_id
LEFT JOIN audience_index_state i ON i.brand_id = :brand_id
""")  # noqa: S608 (constant text)
)
_state_columns = lifecycle_state.c
_stmt = insert(lifecycle_state).values(
    brand_id=sa.bindparam("brand_id"),
    day=sa.bindparam("day"),
    rules_version=sa.bindparam("rules_version"),
    index_built_at=sa.bindparam("index_built_at"),
    computed_at=sa.bindparam("computed_at"),
)
_save_state = Query(
    _stmt.on_conflict_do_update(
        index_elements=[_state_columns.brand_id],
        set_={name: _stmt.excluded[name] for name in ("day", "rules_version", "index_built_at", "computed_at")},
    )
)


class _Pivots:
    """The statement writing one day's stages into lifecycle_new, by (day, rules, widths): compiling
    the pivot costs milliseconds of SQLAlchemy, and a brand uses one a day."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self._statements: OrderedDict[tuple[object, ...], Query] = OrderedDict()

    def get(self, encoding: Encoding, day: date, rules: LifecycleRules) -> Query:
        key = (day, rules, tuple(sorted(encoding.widths.items())))
        statement = self._statements.get(key)
        if statement is None:
            compiler = BitmapCompiler(encoding, day)
            terms = lifecycle_terms(rules)
            columns = {f"s{i}": compiler.bitmap(terms[stage]) for i, stage in enumerate(STAGES)}
            pivot = compiler.pivot.select(audience_bitmaps, columns)
            statement = self._statements[key] = Query(sa.insert(_new).from_select(["chunk", *columns], pivot))
            if len(self._statements) > self.size:
                self._statements.popitem(last=False)
        return statement


_pivots = _Pivots()


def touched_members(changed: Mapping[int, int]) -> list[int]:
    """The members of a drained change queue (member id -> families) whose stage may have moved, ascending."""
    return sorted(member for member, families in changed.items() if families & STAGE_FAMILIES and member > 0)


def day_start(day: date, timezone: str) -> datetime:
    """The first instant of `day` in the time zone."""
    return datetime.combine(day, time(), ZoneInfo(timezone))


async def sync(
    conn: AsyncConnection[Any], brand_id: int, *, touched: Ids | None = None, now: datetime | None = None
) -> Synced | None:
    """Bring the brand's stages up to date (module docstring); None while its index cannot answer
    (never built, or of another encoding: the applier rebuilds it and calls this again). Runs in
    the caller's transaction, which holds the brand's index lock."""
    state = await _state.one(conn, brand_id=brand_id)
    assert state is not None
    if state["built_at"] is None or not state["current_encoding"]:
        return None
    now = now or datetime.now(UTC)
    timezone: str = state["timezone"]
    today = now.astimezone(ZoneInfo(timezone)).date()
    rules = await current_rules(conn, brand_id)
    encoding = Encoding(dict(state["widths"]))
    async with conn.cursor() as cur:
        for statement in _TEMP:
            await cur.execute(statement)
    await _clear_mask.run(conn)
    await compress_like(conn, "lifecycle_stages")
    if state["day"] is None:
        await _compare_stages(conn, brand_id, encoding, today, rules, _Scope.ALL, None)
        await _save(conn, brand_id, today, rules, state["built_at"], now)
        return Synced(brand_id, today, rules.version, {}, initialized=True)

    day: date = state["day"]
    some = touched is not None and touched.size > 0
    if some:
        assert touched is not None
        await _fill_mask(conn, touched)
    others = _Scope.EXCEPT if some else _Scope.ALL
    changes: dict[Cause, int] = {}

    async def compare(cause: Cause, on: date, scope: _Scope, at: datetime) -> None:
        found = await _compare_stages(conn, brand_id, encoding, on, rules, scope, (cause, at))
        if found:
            changes[cause] = changes.get(cause, 0) + found

    if rules.version != state["rules_version"]:
        await compare(Cause.RULES, day, others, now)
    elif state["index_built_at"] != state["built_at"]:
        await compare(Cause.REBUILD, day, others, now)
    for step in _days_after(day, today):
        await compare(Cause.TIME, step, others, day_start(step, timezone))
    day = max(day, today)
    if some:
        await compare(Cause.WRITE, day, _Scope.ONLY, now)
    await _save(conn, brand_id, day, rules, state["built_at"], now)
    return Synced(brand_id, day, rules.version, changes)


_compare_all_next = Query(
    sa.update(lifecycle_state)
    .where(_state_columns.brand_id == sa.bindparam("brand_id"))
    .values(index_built_at=sa.null())
)


async def after_apply(conn: AsyncConnection[Any], brand_id: int, changed: Mapping[int, int] | None) -> None:
    """The applier's hook, in its transaction: the stages of the members of a delta (`changed`:
    member id -> families), or of every member after a rebuild (None). Stages must never stop the
    index: a failure is logged and rolled back alone, and the next pass compares every member."""
    moved = None if changed is None else touched_members(changed)
    if moved is not None and not moved:
        return  # nothing that moves a stage (and numpy not imported for it: issue 16)
    import numpy as np  # lazily: a count needs none (issue 16)

    touched = None if moved is None else np.array(moved, dtype=np.int64)
    try:
        async with conn.transaction():  # a savepoint
            await sync(conn, brand_id, touched=touched)
    except Exception:
        log.exception("lifecycle stages of brand %s: not updated with this delta; the next pass compares all", brand_id)
        await _compare_all_next.run(conn, brand_id=brand_id)


def _days_after(day: date, today: date) -> list[date]:
    first = max(day + timedelta(days=1), today - timedelta(days=CATCH_UP_DAYS - 1))
    return [first + timedelta(days=n) for n in range((today - first).days + 1)]


async def _save(
    conn: AsyncConnection[Any], brand_id: int, day: date, rules: RulesVersion, built_at: datetime, now: datetime
) -> None:
    await _save_state.run(
        conn, brand_id=brand_id, day=day, rules_version=rules.version, index_built_at=built_at, computed_at=now
    )


async def _fill_mask(conn: AsyncConnection[Any], members: Ids) -> None:
    async with conn.cursor() as cur:
        rows = ((chunk, bits) for _, chunk, bits in chunk_rows("mask", members))
        await copy_rows(cur, "COPY lifecycle_mask (chunk, bits) FROM STDIN (FORMAT BINARY)", binary_rows(rows, "ib"))


_ALL_CHUNKS = {"from_chunk": 0, "to_chunk": NO_CHUNK_LIMIT}
_chunk_span = Query(
    sa.text("SELECT coalesce(min(chunk), 0) AS first, coalesce(max(chunk), -1) + 1 AS stop FROM lifecycle_mask")
)


async def _compare_stages(
    conn: AsyncConnection[Any],
    brand_id: int,
    encoding: Encoding,
    day: date,
    rules: RulesVersion,
    scope: _Scope,
    record: tuple[Cause, datetime] | None,
) -> int:
    """Compute the stages on `day`, keep them for the scope's members and record who moved (unless
    `record` is None); returns how many moved."""
    span = _ALL_CHUNKS
    if scope is _Scope.ONLY:
        row = await _chunk_span.one(conn)
        assert row is not None
        span = {"from_chunk": row["first"], "to_chunk": row["stop"]}
    await _clear_new.run(conn)
    await _pivots.get(encoding, day, rules.rules).run(conn, brand_id=brand_id, **span)
    rows = await _compare[scope].all(conn, brand_id=brand_id, **span)
    if not rows:
        return 0
    members, froms, tos = _moves(rows)
    if record is not None:
        cause, at = record
        await _record.run(
            conn,
            brand_id=brand_id,
            members=members,
            froms=froms,
            tos=tos,
            changed_at=at,
            rules_version=rules.version,
            cause=cause.value,
        )
    return len(members)


def _moves(rows: list[dict[str, Any]]) -> tuple[list[int], list[str | None], list[str | None]]:
    """(member ids, the stage each left or None, the stage each entered or None), from the rows of
    a comparison: per chunk, varbit_send bytes of who entered (e_i) and left (l_i) each stage."""
    import numpy as np  # lazily: a count needs none (issue 16)

    def ids(column: str) -> np.ndarray[Any, np.dtype[np.int64]]:
        parts = [_chunk_ids(row["chunk"], row[column]) for row in rows if row[column] is not None]
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    entered = [ids(f"e{i}") for i in range(len(STAGES))]
    left = [ids(f"l{i}") for i in range(len(STAGES))]
    members = np.unique(np.concatenate([*entered, *left]))
    names = np.array([*STAGES, None], dtype=object)  # index -1: no stage

    def stage_of(found: list[np.ndarray[Any, np.dtype[np.int64]]]) -> list[str | None]:
        which = np.full(members.size, -1, dtype=np.int64)
        for i, chosen in enumerate(found):
            which[np.searchsorted(members, chosen)] = i
        return list(names[which])

    return [int(m) for m in members], stage_of(left), stage_of(entered)


def _chunk_ids(chunk: int, data: bytes) -> np.ndarray[Any, np.dtype[np.int64]]:
    """The members of one chunk's bitmap as varbit_send gives it (a 4-byte bit count, then the bits)."""
    import numpy as np  # lazily: a count needs none (issue 16)

    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8, offset=4))
    found: np.ndarray[Any, np.dtype[np.int64]] = np.flatnonzero(bits).astype(np.int64) + (chunk << CHUNK_BITS)
    return found


# --- the schedule ------------------------------------------------------------------------------------

_due = Query(
    sa.text(f"""
SELECT i.brand_id FROM audience_index_state i
LEFT JOIN lifecycle_state s ON s.brand_id = i.brand_id
LEFT JOIN brand_rules r ON r.brand_id = i.brand_id
WHERE i.built_at IS NOT NULL AND (i.widths ->> '{ENCODING_STATE}') = '{ENCODING_VERSION}'
  AND (s.brand_id IS NULL
       OR s.day < (now() AT TIME ZONE coalesce(r.timezone, '{DEFAULT_TIMEZONE}'))::date
       OR s.index_built_at IS DISTINCT FROM i.built_at
       OR s.rules_version <> coalesce((SELECT max(l.version) FROM lifecycle_rules l WHERE l.brand_id = i.brand_id), 0))
ORDER BY i.brand_id
""")  # noqa: S608 (constant text)
)


async def sync_locked(
    conn: AsyncConnection[Any],
    brand_id: int,
    *,
    wait: bool,
    now: datetime | None = None,
    lock_timeout: float | None = None,
    budget: float | None = None,
) -> Synced | None:
    """`sync` in a transaction of its own under the brand's lock; None when it could not run now
    (store.audiences.bitmaps.locked_pass: the lock busy, or `budget` seconds a statement spent) or
    the index cannot answer."""

    async def work() -> Synced | None:
        return await sync(conn, brand_id, now=now)

    return await locked_pass(conn, brand_id, work, wait=wait, lock_timeout=lock_timeout, budget=budget)


async def sync_due(pool: AsyncConnectionPool[Any], now: datetime | None = None) -> list[Synced]:
    """One scheduled pass: every brand whose stages were never computed, whose day or rules moved on,
    or whose index was rebuilt since."""
    done = await each_due(pool, _due, lambda conn, brand_id: sync_locked(conn, brand_id, wait=False, now=now))
    return [report for report in done if report is not None]


async def run_lifecycle(pool: AsyncConnectionPool[Any], interval: float = INTERVAL) -> None:
    """`sync_due`, then the RFM bounds due, every `interval` seconds until cancelled (the server's
    lifespan runs this; store.audiences.schedule)."""

    async def one_pass() -> None:
        for report in await sync_due(pool):
            if report.changes or report.initialized:
                log.info("lifecycle stages: %s", report)
        for brand_id in await rfm_store.recompute_due(pool):  # once a brand day
            log.info("rfm thresholds recomputed for brand %s", brand_id)

    await every(interval, "lifecycle stages", log, one_pass)


async def refresh_stages(url: str, brand: str | None, now: datetime | None = None) -> list[tuple[str, Synced | None]]:
    """Bring the stages of one brand (by code) or of every brand up to date (`omnimember refresh`,
    after the index is rebuilt), waiting for each brand's lock."""
    return await for_each_brand(url, brand, lambda conn, row: sync_locked(conn, row["id"], wait=True, now=now))


# --- freshness --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class StageFreshness:
    day: date | None
    """The brand day the stages are as of (None: never computed)."""
    computed_at: datetime | None
    """When they were last brought up to date."""
    rules_version: int | None
    behind_since: datetime | None
    """Changes of stage from this instant on may not be recorded yet: the index's own `as_of` (each
    delta updates the stages of the members it touched), or the start of the brand's next day when
    that has come and the scheduled pass has not run yet. None: current."""


_stage_state = Query(
    sa.text(f"""
SELECT s.day, s.computed_at, s.rules_version,
       coalesce((SELECT timezone FROM brand_rules WHERE brand_id = :brand_id), '{DEFAULT_TIMEZONE}') AS timezone
FROM lifecycle_state s WHERE s.brand_id = :brand_id
""")  # noqa: S608 (constant text)
)


async def stage_freshness(
    conn: AsyncConnection[Any], brand_id: int, index_as_of: datetime | None, now: datetime
) -> StageFreshness:
    """How current the brand's stages are, given its index's freshness (`index_as_of`)."""
    row = await _stage_state.one(conn, brand_id=brand_id)
    if row is None:
        return StageFreshness(None, None, None, None)
    behind = [] if index_as_of is None or index_as_of >= now else [index_as_of]
    next_day = day_start(row["day"] + timedelta(days=1), row["timezone"])
    if next_day <= now:
        behind.append(next_day)
    return StageFreshness(row["day"], row["computed_at"], row["rules_version"], min(behind, default=None))

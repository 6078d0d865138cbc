"""Tag assignments: tag and untag members, read a member's tags, sweep what expired, move on merges.

An assignment whose ``expires_at`` has passed is gone for every read here (`unexpired`); `sweep_expired`
deletes such rows so that whatever reads ``member_tags`` as is (the bitmap index rebuild) agrees.
Writes are set-based: a call costs the same few statements for one member or for MAX_MEMBER_IDS.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, insert

from store.errors import DomainError, ErrorCode
from store.sql import Query, Row
from store.tables import member_tags, members, tag_definitions
from store.tags.catalog import unexpired
from store.tags.rules import assignable
from store.urls import libpq_url

# One call may tag a whole campaign list; beyond this, split the list (or, later, tag by expression).
MAX_MEMBER_IDS = 100_000
MANUAL = "manual"
# Ids an error lists at most (it always gives the full count).
LISTED = 100

_IDS = sa.bindparam("ids", type_=ARRAY(sa.BigInteger))
_TIME = sa.DateTime(timezone=True)


@dataclass(frozen=True, slots=True)
class Tagged:
    tagged: int  # members carrying the tag because of this call
    added: int  # of them, members that did not carry it before
    expires_at: dt.datetime | None


class UnknownMembersError(DomainError):
    """UNKNOWN_MEMBERS: ids that name no member of the brand, or a member merged away."""

    def __init__(self, unknown: Sequence[str], merged: Sequence[str]) -> None:
        parts = [f"{len(unknown)} unknown" if unknown else "", f"{len(merged)} merged away" if merged else ""]
        detail = " and ".join(part for part in parts if part)
        super().__init__(
            ErrorCode.UNKNOWN_MEMBERS,
            f"{detail} of the member ids: not live members of this brand; nothing was changed",
            field="memberIds",
        )
        self.unknown = list(unknown)
        self.merged = list(merged)


class TooManyIdsError(DomainError):
    def __init__(self, count: int) -> None:
        super().__init__(
            ErrorCode.TOO_MANY_IDS,
            f"{count:,} member ids in one call; at most {MAX_MEMBER_IDS:,}: split the list",
            field="memberIds",
        )
        self.limit = MAX_MEMBER_IDS


# --- assignments ----------------------------------------------------------------------------------------

# Locked against merges (which take FOR UPDATE) until the transaction ends, so a member cannot be merged
# away between this check and the write. KEY SHARE still lets points postings update the rows.
_locked = (
    sa.select(members.c.id)
    .where(
        members.c.id == sa.any_(_IDS), members.c.brand_id == sa.bindparam("brand_id"), members.c.merged_into.is_(None)
    )
    .with_for_update(read=True, key_share=True)
    .cte("locked")
)
_count_live_members = Query(sa.select(sa.func.count()).select_from(_locked))
_given = sa.func.unnest(_IDS).table_valued("id").render_derived(name="given")
_not_live = Query(
    sa.select(_given.c.id, members.c.merged_into)
    .select_from(
        _given.outerjoin(members, sa.and_(members.c.id == _given.c.id, members.c.brand_id == sa.bindparam("brand_id")))
    )
    .where(sa.or_(members.c.id.is_(None), members.c.merged_into.is_not(None)))
    .order_by(_given.c.id)
)

_expiry = sa.func.coalesce(
    sa.cast(sa.bindparam("expires_at"), _TIME),
    sa.func.now() + sa.cast(sa.bindparam("ttl_days"), sa.Integer) * sa.literal_column("interval '1 day'"),
)
_prior = (
    sa.select(member_tags.c.member_id)
    .where(member_tags.c.tag_id == sa.bindparam("tag_id"), member_tags.c.member_id == sa.any_(_IDS), unexpired())
    .cte("prior")
)
_upsert = insert(member_tags).from_select(
    ["member_id", "tag_id", "brand_id", "source", "assigned_at", "expires_at"],
    sa.select(
        _given.c.id,
        sa.cast(sa.bindparam("tag_id"), sa.BigInteger),
        sa.cast(sa.bindparam("brand_id"), sa.BigInteger),
        sa.cast(sa.bindparam("source"), sa.Text),
        sa.func.now(),
        _expiry,
    ).select_from(_given),
)
_upserted = (
    _upsert.on_conflict_do_update(
        index_elements=[member_tags.c.member_id, member_tags.c.tag_id],
        set_={
            "source": _upsert.excluded.source,
            "assigned_at": _upsert.excluded.assigned_at,
            "expires_at": _upsert.excluded.expires_at,
        },
    )
    .returning(member_tags.c.member_id, member_tags.c.expires_at)
    .cte("upserted")
)
# One statement: `prior` sees the assignments as they were before the upsert (one snapshot).
_tag = Query(
    sa.select(
        sa.select(sa.func.count()).select_from(_upserted).scalar_subquery().label("tagged"),
        sa.select(sa.func.count()).select_from(_prior).scalar_subquery().label("prior"),
        sa.select(sa.func.max(_upserted.c.expires_at)).scalar_subquery().label("expires_at"),
    )
)
_removed = (
    sa.delete(member_tags)
    .where(member_tags.c.tag_id == sa.bindparam("tag_id"), member_tags.c.member_id == sa.any_(_IDS))
    .returning(member_tags.c.expires_at)
    .cte("removed")
)
_untag = Query(sa.select(sa.func.count()).select_from(_removed).where(unexpired(_removed)))
_tags_by_member = Query(
    sa.select(
        member_tags.c.member_id,
        member_tags.c.tag_id,
        tag_definitions.c.code,
        tag_definitions.c.name,
        tag_definitions.c.category,
        member_tags.c.source,
        member_tags.c.assigned_at,
        member_tags.c.expires_at,
        member_tags.c.rule_version,
        member_tags.c.computed_at,
    )
    .join(tag_definitions, tag_definitions.c.id == member_tags.c.tag_id)
    .where(member_tags.c.member_id == sa.any_(_IDS), unexpired())
    .order_by(member_tags.c.member_id, tag_definitions.c.category, tag_definitions.c.code)
)


async def check_live_members(conn: AsyncConnection[Any], *, brand_id: int, member_ids: Sequence[int]) -> None:
    """Lock the members against merges, or raise UNKNOWN_MEMBERS naming every id that is not live."""
    if await _count_live_members.scalar(conn, ids=list(member_ids), brand_id=brand_id) == len(member_ids):
        return
    rows = await _not_live.all(conn, ids=list(member_ids), brand_id=brand_id)
    raise UnknownMembersError(
        [str(r["id"]) for r in rows if r["merged_into"] is None],
        [str(r["id"]) for r in rows if r["merged_into"] is not None],
    )


_live_locked = Query(sa.select(_locked.c.id).order_by(_locked.c.id))


async def live_member_ids(conn: AsyncConnection[Any], *, brand_id: int, member_ids: Sequence[int]) -> list[int]:
    """The ids that are live members of the brand, locked against merges like `check_live_members`.

    For ids an audience expression selected: the index may trail a merge by a moment, and a member
    merged away since is simply no longer in the audience (rather than an error)."""
    return [row["id"] for row in await _live_locked.all(conn, ids=list(member_ids), brand_id=brand_id)]


def distinct_ids(member_ids: Sequence[int]) -> list[int]:
    """Sorted and without repeats (an upsert may touch a row once); TOO_MANY_IDS past the cap."""
    if len(member_ids) > MAX_MEMBER_IDS:
        raise TooManyIdsError(len(member_ids))
    return sorted(set(member_ids))


async def tag_members(
    conn: AsyncConnection[Any],
    *,
    tag: Row,
    member_ids: Sequence[int],
    expires_at: dt.datetime | None = None,
    source: str = MANUAL,
) -> Tagged:
    """Give live members of the tag's brand the tag, or refresh it (time, expiry, source) where they have it.

    Expiry: ``expires_at`` when given, else ``ttl_days`` after now when the tag has a TTL, else never.
    Raises UNKNOWN_MEMBERS (nothing written) when any id is not a live member of the brand, and
    INVALID_INPUT for a rule tag (its rule assigns it).
    """
    if expires_at is not None and expires_at <= dt.datetime.now(dt.UTC):
        raise DomainError(ErrorCode.INVALID_INPUT, "expiresAt must be in the future", field="expiresAt")
    ids = distinct_ids(member_ids)
    await assignable(conn, tag)
    await check_live_members(conn, brand_id=tag["brand_id"], member_ids=ids)
    row = await _tag.one(
        conn,
        ids=ids,
        tag_id=tag["id"],
        brand_id=tag["brand_id"],
        source=source,
        expires_at=expires_at,
        ttl_days=tag["ttl_days"],
    )
    assert row is not None
    return Tagged(tagged=row["tagged"], added=row["tagged"] - row["prior"], expires_at=row["expires_at"])


async def untag_members(conn: AsyncConnection[Any], *, tag: Row, member_ids: Sequence[int]) -> int:
    """Take the tag from live members of its brand; returns how many carried it (expired ones did not).
    INVALID_INPUT for a rule tag (its rule assigns it)."""
    ids = distinct_ids(member_ids)
    await assignable(conn, tag)
    await check_live_members(conn, brand_id=tag["brand_id"], member_ids=ids)
    removed: int = await _untag.scalar(conn, ids=ids, tag_id=tag["id"])
    return removed


async def tags_by_member(conn: AsyncConnection[Any], member_ids: Sequence[int]) -> list[Row]:
    """Unexpired assignments with their definitions, by member, category and code."""
    return await _tags_by_member.all(conn, ids=list(member_ids))


# --- expiry ---------------------------------------------------------------------------------------------

SWEEP_BATCH = 10_000
_expired = (
    sa.select(member_tags.c.member_id, member_tags.c.tag_id)
    .where(member_tags.c.expires_at <= sa.bindparam("as_of", type_=_TIME))
    .limit(sa.bindparam("limit", type_=sa.Integer))
)
_sweep = Query(
    sa.delete(member_tags)
    .where(sa.tuple_(member_tags.c.member_id, member_tags.c.tag_id).in_(_expired))
    .returning(member_tags.c.brand_id, member_tags.c.member_id, member_tags.c.tag_id)
)


async def sweep_batch(conn: AsyncConnection[Any], *, as_of: dt.datetime, limit: int = SWEEP_BATCH) -> list[Row]:
    """Delete up to ``limit`` assignments expired by ``as_of``; the (brand, member, tag) rows deleted."""
    return await _sweep.all(conn, as_of=as_of, limit=limit)


async def sweep_expired(conn: AsyncConnection[Any], *, as_of: dt.datetime) -> int:
    """Delete every assignment expired by ``as_of``, a batch per transaction (the connection is in
    autocommit mode): short locks while serving. Idempotent: a second run deletes nothing."""
    total = 0
    while True:
        async with conn.transaction():
            deleted = len(await sweep_batch(conn, as_of=as_of))
        total += deleted
        if deleted < SWEEP_BATCH:
            return total


async def sweep(url: str, as_of: dt.datetime) -> int:
    """`omnimember expire-tags`: `sweep_expired` on its own connection."""
    async with await AsyncConnection.connect(libpq_url(url), autocommit=True) as conn:
        return await sweep_expired(conn, as_of=as_of)


# --- merges ---------------------------------------------------------------------------------------------

_survivor_row = member_tags.alias("s")
_merged_row = member_tags.alias("m")
_SURVIVOR, _MERGED = sa.bindparam("survivor_id", type_=sa.BigInteger), sa.bindparam("merged_id", type_=sa.BigInteger)


def _as_json(deleted: sa.CTE) -> Query:
    """The rows a DELETE ... RETURNING removed, as one JSON array (timestamps as ISO text, exact)."""
    return Query(
        sa.select(
            sa.func.coalesce(sa.func.jsonb_agg(sa.literal_column(deleted.name)), sa.text("'[]'::jsonb"))
        ).select_from(deleted)
    )


_RETURNED = (member_tags.c.tag_id, member_tags.c.source, member_tags.c.assigned_at, member_tags.c.expires_at)
# The survivor's expired assignments of tags the merged member holds live: replaced by the live ones.
_replace_expired = _as_json(
    sa.delete(member_tags)
    .where(
        member_tags.c.member_id == _SURVIVOR,
        member_tags.c.expires_at <= sa.func.now(),
        sa.exists().where(
            _merged_row.c.member_id == _MERGED, _merged_row.c.tag_id == member_tags.c.tag_id, unexpired(_merged_row)
        ),
    )
    .returning(*_RETURNED)
    .cte("replaced")
)
# The merged member's assignments of tags the survivor already has: the survivor's stay, these go.
_drop_held = _as_json(
    sa.delete(member_tags)
    .where(
        member_tags.c.member_id == _MERGED,
        sa.exists().where(_survivor_row.c.member_id == _SURVIVOR, _survivor_row.c.tag_id == member_tags.c.tag_id),
    )
    .returning(*_RETURNED)
    .cte("kept")
)
_move = Query(
    sa.update(member_tags)
    .where(member_tags.c.member_id == sa.bindparam("from_id", type_=sa.BigInteger))
    .where(sa.or_(_IDS.is_(None), member_tags.c.tag_id == sa.any_(_IDS)))
    .values(member_id=sa.bindparam("to_id", type_=sa.BigInteger))
    .returning(member_tags.c.tag_id)
)
_recorded = (
    sa.func.jsonb_to_recordset(sa.bindparam("rows", type_=JSONB))
    .table_valued(
        sa.column("tag_id", sa.BigInteger),
        sa.column("source", sa.Text),
        sa.column("assigned_at", _TIME),
        sa.column("expires_at", _TIME),
    )
    .render_derived(name="r", with_types=True)
)
_reinsert = Query(
    insert(member_tags)
    .from_select(
        ["member_id", "tag_id", "brand_id", "source", "assigned_at", "expires_at"],
        sa.select(
            sa.cast(sa.bindparam("member_id"), sa.BigInteger),
            _recorded.c.tag_id,
            sa.cast(sa.bindparam("brand_id"), sa.BigInteger),
            _recorded.c.source,
            _recorded.c.assigned_at,
            _recorded.c.expires_at,
        ),
    )
    .on_conflict_do_nothing(index_elements=[member_tags.c.member_id, member_tags.c.tag_id])
)


async def move_on_merge(conn: AsyncConnection[Any], *, survivor_id: int, merged_id: int) -> dict[str, Any]:
    """Move the merged member's assignments to the survivor; what `restore_on_unmerge` needs to undo it.

    ``moved``: tag ids now on the survivor. ``kept``: the merged member's rows of tags the survivor held
    already (the survivor's row stays; these were deleted). ``replaced``: the survivor's expired rows of
    tags the merged member held live (deleted so the live assignment could move).
    """
    ids = {"survivor_id": survivor_id, "merged_id": merged_id}
    replaced = await _replace_expired.scalar(conn, **ids)
    kept = await _drop_held.scalar(conn, **ids)
    moved = await _move.all(conn, from_id=merged_id, to_id=survivor_id, ids=None)
    return {"moved": sorted(r["tag_id"] for r in moved), "kept": kept, "replaced": replaced}


async def restore_on_unmerge(
    conn: AsyncConnection[Any], *, brand_id: int, survivor_id: int, merged_id: int, record: dict[str, Any]
) -> None:
    """Undo `move_on_merge`: the moved assignments go back (as they are now), the deleted rows return."""
    await _move.run(conn, from_id=survivor_id, to_id=merged_id, ids=record["moved"])
    await _reinsert.run(conn, member_id=merged_id, brand_id=brand_id, rows=Jsonb(record["kept"]))
    await _reinsert.run(conn, member_id=survivor_id, brand_id=brand_id, rows=Jsonb(record["replaced"]))

"""Merging two members of one brand into one, and undoing it exactly.

A merge moves the merged member's identities to the survivor, fills the survivor's empty profile
fields from the merged member, adds up purchase aggregates, takes the higher tier, moves the
orders and the tag assignments (where both hold a tag, the survivor's assignment stays: see
store/tags/assignments.py), and moves the points as TRANSFER postings with the open lots (expiry kept). It records
what moved and the survivor's columns before and after, so `unmerge` can put back every column the
merge changed (a column changed again since keeps its newer value; counters subtract what was
added, never below zero) and transfer the moved lots back with what is left in them: points the
survivor spent from them after the merge stay spent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from store.errors import DomainError, ErrorCode
from store.ledger import journal, tiers
from store.sql import Query, Row
from store.tables import brand_tiers, member_identities, member_merges, members, orders
from store.tags import assignments as tags

MAX_REASON = 500
# Survivor columns a merge may set: restored on unmerge unless changed since.
RESTORED = (
    "display_name",
    "gender",
    "birthday",
    "city",
    "phone_hash",
    "phone_encrypted",
    "phone_masked",
    "first_purchase_at",
    "last_purchase_at",
    "tier",
)
# Survivor counters a merge adds the merged member's values to: subtracted on unmerge.
ADDED = ("order_count", "total_spend", "growth_value", "points_earned")

_IDS = sa.bindparam("ids", type_=ARRAY(sa.BigInteger))
_merged = members.alias("m")
_lock_members = Query(
    sa.select(members.c.id, members.c.brand_id, members.c.merged_into, members.c.erased_at)
    .where(members.c.id == sa.any_(_IDS))
    .order_by(members.c.id)
    .with_for_update()
)
_snapshot = Query(
    sa.select(sa.func.to_jsonb(sa.literal_column("members")))
    .select_from(members)
    .where(members.c.id == sa.bindparam("id"))
)


def _rank(tier: sa.ColumnElement[str]) -> sa.ScalarSelect[int]:
    return (
        sa.select(brand_tiers.c.rank)
        .where(brand_tiers.c.brand_id == members.c.brand_id, brand_tiers.c.code == tier)
        .scalar_subquery()
    )


def _takes_phone() -> sa.ColumnElement[bool]:
    return sa.and_(members.c.phone_hash.is_(None), _merged.c.phone_hash.is_not(None))


def _merged_value(name: str) -> sa.ColumnElement[Any]:
    if name.startswith("phone_"):
        return sa.case((_takes_phone(), _merged.c[name]), else_=members.c[name])
    if name == "gender":
        return sa.case(
            (members.c.gender == "unknown", _merged.c.gender),
            else_=members.c.gender,
        )
    if name == "first_purchase_at":
        return sa.func.least(members.c[name], _merged.c[name])
    if name == "tier":
        return sa.case((_rank(_merged.c.tier) > _rank(members.c.tier), _merged.c.tier), else_=members.c.tier)
    if name == "last_purchase_at":
        return sa.func.greatest(members.c[name], _merged.c[name])
    return sa.func.coalesce(members.c[name], _merged.c[name])


_combine = Query(
    sa.update(members)
    .where(
        members.c.id == sa.bindparam("survivor_id"),
        _merged.c.id == sa.bindparam("merged_id"),
    )
    .values(
        {name: _merged_value(name) for name in RESTORED} | {name: members.c[name] + _merged.c[name] for name in ADDED}
    )
)
_mark_merged = Query(
    sa.update(members)
    .where(members.c.id == sa.bindparam("merged_id"))
    .values(merged_into=sa.bindparam("survivor_id"), merged_at=sa.func.now())
)
_move_identities = Query(
    sa.update(member_identities)
    .where(member_identities.c.member_id == sa.bindparam("merged_id"))
    .values(member_id=sa.bindparam("survivor_id"))
    .returning(
        member_identities.c.id,
        member_identities.c.channel,
        member_identities.c.external_id,
    )
)
_record = Query(
    sa.insert(member_merges)
    .values(
        brand_id=sa.bindparam("brand_id"),
        survivor_id=sa.bindparam("survivor_id"),
        merged_id=sa.bindparam("merged_id"),
        reason=sa.bindparam("reason"),
        moved=sa.bindparam("moved", type_=JSONB),
    )
    .returning(member_merges.c.id)
)

MERGE_COLUMNS = (
    member_merges.c.id,
    member_merges.c.brand_id,
    member_merges.c.survivor_id,
    member_merges.c.merged_id,
    member_merges.c.reason,
    member_merges.c.merged_at,
    member_merges.c.unmerged_at,
    member_merges.c.moved,
)
_lock_merge = Query(sa.select(*MERGE_COLUMNS).where(member_merges.c.id == sa.bindparam("merge_id")).with_for_update())
_merges_by_id = Query(sa.select(*MERGE_COLUMNS).where(member_merges.c.id == sa.any_(_IDS)))

_before = sa.func.jsonb_populate_record(sa.literal_column("NULL::members"), sa.bindparam("before", type_=JSONB))
_after = sa.bindparam("after", type_=JSONB)
_restore = Query(
    sa.update(members)
    .where(members.c.id == sa.bindparam("survivor_id"))
    .values(
        {
            name: sa.case(
                (
                    sa.func.coalesce(sa.func.to_jsonb(members.c[name]), sa.text("'null'::jsonb"))
                    == _after.op("->")(name),
                    sa.select(_before.table_valued(name).c[name]).scalar_subquery(),
                ),
                else_=members.c[name],
            )
            for name in RESTORED
        }
        | {
            name: sa.func.greatest(
                members.c[name]
                - sa.select(_merged.c[name]).where(_merged.c.id == sa.bindparam("merged_id")).scalar_subquery(),
                0,
            )
            for name in ADDED
        }
    )
)
_unmark_merged = Query(
    sa.update(members)
    .where(members.c.id == sa.bindparam("merged_id"))
    .values(merged_into=sa.null(), merged_at=sa.null())
)
_return_identities = Query(
    sa.update(member_identities)
    .where(
        member_identities.c.id == sa.any_(_IDS),
        member_identities.c.member_id == sa.bindparam("survivor_id"),
    )
    .values(member_id=sa.bindparam("merged_id"))
)
_move_orders = Query(
    sa.update(orders)
    .where(
        orders.c.member_id == sa.bindparam("from_id"),
        sa.or_(sa.bindparam("ids", type_=ARRAY(sa.BigInteger)).is_(None), orders.c.id == sa.any_(_IDS)),
    )
    .values(member_id=sa.bindparam("to_id"))
    .returning(orders.c.id)
)
_set_moved = Query(
    sa.update(member_merges)
    .where(member_merges.c.id == sa.bindparam("merge_id"))
    .values(moved=sa.bindparam("moved", type_=JSONB))
)
_close = Query(
    sa.update(member_merges).where(member_merges.c.id == sa.bindparam("merge_id")).values(unmerged_at=sa.func.now())
)


async def _lock(conn: AsyncConnection[Any], ids: list[int]) -> dict[int, Row]:
    """Lock the members in id order, before anything else: FOR UPDATE, so that nothing (a tag, an
    identity) is attached to either while they merge."""
    return {row["id"]: row for row in await _lock_members.all(conn, ids=ids)}


async def _json(conn: AsyncConnection[Any], member_id: int) -> dict[str, Any]:
    row: dict[str, Any] = await _snapshot.scalar(conn, id=member_id)
    return {name: row[name] for name in RESTORED}


async def merge(conn: AsyncConnection[Any], *, survivor_id: int, merged_id: int, reason: str) -> int:
    """Merge ``merged_id`` into ``survivor_id``; return the merge id. Runs in the caller's transaction.

    Both members are locked first, in id order, as the ledger's lock order wants
    (store/ledger/journal.py): the points transfer, the orders and the tags move after that."""
    reason = reason.strip()
    if not 1 <= len(reason) <= MAX_REASON:
        raise DomainError(
            ErrorCode.INVALID_INPUT,
            f"reason must be 1-{MAX_REASON} characters",
            field="reason",
        )
    if survivor_id == merged_id:
        raise DomainError(
            ErrorCode.SELF_MERGE,
            "a member cannot be merged into itself",
            field="mergedId",
        )
    rows = await _lock(conn, [survivor_id, merged_id])
    for member_id, field in ((survivor_id, "survivorId"), (merged_id, "mergedId")):
        row = rows.get(member_id)
        if row is None:
            raise DomainError(ErrorCode.UNKNOWN_MEMBER, f"no member {member_id}", field=field)
        if row["merged_into"] is not None:
            raise DomainError(
                ErrorCode.ALREADY_MERGED,
                f"member {member_id} was already merged into member {row['merged_into']}",
                field=field,
                member_id=row["merged_into"],
            )
        if row["erased_at"] is not None:  # an erased member stays apart (store.members.erasure)
            raise DomainError(ErrorCode.INVALID_INPUT, f"member {member_id} was erased", field=field)
    brand_id = rows[survivor_id]["brand_id"]
    if rows[merged_id]["brand_id"] != brand_id:
        raise DomainError(
            ErrorCode.CROSS_BRAND_MERGE,
            "members of different brands cannot merge",
            field="mergedId",
        )

    merge_id: int = await _record.scalar(
        conn, brand_id=brand_id, survivor_id=survivor_id, merged_id=merged_id, reason=reason, moved=Jsonb({})
    )
    # Points first, while both members are live: the ledger only posts to live members.
    lots = await journal.transfer(
        conn,
        brand_id=brand_id,
        from_id=merged_id,
        to_id=survivor_id,
        lot_ids=None,
        key=f"merge:{merge_id}",
        operation="merge",
        note=f"merged into member {survivor_id} (merge {merge_id})",
    )
    before = await _json(conn, survivor_id)
    # Mark before combining: the merged member leaves the one-phone-per-brand index first.
    await _mark_merged.run(conn, survivor_id=survivor_id, merged_id=merged_id)
    await _combine.run(conn, survivor_id=survivor_id, merged_id=merged_id)
    identities = await _move_identities.all(conn, survivor_id=survivor_id, merged_id=merged_id)
    moved_orders = await _move_orders.all(conn, from_id=merged_id, to_id=survivor_id, ids=None)
    moved_tags = await tags.move_on_merge(conn, survivor_id=survivor_id, merged_id=merged_id)
    after = await _json(conn, survivor_id)
    moved = {
        "identities": identities,
        "lots": lots,
        "orders": [row["id"] for row in moved_orders],
        "tags": moved_tags,
        "survivor_before": before,
        "survivor_after": after,
    }
    await _set_moved.run(conn, merge_id=merge_id, moved=Jsonb(moved))
    await _record_tier_change(conn, brand_id, survivor_id, before, after, f"merge {merge_id}")
    return merge_id


async def _record_tier_change(
    conn: AsyncConnection[Any], brand_id: int, member_id: int, before: dict[str, Any], after: dict[str, Any], cause: str
) -> None:
    if before["tier"] != after["tier"]:
        await tiers.record_change(
            conn, brand_id=brand_id, member_id=member_id, from_tier=before["tier"], to_tier=after["tier"], cause=cause
        )


async def unmerge(conn: AsyncConnection[Any], *, merge_id: int) -> Row:
    """Undo a merge; return the merge row. Runs in the caller's transaction."""
    found = await _merges_by_id.one(conn, ids=[merge_id])
    if found is None:
        raise DomainError(ErrorCode.UNKNOWN_MERGE, f"no merge {merge_id}", field="mergeId")
    # The ledger's lock order (store/ledger/journal.py): both members in id order, then the merge
    # record, read again now (an unmerge that held the members before this may have closed it).
    survivor_id, merged_id = found["survivor_id"], found["merged_id"]
    survivor = (await _lock(conn, [survivor_id, merged_id]))[survivor_id]
    merge_row = await _lock_merge.one(conn, merge_id=merge_id)
    assert merge_row is not None, "merge records are never deleted"
    if merge_row["unmerged_at"] is not None:
        raise DomainError(
            ErrorCode.MERGE_NOT_REVERSIBLE,
            f"merge {merge_id} was already undone",
            field="mergeId",
        )
    if survivor["merged_into"] is not None:
        raise DomainError(
            ErrorCode.MERGE_NOT_REVERSIBLE,
            f"the survivor {survivor_id} has since been merged into member {survivor['merged_into']};"
            " undo that merge first",
            field="mergeId",
            member_id=survivor["merged_into"],
        )
    if survivor["erased_at"] is not None:  # its merged members were erased with it
        raise DomainError(
            ErrorCode.MERGE_NOT_REVERSIBLE,
            f"the survivor {survivor_id} was erased, and with it the members merged into it",
            field="mergeId",
        )
    moved = merge_row["moved"]
    current = await _json(conn, survivor_id)
    # Restore the survivor first so the merged member's phone is free again when it comes back.
    await _restore.run(
        conn,
        survivor_id=survivor_id,
        merged_id=merged_id,
        before=Jsonb(moved["survivor_before"]),
        after=Jsonb(moved["survivor_after"]),
    )
    await _unmark_merged.run(conn, merged_id=merged_id)
    await _return_identities.run(
        conn, ids=[i["id"] for i in moved["identities"]], survivor_id=survivor_id, merged_id=merged_id
    )
    await _move_orders.run(conn, from_id=survivor_id, to_id=merged_id, ids=moved["orders"])
    if "tags" in moved:  # merges recorded before tags moved with them have nothing to give back
        await tags.restore_on_unmerge(
            conn,
            brand_id=merge_row["brand_id"],
            survivor_id=survivor_id,
            merged_id=merged_id,
            record=moved["tags"],
        )
    await journal.transfer(
        conn,
        brand_id=merge_row["brand_id"],
        from_id=survivor_id,
        to_id=merged_id,
        lot_ids=moved["lots"],
        key=f"unmerge:{merge_id}",
        operation="unmerge",
        note=f"merge {merge_id} undone",
    )
    await _close.run(conn, merge_id=merge_id)
    await _record_tier_change(
        conn, merge_row["brand_id"], survivor_id, current, await _json(conn, survivor_id), f"unmerge {merge_id}"
    )
    closed = await _merges_by_id.one(conn, ids=[merge_id])
    assert closed is not None
    return closed


async def merges_by_id(conn: AsyncConnection[Any], ids: Sequence[int]) -> list[Row]:
    return await _merges_by_id.all(conn, ids=list(ids))


_merges_by_member = Query(
    sa.select(*MERGE_COLUMNS)
    .where(sa.or_(member_merges.c.survivor_id == sa.any_(_IDS), member_merges.c.merged_id == sa.any_(_IDS)))
    .order_by(member_merges.c.merged_at, member_merges.c.id)
)


async def merges_by_member(conn: AsyncConnection[Any], ids: Sequence[int]) -> list[list[Row]]:
    """Merges each member took part in (as survivor or merged), oldest first, one list per id."""
    buckets: dict[int, list[Row]] = {member_id: [] for member_id in ids}
    for row in await _merges_by_member.all(conn, ids=list(ids)):
        for member_id in {row["survivor_id"], row["merged_id"]}:
            if member_id in buckets:
                buckets[member_id].append(row)
    return [buckets[member_id] for member_id in ids]

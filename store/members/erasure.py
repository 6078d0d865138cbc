"""Erasure (PIPL's right to deletion): a member's personal data goes, its ledger stays.

`erase` empties the member's personal columns (name, gender, birthday, city and the phone's hash,
ciphertext and masked form: with the hash gone the number finds nobody, with the ciphertext gone it
cannot be read back), deletes its channel identities (WeChat unionid/openid, platform buyer ids),
its tag assignments and its marketing consents, and scrubs the copies merges kept of them
(`member_merges.moved`: the moved identities' external ids and the survivor's columns before and
after). The member row stays with
its id, tier, balance and counters, and so do its orders, postings, entries, lots and tier changes:
the journal balances as before, under an id that no longer names anyone. `members.erased_at` marks
it; the database refuses personal data on an erased member (check constraint, migration 0008).

Members merged into the erased one, recursively, are the same person: they are erased with it (their
phone would otherwise still find the survivor). A member merged into another is refused with
ALREADY_MERGED naming the survivor, as every write to it is. Erasing twice answers the same and
writes nothing the second time. An erased member cannot take part in a merge, an unmerge or an
explicit identity binding again (store.members.merges, store.members.unification); a registration
with its old phone or channel id creates a new member.

The audience index drops erased members from its universe (store.audiences.index_facts): the
members are queued for it here, every key family, as the triggers do for other writes. The group's
person index (store.audiences.persons) forgets the phone's hash here, before it is emptied, unless
another member of the group holds the same number.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

from store.audiences import persons
from store.errors import DomainError, ErrorCode
from store.sql import Query
from store.tables import audience_changes, member_consents, member_identities, member_merges, member_tags, members
from store.transactions import Retry

MAX_REASON = 500
# Members columns that hold personal data, and what an erased member holds instead.
PERSONAL: dict[str, Any] = {
    "display_name": None,
    "gender": "unknown",
    "birthday": None,
    "city": None,
    "phone_hash": None,
    "phone_encrypted": None,
    "phone_masked": None,
}
# What a merge record shows in place of an erased member's external id.
ERASED_EXTERNAL_ID = "[erased]"

_IDS = sa.bindparam("ids", type_=ARRAY(sa.BigInteger))

# The member and every member merged into it, following merges backwards.
_family = sa.select(members.c.id).where(members.c.id == sa.bindparam("member_id")).cte("family", recursive=True)
_family = _family.union_all(sa.select(members.c.id).join(_family, members.c.merged_into == _family.c.id))
_family_ids = Query(sa.select(_family.c.id).order_by(_family.c.id))
_lock = Query(
    sa.select(members.c.id, members.c.brand_id, members.c.merged_into, members.c.erased_at)
    .where(members.c.id == sa.any_(_IDS))
    .order_by(members.c.id)
    .with_for_update()
)
_delete_identities = Query(
    sa.delete(member_identities)
    .where(member_identities.c.member_id == sa.any_(_IDS))
    .returning(member_identities.c.channel, member_identities.c.external_id)
)
_delete_tags = Query(sa.delete(member_tags).where(member_tags.c.member_id == sa.any_(_IDS)))
_delete_consents = Query(sa.delete(member_consents).where(member_consents.c.member_id == sa.any_(_IDS)))
_merges = Query(
    sa.select(member_merges.c.id, member_merges.c.merged_id, member_merges.c.moved)
    .where(sa.or_(member_merges.c.survivor_id == sa.any_(_IDS), member_merges.c.merged_id == sa.any_(_IDS)))
    .order_by(member_merges.c.id)
    .with_for_update()
)
_set_moved = Query(
    sa.update(member_merges)
    .where(member_merges.c.id == sa.bindparam("merge_id"))
    .values(moved=sa.bindparam("moved", type_=JSONB))
)
_empty = Query(
    sa.update(members)
    .where(members.c.id == sa.any_(_IDS))
    .values(
        {name: sa.null() if value is None else sa.literal(value) for name, value in PERSONAL.items()}
        | {"erased_at": sa.func.now()}
    )
    .returning(members.c.id, members.c.erased_at)
)
# Every key family (the column's default): the member leaves the index's universe.
_queue = Query(
    sa.insert(audience_changes).from_select(
        ["brand_id", "member_id"],
        sa.select(members.c.brand_id, members.c.id).where(members.c.id == sa.any_(_IDS)),
    )
)


@dataclass(frozen=True, slots=True)
class Erasure:
    member_id: int
    erased_at: dt.datetime
    member_ids: tuple[int, ...]
    """The member and the members merged into it, erased with it, ascending."""


def check_reason(reason: str) -> str:
    text = reason.strip()
    if not 1 <= len(text) <= MAX_REASON:
        raise DomainError(ErrorCode.INVALID_INPUT, f"reason must be 1-{MAX_REASON} characters", field="reason")
    return text


def _unknown(member_id: int) -> DomainError:
    # Word for word what a missing id answers: another brand's member must not be told apart.
    return DomainError(ErrorCode.UNKNOWN_MEMBER, f"no member {member_id} in this brand", field="memberId")


async def erase(conn: AsyncConnection[Any], *, brand_id: int, member_id: int, reason: str) -> Erasure:
    """Erase the member's personal data (and that of the members merged into it). Runs in the
    caller's transaction; raises `Retry` when a merge changed the family while it was locked."""
    check_reason(reason)
    family = [row["id"] for row in await _family_ids.all(conn, member_id=member_id)]
    rows = {row["id"]: row for row in await _lock.all(conn, ids=family)}  # the ledger's lock order: by id
    member = rows.get(member_id)
    if member is None or member["brand_id"] != brand_id:
        raise _unknown(member_id)
    if member["merged_into"] is not None:
        raise DomainError(
            ErrorCode.ALREADY_MERGED,
            f"member {member_id} was merged into member {member['merged_into']}; erase that member",
            field="memberId",
            member_id=member["merged_into"],
        )
    if [row["id"] for row in await _family_ids.all(conn, member_id=member_id)] != family:
        raise Retry(f"a merge changed member {member_id}'s merged members while they were locked")
    if member["erased_at"] is not None:  # erased before: the same answer, nothing written
        return Erasure(member_id, member["erased_at"], tuple(family))

    channel_ids = {(row["channel"], row["external_id"]) for row in await _delete_identities.all(conn, ids=family)}
    await _delete_tags.run(conn, ids=family)
    await _delete_consents.run(conn, ids=family)  # with no phone or channel id left, nobody to contact
    erased = set(family)
    for merge in await _merges.all(conn, ids=family):
        moved = _scrubbed(merge["moved"], channel_ids, all_erased=merge["merged_id"] in erased)
        await _set_moved.run(conn, merge_id=merge["id"], moved=Jsonb(moved))
    await persons.forget_phones(conn, family)  # the group's person ids of these phones, when no one else holds them
    emptied = {row["id"]: row["erased_at"] for row in await _empty.all(conn, ids=family)}
    await _queue.run(conn, ids=family)
    return Erasure(member_id, emptied[member_id], tuple(family))


def _scrubbed(moved: dict[str, Any], channel_ids: set[tuple[str, str]], *, all_erased: bool) -> dict[str, Any]:
    """A merge record without the erased data: the moved identities' external ids (all of them when
    the merged member is erased, else those of erased members) and the survivor's personal columns
    before and after (the record of a merge still in force between erased members, or of one undone
    long ago: nothing reads them again, as an erased member's merge is never undone)."""
    scrubbed = dict(moved)
    scrubbed["identities"] = [
        {**identity, "external_id": ERASED_EXTERNAL_ID}
        if all_erased or (identity["channel"], identity["external_id"]) in channel_ids
        else identity
        for identity in moved.get("identities", [])
    ]
    for side in ("survivor_before", "survivor_after"):
        if isinstance(moved.get(side), dict):
            scrubbed[side] = {**moved[side], **{name: value for name, value in PERSONAL.items() if name in moved[side]}}
    return scrubbed

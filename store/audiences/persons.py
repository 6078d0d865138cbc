"""The person index: which persons each brand of a group has, as bitmaps (brandOverlap reads it).

A person is a phone number within a group (its keyed hash, as `Member.person` links memberships);
a member without a phone is a person of its own, whom no other brand can share, so it is left out
here (store.audiences.overlap counts it from the brand's universe). Every phone hash of a group gets
a dense person id on first sight (`group_persons`: ids 0, 1, 2 ... so 65,536 persons fill a chunk);
each live member with a phone is recorded with its person (`brand_persons`, what the bitmaps were
built from), and each brand's persons are a bitmap per chunk of person ids (`person_bitmaps`). A
brand has at most one live member per phone hash (uq_members_brand_id_phone_hash), so its person
bits and its recorded members correspond one to one.

The index's applier keeps it, in its transaction and under the brand's lock (store.audiences.deltas):
after a rebuild of the brand's index the brand's persons are rebuilt too (`build`); after a delta
the touched members are compared with what was recorded (`apply`): a member merged away, erased,
given or stripped of a phone. The members trigger queues a change of phone with the family bit
PHONE_FAMILY (migration 0016), which touches no key of the audience index. A brand without a state
row (older than 0016, after a failed pass or a rebuild outside the applier) is due for the applier
(store.audiences.deltas._due), whose next pass builds it; `omnimember refresh` rebuilds every brand's.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from psycopg import AsyncConnection
from sqlalchemy.dialects.postgresql import ARRAY, insert

from store.audiences.bitmaps import binary_rows, chunk_rows, copy_rows
from store.brands import for_each_brand
from store.sql import Query
from store.tables import brand_persons, brands, group_persons, members, person_bitmaps, person_index_state
from tagquery.bitmap_keys import ALL_FAMILIES, CHUNK_BITS, CHUNK_SIZE, FAMILIES

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

log = logging.getLogger(__name__)

PHONE_FAMILY = 1 << 20  # the members trigger's bit for a change of phone (migration 0016)
assert not PHONE_FAMILY & ALL_FAMILIES, "the phone's bit must stay outside the audience index's families"

_IDS = sa.bindparam("ids", type_=ARRAY(sa.BigInteger))
_BRAND = sa.bindparam("brand_id", type_=sa.BigInteger)
_GROUP = sa.bindparam("group_id", type_=sa.BigInteger)
_m, _g, _p = members.c, group_persons.c, brand_persons.c

_group_of = Query(sa.select(brands.c.group_id).where(brands.c.id == _BRAND))
# New person ids are handed out under the group's lock: two brands of a group may apply at once.
_lock_group = Query(sa.select(sa.func.pg_advisory_xact_lock(sa.literal(0x706572), sa.bindparam("group_id"))))
# It also serialises every writer of a brand's persons: the applier (under the brand's index lock
# too) and `omnimember refresh`, which rebuilds them beside the index, outside the index lock.


def _live_with_phone(*more: sa.ColumnElement[bool]) -> sa.ColumnElement[bool]:
    """Live members of the brand that hold a phone (an erased member holds none: a check constraint)."""
    return sa.and_(
        _m.brand_id == _BRAND, _m.merged_into.is_(None), _m.erased_at.is_(None), _m.phone_hash.is_not(None), *more
    )


def _assign(*more: sa.ColumnElement[bool]) -> Query:
    """Person ids for the phone hashes of those members that the group has not seen, numbered on
    from the group's highest."""
    unseen = (
        sa.select(_m.phone_hash)
        .distinct()
        .where(
            _live_with_phone(*more),
            ~sa.exists().where(_g.group_id == _GROUP, _g.phone_hash == _m.phone_hash),
        )
        .subquery("unseen")
    )
    base = sa.select(sa.func.coalesce(sa.func.max(_g.person_id) + 1, 0)).where(_g.group_id == _GROUP).scalar_subquery()
    numbered = sa.select(
        _GROUP, unseen.c.phone_hash, base + sa.func.row_number().over(order_by=unseen.c.phone_hash) - 1
    )
    return Query(sa.insert(group_persons).from_select(["group_id", "phone_hash", "person_id"], numbered))


def _persons_of(*more: sa.ColumnElement[bool]) -> sa.Select[Any]:
    """(member_id, brand_id, person_id) of those members."""
    joined = members.join(group_persons, sa.and_(_g.group_id == _GROUP, _g.phone_hash == _m.phone_hash))
    return sa.select(_m.id, _m.brand_id, _g.person_id).select_from(joined).where(_live_with_phone(*more))


_COLUMNS = ["member_id", "brand_id", "person_id"]
_assign_brand = _assign()
_assign_members = _assign(_m.id == sa.any_(_IDS))
# A rebuild records the brand's persons as an upsert that writes only the rows that differ, then
# drops the rows of members no longer live with a phone: deleting and inserting every row again
# cost 7 s for 510,000 members (each insert checking the unique index past its deleted twin).
_upsert = insert(brand_persons).from_select(_COLUMNS, _persons_of())
_record_brand = Query(
    _upsert.on_conflict_do_update(
        index_elements=[_p.member_id],
        set_={"brand_id": _upsert.excluded.brand_id, "person_id": _upsert.excluded.person_id},
        where=sa.tuple_(_p.brand_id, _p.person_id).is_distinct_from(
            sa.tuple_(_upsert.excluded.brand_id, _upsert.excluded.person_id)
        ),
    )
)
_live = members.alias("live")
_forget_brand = Query(
    sa.delete(brand_persons).where(
        _p.brand_id == _BRAND,
        ~sa.exists().where(
            _live.c.id == _p.member_id,
            _live.c.brand_id == _BRAND,
            _live.c.merged_into.is_(None),
            _live.c.erased_at.is_(None),
            _live.c.phone_hash.is_not(None),  # every live phone has its person: `_assign` ran first
        ),
    )
)
_recorded = Query(sa.select(_p.member_id, _p.person_id).where(_p.member_id == sa.any_(_IDS)))
_forget_members = Query(sa.delete(brand_persons).where(_p.member_id == sa.any_(_IDS)))
_record_members = Query(
    sa.insert(brand_persons).from_select(_COLUMNS, _persons_of(_m.id == sa.any_(_IDS))).returning(_p.person_id)
)
_drop_unheld = Query(
    sa.delete(group_persons).where(
        _g.group_id == _GROUP,
        _g.person_id == sa.any_(_IDS),
        ~sa.exists()
        .select_from(members.join(brands, brands.c.id == _m.brand_id))
        .where(brands.c.group_id == _GROUP, _m.phone_hash == _g.phone_hash),
    )
)
_person_ids = Query(
    sa.select(sa.func.string_agg(sa.func.int8send(_p.person_id), sa.literal_column("''::bytea")).label("ids")).where(
        _p.brand_id == _BRAND
    )
)
_clear_brand = Query(sa.delete(person_bitmaps).where(person_bitmaps.c.brand_id == _BRAND))
_chunks = Query(
    sa.select(person_bitmaps.c.chunk, sa.func.varbit_send(person_bitmaps.c.bits).label("bits")).where(
        person_bitmaps.c.brand_id == _BRAND,
        person_bitmaps.c.chunk == sa.any_(sa.bindparam("chunks", type_=ARRAY(sa.Integer))),
    )
)
_clear_chunks = Query(
    sa.delete(person_bitmaps).where(
        person_bitmaps.c.brand_id == _BRAND,
        person_bitmaps.c.chunk == sa.any_(sa.bindparam("chunks", type_=ARRAY(sa.Integer))),
    )
)
_state = Query(sa.select(person_index_state.c.brand_id).where(person_index_state.c.brand_id == _BRAND))
_built = Query(
    sa.text("""
INSERT INTO person_index_state (brand_id, built_at, applied_at) VALUES (:brand_id, now(), now())
ON CONFLICT (brand_id) DO UPDATE SET built_at = now(), applied_at = now()
""")
)
_applied = Query(
    sa.update(person_index_state).where(person_index_state.c.brand_id == _BRAND).values(applied_at=sa.func.now())
)
_COPY = "COPY person_bitmaps (brand_id, chunk, bits) FROM STDIN (FORMAT BINARY)"


async def build(conn: AsyncConnection[Any], brand_id: int) -> int:
    """The brand's persons from the system of record, replacing what was recorded; returns them."""
    group_id = await _group_of.scalar(conn, brand_id=brand_id)
    await _lock_group.scalar(conn, group_id=group_id)
    await _assign_brand.run(conn, brand_id=brand_id, group_id=group_id)
    await _record_brand.run(conn, brand_id=brand_id, group_id=group_id)
    await _forget_brand.run(conn, brand_id=brand_id)
    await _clear_brand.run(conn, brand_id=brand_id)
    data = await _person_ids.scalar(conn, brand_id=brand_id)
    found = 0
    if data:  # none: no numpy to import (a count on a new brand needs none: issue 16)
        import numpy as np

        persons = np.frombuffer(data, dtype=">i8").astype(np.int64)
        await _write(conn, brand_id, persons)
        found = int(persons.size)
    await _built.run(conn, brand_id=brand_id)
    return found


async def apply(conn: AsyncConnection[Any], brand_id: int, member_ids: Sequence[int]) -> None:
    """Bring the persons of these members of a built brand up to date (any of them may be merged
    away, erased, deleted, or hold another phone than was recorded)."""
    ids = list(member_ids)
    group_id = await _group_of.scalar(conn, brand_id=brand_id)
    await _lock_group.scalar(conn, group_id=group_id)  # before reading what was recorded: a build may be writing it
    before = {row["member_id"]: row["person_id"] for row in await _recorded.all(conn, ids=ids)}
    await _assign_members.run(conn, brand_id=brand_id, group_id=group_id, ids=ids)
    await _forget_members.run(conn, ids=ids)
    after = {row["person_id"] for row in await _record_members.all(conn, brand_id=brand_id, group_id=group_id, ids=ids)}
    # No other live member of the brand holds a person that left these: one live member a phone
    # (uq_members_brand_id_phone_hash), and whoever took the phone over is among them (queued).
    gone = set(before.values()) - after
    await _flip(conn, brand_id, added=after - set(before.values()), removed=gone)
    if gone:  # a number nobody in the group holds any longer (changed, erased) is not kept
        await _drop_unheld.run(conn, group_id=group_id, ids=list(gone))
    await _applied.run(conn, brand_id=brand_id)


async def _flip(conn: AsyncConnection[Any], brand_id: int, *, added: set[int], removed: set[int]) -> None:
    """Set the bits of `added` persons and clear those of `removed`, rewriting the chunks they are in."""
    import numpy as np  # lazily: a count needs none (issue 16)

    chunks = sorted({person >> CHUNK_BITS for person in added | removed})
    if not chunks:
        return
    held = np.zeros((len(chunks), CHUNK_SIZE), dtype=np.bool_)
    row_of = {chunk: row for row, chunk in enumerate(chunks)}
    for found in await _chunks.all(conn, brand_id=brand_id, chunks=chunks):
        held[row_of[found["chunk"]]] = np.unpackbits(np.frombuffer(found["bits"], dtype=np.uint8)[4:]).view(np.bool_)
    for people, value in ((removed, False), (added, True)):
        for person in people:
            held[row_of[person >> CHUNK_BITS], person & (CHUNK_SIZE - 1)] = value
    rows, offsets = np.nonzero(held)
    await _clear_chunks.run(conn, brand_id=brand_id, chunks=chunks)
    await _write(conn, brand_id, (np.array(chunks, dtype=np.int64)[rows] << CHUNK_BITS) | offsets)


async def _write(conn: AsyncConnection[Any], brand_id: int, persons: npt.NDArray[np.int64]) -> None:
    """COPY the chunks holding `persons` (none for a chunk left empty)."""
    rows = ((brand_id, chunk, bits) for _, chunk, bits in chunk_rows("", persons))
    async with conn.cursor() as cur:
        await copy_rows(cur, _COPY, binary_rows(rows, "qib"))


async def after_apply(conn: AsyncConnection[Any], brand_id: int, changed: Mapping[int, int] | None) -> None:
    """The applier's hook, in its transaction: every member after a rebuild (None), else those of
    the delta whose change can move a person (added, merged, deleted, erased, a phone changed).
    Persons must never stop the index: a failure is logged and rolled back alone, and the brand's
    persons are rebuilt by the next pass."""
    touched = None if changed is None else [m for m, families in changed.items() if m and families & _MOVES_PERSON]
    try:
        async with conn.transaction():  # a savepoint
            if touched is None or await _state.scalar(conn, brand_id=brand_id) is None:
                await build(conn, brand_id)
            elif touched:
                await apply(conn, brand_id, touched)
    except Exception:
        log.exception("persons of brand %s: not updated with this delta; the next pass rebuilds them", brand_id)
        await _forget_state.run(conn, brand_id=brand_id)  # so the brand is due (deltas._due) and rebuilt


_MOVES_PERSON = PHONE_FAMILY | FAMILIES["u"]  # the universe's family: added, deleted, merged, erased
_forget_state = Query(sa.delete(person_index_state).where(person_index_state.c.brand_id == _BRAND))


# --- erasure ------------------------------------------------------------------------------------

# The phone hashes of these members, unless a member beside them in the group still holds the phone:
# with the last holder erased, the group's record of the number goes too (store.members.erasure).
_forget_phones = Query(
    sa.text("""
DELETE FROM group_persons g USING members m, brands b
WHERE m.id = ANY(:ids) AND m.phone_hash IS NOT NULL AND b.id = m.brand_id
  AND g.group_id = b.group_id AND g.phone_hash = m.phone_hash
  AND NOT EXISTS (SELECT 1 FROM members o JOIN brands ob ON ob.id = o.brand_id
                  WHERE ob.group_id = b.group_id AND o.phone_hash = m.phone_hash AND o.id <> ALL(:ids))
""").bindparams(_IDS)
)


async def forget_phones(conn: AsyncConnection[Any], member_ids: Sequence[int]) -> None:
    """Before their phones are emptied (erasure): drop the group's person ids of the phones no
    other member holds. The persons' bits go with the applier's pass, which the erasure queues."""
    await _forget_phones.run(conn, ids=list(member_ids))


# --- reading ------------------------------------------------------------------------------------

_RECORD = 4 + 4 + CHUNK_SIZE // 8  # chunk (int4), bit count (int4), bits
_asked = sa.func.unnest(_IDS).table_valued("brand_id").render_derived(name="asked")
_records = (
    sa.select(
        sa.func.string_agg(
            sa.func.int4send(person_bitmaps.c.chunk).op("||")(sa.func.varbit_send(person_bitmaps.c.bits)),
            sa.literal_column("''::bytea"),
        )
    )
    .where(person_bitmaps.c.brand_id == _asked.c.brand_id)
    .scalar_subquery()
)
# Per brand asked: whether its persons were ever built, and its bitmaps as chunk records.
_by_brand = Query(
    sa.select(
        _asked.c.brand_id, person_index_state.c.brand_id.is_not(None).label("built"), _records.label("chunks")
    ).select_from(_asked.outerjoin(person_index_state, person_index_state.c.brand_id == _asked.c.brand_id))
)


async def shared_persons(
    conn: AsyncConnection[Any], brand_ids: Sequence[int]
) -> tuple[list[int], list[tuple[int, int]]]:
    """The brands whose persons were never built (older than migration 0016, the applier's next pass
    builds them), and (brands as bits, persons) for the persons in two of the brands or more: bit i
    is brand_ids[i]."""
    import numpy as np  # lazily: a count needs none (issue 16)

    rows = await _by_brand.all(conn, ids=list(brand_ids))
    unbuilt = [row["brand_id"] for row in rows if not row["built"]]
    found = {row["brand_id"]: row["chunks"] for row in rows}
    records = {
        brand_id: np.frombuffer(found[brand_id], dtype=np.uint8).reshape(-1, _RECORD)
        for brand_id in brand_ids
        if found.get(brand_id)
    }
    chunk_of = {brand_id: rows[:, :4].copy().view(">i4").astype(np.int64).ravel() for brand_id, rows in records.items()}
    chunks = np.unique(np.concatenate([*chunk_of.values(), np.empty(0, dtype=np.int64)]))
    # Per person, its brands' bits, in the narrowest integers that hold one bit a brand.
    kind = next(kind for kind in (np.uint8, np.uint16, np.uint32, np.uint64) if np.iinfo(kind).bits >= len(brand_ids))
    held = np.zeros((chunks.size, CHUNK_SIZE), dtype=kind)
    for i, brand_id in enumerate(brand_ids):
        if brand_id in records:
            bits = np.unpackbits(records[brand_id][:, 8:], axis=1).astype(kind)
            held[np.searchsorted(chunks, chunk_of[brand_id])] |= np.left_shift(bits, kind(i))
    several = held[(held & (held - kind(1))) != 0]  # persons in two brands or more
    combos, counts = np.unique(several, return_counts=True)
    return unbuilt, [(int(combo), int(n)) for combo, n in zip(combos, counts, strict=True)]


async def refresh(url: str, brand: str | None) -> list[tuple[str, int]]:
    """`omnimember refresh`: rebuild one brand's (by code) or every brand's persons, each in a
    transaction of its own (under the group's lock: `build`), beside the index's rebuild."""

    async def rebuilt(conn: AsyncConnection[Any], row: Mapping[str, Any]) -> int:
        async with conn.transaction():
            return await build(conn, row["id"])

    return await for_each_brand(url, brand, rebuilt)

"""The person index (store.audiences.persons) against the system of record: after any mix of
writes, the applier's incremental path leaves each brand's person bits equal to its live members'
phones and to a full rebuild; shared persons equal what SQL finds; a change of phone alone moves a
person; a brand older than the index is built by the next pass and answers INDEX_NOT_READY until."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from store.audiences import deltas, persons
from store.audiences.bitmaps import lock_brand, rebuild
from store.audiences.deltas import apply_all, apply_brand
from store.brands import brand_by_code
from store.members import erasure
from tests.conftest import GraphQL, new_brand, unique_code

PHONES = 6  # few, so that brands share them and members trade them


def _hash(phone: int) -> bytes:
    return hashlib.sha256(f"person-index-{phone}".encode()).digest()


@dataclasses.dataclass
class Brand:
    """What the test wrote: live members and their phones (None: none), merged-away members."""

    brand_id: int
    live: dict[int, int | None] = dataclasses.field(default_factory=dict)
    merged: dict[int, int | None] = dataclasses.field(default_factory=dict)

    def free_phones(self) -> list[int]:
        held = {phone for phone in self.live.values() if phone is not None}
        return [phone for phone in range(PHONES) if phone not in held]


async def _group(pool: AsyncConnectionPool[Any], brands: int) -> list[Brand]:
    group = unique_code("g")
    codes = [await new_brand(pool, group) for _ in range(brands)]
    async with pool.connection() as conn:
        return [Brand((await brand_by_code(conn, code))["id"]) for code in codes]


async def _set_phone(conn: AsyncConnection[Any], member_id: int, phone: int | None) -> None:
    value = None if phone is None else _hash(phone)
    await conn.execute(
        "UPDATE members SET phone_hash = %s, phone_encrypted = %s, phone_masked = %s WHERE id = %s",
        (value, value, value and "138****0000", member_id),
    )


# One write: (what, brand index, a number that picks a member or a phone).
_writes = st.lists(
    st.tuples(
        st.sampled_from(["add", "phone", "unphone", "merge", "unmerge", "erase"]), st.integers(0, 1), st.integers(0, 99)
    ),
    max_size=12,
)


async def _write(conn: AsyncConnection[Any], brand: Brand, what: str, pick: int) -> None:
    live = sorted(brand.live)
    free = brand.free_phones()
    if what == "add":
        phone = free[pick % len(free)] if free and pick % 3 else None
        value = None if phone is None else _hash(phone)
        found = await conn.execute(
            "INSERT INTO members (brand_id, tier, phone_hash, phone_encrypted, phone_masked)"
            " VALUES (%s, 'silver', %s, %s, %s) RETURNING id",
            (brand.brand_id, value, value, value and "138****0000"),
        )
        row = await found.fetchone()
        assert row is not None
        brand.live[row[0]] = phone
    elif what == "phone" and live and free:  # a new phone, or a first one
        member, phone = live[pick % len(live)], free[pick % len(free)]
        await _set_phone(conn, member, phone)
        brand.live[member] = phone
    elif what == "unphone" and live:
        member = live[pick % len(live)]
        await _set_phone(conn, member, None)
        brand.live[member] = None
    elif what == "merge" and len(live) > 1:  # the merged member keeps its phone, as merges leave it
        member = live[pick % len(live)]
        into = next(other for other in live if other != member)
        await conn.execute("UPDATE members SET merged_into = %s, merged_at = now() WHERE id = %s", (into, member))
        brand.merged[member] = brand.live.pop(member)
    elif what == "unmerge" and brand.merged:
        member = sorted(brand.merged)[pick % len(brand.merged)]
        phone = brand.merged[member]
        if phone is not None and phone not in free:  # its phone is someone else's now: it comes back without
            await _set_phone(conn, member, None)
            phone = None
        await conn.execute("UPDATE members SET merged_into = NULL, merged_at = NULL WHERE id = %s", (member,))
        del brand.merged[member]
        brand.live[member] = phone
    elif what == "erase" and live:
        member = live[pick % len(live)]
        await conn.execute(
            "UPDATE members SET erased_at = now(), phone_hash = NULL, phone_encrypted = NULL, phone_masked = NULL"
            " WHERE id = %s",
            (member,),
        )
        del brand.live[member]


async def _bits(conn: AsyncConnection[Any], brand_id: int) -> set[int]:
    """The brand's persons as its bitmaps hold them."""
    rows = await (
        await conn.execute("SELECT chunk, varbit_send(bits) FROM person_bitmaps WHERE brand_id = %s", (brand_id,))
    ).fetchall()
    found = set()
    for chunk, bits in rows:
        for offset, byte in enumerate(bits[4:]):
            found |= {chunk << 16 | offset * 8 + bit for bit in range(8) if byte & (128 >> bit)}
    return found


async def _expected(conn: AsyncConnection[Any], brand: Brand) -> set[int]:
    """The persons of the brand's live members with a phone, by the group's person ids."""
    phones = [_hash(phone) for phone in brand.live.values() if phone is not None]
    rows = await (
        await conn.execute(
            "SELECT g.person_id FROM group_persons g JOIN brands b ON b.group_id = g.group_id"
            " WHERE b.id = %s AND g.phone_hash = ANY(%s)",
            (brand.brand_id, phones),
        )
    ).fetchall()
    assert len(rows) == len(phones), "every live phone has a person id"
    return {row[0] for row in rows}


def _shared(brands: list[Brand]) -> list[tuple[int, int]]:
    """(brands as bits, persons) for the phones live in two brands or more, from the test's own record."""
    held: dict[int, int] = {}
    for i, brand in enumerate(brands):
        for phone in brand.live.values():
            if phone is not None:
                held[phone] = held.get(phone, 0) | 1 << i
    several = [bits for bits in held.values() if bits & (bits - 1)]
    return sorted((bits, several.count(bits)) for bits in set(several))


_GROUP_PHONES = "SELECT phone_hash FROM group_persons WHERE group_id = (SELECT group_id FROM brands WHERE id = %s)"


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(before=_writes, after=_writes)
async def test_incremental_persons_equal_the_members_and_a_rebuild(
    pool: AsyncConnectionPool[Any], before: list[tuple[str, int, int]], after: list[tuple[str, int, int]]
) -> None:
    brands = await _group(pool, 2)
    async with pool.connection() as conn:
        for what, i, pick in [("add", 0, 1), ("add", 1, 1), *before]:
            await _write(conn, brands[i], what, pick)
        for brand in brands:  # the first pass rebuilds the brand's index, and its persons with it
            assert await apply_brand(conn, brand.brand_id, wait=True) is not None
        for what, i, pick in after:
            await _write(conn, brands[i], what, pick)
        for brand in brands:  # a delta: the incremental path
            assert await apply_brand(conn, brand.brand_id, wait=True) is not None
        incremental = [await _bits(conn, brand.brand_id) for brand in brands]
        assert incremental == [await _expected(conn, brand) for brand in brands]
        unbuilt, shared = await persons.shared_persons(conn, [brand.brand_id for brand in brands])
        assert (unbuilt, sorted(shared)) == ([], _shared(brands))
        # The group keeps the numbers its members hold: every live one, never one nobody holds.
        kept = {row[0] for row in await (await conn.execute(_GROUP_PHONES, (brands[0].brand_id,))).fetchall()}
        live = {_hash(p) for brand in brands for p in brand.live.values() if p is not None}
        held = live | {_hash(p) for brand in brands for p in brand.merged.values() if p is not None}
        assert live <= kept <= held
        async with conn.transaction():
            for brand in brands:
                await persons.build(conn, brand.brand_id)
        assert [await _bits(conn, brand.brand_id) for brand in brands] == incremental
        # A rebuild over what was recorded before more writes (members gone, phones changed): exact.
        for what, i, pick in before:
            await _write(conn, brands[i], what, pick + 1)
        async with conn.transaction():
            for brand in brands:
                await persons.build(conn, brand.brand_id)
        assert [await _bits(conn, brand.brand_id) for brand in brands] == [await _expected(conn, b) for b in brands]
        recorded = await (
            await conn.execute(
                "SELECT member_id, person_id FROM brand_persons WHERE brand_id = ANY(%s)",
                ([b.brand_id for b in brands],),
            )
        ).fetchall()
        assert {member for member, _ in recorded} == {
            m for brand in brands for m, phone in brand.live.items() if phone is not None
        }


async def test_the_same_phone_is_one_person_across_the_group_and_ids_are_dense(pool: AsyncConnectionPool[Any]) -> None:
    brands = await _group(pool, 3)
    async with pool.connection() as conn:
        for brand in brands:
            for pick in (1, 2, 4):  # phones 1, 2 and 4 of PHONES in every brand
                await _write(conn, brand, "add", pick)
            assert await apply_brand(conn, brand.brand_id, wait=True) is not None
        ids = [await _bits(conn, brand.brand_id) for brand in brands]
        assert ids[0] == ids[1] == ids[2] == {0, 1, 2}
        _, shared = await persons.shared_persons(conn, [brand.brand_id for brand in brands])
        assert shared == [(0b111, 3)]


async def test_a_change_of_phone_alone_is_queued_and_moves_the_person(pool: AsyncConnectionPool[Any]) -> None:
    brands = await _group(pool, 2)
    async with pool.connection() as conn:
        await _write(conn, brands[0], "add", 1)  # phone 1
        await _write(conn, brands[1], "add", 2)  # phone 2
        for brand in brands:
            await apply_brand(conn, brand.brand_id, wait=True)
        assert (await persons.shared_persons(conn, [b.brand_id for b in brands]))[1] == []
        member = next(iter(brands[1].live))
        await _set_phone(conn, member, 1)  # nothing the audience index keeps: only the phone
        queued = await (
            await conn.execute("SELECT families FROM audience_changes WHERE member_id = %s", (member,))
        ).fetchall()
        assert queued == [(persons.PHONE_FAMILY,)]
        await apply_brand(conn, brands[1].brand_id, wait=True)
        assert (await persons.shared_persons(conn, [b.brand_id for b in brands]))[1] == [(0b11, 1)]


BRAND_OVERLAP = "query ($g: String!) { brandOverlap(group: $g) { persons multiBrand } }"


async def test_a_brand_without_persons_answers_not_ready_until_the_next_pass_builds_them(
    pool: AsyncConnectionPool[Any], gql: GraphQL, monkeypatch: pytest.MonkeyPatch
) -> None:
    group = unique_code("g")
    codes = [await new_brand(pool, group) for _ in range(2)]
    async with pool.connection() as conn:
        brands = [Brand((await brand_by_code(conn, code))["id"]) for code in codes]
        for brand in brands:
            await _write(conn, brand, "add", 1)
            await apply_brand(conn, brand.brand_id, wait=True)
        assert (await gql(BRAND_OVERLAP, g=group))["brandOverlap"] == {"persons": 1, "multiBrand": 1}

        # As after migration 0016 or a failed pass: no state.
        real_build = persons.build

        async def broken(conn: AsyncConnection[Any], brand_id: int) -> int:
            raise RuntimeError("persons broke")

        monkeypatch.setattr(persons, "build", broken)
        await conn.execute("DELETE FROM person_index_state WHERE brand_id = %s", (brands[0].brand_id,))
        await _write(conn, brands[0], "add", 2)
        assert await apply_brand(conn, brands[0].brand_id, wait=True) is not None  # the index moved on
        answer = await gql.raw(BRAND_OVERLAP, g=group)
        assert answer["errors"][0]["extensions"]["code"] == "INDEX_NOT_READY"
        assert answer["errors"][0]["extensions"]["pending"] == 0  # as the audience index's own refusal
        assert codes[0] in answer["errors"][0]["message"]
        due = await (await conn.execute(deltas._due.sql)).fetchall()
        assert (brands[0].brand_id,) in due  # so that the next pass comes, with nothing queued

        monkeypatch.setattr(persons, "build", real_build)
    await apply_all(pool)  # the server's pass: the brand is due, its persons are built
    assert (await gql(BRAND_OVERLAP, g=group))["brandOverlap"] == {"persons": 2, "multiBrand": 1}


async def test_erasure_drops_the_groups_record_of_the_number_at_once_unless_another_member_holds_it(
    pool: AsyncConnectionPool[Any],
) -> None:
    brands = await _group(pool, 3)
    async with pool.connection() as conn:
        await _write(conn, brands[0], "add", 1)  # phone 1, alone in the group
        await _write(conn, brands[1], "add", 2)  # phone 2, held in two brands
        await _write(conn, brands[2], "add", 2)
        for brand in brands:
            await apply_brand(conn, brand.brand_id, wait=True)
        kept = await (await conn.execute(_GROUP_PHONES, (brands[0].brand_id,))).fetchall()
        assert {row[0] for row in kept} == {_hash(1), _hash(2)}
        async with conn.transaction():  # no pass of the applier in between
            for brand in brands[:2]:
                await erasure.erase(conn, brand_id=brand.brand_id, member_id=next(iter(brand.live)), reason="PIPL")
            kept = await (await conn.execute(_GROUP_PHONES, (brands[0].brand_id,))).fetchall()
    assert {row[0] for row in kept} == {_hash(2)}  # phone 2 is still brands[2]'s


async def test_a_rebuild_outside_the_applier_leaves_the_brand_due_and_refresh_builds_its_persons(
    pool: AsyncConnectionPool[Any], database_url: str
) -> None:
    """`omnimember refresh` and the benchmarks rebuild the index directly, draining the queue: the
    brand must not stay without persons (found in bench/overlap.py: INDEX_NOT_READY for good)."""
    brands = await _group(pool, 2)
    async with pool.connection() as conn:
        for brand in brands:
            await _write(conn, brand, "add", 4)  # a phone
        async with conn.transaction():
            await rebuild(conn, brands[0].brand_id)  # no person hook, the queue drained
        await conn.execute("DELETE FROM person_index_state WHERE brand_id = %s", (brands[0].brand_id,))
        due = await (await conn.execute(deltas._due.sql)).fetchall()
        assert (brands[0].brand_id,) in due
    code = (await _codes(pool, brands))[0]
    assert await persons.refresh(database_url, code) == [(code, 1)]
    async with pool.connection() as conn:
        assert await _bits(conn, brands[0].brand_id) == await _expected(conn, brands[0])
        assert (brands[0].brand_id,) not in await (await conn.execute(deltas._due.sql)).fetchall()


async def _codes(pool: AsyncConnectionPool[Any], brands: list[Brand]) -> list[str]:
    async with pool.connection() as conn:
        found = await conn.execute("SELECT id, code FROM brands WHERE id = ANY(%s)", ([b.brand_id for b in brands],))
        by_id = dict(await found.fetchall())
    return [by_id[brand.brand_id] for brand in brands]


async def test_refresh_rebuilds_persons_beside_an_index_rebuild_of_the_brand(
    pool: AsyncConnectionPool[Any], database_url: str
) -> None:
    """`omnimember refresh` rebuilds a brand's persons while its index is being rebuilt (issue 15's
    recompute floor): persons are serialised by the group's lock, not the index's."""
    brands = await _group(pool, 1)
    code = (await _codes(pool, brands))[0]
    async with pool.connection() as conn:
        await _write(conn, brands[0], "add", 2)
    async with pool.connection() as index_builder, index_builder.transaction():
        await lock_brand(index_builder, brands[0].brand_id, wait=True)  # as a rebuild holds it throughout
        assert await asyncio.wait_for(persons.refresh(database_url, code), timeout=10) == [(code, 1)]
    async with pool.connection() as conn:
        assert await _bits(conn, brands[0].brand_id) == await _expected(conn, brands[0])


async def test_the_applier_waits_for_a_persons_build_of_the_brand(pool: AsyncConnectionPool[Any]) -> None:
    """A pass beside a persons build of its brand (which `omnimember refresh` now runs beside the
    index, outside the index lock) waits for it and ends with the right persons: both take the
    group's lock, the pass before it reads what was recorded."""
    brands = await _group(pool, 1)
    async with pool.connection() as conn:
        await apply_brand(conn, brands[0].brand_id, wait=True)
        await _write(conn, brands[0], "add", 3)
    async with pool.connection() as applier:
        async with pool.connection() as builder, builder.transaction():
            await persons.build(builder, brands[0].brand_id)  # holds the group's lock until it commits
            applying = asyncio.ensure_future(apply_brand(applier, brands[0].brand_id, wait=True))
            done, _ = await asyncio.wait({applying}, timeout=1.5)
            assert not done  # waiting on the group's lock
        assert (await asyncio.wait_for(applying, timeout=10)) is not None
    async with pool.connection() as conn:
        assert await _bits(conn, brands[0].brand_id) == await _expected(conn, brands[0])

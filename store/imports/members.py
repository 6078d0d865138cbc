"""Importing members: one row per channel identity, unified by phone exactly as `registerMember` binds.

The rules are `store.members.unification`'s, row after row in file order: an identity already
bound changes nothing (its phone and profile are ignored, as a registration's would be); otherwise
a phone held by a live member of the brand (or by a member merged away, whose survivor it names)
binds the identity to that member and fills the profile fields the member has not given yet;
otherwise the row creates a prospect, and later rows with the same phone bind to it. Every row's
values are checked by the same functions a registration calls, before anything is written.

A chunk is set-based: its rows are checked and their phones hashed and encrypted in Python, copied
into a staging table, then merged in a few statements: drop identities already bound, find the
phones' holders (locking them), number the new members (each the first row of its phone, or a row
without one) and insert them as that row registers them, let every other row fill the profile of
its member (found or new), and bind the identities.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Any

import sqlalchemy as sa
from psycopg import AsyncConnection
from sqlalchemy.dialects.postgresql import BYTEA

from store.brands import entry_tier
from store.errors import DomainError, ErrorCode
from store.imports.files import Columns, Record
from store.imports.rows import (
    Reject,
    copy_bytes,
    copy_into,
    copy_line,
    copy_text,
    create_staging,
    day,
    rejected,
    required,
    staging_table,
)
from store.imports.staged import Merged, Staged
from store.members.phones import InvalidPhone, PhoneVault, mask, normalise
from store.members.profiles import member_id_by_phone
from store.members.unification import Profile, check_channel, check_external_id, check_profile
from store.sql import Query

COLUMNS = Columns(required=("channel", "external_id"), optional=("phone", "display_name", "gender", "birthday", "city"))
_staged = staging_table(
    "import_members",
    sa.Column("line", sa.BigInteger),
    sa.Column("channel", sa.Text),
    sa.Column("external_id", sa.Text),
    sa.Column("phone_hash", BYTEA),
    sa.Column("phone_encrypted", BYTEA),
    sa.Column("phone_masked", sa.Text),
    sa.Column("display_name", sa.Text),
    sa.Column("gender", sa.Text),
    sa.Column("birthday", sa.Date),
    sa.Column("city", sa.Text),
    sa.Column("member_id", sa.BigInteger),
    sa.Column("creates", sa.Boolean, nullable=False, server_default=sa.false()),
)
_COPIED = [column.name for column in _staged.c if column.name not in ("member_id", "creates")]

_analyze = "ANALYZE import_members"
# Identities already bound: registering them again changes nothing.
_drop_bound = Query(
    sa.text("""
DELETE FROM import_members s USING member_identities i
WHERE i.brand_id = :brand_id AND i.channel = s.channel AND i.external_id = s.external_id
""")
)
# The live holder of each phone (one per brand and phone: uq_members_brand_id_phone_hash), locked
# against a merge until the chunk commits (a foreign key check would lock it too, when the triggers
# run) with the lock the profile fill's UPDATE takes, in id order: the ledger's lock order.
_live_holders = Query(
    sa.text("""
WITH held AS (
    SELECT m.id, m.phone_hash FROM import_members s
    JOIN members m ON m.brand_id = :brand_id AND m.phone_hash = s.phone_hash AND m.merged_into IS NULL
    ORDER BY m.id FOR NO KEY UPDATE OF m
)
UPDATE import_members s SET member_id = held.id FROM held WHERE held.phone_hash = s.phone_hash
""")
)
_lock_member = Query(sa.text("SELECT id FROM members WHERE id = :member_id FOR NO KEY UPDATE"))
# Phones whose only holders were merged away: `member_id_by_phone` follows them to the survivor.
_merged_phones = Query(
    sa.text("""
SELECT DISTINCT s.phone_hash FROM import_members s
WHERE s.member_id IS NULL AND s.phone_hash IS NOT NULL
  AND EXISTS (SELECT 1 FROM members m WHERE m.brand_id = :brand_id AND m.phone_hash = s.phone_hash
              AND m.merged_into IS NOT NULL)
""")
)
_bind_phone = Query(
    sa.text("UPDATE import_members SET member_id = :member_id WHERE phone_hash = :phone_hash AND member_id IS NULL")
)
# A new member for the first row of each unheld phone and for each row without a phone, numbered
# from the members' sequence in line order (as one registration after another would be).
_number_new = Query(
    sa.text("""
WITH unheld AS (
    SELECT line, phone_hash, row_number() OVER (PARTITION BY phone_hash ORDER BY line) AS nth
    FROM import_members WHERE member_id IS NULL
), creators AS (
    SELECT line, nextval(CAST(:sequence AS regclass)) AS id
    FROM (SELECT line FROM unheld WHERE phone_hash IS NULL OR nth = 1 ORDER BY line) ordered
)
UPDATE import_members s SET member_id = creators.id, creates = true FROM creators WHERE s.line = creators.line
""")
)
_bind_to_new = Query(
    sa.text("""
UPDATE import_members s SET member_id = c.member_id FROM import_members c
WHERE s.member_id IS NULL AND c.creates AND c.phone_hash = s.phone_hash
""")
)
# New members as their first row registers them; their later rows fill in what it left empty.
_insert_new = Query(
    sa.text("""
INSERT INTO members (id, brand_id, tier, gender, phone_hash, phone_encrypted, phone_masked,
                     display_name, birthday, city)
SELECT member_id, :brand_id, :tier, coalesce(gender, 'unknown'), phone_hash, phone_encrypted, phone_masked,
       display_name, birthday, city
FROM import_members WHERE creates ORDER BY member_id
""")
)
# Rows that bound to a member fill the profile fields it has not given yet, each with the first value
# in line order (what filling row after row leaves; a gender counts once known: unknown is what a
# fill replaces). Not an erased member: it must hold no personal data (a registration would fail on
# the database's check there).
_fill = Query(
    sa.text("""
UPDATE members m
SET gender = CASE WHEN m.gender = 'unknown' THEN coalesce(p.gender, 'unknown') ELSE m.gender END,
    display_name = coalesce(m.display_name, p.display_name),
    birthday = coalesce(m.birthday, p.birthday),
    city = coalesce(m.city, p.city)
FROM (
    SELECT member_id,
           (array_agg(gender ORDER BY line) FILTER (WHERE gender IN ('male', 'female')))[1] AS gender,
           (array_agg(display_name ORDER BY line) FILTER (WHERE display_name IS NOT NULL))[1] AS display_name,
           (array_agg(birthday ORDER BY line) FILTER (WHERE birthday IS NOT NULL))[1] AS birthday,
           (array_agg(city ORDER BY line) FILTER (WHERE city IS NOT NULL))[1] AS city
    FROM import_members
    WHERE NOT creates
      AND (gender IN ('male', 'female') OR display_name IS NOT NULL OR birthday IS NOT NULL OR city IS NOT NULL)
    GROUP BY member_id
) p
WHERE m.id = p.member_id AND m.erased_at IS NULL
""")
)
_bind_identities = Query(
    sa.text("""
INSERT INTO member_identities (brand_id, member_id, channel, external_id)
SELECT :brand_id, member_id, channel, external_id FROM import_members ORDER BY line
""")
)
_created = Query(sa.text("SELECT count(*) FROM import_members WHERE creates"))
# Without triggers: the members the chunk created or bound to, for the audience index (every family).
_queue = Query(
    sa.text(
        "INSERT INTO audience_changes (brand_id, member_id) "
        "SELECT DISTINCT :brand_id, member_id FROM import_members WHERE member_id IS NOT NULL"
    )
)
_sequence = Query(sa.text("SELECT pg_get_serial_sequence('members', 'id')"))


class MemberImport:
    """Members rows for one brand: checked in `stage`, merged in `merge`."""

    kind = "members"
    columns = COLUMNS
    tables: tuple[str, ...] = ("members", "member_identities")

    def __init__(self, vault: PhoneVault, brand_id: int) -> None:
        self._vault = vault
        self._brand_id = brand_id
        self._tier = ""
        self._sequence = ""

    async def prepare(self, conn: AsyncConnection[Any]) -> None:
        await create_staging(conn, _staged)
        self._tier = await entry_tier(conn, self._brand_id)
        self._sequence = await _sequence.scalar(conn)

    def stage(self, records: list[Record]) -> Staged:
        """Check the rows (in a worker thread) and write the COPY text of those to merge."""
        today = dt.date.today()
        lines: list[str] = []
        rejects: list[Reject] = []
        seen: set[tuple[str, str]] = set()
        phones: dict[str, tuple[bytes, bytes, str]] = {}
        counts: Counter[str] = Counter()
        for record in records:
            try:
                channel, external_id, phone, profile = self._checked(record, today, phones)
            except DomainError as error:
                rejects.append(rejected(record.line, record.text, error))
                continue
            if (channel, external_id) in seen:  # bound by the first row: nothing to change
                counts["existing"] += 1
                continue
            seen.add((channel, external_id))
            hashed, encrypted, masked = phone or (None, None, None)
            lines.append(
                copy_line(
                    [
                        str(record.line),
                        copy_text(channel),
                        copy_text(external_id),
                        copy_bytes(hashed),
                        copy_bytes(encrypted),
                        copy_text(masked),
                        copy_text(profile.display_name),
                        copy_text(profile.gender),
                        copy_text(None if profile.birthday is None else profile.birthday.isoformat()),
                        copy_text(profile.city),
                    ]
                )
            )
        return Staged("".join(lines).encode(), len(lines), rejects, counts)

    def _checked(
        self, record: Record, today: dt.date, phones: dict[str, tuple[bytes, bytes, str]]
    ) -> tuple[str, str, tuple[bytes, bytes, str] | None, Profile]:
        """The row's values as a registration checks them, in its order; DomainError otherwise."""
        if record.problem is not None:
            raise DomainError(ErrorCode.INVALID_INPUT, record.problem)
        channel, external_id, phone, display_name, gender, birthday, city = record.values
        checked_channel = check_channel(required(channel, "channel"))
        checked_id = check_external_id(required(external_id, "externalId"))
        forms = None if phone is None else self._phone(phone, phones)
        profile = Profile(
            display_name=display_name,
            gender=gender and gender.strip().lower(),
            birthday=day(birthday, "birthday"),
            city=city,
        )
        return checked_channel, checked_id, forms, check_profile(profile, today)

    def _phone(self, raw: str, phones: dict[str, tuple[bytes, bytes, str]]) -> tuple[bytes, bytes, str]:
        """Hash, ciphertext and mask, once per number and chunk (a member's identities share one)."""
        try:
            number = normalise(raw)
        except InvalidPhone as error:
            raise DomainError(ErrorCode.INVALID_PHONE, str(error), field="phone") from None
        forms = phones.get(number)
        if forms is None:
            forms = phones[number] = (self._vault.hash(number), self._vault.encrypt(number), mask(number))
        return forms

    def close(self) -> None:
        pass

    async def merge(self, conn: AsyncConnection[Any], staged: Staged, queue: bool) -> Merged:
        """Merge a staged chunk, inside the caller's transaction (`runner.Kind.merge`)."""
        brand = {"brand_id": self._brand_id}
        await copy_into(conn, _staged, _COPIED, staged.data)
        await conn.execute(_analyze)
        existing = await _drop_bound.run(conn, **brand)
        await _live_holders.run(conn, **brand)
        for row in await _merged_phones.all(conn, **brand):
            survivor = await member_id_by_phone(conn, brand_id=self._brand_id, phone_hash=row["phone_hash"])
            await _lock_member.run(conn, member_id=survivor)
            await _bind_phone.run(conn, member_id=survivor, phone_hash=row["phone_hash"])
        await _number_new.run(conn, sequence=self._sequence)
        await _bind_to_new.run(conn)
        await _insert_new.run(conn, **brand, tier=self._tier)
        await _fill.run(conn)
        bound = await _bind_identities.run(conn, **brand)
        created = int(await _created.scalar(conn))
        if queue:
            await _queue.run(conn, **brand)
        return Merged(Counter(existing=existing, created=created, matched=bound - created), [])

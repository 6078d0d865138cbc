"""Importing tag assignments: one row per (member, tag), the member named by a channel identity.

As `tagMembers` does: the tag must be in the brand's catalog (UNKNOWN_TAG, with the closest code),
the member must exist, an expiry must be in the future, and without one a tag with a TTL expires
that many days after the import. Rows for one member and tag apply in file order, so the last one
wins. An assignment the member holds already and that has not expired is left as it is unless the
row changes its expiry (an explicit date, or none for a tag without a TTL): unlike a second
`tagMembers`, which restarts a TTL, re-running a file changes nothing. A row of a rule tag is
rejected (INVALID_INPUT): its rule assigns it.
"""

from __future__ import annotations

import datetime as dt
import difflib
from collections import Counter
from typing import Any

import sqlalchemy as sa
from psycopg import AsyncConnection

from store.errors import DomainError, ErrorCode
from store.imports.files import Columns, Record
from store.imports.rows import (
    Reject,
    copy_into,
    copy_line,
    copy_text,
    create_staging,
    invalid,
    moment,
    rejected,
    required,
    staging_table,
)
from store.imports.staged import Merged, Staged
from store.members.unification import check_channel, check_external_id
from store.sql import Query
from store.tags.catalog import UnknownTagError
from store.tags.rules import RuleTagError, rule_tag_ids
from tagquery.bitmap_keys import FAMILIES

SOURCE = "import"
COLUMNS = Columns(required=("channel", "external_id", "tag"), optional=("expires_at",))
_staged = staging_table(
    "import_tags",
    sa.Column("line", sa.BigInteger),
    sa.Column("channel", sa.Text),
    sa.Column("external_id", sa.Text),
    sa.Column("tag_id", sa.BigInteger),
    sa.Column("expires_at", sa.DateTime(timezone=True)),
    sa.Column("member_id", sa.BigInteger),
)
_COPIED = [column.name for column in _staged.c if column.name != "member_id"]
_catalog = Query(sa.text("SELECT id, code, ttl_days FROM tag_definitions WHERE brand_id = :brand_id ORDER BY code"))
# The rows' members, locked against a merge until the chunk commits (as the foreign key checks
# would, when the triggers run), in id order; then each row's member.
_lock = Query(
    sa.text("""
SELECT m.id FROM members m
WHERE m.id IN (SELECT i.member_id FROM import_tags s JOIN member_identities i
               ON i.brand_id = :brand_id AND i.channel = s.channel AND i.external_id = s.external_id)
ORDER BY m.id FOR KEY SHARE
""")
)
_resolve = Query(
    sa.text("""
UPDATE import_tags s SET member_id = i.member_id FROM member_identities i
WHERE i.brand_id = :brand_id AND i.channel = s.channel AND i.external_id = s.external_id
""")
)
_unknown_members = Query(
    sa.text("SELECT line, channel, external_id FROM import_tags WHERE member_id IS NULL ORDER BY line")
)
# The last row of each (member, tag), then those that change something: a new assignment, an
# expired one, or another expiry (see the module docstring); upserted as `tag_members` does.
_assign = Query(
    sa.text("""
WITH latest AS (
    SELECT DISTINCT ON (member_id, tag_id) member_id, tag_id, expires_at
    FROM import_tags WHERE member_id IS NOT NULL
    ORDER BY member_id, tag_id, line DESC
), chosen AS MATERIALIZED (
    SELECT l.member_id, l.tag_id, t.member_id IS NOT NULL AS held,
           coalesce(l.expires_at, now() + d.ttl_days * interval '1 day') AS expires_at
    FROM latest l
    JOIN tag_definitions d ON d.id = l.tag_id
    LEFT JOIN member_tags t ON t.member_id = l.member_id AND t.tag_id = l.tag_id
    WHERE t.member_id IS NULL OR t.expires_at <= now()
       OR (l.expires_at IS NOT NULL AND t.expires_at IS DISTINCT FROM l.expires_at)
       OR (l.expires_at IS NULL AND d.ttl_days IS NULL AND t.expires_at IS NOT NULL)
), written AS (
    INSERT INTO member_tags (member_id, tag_id, brand_id, source, assigned_at, expires_at)
    SELECT member_id, tag_id, :brand_id, :source, now(), expires_at FROM chosen ORDER BY member_id, tag_id
    ON CONFLICT (member_id, tag_id) DO UPDATE
    SET source = excluded.source, assigned_at = excluded.assigned_at, expires_at = excluded.expires_at
), queued AS (  -- without triggers (store.imports.triggers): the members whose tags changed
    INSERT INTO audience_changes (brand_id, member_id, families)
    SELECT DISTINCT :brand_id, member_id, :families FROM chosen WHERE :queue
)
SELECT count(*) FILTER (WHERE NOT held) AS assigned, count(*) FILTER (WHERE held) AS refreshed FROM chosen
""")
)


class TagImport:
    """Tags rows for one brand: checked in `stage` (against the catalog read in `prepare`), merged in `merge`."""

    kind = "tags"
    columns = COLUMNS
    tables: tuple[str, ...] = ("member_tags",)

    def __init__(self, brand_id: int) -> None:
        self._brand_id = brand_id
        self._tags: dict[str, int] = {}
        self._suggestions: dict[str, str | None] = {}
        self._rule_tags: set[int] = set()  # assigned by their rules, never imported

    async def prepare(self, conn: AsyncConnection[Any]) -> None:
        await create_staging(conn, _staged)
        self._tags = {row["code"]: row["id"] for row in await _catalog.all(conn, brand_id=self._brand_id)}
        self._rule_tags = await rule_tag_ids(conn, self._brand_id)

    def stage(self, records: list[Record]) -> Staged:
        now = dt.datetime.now(dt.UTC)
        lines: list[str] = []
        rejects: list[Reject] = []
        for record in records:
            try:
                line = self._checked(record, now)
            except DomainError as error:
                rejects.append(rejected(record.line, record.text, error))
                continue
            lines.append(line)
        return Staged("".join(lines).encode(), len(lines), rejects, Counter())

    def _checked(self, record: Record, now: dt.datetime) -> str:
        if record.problem is not None:
            raise DomainError(ErrorCode.INVALID_INPUT, record.problem)
        channel, external_id, code, expires_at = record.values
        expires = moment(expires_at, "expiresAt")
        tag_id = self._tag(required(code, "tag").strip())
        if expires is not None and expires <= now:
            raise invalid("expiresAt", "expiresAt must be in the future")
        checked_channel = check_channel(required(channel, "channel"))
        checked_id = check_external_id(required(external_id, "externalId"))
        return copy_line(
            [
                str(record.line),
                copy_text(checked_channel),
                copy_text(checked_id),
                str(tag_id),
                copy_text(None if expires is None else expires.isoformat()),
            ]
        )

    def _tag(self, code: str) -> int:
        tag_id = self._tags.get(code)
        if tag_id is None:
            if code not in self._suggestions:
                close = difflib.get_close_matches(code, list(self._tags), n=1)
                self._suggestions[code] = close[0] if close else None
            raise UnknownTagError(code, self._suggestions[code])
        if tag_id in self._rule_tags:
            raise RuleTagError(code)
        return tag_id

    def close(self) -> None:
        pass

    async def merge(self, conn: AsyncConnection[Any], staged: Staged, queue: bool) -> Merged:
        """Assign a staged chunk's tags, inside the caller's transaction (`runner.Kind.merge`)."""
        await copy_into(conn, _staged, _COPIED, staged.data)
        await conn.execute("ANALYZE import_tags")
        await _lock.run(conn, brand_id=self._brand_id)
        await _resolve.run(conn, brand_id=self._brand_id)
        rejects = [
            rejected(
                row["line"],
                "",
                DomainError(
                    ErrorCode.UNKNOWN_MEMBER,
                    f"no member has the {row['channel']} identity {row['external_id']!r}",
                    field="externalId",
                ),
            )
            for row in await _unknown_members.all(conn)
        ]
        done = await _assign.one(conn, brand_id=self._brand_id, source=SOURCE, queue=queue, families=FAMILIES["tag"])
        assert done is not None
        counts = Counter(assigned=done["assigned"], refreshed=done["refreshed"])
        counts["unchanged"] = staged.rows - len(rejects) - done["assigned"] - done["refreshed"]
        return Merged(counts, rejects)

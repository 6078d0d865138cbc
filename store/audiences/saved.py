"""Saved audiences: a canonical expression with its grammar version, and frozen snapshots of its members.

A snapshot stores the member ids as bitmap chunk records (the layout `varbit_send` gives the index's
rows, so `store.audiences.engine.decode_chunks` reads them back): one bytea per snapshot, never a row per
member. Comparing two snapshots is set arithmetic on the decoded, sorted id arrays in this process.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import date
from typing import Any

import numpy as np
import numpy.typing as npt
import sqlalchemy as sa
from psycopg import AsyncConnection
from sqlalchemy.dialects.postgresql import ARRAY, BYTEA

from store.audiences.bitmaps import chunk_rows
from store.audiences.engine import decode_chunks
from store.errors import DomainError, ErrorCode
from store.sql import Query, Row
from store.tables import audience_snapshots, brands, saved_audiences
from tagquery.bitmap_keys import CHUNK_SIZE

Ids = npt.NDArray[np.int64]
MAX_NAME = 200
_CHUNK_HEADER = CHUNK_SIZE.to_bytes(4, "big")

_AUDIENCE_COLUMNS = (*saved_audiences.c, brands.c.code.label("brand_code"))
_with_brand = saved_audiences.join(brands, brands.c.id == saved_audiences.c.brand_id)
_SNAPSHOT_COLUMNS = tuple(c for c in audience_snapshots.c if c.key != "members")

_insert_audience = Query(
    sa.insert(saved_audiences)
    .values(
        brand_id=sa.bindparam("brand_id"),
        name=sa.bindparam("name"),
        expression=sa.bindparam("expression"),
        grammar_version=sa.bindparam("grammar_version"),
    )
    .returning(saved_audiences.c.id)
)
_insert_snapshot = Query(
    sa.insert(audience_snapshots)
    .values(
        audience_id=sa.bindparam("audience_id"),
        brand_id=sa.bindparam("brand_id"),
        as_of_day=sa.bindparam("as_of_day", type_=sa.Date),
        member_count=sa.bindparam("member_count"),
        members=sa.bindparam("members", type_=BYTEA),
    )
    .returning(*_SNAPSHOT_COLUMNS)
)
_audience = Query(
    sa.select(*_AUDIENCE_COLUMNS).select_from(_with_brand).where(saved_audiences.c.id == sa.bindparam("id"))
)
_of_brand = Query(
    sa.select(*_AUDIENCE_COLUMNS)
    .select_from(_with_brand)
    .where(saved_audiences.c.brand_id == sa.bindparam("brand_id"))
    .order_by(saved_audiences.c.id)
)
_snapshots = Query(
    sa.select(*_SNAPSHOT_COLUMNS)
    .where(audience_snapshots.c.audience_id == sa.any_(sa.bindparam("ids", type_=ARRAY(sa.BigInteger))))
    .order_by(audience_snapshots.c.audience_id, audience_snapshots.c.id.desc())
)
_snapshot = Query(sa.select(*_SNAPSHOT_COLUMNS).where(audience_snapshots.c.id == sa.bindparam("id")))
_snapshot_members = Query(sa.select(audience_snapshots.c.members).where(audience_snapshots.c.id == sa.bindparam("id")))


def encode_ids(ids: Ids) -> bytes:
    """Sorted member ids as chunk records: chunk (int4), bit count (int4), 2^16 bits."""
    return b"".join(chunk.to_bytes(4, "big") + _CHUNK_HEADER + bits for _, chunk, bits in chunk_rows("", ids))


def check_name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= MAX_NAME:
        raise DomainError(ErrorCode.INVALID_INPUT, f"name must be 1-{MAX_NAME} characters", field="name")
    return name


async def save(conn: AsyncConnection[Any], *, brand_id: int, name: str, expression: str, grammar_version: int) -> int:
    """A new saved audience (without a snapshot yet); returns its id."""
    audience_id: int = await _insert_audience.scalar(
        conn, brand_id=brand_id, name=check_name(name), expression=expression, grammar_version=grammar_version
    )
    return audience_id


async def take_snapshot(
    conn: AsyncConnection[Any], *, audience_id: int, brand_id: int, ids: Ids, as_of_day: date
) -> Row:
    """Freeze `ids` (ascending) as the audience's newest snapshot."""
    row = await _insert_snapshot.one(
        conn,
        audience_id=audience_id,
        brand_id=brand_id,
        as_of_day=as_of_day,
        member_count=int(ids.size),
        members=encode_ids(ids),
    )
    assert row is not None
    return row


def _outside(row: Row | None, brand_ids: frozenset[int] | None) -> bool:
    """No row, or one of a brand outside the caller's scope: both answer alike."""
    return row is None or (brand_ids is not None and row["brand_id"] not in brand_ids)


async def audience(conn: AsyncConnection[Any], audience_id: int, brand_ids: frozenset[int] | None) -> Row:
    """The saved audience (with `brand_code`) if its brand is in ``brand_ids`` (None: any); raises
    UNKNOWN_AUDIENCE."""
    row = await _audience.one(conn, id=audience_id)
    if row is None or _outside(row, brand_ids):
        raise DomainError(ErrorCode.UNKNOWN_AUDIENCE, f"no saved audience {audience_id}", field="id")
    return row


async def audiences_of_brand(conn: AsyncConnection[Any], brand_id: int) -> list[Row]:
    return await _of_brand.all(conn, brand_id=brand_id)


async def snapshots_of(conn: AsyncConnection[Any], audience_ids: Sequence[int]) -> list[Row]:
    """Snapshots (without their members) of the audiences, newest first per audience."""
    return await _snapshots.all(conn, ids=list(audience_ids))


async def snapshot(
    conn: AsyncConnection[Any], snapshot_id: int, brand_ids: frozenset[int] | None, *, field: str = "id"
) -> Row:
    """A snapshot without its members, if its brand is in ``brand_ids`` (None: any); raises
    UNKNOWN_SNAPSHOT naming `field`."""
    row = await _snapshot.one(conn, id=snapshot_id)
    if row is None or _outside(row, brand_ids):
        raise DomainError(ErrorCode.UNKNOWN_SNAPSHOT, f"no audience snapshot {snapshot_id}", field=field)
    return row


async def snapshot_members(conn: AsyncConnection[Any], snapshot_id: int) -> Ids:
    """The snapshot's member ids, ascending (empty for an unknown snapshot)."""
    return decode_chunks(await _snapshot_members.scalar(conn, id=snapshot_id))


@dataclasses.dataclass(frozen=True, slots=True)
class Difference:
    entered: Ids
    """In the later snapshot, not in the earlier one (ascending)."""
    exited: Ids
    """In the earlier snapshot, not in the later one (ascending)."""
    stayed: int


def compare(before: Ids, after: Ids) -> Difference:
    entered = np.setdiff1d(after, before, assume_unique=True)
    exited = np.setdiff1d(before, after, assume_unique=True)
    return Difference(entered, exited, int(after.size - entered.size))

"""Reads of members and their identities, batched for DataLoaders."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from psycopg import AsyncConnection
from sqlalchemy.dialects.postgresql import ARRAY, BYTEA, aggregate_order_by

from store.sql import Query, Row
from store.tables import brand_tiers, brands, member_identities, members

_IDS = sa.bindparam("ids", type_=ARRAY(sa.BigInteger))

MEMBER_COLUMNS = (
    members.c.id,
    members.c.brand_id,
    members.c.status,
    members.c.tier,
    brand_tiers.c.name.label("tier_name"),
    brand_tiers.c.rank.label("tier_rank"),
    members.c.points_balance,
    members.c.growth_value,
    members.c.display_name,
    members.c.gender,
    members.c.birthday,
    members.c.city,
    members.c.registered_at,
    members.c.first_purchase_at,
    members.c.last_purchase_at,
    members.c.order_count,
    members.c.total_spend,
    members.c.phone_hash,
    members.c.phone_masked,
    members.c.merged_into,
    members.c.merged_at,
    members.c.erased_at,
)
_with_tier = members.join(
    brand_tiers,
    sa.and_(
        brand_tiers.c.brand_id == members.c.brand_id,
        brand_tiers.c.code == members.c.tier,
    ),
)
_live = members.c.merged_into.is_(None)

# A profile read almost always shows the identities: fetch them with the member, as JSON, and save
# the identities loader a statement (see `identities_of`).
_identities_json = (
    sa.select(
        sa.func.coalesce(
            sa.func.json_agg(
                aggregate_order_by(
                    sa.func.json_build_array(
                        member_identities.c.id,
                        member_identities.c.channel,
                        member_identities.c.external_id,
                        member_identities.c.bound_at,
                    ),
                    sa.tuple_(member_identities.c.bound_at, member_identities.c.id),
                )
            ),
            sa.text("'[]'::json"),
        )
    )
    .where(member_identities.c.member_id == members.c.id)
    .scalar_subquery()
    .label("identities")
)
_members_by_id = Query(
    sa.select(*MEMBER_COLUMNS, _identities_json).select_from(_with_tier).where(members.c.id == sa.any_(_IDS))
)
_identities_by_member = Query(
    sa.select(
        member_identities.c.id,
        member_identities.c.member_id,
        member_identities.c.channel,
        member_identities.c.external_id,
        member_identities.c.bound_at,
    )
    .where(member_identities.c.member_id == sa.any_(_IDS))
    .order_by(
        member_identities.c.member_id,
        member_identities.c.bound_at,
        member_identities.c.id,
    )
)
_member_id_by_identity = Query(
    sa.select(member_identities.c.member_id).where(
        member_identities.c.brand_id == sa.bindparam("brand_id"),
        member_identities.c.channel == sa.bindparam("channel"),
        member_identities.c.external_id == sa.bindparam("external_id"),
    )
)
# Many identities at once (federation's entity references, resolvers/entities.py): one row per bound key.
_identity_keys = (
    sa.func.unnest(
        sa.bindparam("brand_ids", type_=ARRAY(sa.BigInteger)),
        sa.bindparam("channels", type_=ARRAY(sa.Text)),
        sa.bindparam("external_ids", type_=ARRAY(sa.Text)),
    )
    .table_valued("brand_id", "channel", "external_id")
    .render_derived(name="k")
)
_member_ids_by_identity = Query(
    sa.select(
        member_identities.c.brand_id,
        member_identities.c.channel,
        member_identities.c.external_id,
        member_identities.c.member_id,
    ).join_from(
        _identity_keys,
        member_identities,
        sa.and_(
            member_identities.c.brand_id == _identity_keys.c.brand_id,
            member_identities.c.channel == _identity_keys.c.channel,
            member_identities.c.external_id == _identity_keys.c.external_id,
        ),
    )
)
# The live holder of a phone, else the most recently merged-away holder (whose survivor it resolves to).
_member_id_by_phone = Query(
    sa.select(members.c.id)
    .where(
        members.c.brand_id == sa.bindparam("brand_id"),
        members.c.phone_hash == sa.bindparam("phone_hash", type_=BYTEA),
    )
    .order_by(members.c.merged_into.is_not(None), members.c.merged_at.desc())
    .limit(1)
)
_chain = (
    sa.select(members.c.id, members.c.merged_into)
    .where(members.c.id == sa.bindparam("member_id"))
    .cte("chain", recursive=True)
)
_chain = _chain.union_all(
    sa.select(members.c.id, members.c.merged_into).join(_chain, members.c.id == _chain.c.merged_into)
)
_survivor_of = Query(sa.select(_chain.c.id).where(_chain.c.merged_into.is_(None)))
_page_filter = sa.and_(members.c.brand_id == sa.bindparam("brand_id"), _live)


def brand_keyset(
    table: sa.FromClause, brand_id: sa.ColumnElement[int], after_id: sa.ColumnElement[int | None]
) -> tuple[sa.ColumnElement[bool], tuple[sa.ColumnElement[Any], ...]]:
    """A brand's rows after ``after_id`` (all when NULL), and the order to page them in.

    Not `brand_id = :b AND id > :after ORDER BY id`: with the brand equal to a constant, PostgreSQL
    may walk the primary key from the lowest id and filter, which for every brand but the first
    reads the other brands' rows (600,000 of them before the second demo brand's first page, 231 ms
    a page). As a row comparison on the (brand_id, id) index, ordered by both columns, the only
    path is that index, from the brand's first row after the cursor, whatever the id layout."""
    start = sa.tuple_(table.c.brand_id, table.c.id) > sa.tuple_(brand_id, sa.func.coalesce(after_id, 0))
    return sa.and_(start, table.c.brand_id <= brand_id), (table.c.brand_id, table.c.id)


_brand_rows, _brand_order = brand_keyset(
    members, sa.bindparam("brand_id", type_=sa.BigInteger), sa.bindparam("after_id", type_=sa.BigInteger)
)
_members_page = Query(
    sa.select(*MEMBER_COLUMNS)
    .select_from(_with_tier)
    .where(_brand_rows, _live)
    .order_by(*_brand_order)
    .limit(sa.bindparam("limit", type_=sa.Integer))
)
_count_live = Query(sa.select(sa.func.count()).select_from(members).where(_page_filter))
_same_person = Query(
    sa.select(*MEMBER_COLUMNS, brands.c.group_id)
    .select_from(_with_tier.join(brands, brands.c.id == members.c.brand_id))
    .where(
        members.c.phone_hash == sa.any_(sa.bindparam("hashes", type_=ARRAY(BYTEA))),
        brands.c.group_id == sa.any_(sa.bindparam("group_ids", type_=ARRAY(sa.BigInteger))),
        _live,
    )
    .order_by(members.c.brand_id, members.c.id)
)


async def members_by_id(conn: AsyncConnection[Any], ids: Sequence[int]) -> list[Row]:
    """Members with their identities under "identities" (as `identities_by_member` returns them)."""
    return await _members_by_id.all(conn, ids=list(ids))


def identities_of(member: Row) -> list[Row]:
    """The identities fetched with a member by `members_by_id`, as identity rows."""
    return [
        {
            "id": id_,
            "member_id": member["id"],
            "channel": channel,
            "external_id": external_id,
            "bound_at": dt.datetime.fromisoformat(bound_at),  # JSON carries the timestamp as ISO text
        }
        for id_, channel, external_id, bound_at in member["identities"]
    ]


async def identities_by_member(conn: AsyncConnection[Any], ids: Sequence[int]) -> list[Row]:
    return await _identities_by_member.all(conn, ids=list(ids))


async def member_id_by_identity(
    conn: AsyncConnection[Any], *, brand_id: int, channel: str, external_id: str
) -> int | None:
    member_id: int | None = await _member_id_by_identity.scalar(
        conn, brand_id=brand_id, channel=channel, external_id=external_id
    )
    return member_id


async def member_ids_by_identity(conn: AsyncConnection[Any], keys: Sequence[tuple[int, str, str]]) -> list[Row]:
    """The member each (brand id, channel, external id) is bound to: ``brand_id``, ``channel``,
    ``external_id``, ``member_id`` per bound key; a key bound to nobody has no row."""
    return await _member_ids_by_identity.all(
        conn,
        brand_ids=[key[0] for key in keys],
        channels=[key[1] for key in keys],
        external_ids=[key[2] for key in keys],
    )


async def survivor_of(conn: AsyncConnection[Any], member_id: int) -> int | None:
    """The live member that ``member_id`` is (itself, or the end of its merge chain)."""
    survivor: int | None = await _survivor_of.scalar(conn, member_id=member_id)
    return survivor


async def member_id_by_phone(conn: AsyncConnection[Any], *, brand_id: int, phone_hash: bytes) -> int | None:
    """The live member holding this phone hash in the brand, following merges."""
    member_id: int | None = await _member_id_by_phone.scalar(conn, brand_id=brand_id, phone_hash=phone_hash)
    return None if member_id is None else await survivor_of(conn, member_id)


async def members_page(conn: AsyncConnection[Any], *, brand_id: int, after_id: int | None, limit: int) -> list[Row]:
    """Live members of a brand in id order, after ``after_id`` (keyset pagination)."""
    return await _members_page.all(conn, brand_id=brand_id, after_id=after_id, limit=limit)


async def count_members(conn: AsyncConnection[Any], *, brand_id: int) -> int:
    count: int = await _count_live.scalar(conn, brand_id=brand_id)
    return count


async def members_sharing_phone(
    conn: AsyncConnection[Any], *, group_ids: Sequence[int], hashes: Sequence[bytes]
) -> list[Row]:
    """Live members, in any brand of the given groups, whose phone hash is one of ``hashes``."""
    return await _same_person.all(conn, group_ids=list(group_ids), hashes=list(hashes))

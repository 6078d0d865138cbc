"""Reading member profiles."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from graphql import GraphQLError

from resolvers import cursors
from resolvers.context import Info
from store.errors import DomainError, ErrorCode
from store.members import profiles as members
from store.members.unification import check_channel, check_external_id, check_phone
from store.sql import Row

MAX_PAGE = 100
BIGINT = range(-(2**63), 2**63)  # a cursor's key outside it was never handed out


@dataclass(frozen=True, slots=True)
class Page:
    brand_id: int
    rows: list[Row]
    has_next_page: bool
    has_previous_page: bool
    total: Callable[[], Awaitable[int]] | None = None
    """The connection's size when it is not the brand's live members (an audience, a snapshot)."""


def encode_cursor(member_id: int) -> str:
    return cursors.encode("member", member_id)


def after_id(after: str | None) -> int | None:
    """The member id a `member` cursor points after; INVALID_INPUT for one no page gave."""
    return None if after is None else cursor_key(cursors.decode(after, "member", 1)[0])


def cursor_key(key: int, field: str = "after") -> int:
    """A key read from a cursor, if a bigint can hold it (else the statement would fail rather
    than answer; a compiled read, resolvers.sqljson, hands such a cursor to this path)."""
    if key not in BIGINT:
        raise DomainError(ErrorCode.INVALID_INPUT, f"{field} is not a cursor of this connection", field=field)
    return key


async def get_member(info: Info, *, member_id: int) -> Row | None:
    return await info.context.loaders.member_by_id.load(member_id)


async def get_member_by_identity(info: Info, *, brand: str, channel: str, external_id: str) -> Row | None:
    async with info.context.pool.connection() as conn:
        brand_row = await info.context.brands.get(conn, brand)
        member_id = await members.member_id_by_identity(
            conn,
            brand_id=brand_row["id"],
            channel=check_channel(channel),
            external_id=check_external_id(external_id),
        )
    return None if member_id is None else await get_member(info, member_id=member_id)


async def get_member_by_phone(info: Info, *, brand: str, phone: str) -> Row | None:
    wait = info.context.limits.phone_lookup(info.context.principal)
    if wait > 0:  # so that a key cannot enumerate numbers
        raise GraphQLError(
            "this key looked up too many phone numbers; retry later",
            extensions={"code": "RATE_LIMITED", "retryAfter": max(1, round(wait))},
        )
    phone_hash = check_phone(info.context.vault, phone).hash
    async with info.context.pool.connection() as conn:
        brand_row = await info.context.brands.get(conn, brand)
        member_id = await members.member_id_by_phone(conn, brand_id=brand_row["id"], phone_hash=phone_hash)
    return None if member_id is None else await get_member(info, member_id=member_id)


async def list_members(info: Info, *, brand: str, first: int, after: str | None) -> Page:
    """One page of a brand's live members in id order."""
    cursors.check_first(first, MAX_PAGE)
    start = after_id(after)
    brand_id = await info.context.brands.id_of(info.context.pool, brand)
    async with info.context.pool.connection() as conn:
        rows = await members.members_page(conn, brand_id=brand_id, after_id=start, limit=first + 1)
    return Page(
        brand_id,
        rows[:first],
        has_next_page=len(rows) > first,
        has_previous_page=start is not None,
    )


async def count_members(info: Info, *, brand_id: int) -> int:
    async with info.context.pool.connection() as conn:
        return await members.count_members(conn, brand_id=brand_id)

"""Merging members and undoing merges."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from resolvers.context import Info
from store.errors import DomainError, ErrorCode
from store.members import merges
from store.sql import Row
from store.transactions import transact


async def merge_members(info: Info, *, survivor_id: int, merged_id: int, reason: str) -> Row:
    for member_id, field in ((survivor_id, "survivorId"), (merged_id, "mergedId")):
        if await info.context.loaders.member_by_id.load(member_id) is None:  # missing, or another brand's
            raise DomainError(ErrorCode.UNKNOWN_MEMBER, f"no member {member_id}", field=field)

    async def work(conn: AsyncConnection[Any]) -> int:
        return await merges.merge(conn, survivor_id=survivor_id, merged_id=merged_id, reason=reason)

    merge_id = await transact(info.context.pool, work)
    return await _fresh(info, merge_id)


async def unmerge_members(info: Info, *, merge_id: int) -> Row:
    if await info.context.loaders.merge_by_id.load(merge_id) is None:  # missing, or another brand's
        raise DomainError(ErrorCode.UNKNOWN_MERGE, f"no merge {merge_id}", field="mergeId")

    async def work(conn: AsyncConnection[Any]) -> Row:
        return await merges.unmerge(conn, merge_id=merge_id)

    row = await transact(info.context.pool, work)
    return await _fresh(info, row["id"])


async def get_merge(info: Info, *, merge_id: int) -> Row | None:
    return await info.context.loaders.merge_by_id.load(merge_id)


async def get_member_merges(info: Info, *, member_id: int) -> list[Row]:
    return await info.context.loaders.merges_by_member.load(member_id)


async def _fresh(info: Info, merge_id: int) -> Row:
    """The merge row, read after dropping the request's caches of what the merge changed."""
    loaders = info.context.loaders
    for loader in (loaders.merge_by_id, loaders.member_by_id, loaders.identities_by_member, loaders.merges_by_member):
        loader.clear_all()
    merge = await loaders.merge_by_id.load(merge_id)
    assert merge is not None
    return merge

"""Brands, their groups and tiers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from psycopg import AsyncConnection

from resolvers.context import Info
from store import brands
from store.audiences.deltas import Freshness
from store.errors import DomainError, ErrorCode
from store.sql import Row
from store.tables import DEFAULT_TIERS
from store.transactions import transact


async def list_brands(info: Info) -> list[Row]:
    """The brands the caller sees."""
    async with info.context.pool.connection() as conn:
        rows = await brands.list_brands(conn)
    return [row for row in rows if info.context.brands.sees(row["id"])]


async def get_brand(info: Info, *, brand_id: int) -> Row | None:
    return await info.context.loaders.brand_by_id.load(brand_id)


async def get_group(info: Info, *, group_id: int) -> Row | None:
    return await info.context.loaders.group_by_id.load(group_id)


async def get_tiers(info: Info, *, brand_id: int) -> list[Row]:
    return await info.context.loaders.tiers_by_brand.load(brand_id)


async def audience_index(info: Info, *, brand_id: int) -> Freshness:
    return await info.context.loaders.audience_index_by_brand.load(brand_id)


async def create_brand(
    info: Info,
    *,
    code: str,
    name: str,
    group: str,
    group_name: str | None,
    tiers: Sequence[str] | None,
) -> Row:
    async def work(conn: AsyncConnection[Any]) -> Row:
        if not info.context.principal.owns_group(await brands.group_id(conn, group)):
            raise DomainError(
                ErrorCode.NOT_ALLOWED,
                f"this key may not create brands in group {group!r}: it needs a key scoped to that group"
                " (or to all brands, for a new group)",
                field="group",
            )
        return await brands.create_brand(
            conn,
            code=code,
            name=name,
            group_code=group,
            group_name=group_name,
            tiers=DEFAULT_TIERS if tiers is None else tiers,
        )

    return await transact(info.context.pool, work)

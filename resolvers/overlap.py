"""Overlap across a brand's channels and a group's brands (store.audiences.overlap).

`channelOverlap` reads one brand's index, within an audience when given one (checked like any
audience, resolvers.audiences.selection). `brandOverlap` reads every brand of a group, so only a key
that sees the whole group may ask: one that sees some of its brands gets NOT_ALLOWED, one that sees
none of them (or a group that does not exist) UNKNOWN_GROUP, the same answer either way.
"""

from __future__ import annotations

import dataclasses

from resolvers import audiences
from resolvers.context import Info
from store import brands
from store.audiences import engine, overlap
from store.audiences.catalogs import BrandCatalog
from store.audiences.deltas import Freshness
from store.audiences.selections import catalog_cache, ready_catalog
from store.errors import DomainError, ErrorCode
from store.sql import Row


@dataclasses.dataclass(frozen=True, slots=True)
class ChannelOverlap:
    brand: BrandCatalog
    expression: str | None
    """The audience's canonical text (None: every live member)."""
    overlap: overlap.ChannelOverlap


@dataclasses.dataclass(frozen=True, slots=True)
class BrandOverlap:
    group: Row
    brands: list[Row]
    """The group's brands, in the order of `overlap.brands`."""
    overlap: overlap.BrandOverlap


async def channel_overlap(info: Info, *, brand: str, expression: str | None, filter: object | None) -> ChannelOverlap:
    """The brand's channels among its live members, or among the audience of `expression` / `filter`."""
    pool = info.context.pool
    if expression is None and filter is None:
        async with pool.connection() as conn:
            catalog = await ready_catalog(conn, catalog_cache(pool), await info.context.brands.get(conn, brand))
            found = await overlap.channel_overlap(conn, catalog, None, catalog.today(), pool=pool)
        return ChannelOverlap(catalog, None, found)
    chosen = await audiences.selection(info, brand=brand, expression=expression, filter=filter)
    async with pool.connection() as conn:
        found = await overlap.channel_overlap(conn, chosen.brand, chosen.bound, chosen.today, pool=pool)
    return ChannelOverlap(chosen.brand, chosen.text, found)


async def brand_overlap(info: Info, *, group: str) -> BrandOverlap:
    """The group's brands and the persons they share; the key must see every brand of the group."""
    pool = info.context.pool
    async with pool.connection() as conn:
        group_id = await brands.group_id(conn, group)
        in_group = [row for row in await brands.list_brands(conn) if row["group_id"] == group_id]
        seen = [row for row in in_group if info.context.brands.sees(row["id"])]
        if group_id is None or not seen:
            raise DomainError(ErrorCode.UNKNOWN_GROUP, f"no group {group!r}", field="group")
        if len(seen) < len(in_group):
            raise DomainError(
                ErrorCode.NOT_ALLOWED,
                f"brandOverlap reads every brand of group {group!r}: it needs a key whose scope covers the whole group",
                field="group",
            )
        cache = catalog_cache(pool)
        catalogs = [await ready_catalog(conn, cache, row) for row in in_group]
        found = await overlap.brand_overlap(conn, catalogs, [row["code"] for row in in_group])
        group_row = (await brands.groups_by_id(conn, [group_id]))[0]
    return BrandOverlap(group_row, in_group, found)


async def freshness(info: Info, brand: BrandCatalog) -> Freshness:
    async with info.context.pool.connection() as conn:
        return await engine.freshness(conn, brand)

"""Audiences from the command line: one connection, the brand's index caught up first, then a count
or a streamed export (the same selection and export code the API uses)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from psycopg import AsyncConnection

from store.audiences import engine
from store.audiences import export as member_export
from store.audiences.catalogs import CatalogCache
from store.audiences.deltas import Freshness, apply_brand
from store.audiences.selections import Selection, read_expression, select
from store.brands import brand_by_code
from store.urls import libpq_url


@contextlib.asynccontextmanager
async def _selected(
    url: str, brand_code: str, expression: str
) -> AsyncIterator[tuple[AsyncConnection[Any], Selection]]:
    node = read_expression(expression, None)
    async with await AsyncConnection.connect(libpq_url(url), autocommit=True) as conn:
        brand = await brand_by_code(conn, brand_code)
        # No server may be running to apply queued changes: apply them here, so the answer is current.
        await apply_brand(conn, brand["id"], wait=True)
        yield conn, await select(conn, CatalogCache(), brand, node, source=expression)


async def count(url: str, brand_code: str, expression: str) -> tuple[Selection, int, Freshness]:
    async with _selected(url, brand_code, expression) as (conn, chosen):
        found = await engine.count(conn, chosen.brand, chosen.bound, chosen.today)
        return chosen, found, await engine.freshness(conn, chosen.brand)


async def export(
    url: str, brand_code: str, expression: str, layout: member_export.Layout, write: Callable[[str], object]
) -> int:
    """Write the audience's members through `write`; returns how many."""
    async with _selected(url, brand_code, expression) as (conn, chosen):
        ids = await engine.member_ids(conn, chosen.brand, chosen.bound, chosen.today)
        brand = {"id": chosen.brand.brand_id, "code": chosen.brand_code}
        async for text in member_export.lines(lambda: contextlib.nullcontext(conn), ids, brand, layout):
            write(text)
    return int(ids.size)

"""Reading the audit log (admins): a brand's records, newest first."""

from __future__ import annotations

from resolvers import cursors
from resolvers.context import Info
from resolvers.members import cursor_key
from resolvers.points import Page
from store.access import audit

MAX_PAGE = 100


async def audit_page(info: Info, *, brand: str, first: int, after: str | None) -> Page:
    cursors.check_first(first, MAX_PAGE)
    before = cursor_key(cursors.decode(after, "audit", 1)[0]) if after is not None else None
    brand_id = await info.context.brands.id_of(info.context.pool, brand)
    await info.context.audit.flush()  # what is queued first: an admin sees every record up to now
    async with info.context.pool.connection() as conn:
        rows = await audit.page(conn, [brand_id], before, first + 1)
    page = rows[:first]
    return Page(page, [cursors.encode("audit", r["id"]) for r in page], len(rows) > first, after is not None)

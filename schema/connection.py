"""Relay connection over a brand's members."""

from __future__ import annotations

import strawberry

from resolvers import members
from resolvers.context import Info
from schema.member import Member


@strawberry.type(description="Relay page information.")
class PageInfo:
    has_next_page: bool = strawberry.field(description="More members follow `endCursor`.")
    has_previous_page: bool = strawberry.field(description="The page started after a cursor.")
    start_cursor: str | None = strawberry.field(description="Cursor of the first edge.")
    end_cursor: str | None = strawberry.field(description="Cursor of the last edge; pass as `after`.")


@strawberry.type(description="A member and its cursor.")
class MemberEdge:
    cursor: str = strawberry.field(description="Opaque position of this member in the connection.")
    node: Member = strawberry.field(description="The member.")


@strawberry.type(description="A page of members with opaque cursors.")
class MemberConnection:
    page: strawberry.Private[members.Page]

    @strawberry.field(description="The members of this page with their cursors.")
    def edges(self) -> list[MemberEdge]:
        return [MemberEdge(cursor=members.encode_cursor(r["id"]), node=Member.from_row(r)) for r in self.page.rows]

    @strawberry.field(description="The members of this page (the edges' nodes).")
    def nodes(self) -> list[Member]:
        return [Member.from_row(row) for row in self.page.rows]

    @strawberry.field(description="Where this page sits.")
    def page_info(self) -> PageInfo:
        rows = self.page.rows
        return PageInfo(
            has_next_page=self.page.has_next_page,
            has_previous_page=self.page.has_previous_page,
            start_cursor=members.encode_cursor(rows[0]["id"]) if rows else None,
            end_cursor=members.encode_cursor(rows[-1]["id"]) if rows else None,
        )

    @strawberry.field(
        description="Members in the whole connection (one extra count query): the brand's live members, or the "
        "audience's or snapshot's members when the connection selects some."
    )
    async def total_count(self, info: Info) -> int:
        if self.page.total is not None:
            return await self.page.total()
        return await members.count_members(info, brand_id=self.page.brand_id)

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
    edges: list[MemberEdge] = strawberry.field(description="The members of this page with their cursors.")
    page_info: PageInfo = strawberry.field(description="Where this page sits.")
    brand_id: strawberry.Private[int]

    @classmethod
    def from_page(cls, page: members.Page) -> MemberConnection:
        edges = [MemberEdge(cursor=members.encode_cursor(r["id"]), node=Member.from_row(r)) for r in page.rows]
        return cls(
            edges=edges,
            page_info=PageInfo(
                has_next_page=page.has_next_page,
                has_previous_page=page.has_previous_page,
                start_cursor=edges[0].cursor if edges else None,
                end_cursor=edges[-1].cursor if edges else None,
            ),
            brand_id=page.brand_id,
        )

    @strawberry.field(description="The members of this page (the edges' nodes).")
    def nodes(self) -> list[Member]:
        return [edge.node for edge in self.edges]

    @strawberry.field(description="Live members of the brand in the whole connection (one extra count query).")
    async def total_count(self, info: Info) -> int:
        return await members.count_members(info, brand_id=self.brand_id)

"""Query root: reading profiles."""

from __future__ import annotations

from typing import Annotated, TypeVar

import strawberry

from resolvers import brands, cursors, members, merges
from resolvers.context import Info
from resolvers.domain import Row
from schema import audiences as audience_fields
from schema import audit
from schema import lifecycle_transitions as transitions
from schema import overlap as overlap_fields
from schema.audiences import Audience, AudienceFilter, SavedAudience, SnapshotComparison
from schema.brand import Brand
from schema.connection import MemberConnection
from schema.errors import or_graphql_error
from schema.member import Member, MemberMerge
from schema.tags import TagCategory, TagDefinition, list_tags

T = TypeVar("T")


def _member(row: Row | None) -> Member | None:
    return None if row is None else Member.from_row(row)


@strawberry.type(description="Read member profiles and tag catalogs.")
class Query:
    @strawberry.field(description="Every brand, oldest first.")
    async def brands(self, info: Info) -> list[Brand]:
        return [Brand.from_row(row) for row in await brands.list_brands(info)]

    @strawberry.field(description="A member by id; merged members are returned as they are, with `mergedInto`.")
    async def member(
        self, info: Info, id: Annotated[strawberry.ID, strawberry.argument(description="Member id.")]
    ) -> Member | None:
        member_id = cursors.parse_id(id)
        return None if member_id is None else _member(await members.get_member(info, member_id=member_id))

    @strawberry.field(description="The member a channel identity is bound to (after merges, the survivor).")
    async def member_by_identity(
        self,
        info: Info,
        brand: Annotated[str, strawberry.argument(description="Brand code.")],
        channel: Annotated[
            str,
            strawberry.argument(description="Channel code: tmall, jd, douyin, wechat, wecom, pos, mall."),
        ],
        external_id: Annotated[str, strawberry.argument(description="The channel's own id of the member.")],
    ) -> Member | None:
        row = await or_graphql_error(
            members.get_member_by_identity(info, brand=brand, channel=channel, external_id=external_id)
        )
        return _member(row)

    @strawberry.field(description="The live member of a brand with this mobile number (+86 optional).")
    async def member_by_phone(
        self,
        info: Info,
        brand: Annotated[str, strawberry.argument(description="Brand code.")],
        phone: Annotated[
            str,
            strawberry.argument(description="Mainland mobile number, with or without +86."),
        ],
    ) -> Member | None:
        return _member(await or_graphql_error(members.get_member_by_phone(info, brand=brand, phone=phone)))

    @strawberry.field(description="A brand's live members in id order, as a Relay connection.")
    async def members(
        self,
        info: Info,
        brand: Annotated[str, strawberry.argument(description="Brand code.")],
        first: Annotated[int, strawberry.argument(description="Page size, 0-100.")] = 20,
        after: Annotated[
            str | None,
            strawberry.argument(description="`endCursor` of the previous page."),
        ] = None,
        where: Annotated[
            str | None,
            strawberry.argument(
                description="Only members this tag-language expression selects (answered from the audience index); "
                "not with `filter`."
            ),
        ] = None,
        filter: Annotated[
            AudienceFilter | None,
            strawberry.argument(description="Only members this structured filter selects; not with `where`."),
        ] = None,
    ) -> MemberConnection:
        if where is not None or filter is not None:
            return await audience_fields.members_where(info, brand, where, filter, first, after)
        page = await or_graphql_error(members.list_members(info, brand=brand, first=first, after=after))
        return MemberConnection(page=page)

    @strawberry.field(
        description="The members an expression (or the same as a structured filter) selects: count, sample, "
        "breakdown, explain, whyMember, freshness. Give exactly one of `expression` and `filter`; a bad one is "
        "a GraphQL error with code INVALID_EXPRESSION and its position (docs/audiences.md)."
    )
    async def audience(
        self,
        info: Info,
        brand: Annotated[str, strawberry.argument(description="Brand code.")],
        expression: Annotated[str | None, strawberry.argument(description=audience_fields.EXPRESSION_HELP)] = None,
        filter: Annotated[
            AudienceFilter | None, strawberry.argument(description="The audience as a structured filter.")
        ] = None,
    ) -> Audience:
        return await audience_fields.audience(info, brand, expression, filter)

    @strawberry.field(
        description="How a brand's channels overlap: each channel's members, every pair's intersection and "
        "rates, members in two channels or more; among every live member or an audience (at most one of "
        "`expression` and `filter`). From the bitmap index (docs/audiences.md#overlap)."
    )
    async def channel_overlap(
        self,
        info: Info,
        brand: overlap_fields.BrandCode,
        expression: overlap_fields.Expression = None,
        filter: overlap_fields.Filter = None,
    ) -> overlap_fields.ChannelOverlap:
        return await overlap_fields.channel_overlap(info, brand, expression, filter)

    @strawberry.field(
        description="How a group's brands share persons (the same phone within the group): each brand's live "
        "members, every pair's shared persons and rates. The key must see every brand of the group "
        "(NOT_ALLOWED otherwise; UNKNOWN_GROUP for a group it sees none of)."
    )
    async def brand_overlap(self, info: Info, group: overlap_fields.GroupCode) -> overlap_fields.BrandOverlap:
        return await overlap_fields.brand_overlap(info, group)

    @strawberry.field(description=transitions.DESCRIPTION)
    async def lifecycle_transitions(
        self,
        info: Info,
        brand: transitions.BrandCode,
        since: transitions.Since,
        from_stage: transitions.From = None,
        to_stage: transitions.To = None,
        until: transitions.Until = None,
        where: transitions.Where = None,
    ) -> transitions.LifecycleTransitions:
        return await transitions.lifecycle_transitions(info, brand, from_stage, to_stage, since, until, where)

    @strawberry.field(description="A brand's saved audiences, oldest first.")
    async def saved_audiences(
        self, info: Info, brand: Annotated[str, strawberry.argument(description="Brand code.")]
    ) -> list[SavedAudience]:
        return await audience_fields.saved_audiences(info, brand)

    @strawberry.field(description="A saved audience by id.")
    async def saved_audience(
        self, info: Info, id: Annotated[strawberry.ID, strawberry.argument(description="Saved audience id.")]
    ) -> SavedAudience | None:
        return await audience_fields.saved_audience(info, id)

    @strawberry.field(description="Who entered and who exited between two snapshots of a brand's audiences.")
    async def compare_snapshots(
        self,
        info: Info,
        before: Annotated[strawberry.ID, strawberry.argument(description="The earlier snapshot's id.")],
        after: Annotated[strawberry.ID, strawberry.argument(description="The later snapshot's id.")],
    ) -> SnapshotComparison:
        return await audience_fields.compare_snapshots(info, before, after)

    @strawberry.field(description="A brand's tag catalog, by category then code, with live member counts.")
    async def tags(
        self,
        info: Info,
        brand: Annotated[str, strawberry.argument(description="Brand code.")],
        category: Annotated[TagCategory | None, strawberry.argument(description="Only tags of this category.")] = None,
    ) -> list[TagDefinition]:
        return await or_graphql_error(list_tags(info, brand, category))

    @strawberry.field(description="A recorded merge by id.")
    async def member_merge(
        self, info: Info, id: Annotated[strawberry.ID, strawberry.argument(description="Merge id.")]
    ) -> MemberMerge | None:
        merge_id = cursors.parse_id(id)
        row = None if merge_id is None else await merges.get_merge(info, merge_id=merge_id)
        return None if row is None else MemberMerge.from_row(row)

    @strawberry.field(
        description="A brand's audit log, newest first: every mutation, export and read of personal data in clear."
    )
    async def audit_log(
        self, info: Info, brand: audit.BrandCode, first: audit.First = 20, after: audit.After = None
    ) -> audit.AuditEntryConnection:
        return await audit.audit_log_page(info, brand, first, after)

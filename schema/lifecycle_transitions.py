"""`lifecycleTransitions`: who changed lifecycle stage in a time range, counted and paged."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import strawberry

from resolvers import lifecycle
from resolvers.context import Info
from schema import inputs
from schema.connection import MemberConnection
from schema.errors import or_graphql_error
from schema.expression_errors import or_query_error
from schema.lifecycle import LifecycleStage

First = Annotated[int, strawberry.argument(description="Page size, 0-100.")]
After = Annotated[str | None, strawberry.argument(description="`endCursor` of the previous page.")]


@strawberry.type(description="Changes from one stage to another.")
class LifecycleTransitionPair:
    from_stage: LifecycleStage | None = strawberry.field(description="The stage left; null: none (became live).")
    to_stage: LifecycleStage | None = strawberry.field(description="The stage entered; null: none (merged, erased).")
    changes: int = strawberry.field(description="Changes recorded.")
    members: int = strawberry.field(description="Distinct members who made them (merged-away ones included).")


@strawberry.type(description="The members who changed lifecycle stage as asked, in a time range.")
class LifecycleTransitions:
    found: strawberry.Private[lifecycle.Found]

    @strawberry.field(description="Live members who made such a change (each once, however often).")
    def count(self) -> int:
        return int(self.found.transitions.members.size)

    @strawberry.field(description="Such changes recorded (a member who made one twice counts twice).")
    def changes(self) -> int:
        return self.found.transitions.changes

    @strawberry.field(description="The matching changes per pair of stages, most first.")
    def pairs(self) -> list[LifecycleTransitionPair]:
        return [
            LifecycleTransitionPair(
                from_stage=None if left is None else LifecycleStage(left),
                to_stage=None if entered is None else LifecycleStage(entered),
                changes=changes,
                members=members,
            )
            for left, entered, changes, members in self.found.transitions.pairs
        ]

    @strawberry.field(description="Those live members in id order (keyset pagination), like an audience's sample.")
    async def members(self, info: Info, first: First = 20, after: After = None) -> MemberConnection:
        page = await or_graphql_error(lifecycle.members_page(info, self.found, first=first, after=after))
        return MemberConnection(page=page)


async def lifecycle_transitions(
    info: Info,
    brand: str,
    from_stage: LifecycleStage | None,
    to_stage: LifecycleStage | None,
    since: dt.datetime,
    until: dt.datetime | None,
    where: str | None,
) -> LifecycleTransitions:
    """The `lifecycleTransitions` query (wired in schema/query.py)."""

    async def find() -> lifecycle.Found:
        return await lifecycle.transitions(
            info,
            brand=brand,
            from_stage=None if from_stage is None else str(from_stage.value),
            to_stage=None if to_stage is None else str(to_stage.value),
            since=inputs.moment(since, "since"),
            until=None if until is None else inputs.moment(until, "until"),
            where=where,
        )

    return LifecycleTransitions(found=await or_graphql_error(or_query_error(find())))


DESCRIPTION = (
    "Who changed lifecycle stage in a brand between `since` and `until` (default now): from `from` to `to` "
    "(each omitted: any), e.g. mature members who slid to at risk this month (the recall campaign's audience). "
    "Counts and the members, paged; `where` keeps those of an audience expression. Changes are recorded as they "
    "happen, those caused by days passing included (docs/lifecycle.md)."
)
BrandCode = Annotated[str, strawberry.argument(description="Brand code.")]
Since = Annotated[dt.datetime, strawberry.argument(description=f"Changes at or after this instant, {inputs.ZONED}.")]
From = Annotated[LifecycleStage | None, strawberry.argument(name="from", description="The stage left; omitted: any.")]
To = Annotated[LifecycleStage | None, strawberry.argument(name="to", description="The stage entered; omitted: any.")]
Until = Annotated[
    dt.datetime | None,
    strawberry.argument(description="Changes before this instant (default: now), later than `since`."),
]
Where = Annotated[
    str | None,
    strawberry.argument(description="Only members this tag-language expression selects now (from the audience index)."),
]

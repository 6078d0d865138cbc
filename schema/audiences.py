"""Audiences: an expression of the tag language (or the same as a structured filter) over a brand's
members, answered from the bitmap index; saved audiences and their frozen snapshots."""

from __future__ import annotations

import datetime as dt
from enum import Enum
from typing import Annotated, Any

import strawberry

from resolvers import audiences, cursors
from resolvers.audit import audited
from resolvers.context import Info
from resolvers.domain import DomainError, Row, Selection
from schema.connection import MemberConnection
from schema.consent import Reach, TouchChannel, audience_reach
from schema.errors import InvalidInput, UnknownBrand
from schema.expression_errors import (
    IndexNotReady,
    InvalidExpression,
    UnknownAudience,
    audience_error,
    or_query_error,
)
from schema.freshness import IndexFreshness

BrandCode = Annotated[str, strawberry.argument(description="Brand code.")]
First = Annotated[int, strawberry.argument(description="Page size, 0-100.")]
After = Annotated[str | None, strawberry.argument(description="`endCursor` of the previous page.")]
EXPRESSION_HELP = (
    "An expression of the tag language, e.g. `tag:price_sensitive AND (channel:tmall OR channel:jd) AND NOT "
    "tag:churn_risk` (docs/audiences.md)."
)


# --- the structured filter -----------------------------------------------------------------------------


@strawberry.enum(description="How a field is compared in a FieldFilter.")
class FieldOp(Enum):
    EQ = "EQ"
    NE = "NE"
    LT = "LT"
    LTE = "LTE"
    GT = "GT"
    GTE = "GTE"
    IN = "IN"
    BETWEEN = "BETWEEN"
    WITHIN = "WITHIN"


@strawberry.input(description="A dimension term: `tier:gold`, or `tier IN (gold, platinum)` with several values.")
class DimensionFilter:
    name: str = strawberry.field(
        description="tier, channel, city, status, gender, lifecycle, consent, rfm, bought, entered, first_channel"
        " (or `tag`)."
    )
    values: list[str] = strawberry.field(description="One value or more; any of them matches.")
    within: str | None = strawberry.field(
        default=None,
        description="For a dated dimension (`bought`, `entered`): a window such as `90d`,"
        " `bought:snacks WITHIN 90d`, `entered:at_risk WITHIN 30d`.",
    )


@strawberry.input(
    description="A field term: `points >= 1000`. EQ..GTE and WITHIN take `value` (WITHIN a duration such as "
    "`30d`), IN takes `values`, BETWEEN takes `low` and `high`."
)
class FieldFilter:
    name: str = strawberry.field(
        description="points, growth, order_count, total_spend, orders_365d, days_since_last_purchase, age, "
        "registered, last_purchase, first_purchase, spend_30d .. spend_365d and orders_30d .. orders_365d (30, 90, "
        "180, 365 days)."
    )
    op: FieldOp = strawberry.field(description="The comparison.")
    value: str | None = strawberry.field(default=None, description="The value, typed like the field.")
    values: list[str] | None = strawberry.field(default=None, description="Values for IN.")
    low: str | None = strawberry.field(default=None, description="Lower bound for BETWEEN (inclusive).")
    high: str | None = strawberry.field(default=None, description="Upper bound for BETWEEN (inclusive).")
    qualifier: str | None = strawberry.field(
        default=None,
        description="A product category for a windowed purchase field: `spend_90d:snacks >= 500`.",
    )
    within: str | None = strawberry.field(
        default=None,
        description="With IN on a dated dimension: a window such as `30d` (`bought IN (a, b) WITHIN 30d`).",
    )


@strawberry.input(
    description="An audience as a structured value: set exactly one member. It means what the same expression "
    "written as text means (and prints to it: `Audience.expression`)."
)
class AudienceFilter:
    and_: list[AudienceFilter] | None = strawberry.field(
        name="and", default=None, description="All of these (at least one)."
    )
    or_: list[AudienceFilter] | None = strawberry.field(
        name="or", default=None, description="Any of these (at least one)."
    )
    not_: AudienceFilter | None = strawberry.field(name="not", default=None, description="Not this.")
    tag: str | None = strawberry.field(default=None, description="Carries the tag (code or display name).")
    dimension: DimensionFilter | None = strawberry.field(default=None, description="A dimension term.")
    field: FieldFilter | None = strawberry.field(default=None, description="A field comparison.")

    def to_data(self) -> dict[str, object]:
        """The plain data tagquery.from_filter reads."""
        return {
            "and": None if self.and_ is None else [item.to_data() for item in self.and_],
            "or": None if self.or_ is None else [item.to_data() for item in self.or_],
            "not": None if self.not_ is None else self.not_.to_data(),
            "tag": self.tag,
            "dimension": None if self.dimension is None else vars(self.dimension),
            "field": None if self.field is None else {**vars(self.field), "op": self.field.op.value},
        }


# --- reading an audience -------------------------------------------------------------------------------


@strawberry.enum(description="What an audience can be broken down by.")
class AudienceDimension(Enum):
    TIER = "tier"
    CHANNEL = "channel"
    CITY = "city"
    LIFECYCLE = "lifecycle"
    STATUS = "status"
    GENDER = "gender"
    RFM = strawberry.enum_value("rfm", description="The RFM cell (Brand.rfm); members who never bought are in none.")


@strawberry.enum(description="How an audience was computed.")
class AudiencePlan(Enum):
    BITMAP = "bitmap"
    ROWS = "rows"


@strawberry.type(description="Members of an audience with one value of a dimension.")
class BreakdownValue:
    value: str = strawberry.field(description="The value, e.g. `gold`, `tmall`, `上海`.")
    count: int = strawberry.field(description="Members of the audience with it.")


@strawberry.type(description="One step of an audience's funnel.")
class FunnelStep:
    clause: str | None = strawberry.field(
        description="The top-level AND operand applied at this step; null for the first step (live members)."
    )
    count: int = strawberry.field(description="Members left after this step.")
    removed: int = strawberry.field(description="Members this step removed from the previous step's count.")
    exclusion: bool = strawberry.field(description="The step is a NOT: `removed` is what it excluded.")


@strawberry.type(description="How an audience's count came about.")
class AudienceExplain:
    expression: str = strawberry.field(description="The canonical expression.")
    plan: AudiencePlan = strawberry.field(description="The plan used: BITMAP (the pivot over the bitmap index).")
    index_keys: list[str] = strawberry.field(description="The bitmap index keys the plan reads.")
    steps: list[FunnelStep] = strawberry.field(
        description="The brand's live members, then the count after each top-level AND operand in order (one "
        "step for an expression that is not an AND)."
    )


@strawberry.type(description="One node of the expression tree, with its truth value for the member.")
class WhyNode:
    index: int = strawberry.field(description="Position in pre-order (a node, then its operands).")
    parent: int | None = strawberry.field(description="`index` of the enclosing AND / OR / NOT; null at the root.")
    depth: int = strawberry.field(description="0 at the root.")
    text: str = strawberry.field(description="The node in canonical text.")
    value: bool = strawberry.field(description="Whether it holds for the member.")


@strawberry.type(description="Why a member is, or is not, in an audience.")
class WhyMember:
    member_id: strawberry.ID = strawberry.field(description="The member.")
    live: bool = strawberry.field(description="False for a merged-away member: it is in no audience.")
    matches: bool = strawberry.field(description="The member is in the audience (live and the root is true).")
    nodes: list[WhyNode] = strawberry.field(description="The expression tree in pre-order.")


@strawberry.type(description="The members an expression selects in a brand, answered from the bitmap index.")
class Audience:
    chosen: strawberry.Private[Selection]

    @classmethod
    def of(cls, chosen: Selection) -> Audience:
        return cls(chosen=chosen)

    @strawberry.field(description="The canonical expression (what saveAudience stores).")
    def expression(self) -> str:
        return self.chosen.text  # printed when asked: a count alone does not pay for it

    @strawberry.field(description="Members in the audience.")
    async def count(self, info: Info) -> int:
        return await or_query_error(audiences.count(info, self.chosen))

    @strawberry.field(
        description="Who of the audience may be contacted on a touch channel, and how many are left out for want "
        "of consent or as minors without a guardian's consent (what an export with `touch` leaves out)."
    )
    async def reach(
        self, info: Info, touch: Annotated[TouchChannel, strawberry.argument(description="The touch channel.")]
    ) -> Reach:
        return await or_query_error(audience_reach(info, self.chosen, touch))

    @strawberry.field(description="The audience's members in id order (keyset pagination).")
    async def sample(self, info: Info, first: First = 20, after: After = None) -> MemberConnection:
        page = await or_query_error(audiences.sample(info, self.chosen, first=first, after=after))
        return MemberConnection(page=page)

    @strawberry.field(description="Members per value of a dimension, most first; values with none are left out.")
    async def breakdown(
        self, info: Info, by: Annotated[AudienceDimension, strawberry.argument(description="The dimension.")]
    ) -> list[BreakdownValue]:
        counts = await or_query_error(audiences.breakdown(info, self.chosen, by.value))
        return [BreakdownValue(value=value, count=n) for value, n in counts]

    @strawberry.field(description="The canonical expression, the plan and the per-clause funnel.")
    async def explain(self, info: Info) -> AudienceExplain:
        found = await or_query_error(audiences.explain(info, self.chosen))
        steps = [
            FunnelStep(clause=s.clause, count=s.count, removed=s.removed, exclusion=s.exclusion) for s in found.steps
        ]
        return AudienceExplain(
            expression=found.expression, plan=AudiencePlan(found.plan), index_keys=found.index_keys, steps=steps
        )

    @strawberry.field(description="Each node's truth value for one member (from the system of record).")
    async def why_member(
        self, info: Info, id: Annotated[strawberry.ID, strawberry.argument(description="Member id.")]
    ) -> WhyMember:
        member_id = cursors.parse_id(id)
        if member_id is None:
            member_id = 0  # names no member: UNKNOWN_MEMBER below
        why = await or_query_error(audiences.why_member(info, self.chosen, member_id))
        nodes = [WhyNode(index=n.index, parent=n.parent, depth=n.depth, text=n.text, value=n.value) for n in why.nodes]
        return WhyMember(member_id=strawberry.ID(str(why.member_id)), live=why.live, matches=why.matches, nodes=nodes)

    @strawberry.field(description="When the bitmap index last caught up with writes.")
    async def freshness(self, info: Info) -> IndexFreshness:
        fresh = await or_query_error(audiences.freshness(info, self.chosen))
        return IndexFreshness.of(fresh, self.chosen.brand.brand_id)


async def audience(info: Info, brand: str, expression: str | None, filter: AudienceFilter | None) -> Audience:
    """The `audience` query (wired in schema/query.py)."""
    data = None if filter is None else filter.to_data()
    return Audience.of(await or_query_error(audiences.selection(info, brand=brand, expression=expression, filter=data)))


async def members_where(
    info: Info, brand: str, where: str | None, filter: AudienceFilter | None, first: int, after: str | None
) -> MemberConnection:
    """`members(where | filter)`: the audience's members, paged like `members`."""
    data = None if filter is None else filter.to_data()
    chosen = await or_query_error(audiences.selection(info, brand=brand, expression=where, filter=data, field="where"))
    return MemberConnection(page=await or_query_error(audiences.sample(info, chosen, first=first, after=after)))


# --- saved audiences -----------------------------------------------------------------------------------


def _id(value: int) -> strawberry.ID:
    return strawberry.ID(str(value))


@strawberry.type(description="A saved audience's members frozen at one moment.")
class AudienceSnapshot:
    id: strawberry.ID = strawberry.field(description="Snapshot id.")
    taken_at: dt.datetime = strawberry.field(description="When it was taken.")
    as_of_day: dt.date = strawberry.field(description="The brand's day relative windows (WITHIN 30d) were read on.")
    count: int = strawberry.field(description="Members in the snapshot.")
    brand_id: strawberry.Private[int]

    @classmethod
    def from_row(cls, row: Row) -> AudienceSnapshot:
        return cls(
            id=_id(row["id"]),
            taken_at=row["taken_at"],
            as_of_day=row["as_of_day"],
            count=row["member_count"],
            brand_id=row["brand_id"],
        )

    @strawberry.field(description="The snapshot's members in id order.")
    async def members(self, info: Info, first: First = 20, after: After = None) -> MemberConnection:
        ids = await audiences.snapshot_ids(info, int(self.id))
        page = await or_query_error(audiences.id_page(info, self.brand_id, ids, first=first, after=after))
        return MemberConnection(page=page)


@strawberry.type(description="An expression saved under a name, with frozen snapshots of its members.")
class SavedAudience:
    id: strawberry.ID = strawberry.field(description="Saved audience id.")
    brand: str = strawberry.field(description="Brand code.")
    name: str = strawberry.field(description="Name given when saved.")
    expression: str = strawberry.field(description="The canonical expression, as saved.")
    grammar_version: int = strawberry.field(description="Version of the tag language the expression is written in.")
    created_at: dt.datetime = strawberry.field(description="When it was saved.")
    snapshots: list[AudienceSnapshot] = strawberry.field(description="Its snapshots, newest first.")
    row: strawberry.Private[Row]

    @classmethod
    def of(cls, found: audiences.Saved) -> SavedAudience:
        row = found.audience
        return cls(
            id=_id(row["id"]),
            brand=row["brand_code"],
            name=row["name"],
            expression=row["expression"],
            grammar_version=row["grammar_version"],
            created_at=row["created_at"],
            snapshots=[AudienceSnapshot.from_row(s) for s in found.snapshots],
            row=row,
        )

    @strawberry.field(description="The newest snapshot.")
    def latest_snapshot(self) -> AudienceSnapshot | None:
        return self.snapshots[0] if self.snapshots else None

    @strawberry.field(description="The saved expression evaluated now, against the live index.")
    async def current(self, info: Info) -> Audience:
        return Audience.of(await or_query_error(audiences.saved_selection(info, self.row)))


@strawberry.type(description="Who entered and who exited an audience between two snapshots.")
class SnapshotComparison:
    before: AudienceSnapshot = strawberry.field(description="The earlier snapshot (as given).")
    after: AudienceSnapshot = strawberry.field(description="The later snapshot (as given).")
    entered_count: int = strawberry.field(description="Members in `after` and not in `before`.")
    exited_count: int = strawberry.field(description="Members in `before` and not in `after`.")
    stayed_count: int = strawberry.field(description="Members in both.")
    found: strawberry.Private[audiences.Comparison]

    @strawberry.field(description="Members in `after` and not in `before`, in id order.")
    async def entered(self, info: Info, first: First = 20, after: After = None) -> MemberConnection:
        ids = self.found.difference.entered
        return MemberConnection(page=await or_query_error(self._page(info, ids, first, after)))

    @strawberry.field(description="Members in `before` and not in `after`, in id order.")
    async def exited(self, info: Info, first: First = 20, after: After = None) -> MemberConnection:
        ids = self.found.difference.exited
        return MemberConnection(page=await or_query_error(self._page(info, ids, first, after)))

    def _page(self, info: Info, ids: Any, first: int, after: str | None) -> Any:
        return audiences.id_page(info, self.found.before["brand_id"], ids, first=first, after=after)


async def saved_audience(info: Info, id: str) -> SavedAudience | None:
    audience_id = cursors.parse_id(id)
    if audience_id is None:
        return None
    try:
        return SavedAudience.of(await audiences.saved_audience(info, audience_id))
    except DomainError:
        return None


async def saved_audiences(info: Info, brand: str) -> list[SavedAudience]:
    return [SavedAudience.of(found) for found in await or_query_error(audiences.saved_audiences(info, brand=brand))]


async def compare_snapshots(info: Info, before: str, after: str) -> SnapshotComparison:
    before_id, after_id = cursors.parse_id(before) or 0, cursors.parse_id(after) or 0
    found = await or_query_error(audiences.compare_snapshots(info, before_id=before_id, after_id=after_id))
    difference = found.difference
    return SnapshotComparison(
        before=AudienceSnapshot.from_row(found.before),
        after=AudienceSnapshot.from_row(found.after),
        entered_count=int(difference.entered.size),
        exited_count=int(difference.exited.size),
        stayed_count=difference.stayed,
        found=found,
    )


# --- mutations -----------------------------------------------------------------------------------------


@strawberry.type(description="The audience was saved with a first snapshot.")
class AudienceSaved:
    audience: SavedAudience = strawberry.field(description="The saved audience.")
    snapshot: AudienceSnapshot = strawberry.field(description="Its first snapshot.")


@strawberry.type(description="A new snapshot of a saved audience was taken.")
class AudienceRefreshed:
    audience: SavedAudience = strawberry.field(description="The saved audience, with all its snapshots.")
    snapshot: AudienceSnapshot = strawberry.field(description="The new snapshot.")


SaveAudienceResult = Annotated[
    AudienceSaved | UnknownBrand | InvalidExpression | InvalidInput | IndexNotReady,
    strawberry.union("SaveAudienceResult", description="Result of saveAudience."),
]
RefreshAudienceResult = Annotated[
    AudienceRefreshed | UnknownAudience | InvalidExpression | IndexNotReady,
    strawberry.union("RefreshAudienceResult", description="Result of refreshAudience."),
]


@strawberry.type(description="Save audiences and snapshot them.")
class AudienceMutation:
    @strawberry.mutation(
        description="Save an expression under a name with a frozen snapshot of its members (count and time)."
    )
    @audited("saveAudience")
    async def save_audience(
        self,
        info: Info,
        brand: BrandCode,
        name: Annotated[str, strawberry.argument(description="A name for people, 1-200 characters.")],
        expression: Annotated[str, strawberry.argument(description=EXPRESSION_HELP)],
    ) -> SaveAudienceResult:
        try:
            found = await audiences.save_audience(info, brand=brand, name=name, expression=expression)
        except DomainError as error:
            return audience_error(error)  # type: ignore[no-any-return]
        saved = SavedAudience.of(found)
        return AudienceSaved(audience=saved, snapshot=saved.snapshots[0])

    @strawberry.mutation(description="Evaluate a saved audience now and keep the result as a new snapshot.")
    @audited("refreshAudience")
    async def refresh_audience(
        self, info: Info, id: Annotated[strawberry.ID, strawberry.argument(description="Saved audience id.")]
    ) -> RefreshAudienceResult:
        try:
            found, taken = await audiences.refresh_audience(info, audience_id=cursors.parse_id(id) or 0)
        except DomainError as error:
            return audience_error(error)  # type: ignore[no-any-return]
        return AudienceRefreshed(audience=SavedAudience.of(found), snapshot=AudienceSnapshot.from_row(taken))

"""The unified member profile and what hangs off it."""

from __future__ import annotations

import base64
import datetime as dt
from decimal import Decimal
from typing import Annotated

import strawberry

from resolvers import brands, members, merges, pii, points
from resolvers.context import Info
from resolvers.domain import Row
from schema.brand import Brand, Tier
from schema.consent import Consent, member_consents
from schema.enums import Channel, Gender, MemberStatus
from schema.errors import or_graphql_error
from schema.federation_spec import FieldSet, Key
from schema.lifecycle import LifecycleStage, StageChange, current_stage, stage_history
from schema.points import ExpiringLot, ExpiringPoints, OrderConnection, PointsEntryConnection, TierChange
from schema.rfm import RfmScores, member_rfm
from schema.tags import MemberTag, member_tags


def _id(value: int) -> strawberry.ID:
    return strawberry.ID(str(value))


@strawberry.type(description="One channel's identity of a member.")
class Identity:
    channel: Channel = strawberry.field(description="The channel that issued the identity.")
    bound_at: dt.datetime = strawberry.field(description="When the identity was bound to this member.")
    member_id: strawberry.Private[int]
    raw_external_id: strawberry.Private[str]

    @classmethod
    def from_row(cls, row: Row, member_id: int) -> Identity:
        return cls(
            channel=Channel(row["channel"]),
            bound_at=row["bound_at"],
            member_id=member_id,
            raw_external_id=row["external_id"],
        )

    @strawberry.field(
        description="The channel's own id (openid, platform buyer id, card no); for partner keys a pseudonym "
        "(`p_...`), stable for the key and different for every other key."
    )
    def external_id(self, info: Info) -> str:
        return pii.channel_id(info, self.member_id, self.channel.value, self.raw_external_id)


@strawberry.type(
    description="One member profile of a brand, unified across channels.",
    directives=[Key(fields=FieldSet("id"))],  # a federation entity (schema/federation.py)
)
class Member:
    id: strawberry.ID = strawberry.field(description="Member id.")
    status: MemberStatus = strawberry.field(description="PROSPECT until a first purchase, MEMBER after.")
    tier: Tier = strawberry.field(description="Current tier.")
    points_balance: int = strawberry.field(description="Points available to spend.")
    growth_value: int = strawberry.field(description="Growth value accumulated towards tiers; never spent.")
    gender: Gender = strawberry.field(description="Gender as stated by the member.")
    birth_month: int | None = strawberry.field(description="Month of birth (1-12), when given; for every role.")
    city: str | None = strawberry.field(description="City of residence, e.g. 上海.")
    registered_at: dt.datetime = strawberry.field(description="When the member first registered anywhere.")
    first_purchase_at: dt.datetime | None = strawberry.field(description="First purchase on any channel.")
    last_purchase_at: dt.datetime | None = strawberry.field(description="Latest purchase on any channel.")
    order_count: int = strawberry.field(description="Orders across all channels.")
    total_spend: Decimal = strawberry.field(description="Total spend across all channels, in yuan.")
    masked_phone: str | None = strawberry.field(description="Mobile number for display, e.g. `138****5678`.")
    merged_at: dt.datetime | None = strawberry.field(description="When this member was merged into another.")
    brand_id: strawberry.Private[int]
    phone_hash: strawberry.Private[bytes | None]
    merged_into_id: strawberry.Private[int | None]
    raw_display_name: strawberry.Private[str | None]
    raw_birthday: strawberry.Private[dt.date | None]

    @classmethod
    def from_row(cls, row: Row) -> Member:
        return cls(
            id=_id(row["id"]),
            status=MemberStatus(row["status"]),
            tier=Tier(code=row["tier"], name=row["tier_name"], rank=row["tier_rank"]),
            points_balance=row["points_balance"],
            growth_value=row["growth_value"],
            gender=Gender(row["gender"]),
            birth_month=None if row["birthday"] is None else row["birthday"].month,
            city=row["city"],
            registered_at=row["registered_at"],
            first_purchase_at=row["first_purchase_at"],
            last_purchase_at=row["last_purchase_at"],
            order_count=row["order_count"],
            total_spend=row["total_spend"],
            masked_phone=row["phone_masked"],
            merged_at=row["merged_at"],
            brand_id=row["brand_id"],
            phone_hash=row["phone_hash"],
            merged_into_id=row["merged_into"],
            raw_display_name=row["display_name"],
            raw_birthday=row["birthday"],
        )

    @strawberry.field(description="Name the member gave; masked (`王*`) unless the key's role sees personal data.")
    def display_name(self, info: Info) -> str | None:
        return pii.name(info, int(self.id), self.raw_display_name)

    @strawberry.field(
        description="Birthday, when given; null unless the key's role sees personal data (see birthMonth)."
    )
    def birthday(self, info: Info) -> dt.date | None:
        return pii.birthday(info, int(self.id), self.raw_birthday)

    @strawberry.field(
        description="When the member's personal data was erased (`eraseMember`); null unless it was. An "
        "erased member keeps its id, tier, points and orders, with every personal field null."
    )
    async def erased_at(self, info: Info) -> dt.datetime | None:
        row = await members.get_member(info, member_id=int(self.id))  # the loader's row, read already
        return None if row is None else row["erased_at"]

    @strawberry.field(description="The brand this membership belongs to.")
    async def brand(self, info: Info) -> Brand:
        row = await brands.get_brand(info, brand_id=self.brand_id)
        assert row is not None
        return Brand.from_row(row)

    @strawberry.field(description="Channel identities bound to this member, oldest first.")
    async def identities(self, info: Info) -> list[Identity]:
        rows = await info.context.loaders.identities_by_member.load(int(self.id))
        return [Identity.from_row(row, int(self.id)) for row in rows]

    @strawberry.field(description="Tags the member carries, by category then code; expired ones are gone.")
    async def tags(self, info: Info) -> list[MemberTag]:
        return await member_tags(info, int(self.id))

    @strawberry.field(description="Marketing consent per touch channel and a guardian's, withdrawals included.")
    async def consents(self, info: Info) -> list[Consent]:
        return await member_consents(info, int(self.id))

    @strawberry.field(description="The member this one was merged into (null while it is live).")
    async def merged_into(self, info: Info) -> Member | None:
        if self.merged_into_id is None:
            return None
        row = await members.get_member(info, member_id=self.merged_into_id)
        return None if row is None else Member.from_row(row)

    @strawberry.field(
        description="The person behind this member across the group's brands, matched by phone; null without a phone."
    )
    async def person(self, info: Info) -> Person | None:
        if self.phone_hash is None:
            return None
        brand = await brands.get_brand(info, brand_id=self.brand_id)
        assert brand is not None
        return Person(
            group_id=brand["group_id"],
            phone_hash=self.phone_hash,
            member_id=int(self.id),
        )

    @strawberry.field(description="The points journal, newest entry first.")
    async def points_history(
        self,
        info: Info,
        first: Annotated[int, strawberry.argument(description="Page size, 0-100.")] = 20,
        after: Annotated[str | None, strawberry.argument(description="`endCursor` of the previous page.")] = None,
    ) -> PointsEntryConnection:
        page = await or_graphql_error(points.points_history(info, member_id=int(self.id), first=first, after=after))
        return PointsEntryConnection.from_page(page)

    @strawberry.field(description="Orders, newest payment first.")
    async def orders(
        self,
        info: Info,
        first: Annotated[int, strawberry.argument(description="Page size, 0-100.")] = 20,
        after: Annotated[str | None, strawberry.argument(description="`endCursor` of the previous page.")] = None,
    ) -> OrderConnection:
        page = await or_graphql_error(points.order_history(info, member_id=int(self.id), first=first, after=after))
        return OrderConnection.from_page(page)

    @strawberry.field(description="Points that expire within the next `withinDays` days (0-3660).")
    async def expiring_points(
        self, info: Info, within_days: Annotated[int, strawberry.argument(description="Window in days.")] = 30
    ) -> ExpiringPoints:
        rows = await or_graphql_error(points.expiring_points(info, member_id=int(self.id), within_days=within_days))
        lots = [ExpiringLot(expires_at=r["expires_at"], points=r["points"]) for r in rows]
        return ExpiringPoints(total=sum(lot.points for lot in lots), lots=lots)

    @strawberry.field(description="Tier changes, oldest first, with their causes.")
    async def tier_history(self, info: Info) -> list[TierChange]:
        rows = await points.get_tier_changes(info, member_id=int(self.id))
        return [
            TierChange(from_tier=r["from_tier"], to_tier=r["to_tier"], cause=r["cause"], changed_at=r["changed_at"])
            for r in rows
        ]

    @strawberry.field(
        description="The lifecycle stage the member is in, as last computed (Brand.audienceIndex.lifecycle says "
        "when); null for a member merged away or erased."
    )
    async def lifecycle_stage(self, info: Info) -> LifecycleStage | None:
        return await current_stage(info, int(self.id))

    @strawberry.field(
        description="The member's RFM scores and cell under the brand's thresholds in force (Brand.rfm), on the "
        "brand's day; null for a member who never bought or was merged away."
    )
    async def rfm(self, info: Info) -> RfmScores | None:
        if self.merged_into_id is not None:
            return None
        return await member_rfm(info, self.brand_id, self.last_purchase_at, self.order_count, self.total_spend)

    @strawberry.field(description="Every change of the member's lifecycle stage, oldest first, with its cause.")
    async def stage_history(self, info: Info) -> list[StageChange]:
        return await stage_history(info, int(self.id))

    @strawberry.field(description="Merges this member took part in, as survivor or as merged member, oldest first.")
    async def merges(self, info: Info) -> list[MemberMerge]:
        return [MemberMerge.from_row(row) for row in await merges.get_member_merges(info, member_id=int(self.id))]


@strawberry.type(description="One person known to several brands of a group through the same phone number.")
class Person:
    group_id: strawberry.Private[int]
    phone_hash: strawberry.Private[bytes]
    member_id: strawberry.Private[int]

    @strawberry.field(description="Opaque key shared by all memberships of this person within the group.")
    def key(self) -> strawberry.ID:
        return strawberry.ID(base64.urlsafe_b64encode(self.group_id.to_bytes(8, "big") + self.phone_hash[:16]).decode())

    @strawberry.field(description="The person's memberships in the group's other brands.")
    async def memberships(self, info: Info) -> list[Member]:
        rows = await info.context.loaders.members_by_person.load((self.group_id, self.phone_hash))
        return [Member.from_row(row) for row in rows if row["id"] != self.member_id]


@strawberry.type(description="An identity a merge moved from the merged member to the survivor.")
class MovedIdentity:
    channel: Channel = strawberry.field(description="The identity's channel.")
    member_id: strawberry.Private[int]
    raw_external_id: strawberry.Private[str]

    @strawberry.field(description="The channel's own id (a pseudonym for partner keys, as in Identity).")
    def external_id(self, info: Info) -> str:
        return pii.channel_id(info, self.member_id, self.channel.value, self.raw_external_id)


@strawberry.type(description="A recorded merge of one member into another, reversible with `unmergeMembers`.")
class MemberMerge:
    id: strawberry.ID = strawberry.field(description="Merge id, the argument of `unmergeMembers`.")
    reason: str = strawberry.field(description="Why the members were merged.")
    merged_at: dt.datetime = strawberry.field(description="When the merge happened.")
    unmerged_at: dt.datetime | None = strawberry.field(description="When it was undone, if it was.")
    moved_identities: list[MovedIdentity] = strawberry.field(description="Identities the merge moved.")
    survivor_id: strawberry.Private[int]
    merged_id: strawberry.Private[int]

    @classmethod
    def from_row(cls, row: Row) -> MemberMerge:
        return cls(
            id=_id(row["id"]),
            reason=row["reason"],
            merged_at=row["merged_at"],
            unmerged_at=row["unmerged_at"],
            moved_identities=[
                MovedIdentity(
                    channel=Channel(i["channel"]), member_id=row["merged_id"], raw_external_id=i["external_id"]
                )
                for i in row["moved"]["identities"]
            ],
            survivor_id=row["survivor_id"],
            merged_id=row["merged_id"],
        )

    @strawberry.field(description="The member that took over the identities.")
    async def survivor(self, info: Info) -> Member:
        return await _load(info, self.survivor_id)

    @strawberry.field(description="The member that was merged away.")
    async def merged(self, info: Info) -> Member:
        return await _load(info, self.merged_id)


async def _load(info: Info, member_id: int) -> Member:
    row = await members.get_member(info, member_id=member_id)
    assert row is not None
    return Member.from_row(row)

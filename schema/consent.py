"""Marketing consent (PIPL): per brand and touch channel, with a guardian's consent for minors, and
an audience's reach on a touch channel (docs/audiences.md#consent-and-reach)."""

from __future__ import annotations

import datetime as dt
from enum import Enum
from typing import TYPE_CHECKING, Annotated, Any

import strawberry

from resolvers import consent
from resolvers.audit import audited
from resolvers.context import Info
from resolvers.domain import DomainError, Row, Selection
from resolvers.members import get_member
from schema import inputs
from schema.errors import InvalidInput, UnknownBrand, UnknownMember, error_result

if TYPE_CHECKING:
    from schema.member import Member

GUARDIAN = "guardian"


@strawberry.enum(description="A channel a brand contacts members on; each needs the member's marketing consent.")
class TouchChannel(Enum):
    SMS = "sms"
    AI_CALL = "ai_call"
    WECOM = "wecom"
    MINI_PROGRAM = "mini_program"
    EMAIL = "email"


@strawberry.enum(
    description="What a consent is for: a touch channel, or GUARDIAN (a guardian's consent for a member under 14)."
)
class ConsentChannel(Enum):
    SMS = "sms"
    AI_CALL = "ai_call"
    WECOM = "wecom"
    MINI_PROGRAM = "mini_program"
    EMAIL = "email"
    GUARDIAN = GUARDIAN


@strawberry.type(description="A member's latest marketing-consent decision for one channel (PIPL).")
class Consent:
    channel: ConsentChannel = strawberry.field(description="The touch channel, or GUARDIAN.")
    granted: bool = strawberry.field(description="True: consent given; false: withdrawn (or refused).")
    given_at: dt.datetime = strawberry.field(description="When the decision was made.")
    source: str = strawberry.field(description="Where it was recorded: a page, a form, a call …")
    recorded_at: dt.datetime = strawberry.field(description="When omnimember recorded it.")

    @classmethod
    def from_row(cls, row: Row) -> Consent:
        return cls(
            channel=ConsentChannel(row["channel"]),
            granted=row["granted"],
            given_at=row["given_at"],
            source=row["source"],
            recorded_at=row["recorded_at"],
        )


@strawberry.type(description="The consent was recorded (or a later decision already stood).")
class ConsentRecorded:
    consent: Consent = strawberry.field(description="The channel's consent as it stands now.")
    superseded: bool = strawberry.field(
        description="True when a decision with a later givenAt was recorded already: nothing changed."
    )
    member_id: strawberry.Private[int]

    @strawberry.field(description="The member.")
    async def member(self, info: Info) -> Annotated[Member, strawberry.lazy("schema.member")]:
        from schema.member import Member  # schema.member imports this module

        row = await get_member(info, member_id=self.member_id)
        assert row is not None
        return Member.from_row(row)


@strawberry.type(
    description="Who of an audience may be contacted on a touch channel: members with consent for it, less "
    "minors (under 14 on the brand's day) without a guardian's consent. The three counts add up to the audience."
)
class Reach:
    touch: TouchChannel = strawberry.field(description="The channel.")
    count: int = strawberry.field(description="Members that may be contacted on it.")
    excluded_no_consent: int = strawberry.field(description="Members without a granted consent for the channel.")
    excluded_minor: int = strawberry.field(
        description="Members with consent left out as under 14 without a guardian's consent."
    )


SetConsentResult = Annotated[
    ConsentRecorded | UnknownBrand | UnknownMember | InvalidInput,
    strawberry.union("SetConsentResult", description="Result of setConsent and setGuardianConsent."),
]
BrandCode = Annotated[str, strawberry.argument(description="Brand code.")]
MemberId = Annotated[strawberry.ID, strawberry.argument(description="The member (live, of this brand).")]
Granted = Annotated[bool, strawberry.argument(description="True to grant, false to withdraw.")]
Source = Annotated[str, strawberry.argument(description="Where the decision was made or recorded (1-200 characters).")]
GivenAt = Annotated[
    dt.datetime | None,
    strawberry.argument(description=f"When the decision was made, {inputs.ZONED}; default: now."),
]


@strawberry.type(description="Record members' marketing consent.")
class ConsentMutation:
    @strawberry.mutation(
        description="Record a member's consent to be contacted on a touch channel, or its withdrawal. The latest "
        "decision per channel stands (an older givenAt than the one recorded changes nothing: `superseded`)."
    )
    @audited("setConsent")
    async def set_consent(
        self,
        info: Info,
        brand: BrandCode,
        member_id: MemberId,
        channel: Annotated[TouchChannel, strawberry.argument(description="The touch channel.")],
        granted: Granted,
        source: Source,
        given_at: GivenAt = None,
    ) -> SetConsentResult:
        return await _set(info, brand, member_id, channel.value, granted, source, given_at)  # type: ignore[no-any-return]

    @strawberry.mutation(
        description="Record a guardian's consent for a member under 14 (or its withdrawal): without it, such a "
        "member is left out of every touch-channel export and reach."
    )
    @audited("setGuardianConsent")
    async def set_guardian_consent(
        self,
        info: Info,
        brand: BrandCode,
        member_id: MemberId,
        granted: Granted,
        source: Source,
        given_at: GivenAt = None,
    ) -> SetConsentResult:
        return await _set(info, brand, member_id, GUARDIAN, granted, source, given_at)  # type: ignore[no-any-return]


async def _set(
    info: Info,
    brand: str,
    member_id: strawberry.ID,
    channel: str,
    granted: bool,
    source: str,
    given_at: dt.datetime | None,
) -> Any:
    """Record the decision: ConsentRecorded, or the typed error (argument errors included)."""
    try:
        done = await consent.set_consent(
            info,
            brand=brand,
            member_id=str(member_id),
            channel=channel,
            granted=granted,
            source=source,
            given_at=None if given_at is None else inputs.moment(given_at, "givenAt"),
        )
    except DomainError as error:
        return error_result(error)
    return ConsentRecorded(
        consent=Consent.from_row(done.consent), superseded=done.superseded, member_id=done.consent["member_id"]
    )


async def member_consents(info: Info, member_id: int) -> list[Consent]:
    """The `Member.consents` field (wired in schema/member.py)."""
    return [Consent.from_row(row) for row in await consent.get_consents(info, member_id=member_id)]


async def audience_reach(info: Info, chosen: Selection, touch: TouchChannel) -> Reach:
    """The `Audience.reach` field (wired in schema/audiences.py)."""
    found = await consent.reach(info, chosen, touch.value)
    return Reach(
        touch=touch,
        count=found.count,
        excluded_no_consent=found.excluded_no_consent,
        excluded_minor=found.excluded_minor,
    )

"""Tags: the brand's catalog, what members carry, and the mutations that define and assign them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Annotated, Any, TypeVar

import strawberry

from resolvers import tags
from resolvers.audit import audited
from resolvers.context import Info
from resolvers.domain import MAX_MEMBER_IDS, DomainError, Row
from schema import inputs
from schema.errors import (
    DuplicateTag,
    InvalidInput,
    InvalidTagCode,
    TooManyIds,
    UnknownBrand,
    UnknownMembers,
    UnknownTag,
)
from schema.expression_errors import IndexNotReady, InvalidExpression, audience_error


@strawberry.enum(description="What kind of fact a tag records.")
class TagCategory(Enum):
    BEHAVIOR = "behavior"
    SURVEY = "survey"
    CHANNEL = "channel"
    LIFECYCLE = "lifecycle"
    RFM = "rfm"
    CAMPAIGN = "campaign"
    CUSTOM = "custom"


@strawberry.type(description="A tag of a brand's catalog.")
class TagDefinition:
    id: strawberry.ID = strawberry.field(description="Tag id.")
    code: str = strawberry.field(description="Stable code, as written in expressions: `tag:<code>`.")
    name: str = strawberry.field(description="Display name, e.g. 价格敏感.")
    category: TagCategory = strawberry.field(description="What kind of fact the tag records.")
    ttl_days: int | None = strawberry.field(
        description="Assignments expire this many days after they are made, unless they say otherwise."
    )
    created_at: dt.datetime = strawberry.field(description="When the tag was defined.")
    rule: str | None = strawberry.field(
        description="A rule tag's current rule (canonical text of the tag language, tags named by code): the "
        "engine assigns the tag to exactly the live members it selects. Null: a tag assigned by hand."
    )
    rule_version: int | None = strawberry.field(
        description="The current version of the rule (1 for the first; each change is a new one). Null: no rule."
    )

    @classmethod
    def from_row(cls, row: Row) -> TagDefinition:
        return cls(
            id=strawberry.ID(str(row["id"])),
            code=row["code"],
            name=row["name"],
            category=TagCategory(row["category"]),
            ttl_days=row["ttl_days"],
            created_at=row["created_at"],
            rule=row.get("rule"),
            rule_version=row.get("rule_version"),
        )

    @strawberry.field(description="Members carrying the tag now; expired assignments do not count.")
    async def member_count(self, info: Info) -> int:
        return await tags.get_member_count(info, tag_id=int(self.id))

    @strawberry.field(description="Every version of the tag's rule, oldest first; empty for a tag assigned by hand.")
    async def rule_versions(self, info: Info) -> list[TagRuleVersion]:
        if self.rule_version is None:
            return []
        return [TagRuleVersion.of(found) for found in await tags.get_rule_history(info, tag_id=int(self.id))]

    @strawberry.field(
        description="For a rule tag: when it was last computed and how far behind the writes and the calendar it "
        "is. Null: a tag assigned by hand."
    )
    async def computation(self, info: Info) -> RuleTagFreshness | None:
        if self.rule_version is None:
            return None
        found = await tags.get_rule_freshness(info, tag_id=int(self.id))
        return None if found is None else RuleTagFreshness.of(found)


@strawberry.type(description="One version of a rule tag's rule; every version is kept.")
class TagRuleVersion:
    version: int = strawberry.field(description="1 for the first rule, then one more for each change.")
    rule: str = strawberry.field(description="The rule: canonical text of the tag language, tags named by code.")
    created_at: dt.datetime = strawberry.field(description="When this version was set.")
    created_by: str = strawberry.field(description="The name of the API key that set it.")

    @classmethod
    def of(cls, found: Any) -> TagRuleVersion:
        return cls(version=found.version, rule=found.rule, created_at=found.created_at, created_by=found.created_by)


@strawberry.type(
    description="How current a rule tag's assignments are. It is computed for the members of each write as the "
    "audience index applies it, for every member when its rule changes, and again each brand day (rules such as "
    "`last_purchase WITHIN 30d` move with the clock)."
)
class RuleTagFreshness:
    computed_at: dt.datetime | None = strawberry.field(
        description="When the tag was last computed (for every member, or for the members of a write); null: not yet."
    )
    as_of_day: dt.date | None = strawberry.field(
        description="The brand day its time-relative terms were last evaluated for, for every member."
    )
    as_of: dt.datetime | None = strawberry.field(
        description="Every write committed and every day begun before this instant is reflected; null: not computed "
        "yet."
    )
    lag_seconds: float | None = strawberry.field(description="Now minus `asOf`.")

    @classmethod
    def of(cls, found: Any) -> RuleTagFreshness:
        return cls(
            computed_at=found.computed_at,
            as_of_day=found.day,
            as_of=found.as_of,
            lag_seconds=None if found.lag is None else found.lag.total_seconds(),
        )


@strawberry.type(description="A tag a member carries (expired assignments are never shown).")
class MemberTag:
    code: str = strawberry.field(description="The tag's code.")
    name: str = strawberry.field(description="The tag's display name.")
    category: TagCategory = strawberry.field(description="The tag's category.")
    source: str = strawberry.field(description="Where the assignment came from: manual, rule, import, demo …")
    assigned_at: dt.datetime = strawberry.field(description="When the member was (last) given the tag.")
    expires_at: dt.datetime | None = strawberry.field(description="When the assignment lapses; null: never.")
    rule_version: int | None = strawberry.field(
        description="For an assignment a rule made: the version of the rule that made it (it keeps it while it "
        "holds under later versions). Null otherwise."
    )
    computed_at: dt.datetime | None = strawberry.field(
        description="For an assignment a rule made: when it was computed. Null otherwise."
    )

    @classmethod
    def from_row(cls, row: Row) -> MemberTag:
        return cls(
            code=row["code"],
            name=row["name"],
            category=TagCategory(row["category"]),
            source=row["source"],
            assigned_at=row["assigned_at"],
            expires_at=row["expires_at"],
            rule_version=row.get("rule_version"),
            computed_at=row.get("computed_at"),
        )


@strawberry.type(description="The tag was added to the brand's catalog.")
class TagDefined:
    tag: TagDefinition = strawberry.field(description="The new tag.")


@strawberry.type(description="The members carry the tag now.")
class MembersTagged:
    tag: TagDefinition = strawberry.field(description="The tag.")
    tagged: int = strawberry.field(description="Distinct members that carry the tag because of this call.")
    added: int = strawberry.field(
        description="Of them, members that did not carry it before (the others had their assignment refreshed)."
    )
    expires_at: dt.datetime | None = strawberry.field(description="When these assignments lapse; null: never.")


@strawberry.type(description="The members no longer carry the tag.")
class MembersUntagged:
    tag: TagDefinition = strawberry.field(description="The tag.")
    removed: int = strawberry.field(description="Members that carried the tag and no longer do.")


@strawberry.type(description="The tag has the rule now.")
class TagRuleSet:
    tag: TagDefinition = strawberry.field(description="The tag, with its current rule and version.")
    changed: bool = strawberry.field(
        description="False when the rule was the current one already (no new version, nothing computed)."
    )
    added: int | None = strawberry.field(
        description="Assignments made by computing the new rule for every member (with the rule tags that depend "
        "on it: theirs too); null when nothing was computed now: the rule is unchanged, or the brand's index was "
        "busy and the server's scheduled pass computes it within a minute (`tag.computation` says when)."
    )
    removed: int | None = strawberry.field(
        description="Assignments taken away by that computation (members the rule no longer selects); null as `added`."
    )


DefineTagResult = Annotated[
    TagDefined | UnknownBrand | InvalidTagCode | DuplicateTag | InvalidInput | InvalidExpression,
    strawberry.union("DefineTagResult", description="Result of defineTag."),
]
SetTagRuleResult = Annotated[
    TagRuleSet | UnknownBrand | UnknownTag | InvalidInput | InvalidExpression,
    strawberry.union("SetTagRuleResult", description="Result of setTagRule."),
]
TagMembersResult = Annotated[
    MembersTagged
    | UnknownBrand
    | UnknownTag
    | UnknownMembers
    | TooManyIds
    | InvalidInput
    | InvalidExpression
    | IndexNotReady,
    strawberry.union("TagMembersResult", description="Result of tagMembers."),
]
UntagMembersResult = Annotated[
    MembersUntagged
    | UnknownBrand
    | UnknownTag
    | UnknownMembers
    | TooManyIds
    | InvalidInput
    | InvalidExpression
    | IndexNotReady,
    strawberry.union("UntagMembersResult", description="Result of untagMembers."),
]

RULE_ARGUMENT = (
    "The rule: an expression of the tag language, checked as `audience(expression:)` checks one "
    "(InvalidExpression with the position). It may name other tags, rule tags included, but not form a cycle "
    "through them (InvalidExpression, reason CYCLE, naming it). The engine assigns the tag to exactly the live "
    "members it selects, and keeps it so; nobody assigns it by hand."
)
BrandCode = Annotated[str, strawberry.argument(description="Brand code.")]
TagCode = Annotated[str, strawberry.argument(description="The tag's code.")]
MemberIds = Annotated[
    list[strawberry.ID] | None,
    strawberry.argument(
        description=f"Live members of the brand, at most {MAX_MEMBER_IDS:,} (repeats count once). One id that is "
        "unknown or merged away fails the call (UnknownMembers lists them) and nothing is changed. Not with "
        "`where`."
    ),
]
Where = Annotated[
    str | None,
    strawberry.argument(
        description="Instead of ids: the live members a tag-language expression selects (from the audience index), "
        f"at most {MAX_MEMBER_IDS:,} (TooManyIds beyond). Not with `memberIds`."
    ),
]


@strawberry.type(description="Define tags and assign them.")
class TagMutation:
    @strawberry.mutation(description="Add a tag to a brand's catalog.")
    @audited("defineTag")
    async def define_tag(
        self,
        info: Info,
        brand: BrandCode,
        code: Annotated[
            str,
            strawberry.argument(
                description="Stable code, 1-64 characters: letters of any script, digits, '_', '-', '.'; "
                "not a keyword of the tag language. Unique in the brand."
            ),
        ],
        name: Annotated[str, strawberry.argument(description="Display name, 1-100 characters.")],
        category: Annotated[TagCategory, strawberry.argument(description="What kind of fact the tag records.")],
        ttl_days: Annotated[
            int | None,
            strawberry.argument(description="Default life of an assignment in days (1-36500); null: no expiry."),
        ] = None,
        rule: Annotated[
            str | None,
            strawberry.argument(description=RULE_ARGUMENT + " Not with `ttlDays`. Null: a tag assigned by hand."),
        ] = None,
    ) -> DefineTagResult:
        try:
            row = await tags.define_tag(
                info, brand=brand, code=code, name=name, category=category.value, ttl_days=ttl_days, rule=rule
            )
        except DomainError as error:
            return audience_error(error)  # type: ignore[no-any-return]
        return TagDefined(tag=TagDefinition.from_row(row))

    @strawberry.mutation(
        description="Give a tag a rule, or change it: a new version (every version is kept), and the tag (with the "
        "rule tags that depend on it) computed for every member at once (or, when the brand's index is busy, by the "
        "server's scheduled pass). The current rule again changes nothing. "
        "A tag assigned by hand becomes a rule tag (its hand assignments are replaced); a tag with ttlDays cannot."
    )
    @audited("setTagRule")
    async def set_tag_rule(
        self,
        info: Info,
        brand: BrandCode,
        tag: TagCode,
        rule: Annotated[str, strawberry.argument(description=RULE_ARGUMENT)],
    ) -> SetTagRuleResult:
        try:
            done = await tags.set_tag_rule(info, brand=brand, tag=tag, rule=rule)
        except DomainError as error:
            return audience_error(error)  # type: ignore[no-any-return]
        computed = done.computed
        return TagRuleSet(
            tag=TagDefinition.from_row(done.tag),
            changed=done.changed,
            added=None if computed is None else computed.added,
            removed=None if computed is None else computed.removed,
        )

    @strawberry.mutation(
        description="Give members a tag. Members who carry it already have it refreshed (assigned time, expiry, "
        "source) rather than failing. All or nothing, in one transaction."
    )
    @audited("tagMembers")
    async def tag_members(
        self,
        info: Info,
        brand: BrandCode,
        tag: TagCode,
        member_ids: MemberIds = None,
        where: Where = None,
        expires_at: Annotated[
            dt.datetime | None,
            strawberry.argument(
                description=f"When the assignments lapse: in the future, {inputs.ZONED}, {inputs.MOMENTS} "
                "(docs/errors.md#argument-limits); default: the tag's ttlDays from now, or never when it has none."
            ),
        ] = None,
    ) -> TagMembersResult:
        return await _result(  # type: ignore[no-any-return]
            lambda: tags.tag_members(
                info,
                brand=brand,
                tag=tag,
                member_ids=member_ids,
                where=where,
                expires_at=None if expires_at is None else inputs.moment(expires_at, "expiresAt"),
            ),
            lambda done: MembersTagged(
                tag=TagDefinition.from_row(done.tag),
                tagged=done.tagged,
                added=done.added,
                expires_at=done.expires_at,
            ),
        )

    @strawberry.mutation(description="Take a tag from members. All or nothing, in one transaction.")
    @audited("untagMembers")
    async def untag_members(
        self, info: Info, brand: BrandCode, tag: TagCode, member_ids: MemberIds = None, where: Where = None
    ) -> UntagMembersResult:
        return await _result(  # type: ignore[no-any-return]
            lambda: tags.untag_members(info, brand=brand, tag=tag, member_ids=member_ids, where=where),
            lambda done: MembersUntagged(tag=TagDefinition.from_row(done.tag), removed=done.removed),
        )


T = TypeVar("T")


async def _result(work: Callable[[], Awaitable[T]], success: Callable[[T], Any]) -> Any:
    """Run a tag write (its arguments converted inside, so a refusal is typed too): its success
    type, or the typed error."""
    try:
        done = await work()
    except DomainError as error:
        return audience_error(error)
    return success(done)


async def list_tags(info: Info, brand: str, category: TagCategory | None) -> list[TagDefinition]:
    """The `tags` query (wired in schema/query.py)."""
    rows = await tags.list_tags(info, brand=brand, category=None if category is None else category.value)
    return [TagDefinition.from_row(row) for row in rows]


async def member_tags(info: Info, member_id: int) -> list[MemberTag]:
    """The `Member.tags` field (wired in schema/member.py)."""
    return [MemberTag.from_row(row) for row in await tags.get_member_tags(info, member_id=member_id)]

"""Mutation root: every write returns a union of its success type and typed errors."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import strawberry

from resolvers import brands, identities, merges
from resolvers.audit import audited
from resolvers.context import Info
from resolvers.cursors import parse_id
from resolvers.domain import Binding, DomainError, ErrorCode, Profile
from resolvers.members import get_member
from schema import inputs
from schema.brand import Brand
from schema.enums import BindingOutcome, Gender
from schema.errors import (
    AlreadyMerged,
    CrossBrandMerge,
    DuplicateBrand,
    IdentityAlreadyBound,
    InvalidInput,
    InvalidPhone,
    MergeNotReversible,
    NotAllowed,
    SelfMerge,
    UnknownBrand,
    UnknownChannel,
    UnknownMember,
    UnknownMerge,
    error_result,
)
from schema.member import Member, MemberMerge


@strawberry.type(description="The brand was created.")
class BrandCreated:
    brand: Brand = strawberry.field(description="The new brand.")


@strawberry.type(description="The identity resolved to a member; `outcome` says how.")
class MemberRegistered:
    member: Member = strawberry.field(description="The member the identity belongs to now.")
    outcome: BindingOutcome = strawberry.field(description="Existing binding, phone match, or a new prospect.")


@strawberry.type(description="The identity is bound; `outcome` says how.")
class IdentityBound:
    member: Member = strawberry.field(description="The member the identity belongs to now.")
    outcome: BindingOutcome = strawberry.field(description="How the identity was resolved.")


@strawberry.type(description="The members were merged.")
class MembersMerged:
    merge: MemberMerge = strawberry.field(description="The recorded merge; its id undoes it.")


@strawberry.type(description="The merge was undone.")
class MembersUnmerged:
    merge: MemberMerge = strawberry.field(description="The merge, now with `unmergedAt`.")


CreateBrandResult = Annotated[
    BrandCreated | InvalidInput | DuplicateBrand | NotAllowed,
    strawberry.union("CreateBrandResult", description="Result of createBrand."),
]
RegisterMemberResult = Annotated[
    MemberRegistered | UnknownBrand | UnknownChannel | InvalidPhone | InvalidInput,
    strawberry.union("RegisterMemberResult", description="Result of registerMember."),
]
BindIdentityResult = Annotated[
    IdentityBound
    | UnknownBrand
    | UnknownChannel
    | UnknownMember
    | InvalidPhone
    | InvalidInput
    | IdentityAlreadyBound
    | AlreadyMerged,
    strawberry.union("BindIdentityResult", description="Result of bindIdentity."),
]
MergeMembersResult = Annotated[
    MembersMerged | UnknownMember | SelfMerge | CrossBrandMerge | AlreadyMerged | InvalidInput,
    strawberry.union("MergeMembersResult", description="Result of mergeMembers."),
]
UnmergeMembersResult = Annotated[
    MembersUnmerged | UnknownMerge | MergeNotReversible,
    strawberry.union("UnmergeMembersResult", description="Result of unmergeMembers."),
]


def _member_id(value: strawberry.ID, field: str) -> int:
    member_id = parse_id(value)
    if member_id is None:
        raise DomainError(ErrorCode.UNKNOWN_MEMBER, f"{value!r} is not a member id", field=field)
    return member_id


async def _bound_member(info: Info, binding: Binding) -> Member:
    row = await get_member(info, member_id=binding.member_id)
    assert row is not None
    return Member.from_row(row)


@strawberry.type(description="Change members, identities and brands.")
class MemberMutation:
    @strawberry.mutation(description="Create a brand (and its group when new) with tiers, entry tier first.")
    @audited("createBrand")
    async def create_brand(
        self,
        info: Info,
        code: Annotated[
            str,
            strawberry.argument(description="Stable code: a lowercase letter, then [a-z0-9_], 2-32 long."),
        ],
        name: Annotated[str, strawberry.argument(description="Display name, 1-100 characters.")],
        group: Annotated[
            str,
            strawberry.argument(description="Code of the owning group; created when new."),
        ],
        group_name: Annotated[
            str | None,
            strawberry.argument(description=f"Display name of a new group (1-{inputs.GROUP_NAME} characters)."),
        ] = None,
        tiers: Annotated[
            list[str] | None,
            strawberry.argument(
                description=f"Tier codes from entry to top, at most {inputs.TIERS}; default silver, gold, platinum, "
                "diamond."
            ),
        ] = None,
    ) -> CreateBrandResult:
        try:
            row = await brands.create_brand(
                info,
                code=code,
                name=name,
                group=group,
                group_name=inputs.text(group_name, "groupName", inputs.GROUP_NAME),
                tiers=inputs.tiers(tiers),
            )
        except DomainError as error:
            return error_result(error)  # type: ignore[no-any-return]
        return BrandCreated(brand=Brand.from_row(row))

    @strawberry.mutation(
        description="Register a member from a channel. An identity already bound resolves to its member; "
        "a phone matching a member of the brand binds to that member; otherwise a prospect is created. "
        "Profile fields fill only what the member has not given before."
    )
    @audited("registerMember")
    async def register_member(
        self,
        info: Info,
        brand: Annotated[str, strawberry.argument(description="Brand code.")],
        channel: Annotated[
            str,
            strawberry.argument(description="Channel code: tmall, jd, douyin, wechat, wecom, pos, mall."),
        ],
        external_id: Annotated[
            str,
            strawberry.argument(description="The channel's own id of the member (1-128 characters)."),
        ],
        phone: Annotated[
            str | None,
            strawberry.argument(description="Mainland mobile number, +86 optional."),
        ] = None,
        display_name: Annotated[str | None, strawberry.argument(description="Name, 1-64 characters.")] = None,
        gender: Annotated[Gender | None, strawberry.argument(description="Gender.")] = None,
        birthday: Annotated[
            dt.date | None,
            strawberry.argument(description="Birthday (not in the future)."),
        ] = None,
        city: Annotated[str | None, strawberry.argument(description="City, 1-64 characters.")] = None,
    ) -> RegisterMemberResult:
        profile = Profile(
            display_name=display_name,
            gender=gender.value if gender else None,
            birthday=birthday,
            city=city,
        )
        try:
            binding = await identities.register_member(
                info,
                brand=brand,
                channel=channel,
                external_id=external_id,
                phone=phone,
                profile=profile,
            )
        except DomainError as error:
            return error_result(error)  # type: ignore[no-any-return]
        return MemberRegistered(
            member=await _bound_member(info, binding),
            outcome=BindingOutcome(binding.outcome),
        )

    @strawberry.mutation(
        description="Attach a channel identity to `memberId`, or, without it, resolve the identity by the "
        "unification rules (existing binding, then phone, then a new prospect)."
    )
    @audited("bindIdentity")
    async def bind_identity(
        self,
        info: Info,
        brand: Annotated[str, strawberry.argument(description="Brand code.")],
        channel: Annotated[str, strawberry.argument(description="Channel code.")],
        external_id: Annotated[
            str, strawberry.argument(description="The channel's own id of the member (1-128 characters).")
        ],
        member_id: Annotated[
            strawberry.ID | None,
            strawberry.argument(description="Member to attach to."),
        ] = None,
        phone: Annotated[
            str | None,
            strawberry.argument(description="Phone to resolve by (not with memberId)."),
        ] = None,
    ) -> BindIdentityResult:
        try:
            binding = await identities.bind(
                info,
                brand=brand,
                channel=channel,
                external_id=external_id,
                member_id=None if member_id is None else _member_id(member_id, "memberId"),
                phone=phone,
            )
        except DomainError as error:
            return error_result(error)  # type: ignore[no-any-return]
        return IdentityBound(
            member=await _bound_member(info, binding),
            outcome=BindingOutcome(binding.outcome),
        )

    @strawberry.mutation(
        description="Merge `mergedId` into `survivorId` (same brand): identities move to the survivor and "
        "empty profile fields are filled from the merged member. Recorded, and reversible with unmergeMembers."
    )
    @audited("mergeMembers")
    async def merge_members(
        self,
        info: Info,
        survivor_id: Annotated[strawberry.ID, strawberry.argument(description="The member that remains.")],
        merged_id: Annotated[strawberry.ID, strawberry.argument(description="The member merged away.")],
        reason: Annotated[
            str,
            strawberry.argument(description="Why, for the audit trail (1-500 characters)."),
        ],
    ) -> MergeMembersResult:
        try:
            row = await merges.merge_members(
                info,
                survivor_id=_member_id(survivor_id, "survivorId"),
                merged_id=_member_id(merged_id, "mergedId"),
                reason=reason,
            )
        except DomainError as error:
            return error_result(error)  # type: ignore[no-any-return]
        return MembersMerged(merge=MemberMerge.from_row(row))

    @strawberry.mutation(
        description="Undo a merge exactly: identities go back and the survivor's columns the merge changed are "
        "restored (unless changed since). Merges undo newest first when a survivor was merged again."
    )
    @audited("unmergeMembers")
    async def unmerge_members(
        self,
        info: Info,
        merge_id: Annotated[strawberry.ID, strawberry.argument(description="The merge to undo.")],
    ) -> UnmergeMembersResult:
        try:
            parsed = parse_id(merge_id)
            if parsed is None:
                raise DomainError(
                    ErrorCode.UNKNOWN_MERGE,
                    f"{merge_id!r} is not a merge id",
                    field="mergeId",
                )
            row = await merges.unmerge_members(info, merge_id=parsed)
        except DomainError as error:
            return error_result(error)  # type: ignore[no-any-return]
        return MembersUnmerged(merge=MemberMerge.from_row(row))

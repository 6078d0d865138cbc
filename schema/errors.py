"""Typed errors: every expected failure is a result type implementing `Error`."""

from __future__ import annotations

from typing import Any

import strawberry

from store.errors import DomainError
from store.errors import ErrorCode as DomainCode

ErrorCode = strawberry.enum(
    DomainCode,
    name="ErrorCode",
    description="Machine-readable reason of an expected failure; stable across releases.",
)


@strawberry.interface(description="An expected failure: nothing was written.")
class Error:
    code: DomainCode = strawberry.field(description="What went wrong, for programs.")
    message: str = strawberry.field(description="What went wrong, for people.")
    field: str | None = strawberry.field(description="The argument at fault, when one is.")


@strawberry.type(description="No brand has this code.")
class UnknownBrand(Error):
    pass


@strawberry.type(description="The channel is not one omnimember knows.")
class UnknownChannel(Error):
    pass


@strawberry.type(description="No member has this id (in this brand).")
class UnknownMember(Error):
    pass


@strawberry.type(description="No merge has this id.")
class UnknownMerge(Error):
    pass


@strawberry.type(description="The phone is not a mainland China mobile number.")
class InvalidPhone(Error):
    pass


@strawberry.type(description="An argument is out of range or malformed.")
class InvalidInput(Error):
    pass


@strawberry.type(description="A brand with this code already exists.")
class DuplicateBrand(Error):
    pass


@strawberry.type(description="A member cannot be merged into itself.")
class SelfMerge(Error):
    pass


@strawberry.type(description="Only members of the same brand can merge.")
class CrossBrandMerge(Error):
    pass


@strawberry.type(description="The merge was already undone, or its survivor has since been merged again.")
class MergeNotReversible(Error):
    pass


@strawberry.type(description="The channel identity is already bound to another member.")
class IdentityAlreadyBound(Error):
    member_id: strawberry.ID = strawberry.field(description="The member the identity is bound to.")


@strawberry.type(description="The member was merged into another; act on the survivor instead.")
class AlreadyMerged(Error):
    survivor_id: strawberry.ID = strawberry.field(description="The member it was merged into.")


_BY_CODE: dict[DomainCode, type[Error]] = {
    DomainCode.UNKNOWN_BRAND: UnknownBrand,
    DomainCode.UNKNOWN_CHANNEL: UnknownChannel,
    DomainCode.UNKNOWN_MEMBER: UnknownMember,
    DomainCode.UNKNOWN_MERGE: UnknownMerge,
    DomainCode.INVALID_PHONE: InvalidPhone,
    DomainCode.INVALID_INPUT: InvalidInput,
    DomainCode.DUPLICATE_BRAND: DuplicateBrand,
    DomainCode.SELF_MERGE: SelfMerge,
    DomainCode.CROSS_BRAND_MERGE: CrossBrandMerge,
    DomainCode.MERGE_NOT_REVERSIBLE: MergeNotReversible,
}


def error_result(error: DomainError) -> Any:
    """The typed result for a domain error."""
    common: dict[str, Any] = {
        "code": error.code,
        "message": error.message,
        "field": error.field,
    }
    if error.code is DomainCode.IDENTITY_ALREADY_BOUND:
        return IdentityAlreadyBound(member_id=strawberry.ID(str(error.member_id)), **common)
    if error.code is DomainCode.ALREADY_MERGED:
        return AlreadyMerged(survivor_id=strawberry.ID(str(error.member_id)), **common)
    return _BY_CODE[error.code](**common)

"""Typed errors: every expected failure is a result type implementing `Error`."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

import strawberry
from graphql import GraphQLError

from resolvers.domain import LISTED, DomainError, TooManyIdsError, UnknownMembersError, UnknownTagError
from resolvers.domain import ErrorCode as DomainCode

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


@strawberry.type(description="The API key may not do this here (outside its scope); nothing was written.")
class NotAllowed(Error):
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


@strawberry.type(description="The same idempotency key was already used for a different request.")
class DuplicateRequest(Error):
    pass


@strawberry.type(description="No points posting has this id (in this brand).")
class UnknownPosting(Error):
    pass


@strawberry.type(description="No order with this channel and external id in this brand.")
class UnknownOrder(Error):
    pass


@strawberry.type(description="The redemption was already cancelled.")
class AlreadyCancelled(Error):
    pass


@strawberry.type(description="Nothing of the order is left to refund.")
class OrderFullyRefunded(Error):
    pass


@strawberry.type(description="The member's balance does not cover the request; nothing was posted.")
class InsufficientPoints(Error):
    available: int = strawberry.field(description="Points the member can spend now.")


@strawberry.type(description="The brand has no tag with this code.")
class UnknownTag(Error):
    suggestion: str | None = strawberry.field(description="The brand's closest tag code, when one is close.")


@strawberry.type(
    description="Not a tag code: it must be one word of the tag language (letters of any script, digits, "
    "'_', '-', '.'; not a keyword), so that `tag:<code>` always parses."
)
class InvalidTagCode(Error):
    pass


@strawberry.type(description="The brand already has a tag with this code.")
class DuplicateTag(Error):
    pass


@strawberry.type(description="Some ids are not live members of the brand; nothing was changed.")
class UnknownMembers(Error):
    unknown_ids: list[strawberry.ID] = strawberry.field(
        description=f"Ids that name no member of the brand, as sent (the first {LISTED})."
    )
    merged_ids: list[strawberry.ID] = strawberry.field(
        description=f"Ids of members merged away (the first {LISTED}): act on their survivors."
    )
    count: int = strawberry.field(description="How many ids are at fault in all.")


@strawberry.type(description="Too many ids in one call: split the list.")
class TooManyIds(Error):
    limit: int = strawberry.field(description="The most ids one call takes.")


_BY_CODE: dict[DomainCode, type[Error]] = {
    DomainCode.INVALID_TAG_CODE: InvalidTagCode,
    DomainCode.DUPLICATE_TAG: DuplicateTag,
    DomainCode.DUPLICATE_REQUEST: DuplicateRequest,
    DomainCode.UNKNOWN_POSTING: UnknownPosting,
    DomainCode.UNKNOWN_ORDER: UnknownOrder,
    DomainCode.ALREADY_CANCELLED: AlreadyCancelled,
    DomainCode.ORDER_FULLY_REFUNDED: OrderFullyRefunded,
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
    DomainCode.NOT_ALLOWED: NotAllowed,
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
    if error.code is DomainCode.INSUFFICIENT_POINTS:
        return InsufficientPoints(available=error.available or 0, **common)
    if error.code is DomainCode.ALREADY_MERGED:
        return AlreadyMerged(survivor_id=strawberry.ID(str(error.member_id)), **common)
    return _tag_error(error, common) or _BY_CODE[error.code](**common)


def _tag_error(error: DomainError, common: dict[str, Any]) -> Error | None:
    if isinstance(error, UnknownTagError):
        return UnknownTag(suggestion=error.suggestion, **common)
    if isinstance(error, UnknownMembersError):
        return UnknownMembers(
            unknown_ids=[strawberry.ID(i) for i in error.unknown[:LISTED]],
            merged_ids=[strawberry.ID(i) for i in error.merged[:LISTED]],
            count=len(error.unknown) + len(error.merged),
            **common,
        )
    if isinstance(error, TooManyIdsError):
        return TooManyIds(limit=error.limit, **common)
    return None


T = TypeVar("T")


async def or_graphql_error(result: Awaitable[T]) -> T:
    """Queries have no result unions: an expected failure becomes a GraphQL error with its code."""
    try:
        return await result
    except DomainError as error:
        raise GraphQLError(error.message, extensions={"code": error.code.value, "field": error.field}) from None

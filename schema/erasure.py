"""Erasure (PIPL's right to deletion): `eraseMember` and its result."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import strawberry

from resolvers import erasure
from resolvers.audit import audited
from resolvers.context import Info
from resolvers.cursors import parse_id
from resolvers.domain import DomainError, ErrorCode
from resolvers.members import get_member
from schema import inputs
from schema.errors import AlreadyMerged, InvalidInput, UnknownBrand, UnknownMember, error_result
from schema.member import Member


@strawberry.type(
    description="The member's personal data is erased (asking again answers the same and changes nothing)."
)
class MemberErased:
    member_id: strawberry.Private[int]
    erased_at: dt.datetime = strawberry.field(description="When the member was erased.")
    erased_member_ids: list[strawberry.ID] = strawberry.field(
        description="The member and the members merged into it (the same person), all erased, ascending."
    )

    @strawberry.field(
        description="The member now: id, tier, points and orders as before; name, birthday, city, phone and "
        "identities gone."
    )
    async def member(self, info: Info) -> Member:
        row = await get_member(info, member_id=self.member_id)
        assert row is not None
        return Member.from_row(row)


EraseMemberResult = Annotated[
    MemberErased | UnknownBrand | UnknownMember | AlreadyMerged | InvalidInput,
    strawberry.union("EraseMemberResult", description="Result of eraseMember."),
]


@strawberry.type(description="Erase members' personal data.")
class ErasureMutation:
    @strawberry.mutation(
        description="Erase a member's personal data (PIPL's right to deletion): name, gender, birthday, city, the "
        "phone's hash, ciphertext and masked form, every channel identity, tag assignments and consents, and the "
        "copies merges kept of them. The member can no longer be found by phone or channel id (registering them "
        "again makes a new member), leaves every audience and snapshot export, and keeps its id, tier, points "
        "journal, balance and orders. Members merged into it are erased with it; a member merged into another "
        "is AlreadyMerged (erase the survivor)."
    )
    @audited("eraseMember")
    async def erase_member(
        self,
        info: Info,
        brand: Annotated[str, strawberry.argument(description="Brand code.")],
        member_id: Annotated[strawberry.ID, strawberry.argument(description="The member to erase.")],
        reason: Annotated[
            str,
            strawberry.argument(
                description=f"Why (the request, its reference; 1-{inputs.REASON} characters), for the audit log. "
                "Never the member's personal data."
            ),
        ],
    ) -> EraseMemberResult:
        try:
            parsed = parse_id(member_id)
            if parsed is None:
                raise DomainError(ErrorCode.UNKNOWN_MEMBER, f"no member {member_id} in this brand", field="memberId")
            done = await erasure.erase_member(info, brand=brand, member_id=parsed, reason=reason)
        except DomainError as error:
            result: Any = error_result(error)
            return result  # type: ignore[no-any-return]
        return MemberErased(
            member_id=done.member_id,
            erased_at=done.erased_at,
            erased_member_ids=[strawberry.ID(str(i)) for i in done.member_ids],
        )

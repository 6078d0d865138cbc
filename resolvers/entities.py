"""Entities a federated supergraph refers to (schema/federation.py): members by id, and the member a
channel identity is bound to. Both read through the request's loaders, so a router's batch of
references costs a statement or two, and scope applies as everywhere: a member or a brand the
caller does not see reads exactly as one that does not exist."""

from __future__ import annotations

from resolvers import cursors, members
from resolvers.context import Info
from store.members.unification import check_channel, check_external_id
from store.sql import Row


def member_id(value: str) -> int | None:
    """The member id a reference names; None when it cannot name one (as `member(id)` reads it)."""
    return cursors.parse_id(value)


def identity_key(channel: str, external_id: str) -> tuple[str, str]:
    """The channel code and external id of a reference, checked as `memberByIdentity` checks them;
    UNKNOWN_CHANNEL or INVALID_INPUT (a DomainError) otherwise."""
    return check_channel(channel), check_external_id(external_id)


async def member_by_id(info: Info, *, member_id: int) -> Row | None:
    return await members.get_member(info, member_id=member_id)


async def member_by_identity(info: Info, *, brand: str, channel: str, external_id: str) -> Row | None:
    """The member the identity is bound to (after merges, the survivor), or None: nothing bound, or
    a brand unknown or outside the caller's scope."""
    found = await info.context.loaders.member_id_by_identity.load((brand, channel, external_id))
    return None if found is None else await members.get_member(info, member_id=found)

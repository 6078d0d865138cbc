"""Registering members and binding channel identities."""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection

from resolvers.context import Info
from store.members.unification import Binding, Profile, bind_identity
from store.transactions import transact


async def register_member(
    info: Info,
    *,
    brand: str,
    channel: str,
    external_id: str,
    phone: str | None,
    profile: Profile,
) -> Binding:
    """Register a channel identity: resolves to an existing member where the rules say so."""
    return await _bind(
        info,
        brand=brand,
        channel=channel,
        external_id=external_id,
        phone=phone,
        profile=profile,
    )


async def bind(
    info: Info,
    *,
    brand: str,
    channel: str,
    external_id: str,
    member_id: int | None,
    phone: str | None,
) -> Binding:
    return await _bind(
        info,
        brand=brand,
        channel=channel,
        external_id=external_id,
        member_id=member_id,
        phone=phone,
    )


async def _bind(info: Info, **arguments: Any) -> Binding:
    vault = info.context.vault
    # The data layer finds the brand by code itself: check first that the caller sees it.
    await info.context.brands.id_of(info.context.pool, arguments["brand"])

    async def work(conn: AsyncConnection[Any]) -> Binding:
        return await bind_identity(conn, vault, **arguments)

    binding = await transact(info.context.pool, work)
    # The binding changed this member: later reads in the request must not see a cached copy.
    info.context.loaders.member_by_id.clear_all()
    info.context.loaders.identities_by_member.clear_all()
    return binding

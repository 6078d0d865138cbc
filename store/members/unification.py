"""Identity unification: bind a channel identity to the right member, atomically.

Rules (design §6): an identity already bound resolves to its member; otherwise a phone whose hash
matches a live member of the same brand binds to that member; otherwise a prospect is created.
Races are settled by the unique constraints on (brand, channel, external id) and (brand, phone
hash): the loser's transaction fails with a unique violation and `transact` runs it again.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from psycopg import AsyncConnection
from sqlalchemy.dialects.postgresql import BYTEA

from store.brands import brand_by_code, entry_tier
from store.errors import DomainError, ErrorCode
from store.members.phones import InvalidPhone, PhoneForms, PhoneVault
from store.members.profiles import member_id_by_identity, member_id_by_phone
from store.sql import Query
from store.tables import CHANNELS, GENDERS, member_identities, members

MAX_EXTERNAL_ID = 128
MAX_TEXT = 64


class Outcome(StrEnum):
    EXISTING = "existing"  # the identity was already bound to this member
    PHONE_MATCH = "phone_match"  # bound to the member whose phone matched
    ATTACHED = "attached"  # bound to the member the caller named
    CREATED = "created"  # a new prospect was created for it


@dataclass(frozen=True, slots=True)
class Profile:
    display_name: str | None = None
    gender: str | None = None
    birthday: dt.date | None = None
    city: str | None = None


@dataclass(frozen=True, slots=True)
class Binding:
    member_id: int
    outcome: Outcome


_PROFILE_PARAMS = {
    "display_name": sa.bindparam("display_name", type_=sa.Text),
    "birthday": sa.bindparam("birthday", type_=sa.Date),
    "city": sa.bindparam("city", type_=sa.Text),
}
_insert_member = Query(
    sa.insert(members)
    .values(
        brand_id=sa.bindparam("brand_id"),
        tier=sa.bindparam("tier"),
        gender=sa.bindparam("gender", type_=sa.Text),
        phone_hash=sa.bindparam("phone_hash", type_=BYTEA),
        phone_encrypted=sa.bindparam("phone_encrypted", type_=BYTEA),
        phone_masked=sa.bindparam("phone_masked", type_=sa.Text),
        **_PROFILE_PARAMS,
    )
    .returning(members.c.id)
)
# Fill only what the member has not told us yet: a registration never overwrites a profile.
_fill_profile = Query(
    sa.update(members)
    .where(members.c.id == sa.bindparam("member_id"))
    .values(
        gender=sa.case(
            (members.c.gender == "unknown", sa.bindparam("gender", type_=sa.Text)),
            else_=members.c.gender,
        ),
        **{name: sa.func.coalesce(members.c[name], param) for name, param in _PROFILE_PARAMS.items()},
    )
)
_insert_identity = Query(
    sa.insert(member_identities).values(
        brand_id=sa.bindparam("brand_id"),
        member_id=sa.bindparam("member_id"),
        channel=sa.bindparam("channel"),
        external_id=sa.bindparam("external_id"),
    )
)
_member_state = Query(
    sa.select(members.c.brand_id, members.c.merged_into, members.c.erased_at).where(
        members.c.id == sa.bindparam("member_id")
    )
)


def check_channel(channel: str) -> str:
    code = channel.strip().lower()
    if code not in CHANNELS:
        raise DomainError(
            ErrorCode.UNKNOWN_CHANNEL,
            f"unknown channel {channel!r}; expected one of {', '.join(CHANNELS)}",
            field="channel",
        )
    return code


def check_external_id(external_id: str) -> str:
    value = external_id.strip()
    if not 1 <= len(value) <= MAX_EXTERNAL_ID:
        raise DomainError(
            ErrorCode.INVALID_INPUT,
            f"externalId must be 1-{MAX_EXTERNAL_ID} characters",
            field="externalId",
        )
    return value


def check_phone(vault: PhoneVault, phone: str) -> PhoneForms:
    try:
        return vault.forms(phone)
    except InvalidPhone as exc:
        raise DomainError(ErrorCode.INVALID_PHONE, str(exc), field="phone") from None


def check_profile(profile: Profile, today: dt.date) -> Profile:
    for name in ("display_name", "city"):
        value = getattr(profile, name)
        if value is not None and not 1 <= len(value.strip()) <= MAX_TEXT:
            field = "displayName" if name == "display_name" else name
            raise DomainError(
                ErrorCode.INVALID_INPUT,
                f"{field} must be 1-{MAX_TEXT} characters",
                field=field,
            )
    if profile.gender is not None and profile.gender not in GENDERS:
        raise DomainError(
            ErrorCode.INVALID_INPUT,
            f"gender must be one of {', '.join(GENDERS)}",
            field="gender",
        )
    if profile.birthday is not None and not dt.date(1900, 1, 1) <= profile.birthday <= today:
        raise DomainError(
            ErrorCode.INVALID_INPUT,
            "birthday must be between 1900-01-01 and today",
            field="birthday",
        )
    return Profile(
        display_name=profile.display_name.strip() if profile.display_name else None,
        gender=profile.gender,
        birthday=profile.birthday,
        city=profile.city.strip() if profile.city else None,
    )


def _profile_params(profile: Profile) -> dict[str, Any]:
    return {
        "display_name": profile.display_name,
        "gender": profile.gender or "unknown",
        "birthday": profile.birthday,
        "city": profile.city,
    }


async def live_member(conn: AsyncConnection[Any], *, brand_id: int, member_id: int, field: str) -> None:
    """Raise unless ``member_id`` is a live (not merged-away, not erased) member of the brand."""
    row = await _member_state.one(conn, member_id=member_id)
    if row is None or row["brand_id"] != brand_id:
        raise DomainError(
            ErrorCode.UNKNOWN_MEMBER,
            f"no member {member_id} in this brand",
            field=field,
        )
    if row["merged_into"] is not None:
        raise DomainError(
            ErrorCode.ALREADY_MERGED,
            f"member {member_id} was merged into member {row['merged_into']}",
            field=field,
            member_id=row["merged_into"],
        )
    if row["erased_at"] is not None:  # binding an identity would name an erased member again
        raise DomainError(ErrorCode.INVALID_INPUT, f"member {member_id} was erased", field=field)


async def bind_identity(
    conn: AsyncConnection[Any],
    vault: PhoneVault,
    *,
    brand: str,
    channel: str,
    external_id: str,
    phone: str | None = None,
    member_id: int | None = None,
    profile: Profile | None = None,
) -> Binding:
    """Bind (brand, channel, external id) to a member following the unification rules.

    With ``member_id`` the identity is attached to that member; otherwise it resolves to its
    current member, to the member with the same phone, or to a new prospect.
    Runs inside the caller's transaction.
    """
    if phone is not None and member_id is not None:
        raise DomainError(ErrorCode.INVALID_INPUT, "give memberId or phone, not both", field="phone")
    brand_row = await brand_by_code(conn, brand)
    brand_id: int = brand_row["id"]
    channel = check_channel(channel)
    external_id = check_external_id(external_id)
    phone_forms = check_phone(vault, phone) if phone is not None else None
    profile = check_profile(profile or Profile(), dt.date.today())

    bound_to = await member_id_by_identity(conn, brand_id=brand_id, channel=channel, external_id=external_id)
    if member_id is not None:
        await live_member(conn, brand_id=brand_id, member_id=member_id, field="memberId")
        if bound_to is not None and bound_to != member_id:
            raise DomainError(
                ErrorCode.IDENTITY_ALREADY_BOUND,
                f"{channel} identity {external_id!r} is already bound to member {bound_to}",
                field="externalId",
                member_id=bound_to,
            )
        outcome = Outcome.EXISTING if bound_to == member_id else Outcome.ATTACHED
        target = member_id
    elif bound_to is not None:
        return Binding(bound_to, Outcome.EXISTING)
    else:
        matched = (
            await member_id_by_phone(conn, brand_id=brand_id, phone_hash=phone_forms.hash) if phone_forms else None
        )
        if matched is not None:
            target, outcome = matched, Outcome.PHONE_MATCH
        else:
            target, outcome = (
                await _create_prospect(conn, brand_id, phone_forms, profile),
                Outcome.CREATED,
            )

    if outcome is not Outcome.EXISTING:
        await _insert_identity.run(
            conn,
            brand_id=brand_id,
            member_id=target,
            channel=channel,
            external_id=external_id,
        )
    if outcome is not Outcome.CREATED and profile != Profile():
        await _fill_profile.run(conn, member_id=target, **_profile_params(profile))
    return Binding(target, outcome)


async def _create_prospect(
    conn: AsyncConnection[Any],
    brand_id: int,
    phone: PhoneForms | None,
    profile: Profile,
) -> int:
    member_id: int = await _insert_member.scalar(
        conn,
        brand_id=brand_id,
        tier=await entry_tier(conn, brand_id),
        phone_hash=phone.hash if phone else None,
        phone_encrypted=phone.encrypted if phone else None,
        phone_masked=phone.masked if phone else None,
        **_profile_params(profile),
    )
    return member_id

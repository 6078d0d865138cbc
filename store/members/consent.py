"""Marketing consent (PIPL): a member's latest decision per brand and touch channel.

One row per (member, channel) in `member_consents`: granted or withdrawn (`granted = false`, kept
with its time and source), `given_at` when the member decided and `source` where it was recorded
(a mini-program page, a store's paper form, a call). The channel `guardian` records a guardian's
consent for a minor (store.audiences.reach). A decision older than the one recorded changes
nothing (a late sync cannot undo a newer withdrawal): the answer says it was superseded.

Only live members of the brand take a consent; another brand's member, a merged-away one and a
missing id all answer UNKNOWN_MEMBER `no member {id} in this brand`. The audience index follows
through the table's triggers (migration 0007), like tags and identities.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from psycopg import AsyncConnection
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert

from store.errors import DomainError, ErrorCode
from store.sql import Query, Row
from store.tables import CONSENT_CHANNELS, member_consents, members

SOURCE_LENGTH = 200
CLOCK_SKEW = dt.timedelta(minutes=5)  # a givenAt this far ahead of our clock is still "now"
_c = member_consents.c
_COLUMNS = (_c.member_id, _c.brand_id, _c.channel, _c.granted, _c.given_at, _c.source, _c.recorded_at)

# The member, locked against a merge until the transaction ends, then the upsert: one statement.
_live = (
    sa.select(
        members.c.id,
        sa.bindparam("channel", type_=sa.Text),
        members.c.brand_id,
        sa.bindparam("granted", type_=sa.Boolean),
        sa.bindparam("given_at", type_=sa.DateTime(timezone=True)),
        sa.bindparam("source", type_=sa.Text),
    )
    .where(
        members.c.id == sa.bindparam("member_id"),
        members.c.brand_id == sa.bindparam("brand_id"),
        members.c.merged_into.is_(None),
    )
    .with_for_update(read=True)
)
_insert = pg_insert(member_consents).from_select(
    ["member_id", "channel", "brand_id", "granted", "given_at", "source"], _live
)
_upsert = Query(
    _insert.on_conflict_do_update(
        index_elements=[_c.member_id, _c.channel],
        set_={
            "granted": _insert.excluded.granted,
            "given_at": _insert.excluded.given_at,
            "source": _insert.excluded.source,
            "recorded_at": sa.func.now(),
        },
        where=_c.given_at <= _insert.excluded.given_at,
    ).returning(*_COLUMNS)
)
_current = Query(
    sa.select(*_COLUMNS)
    .join(members, members.c.id == _c.member_id)
    .where(
        _c.member_id == sa.bindparam("member_id"),
        _c.channel == sa.bindparam("channel"),
        members.c.brand_id == sa.bindparam("brand_id"),
        members.c.merged_into.is_(None),
    )
)
_by_member = Query(
    sa.select(*_COLUMNS)
    .where(_c.member_id == sa.any_(sa.bindparam("ids", type_=ARRAY(sa.BigInteger))))
    .order_by(_c.member_id, _c.channel)
)


@dataclasses.dataclass(frozen=True, slots=True)
class Recorded:
    consent: Row
    """The channel's consent as it stands after the call."""
    superseded: bool
    """A later decision was recorded already: nothing changed."""


def check_consent(channel: str, source: str, given_at: dt.datetime, now: dt.datetime) -> None:
    """INVALID_INPUT naming the argument at fault."""
    if channel not in CONSENT_CHANNELS:
        known = ", ".join(CONSENT_CHANNELS)
        raise DomainError(ErrorCode.INVALID_INPUT, f"channel must be one of {known}, not {channel!r}", field="channel")
    if not source.strip() or len(source) > SOURCE_LENGTH:
        message = f"source must be 1-{SOURCE_LENGTH} characters (where the consent was given)"
        raise DomainError(ErrorCode.INVALID_INPUT, message, field="source")
    if given_at.tzinfo is None:
        raise DomainError(ErrorCode.INVALID_INPUT, "givenAt needs a time zone offset", field="givenAt")
    if given_at > now + CLOCK_SKEW:
        raise DomainError(ErrorCode.INVALID_INPUT, "givenAt is in the future", field="givenAt")


async def set_consent(
    conn: AsyncConnection[Any],
    *,
    brand_id: int,
    member_id: int,
    channel: str,
    granted: bool,
    source: str,
    given_at: dt.datetime | None = None,
) -> Recorded:
    """Record a grant or a withdrawal (default time: now). Run it in a transaction: the member stays
    locked against merges until it ends."""
    now = dt.datetime.now(dt.UTC)
    moment = given_at or now
    check_consent(channel, source, moment, now)
    params = {"brand_id": brand_id, "member_id": member_id, "channel": channel}
    row = await _upsert.one(conn, **params, granted=granted, given_at=moment, source=source)
    if row is not None:
        return Recorded(row, superseded=False)
    current = await _current.one(conn, **params)
    if current is None:
        raise DomainError(ErrorCode.UNKNOWN_MEMBER, f"no member {member_id} in this brand", field="memberId")
    return Recorded(current, superseded=True)


async def consents_by_member(conn: AsyncConnection[Any], member_ids: Sequence[int]) -> list[Row]:
    """Every consent row (withdrawals and the guardian's included) of these members, by member then channel."""
    return await _by_member.all(conn, ids=list(member_ids))

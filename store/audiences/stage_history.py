"""Reading lifecycle stage changes (recorded by store.audiences.lifecycle): a member's history, a
brand's transitions between two stages within a time range, and a member's current stage.

A transition's members are the live members who made it (a member merged away or erased since is
in no audience); counts of changes include every recorded change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from psycopg import AsyncConnection

from store.audiences.index_facts import Ids
from store.sql import Query, Row
from store.tables import lifecycle_stages, member_stage_changes, members
from tagquery.bitmap_keys import CHUNK_BITS, CHUNK_SIZE

if TYPE_CHECKING:
    import numpy as np

_c = member_stage_changes.c
_history = Query(
    sa.select(_c.member_id, _c.from_stage, _c.to_stage, _c.changed_at, _c.cause, _c.rules_version)
    .where(_c.member_id == sa.any_(sa.bindparam("member_ids")))
    .order_by(_c.member_id, _c.changed_at, _c.id)
)


async def stage_histories(conn: AsyncConnection[Any], member_ids: Sequence[int]) -> list[Row]:
    """Every recorded stage change of these members, oldest first per member."""
    return await _history.all(conn, member_ids=list(member_ids))


@dataclasses.dataclass(frozen=True, slots=True)
class Transitions:
    members: Ids
    """The live members who made a matching change, ascending."""
    changes: int
    """Matching changes recorded (a member may have made the same one twice)."""
    pairs: list[tuple[str | None, str | None, int, int]]
    """(from, to, changes, members) for every pair of stages with matching changes, most first."""


def _matching(from_given: bool, to_given: bool) -> sa.ColumnElement[bool]:
    """Changes of `:brand_id` at or after `:since` and before `:until` (and from `:from_stage`, to
    `:to_stage` when given)."""
    conditions = [
        _c.brand_id == sa.bindparam("brand_id"),
        _c.changed_at >= sa.bindparam("since"),
        _c.changed_at < sa.bindparam("until"),
    ]
    if from_given:
        conditions.append(_c.from_stage == sa.bindparam("from_stage"))
    if to_given:
        conditions.append(_c.to_stage == sa.bindparam("to_stage"))
    return sa.and_(*conditions)


_live = sa.exists().where(members.c.id == _c.member_id, members.c.merged_into.is_(None), members.c.erased_at.is_(None))


def _queries(from_given: bool, to_given: bool) -> tuple[Query, Query]:
    where = _matching(from_given, to_given)
    ids = sa.select(sa.func.array_agg(sa.distinct(_c.member_id))).where(where, _live)
    pairs = (
        sa.select(
            _c.from_stage,
            _c.to_stage,
            sa.func.count().label("changes"),
            sa.func.count(sa.distinct(_c.member_id)).label("members"),
        )
        .where(where)
        .group_by(_c.from_stage, _c.to_stage)
    )
    return Query(ids), Query(pairs)


_QUERIES = {(f, t): _queries(f, t) for f in (False, True) for t in (False, True)}


async def transitions(
    conn: AsyncConnection[Any],
    brand_id: int,
    *,
    from_stage: str | None,
    to_stage: str | None,
    since: datetime,
    until: datetime,
) -> Transitions:
    """Changes from `from_stage` to `to_stage` (None: any, including none: a member that became or
    stopped being live) at or after `since` and before `until`."""
    import numpy as np  # lazily: a count needs none (issue 16)

    ids_q, pairs_q = _QUERIES[from_stage is not None, to_stage is not None]
    params: dict[str, Any] = {"brand_id": brand_id, "since": since, "until": until}
    params |= {name: value for name, value in (("from_stage", from_stage), ("to_stage", to_stage)) if value}
    found = await ids_q.scalar(conn, **params)
    pairs = [(r["from_stage"], r["to_stage"], r["changes"], r["members"]) for r in await pairs_q.all(conn, **params)]
    pairs.sort(key=lambda pair: (-pair[2], pair[0] or "", pair[1] or ""))
    ids = np.sort(np.array(found or [], dtype=np.int64))
    return Transitions(ids, sum(pair[2] for pair in pairs), pairs)


_s = lifecycle_stages.c
_m = members.c
_current = Query(
    sa.select(_m.id.label("member_id"), _m.brand_id, _s.stage)
    .join(
        lifecycle_stages,
        sa.and_(
            _s.brand_id == _m.brand_id,
            _s.chunk == sa.cast(_m.id.op(">>")(sa.literal(CHUNK_BITS, sa.Integer)), sa.Integer),
            sa.func.get_bit(_s.bits, sa.cast(_m.id.op("&")(CHUNK_SIZE - 1), sa.Integer)) == 1,
        ),
    )
    .where(_m.id == sa.any_(sa.bindparam("member_ids")))
)


async def current_stages(conn: AsyncConnection[Any], member_ids: Sequence[int]) -> list[Row]:
    """(member_id, brand_id, stage) of these members' kept stages: none for a member not live, or of
    a brand whose stages were never computed."""
    return await _current.all(conn, member_ids=list(member_ids))


def intersect(ids: Ids, audience: np.ndarray[Any, np.dtype[np.int64]]) -> Ids:
    """The sorted members of both sorted id arrays."""
    import numpy as np  # lazily: a count needs none (issue 16)

    both: Ids = np.intersect1d(ids, audience, assume_unique=True)
    return both

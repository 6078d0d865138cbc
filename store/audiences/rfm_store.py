"""A brand's RFM thresholds in the database (store.audiences.rfm says what they mean).

One statement computes the quintiles over the brand's live buyers with `percentile_disc` and
replaces the brand's row. The server's lifecycle pass recomputes them once a brand day (and
`omnimember refresh` every time); a brand without a row gets one on first use (`current`).
"""

from __future__ import annotations

import dataclasses
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.dialects.postgresql import insert

from store.audiences.facts import DEFAULT_TIMEZONE, brand_timezone, live_members, local_date
from store.audiences.rfm import NO_THRESHOLDS, RfmThresholds
from store.audiences.schedule import each_due
from store.brands import for_each_brand
from store.sql import Query
from store.tables import brand_rules, members, rfm_thresholds

QUANTILES = (0.2, 0.4, 0.6, 0.8)
_t = rfm_thresholds.c


@dataclasses.dataclass(frozen=True, slots=True)
class StoredThresholds:
    thresholds: RfmThresholds
    day: date | None
    """The brand day recency was measured on (None: never computed)."""
    buyers: int
    computed_at: datetime | None


NEVER = StoredThresholds(NO_THRESHOLDS, None, 0, None)

_m = members.alias("m")
_tz = brand_timezone()
_day = sa.func.coalesce(sa.bindparam("today", type_=sa.Date), sa.cast(sa.func.timezone(_tz, sa.func.now()), sa.Date))
_quantiles = sa.literal(list(QUANTILES), sa.ARRAY(sa.Float))


def _percentiles(value: sa.ColumnElement[Any], empty: Any) -> sa.ColumnElement[Any]:
    """The four quintile bounds of `value` over the live buyers (four `empty`s with none)."""
    bounds = sa.func.percentile_disc(_quantiles).within_group(value)
    return sa.func.coalesce(bounds, sa.literal([empty] * 4, sa.ARRAY(value.type)))


_buyers = (
    sa.select(
        sa.bindparam("brand_id", type_=sa.BigInteger).label("brand_id"),
        _day.label("day"),
        sa.cast(sa.func.count(), sa.Integer).label("buyers"),
        _percentiles(sa.cast(_day - local_date(_m.c.last_purchase_at, _tz), sa.Integer), 0).label("recency_days"),
        _percentiles(_m.c.order_count, 0).label("frequency"),
        _percentiles(_m.c.total_spend, Decimal(0)).label("monetary"),
    )
    .where(live_members(_m), _m.c.last_purchase_at.is_not(None))
    .subquery()
)
_upsert = insert(rfm_thresholds).from_select(
    ["brand_id", "day", "buyers", "recency_days", "frequency", "monetary"], sa.select(_buyers)
)
_replace = _upsert.on_conflict_do_update(
    index_elements=[_t.brand_id],
    set_={
        "day": _upsert.excluded.day,
        "buyers": _upsert.excluded.buyers,
        "recency_days": _upsert.excluded.recency_days,
        "frequency": _upsert.excluded.frequency,
        "monetary": _upsert.excluded.monetary,
        "computed_at": sa.func.now(),
    },
).returning(_t.day, _t.buyers, _t.recency_days, _t.frequency, _t.monetary, _t.computed_at)
_recompute = Query(_replace)
_stored = Query(
    sa.select(_t.day, _t.buyers, _t.recency_days, _t.frequency, _t.monetary, _t.computed_at).where(
        _t.brand_id == sa.bindparam("brand_id")
    )
)


def _from_row(row: dict[str, Any]) -> StoredThresholds:
    def four(values: list[Any]) -> Any:
        return tuple(values)

    thresholds = RfmThresholds(
        recency_days=four(row["recency_days"]),
        frequency=four(row["frequency"]),
        monetary=four([Decimal(v) for v in row["monetary"]]),
    )
    return StoredThresholds(thresholds, row["day"], row["buyers"], row["computed_at"])


async def recompute(conn: AsyncConnection[Any], brand_id: int, today: date | None = None) -> StoredThresholds:
    """The quintiles over the brand's live buyers now (recency as of `today`, default the brand's
    day), stored in place of the previous ones."""
    row = await _recompute.one(conn, brand_id=brand_id, today=today)
    assert row is not None
    return _from_row(row)


async def stored(conn: AsyncConnection[Any], brand_id: int) -> StoredThresholds:
    row = await _stored.one(conn, brand_id=brand_id)
    return NEVER if row is None else _from_row(row)


async def current(conn: AsyncConnection[Any], brand_id: int) -> StoredThresholds:
    """The stored thresholds, computed first if the brand has none yet."""
    found = await stored(conn, brand_id)
    return found if found.day is not None else await recompute(conn, brand_id)


# Brands whose thresholds were measured on an earlier day than their own today.
_zone = sa.func.coalesce(
    sa.select(brand_rules.c.timezone).where(brand_rules.c.brand_id == _t.brand_id).scalar_subquery(),
    DEFAULT_TIMEZONE,
)
_due = Query(sa.select(_t.brand_id).where(_t.day < sa.cast(sa.func.timezone(_zone, sa.func.now()), sa.Date)))


async def recompute_due(pool: AsyncConnectionPool[Any]) -> list[int]:
    """The server's daily pass (run with the lifecycle pass): every brand whose thresholds are from
    an earlier brand day is recomputed. The ids of those brands."""

    async def recomputed(conn: AsyncConnection[Any], brand_id: int) -> int:
        await recompute(conn, brand_id)
        return brand_id

    return await each_due(pool, _due, recomputed)


async def refresh(url: str, brand: str | None) -> list[tuple[str, StoredThresholds]]:
    """`omnimember refresh`: recompute one brand's (by code) or every brand's thresholds now."""
    return await for_each_brand(url, brand, lambda conn, row: recompute(conn, row["id"]))

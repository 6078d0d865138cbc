"""A brand's tag-language catalog and index encoding, read from the database and cached.

Names and values come from the system of record (tag definitions, tiers, the channel list, the
brand's lifecycle rules and RFM thresholds) and, for cities, from the index keys (a DISTINCT over tens of millions of
members would cost a scan; the index lists a brand's cities in one short range). A cached entry
lives `ttl` seconds: a tag defined (or lifecycle rules set) a moment ago is seen within that time
(or at once after `invalidate`).
"""

from __future__ import annotations

import dataclasses
import time
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from psycopg import AsyncConnection

from store.audiences.bitmaps import stored_widths
from store.audiences.deltas import IndexState, Readiness, readiness
from store.audiences.facts import DEFAULT_RULES, STAGES, LifecycleRules, brand_timezone
from store.audiences.lifecycle_rules import current_rules
from store.audiences.rfm import CELLS, NO_THRESHOLDS, RfmThresholds
from store.audiences.rfm_store import current as current_rfm
from store.sql import Query
from store.tables import CHANNELS, CONSENT_CHANNELS, GENDERS, audience_bitmaps, brand_tiers, tag_definitions
from tagquery import Catalog, member_catalog
from tagquery.bitmap_keys import UNIVERSE, bought_field, category_order_field, has_key
from tagquery.compile_bitmap import Encoding

STATUSES = ("prospect", "member")
_CITY = "city:"

_tags = Query(
    sa.select(tag_definitions.c.code, tag_definitions.c.name)
    .where(tag_definitions.c.brand_id == sa.bindparam("brand_id"))
    .order_by(tag_definitions.c.code)
)
_tiers = Query(
    sa.select(brand_tiers.c.code).where(brand_tiers.c.brand_id == sa.bindparam("brand_id")).order_by(brand_tiers.c.rank)
)


def _named(prefix: str) -> Query:
    """The distinct names after `prefix` in the brand's index keys (one short range of its rows)."""
    return Query(
        sa.select(sa.func.substr(audience_bitmaps.c.key, len(prefix) + 1).label("name"))
        .distinct()
        .where(
            audience_bitmaps.c.brand_id == sa.bindparam("brand_id"),
            audience_bitmaps.c.key >= prefix,
            audience_bitmaps.c.key < prefix[:-1] + chr(ord(prefix[-1]) + 1),
        )
    )


_cities = _named(_CITY)
# Products (categories and skus) and categories members bought: purchase behaviour's values.
_products = _named(has_key(bought_field("")))
_categories = _named(has_key(category_order_field("", 1)))
_timezone = Query(sa.select(brand_timezone()))
_chunks = Query(
    sa.select(
        sa.func.min(audience_bitmaps.c.chunk).label("first"), sa.func.max(audience_bitmaps.c.chunk).label("last")
    ).where(audience_bitmaps.c.brand_id == sa.bindparam("brand_id"), audience_bitmaps.c.key == UNIVERSE)
)


READY = Readiness(IndexState.READY, 0)


@dataclasses.dataclass(frozen=True, slots=True)
class BrandCatalog:
    """Everything needed to bind and compile a brand's queries."""

    brand_id: int
    timezone: str
    catalog: Catalog
    encoding: Encoding
    chunks: tuple[int, int] = (0, 0)
    """The first and last chunk of the brand's universe when loaded (new members may add more)."""
    index: Readiness = READY
    """Whether the index could answer when the catalog was loaded."""
    lifecycle: LifecycleRules = DEFAULT_RULES
    """The brand's current lifecycle rules: what `lifecycle:<stage>` means (facts.expand_derived)."""
    lifecycle_version: int = 0
    rfm: RfmThresholds = NO_THRESHOLDS
    """The brand's RFM quintile bounds: what `rfm_r >= 4` and `rfm:champions` mean (store.audiences.rfm)."""

    def today(self, now: datetime | None = None) -> date:
        """The brand's calendar day (its time zone) at `now` (default: now)."""
        zone = ZoneInfo(self.timezone)
        return (now or datetime.now(zone)).astimezone(zone).date()


async def load_catalog(conn: AsyncConnection[Any], brand_id: int) -> BrandCatalog:
    tags = {row["code"]: row["name"] for row in await _tags.all(conn, brand_id=brand_id)}
    catalog = member_catalog(
        tags=tags,
        tiers=[row["code"] for row in await _tiers.all(conn, brand_id=brand_id)],
        channels=CHANNELS,
        cities=[row["name"] for row in await _cities.all(conn, brand_id=brand_id)],
        statuses=STATUSES,
        genders=GENDERS,
        lifecycles=STAGES,
        consents=CONSENT_CHANNELS,
        rfm_cells=CELLS,
        products=[row["name"] for row in await _products.all(conn, brand_id=brand_id)],
        categories=[row["name"] for row in await _categories.all(conn, brand_id=brand_id)],
        stage_history=True,  # store.audiences.lifecycle records every change of stage: `entered:`
    )
    timezone: str = await _timezone.scalar(conn, brand_id=brand_id)
    encoding = Encoding(dict(await stored_widths(conn, brand_id)))
    span = await _chunks.one(conn, brand_id=brand_id)
    chunks = (0, 0) if span is None or span["first"] is None else (span["first"], span["last"])
    index = await readiness(conn, brand_id)
    rules = await current_rules(conn, brand_id)
    thresholds = (await current_rfm(conn, brand_id)).thresholds
    return BrandCatalog(brand_id, timezone, catalog, encoding, chunks, index, rules.rules, rules.version, thresholds)


class CatalogCache:
    """Per-process cache of BrandCatalog by brand id, each entry kept `ttl` seconds."""

    def __init__(self, ttl: float = 5.0) -> None:
        self.ttl = ttl
        self._entries: dict[int, tuple[float, BrandCatalog]] = {}

    async def get(self, conn: AsyncConnection[Any], brand_id: int) -> BrandCatalog:
        entry = self._entries.get(brand_id)
        if entry is not None and time.monotonic() - entry[0] < self.ttl:
            return entry[1]
        loaded = await load_catalog(conn, brand_id)
        self._entries[brand_id] = (time.monotonic(), loaded)
        return loaded

    def invalidate(self, brand_id: int | None = None) -> None:
        if brand_id is None:
            self._entries.clear()
        else:
            self._entries.pop(brand_id, None)

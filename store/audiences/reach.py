"""Reach: the members of an audience a campaign may contact on one touch channel (PIPL).

For a touch channel t (store.tables.TOUCH_CHANNELS: sms, ai_call, wecom, mini_program, email) and
an audience A, from the bitmap index:

    excluded_no_consent   A AND NOT consent:t
    excluded_minor        A AND consent:t AND minor AND NOT consent:guardian
    count                 A AND consent:t AND NOT (minor AND NOT consent:guardian)

`minor` is `age < MINOR_AGE` on the brand's day in its time zone, exactly as `age` in expressions
(whole years since the birthday; a member turning 14 today is not a minor; a member without a
birthday is not one either: nothing says so). A minor without consent for t counts as no consent,
so the three numbers add up to the audience. Nothing is stored for minors: like `age`, they are
computed from the birthday slices when asked, so they are right on the day the query runs.

`reach` answers the count API (`Audience.reach`); `for_touch` filters ids already in hand (an
ad-hoc or a saved audience's export) by the same rule, against the index as it is now.
"""

from __future__ import annotations

import dataclasses
from datetime import date
from typing import TYPE_CHECKING, Any, TypeAlias

import sqlalchemy as sa
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from store.audiences.catalogs import BrandCatalog
from store.audiences.engine import decode_chunks, run_pivot
from store.audiences.facts import expand_derived
from store.audiences.selections import catalog_cache, select
from store.errors import DomainError, ErrorCode
from store.sql import Row
from store.tables import GUARDIAN, TOUCH_CHANNELS, audience_bitmaps
from tagquery.ast import Dimension, Op
from tagquery.bound import Bound, BoundAnd, BoundNot, FieldCompare, Membership
from tagquery.catalog import FieldType
from tagquery.compile_bitmap import BitmapCompiler, Bits, bitand, bitnot

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

MINOR_AGE = 14  # PIPL: personal information of a child under 14 needs a guardian's consent
CONSENT = "consent"
Ids: TypeAlias = "npt.NDArray[np.int64]"

MINOR_WITHOUT_GUARDIAN: Bound = BoundAnd(
    (
        FieldCompare("age", FieldType.INTEGER, Op.LT, MINOR_AGE),
        BoundNot(Membership(CONSENT, (GUARDIAN,), multi=True)),
    )
)


def consented(touch: str) -> Bound:
    return Membership(CONSENT, (touch,), multi=True)


@dataclasses.dataclass(frozen=True, slots=True)
class Reach:
    touch: str
    count: int
    """Members that may be contacted on the channel."""
    excluded_no_consent: int
    excluded_minor: int
    """Members with consent for the channel left out as minors without a guardian's consent."""

    def headers(self) -> dict[str, str]:
        """What an export for the channel says about the members it left out."""
        return {
            "x-touch-channel": self.touch,
            "x-excluded-no-consent": str(self.excluded_no_consent),
            "x-excluded-minor": str(self.excluded_minor),
        }


def check_touch(touch: str | None, field: str = "touch") -> str | None:
    """A touch channel (or None); INVALID_INPUT naming `field` for anything else."""
    if touch is None or touch in TOUCH_CHANNELS:
        return touch
    known = ", ".join(TOUCH_CHANNELS)
    raise DomainError(ErrorCode.INVALID_INPUT, f"{field} must be one of {known}, not {touch!r}", field=field)


def _count(bits: Bits) -> sa.ColumnElement[int]:
    return sa.func.coalesce(sa.func.sum(sa.func.bit_count(bits)), 0)


async def reach(conn: AsyncConnection[Any], brand: BrandCatalog, node: Bound, today: date, touch: str) -> Reach:
    """The audience's reach on `touch`, in one statement over the index."""
    audience = expand_derived(node, brand.lifecycle, brand.rfm)

    def statement(compiler: BitmapCompiler) -> sa.Select[Any]:
        columns = {
            "a": compiler.bitmap(audience),
            "c": compiler.bitmap(consented(touch)),
            "m": compiler.bitmap(MINOR_WITHOUT_GUARDIAN),
        }
        p = compiler.pivot.select(audience_bitmaps, columns).subquery()
        reached = bitand(p.c.a, p.c.c)
        counts: list[sa.ColumnElement[Any]] = [
            _count(bitand(p.c.a, bitnot(p.c.c))).label("no_consent"),
            _count(bitand(reached, p.c.m)).label("minor"),
            _count(bitand(reached, bitnot(p.c.m))).label("n"),
        ]
        return sa.select(*counts)

    row = await run_pivot(conn, brand, today, ("reach", node, touch), statement)
    return Reach(touch, int(row["n"]), int(row["no_consent"]), int(row["minor"]))


async def unreachable(conn: AsyncConnection[Any], brand: BrandCatalog, today: date, touch: str) -> tuple[Ids, Ids]:
    """The brand's members with a granted consent for `touch`, and its minors without a guardian's
    consent, ascending (decoded from the index's chunks, as engine.member_ids does)."""

    def statement(compiler: BitmapCompiler) -> sa.Select[Any]:
        columns = {"c": compiler.bitmap(consented(touch)), "m": compiler.bitmap(MINOR_WITHOUT_GUARDIAN)}
        p = compiler.pivot.select(audience_bitmaps, columns).subquery()
        chunk = sa.func.int4send(p.c.chunk)
        empty: sa.ColumnElement[bytes] = sa.literal_column("''::bytea")
        records: list[sa.ColumnElement[Any]] = [
            sa.func.string_agg(chunk.op("||")(sa.func.varbit_send(p.c[name])), empty).label(name) for name in "cm"
        ]
        return sa.select(*records)

    row = await run_pivot(conn, brand, today, ("touch", touch), statement)
    return decode_chunks(row["c"]), decode_chunks(row["m"])


def split(ids: Ids, consenting: Ids, minors: Ids, touch: str) -> tuple[Ids, Reach]:
    """`ids` less those without consent and the minors without a guardian's consent, and the counts."""
    import numpy as np  # lazily: a count needs none (issue 16)

    has_consent = np.isin(ids, consenting, assume_unique=True)
    minor = has_consent & np.isin(ids, minors, assume_unique=True)
    kept = ids[has_consent & ~minor]
    return kept, Reach(touch, int(kept.size), int(ids.size - has_consent.sum()), int(minor.sum()))


async def for_touch(
    pool: AsyncConnectionPool[Any], brand: Row, ids: Ids, touch: str | None
) -> tuple[Ids, Reach | None]:
    """The export's ids for a touch channel (all of them, and no Reach, without one). The brand's
    index must be ready, as for any audience read (IndexNotReadyError otherwise)."""
    if touch is None:
        return ids, None
    async with pool.connection() as conn:
        chosen = await select(conn, catalog_cache(pool), brand, Dimension(CONSENT, touch), source=None, field="touch")
        consenting, minors = await unreachable(conn, chosen.brand, chosen.today, touch)
    return split(ids, consenting, minors, touch)

"""Groups, brands and their tiers."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import sqlalchemy as sa
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, insert

from store.errors import DomainError, ErrorCode
from store.sql import Query, Row
from store.tables import DEFAULT_TIERS, audience_index_state, brand_rules, brand_tiers, brands, groups
from store.urls import libpq_url
from tagquery.bitmap_keys import ENCODING_STATE, ENCODING_VERSION

_CODE_RULE = "2-32 characters: a lowercase letter, then lowercase letters, digits or _"

BRAND_COLUMNS = (
    brands.c.id,
    brands.c.code,
    brands.c.name,
    brands.c.group_id,
    brands.c.created_at,
)

_all_brands = Query(sa.select(*BRAND_COLUMNS).order_by(brands.c.id))
_brands_by_id = Query(
    sa.select(*BRAND_COLUMNS).where(brands.c.id == sa.any_(sa.bindparam("ids", type_=ARRAY(sa.BigInteger))))
)
_brand_by_code = Query(sa.select(*BRAND_COLUMNS).where(brands.c.code == sa.bindparam("code")))
_groups_by_id = Query(
    sa.select(groups.c.id, groups.c.code, groups.c.name).where(
        groups.c.id == sa.any_(sa.bindparam("ids", type_=ARRAY(sa.BigInteger)))
    )
)
_tiers_by_brand = Query(
    sa.select(
        brand_tiers.c.brand_id,
        brand_tiers.c.code,
        brand_tiers.c.name,
        brand_tiers.c.rank,
    )
    .where(brand_tiers.c.brand_id == sa.any_(sa.bindparam("ids", type_=ARRAY(sa.BigInteger))))
    .order_by(brand_tiers.c.brand_id, brand_tiers.c.rank)
)
_upsert_group = Query(
    insert(groups)
    .values(code=sa.bindparam("code"), name=sa.bindparam("name"))
    .on_conflict_do_update(index_elements=[groups.c.code], set_={"code": sa.bindparam("code")})
    .returning(groups.c.id)
)
# The state a build of a brand without members leaves (store.audiences.bitmaps.rebuild): built now,
# no slices yet, and the bands version its band keys will follow.
_empty_index = Query(
    insert(audience_index_state).values(
        brand_id=sa.bindparam("brand_id"),
        built_at=sa.func.now(),
        widths=sa.cast(sa.literal(json.dumps({ENCODING_STATE: ENCODING_VERSION})), JSONB),
    )
)
_insert_brand = Query(
    insert(brands)
    .values(
        code=sa.bindparam("code"),
        name=sa.bindparam("name"),
        group_id=sa.bindparam("group_id"),
    )
    .on_conflict_do_nothing(index_elements=[brands.c.code])
    .returning(*BRAND_COLUMNS)
)
_insert_tier = Query(
    sa.insert(brand_tiers).values(
        brand_id=sa.bindparam("brand_id"),
        code=sa.bindparam("code"),
        name=sa.bindparam("name"),
        rank=sa.bindparam("rank"),
        threshold=sa.bindparam("threshold"),
    )
)
_insert_rules = Query(sa.insert(brand_rules).values(brand_id=sa.bindparam("brand_id")))
# Default qualifying growth per tier step (MINISO-like 0 / 3000 / 6000 ...).
TIER_STEP = 3000
_entry_tier = Query(
    sa.select(brand_tiers.c.code)
    .where(brand_tiers.c.brand_id == sa.bindparam("brand_id"))
    .order_by(brand_tiers.c.rank)
    .limit(1)
)


_CODE = re.compile(r"[a-z][a-z0-9_]{1,31}")
_TIER_CODE = re.compile(r"[a-z][a-z0-9_]{0,31}")


async def list_brands(conn: AsyncConnection[Any]) -> list[Row]:
    return await _all_brands.all(conn)


async def brands_by_id(conn: AsyncConnection[Any], ids: Sequence[int]) -> list[Row]:
    return await _brands_by_id.all(conn, ids=list(ids))


_group_by_code = Query(sa.select(groups.c.id).where(groups.c.code == sa.bindparam("code")))


async def group_id(conn: AsyncConnection[Any], code: str) -> int | None:
    found: int | None = await _group_by_code.scalar(conn, code=code)
    return found


async def groups_by_id(conn: AsyncConnection[Any], ids: Sequence[int]) -> list[Row]:
    return await _groups_by_id.all(conn, ids=list(ids))


async def tiers_by_brand(conn: AsyncConnection[Any], ids: Sequence[int]) -> list[Row]:
    return await _tiers_by_brand.all(conn, ids=list(ids))


def unknown_brand(code: str) -> DomainError:
    """The one answer for a brand that does not exist and for one outside the caller's scope."""
    return DomainError(ErrorCode.UNKNOWN_BRAND, f"no brand with code {code!r}", field="brand")


async def brand_by_code(conn: AsyncConnection[Any], code: str) -> Row:
    """The brand with this code; raises UNKNOWN_BRAND."""
    row = await _brand_by_code.one(conn, code=code)
    if row is None:
        raise unknown_brand(code)
    return row


async def entry_tier(conn: AsyncConnection[Any], brand_id: int) -> str:
    """The lowest tier of a brand: where every new member starts."""
    code: str = await _entry_tier.scalar(conn, brand_id=brand_id)
    return code


async def create_brand(
    conn: AsyncConnection[Any],
    *,
    code: str,
    name: str,
    group_code: str,
    group_name: str | None = None,
    tiers: Sequence[str] = DEFAULT_TIERS,
) -> Row:
    """Create a brand (and its group when new) with tiers in ascending order."""
    for field, value in (("code", code), ("group", group_code)):
        if not _CODE.fullmatch(value):
            raise DomainError(
                ErrorCode.INVALID_INPUT,
                f"{field} {value!r} is not valid: {_CODE_RULE}",
                field=field,
            )
    if not name.strip() or len(name) > 100:
        raise DomainError(ErrorCode.INVALID_INPUT, "name must be 1-100 characters", field="name")
    if not tiers or len(set(tiers)) != len(tiers) or not all(_TIER_CODE.fullmatch(t) for t in tiers):
        raise DomainError(
            ErrorCode.INVALID_INPUT,
            f"tiers must be distinct codes: {_CODE_RULE}",
            field="tiers",
        )
    group_id = await _upsert_group.scalar(conn, code=group_code, name=group_name or group_code)
    brand = await _insert_brand.one(conn, code=code, name=name.strip(), group_id=group_id)
    if brand is None:
        raise DomainError(
            ErrorCode.DUPLICATE_BRAND,
            f"a brand with code {code!r} already exists",
            field="code",
        )
    for rank, tier in enumerate(tiers):
        await _insert_tier.run(
            conn, brand_id=brand["id"], code=tier, name=tier.capitalize(), rank=rank, threshold=rank * TIER_STEP
        )
    await _insert_rules.run(conn, brand_id=brand["id"])
    # A brand without members has a complete (empty) audience index: counts are right from the start.
    await _empty_index.run(conn, brand_id=brand["id"])
    return brand


class BrandDirectory:
    """Brands, their groups and tiers, cached per process: hot reads never ask the database twice.

    A brand's code, id and group never change; names and tiers change only through migrations
    today (a process restart picks them up). Only rows that exist are cached, so unknown codes and
    ids cannot grow it.
    """

    def __init__(self) -> None:
        self._by_code: dict[str, Row] = {}
        self._by_id: dict[int, Row] = {}
        self._groups: dict[int, Row] = {}
        self._tiers: dict[int, list[Row]] = {}

    async def get(self, conn: AsyncConnection[Any], code: str) -> Row:
        """The brand with this code; raises UNKNOWN_BRAND."""
        row = self._by_code.get(code)
        if row is None:
            row = self._remember(await brand_by_code(conn, code))
        return row

    async def id_of(self, pool: AsyncConnectionPool[Any], code: str) -> int:
        """The brand id for ``code``, touching the database only the first time; raises UNKNOWN_BRAND."""
        row = self._by_code.get(code)
        if row is None:
            async with pool.connection() as conn:
                row = await self.get(conn, code)
        brand_id: int = row["id"]
        return brand_id

    async def brands(self, pool: AsyncConnectionPool[Any], ids: Sequence[int]) -> list[Row]:
        missing = [i for i in ids if i not in self._by_id]
        if missing:
            async with pool.connection() as conn:
                for row in await brands_by_id(conn, missing):
                    self._remember(row)
        return [self._by_id[i] for i in ids if i in self._by_id]

    async def groups(self, pool: AsyncConnectionPool[Any], ids: Sequence[int]) -> list[Row]:
        missing = [i for i in ids if i not in self._groups]
        if missing:
            async with pool.connection() as conn:
                self._groups |= {row["id"]: row for row in await groups_by_id(conn, missing)}
        return [self._groups[i] for i in ids if i in self._groups]

    async def tiers(self, pool: AsyncConnectionPool[Any], brand_ids: Sequence[int]) -> list[Row]:
        missing = [i for i in brand_ids if i not in self._tiers]
        if missing:
            async with pool.connection() as conn:
                rows = await tiers_by_brand(conn, missing)
            for brand_id in missing:
                self._tiers[brand_id] = [row for row in rows if row["brand_id"] == brand_id]
        return [row for i in brand_ids for row in self._tiers.get(i, [])]

    def _remember(self, row: Row) -> Row:
        self._by_code[row["code"]] = self._by_id[row["id"]] = row
        return row


class ScopedBrands:
    """The directory as one caller sees it: brands outside ``brand_ids`` (None: every brand) do not
    exist, with the same error and the same silence as brands that do not. Every read that names
    a brand by code goes through one of these (resolvers.context), so scope is checked in one place.
    """

    __slots__ = ("_directory", "brand_ids")

    def __init__(self, directory: BrandDirectory, brand_ids: frozenset[int] | None) -> None:
        self._directory = directory
        self.brand_ids = brand_ids

    def sees(self, brand_id: int) -> bool:
        return self.brand_ids is None or brand_id in self.brand_ids

    async def get(self, conn: AsyncConnection[Any], code: str) -> Row:
        row = await self._directory.get(conn, code)
        if not self.sees(row["id"]):
            raise unknown_brand(code)
        return row

    async def id_of(self, pool: AsyncConnectionPool[Any], code: str) -> int:
        brand_id = await self._directory.id_of(pool, code)
        if not self.sees(brand_id):
            raise unknown_brand(code)
        return brand_id

    async def brands(self, pool: AsyncConnectionPool[Any], ids: Sequence[int]) -> list[Row]:
        return await self._directory.brands(pool, [i for i in ids if self.sees(i)])

    async def groups(self, pool: AsyncConnectionPool[Any], ids: Sequence[int]) -> list[Row]:
        return await self._directory.groups(pool, ids)

    async def tiers(self, pool: AsyncConnectionPool[Any], brand_ids: Sequence[int]) -> list[Row]:
        return await self._directory.tiers(pool, [i for i in brand_ids if self.sees(i)])


Done = TypeVar("Done")


async def for_each_brand(
    url: str, brand: str | None, work: Callable[[AsyncConnection[Any], Row], Awaitable[Done]]
) -> list[tuple[str, Done]]:
    """`work` for one brand (by code) or for every brand, in turn on one autocommit connection
    (`omnimember refresh`'s parts): (brand code, what it returned) for each."""
    done: list[tuple[str, Done]] = []
    async with await AsyncConnection.connect(libpq_url(url), autocommit=True) as conn:
        chosen = [await brand_by_code(conn, brand)] if brand is not None else await list_brands(conn)
        for row in chosen:
            done.append((row["code"], await work(conn, row)))
    return done

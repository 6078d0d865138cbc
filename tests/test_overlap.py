"""channelOverlap and brandOverlap against counts computed directly in SQL.

One group of three brands: members in no channel, one or several; members sharing phones across
the brands (and some sharing none); merged-away members (they keep identities and phones, and
count nowhere) and erased ones; ids on both sides of a chunk boundary and, for the first brand, a
span of chunks wide enough for the count to run in two halves. The expected numbers come from
member_identities and members with plain SQL, never from the index.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import random
from typing import Any

import pytest
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from resolvers.overlap import brand_overlap as resolve_brand_overlap
from store.access.roles import Role
from store.audiences import overlap
from store.audiences.catalogs import BrandCatalog, load_catalog
from store.audiences.deltas import apply_brand
from store.audiences.engine import SPLIT_CHUNKS
from store.brands import brand_by_code
from store.errors import DomainError, ErrorCode
from store.sql import counted_statements
from store.tables import CHANNELS, DEFAULT_TIERS
from tagquery import bind, parse
from tests.audience_seed import reference_ids
from tests.conftest import GraphQL, make_context, new_brand, new_key, principal, unique_code

CHUNK = 1 << 16
SEED = 20260515
PERSONS = 120  # phones shared out among the brands' members


@dataclasses.dataclass(frozen=True)
class Seeded:
    group: str
    codes: list[str]
    brand_ids: list[int]


def _layout(base: int) -> list[list[int]]:
    """Member ids per brand: the first across a chunk boundary and 35 chunks further on (so its
    count is split in two), the others each across a boundary of their own."""
    first = [*range(base * CHUNK - 60, base * CHUNK + 60), *range((base + 35) * CHUNK, (base + 35) * CHUNK + 25)]
    second = list(range((base + 40) * CHUNK - 40, (base + 40) * CHUNK + 40))
    third = list(range((base + 45) * CHUNK - 30, (base + 45) * CHUNK + 30))
    return [first, second, third]


def _phone(person: int) -> bytes:
    return hashlib.sha256(f"overlap-person-{person}".encode()).digest()


async def _insert_brand(conn: AsyncConnection[Any], brand_id: int, ids: list[int], rng: random.Random) -> None:
    holders = rng.sample(range(PERSONS), int(len(ids) * 0.8))  # distinct within the brand
    phones = dict(zip(rng.sample(ids, len(holders)), holders, strict=True))
    for member_id in ids:
        person = phones.get(member_id)
        phone = None if person is None else _phone(person)
        await conn.execute(
            "INSERT INTO members (id, brand_id, tier, points_balance, phone_hash, phone_encrypted, phone_masked)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (member_id, brand_id, rng.choice(DEFAULT_TIERS), rng.randrange(100), phone, phone, phone and "138****0000"),
        )
        for channel in rng.sample(CHANNELS, rng.choice([0, 1, 1, 2, 3, 4])):
            await conn.execute(
                "INSERT INTO member_identities (brand_id, member_id, channel, external_id) VALUES (%s, %s, %s, %s)",
                (brand_id, member_id, channel, f"{channel}-{member_id}"),
            )
    # Merged away: about one in ten, into another member; they keep their identities and phone.
    merged = rng.sample(ids, len(ids) // 10)
    survivors = [i for i in ids if i not in merged]
    for member_id in merged:
        await conn.execute(
            "UPDATE members SET merged_into = %s, merged_at = now() WHERE id = %s", (rng.choice(survivors), member_id)
        )
    # Erased: a few of the survivors (no personal data left, identities kept).
    for member_id in rng.sample(survivors, 4):
        await conn.execute(
            "UPDATE members SET erased_at = now(), phone_hash = NULL, phone_encrypted = NULL, phone_masked = NULL"
            " WHERE id = %s",
            (member_id,),
        )


@pytest.fixture(scope="module")
async def seeded(pool: AsyncConnectionPool[Any]) -> Seeded:
    group = unique_code("g")
    codes = [await new_brand(pool, group) for _ in range(3)]
    rng = random.Random(SEED)
    async with pool.connection() as conn, conn.transaction():
        brand_ids = [(await brand_by_code(conn, code))["id"] for code in codes]
        row = await (await conn.execute("SELECT nextval(pg_get_serial_sequence('members', 'id'))")).fetchone()
        assert row is not None
        layout = _layout((int(row[0]) >> 16) + 2)  # chunks no member has yet
        # Explicit ids: move the sequence past them so members created later never collide.
        await conn.execute("SELECT setval(pg_get_serial_sequence('members', 'id'), %s)", (max(layout[-1]),))
        for brand_id, ids in zip(brand_ids, layout, strict=True):
            await _insert_brand(conn, brand_id, ids, rng)
    async with pool.connection() as conn:
        for brand_id in brand_ids:
            await apply_brand(conn, brand_id, wait=True)
    return Seeded(group, codes, brand_ids)


async def _catalog(pool: AsyncConnectionPool[Any], brand_id: int) -> BrandCatalog:
    async with pool.connection() as conn:
        return await load_catalog(conn, brand_id)


# --- the expected numbers, straight from the system of record ---------------------------------------

_LIVE_CHANNELS = """
WITH live AS (
  SELECT id FROM members
  WHERE brand_id = %(brand)s AND merged_into IS NULL AND erased_at IS NULL
    AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
), held AS (
  SELECT DISTINCT i.member_id, i.channel FROM member_identities i JOIN live ON live.id = i.member_id
), per_member AS (SELECT member_id, count(*) AS n FROM held GROUP BY member_id)
"""


async def _rows(conn: AsyncConnection[Any], sql: str, **params: Any) -> list[tuple[Any, ...]]:
    return await (await conn.execute(sql, params)).fetchall()


async def _with(conn: AsyncConnection[Any], cte: str, select: str, **params: Any) -> list[tuple[Any, ...]]:
    """`select` after the constant `cte` (every value a parameter)."""
    return await _rows(conn, cte + select, **params)


async def expected_channels(
    pool: AsyncConnectionPool[Any], brand_id: int, ids: list[int] | None = None
) -> overlap.ChannelOverlap:
    params = {"brand": brand_id, "ids": ids}
    async with pool.connection() as conn:
        [(total,)] = await _with(conn, _LIVE_CHANNELS, "SELECT count(*) FROM live", **params)
        [(any_, multi)] = await _with(
            conn, _LIVE_CHANNELS, "SELECT count(*), count(*) FILTER (WHERE n >= 2) FROM per_member", **params
        )
        counts = dict(await _with(conn, _LIVE_CHANNELS, "SELECT channel, count(*) FROM held GROUP BY 1", **params))
        only = dict(
            await _with(
                conn,
                _LIVE_CHANNELS,
                "SELECT h.channel, count(*) FROM held h JOIN per_member p USING (member_id) WHERE p.n = 1 GROUP BY 1",
                **params,
            )
        )
        both = {
            (a, b): n
            for a, b, n in await _with(
                conn,
                _LIVE_CHANNELS,
                "SELECT a.channel, b.channel, count(*) FROM held a"
                " JOIN held b ON a.member_id = b.member_id AND a.channel <> b.channel GROUP BY 1, 2",
                **params,
            )
        }
    return overlap.ChannelOverlap(
        total=total,
        with_channel=any_,
        multi_channel=multi,
        channels=[overlap.Part(c, counts.get(c, 0), only.get(c, 0)) for c in CHANNELS],
        pairs=[
            overlap.Pair(a, b, counts.get(a, 0), counts.get(b, 0), both.get((a, b), 0))
            for a, b in itertools.combinations(CHANNELS, 2)
        ],
    )


_LIVE_PHONES = """
WITH live AS (
  SELECT id, brand_id, phone_hash FROM members
  WHERE brand_id = ANY(%(brands)s::bigint[]) AND merged_into IS NULL AND erased_at IS NULL
)
"""


async def expected_brands(pool: AsyncConnectionPool[Any], seeded: Seeded) -> overlap.BrandOverlap:
    ids = seeded.brand_ids
    async with pool.connection() as conn:
        counts = dict(await _with(conn, _LIVE_PHONES, "SELECT brand_id, count(*) FROM live GROUP BY 1", brands=ids))
        only = dict(
            await _with(
                conn,
                _LIVE_PHONES,
                "SELECT m.brand_id, count(*) FROM live m WHERE m.phone_hash IS NULL OR NOT EXISTS"
                " (SELECT 1 FROM live o WHERE o.phone_hash = m.phone_hash AND o.brand_id <> m.brand_id) GROUP BY 1",
                brands=ids,
            )
        )
        both = {
            (a, b): n
            for a, b, n in await _with(
                conn,
                _LIVE_PHONES,
                "SELECT a.brand_id, b.brand_id, count(*) FROM live a"
                " JOIN live b ON a.phone_hash = b.phone_hash AND a.brand_id <> b.brand_id GROUP BY 1, 2",
                brands=ids,
            )
        }
        [(persons,)] = await _with(
            conn,
            _LIVE_PHONES,
            "SELECT count(*) FILTER (WHERE phone_hash IS NULL) + count(DISTINCT phone_hash) FROM live",
            brands=ids,
        )
        [(multi,)] = await _with(
            conn,
            _LIVE_PHONES,
            "SELECT count(*) FROM (SELECT phone_hash FROM live WHERE phone_hash IS NOT NULL"
            " GROUP BY phone_hash HAVING count(DISTINCT brand_id) >= 2) p",
            brands=ids,
        )
    codes = dict(zip(ids, seeded.codes, strict=True))
    return overlap.BrandOverlap(
        brand_ids=ids,
        brands=[overlap.Part(codes[i], counts.get(i, 0), only.get(i, 0)) for i in ids],
        pairs=[
            overlap.Pair(codes[a], codes[b], counts.get(a, 0), counts.get(b, 0), both.get((a, b), 0))
            for a, b in itertools.combinations(ids, 2)
        ],
        persons=persons,
        multi_brand=multi,
    )


# --- channels -------------------------------------------------------------------------------------------


async def test_the_data_has_what_the_tests_rely_on(pool: AsyncConnectionPool[Any], seeded: Seeded) -> None:
    first = await _catalog(pool, seeded.brand_ids[0])
    assert first.chunks[1] - first.chunks[0] + 1 >= SPLIT_CHUNKS  # counted in two halves
    async with pool.connection() as conn:
        [(no_channel, merged_with_identity, erased_with_identity)] = await _rows(
            conn,
            "SELECT count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM member_identities i WHERE i.member_id = m.id)"
            "   AND m.merged_into IS NULL AND m.erased_at IS NULL),"
            " count(*) FILTER (WHERE m.merged_into IS NOT NULL"
            "   AND EXISTS (SELECT 1 FROM member_identities i WHERE i.member_id = m.id)),"
            " count(*) FILTER (WHERE m.erased_at IS NOT NULL"
            "   AND EXISTS (SELECT 1 FROM member_identities i WHERE i.member_id = m.id))"
            " FROM members m WHERE m.brand_id = ANY(%(brands)s)",
            brands=seeded.brand_ids,
        )
    assert no_channel > 0
    assert merged_with_identity > 0
    assert erased_with_identity > 0
    found = await expected_channels(pool, seeded.brand_ids[0])
    assert 0 < found.multi_channel < found.with_channel < found.total


@pytest.mark.parametrize("which", [0, 1, 2])
async def test_channel_counts_equal_sql_over_identities(
    pool: AsyncConnectionPool[Any], seeded: Seeded, which: int
) -> None:
    brand = await _catalog(pool, seeded.brand_ids[which])
    expected = await expected_channels(pool, brand.brand_id)
    async with pool.connection() as conn:
        alone = await overlap.channel_overlap(conn, brand, None, brand.today())
        halves = await overlap.channel_overlap(conn, brand, None, brand.today(), pool=pool)
    assert alone == expected
    assert halves == expected


@pytest.mark.parametrize(
    "expression",
    ["tier IN (gold, platinum) OR points >= 50", "channel:tmall OR (tier:silver AND NOT channel:jd)", "points > 1000"],
)
async def test_channel_counts_within_an_audience_equal_sql(
    pool: AsyncConnectionPool[Any], seeded: Seeded, expression: str
) -> None:
    brand = await _catalog(pool, seeded.brand_ids[0])
    audience = await reference_ids(pool, brand.brand_id, expression)
    expected = await expected_channels(pool, brand.brand_id, audience)
    assert expected.total == len(audience)
    bound = bind(parse(expression), brand.catalog)
    async with pool.connection() as conn:
        found = await overlap.channel_overlap(conn, brand, bound, brand.today(), pool=pool)
    assert found == expected


def test_rates() -> None:
    pair = overlap.Pair("tmall", "jd", count_a=30, count_b=10, both=5)
    assert (pair.rate, pair.share_of_a, pair.share_of_b) == (5 / 35, 5 / 30, 5 / 10)
    empty = overlap.Pair("tmall", "jd", 0, 0, 0)
    assert (empty.rate, empty.share_of_a, empty.share_of_b) == (None, None, None)


# --- brands ---------------------------------------------------------------------------------------------


async def test_brand_counts_equal_sql_over_members_and_phones(pool: AsyncConnectionPool[Any], seeded: Seeded) -> None:
    expected = await expected_brands(pool, seeded)
    assert expected.multi_brand > 0
    assert all(p.both > 0 for p in expected.pairs)
    catalogs = [await _catalog(pool, brand_id) for brand_id in seeded.brand_ids]
    async with pool.connection() as conn:
        found = await overlap.brand_overlap(conn, catalogs, seeded.codes)
    assert found == expected


async def test_a_person_in_all_three_brands_counts_once(pool: AsyncConnectionPool[Any], seeded: Seeded) -> None:
    """persons = members - (each person's members beyond its first): the three-brand persons exist."""
    async with pool.connection() as conn:
        [(three,)] = await _with(
            conn,
            _LIVE_PHONES,
            "SELECT count(*) FROM (SELECT phone_hash FROM live WHERE phone_hash IS NOT NULL"
            " GROUP BY phone_hash HAVING count(*) = 3) p",
            brands=seeded.brand_ids,
        )
    assert three > 0


async def test_a_group_of_one_brand_has_no_pairs(pool: AsyncConnectionPool[Any]) -> None:
    code = await new_brand(pool)
    async with pool.connection() as conn:
        brand = await load_catalog(conn, (await brand_by_code(conn, code))["id"])
        found = await overlap.brand_overlap(conn, [brand], [code])
    assert found == overlap.BrandOverlap([brand.brand_id], [overlap.Part(code, 0, 0)], [], 0, 0)


# --- through GraphQL, and who may ask -------------------------------------------------------------------

CHANNEL_OVERLAP = """
query ($b: String!, $e: String) {
  channelOverlap(brand: $b, expression: $e) {
    expression total withChannel multiChannel multiChannelRate
    channels { channel count exclusive share }
    pairs { a b countA countB both rate shareOfA shareOfB }
    freshness { asOf pending state }
  }
}"""
BRAND_OVERLAP = """
query ($g: String!) {
  brandOverlap(group: $g) {
    group { code } persons multiBrand multiBrandRate
    brands { brand { code } count exclusive }
    pairs { a { code } b { code } countA countB both rate shareOfA shareOfB }
  }
}"""


async def test_channel_overlap_through_graphql(gql: GraphQL, pool: AsyncConnectionPool[Any], seeded: Seeded) -> None:
    expected = await expected_channels(pool, seeded.brand_ids[0])
    found = (await gql(CHANNEL_OVERLAP, b=seeded.codes[0]))["channelOverlap"]
    assert (found["expression"], found["total"], found["multiChannel"]) == (
        None,
        expected.total,
        expected.multi_channel,
    )
    assert found["multiChannelRate"] == expected.multi_channel / expected.total
    assert [c["count"] for c in found["channels"]] == [p.count for p in expected.channels]
    assert [c["channel"] for c in found["channels"]] == [c.upper() for c in CHANNELS]
    assert len(found["pairs"]) == 21
    for pair, want in zip(found["pairs"], expected.pairs, strict=True):
        assert (pair["a"], pair["b"], pair["both"]) == (want.a.upper(), want.b.upper(), want.both)
        assert (pair["rate"], pair["shareOfA"], pair["shareOfB"]) == (want.rate, want.share_of_a, want.share_of_b)
    assert found["freshness"]["state"] == "READY"
    within = (await gql(CHANNEL_OVERLAP, b=seeded.codes[0], e="tier:gold"))["channelOverlap"]
    assert within["expression"] == "tier:gold"
    assert within["total"] == len(await reference_ids(pool, seeded.brand_ids[0], "tier:gold"))


async def test_brand_overlap_through_graphql(gql: GraphQL, pool: AsyncConnectionPool[Any], seeded: Seeded) -> None:
    expected = await expected_brands(pool, seeded)
    found = (await gql(BRAND_OVERLAP, g=seeded.group))["brandOverlap"]
    assert found["group"]["code"] == seeded.group
    assert (found["persons"], found["multiBrand"]) == (expected.persons, expected.multi_brand)
    assert [(b["brand"]["code"], b["count"], b["exclusive"]) for b in found["brands"]] == [
        (p.name, p.count, p.exclusive) for p in expected.brands
    ]
    assert [(p["a"]["code"], p["b"]["code"], p["both"], p["rate"]) for p in found["pairs"]] == [
        (p.a, p.b, p.both, p.rate) for p in expected.pairs
    ]


@pytest.mark.parametrize(
    ("variables", "code"),
    [
        ({"e": "channel:taobao"}, "INVALID_EXPRESSION"),
        ({"e": "tier:gold AND ("}, "INVALID_EXPRESSION"),
    ],
)
async def test_bad_expressions(gql: GraphQL, seeded: Seeded, variables: dict[str, str], code: str) -> None:
    body = await gql.raw(CHANNEL_OVERLAP, b=seeded.codes[0], **variables)
    assert body["data"] is None
    assert body["errors"][0]["extensions"]["code"] == code


async def test_expression_and_filter_together_are_refused(gql: GraphQL, seeded: Seeded) -> None:
    query = """query ($b: String!) {
      channelOverlap(brand: $b, expression: "tier:gold", filter: {tag: "x"}) { total }
    }"""
    body = await gql.raw(query, b=seeded.codes[0])
    assert (body["errors"][0]["extensions"]["code"], body["errors"][0]["extensions"]["field"]) == (
        "INVALID_INPUT",
        "expression",
    )


async def test_brand_overlap_needs_the_whole_group_in_scope(
    gql: GraphQL, database_url: str, seeded: Seeded, pool: AsyncConnectionPool[Any]
) -> None:
    one_brand = GraphQL(gql.http, await new_key(database_url, Role.CAMPAIGN, brand_codes=[seeded.codes[0]]))
    refused = await one_brand.raw(BRAND_OVERLAP, g=seeded.group)
    assert refused["data"] is None
    assert (refused["errors"][0]["extensions"]["code"], refused["errors"][0]["extensions"]["field"]) == (
        "NOT_ALLOWED",
        "group",
    )
    # Its own brand's channels it may read; another brand of the group does not exist for it.
    assert (await one_brand(CHANNEL_OVERLAP, b=seeded.codes[0]))["channelOverlap"]["total"] > 0
    hidden = await one_brand.raw(CHANNEL_OVERLAP, b=seeded.codes[1])
    assert hidden["errors"][0]["extensions"]["code"] == "UNKNOWN_BRAND"
    whole = GraphQL(gql.http, await new_key(database_url, Role.CAMPAIGN, group_codes=[seeded.group]))
    assert (await whole(BRAND_OVERLAP, g=seeded.group))["brandOverlap"] == (await gql(BRAND_OVERLAP, g=seeded.group))[
        "brandOverlap"
    ]


async def test_a_group_out_of_scope_reads_as_one_that_does_not_exist(
    gql: GraphQL, database_url: str, seeded: Seeded, pool: AsyncConnectionPool[Any]
) -> None:
    elsewhere = GraphQL(gql.http, await new_key(database_url, Role.CAMPAIGN, brand_codes=[await new_brand(pool)]))
    outside = await elsewhere.raw(BRAND_OVERLAP, g=seeded.group)
    missing = await elsewhere.raw(BRAND_OVERLAP, g="no_such_group")
    assert outside["errors"][0]["extensions"] == {"code": "UNKNOWN_GROUP", "field": "group"}
    assert json.dumps(outside).replace(seeded.group, "G") == json.dumps(missing).replace("no_such_group", "G")


async def test_roles_without_audiences_may_not_ask(gql: GraphQL, database_url: str, seeded: Seeded) -> None:
    partner = GraphQL(gql.http, await new_key(database_url, Role.PARTNER, all_brands=True))
    for document, variables in ((BRAND_OVERLAP, {"g": seeded.group}), (CHANNEL_OVERLAP, {"b": seeded.codes[0]})):
        body = await partner.raw(document, **variables)
        assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"


async def test_the_resolver_refuses_a_partial_scope_before_reading_anything(
    pool: AsyncConnectionPool[Any], seeded: Seeded
) -> None:
    caller = dataclasses.replace(principal(Role.CAMPAIGN), brand_ids=frozenset(seeded.brand_ids[:2]))
    info: Any = type("Info", (), {"context": make_context(pool, caller)})()
    with pytest.raises(DomainError) as raised:
        await resolve_brand_overlap(info, group=seeded.group)
    assert raised.value.code is ErrorCode.NOT_ALLOWED


async def test_statements_do_not_grow_with_brands_or_pairs(gql: GraphQL, seeded: Seeded) -> None:
    """N+1 guard: with the catalogs cached, one statement for the channels (one per half), five for
    the brands (the group, its brands, their counts, the shared persons, the group's row), whatever
    the selection."""
    document = """query ($g: String!) {
      brandOverlap(group: $g) {
        pairs { a { code group { code } } b { code name } both } brands { brand { code } count }
      }
    }"""

    async def statements(query: str, **variables: str) -> int:
        with counted_statements() as counted:
            await gql(query, **variables)
        return counted.value

    await gql(document, g=seeded.group)  # loads and caches the brands' catalogs
    assert await statements(document, g=seeded.group) == 5
    await gql(CHANNEL_OVERLAP, b=seeded.codes[0])
    channels = "query ($b: String!) { channelOverlap(brand: $b) { total pairs { both } } }"
    assert await statements(channels, b=seeded.codes[0]) == 2  # the first brand spans 32+ chunks: two halves

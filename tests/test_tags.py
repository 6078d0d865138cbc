"""The tag catalog and tag assignments: defineTag, tagMembers, untagMembers, tags, Member.tags, expiry."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from store.members import merges
from store.sql import counted_statements
from store.tags import assignments as tags
from store.tags.catalog import definition
from tagquery import parse
from tagquery.ast import And, Not, Tag
from tests.conftest import TEST_SECRET, GraphQL, new_brand
from tests.server import OMNIMEMBER

ERROR = "... on Error { __typename code message field }"
DEFINE = f"""
mutation($brand: String!, $code: String!, $name: String!, $category: TagCategory!, $ttlDays: Int) {{
  defineTag(brand: $brand, code: $code, name: $name, category: $category, ttlDays: $ttlDays) {{
    __typename
    ... on TagDefined {{ tag {{ id code name category ttlDays createdAt memberCount }} }}
    {ERROR}
  }}
}}
"""
TAG = f"""
mutation($brand: String!, $tag: String!, $ids: [ID!]!, $expiresAt: DateTime) {{
  tagMembers(brand: $brand, tag: $tag, memberIds: $ids, expiresAt: $expiresAt) {{
    __typename
    ... on MembersTagged {{ tagged added expiresAt tag {{ code memberCount }} }}
    ... on UnknownTag {{ suggestion }}
    ... on UnknownMembers {{ unknownIds mergedIds count }}
    ... on TooManyIds {{ limit }}
    {ERROR}
  }}
}}
"""
UNTAG = f"""
mutation($brand: String!, $tag: String!, $ids: [ID!]!) {{
  untagMembers(brand: $brand, tag: $tag, memberIds: $ids) {{
    __typename
    ... on MembersUntagged {{ removed tag {{ code memberCount }} }}
    ... on UnknownTag {{ suggestion }}
    ... on UnknownMembers {{ unknownIds mergedIds count }}
    ... on TooManyIds {{ limit }}
    {ERROR}
  }}
}}
"""
CATALOG = """
query($brand: String!, $category: TagCategory) {
  tags(brand: $brand, category: $category) { code name category ttlDays memberCount }
}
"""
MEMBER_TAGS = "query($id: ID!) { member(id: $id) { tags { code name category source assignedAt expiresAt } } }"


async def define(gql: GraphQL, brand: str, code: str, **extra: Any) -> dict[str, Any]:
    variables = {"name": f"Tag {code}", "category": "BEHAVIOR"} | extra
    result: dict[str, Any] = (await gql(DEFINE, brand=brand, code=code, **variables))["defineTag"]
    return result


async def tag(gql: GraphQL, brand: str, code: str, ids: list[Any], **extra: Any) -> dict[str, Any]:
    result: dict[str, Any] = (await gql(TAG, brand=brand, tag=code, ids=[str(i) for i in ids], **extra))["tagMembers"]
    return result


async def untag(gql: GraphQL, brand: str, code: str, ids: list[Any]) -> dict[str, Any]:
    result: dict[str, Any] = (await gql(UNTAG, brand=brand, tag=code, ids=[str(i) for i in ids]))["untagMembers"]
    return result


async def member_tags(gql: GraphQL, member_id: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = (await gql(MEMBER_TAGS, id=str(member_id)))["member"]["tags"]
    return found


async def catalog(gql: GraphQL, brand: str, category: str | None = None) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = (await gql(CATALOG, brand=brand, category=category))["tags"]
    return found


async def new_members(pool: AsyncConnectionPool[Any], brand: str, count: int) -> list[int]:
    """Prospects inserted directly: tests of large calls need many members fast."""
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "INSERT INTO members (brand_id, tier) SELECT b.id, 'silver' FROM brands b, generate_series(1, %s)"
            " WHERE b.code = %s RETURNING id",
            (count, brand),
        )
        return sorted(row[0] for row in await cursor.fetchall())


async def execute(pool: AsyncConnectionPool[Any], query: str, *params: Any) -> list[tuple[Any, ...]]:
    async with pool.connection() as conn:
        cursor = await conn.execute(query, params)
        return await cursor.fetchall() if cursor.description else []


async def expire(pool: AsyncConnectionPool[Any], code: str, member_ids: list[int]) -> None:
    """Backdate assignments to expired (the API refuses an expiry in the past)."""
    await execute(
        pool,
        "UPDATE member_tags SET expires_at = now() - interval '1 minute'"
        " WHERE member_id = ANY(%s) AND tag_id IN (SELECT id FROM tag_definitions WHERE code = %s)",
        member_ids,
        code,
    )


# --- the catalog ----------------------------------------------------------------------------------------


async def test_defined_tags_are_listed_by_category_and_code(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    made = await define(gql, brand, "price_sensitive", name="价格敏感", category="BEHAVIOR")
    assert made["__typename"] == "TagDefined"
    assert made["tag"] | {"id": None, "createdAt": None} == {
        "id": None,
        "code": "price_sensitive",
        "name": "价格敏感",
        "category": "BEHAVIOR",
        "ttlDays": None,
        "createdAt": None,
        "memberCount": 0,
    }
    await define(gql, brand, "laba_2026", name="腊八礼盒抽奖", category="CAMPAIGN", ttlDays=30)
    await define(gql, brand, "coupon_hunter", name="优惠券猎手", category="BEHAVIOR")
    assert [(t["code"], t["category"], t["ttlDays"]) for t in await catalog(gql, brand)] == [
        ("coupon_hunter", "BEHAVIOR", None),
        ("price_sensitive", "BEHAVIOR", None),
        ("laba_2026", "CAMPAIGN", 30),
    ]
    assert [t["code"] for t in await catalog(gql, brand, "CAMPAIGN")] == ["laba_2026"]
    assert await catalog(gql, brand, "RFM") == []
    assert await catalog(gql, await new_brand(pool)) == []


@pytest.mark.parametrize("code", ["高价值客户", "618_buyer", "vip.gold", "rfm-r5", "a"])
async def test_codes_are_words_of_the_tag_language(gql: GraphQL, brand: str, code: str) -> None:
    made = await define(gql, brand, code)
    assert made["__typename"] == "TagDefined"
    assert parse(f"tag:{code} AND NOT tag:{code}") == And((Tag(code), Not(Tag(code))))


@pytest.mark.parametrize(
    "code", ["", "two words", "a:b", "(x)", "a,b", "and", "NOT", "tag", "Within", "x" * 65, '引号"', "tab\t"]
)
async def test_codes_the_language_cannot_name_are_refused(gql: GraphQL, brand: str, code: str) -> None:
    refused = await define(gql, brand, code)
    assert (refused["__typename"], refused["code"], refused["field"]) == ("InvalidTagCode", "INVALID_TAG_CODE", "code")
    assert await catalog(gql, brand) == []


async def test_define_errors_are_typed(gql: GraphQL, brand: str) -> None:
    await define(gql, brand, "churn_risk")
    duplicate = await define(gql, brand, "churn_risk", name="another name")
    assert (duplicate["__typename"], duplicate["code"], duplicate["field"]) == ("DuplicateTag", "DUPLICATE_TAG", "code")
    unknown = await define(gql, "no_such_brand", "x")
    assert (unknown["__typename"], unknown["field"]) == ("UnknownBrand", "brand")
    assert (await define(gql, brand, "y", name="  "))["field"] == "name"
    assert (await define(gql, brand, "y", name="名" * 101))["field"] == "name"
    assert (await define(gql, brand, "y", ttlDays=0))["field"] == "ttlDays"
    assert (await define(gql, brand, "y", ttlDays=36_501))["code"] == "INVALID_INPUT"
    assert [t["code"] for t in await catalog(gql, brand)] == ["churn_risk"]


async def test_the_same_code_in_two_brands_is_two_tags(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    other = await new_brand(pool)
    assert (await define(gql, brand, "vip"))["__typename"] == "TagDefined"
    assert (await define(gql, other, "vip"))["__typename"] == "TagDefined"


async def test_the_catalog_of_an_unknown_brand_is_a_coded_error(gql: GraphQL) -> None:
    body = await gql.raw(CATALOG, brand="nope")
    assert body["errors"][0]["extensions"]["code"] == "UNKNOWN_BRAND"


# --- assignments ----------------------------------------------------------------------------------------


async def test_tagging_shows_on_members_and_in_counts(gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]) -> None:
    a, b, c = await new_members(pool, brand, 3)
    await define(gql, brand, "tea_lover", name="爱喝茶", category="SURVEY")
    await define(gql, brand, "app_user", name="小程序用户", category="CHANNEL")

    done = await tag(gql, brand, "tea_lover", [a, b, a])  # repeats count once
    assert done == {
        "__typename": "MembersTagged",
        "tagged": 2,
        "added": 2,
        "expiresAt": None,
        "tag": {"code": "tea_lover", "memberCount": 2},
    }
    await tag(gql, brand, "app_user", [a])
    [first, second] = await member_tags(gql, a)
    assert (first["code"], first["name"], first["category"], first["source"]) == (
        "app_user",
        "小程序用户",
        "CHANNEL",
        "manual",
    )
    assert (second["code"], second["category"], second["expiresAt"]) == ("tea_lover", "SURVEY", None)
    assert await member_tags(gql, c) == []
    assert [(t["code"], t["memberCount"]) for t in await catalog(gql, brand)] == [("app_user", 1), ("tea_lover", 2)]


async def test_tagging_again_refreshes_the_assignment(gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]) -> None:
    a, b = await new_members(pool, brand, 2)
    await define(gql, brand, "coupon_user")
    await tag(gql, brand, "coupon_user", [a])
    [before] = await member_tags(gql, a)
    await execute(pool, "UPDATE member_tags SET source = 'import' WHERE member_id = %s", a)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=3)

    again = await tag(gql, brand, "coupon_user", [a, b], expiresAt=later.isoformat())
    assert (again["tagged"], again["added"], again["tag"]["memberCount"]) == (2, 1, 2)
    [after] = await member_tags(gql, a)
    assert after["source"] == "manual"
    assert dt.datetime.fromisoformat(after["assignedAt"]) > dt.datetime.fromisoformat(before["assignedAt"])
    assert dt.datetime.fromisoformat(after["expiresAt"]) == later
    assert await execute(pool, "SELECT count(*) FROM member_tags WHERE member_id = %s", a) == [(1,)]


async def test_a_tag_with_a_ttl_expires_assignments_by_default(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    [a] = await new_members(pool, brand, 1)
    await define(gql, brand, "double11", category="CAMPAIGN", ttlDays=7)
    before = dt.datetime.now(dt.UTC)
    done = await tag(gql, brand, "double11", [a])
    expires = dt.datetime.fromisoformat(done["expiresAt"])
    assert before + dt.timedelta(days=7) - dt.timedelta(seconds=5) < expires < before + dt.timedelta(days=7, seconds=5)
    [assigned] = await member_tags(gql, a)
    assert dt.datetime.fromisoformat(assigned["expiresAt"]) == expires
    # An explicit expiry wins over the TTL.
    sooner = before + dt.timedelta(hours=2)
    assert (
        dt.datetime.fromisoformat((await tag(gql, brand, "double11", [a], expiresAt=sooner.isoformat()))["expiresAt"])
        == sooner
    )


async def test_expired_assignments_are_gone_everywhere(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    a, b, c = await new_members(pool, brand, 3)
    await define(gql, brand, "night_owl")
    await tag(gql, brand, "night_owl", [a, b, c])
    await expire(pool, "night_owl", [a, b])

    assert await member_tags(gql, a) == []
    assert [t["code"] for t in await member_tags(gql, c)] == ["night_owl"]
    assert (await catalog(gql, brand))[0]["memberCount"] == 1
    # Untagging an expired assignment removes nobody; tagging again adds the member anew.
    assert (await untag(gql, brand, "night_owl", [a]))["removed"] == 0
    again = await tag(gql, brand, "night_owl", [b])
    assert (again["tagged"], again["added"], again["tag"]["memberCount"]) == (1, 1, 2)


async def test_the_sweep_deletes_expired_assignments_once(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    a, b = await new_members(pool, brand, 2)
    await define(gql, brand, "flash_sale", ttlDays=1)
    await tag(gql, brand, "flash_sale", [a, b])
    await expire(pool, "flash_sale", [a])
    assignments = "SELECT member_id FROM member_tags WHERE member_id = ANY(%s) ORDER BY member_id"

    async with pool.connection() as conn:
        swept = await tags.sweep_expired(conn, as_of=dt.datetime.now(dt.UTC))
        assert swept >= 1  # other tests' expired rows may go too
        assert await execute(pool, assignments, [a, b]) == [(b,)]
        assert await tags.sweep_expired(conn, as_of=dt.datetime.now(dt.UTC)) == 0
        # As of tomorrow, b's assignment has expired too.
        assert await tags.sweep_expired(conn, as_of=dt.datetime.now(dt.UTC) + dt.timedelta(days=2)) >= 1
    assert await execute(pool, assignments, [a, b]) == []


async def test_the_sweep_works_in_batches(gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]) -> None:
    ids = await new_members(pool, brand, 25)
    await define(gql, brand, "batch_me")
    await tag(gql, brand, "batch_me", ids)
    async with pool.connection() as conn:  # whatever other tests left expired goes first
        await tags.sweep_expired(conn, as_of=dt.datetime.now(dt.UTC))
    await expire(pool, "batch_me", ids)
    async with pool.connection() as conn:
        first = await tags.sweep_batch(conn, as_of=dt.datetime.now(dt.UTC), limit=10)
        assert len(first) == 10
        assert {row["member_id"] for row in first} <= set(ids)
        await tags.sweep_expired(conn, as_of=dt.datetime.now(dt.UTC))
    assert await execute(pool, "SELECT count(*) FROM member_tags WHERE member_id = ANY(%s)", ids) == [(0,)]


async def test_expire_tags_command(
    database_url: str, gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any], tmp_path: Path
) -> None:
    [a] = await new_members(pool, brand, 1)
    await define(gql, brand, "cli_swept")
    await tag(gql, brand, "cli_swept", [a])
    await expire(pool, "cli_swept", [a])
    env = {k: v for k, v in os.environ.items() if k != "TEST_DATABASE_URL"}
    env |= {"DATABASE_URL": database_url, "OMNIMEMBER_HOME": str(tmp_path), "OMNIMEMBER_SECRET": TEST_SECRET}

    def run() -> str:
        done = subprocess.run([*OMNIMEMBER, "expire-tags"], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert "deleted" in run()
    assert await execute(pool, "SELECT count(*) FROM member_tags WHERE member_id = %s", a) == [(0,)]
    assert run().startswith("deleted 0 expired tag assignments")


async def test_untagging(gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]) -> None:
    a, b, c = await new_members(pool, brand, 3)
    await define(gql, brand, "lapsed")
    await define(gql, brand, "kept")
    await tag(gql, brand, "lapsed", [a, b])
    await tag(gql, brand, "kept", [a])
    done = await untag(gql, brand, "lapsed", [a, c])
    assert done == {"__typename": "MembersUntagged", "removed": 1, "tag": {"code": "lapsed", "memberCount": 1}}
    assert [t["code"] for t in await member_tags(gql, a)] == ["kept"]
    assert [t["code"] for t in await member_tags(gql, b)] == ["lapsed"]


# --- failures -------------------------------------------------------------------------------------------


async def test_unknown_tags_suggest_the_closest_code(gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]) -> None:
    [a] = await new_members(pool, brand, 1)
    await define(gql, brand, "churn_risk")
    missing = await tag(gql, brand, "churn_rsk", [a])
    assert (missing["__typename"], missing["code"], missing["field"]) == ("UnknownTag", "UNKNOWN_TAG", "tag")
    assert missing["suggestion"] == "churn_risk"
    assert "did you mean 'churn_risk'?" in missing["message"]
    far = await untag(gql, brand, "zzz", [a])
    assert (far["code"], far["suggestion"]) == ("UNKNOWN_TAG", None)
    assert (await tag(gql, "nope", "churn_risk", [a]))["code"] == "UNKNOWN_BRAND"
    # A tag of another brand is unknown here.
    other = await new_brand(pool)
    await define(gql, other, "elsewhere")
    assert (await tag(gql, brand, "elsewhere", [a]))["code"] == "UNKNOWN_TAG"


async def test_members_that_are_not_live_members_of_the_brand_fail_the_whole_call(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    live, survivor, merged = await new_members(pool, brand, 3)
    [foreign] = await new_members(pool, await new_brand(pool), 1)
    merge = 'mutation($s: ID!, $m: ID!) { mergeMembers(survivorId: $s, mergedId: $m, reason: "dup") { __typename } }'
    assert (await gql(merge, s=str(survivor), m=str(merged)))["mergeMembers"]["__typename"] == "MembersMerged"
    await define(gql, brand, "vip")

    failed = await tag(gql, brand, "vip", [live, foreign, merged, 999_999_999])
    assert failed["__typename"] == "UnknownMembers"
    assert (failed["code"], failed["field"], failed["count"]) == ("UNKNOWN_MEMBERS", "memberIds", 3)
    assert failed["unknownIds"] == [str(foreign), "999999999"]
    assert failed["mergedIds"] == [str(merged)]
    assert (
        failed["message"]
        == "2 unknown and 1 merged away of the member ids: not live members of this brand; nothing was changed"
    )
    assert await member_tags(gql, live) == []  # nothing written for the good id either

    not_ids = await tag(gql, brand, "vip", [live, "abc", "-1"])
    assert (not_ids["code"], not_ids["unknownIds"], not_ids["mergedIds"]) == ("UNKNOWN_MEMBERS", ["abc", "-1"], [])
    assert (await untag(gql, brand, "vip", [merged]))["mergedIds"] == [str(merged)]


async def test_an_expiry_in_the_past_is_refused(gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]) -> None:
    [a] = await new_members(pool, brand, 1)
    await define(gql, brand, "late")
    past = (dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)).isoformat()
    refused = await tag(gql, brand, "late", [a], expiresAt=past)
    assert (refused["__typename"], refused["field"]) == ("InvalidInput", "expiresAt")
    assert await member_tags(gql, a) == []


async def test_too_many_ids_are_refused_before_any_work(gql: GraphQL, brand: str) -> None:
    await define(gql, brand, "huge")
    ids = [str(n) for n in range(1, tags.MAX_MEMBER_IDS + 2)]
    refused = (await gql(TAG, brand=brand, tag="huge", ids=ids))["tagMembers"]
    assert (refused["__typename"], refused["code"], refused["limit"]) == ("TooManyIds", "TOO_MANY_IDS", 100_000)
    assert (await gql(UNTAG, brand=brand, tag="huge", ids=ids))["untagMembers"]["code"] == "TOO_MANY_IDS"


# --- batching -------------------------------------------------------------------------------------------


async def test_a_call_costs_the_same_statements_for_3_or_3000_members(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    ids = await new_members(pool, brand, 3000)
    await define(gql, brand, "bulk")
    await tag(gql, brand, "bulk", ids[:1])  # warm the brand directory

    async def statements(call: Any, members: list[int]) -> int:
        with counted_statements() as counted:
            done = await call(gql, brand, "bulk", members)
        assert done["__typename"] in {"MembersTagged", "MembersUntagged"}
        return counted.value

    assert await statements(tag, ids[:3]) == await statements(tag, ids) <= 4
    assert await statements(untag, ids[:3]) == await statements(untag, ids) <= 4
    assert (await catalog(gql, brand))[0]["memberCount"] == 0


@pytest.mark.slow
async def test_one_call_tags_a_hundred_thousand_members(pool: AsyncConnectionPool[Any], gql: GraphQL) -> None:
    brand = await new_brand(pool)
    ids = await new_members(pool, brand, tags.MAX_MEMBER_IDS)
    await define(gql, brand, "campaign_list", category="CAMPAIGN")
    done = await tag(gql, brand, "campaign_list", ids)
    assert (done["tagged"], done["added"], done["tag"]["memberCount"]) == (100_000, 100_000, 100_000)
    assert (await untag(gql, brand, "campaign_list", ids[::2]))["removed"] == 50_000


async def test_the_catalog_costs_two_statements_whatever_its_size(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    ids = await new_members(pool, brand, 3)
    for n in range(20):
        await define(gql, brand, f"t{n:02}", category="RFM" if n < 2 else "CUSTOM")
        await tag(gql, brand, f"t{n:02}", ids[: n % 4])

    async def statements(category: str) -> int:
        with counted_statements() as counted:
            found = await catalog(gql, brand, category)
        assert len(found) == (2 if category == "RFM" else 18)
        return counted.value

    assert await statements("RFM") == await statements("CUSTOM") == 2
    assert [t["memberCount"] for t in await catalog(gql, brand, "RFM")] == [0, 1]


async def test_a_member_being_merged_cannot_be_tagged_meanwhile(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    """Tagging locks the members it checks: a concurrent merge either waits for the tagging (and then
    moves the new tag) or makes it fail, never leaves a tag on a merged-away member."""
    survivor, merged = await new_members(pool, brand, 2)
    await define(gql, brand, "racy")
    [(brand_id,)] = await execute(pool, "SELECT id FROM brands WHERE code = %s", brand)
    async with pool.connection() as conn:
        tag_row = await definition(conn, brand_id=brand_id, code="racy")

    async def tag_merged() -> tags.Tagged:
        async with pool.connection() as conn, conn.transaction():
            return await tags.tag_members(conn, tag=tag_row, member_ids=[merged])

    async with pool.connection() as merging, merging.transaction():
        await merges.merge(merging, survivor_id=survivor, merged_id=merged, reason="race")
        pending = asyncio.create_task(tag_merged())
        await asyncio.sleep(0.3)
        assert not pending.done()  # waiting for the merge's row lock
    with pytest.raises(tags.UnknownMembersError) as failed:
        await pending
    assert failed.value.merged == [str(merged)]
    assert await member_tags(gql, merged) == await member_tags(gql, survivor) == []

"""Merging members and undoing merges exactly."""

from __future__ import annotations

import datetime as dt
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg_pool import AsyncConnectionPool

from tests.conftest import GraphQL, new_brand
from tests.fragments import BIND, MEMBER_BY_ID, MERGE, REGISTER, UNMERGE

CHANNELS = ["tmall", "jd", "douyin", "wechat", "wecom", "pos", "mall"]


async def register(gql: GraphQL, brand: str, channel: str, external_id: str, **extra: Any) -> dict[str, Any]:
    data = await gql(REGISTER, brand=brand, channel=channel, externalId=external_id, **extra)
    member: dict[str, Any] = data["registerMember"]["member"]
    return member


async def merge(gql: GraphQL, survivor: str, merged: str, reason: str = "same person") -> dict[str, Any]:
    result: dict[str, Any] = (await gql(MERGE, survivorId=survivor, mergedId=merged, reason=reason))["mergeMembers"]
    return result


async def unmerge(gql: GraphQL, merge_id: str) -> dict[str, Any]:
    result: dict[str, Any] = (await gql(UNMERGE, mergeId=merge_id))["unmergeMembers"]
    return result


async def member(gql: GraphQL, member_id: str) -> dict[str, Any]:
    found: dict[str, Any] = (await gql(MEMBER_BY_ID, id=member_id))["member"]
    return found


async def test_merge_moves_identities_and_records_them(gql: GraphQL, brand: str) -> None:
    survivor = await register(gql, brand, "tmall", "tb-s", displayName="张三")
    merged = await register(gql, brand, "jd", "jd-m", phone="13800001111", city="北京", gender="MALE")
    result = await merge(gql, survivor["id"], merged["id"], "customer service: same person")
    assert result["__typename"] == "MembersMerged"
    record = result["merge"]
    assert record["movedIdentities"] == [{"channel": "JD", "externalId": "jd-m"}]
    assert {i["externalId"] for i in record["survivor"]["identities"]} == {"tb-s", "jd-m"}
    # Empty survivor fields are filled from the merged member; filled ones are kept.
    assert (record["survivor"]["displayName"], record["survivor"]["city"]) == ("张三", "北京")
    assert record["survivor"]["maskedPhone"] == "138****1111"
    assert record["merged"]["mergedInto"] == {"id": survivor["id"]}
    assert record["merged"]["identities"] == []


async def test_a_merged_member_resolves_to_its_survivor(gql: GraphQL, brand: str) -> None:
    survivor = await register(gql, brand, "tmall", "tb-s2", phone="13800002221")
    merged = await register(gql, brand, "jd", "jd-m2", phone="13800002222")
    await merge(gql, survivor["id"], merged["id"])
    query = """query($b: String!) {
      byIdentity: memberByIdentity(brand: $b, channel: "jd", externalId: "jd-m2") { id }
      byPhone: memberByPhone(brand: $b, phone: "13800002222") { id }
    }"""
    data = await gql(query, b=brand)
    assert data == {"byIdentity": {"id": survivor["id"]}, "byPhone": {"id": survivor["id"]}}
    again = await gql(REGISTER, brand=brand, channel="douyin", externalId="dy-m2", phone="13800002222")
    assert again["registerMember"]["member"]["id"] == survivor["id"]
    assert again["registerMember"]["outcome"] == "PHONE_MATCH"


async def test_unmerge_restores_both_members(gql: GraphQL, brand: str) -> None:
    survivor = await register(gql, brand, "tmall", "tb-s3")
    merged = await register(gql, brand, "jd", "jd-m3", phone="13800003333", city="广州")
    result = await merge(gql, survivor["id"], merged["id"])
    undone = await unmerge(gql, result["merge"]["id"])
    assert undone["__typename"] == "MembersUnmerged"
    assert undone["merge"]["unmergedAt"] is not None
    assert await member(gql, survivor["id"]) == survivor
    assert await member(gql, merged["id"]) == merged


async def test_unmerge_keeps_changes_made_after_the_merge(gql: GraphQL, brand: str) -> None:
    survivor = await register(gql, brand, "tmall", "tb-s4")
    merged = await register(gql, brand, "jd", "jd-m4", city="广州")
    result = await merge(gql, survivor["id"], merged["id"])
    later = await gql(REGISTER, brand=brand, channel="wechat", externalId="o-later", phone="13800004444")
    bound = await gql(BIND, brand=brand, channel="mall", externalId="m-4", memberId=survivor["id"])
    assert bound["bindIdentity"]["__typename"] == "IdentityBound"
    await unmerge(gql, result["merge"]["id"])
    after = await member(gql, survivor["id"])
    assert {i["externalId"] for i in after["identities"]} == {"tb-s4", "m-4"}
    assert after["city"] is None
    assert later["registerMember"]["outcome"] == "CREATED"


async def test_merge_errors_are_typed(gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]) -> None:
    a = await register(gql, brand, "tmall", "tb-e1")
    b = await register(gql, brand, "tmall", "tb-e2")
    c = await register(gql, brand, "tmall", "tb-e3")
    foreign = await register(gql, await new_brand(pool), "tmall", "tb-e4")
    assert (await merge(gql, a["id"], a["id"]))["code"] == "SELF_MERGE"
    assert (await merge(gql, a["id"], "999999999"))["code"] == "UNKNOWN_MEMBER"
    assert (await merge(gql, "nope", a["id"]))["field"] == "survivorId"
    assert (await merge(gql, a["id"], foreign["id"]))["code"] == "CROSS_BRAND_MERGE"
    assert (await merge(gql, a["id"], b["id"], reason=" "))["field"] == "reason"
    await merge(gql, a["id"], b["id"])
    already = await merge(gql, c["id"], b["id"])
    assert (already["__typename"], already["survivorId"]) == ("AlreadyMerged", a["id"])
    assert (await merge(gql, b["id"], c["id"]))["field"] == "survivorId"


async def test_unmerge_errors_are_typed(gql: GraphQL, brand: str) -> None:
    a = await register(gql, brand, "tmall", "tb-u1")
    b = await register(gql, brand, "tmall", "tb-u2")
    c = await register(gql, brand, "tmall", "tb-u3")
    assert (await unmerge(gql, "999999999"))["code"] == "UNKNOWN_MERGE"
    assert (await unmerge(gql, "x"))["code"] == "UNKNOWN_MERGE"
    first = (await merge(gql, b["id"], a["id"]))["merge"]["id"]
    second = (await merge(gql, c["id"], b["id"]))["merge"]["id"]
    blocked = await unmerge(gql, first)
    assert blocked["code"] == "MERGE_NOT_REVERSIBLE"
    assert "undo that merge first" in blocked["message"]
    assert (await unmerge(gql, second))["__typename"] == "MembersUnmerged"
    assert (await unmerge(gql, first))["__typename"] == "MembersUnmerged"
    assert (await unmerge(gql, first))["code"] == "MERGE_NOT_REVERSIBLE"
    assert (await member(gql, a["id"]))["identities"] == [{"channel": "TMALL", "externalId": "tb-u1"}]


async def test_member_lists_its_merges(gql: GraphQL, brand: str) -> None:
    a = await register(gql, brand, "tmall", "tb-l1")
    b = await register(gql, brand, "tmall", "tb-l2")
    merge_id = (await merge(gql, a["id"], b["id"], "dup"))["merge"]["id"]
    query = "query($id: ID!) { member(id: $id) { merges { id reason survivor { id } merged { id } } } }"
    expected = [{"id": merge_id, "reason": "dup", "survivor": {"id": a["id"]}, "merged": {"id": b["id"]}}]
    assert (await gql(query, id=a["id"]))["member"]["merges"] == expected
    assert (await gql(query, id=b["id"]))["member"]["merges"] == expected


identity_sets = st.lists(
    st.tuples(st.sampled_from(CHANNELS), st.from_regex(r"[a-z0-9]{1,6}", fullmatch=True)),
    min_size=1,
    max_size=6,
    unique=True,
)
profiles = st.fixed_dictionaries(
    {},
    optional={
        "phone": st.from_regex(r"13[0-9]{9}", fullmatch=True),
        "displayName": st.sampled_from(["王芳", "李雷", "Amy"]),
        "city": st.sampled_from(["上海", "成都"]),
        "gender": st.sampled_from(["MALE", "FEMALE"]),
        "birthday": st.sampled_from(["1980-01-02", "1999-12-31"]),
    },
)


# Purchase history arrives with the orders issue; until then set the aggregates directly.
purchases = st.none() | st.tuples(st.integers(1, 50), st.integers(1, 10**6), st.integers(0, 700), st.integers(0, 30))


async def _set_purchases(
    pool: AsyncConnectionPool[Any], member_id: str, history: tuple[int, int, int, int] | None
) -> None:
    if history is None:
        return
    orders, spend_fen, first_days_ago, last_days_ago = history
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE members SET order_count = %s, total_spend = %s / 100.0,"
            " first_purchase_at = now() - make_interval(days => %s),"
            " last_purchase_at = now() - make_interval(days => %s)"
            " WHERE id = %s",
            (orders, spend_fen, first_days_ago + last_days_ago, last_days_ago, int(member_id)),
        )


async def _rows(pool: AsyncConnectionPool[Any], *member_ids: str) -> tuple[Any, ...]:
    """Everything the database holds about these members, to compare before and after."""
    ids = [int(m) for m in member_ids]
    async with pool.connection() as conn:
        members = await (
            await conn.execute("SELECT to_jsonb(m) FROM members m WHERE id = ANY(%s) ORDER BY id", (ids,))
        ).fetchall()
        identities = await (
            await conn.execute(
                "SELECT id, member_id, channel, external_id, bound_at FROM member_identities"
                " WHERE member_id = ANY(%s) ORDER BY id",
                (ids,),
            )
        ).fetchall()
        tags = await (
            await conn.execute(
                "SELECT member_id, tag_id, brand_id, source, assigned_at, expires_at FROM member_tags"
                " WHERE member_id = ANY(%s) ORDER BY member_id, tag_id",
                (ids,),
            )
        ).fetchall()
    return tuple(members), tuple(identities), tuple(tags)


TAG_CODES = ["t0", "t1", "t2", "t3", "t4"]
# Per tag code: carried live, carried but expired, or carried with an expiry still ahead.
tag_sets = st.dictionaries(st.sampled_from(TAG_CODES), st.sampled_from(["live", "expired", "expiring"]), max_size=5)
DEFINE_TAG = (
    "mutation($b: String!, $c: String!) { defineTag(brand: $b, code: $c, name: $c, category: CUSTOM) { __typename } }"
)
TAG_MEMBER = """mutation($b: String!, $c: String!, $id: ID!, $at: DateTime) {
  tagMembers(brand: $b, tag: $c, memberIds: [$id], expiresAt: $at) { __typename }
}"""
LIVE_TAGS = "query($id: ID!) { member(id: $id) { tags { code source } } }"


async def _give_tags(
    gql: GraphQL, pool: AsyncConnectionPool[Any], brand: str, member_id: str, tags: dict[str, str], source: str
) -> None:
    for code, state in tags.items():
        at = None if state == "live" else (dt.datetime.now(dt.UTC) + dt.timedelta(days=9)).isoformat()
        assert (await gql(TAG_MEMBER, b=brand, c=code, id=member_id, at=at))["tagMembers"]["__typename"] == (
            "MembersTagged"
        )
    async with pool.connection() as conn:
        # Sources tell the two members' rows apart; expired rows can only be made by backdating.
        await conn.execute("UPDATE member_tags SET source = %s WHERE member_id = %s", (source, int(member_id)))
        expired = [code for code, state in tags.items() if state == "expired"]
        await conn.execute(
            "UPDATE member_tags SET expires_at = now() - interval '1 hour' WHERE member_id = %s"
            " AND tag_id IN (SELECT d.id FROM tag_definitions d JOIN brands b ON b.id = d.brand_id"
            " WHERE b.code = %s AND d.code = ANY(%s))",
            (int(member_id), brand, expired),
        )


async def _live_tags(gql: GraphQL, member_id: str) -> dict[str, str]:
    return {t["code"]: t["source"] for t in (await gql(LIVE_TAGS, id=member_id))["member"]["tags"]}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    left=identity_sets,
    right=identity_sets,
    left_profile=profiles,
    right_profile=profiles,
    left_purchases=purchases,
    right_purchases=purchases,
    left_tags=tag_sets,
    right_tags=tag_sets,
)
async def test_merge_then_unmerge_restores_everything(
    gql: GraphQL,
    pool: AsyncConnectionPool[Any],
    left: list[tuple[str, str]],
    right: list[tuple[str, str]],
    left_profile: dict[str, str],
    right_profile: dict[str, str],
    left_purchases: tuple[int, int, int, int] | None,
    right_purchases: tuple[int, int, int, int] | None,
    left_tags: dict[str, str],
    right_tags: dict[str, str],
) -> None:
    brand = await new_brand(pool)
    if left_profile.get("phone") == right_profile.get("phone"):
        right_profile.pop("phone", None)
    right = [(channel, f"r{external}") for channel, external in right]
    survivor_id = await _member_with(gql, brand, left, left_profile)
    merged_id = await _member_with(gql, brand, right, right_profile)
    await _set_purchases(pool, survivor_id, left_purchases)
    await _set_purchases(pool, merged_id, right_purchases)
    for code in TAG_CODES:
        assert (await gql(DEFINE_TAG, b=brand, c=code))["defineTag"]["__typename"] == "TagDefined"
    await _give_tags(gql, pool, brand, survivor_id, left_tags, "left")
    await _give_tags(gql, pool, brand, merged_id, right_tags, "right")
    live_before = (await _live_tags(gql, survivor_id), await _live_tags(gql, merged_id))
    before = await _rows(pool, survivor_id, merged_id)

    merged = await merge(gql, survivor_id, merged_id)
    moved = {(i["channel"].lower(), i["externalId"]) for i in merged["merge"]["movedIdentities"]}
    assert moved == set(right)
    assert len(merged["merge"]["survivor"]["identities"]) == len(left) + len(right)

    survivor = merged["merge"]["survivor"]
    assert survivor["status"] == ("MEMBER" if left_purchases or right_purchases else "PROSPECT")
    # The survivor carries every live tag of both; where both did, its own assignment.
    assert await _live_tags(gql, survivor_id) == live_before[1] | live_before[0]
    assert await _live_tags(gql, merged_id) == {}

    await unmerge(gql, merged["merge"]["id"])
    assert await _rows(pool, survivor_id, merged_id) == before


async def _member_with(gql: GraphQL, brand: str, identities: list[tuple[str, str]], profile: dict[str, str]) -> str:
    (channel, external_id), *rest = identities
    member_id: str = (await register(gql, brand, channel, external_id, **profile))["id"]
    for channel, external_id in rest:
        result = await gql(BIND, brand=brand, channel=channel, externalId=external_id, memberId=member_id)
        assert result["bindIdentity"]["__typename"] == "IdentityBound"
    return member_id


async def test_tags_move_to_the_survivor_and_back(gql: GraphQL, pool: AsyncConnectionPool[Any]) -> None:
    brand = await new_brand(pool)
    survivor = (await register(gql, brand, "tmall", "tb-t1"))["id"]
    merged = (await register(gql, brand, "jd", "jd-t1"))["id"]
    for code in ("both", "stale", "theirs", "gone"):
        await gql(DEFINE_TAG, b=brand, c=code)
    await _give_tags(gql, pool, brand, survivor, {"both": "live", "stale": "expired"}, "left")
    await _give_tags(gql, pool, brand, merged, {"both": "expiring", "stale": "live", "theirs": "live"}, "right")
    await _give_tags(gql, pool, brand, merged, {"gone": "expired"}, "right")
    before = await _rows(pool, survivor, merged)

    merge_id = (await merge(gql, survivor, merged))["merge"]["id"]
    # The survivor keeps its own live "both"; its expired "stale" gives way to the merged member's live one.
    assert await _live_tags(gql, survivor) == {"both": "left", "stale": "right", "theirs": "right"}
    assert await _live_tags(gql, merged) == {}
    async with pool.connection() as conn:
        [[record]] = await (
            await conn.execute("SELECT moved->'tags' FROM member_merges WHERE id = %s", (int(merge_id),))
        ).fetchall()
        codes = dict(await (await conn.execute("SELECT id, code FROM tag_definitions")).fetchall())
    assert sorted(codes[i] for i in record["moved"]) == ["gone", "stale", "theirs"]
    assert [(codes[r["tag_id"]], r["source"]) for r in record["kept"]] == [("both", "right")]
    assert [(codes[r["tag_id"]], r["source"]) for r in record["replaced"]] == [("stale", "left")]
    counts = {t["code"]: t["memberCount"] for t in (await gql(CATALOG, b=brand))["tags"]}
    assert counts == {"both": 1, "stale": 1, "theirs": 1, "gone": 0}

    await unmerge(gql, merge_id)
    assert await _rows(pool, survivor, merged) == before
    assert await _live_tags(gql, merged) == {"both": "right", "stale": "right", "theirs": "right"}


CATALOG = "query($b: String!) { tags(brand: $b) { code memberCount } }"

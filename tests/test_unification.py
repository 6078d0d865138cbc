"""Identity unification through the API: registerMember and bindIdentity."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from tests.conftest import GraphQL, new_brand, unique_code
from tests.fragments import BIND, REGISTER


async def register(gql: GraphQL, brand: str, channel: str, external_id: str, **extra: Any) -> dict[str, Any]:
    data = await gql(REGISTER, brand=brand, channel=channel, externalId=external_id, **extra)
    result: dict[str, Any] = data["registerMember"]
    return result


async def test_a_new_identity_without_a_known_phone_becomes_a_prospect(gql: GraphQL, brand: str) -> None:
    result = await register(
        gql, brand, "tmall", "tb-1", phone="+86 138 0000 0001", displayName="王芳", city="上海", birthday="1990-05-01"
    )
    assert result["outcome"] == "CREATED"
    member = result["member"]
    assert member["status"] == "PROSPECT"
    assert member["maskedPhone"] == "138****0001"
    assert member["tier"] == {"code": "silver", "rank": 0}
    assert member["identities"] == [{"channel": "TMALL", "externalId": "tb-1"}]
    assert (member["displayName"], member["city"], member["birthday"]) == ("王芳", "上海", "1990-05-01")


async def test_registering_the_same_identity_again_returns_the_same_member(gql: GraphQL, brand: str) -> None:
    first = await register(gql, brand, "jd", "jd-1")
    again = await register(gql, brand, "JD", " jd-1 ", displayName="ignored for an existing binding")
    assert again["outcome"] == "EXISTING"
    assert again["member"]["id"] == first["member"]["id"]
    assert again["member"]["displayName"] is None


async def test_a_matching_phone_binds_to_the_existing_member(gql: GraphQL, brand: str) -> None:
    first = await register(gql, brand, "wechat", "o-1", phone="13800000002")
    second = await register(gql, brand, "douyin", "dy-1", phone="+8613800000002", city="成都", gender="FEMALE")
    assert second["outcome"] == "PHONE_MATCH"
    member = second["member"]
    assert member["id"] == first["member"]["id"]
    assert {i["channel"] for i in member["identities"]} == {"WECHAT", "DOUYIN"}
    assert (member["city"], member["gender"]) == ("成都", "FEMALE")


async def test_a_phone_match_fills_only_missing_profile_fields(gql: GraphQL, brand: str) -> None:
    await register(gql, brand, "pos", "card-1", phone="13800000003", displayName="李雷", gender="MALE")
    second = await register(
        gql, brand, "mall", "m-1", phone="13800000003", displayName="Someone else", gender="FEMALE", city="杭州"
    )
    assert (second["member"]["displayName"], second["member"]["gender"]) == ("李雷", "MALE")
    assert second["member"]["city"] == "杭州"


async def test_phones_do_not_unify_across_brands(gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]) -> None:
    other = await new_brand(pool)
    a = await register(gql, brand, "tmall", "tb-x", phone="13800000004")
    b = await register(gql, other, "tmall", "tb-x", phone="13800000004")
    assert b["outcome"] == "CREATED"
    assert a["member"]["id"] != b["member"]["id"]


async def test_person_links_memberships_of_one_group_only(gql: GraphQL, pool: AsyncConnectionPool[Any]) -> None:
    group = unique_code("g")
    tea, fruit, stranger = await new_brand(pool, group), await new_brand(pool, group), await new_brand(pool)
    phone = "13900000005"
    ids = [(await register(gql, b, "wechat", "o-p", phone=phone))["member"]["id"] for b in (tea, fruit, stranger)]
    query = "query($id: ID!) { member(id: $id) { person { key memberships { id brand { code } } } } }"
    tea_person = (await gql(query, id=ids[0]))["member"]["person"]
    fruit_person = (await gql(query, id=ids[1]))["member"]["person"]
    stranger_person = (await gql(query, id=ids[2]))["member"]["person"]
    assert tea_person["memberships"] == [{"id": ids[1], "brand": {"code": fruit}}]
    assert fruit_person["memberships"] == [{"id": ids[0], "brand": {"code": tea}}]
    assert tea_person["key"] == fruit_person["key"] != stranger_person["key"]
    assert stranger_person["memberships"] == []


async def test_a_member_without_phone_has_no_person(gql: GraphQL, brand: str) -> None:
    member = (await register(gql, brand, "pos", "card-np"))["member"]
    data = await gql("query($id: ID!) { member(id: $id) { person { key } } }", id=member["id"])
    assert data["member"]["person"] is None


async def test_bind_attaches_an_identity_to_a_named_member(gql: GraphQL, brand: str) -> None:
    member = (await register(gql, brand, "tmall", "tb-2"))["member"]
    data = await gql(BIND, brand=brand, channel="wecom", externalId="wm-2", memberId=member["id"])
    bound = data["bindIdentity"]
    assert bound["outcome"] == "ATTACHED"
    assert bound["member"]["identities"][-1] == {"channel": "WECOM", "externalId": "wm-2"}
    again = (await gql(BIND, brand=brand, channel="wecom", externalId="wm-2", memberId=member["id"]))["bindIdentity"]
    assert again["outcome"] == "EXISTING"


async def test_bind_without_member_resolves_by_the_rules(gql: GraphQL, brand: str) -> None:
    member = (await register(gql, brand, "tmall", "tb-3", phone="13800000006"))["member"]
    by_identity = (await gql(BIND, brand=brand, channel="tmall", externalId="tb-3"))["bindIdentity"]
    by_phone = (await gql(BIND, brand=brand, channel="jd", externalId="jd-3", phone="13800000006"))["bindIdentity"]
    fresh = (await gql(BIND, brand=brand, channel="jd", externalId="jd-4"))["bindIdentity"]
    assert (by_identity["outcome"], by_identity["member"]["id"]) == ("EXISTING", member["id"])
    assert (by_phone["outcome"], by_phone["member"]["id"]) == ("PHONE_MATCH", member["id"])
    assert fresh["outcome"] == "CREATED"
    assert fresh["member"]["id"] != member["id"]


async def test_an_identity_bound_elsewhere_is_refused(gql: GraphQL, brand: str) -> None:
    owner = (await register(gql, brand, "tmall", "tb-4"))["member"]
    other = (await register(gql, brand, "tmall", "tb-5"))["member"]
    result = (await gql(BIND, brand=brand, channel="tmall", externalId="tb-4", memberId=other["id"]))["bindIdentity"]
    assert result["__typename"] == "IdentityAlreadyBound"
    assert (result["code"], result["field"], result["memberId"]) == (
        "IDENTITY_ALREADY_BOUND",
        "externalId",
        owner["id"],
    )
    unchanged = await gql("query($id: ID!) { member(id: $id) { identities { externalId } } }", id=other["id"])
    assert unchanged["member"]["identities"] == [{"externalId": "tb-5"}]


@pytest.mark.parametrize(
    ("arguments", "typename", "code", "field"),
    [
        ({"brand": "no_such_brand"}, "UnknownBrand", "UNKNOWN_BRAND", "brand"),
        ({"channel": "taobao"}, "UnknownChannel", "UNKNOWN_CHANNEL", "channel"),
        ({"phone": "12345"}, "InvalidPhone", "INVALID_PHONE", "phone"),
        ({"externalId": "   "}, "InvalidInput", "INVALID_INPUT", "externalId"),
        ({"externalId": "x" * 129}, "InvalidInput", "INVALID_INPUT", "externalId"),
        ({"birthday": "2999-01-01"}, "InvalidInput", "INVALID_INPUT", "birthday"),
        ({"displayName": ""}, "InvalidInput", "INVALID_INPUT", "displayName"),
        ({"city": "市" * 65}, "InvalidInput", "INVALID_INPUT", "city"),
    ],
)
async def test_register_errors_are_typed_and_write_nothing(
    gql: GraphQL, brand: str, arguments: dict[str, Any], typename: str, code: str, field: str
) -> None:
    variables = {"brand": brand, "channel": "tmall", "externalId": "tb-err", **arguments}
    result = (await gql(REGISTER, **variables))["registerMember"]
    assert (result["__typename"], result["code"], result["field"]) == (typename, code, field)
    assert result["message"]
    count = await gql("query($b: String!) { members(brand: $b) { totalCount } }", b=brand)
    assert count["members"]["totalCount"] == 0


@pytest.mark.parametrize(
    ("arguments", "typename", "field"),
    [
        ({"memberId": "999999999"}, "UnknownMember", "memberId"),
        ({"memberId": "not-an-id"}, "UnknownMember", "memberId"),
        ({"memberId": "1", "phone": "13800000000"}, "InvalidInput", "phone"),
    ],
)
async def test_bind_errors_are_typed(
    gql: GraphQL, brand: str, arguments: dict[str, Any], typename: str, field: str
) -> None:
    result = (await gql(BIND, brand=brand, channel="tmall", externalId="tb-e", **arguments))["bindIdentity"]
    assert (result["__typename"], result["field"]) == (typename, field)


async def test_concurrent_registrations_of_one_phone_make_one_member(gql: GraphQL, brand: str) -> None:
    results = await asyncio.gather(
        *(register(gql, brand, "wechat", f"o-race-{n}", phone="13700000007") for n in range(12))
    )
    assert {r["__typename"] for r in results} == {"MemberRegistered"}
    assert len({r["member"]["id"] for r in results}) == 1
    assert sorted(r["outcome"] for r in results).count("CREATED") == 1


async def test_concurrent_registrations_of_one_identity_make_one_member(gql: GraphQL, brand: str) -> None:
    results = await asyncio.gather(*(register(gql, brand, "jd", "jd-race") for _ in range(12)))
    assert len({r["member"]["id"] for r in results}) == 1
    assert [r["outcome"] for r in results].count("CREATED") == 1

"""Compiled reads (resolvers.sqljson) answer exactly what strawberry's resolvers answer.

Random selections over the profile graph (aliases, fragments, nested connections, every field the
compiler maps) run both ways against the same data; the two `data` objects must be equal.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg_pool import AsyncConnectionPool

from resolvers.sqljson import Needs, Plan, Plans
from resolvers.sqljson.documents import MAX_TEXT, Memo
from schema.root import build_schema
from store.brands import BrandDirectory, ScopedBrands
from store.sql import counted_statements
from tests.conftest import MASKED, GraphQL, make_context, new_brand, unique_code
from tests.fragments import EARN, MERGE, RECORD_ORDER, REDEEM, REGISTER

DEFINE_TAG = """mutation($brand: String!, $code: String!, $name: String!, $category: TagCategory!) {
  defineTag(brand: $brand, code: $code, name: $name, category: $category) { __typename } }"""
TAG_MEMBERS = """mutation($brand: String!, $tag: String!, $ids: [ID!]!, $expiresAt: DateTime) {
  tagMembers(brand: $brand, tag: $tag, memberIds: $ids, expiresAt: $expiresAt) { __typename } }"""
SCHEMA = build_schema()
PLANS = Plans(SCHEMA._schema, SCHEMA.documents)

# The selectable graph: a field maps to None (a leaf) or to the graph under it.
Graph = dict[str, Any]
TIER: Graph = {"code": None, "name": None, "rank": None, "__typename": None}
SCALARS: Graph = dict.fromkeys(
    [
        "id",
        "status",
        "pointsBalance",
        "growthValue",
        "displayName",
        "gender",
        "birthday",
        "city",
        "registeredAt",
        "firstPurchaseAt",
        "lastPurchaseAt",
        "orderCount",
        "totalSpend",
        "maskedPhone",
        "mergedAt",
        "__typename",
    ]
)
BRAND: Graph = {
    **dict.fromkeys(["id", "code", "name", "createdAt", "__typename"]),
    "group": {"id": None, "code": None, "name": None},
    "tiers": TIER,
}
ENTRY: Graph = dict.fromkeys(["id", "kind", "amount", "balanceAfter", "note", "createdAt", "postingId", "__typename"])
SMALL_MEMBER: Graph = {**SCALARS, "tier": TIER, "brand": BRAND}
MEMBER: Graph = {
    **SMALL_MEMBER,
    "identities": {"channel": None, "externalId": None, "boundAt": None, "__typename": None},
    "tags": dict.fromkeys(["code", "name", "category", "source", "assignedAt", "expiresAt", "__typename"]),
    "person": {"key": None, "memberships": SMALL_MEMBER, "__typename": None},
    "mergedInto": SMALL_MEMBER,
    "pointsHistory(first: 2)": {
        "nodes": ENTRY,
        "edges": {"cursor": None, "node": ENTRY},
        "pageInfo": {"hasNextPage": None, "hasPreviousPage": None, "endCursor": None},
    },
}
PAGE_ARGS = "members(brand: $brand, first: $first, after: $after)"
PAGE_INFO: Graph = dict.fromkeys(["hasNextPage", "hasPreviousPage", "startCursor", "endCursor", "__typename"])


@st.composite
def selections(draw: st.DrawFn, graph: Graph, type_name: str, depth: int = 0) -> str:
    """A non-empty selection set over ``graph``, sometimes aliased or wrapped in an inline fragment."""
    names = draw(st.lists(st.sampled_from(sorted(graph)), min_size=1, max_size=6, unique=True))
    parts: list[str] = []
    for name in names:
        alias = draw(st.sampled_from(["", "", "", f"a{len(parts)}: "]))
        below = graph[name]
        sub = "" if below is None else " { " + draw(selections(below, "", depth + 1)) + " }"
        parts.append(f"{alias}{name}{sub}")
    body = " ".join(parts)
    if type_name and draw(st.booleans()):
        return f"... on {type_name} {{ {body} }} __typename"
    return body


@dataclass
class World:
    brand: str
    member_ids: list[str]


@pytest.fixture(scope="module")
async def world(client: Any, pool: AsyncConnectionPool[Any]) -> World:
    gql = GraphQL(client)
    group = unique_code("g")
    brand, sister = await new_brand(pool, group), await new_brand(pool, group)
    ids = []
    for n in range(6):
        phone = f"1380013{n:04d}" if n != 3 else None
        member = await gql(
            REGISTER,
            brand=brand,
            channel="pos",
            externalId=f"card-{n}",
            phone=phone,
            displayName=["王芳", "Li Wei", None][n % 3],
            gender=["FEMALE", "MALE", "UNKNOWN"][n % 3],
            birthday=f"1990-0{n + 1}-15" if n % 2 else None,
            city=["上海", "北京", None][n % 3],
        )
        member_id = member["registerMember"]["member"]["id"]
        ids.append(member_id)
        if phone is not None and n % 2 == 0:
            await gql(REGISTER, brand=sister, channel="tmall", externalId=f"buyer-{n}", phone=phone)
        await gql(REGISTER, brand=brand, channel="wechat", externalId=f"openid-{n}", phone=phone)
        for k in range(n):
            await gql(EARN, brand=brand, memberId=member_id, amount=100 + k, key=f"e{n}-{k}", reason=f"gift {k}")
        if n >= 2:
            await gql(REDEEM, brand=brand, memberId=member_id, amount=50, key=f"r{n}")
        if n % 2 == 1:
            await gql(
                RECORD_ORDER,
                brand=brand,
                channel="tmall",
                orderId=f"o{n}",
                amount="199.90",
                paidAt="2026-05-01T08:00:00+08:00",
                memberId=member_id,
            )
    for code, name, category, expires in [
        ("vip", "贵宾", "RFM", None),
        ("app_user", "App user", "BEHAVIOR", "2078-01-01T00:00:00.5+08:00"),
        ("lapsed", "Lapsed", "LIFECYCLE", None),
    ]:
        defined = await gql(DEFINE_TAG, brand=brand, code=code, name=name, category=category)
        assert defined["defineTag"]["__typename"] == "TagDefined"
        tagged = await gql(TAG_MEMBERS, brand=brand, tag=code, ids=ids[: 2 + len(code) % 4], expiresAt=expires)
        assert tagged["tagMembers"]["__typename"] == "MembersTagged"
    async with pool.connection() as conn:  # an expired assignment is read by neither path
        await conn.execute(
            "UPDATE member_tags SET expires_at = now() - interval '1 day' WHERE member_id = %s", [int(ids[0])]
        )
    merged = await gql(MERGE, survivorId=ids[0], mergedId=ids[5], reason="same person")
    assert merged["mergeMembers"]["__typename"] == "MembersMerged"
    async with pool.connection() as conn:  # whole seconds print without a fraction: cover both forms
        await conn.execute(
            "UPDATE members SET registered_at = date_trunc('second', registered_at) WHERE id = %s", [int(ids[1])]
        )
    return World(brand, ids)


async def _both(query: str, variables: dict[str, Any], pool: AsyncConnectionPool[Any]) -> tuple[Any, Any]:
    plan = PLANS.plan(query, None)
    assert plan is not None, f"not compiled: {query}"
    brands = BrandDirectory()
    body = await PLANS.answer(plan, variables, Needs(brands=ScopedBrands(brands, None), pool=pool, principal=MASKED))
    assert body is not None
    context = make_context(pool, MASKED, brands)
    general = await SCHEMA.execute(query, variable_values=variables, context_value=context)
    assert general.errors is None, general.errors
    return json.loads(body)["data"], general.data


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
async def test_member_by_id_matches_the_general_path(
    data: st.DataObject, world: World, pool: AsyncConnectionPool[Any]
) -> None:
    member_id = data.draw(st.sampled_from([*world.member_ids, "999999999999", "not-an-id"]))
    selection = data.draw(selections(MEMBER, "Member"))
    query = f"query($id: ID!) {{ member(id: $id) {{ {selection} }} }}"
    compiled, general = await _both(query, {"id": member_id}, pool)
    assert compiled == general


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
async def test_member_pages_match_the_general_path(
    data: st.DataObject, world: World, pool: AsyncConnectionPool[Any]
) -> None:
    first = data.draw(st.integers(0, 7))
    start = data.draw(st.sampled_from([None, *world.member_ids[:4]]))
    node = data.draw(selections(SMALL_MEMBER, "Member"))
    page_info = data.draw(selections(PAGE_INFO, ""))
    fields = data.draw(
        st.lists(
            st.sampled_from(
                [
                    f"nodes {{ {node} }}",
                    f"edges {{ cursor node {{ {node} }} }}",
                    f"pageInfo {{ {page_info} }}",
                    "totalCount",
                ]
            ),
            min_size=1,
            unique=True,
        )
    )
    after = None
    if start is not None:
        after = (
            await _both(
                f'query {{ members(brand: "{world.brand}", first: 100) {{ edges {{ cursor node {{ id }} }} }} }}',
                {},
                pool,
            )
        )[0]
        after = next(e["cursor"] for e in after["members"]["edges"] if e["node"]["id"] == start)
    query = f"query($brand: String!, $first: Int!, $after: String) {{ {PAGE_ARGS} {{ {' '.join(fields)} }} }}"
    compiled, general = await _both(query, {"brand": world.brand, "first": first, "after": after}, pool)
    assert compiled == general


async def test_points_history_pages_through_cursors(world: World, pool: AsyncConnectionPool[Any]) -> None:
    query = """query($id: ID!, $after: String) { member(id: $id) { pointsHistory(first: 2, after: $after) {
        nodes { id amount } pageInfo { hasNextPage hasPreviousPage endCursor } } } }"""
    after, seen = None, []
    while True:
        compiled, general = await _both(query, {"id": world.member_ids[4], "after": after}, pool)
        assert compiled == general
        history = compiled["member"]["pointsHistory"]
        seen += [node["id"] for node in history["nodes"]]
        if not history["pageInfo"]["hasNextPage"]:
            break
        after = history["pageInfo"]["endCursor"]
    assert len(seen) == 5
    assert seen == sorted(seen, key=int, reverse=True)


async def test_one_statement_answers_a_whole_profile(world: World, pool: AsyncConnectionPool[Any]) -> None:
    query = f"query($id: ID!) {{ member(id: $id) {{ {' '.join(k for k in MEMBER if MEMBER[k] is None)} "
    query += "person { memberships { id brand { code } } } pointsHistory(first: 10) { nodes { id } }"
    query += " identities { channel } } }"
    plan = PLANS.plan(query, None)
    assert plan is not None
    with counted_statements() as counted:
        body = await PLANS.answer(
            plan,
            {"id": world.member_ids[0]},
            Needs(brands=ScopedBrands(BrandDirectory(), None), pool=pool, principal=MASKED),
        )
    assert counted.value == 1
    assert body is not None
    assert json.loads(body)["data"]["member"]["id"] == world.member_ids[0]


@pytest.mark.parametrize(
    ("query", "variables"),
    [
        ("mutation { __typename }", {}),  # not a read
        ("query($id: ID!) { member(id: $id) { orders { nodes { id } } } }", {"id": "1"}),  # unmapped field
        ("query($id: ID!, $x: Boolean!) { member(id: $id) { id @include(if: $x) } }", {"id": "1", "x": True}),
        ("query { member(id: 1) { nope } }", {}),  # invalid: strawberry reports it
        ("query {", {}),  # syntax error
        ('query { members(brand: "b", where: "tag:vip") { totalCount } }', {}),  # an audience: the engine's
    ],
)
def test_what_has_no_plan_takes_the_general_path(query: str, variables: dict[str, Any]) -> None:
    assert PLANS.plan(query, None) is None


async def test_arguments_the_general_path_rejects_are_left_to_it(world: World, pool: AsyncConnectionPool[Any]) -> None:
    query = f"query($brand: String!, $first: Int!, $after: String) {{ {PAGE_ARGS} {{ totalCount }} }}"
    plan = PLANS.plan(query, None)
    assert plan is not None
    needs = Needs(brands=ScopedBrands(BrandDirectory(), None), pool=pool, principal=MASKED)
    assert await PLANS.answer(plan, {"brand": world.brand, "first": 1}, needs) is not None
    for variables in (
        {"brand": "no_such_brand", "first": 1},
        {"brand": world.brand, "first": 101},
        {"brand": world.brand, "first": 1, "after": "garbage"},
        {"brand": world.brand, "first": "one"},
    ):
        assert await PLANS.answer(plan, variables, needs) is None, variables


async def test_http_answers_both_paths_alike(
    masked_gql: GraphQL, world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    answered: list[bytes | None] = []
    real = Plans.answer

    async def counted(self: Plans, plan: Plan, variables: Any, needs: Needs) -> bytes | None:
        answered.append(await real(self, plan, variables, needs))
        return answered[-1]

    monkeypatch.setattr(Plans, "answer", counted)
    compiled = await masked_gql.raw("query($id: ID!) { member(id: $id) { id tier { code } } }", id=world.member_ids[1])
    assert compiled == {"data": {"member": {"id": world.member_ids[1], "tier": {"code": "silver"}}}}
    assert len(answered) == 1  # the endpoint took the compiled path
    assert answered[0] is not None
    error = await masked_gql.raw('query { members(brand: "no_such_brand") { totalCount } }')
    assert error["data"] is None
    assert error["errors"][0]["extensions"]["code"] == "UNKNOWN_BRAND"
    assert answered[1] is None  # declined, and strawberry reported the error


async def test_tags_leave_out_expired_assignments(world: World, pool: AsyncConnectionPool[Any]) -> None:
    query = "query($id: ID!) { member(id: $id) { tags { code category source assignedAt expiresAt } } }"
    for member_id in world.member_ids[:2]:
        compiled, general = await _both(query, {"id": member_id}, pool)
        assert compiled == general
    # Member 0's own assignments expired; it carries only what the merge brought from member 5 (none).
    assert [t["code"] for t in compiled["member"]["tags"]] == ["app_user", "lapsed", "vip"]
    assert (await _both(query, {"id": world.member_ids[0]}, pool))[0]["member"]["tags"] == []


def test_remembered_documents_are_bounded_by_their_text() -> None:
    """Large distinct documents are forgotten oldest first once their text passes MAX_TEXT: each
    keeps a syntax tree alive that every full garbage collection walks."""
    computed: list[str] = []

    def compute(document: str, operation_name: str | None) -> str:
        computed.append(document)
        return document[:1]

    memo: Memo[str] = Memo(compute)
    big = [letter * (MAX_TEXT // 3) for letter in "abcd"]
    for document in big:
        assert memo.get(document, None) == document[0]
    assert memo.get(big[3], None) == "d"  # remembered
    assert memo.get(big[1], None) == "b"  # remembered
    assert len(computed) == 4
    assert memo.get(big[0], None) == "a"  # forgotten for the fourth: computed again
    assert len(computed) == 5

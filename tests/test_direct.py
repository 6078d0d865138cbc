"""Planned mutations (resolvers.direct) answer exactly what strawberry's executor answers.

A posting has side effects, so the two paths are compared through idempotency: the direct path
posts, then strawberry answers the same request again (a replay), then the direct path replays
it too; apart from `replayed` the three answers must agree. Refusals change nothing and are
compared as they are.
"""

from __future__ import annotations

import json
import re
import secrets
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg_pool import AsyncConnectionPool

from resolvers.context import Context
from resolvers.direct import DirectMutations, MutationPlan
from schema.root import build_schema
from store.brands import BrandDirectory
from tests.conftest import ADMIN, ROOT, GraphQL, make_context, new_brand
from tests.fragments import EARN, REGISTER
from tests.test_sqljson import SMALL_MEMBER, Graph, selections

SCHEMA = build_schema()
DIRECT = DirectMutations(SCHEMA, SCHEMA.documents)
ENTRY: Graph = dict.fromkeys(["kind", "amount", "balanceAfter", "note", "createdAt", "__typename"])
POSTED: Graph = {  # `replayed` is always selected, unaliased, for `_fresh`
    "__typename": None,
    "posting": {
        **dict.fromkeys(["id", "operation", "idempotencyKey", "channel", "reason", "actor", "createdAt"]),
        "entries": ENTRY,
    },
    "member": {**SMALL_MEMBER, "identities": {"channel": None, "externalId": None}},
}
ERRORS = [
    "... on Error { code message field }",
    "... on InsufficientPoints { available }",
    "... on AlreadyMerged { survivorId }",
    "__typename",
]
BRANDS = BrandDirectory()


def _context(pool: AsyncConnectionPool[Any]) -> Context:
    return make_context(pool, ADMIN, BRANDS)


async def _direct(query: str, variables: dict[str, Any], pool: AsyncConnectionPool[Any]) -> Any:
    plan = DIRECT.plan(query, None)
    assert plan is not None, f"not planned: {query}"
    body = await DIRECT.answer(plan, variables, _context(pool))
    assert body is not None
    return json.loads(body)


async def _general(query: str, variables: dict[str, Any], pool: AsyncConnectionPool[Any]) -> Any:
    result = await SCHEMA.execute(query, variable_values=variables, context_value=_context(pool))
    assert result.errors is None, result.errors
    return {"data": result.data}


def _fresh(answer: Any) -> Any:
    """The answer as a replay would give it: every `replayed` true."""
    text = json.dumps(answer).replace('"replayed": false', '"replayed": true')
    return json.loads(text)


@pytest.fixture(scope="module")
async def member(client: Any, pool: AsyncConnectionPool[Any]) -> tuple[str, str]:
    gql = GraphQL(client)
    brand = await new_brand(pool)
    registered = await gql(REGISTER, brand=brand, channel="pos", externalId="card-1", phone="13900139000", city="上海")
    member_id = registered["registerMember"]["member"]["id"]
    await gql(EARN, brand=brand, memberId=member_id, amount=1000, key="seed", reason="seed")
    return brand, member_id


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
async def test_postings_match_the_general_path(
    data: st.DataObject, member: tuple[str, str], pool: AsyncConnectionPool[Any]
) -> None:
    brand, member_id = member
    field = data.draw(st.sampled_from(["earnPoints", "redeemPoints"]))
    payload = "replayed " + data.draw(selections(POSTED, "PointsPosted"))
    possible = ERRORS if field == "redeemPoints" else [e for e in ERRORS if "InsufficientPoints" not in e]
    errors = " ".join(data.draw(st.lists(st.sampled_from(possible), min_size=1, unique=True)))
    target = data.draw(st.sampled_from([member_id, member_id, "999999999", "x"]))
    amount = data.draw(st.sampled_from([1, 3, 0, 10**9 + 1]))  # the last two are refused
    query = (
        "mutation($brand: String!, $member: ID!, $amount: Int!, $key: String!) {"
        f' {field}(brand: $brand, memberId: $member, amount: $amount, idempotencyKey: $key, reason: "test")'
        f" {{ ... on PointsPosted {{ {payload} }} {errors} }} }}"
    )
    variables = {"brand": brand, "member": target, "amount": amount, "key": secrets.token_hex(8)}
    direct = await _direct(query, variables, pool)
    general = await _general(query, variables, pool)
    assert _fresh(direct) == general
    assert await _direct(query, variables, pool) == general


async def test_refusals_match_the_general_path(member: tuple[str, str], pool: AsyncConnectionPool[Any]) -> None:
    brand, member_id = member
    query = """mutation($brand: String!, $member: ID!, $amount: Int!, $key: String!) {
      redeemPoints(brand: $brand, memberId: $member, amount: $amount, idempotencyKey: $key) {
        __typename ... on Error { code message field } ... on InsufficientPoints { available } } }"""
    for variables in (
        {"brand": brand, "member": member_id, "amount": 10**9, "key": "too-much"},
        {"brand": "no_such_brand", "member": member_id, "amount": 1, "key": "k"},
        {"brand": brand, "member": member_id, "amount": 0, "key": "k"},
        {"brand": brand, "member": member_id, "amount": 1, "key": " padded "},
        {"brand": brand, "member": "12x", "amount": 1, "key": "k"},
    ):
        direct = await _direct(query, variables, pool)
        assert direct == await _general(query, variables, pool)
        assert direct["data"]["redeemPoints"]["__typename"] != "PointsPosted"


def test_what_has_no_plan_takes_the_general_path() -> None:
    for query in (
        "query { __typename }",  # a read
        'mutation { registerMember(brand: "b", channel: "pos", externalId: "1", gender: MALE) { __typename } }',
        "mutation($x: Boolean!) { __typename @include(if: $x) }",
        "mutation { nope }",
    ):
        assert DIRECT.plan(query, None) is None, query


async def test_bad_variables_run_nothing(member: tuple[str, str], pool: AsyncConnectionPool[Any]) -> None:
    brand, member_id = member
    query = f'mutation($amount: Int!) {{ earnPoints(brand: "{brand}", memberId: "{member_id}", amount: $amount,'
    query += ' idempotencyKey: "v") { __typename } }'
    plan = DIRECT.plan(query, None)
    assert plan is not None
    assert await DIRECT.answer(plan, {"amount": "many"}, _context(pool)) is None
    async with pool.connection() as conn:
        cursor = await conn.execute("SELECT count(*) FROM points_postings WHERE idempotency_key = 'v'")
        assert await cursor.fetchone() == (0,)


def test_resolvers_read_nothing_of_info_but_its_context() -> None:
    """Planned mutations hand resolvers an Info with only `context` (resolvers.direct._Info)."""
    uses = [
        f"{path.relative_to(ROOT)}: {match.group(0)}"
        for folder in ("schema", "resolvers")
        for path in sorted((ROOT / folder).rglob("*.py"))
        for match in re.finditer(r"\binfo\.(?!context\b)\w+", path.read_text())
    ]
    assert uses == []


async def test_http_plans_mutations(gql: GraphQL, member: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    """The endpoint answers a planned mutation itself and leaves the rest to strawberry."""
    brand, member_id = member
    answered: list[bytes | None] = []
    real = DirectMutations.answer

    async def counted(self: DirectMutations, plan: MutationPlan, variables: Any, context: Context) -> bytes | None:
        answered.append(await real(self, plan, variables, context))
        return answered[-1]

    monkeypatch.setattr(DirectMutations, "answer", counted)
    posted = await gql(EARN, brand=brand, memberId=member_id, amount=1, key="http-planned", reason="test")
    assert posted["earnPoints"]["__typename"] == "PointsPosted"
    assert len(answered) == 1
    assert answered[0] is not None
    registered = await gql(REGISTER, brand=brand, channel="pos", externalId="card-http", gender="MALE")
    assert registered["registerMember"]["__typename"] == "MemberRegistered"
    assert len(answered) == 1  # an enum argument: strawberry's path


@pytest.mark.parametrize(
    ("arguments", "variables"),
    [
        ('amount: $amount, paidAt: $paidAt, store: "s-1"', {"amount": "88.50", "paidAt": "2026-01-02T03:04:05Z"}),
        (
            "amount: $amount, paidAt: $paidAt, store: $store",
            {"amount": 12, "paidAt": "2026-01-02T03:04:05+08:00", "store": "s-2"},
        ),
        ('amount: "7.25", paidAt: $paidAt, store: $store', {"paidAt": "2026-01-02T03:04:05Z", "store": None}),
    ],
)
async def test_orders_match_the_general_path(
    arguments: str, variables: dict[str, Any], member: tuple[str, str], pool: AsyncConnectionPool[Any]
) -> None:
    """Scalars other than strings (Decimal, DateTime), constants and nulls take the same values."""
    brand, member_id = member
    declared = {"amount": "Decimal!", "paidAt": "DateTime!", "store": "String"}
    signature = ", ".join(f"${name}: {declared[name]}" for name in variables)
    query = (
        f"mutation($brand: String!, $member: ID!, $order: String!, {signature}) {{"
        f' recordOrder(brand: $brand, channel: "pos", externalOrderId: $order, memberId: $member, {arguments})'
        " { __typename ... on OrderRecorded { replayed order { amount paidAt store pointsEarned } }"
        " ... on Error { code message field } } }"
    )
    sent = {"brand": brand, "member": member_id, "order": secrets.token_hex(8), **variables}
    plan = DIRECT.plan(query, None)
    assert plan is not None
    direct = await _direct(query, sent, pool)
    assert direct["data"]["recordOrder"]["__typename"] == "OrderRecorded", direct
    assert _fresh(direct) == await _general(query, sent, pool)

"""Argument values an attacker sent at 9bd6195 (issue 12, items 5 and 6): each is refused as
INVALID_INPUT naming the argument, on the planned-mutation path (resolvers.direct) and strawberry's
alike, and nothing is written.

Found then: `amount: "NaN"` answered "Unexpected error."; a `paidAt` in year 0001 was recorded (and
with another offset crashed, or made the member unreadable); a `paidAt` without a zone was read as UTC;
a 1 MB `reason` was stored; an `expiresAt` in year 9999 crashed; a cursor holding a huge key
crashed its page.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import secrets
from typing import Any

import httpx
import pytest
from graphql import GraphQLNamedType, GraphQLObjectType, get_named_type
from psycopg_pool import AsyncConnectionPool

from resolvers.context import Context
from resolvers.direct import DirectMutations
from schema import inputs
from schema.root import build_schema
from store.brands import BrandDirectory
from store.ledger.journal import MAX_KEY
from store.members.merges import MAX_REASON
from store.members.unification import MAX_EXTERNAL_ID, MAX_TEXT
from tests.audience_seed import catch_up
from tests.conftest import ADMIN, GraphQL, make_context, new_brand
from tests.fragments import REGISTER

SCHEMA = build_schema()
DIRECT = DirectMutations(SCHEMA, SCHEMA.documents)
BRANDS = BrandDirectory()
ERROR = "__typename ... on Error { code message field }"

ORDER = f"""mutation($brand: String!, $order: String!, $member: ID, $buyer: String, $amount: Decimal!,
                     $paidAt: DateTime!, $store: String) {{
  recordOrder(brand: $brand, channel: "tmall", externalOrderId: $order, memberId: $member, buyerId: $buyer,
              amount: $amount, paidAt: $paidAt, store: $store) {{ {ERROR} }}
}}"""
REFUND = f"""mutation($brand: String!, $order: String!, $amount: Decimal, $key: String!, $reason: String) {{
  refundOrder(brand: $brand, channel: "tmall", externalOrderId: $order, amount: $amount, idempotencyKey: $key,
              reason: $reason) {{ {ERROR} }}
}}"""
TAG = f"""mutation($brand: String!, $ids: [ID!], $expiresAt: DateTime) {{
  tagMembers(brand: $brand, tag: "vip", memberIds: $ids, expiresAt: $expiresAt) {{ {ERROR} }}
}}"""


def _context(pool: AsyncConnectionPool[Any]) -> Context:
    return make_context(pool, ADMIN, BRANDS)


async def _on_both_paths(query: str, variables: dict[str, Any], pool: AsyncConnectionPool[Any]) -> list[Any]:
    """The mutation's `data` answered by resolvers.direct and by strawberry's executor."""
    plan = DIRECT.plan(query, None)
    assert plan is not None, "not a planned mutation"
    body = await DIRECT.answer(plan, variables, _context(pool))
    assert body is not None
    direct = json.loads(body)
    general = await SCHEMA.execute(query, variable_values=variables, context_value=_context(pool))
    assert general.errors is None, general.errors
    return [direct["data"], general.data]


def _refused(data: Any, field: str, mutation: str) -> None:
    answer = data[mutation]
    assert (answer["__typename"], answer["code"], answer["field"]) == ("InvalidInput", "INVALID_INPUT", field), answer


@pytest.fixture(scope="module")
async def member(client: httpx.AsyncClient, pool: AsyncConnectionPool[Any]) -> tuple[str, str]:
    brand = await new_brand(pool)
    gql = GraphQL(client)
    registered = await gql(REGISTER, brand=brand, channel="tmall", externalId="tb-1")
    return brand, registered["registerMember"]["member"]["id"]


async def _recorded(pool: AsyncConnectionPool[Any], order: str) -> bool:
    async with pool.connection() as conn:
        cursor = await conn.execute("SELECT 1 FROM orders WHERE external_order_id = %s", (order,))
        return await cursor.fetchone() is not None


# --- item 5: Decimal amounts that are no amount -----------------------------------------------------

NOT_AMOUNTS = ["NaN", "sNaN", "-NaN", "Infinity", "-Infinity", "-0", "0", "1e999", "1E+999999999", "1.001", "-5"]


@pytest.mark.parametrize("amount", NOT_AMOUNTS)
async def test_an_order_amount_that_is_no_amount_is_invalid_input(
    amount: str, member: tuple[str, str], pool: AsyncConnectionPool[Any]
) -> None:
    brand, member_id = member
    order = secrets.token_hex(6)
    variables = {"brand": brand, "member": member_id, "amount": amount, "paidAt": "2026-01-02T10:00:00+08:00"}
    for data in await _on_both_paths(ORDER, {**variables, "order": order}, pool):
        _refused(data, "amount", "recordOrder")
    assert not await _recorded(pool, order)


@pytest.mark.parametrize("amount", NOT_AMOUNTS)
async def test_a_refund_amount_that_is_no_amount_is_invalid_input(
    amount: str, member: tuple[str, str], pool: AsyncConnectionPool[Any], gql: GraphQL
) -> None:
    brand, member_id = member
    order = secrets.token_hex(6)
    placed = {"brand": brand, "member": member_id, "amount": "100", "paidAt": "2026-01-02T10:00:00+08:00"}
    assert (await gql(ORDER, **placed, order=order))["recordOrder"]["__typename"] == "OrderRecorded"
    for data in await _on_both_paths(REFUND, {"brand": brand, "order": order, "amount": amount, "key": order}, pool):
        _refused(data, "amount", "refundOrder")


async def test_amounts_written_in_the_document_and_as_json_numbers(member: tuple[str, str], gql: GraphQL) -> None:
    """A literal `"NaN"` in the document, and a JSON `NaN` token (Python's json reads it), too."""
    brand, member_id = member
    literal = ORDER.replace("$amount: Decimal!,", "").replace("amount: $amount", 'amount: "NaN"')
    sent = {"brand": brand, "member": member_id, "paidAt": "2026-01-02T10:00:00Z", "order": secrets.token_hex(6)}
    _refused(await gql(literal, **sent), "amount", "recordOrder")
    body = json.dumps({"query": ORDER, "variables": {**sent, "amount": float("nan")}})
    assert "NaN" in body
    response = await gql.http.post("/graphql", content=body, headers={"content-type": "application/json"})
    _refused(response.json()["data"], "amount", "recordOrder")


# --- item 6: one range for days and moments, and moments with their offset ---------------------------

OUT_OF_RANGE = [
    "0001-01-01T00:00:00+00:00",  # was recorded: an order whose lot expired before it was earned
    "0001-01-01T00:00:00+12:00",  # was "Unexpected error." (a timestamp before year 1 in UTC)
    "1899-12-31T23:59:59+08:00",  # was recorded: the index clamps it to 1900-01-01
    "1900-01-01T23:59:59.999999Z",  # 1899-12-31 in the western zones: outside the index there
    "9999-12-31T23:59:59-12:00",
]


@pytest.mark.parametrize("paid_at", [*OUT_OF_RANGE, "2026-01-02T10:00:00"])
async def test_a_paid_at_outside_the_range_or_without_a_zone_is_invalid_input(
    paid_at: str, member: tuple[str, str], pool: AsyncConnectionPool[Any]
) -> None:
    brand, member_id = member
    order = secrets.token_hex(6)
    variables = {"brand": brand, "member": member_id, "amount": "10", "paidAt": paid_at}
    for data in await _on_both_paths(ORDER, {**variables, "order": order}, pool):
        _refused(data, "paidAt", "recordOrder")
        assert "offset" in data["recordOrder"]["message"] or "between" in data["recordOrder"]["message"]
    assert not await _recorded(pool, order)


@pytest.mark.parametrize("expires_at", [*OUT_OF_RANGE[-1:], "2100-01-01T00:00:00Z", "2030-01-01T00:00:00"])
async def test_an_expires_at_outside_the_range_or_without_a_zone_is_invalid_input(
    expires_at: str, gql: GraphQL, pool: AsyncConnectionPool[Any]
) -> None:
    brand = await new_brand(pool)
    await gql(
        'mutation($b: String!) { defineTag(brand: $b, code: "vip", name: "VIP", category: RFM) { __typename } }',
        b=brand,
    )
    member_id = (await gql(REGISTER, brand=brand, channel="pos", externalId="c-1"))["registerMember"]["member"]["id"]
    for data in await _on_both_paths(TAG, {"brand": brand, "ids": [member_id], "expiresAt": expires_at}, pool):
        _refused(data, "expiresAt", "tagMembers")
    assert (await gql(TAG, brand=brand, ids=[member_id], expiresAt="2079-06-05T00:00:00Z"))["tagMembers"] == {
        "__typename": "MembersTagged"
    }


def test_the_range_is_the_audience_index_range() -> None:
    assert dt.date(1900, 1, 1) == inputs.FIRST_DAY
    assert dt.date(2079, 6, 6) == inputs.LAST_DAY
    # A moment in range is in range on every zone's calendar (offsets are under a day).
    for moment in (inputs.EARLIEST, inputs.LATEST):
        for hours in (-23, -12, 0, 14, 23):
            local = moment.astimezone(dt.timezone(dt.timedelta(hours=hours))).date()
            assert inputs.FIRST_DAY <= local <= inputs.LAST_DAY


WHY = """query($brand: String!, $expression: String!, $id: ID!) {
  audience(brand: $brand, expression: $expression) { count whyMember(id: $id) { matches } }
}"""


async def test_the_earliest_payment_is_counted_as_why_member_says(gql: GraphQL, pool: AsyncConnectionPool[Any]) -> None:
    """In a zone west of UTC the earliest moment accepted falls on the index's first day, which it holds
    exactly: the count and whyMember agree on either side of it."""
    brand = await new_brand(pool)
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE brand_rules SET timezone = 'America/Los_Angeles' FROM brands b"
            " WHERE b.id = brand_rules.brand_id AND b.code = %s",
            (brand,),
        )
        cursor = await conn.execute("SELECT id FROM brands WHERE code = %s", (brand,))
        brand_id = (await cursor.fetchone() or (0,))[0]
    member_id = (await gql(REGISTER, brand=brand, channel="tmall", externalId="old"))["registerMember"]["member"]["id"]
    sent = {"brand": brand, "member": member_id, "amount": "10", "order": "o-1"}
    assert (await gql(ORDER, **sent, paidAt="1900-01-02T00:00:00Z"))["recordOrder"]["__typename"] == "OrderRecorded"
    await catch_up(pool, brand_id)
    for expression, inside in [
        ("last_purchase <= 1900-01-01", True),
        ("last_purchase < 1900-01-01", False),
        ("last_purchase >= 1900-01-02", False),
    ]:
        found = (await gql(WHY, brand=brand, expression=expression, id=member_id))["audience"]
        assert (found["count"], found["whyMember"]["matches"]) == (int(inside), inside), expression


# --- item 6: every free-text argument has a maximum --------------------------------------------------

# (mutation, argument, the most characters it takes); one character more is INVALID_INPUT naming it.
LIMITS = [
    ("earnPoints", "reason", inputs.REASON),
    ("redeemPoints", "reason", inputs.REASON),
    ("cancelRedemption", "reason", inputs.REASON),
    ("adjustPoints", "reason", inputs.REASON),
    ("refundOrder", "reason", inputs.REASON),
    ("refundOrder", "externalOrderId", inputs.EXTERNAL_ID),
    ("recordOrder", "externalOrderId", inputs.EXTERNAL_ID),
    ("recordOrder", "buyerId", inputs.EXTERNAL_ID),
    ("recordOrder", "store", inputs.STORE),
    ("createBrand", "name", 100),
    ("createBrand", "groupName", inputs.GROUP_NAME),
    ("registerMember", "externalId", MAX_EXTERNAL_ID),
    ("registerMember", "displayName", MAX_TEXT),
    ("registerMember", "city", MAX_TEXT),
    ("bindIdentity", "externalId", MAX_EXTERNAL_ID),
    ("mergeMembers", "reason", MAX_REASON),
    ("eraseMember", "reason", MAX_REASON),
    ("earnPoints", "idempotencyKey", MAX_KEY),
    ("defineTag", "name", 100),
    ("saveAudience", "name", 200),
    ("setConsent", "source", 200),
    ("setGuardianConsent", "source", 200),
]
# String arguments that name something (a lookup answers UNKNOWN_*, or the form is checked: a code,
# a phone, an expression of at most 4,000 characters), so their length is bounded by what they name.
NAMES = {
    "brand", "channel", "tag", "code", "group", "phone", "expression", "where", "idempotencyKey", "tiers", "rule",
}  # fmt: skip


def test_every_text_argument_of_a_mutation_is_bounded() -> None:
    """A new free-text argument must join LIMITS (with its check) or NAMES."""
    mutation = SCHEMA._schema.mutation_type
    assert isinstance(mutation, GraphQLObjectType)
    limited = {(field, argument) for field, argument, _ in LIMITS}
    unbounded = [
        f"{name}.{argument}"
        for name, field in mutation.fields.items()
        for argument, definition in field.args.items()
        if _named(definition.type).name == "String"
        if (name, argument) not in limited and argument not in NAMES
    ]
    assert unbounded == []


def _named(graphql_type: Any) -> GraphQLNamedType:
    named: GraphQLNamedType = get_named_type(graphql_type)
    return named


def test_the_limits_are_the_data_layers_where_both_check() -> None:
    assert inputs.EXTERNAL_ID == MAX_EXTERNAL_ID
    assert inputs.REASON == MAX_REASON


async def _call(gql: GraphQL, pool: AsyncConnectionPool[Any], mutation: str, argument: str, value: str) -> Any:
    """`mutation` with valid arguments but `argument`, which is `value`."""
    brand = await new_brand(pool)
    member_id = (await gql(REGISTER, brand=brand, channel="pos", externalId="c-1"))["registerMember"]["member"]["id"]
    other = (await gql(REGISTER, brand=brand, channel="pos", externalId="c-2"))["registerMember"]["member"]["id"]
    paid = "2026-01-02T10:00:00+08:00"
    await gql(ORDER, brand=brand, order="o-1", member=member_id, amount="10", paidAt=paid)
    calls: dict[str, tuple[str, dict[str, Any]]] = {
        "earnPoints": (
            "earnPoints(brand: $brand, memberId: $member, amount: 1, idempotencyKey: $idempotencyKey, reason: $reason)",
            {"idempotencyKey": "k", "reason": "r"},
        ),
        "redeemPoints": (
            "redeemPoints(brand: $brand, memberId: $member, amount: 1, idempotencyKey: $idempotencyKey,"
            " reason: $reason)",
            {"idempotencyKey": "k", "reason": "r"},
        ),
        "cancelRedemption": (
            'cancelRedemption(brand: $brand, postingId: "1", idempotencyKey: $idempotencyKey, reason: $reason)',
            {"idempotencyKey": "k", "reason": "r"},
        ),
        "adjustPoints": (
            "adjustPoints(brand: $brand, memberId: $member, delta: 1, idempotencyKey: $idempotencyKey,"
            " reason: $reason)",
            {"idempotencyKey": "k", "reason": "r"},
        ),
        "refundOrder": (
            'refundOrder(brand: $brand, channel: "tmall", externalOrderId: $externalOrderId,'
            " idempotencyKey: $idempotencyKey, reason: $reason)",
            {"externalOrderId": "o-1", "idempotencyKey": "k", "reason": "r"},
        ),
        "recordOrder": (
            'recordOrder(brand: $brand, channel: "tmall", externalOrderId: $externalOrderId, amount: "1",'
            f' paidAt: "{paid}", memberId: $memberId, buyerId: $buyerId, store: $store)',
            {"externalOrderId": "o-2", "memberId": member_id, "buyerId": None, "store": "s-1"},
        ),
        "createBrand": (
            "createBrand(code: $code, name: $name, group: $code, groupName: $groupName)",
            {"code": f"zz{secrets.token_hex(4)}", "name": "n", "groupName": "g"},
        ),
        "registerMember": (
            'registerMember(brand: $brand, channel: "jd", externalId: $externalId, displayName: $displayName,'
            " city: $city)",
            {"externalId": "j-1", "displayName": "d", "city": "c"},
        ),
        "bindIdentity": (
            'bindIdentity(brand: $brand, channel: "jd", externalId: $externalId, memberId: $member)',
            {"externalId": "j-2"},
        ),
        "mergeMembers": ("mergeMembers(survivorId: $member, mergedId: $other, reason: $reason)", {"reason": "r"}),
        "eraseMember": ("eraseMember(brand: $brand, memberId: $member, reason: $reason)", {"reason": "r"}),
        "defineTag": ("defineTag(brand: $brand, code: $code, name: $name, category: RFM)", {"code": "t", "name": "n"}),
        "saveAudience": ('saveAudience(brand: $brand, name: $name, expression: "tier:silver")', {"name": "n"}),
        "setConsent": (
            "setConsent(brand: $brand, memberId: $member, channel: SMS, granted: true, source: $source)",
            {"source": "s"},
        ),
        "setGuardianConsent": (
            "setGuardianConsent(brand: $brand, memberId: $member, granted: true, source: $source)",
            {"source": "s"},
        ),
    }
    call, values = calls[mutation]
    if mutation == "recordOrder" and argument == "buyerId":
        values = {**values, "memberId": None}
    values = {"brand": brand, "member": member_id, "other": other, **values, argument: value}
    used = {name: value for name, value in values.items() if re.search(rf"\${name}\b", call)}
    types = {"member": "ID", "other": "ID", "memberId": "ID"}
    signature = ", ".join(f"${n}: {types.get(n, 'String')}{'' if v is None else '!'}" for n, v in used.items())
    return (await gql(f"mutation({signature}) {{ {call} {{ {ERROR} }} }}", **used))[mutation]


@pytest.mark.parametrize(("mutation", "argument", "most"), LIMITS)
async def test_text_longer_than_its_limit_is_invalid_input(
    mutation: str, argument: str, most: int, gql: GraphQL, pool: AsyncConnectionPool[Any]
) -> None:
    refused = await _call(gql, pool, mutation, argument, "x" * (most + 1))
    assert (refused["code"], refused["field"]) == ("INVALID_INPUT", argument), refused
    assert f"1-{most}" in refused["message"]


@pytest.mark.parametrize(("mutation", "argument", "most"), [row for row in LIMITS if row[1] != "idempotencyKey"])
async def test_text_at_its_limit_is_taken(
    mutation: str, argument: str, most: int, gql: GraphQL, pool: AsyncConnectionPool[Any]
) -> None:
    taken = await _call(gql, pool, mutation, argument, "x" * most)
    assert (taken.get("code"), taken.get("field")) != ("INVALID_INPUT", argument), taken


async def test_a_megabyte_reason_is_not_stored(
    member: tuple[str, str], gql: GraphQL, pool: AsyncConnectionPool[Any]
) -> None:
    brand, member_id = member
    earn = f"""mutation($brand: String!, $member: ID!, $reason: String) {{
      earnPoints(brand: $brand, memberId: $member, amount: 1, idempotencyKey: "big", reason: $reason) {{ {ERROR} }}
    }}"""
    _refused(await gql(earn, brand=brand, member=member_id, reason="x" * 1_000_000), "reason", "earnPoints")
    _refused(await gql(earn, brand=brand, member=member_id, reason="  "), "reason", "earnPoints")
    async with pool.connection() as conn:
        cursor = await conn.execute("SELECT count(*) FROM points_postings WHERE idempotency_key = 'big'")
        assert await cursor.fetchone() == (0,)


async def test_a_new_brand_takes_at_most_twenty_tiers(gql: GraphQL) -> None:
    create = f"""mutation($code: String!, $tiers: [String!]) {{
      createBrand(code: $code, name: "n", group: $code, tiers: $tiers) {{ {ERROR} }}
    }}"""
    code = f"zz{secrets.token_hex(4)}"
    _refused(await gql(create, code=code, tiers=[f"t{i}" for i in range(inputs.TIERS + 1)]), "tiers", "createBrand")
    taken = await gql(create, code=code, tiers=[f"t{i}" for i in range(inputs.TIERS)])
    assert taken["createBrand"] == {"__typename": "BrandCreated"}


async def test_the_order_arguments_are_named_in_refusals(member: tuple[str, str], gql: GraphQL) -> None:
    """They were reported as `externalId`, an argument recordOrder does not have."""
    brand, member_id = member
    sent = {"brand": brand, "amount": "1", "paidAt": "2026-01-02T10:00:00Z"}
    _refused(await gql(ORDER, **sent, order="o-x", buyer=""), "buyerId", "recordOrder")
    _refused(await gql(ORDER, **sent, order="", member=member_id), "externalOrderId", "recordOrder")


# --- cursors that no page gave -----------------------------------------------------------------------


def _cursor(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    ("query", "cursor"),
    [
        ("members(brand: $brand, first: 1, after: $after) { nodes { id } }", "member:99999999999999999999"),
        (
            'members(brand: $brand, first: 1, after: $after, where: "tier:silver") { nodes { id } }',
            "member:99999999999999999999",
        ),
        ('audience(brand: $brand, expression: "tier:silver") { sample(first: 1, after: $after) { nodes { id } } }',
         "member:999999999999999"),
        ("member(id: $member) { orders(first: 1, after: $after) { nodes { id } } }", "order:99999999999999999999:1"),
        ("member(id: $member) { orders(first: 1, after: $after) { nodes { id } } }", "order:1:99999999999999999999"),
        ("member(id: $member) { pointsHistory(first: 1, after: $after) { nodes { id } } }",
         "entry:99999999999999999999"),
    ],
)  # fmt: skip
async def test_a_cursor_with_keys_no_row_can_have_is_invalid_input(
    query: str, cursor: str, member: tuple[str, str], gql: GraphQL
) -> None:
    brand, member_id = member
    used = [name for name in ("brand", "member") if f"${name}" in query]
    signature = ", ".join(["$after: String", *(f"${n}: {'ID!' if n == 'member' else 'String!'}" for n in used)])
    values = {"brand": brand, "member": member_id, "after": _cursor(cursor)}
    body = await gql.raw(f"query({signature}) {{ {query} }}", **{n: values[n] for n in [*used, "after"]})
    assert [error["extensions"] for error in body["errors"]] == [{"code": "INVALID_INPUT", "field": "after"}]

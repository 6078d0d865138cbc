"""recordOrder with lines (issue 15): stored with the order, checked line by line, idempotent, and
counted by the purchase behaviour terms of audiences once the index has applied them."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from psycopg_pool import AsyncConnectionPool

from store.audiences import engine
from store.audiences.catalogs import load_catalog
from store.audiences.deltas import apply_brand
from store.brands import brand_by_code
from tagquery import bind, parse
from tests.conftest import GraphQL
from tests.fragments import REGISTER

RECORD = """
mutation Order($brand: String!, $orderId: String!, $amount: Decimal!, $paidAt: DateTime!, $memberId: ID,
               $lines: [OrderLineInput!]) {
  recordOrder(brand: $brand, channel: "tmall", externalOrderId: $orderId, amount: $amount, paidAt: $paidAt,
              memberId: $memberId, lines: $lines) {
    __typename
    ... on OrderRecorded { replayed order { id } }
    ... on Error { code message field }
  }
}
"""
COUNT = "query C($brand: String!, $e: String!) { audience(brand: $brand, expression: $e) { count } }"
STAGE3 = {"sku": "FH-S3-800", "category": "stage3_formula", "quantity": 2, "amount": "398.00"}
PAID = (dt.datetime.now(dt.UTC) - dt.timedelta(days=3)).replace(microsecond=0)  # one paidAt: a retry sends the same
SNACK = {"sku": "SN-PUFF-01", "category": "snacks", "quantity": 1, "amount": "19.90"}


async def _member(gql: GraphQL, brand: str, external_id: str = "card-1") -> str:
    data = await gql(REGISTER, brand=brand, channel="pos", externalId=external_id, birthday=None)
    member_id: str = data["registerMember"]["member"]["id"]
    return member_id


async def _record(gql: GraphQL, brand: str, member: str, order: str, amount: str, lines: Any) -> dict[str, Any]:
    paid = PAID.isoformat()
    data = await gql(RECORD, brand=brand, orderId=order, amount=amount, paidAt=paid, memberId=member, lines=lines)
    result: dict[str, Any] = data["recordOrder"]
    return result


async def _lines(pool: AsyncConnectionPool[Any], brand: str) -> list[tuple[Any, ...]]:
    async with pool.connection() as conn:
        brand_id = (await brand_by_code(conn, brand))["id"]
        cursor = await conn.execute(
            "SELECT o.external_order_id, l.line, l.sku, l.category, l.quantity, l.amount::text"
            " FROM order_lines l JOIN orders o ON o.id = l.order_id WHERE o.brand_id = %s ORDER BY 1, 2",
            (brand_id,),
        )
        return list(await cursor.fetchall())


async def test_lines_are_stored_with_the_order_in_their_order(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    member = await _member(gql, brand)
    result = await _record(gql, brand, member, "T1", "500.00", [STAGE3, SNACK])
    assert result["__typename"] == "OrderRecorded", result
    assert await _lines(pool, brand) == [
        ("T1", 1, "FH-S3-800", "stage3_formula", 2, "398.00"),
        ("T1", 2, "SN-PUFF-01", "snacks", 1, "19.90"),
    ]


async def test_a_retry_with_the_same_lines_replays_and_other_lines_are_a_duplicate_request(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    member = await _member(gql, brand)
    first = await _record(gql, brand, member, "T2", "500.00", [STAGE3])
    again = await _record(gql, brand, member, "T2", "500.00", [{**STAGE3, "amount": "398"}])  # the same amount
    assert again["replayed"] is True
    assert again["order"]["id"] == first["order"]["id"]
    other = await _record(gql, brand, member, "T2", "500.00", [SNACK])
    assert (other["__typename"], other["code"]) == ("DuplicateRequest", "DUPLICATE_REQUEST")
    without = await _record(gql, brand, member, "T2", "500.00", None)
    assert without["__typename"] == "DuplicateRequest"
    assert await _lines(pool, brand) == [("T2", 1, "FH-S3-800", "stage3_formula", 2, "398.00")]


BAD_LINES = [
    ([{**STAGE3, "sku": "a:b"}], "lines[0].sku"),
    ([SNACK, {**STAGE3, "category": ""}], "lines[1].category"),
    ([{**STAGE3, "quantity": 0}], "lines[0].quantity"),
    ([{**STAGE3, "amount": "-1"}], "lines[0].amount"),
    ([{**STAGE3, "amount": "1.005"}], "lines[0].amount"),
    ([{**STAGE3, "amount": "NaN"}], "lines[0].amount"),
    ([STAGE3, STAGE3], "lines"),  # 796 yuan of lines in a 500-yuan order
    ([SNACK] * 201, "lines"),
]


async def test_bad_lines_are_refused_naming_the_line_and_nothing_is_written(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    member = await _member(gql, brand)
    for n, (lines, field) in enumerate(BAD_LINES):
        result = await _record(gql, brand, member, f"B{n}", "500.00", lines)
        assert (result["__typename"], result["code"], result["field"]) == ("InvalidInput", "INVALID_INPUT", field)
    assert await _lines(pool, brand) == []
    async with pool.connection() as conn:
        brand_id = (await brand_by_code(conn, brand))["id"]
        orders = await (await conn.execute("SELECT count(*) FROM orders WHERE brand_id = %s", (brand_id,))).fetchone()
    assert orders == (0,)


async def test_orders_recorded_at_once_keep_their_own_lines(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    """Concurrent orders go through the batched statement (store.ledger.batched_orders)."""
    members = [await _member(gql, brand, f"card-{n}") for n in range(6)]
    results = await asyncio.gather(
        *(
            _record(gql, brand, member, f"C{n}", "100.00", [{**SNACK, "sku": f"SN-{n}", "quantity": n + 1}])
            for n, member in enumerate(members)
        )
    )
    assert all(result["__typename"] == "OrderRecorded" for result in results)
    assert await _lines(pool, brand) == [(f"C{n}", 1, f"SN-{n}", "snacks", n + 1, "19.90") for n in range(6)]


async def test_an_order_with_lines_is_counted_by_purchase_terms(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    buyer, other = await _member(gql, brand), await _member(gql, brand, "card-2")
    await _record(gql, brand, buyer, "A1", "500.00", [STAGE3, SNACK])
    await _record(gql, brand, other, "A2", "30.00", None)
    async with pool.connection() as conn:
        await apply_brand(conn, (await brand_by_code(conn, brand))["id"], wait=True)
    expected = {
        "bought:stage3_formula WITHIN 90d": 1,
        "bought:FH-S3-800 AND NOT bought:snacks WITHIN 2d": 1,
        "bought:snacks WITHIN 2d": 0,
        "spend_90d >= 500": 1,
        "spend_90d:stage3_formula >= 300 AND spend_90d:snacks < 50": 1,
        "orders_30d >= 1": 2,
        "first_channel:tmall AND first_purchase WITHIN 30d": 2,
        "NOT bought IN (stage3_formula, snacks)": 1,
    }
    for expression, count in expected.items():
        await _count_eventually(gql, brand, expression, count)
    async with pool.connection() as conn:  # whyMember reads the same facts from the system of record
        catalog = await load_catalog(conn, (await brand_by_code(conn, brand))["id"])
        for expression in expected:
            bound = bind(parse(expression), catalog.catalog)
            ids = set((await engine.member_ids(conn, catalog, bound, catalog.today())).tolist())
            for member in (buyer, other):
                why = await engine.why_member(conn, catalog, bound, catalog.today(), int(member))
                assert why.matches == (int(member) in ids), (expression, member)


async def _count_eventually(gql: GraphQL, brand: str, expression: str, count: int) -> None:
    """The catalog (the products a brand's members bought) is cached for a few seconds per process."""
    for _ in range(30):
        body = await gql.raw(COUNT, brand=brand, e=expression)
        if "errors" not in body and body["data"]["audience"]["count"] == count:
            return
        await asyncio.sleep(0.25)
    raise AssertionError((expression, body))

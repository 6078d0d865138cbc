"""The purchase behaviour syntax (issue 15): windows on dated dimensions, qualified fields, spend
steps. Canonical text round trips, errors point at the problem and name the valid choices, and the
reference evaluator counts windows from the query's day."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given

from tagquery import ErrorCode, TagQueryError, bind, evaluate, from_filter, member_catalog, parse, to_text
from tagquery.ast import Compare, Dimension, In, Op, Unit
from tagquery.catalog import SPEND_STEPS
from tagquery.evaluate import Purchase
from tests.tagquery.strategies import syntax_trees, to_filter

CATALOG = member_catalog(
    tags={"vip": "VIP"},
    tiers=("silver", "gold"),
    channels=("tmall", "jd", "douyin", "pos"),
    cities=("上海",),
    statuses=("prospect", "member"),
    genders=("male", "female", "unknown"),
    lifecycles=("introduction", "growth", "mature", "at_risk", "churned"),
    products=("stage3_formula", "snacks", "tea", "FH-S3-800", "SN-PUFF"),
    categories=("stage3_formula", "snacks", "tea"),
)
TODAY = date(2026, 3, 31)

ROUND_TRIPS = {
    "bought:stage3_formula WITHIN 90d": Dimension("bought", "stage3_formula", (90, Unit.DAY)),
    "bought IN (snacks, tea) WITHIN 2w": In("bought", ("snacks", "tea"), None, (2, Unit.WEEK)),
    "spend_90d:stage3_formula >= 500": Compare("spend_90d", Op.GTE, "500", "stage3_formula"),
    'orders_30d:"odd name" IN (1, 2)': In("orders_30d", ("1", "2"), "odd name"),
    "first_channel:douyin": Dimension("first_channel", "douyin"),
}


@pytest.mark.parametrize(("text", "tree"), ROUND_TRIPS.items())
def test_new_terms_parse_to_their_tree_and_print_back(text: str, tree: Any) -> None:
    assert parse(text) == tree
    assert to_text(tree) == text
    assert from_filter(to_filter(tree)) == tree


@given(syntax_trees)
def test_any_tree_with_windows_and_qualifiers_prints_to_text_that_parses_back(tree: Any) -> None:
    assert parse(to_text(tree)) == tree


SYNTAX_ERRORS = [
    ("bought:x WITHIN", (1, 16), "expected a duration such as 30d, 12w, 6m or 1y, found end of input"),
    ("bought:x WITHIN 5", (1, 17), "expected a duration such as 30d, 12w, 6m or 1y, found '5'"),
    ("bought IN (a) WITHIN d30", (1, 22), "expected a duration"),
    ("spend_90d:snacks >=", (1, 20), "expected a value, found end of input"),
    ("spend_90d:snacks 500", (1, 18), "expected AND, OR or end of input, found '500'"),
]


@pytest.mark.parametrize(("text", "at", "message"), SYNTAX_ERRORS)
def test_syntax_errors_point_at_the_token(text: str, at: tuple[int, int], message: str) -> None:
    with pytest.raises(TagQueryError) as raised:
        parse(text)
    assert raised.value.code is ErrorCode.SYNTAX
    assert (raised.value.line, raised.value.column) == at
    assert raised.value.message.startswith(message)


BIND_ERRORS = [
    ("spend_91d >= 500", ErrorCode.UNKNOWN_FIELD, (1, 1), "spend has the windows spend_30d, spend_90d, spend_180d"),
    ("orders_7d >= 1", ErrorCode.UNKNOWN_FIELD, (1, 1), "orders has the windows orders_30d, orders_90d"),
    ("bought:stage4_formula", ErrorCode.UNKNOWN_VALUE, (1, 8), "did you mean 'stage3_formula'?"),
    ("bought:x WITHIN 1d", ErrorCode.UNKNOWN_VALUE, (1, 8), "expected one of FH-S3-800, SN-PUFF, snacks"),
    ("tier:gold WITHIN 30d", ErrorCode.TYPE_MISMATCH, (1, 1), "WITHIN after tier needs a dated dimension (bought)"),
    ("points IN (1) WITHIN 3d", ErrorCode.TYPE_MISMATCH, (1, 1), "WITHIN after points needs a dated dimension"),
    ("tag IN (vip) WITHIN 3d", ErrorCode.TYPE_MISMATCH, (1, 1), "WITHIN after tag needs a dated dimension"),
    ("bought:tea WITHIN 200y", ErrorCode.OUT_OF_RANGE, (1, 1), "a window of 200y reaches back more than"),
    ("spend_90d:milk >= 500", ErrorCode.UNKNOWN_VALUE, (1, 11), "expected one of snacks, stage3_formula, tea"),
    ("points:snacks >= 5", ErrorCode.TYPE_MISMATCH, (1, 8), "points takes no qualifier (fields that do: orders_"),
    ("tier:gold >= 5", ErrorCode.TYPE_MISMATCH, (1, 1), "tier is a dimension, not a field"),
    ("spend_90d >= 450", ErrorCode.OUT_OF_RANGE, (1, 14), "spend_90d is compared with one of the amounts 1, 50"),
    ("spend_90d > 500", ErrorCode.TYPE_MISMATCH, (1, 1), "spend_90d is compared with >= or < against one of"),
    ("spend_30d:tea BETWEEN 1 AND 50", ErrorCode.TYPE_MISMATCH, (1, 1), "spend_30d is compared with >= or <"),
    ("spend_30d IN (50)", ErrorCode.TYPE_MISMATCH, (1, 1), "spend_30d is compared with >= or <"),
    ("first_purchase >= 30d", ErrorCode.TYPE_MISMATCH, (1, 19), "first_purchase takes a date such as 2024-01-31"),
]


@pytest.mark.parametrize(("text", "code", "at", "message"), BIND_ERRORS)
def test_bind_errors_point_at_the_problem_and_name_the_choices(
    text: str, code: ErrorCode, at: tuple[int, int], message: str
) -> None:
    with pytest.raises(TagQueryError) as raised:
        bind(parse(text), CATALOG, source=text)
    assert raised.value.code is code
    assert (raised.value.line, raised.value.column) == at
    assert message in str(raised.value)


def test_an_unknown_product_lists_every_product_and_an_unknown_window_suggests_one() -> None:
    with pytest.raises(TagQueryError) as raised:
        bind(parse("bought:milk"), CATALOG, source="bought:milk")
    assert raised.value.valid_values == ("FH-S3-800", "SN-PUFF", "snacks", "stage3_formula", "tea")
    with pytest.raises(TagQueryError) as raised:
        bind(parse("spend_91d >= 50"), CATALOG, source="spend_91d >= 50")
    assert raised.value.suggestion == "spend_90d"


def test_a_catalog_without_products_has_no_purchase_terms() -> None:
    plain = member_catalog(
        tags={}, tiers=(), channels=("pos",), cities=(), statuses=(), genders=(), lifecycles=("growth",)
    )
    assert "bought" not in plain.dimensions
    assert "spend_90d" not in plain.fields
    assert "orders_365d" in plain.fields


def _member(*purchases: tuple[int, str, dict[str, str]], bought: dict[str, int] | None = None) -> dict[str, Any]:
    """Purchases as (days before TODAY, net spend, {category: net spend})."""
    return {
        "purchases": [
            Purchase(TODAY - timedelta(days=days), Decimal(spend), {c: Decimal(v) for c, v in categories.items()})
            for days, spend, categories in purchases
        ],
        "bought": {p: TODAY - timedelta(days=days) for p, days in (bought or {}).items()},
    }


def _holds(text: str, member: dict[str, Any]) -> bool:
    return evaluate(bind(parse(text), CATALOG), member, TODAY)


@pytest.mark.parametrize("days", [89, 90, 91])
def test_a_window_of_n_days_includes_the_purchase_n_days_ago_and_not_n_plus_one(days: int) -> None:
    member = _member((days, "500", {"snacks": "0"}), bought={"snacks": days})
    inside = days <= 90
    assert _holds("bought:snacks WITHIN 90d", member) is inside
    assert _holds("orders_90d >= 1", member) is inside
    assert _holds("orders_90d:snacks = 1", member) is inside
    assert _holds("spend_90d >= 500", member) is inside
    assert _holds("spend_90d:snacks < 1", member)  # a category with nothing left counts the order, not spend
    assert _holds("bought:snacks", member)


def test_spend_adds_up_several_orders_to_the_cent() -> None:
    member = _member((1, "299.99", {"tea": "99.99"}), (40, "0.01", {"tea": "0.01"}), (100, "900", {}))
    assert _holds("spend_30d >= 300", member) is False
    assert _holds("spend_90d >= 300", member)
    assert _holds("spend_30d:tea < 100 AND spend_90d:tea >= 100", member)
    assert _holds("spend_365d >= 1000 AND orders_365d = 3 AND orders_90d:tea = 2", member)


def test_members_without_orders_have_none_of_it() -> None:
    member = _member()
    assert _holds("NOT bought:tea AND orders_30d = 0 AND spend_365d < 1", member)
    assert _holds("NOT first_purchase >= 1900-01-01 AND NOT first_channel:pos", member)
    assert [step for step in SPEND_STEPS if step <= 50] == [Decimal(1), Decimal(50)]

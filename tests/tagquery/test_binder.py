"""Binding: names resolved against the catalog, values typed, duplicates dropped."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from tagquery import Catalog, ErrorCode, UnknownNameError, bind, parse
from tagquery.ast import Op, Unit
from tagquery.bound import (
    Bound,
    BoundAnd,
    BoundNot,
    BoundOr,
    FieldBetween,
    FieldCompare,
    FieldIn,
    FieldWithin,
    Membership,
)
from tagquery.catalog import MEMBER_FIELDS, DimensionSpec, FieldType
from tests.tagquery.strategies import CATALOG


def bound(text: str) -> Bound:
    return bind(parse(text), CATALOG, source=text)


def test_the_design_example_binds() -> None:
    assert bound("tier IN (platinum, diamond) AND points >= 1000 AND last_purchase WITHIN 30d") == BoundAnd(
        (
            Membership("tier", ("platinum", "diamond"), multi=False),
            FieldCompare("points", FieldType.INTEGER, Op.GTE, 1000),
            FieldWithin("last_purchase", 30, Unit.DAY),
        )
    )


def test_tags_are_a_set_valued_dimension_named_tag() -> None:
    assert bound("tag:price_sensitive") == Membership("tag", ("price_sensitive",), multi=True)
    assert bound("tag IN (churn_risk, likes_live)") == Membership("tag", ("churn_risk", "likes_live"), multi=True)


def test_channel_is_set_valued_and_tier_is_not() -> None:
    assert bound("channel:tmall OR tier:gold") == BoundOr(
        (Membership("channel", ("tmall",), multi=True), Membership("tier", ("gold",), multi=False))
    )


def test_display_names_resolve_to_codes() -> None:
    assert bound("tag:价格敏感") == Membership("tag", ("price_sensitive",), multi=True)
    assert bound('tag:"618 买家"') == Membership("tag", ("618_buyer",), multi=True)


def test_duplicates_are_dropped_keeping_the_first() -> None:
    assert bound("tag IN (价格敏感, churn_risk, price_sensitive)") == Membership(
        "tag", ("price_sensitive", "churn_risk"), multi=True
    )
    assert bound("tier IN (gold, silver, gold)") == Membership("tier", ("gold", "silver"), multi=False)
    assert bound("points IN (1, 01, 2)") == FieldIn("points", FieldType.INTEGER, (1, 2))


def test_values_are_typed_by_field() -> None:
    assert bound("total_spend BETWEEN 0 AND 199.9") == FieldBetween(
        "total_spend", FieldType.MONEY, Decimal(0), Decimal("199.9")
    )
    assert bound("NOT registered < 2024-02-29") == BoundNot(
        FieldCompare("registered", FieldType.DATE, Op.LT, date(2024, 2, 29))
    )
    assert bound('points = "-7"') == FieldCompare("points", FieldType.INTEGER, Op.EQ, -7)


def test_ambiguous_display_names_do_not_resolve_but_codes_do() -> None:
    catalog = Catalog(tags={"a": "同名", "b": "同名", "c": "a"}, dimensions={})
    assert bind(parse("tag:a"), catalog) == Membership("tag", ("a",), multi=True)
    with pytest.raises(UnknownNameError) as raised:
        bind(parse("tag:同名"), catalog)
    assert raised.value.code == ErrorCode.UNKNOWN_TAG


def test_a_catalog_may_bring_its_own_fields() -> None:
    catalog = Catalog(
        tags={}, dimensions={"size": DimensionSpec(frozenset({"s", "m"}))}, fields={"kids": FieldType.INTEGER}
    )
    assert bind(parse("size:m AND kids > 0"), catalog) == BoundAnd(
        (Membership("size", ("m",), multi=False), FieldCompare("kids", FieldType.INTEGER, Op.GT, 0))
    )
    assert Catalog(tags={}, dimensions={}).fields == MEMBER_FIELDS


@pytest.mark.parametrize(
    ("dimensions", "fields"),
    [
        ({"tag": DimensionSpec(frozenset())}, MEMBER_FIELDS),
        ({"home city": DimensionSpec(frozenset())}, MEMBER_FIELDS),
        ({}, {"AND": FieldType.INTEGER}),
        ({"points": DimensionSpec(frozenset())}, MEMBER_FIELDS),
    ],
)
def test_catalog_refuses_names_a_query_could_not_use(
    dimensions: dict[str, DimensionSpec], fields: dict[str, FieldType]
) -> None:
    with pytest.raises(ValueError, match=r"names|both"):
        Catalog(tags={}, dimensions=dimensions, fields=fields)

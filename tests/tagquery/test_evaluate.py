"""The reference evaluator: examples, the NULL rule, windows, and properties over random members.

The properties go through text (print, wrap, parse, bind, evaluate), so they also hold the parser's
precedence and the printer's parentheses to the meaning of the query.
"""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tagquery import bind, evaluate, parse, to_text
from tagquery.ast import Node, Unit
from tagquery.bound import window_start
from tests.tagquery.strategies import CATALOG, TODAY, members, valid_trees

MEMBER: dict[str, Any] = {
    "tag": {"price_sensitive"},
    "channel": {"tmall", "wechat"},
    "tier": "platinum",
    "city": None,
    "points": 1200,
    "orders_365d": 4,
    "total_spend": Decimal("1999.50"),
    "registered": date(2023, 6, 1),
    "last_purchase": TODAY - timedelta(days=10),
    "birthday": date(1990, 3, 31),
}


def matches(text: str, member: dict[str, Any], today: date = TODAY) -> bool:
    return evaluate(bind(parse(text), CATALOG), member, today)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tag:price_sensitive AND (channel:tmall OR channel:jd) AND NOT tag:churn_risk", True),
        ("tier IN (platinum, diamond) AND points >= 1000 AND last_purchase WITHIN 30d", True),
        ("last_purchase WITHIN 9d", False),
        ("last_purchase WITHIN 10d", True),
        ("channel IN (jd, douyin)", False),
        ("tag IN (churn_risk, 价格敏感)", True),
        ("total_spend BETWEEN 1999.50 AND 2000", True),
        ("total_spend > 1999.5", False),
        ("registered < 2023-06-02 AND registered >= 2023-06-01", True),
        ("age = 35", True),
        ("age BETWEEN 30 AND 40 AND NOT age > 35", True),
        ("days_since_last_purchase = 10", True),
        ("points IN (1, 1200)", True),
        ("points != 1200", False),
    ],
)
def test_examples(text: str, expected: bool) -> None:
    assert matches(text, MEMBER) is expected


def test_age_is_whole_years_on_the_day() -> None:
    assert matches("age = 34", MEMBER, date(2025, 3, 30))
    assert matches("age = 35", MEMBER, date(2025, 3, 31))


def test_null_rule_terms_on_missing_facts_are_false_and_not_negates() -> None:
    nobody: dict[str, Any] = {}
    for text in ["points = 5", "points != 5", "age < 200", "city:上海", "tag:价格敏感", "last_purchase WITHIN 100y"]:
        assert not matches(text, nobody)
        assert matches(f"NOT {text}", nobody)
    assert not matches("city:上海", MEMBER)  # city None
    assert not matches("days_since_last_purchase >= 0", {"last_purchase": None})


@pytest.mark.parametrize(
    ("today", "amount", "unit", "start"),
    [
        (date(2025, 3, 31), 30, Unit.DAY, date(2025, 3, 1)),
        (date(2025, 3, 31), 2, Unit.WEEK, date(2025, 3, 17)),
        (date(2025, 3, 31), 1, Unit.MONTH, date(2025, 2, 28)),
        (date(2024, 3, 31), 1, Unit.MONTH, date(2024, 2, 29)),
        (date(2025, 1, 15), 14, Unit.MONTH, date(2023, 11, 15)),
        (date(2024, 2, 29), 1, Unit.YEAR, date(2023, 2, 28)),
        (date(2025, 3, 31), 0, Unit.DAY, date(2025, 3, 31)),
    ],
)
def test_window_start_uses_calendar_months_clipped_to_month_end(
    today: date, amount: int, unit: Unit, start: date
) -> None:
    assert window_start(today, amount, unit) == start


# Properties over random queries and members.


@given(valid_trees, members)
def test_e_and_not_e_partition_the_members(tree: Node, member: dict[str, Any]) -> None:
    text = to_text(tree)
    assert matches(text, member) != matches(f"NOT ({text})", member)


@given(valid_trees, valid_trees, members)
def test_de_morgan(a: Node, b: Node, member: dict[str, Any]) -> None:
    left, right = to_text(a), to_text(b)
    assert matches(f"NOT (({left}) AND ({right}))", member) == matches(f"NOT ({left}) OR NOT ({right})", member)
    assert matches(f"NOT (({left}) OR ({right}))", member) == matches(f"NOT ({left}) AND NOT ({right})", member)


@given(valid_trees, valid_trees, members)
def test_printing_keeps_meaning_under_and_or(a: Node, b: Node, member: dict[str, Any]) -> None:
    left, right = to_text(a), to_text(b)
    assert matches(f"({left}) AND ({right})", member) == (matches(left, member) and matches(right, member))
    assert matches(f"({left}) OR ({right})", member) == (matches(left, member) or matches(right, member))


_comparable = st.sampled_from(["points", "age", "days_since_last_purchase", "orders_365d"])


@given(_comparable, st.integers(-2, 80), members)
def test_complementary_comparisons_split_members_that_have_the_fact(
    field: str, value: int, member: dict[str, Any]
) -> None:
    has_fact = matches(f"{field} >= -1000000", member)
    assert matches(f"{field} < {value}", member) + matches(f"{field} >= {value}", member) == has_fact
    assert matches(f"{field} != {value}", member) == matches(f"{field} < {value} OR {field} > {value}", member)


@given(_comparable, st.integers(-2, 80), st.integers(-2, 80), st.integers(-2, 80), members)
def test_between_and_in_mean_their_expansions(field: str, a: int, b: int, c: int, member: dict[str, Any]) -> None:
    assert matches(f"{field} BETWEEN {a} AND {b}", member) == matches(f"{field} >= {a} AND {field} <= {b}", member)
    assert matches(f"{field} IN ({a}, {b}, {c})", member) == matches(
        f"{field} = {a} OR {field} = {b} OR {field} = {c}", member
    )


@given(st.sampled_from(["tag", "channel", "tier"]), st.data(), members)
def test_dimension_in_means_any_of(name: str, data: st.DataObject, member: dict[str, Any]) -> None:
    known = sorted(CATALOG.tags) if name == "tag" else sorted(CATALOG.dimensions[name].values)
    values = data.draw(st.lists(st.sampled_from(known), min_size=1, max_size=3))
    any_of = " OR ".join(f"{name}:{value}" for value in values)
    assert matches(f"{name} IN ({', '.join(values)})", member) == matches(any_of, member)


@given(st.sampled_from(["registered", "last_purchase"]), st.integers(0, 100), st.sampled_from(Unit), members)
def test_within_means_on_or_after_the_window_start(field: str, amount: int, unit: Unit, member: dict[str, Any]) -> None:
    start = window_start(TODAY, amount, unit).isoformat()
    assert matches(f"{field} WITHIN {amount}{unit}", member) == matches(f"{field} >= {start}", member)

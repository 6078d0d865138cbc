"""`entered:<stage>` (issue 15, item 1): a dated dimension of the one grammar. Its text round trips
(and its structured filter), an unknown stage names the valid ones at its position, and the
reference evaluator reads the day of the last entry against the query's day."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

from tagquery import ErrorCode, TagQueryError, UnknownNameError, bind, evaluate, from_filter, parse, to_text
from tagquery.ast import Dimension, In, Node, Not, Unit, conjoin
from tagquery.catalog import member_catalog
from tests.audience_seed import seed
from tests.conftest import GraphQL
from tests.tagquery.strategies import to_filter

STAGES = ("at_risk", "churned", "growth", "introduction", "mature")
CATALOG = member_catalog(
    tags={"vip": "VIP"},
    tiers=("silver", "gold"),
    channels=("tmall", "pos"),
    cities=(),
    statuses=("prospect", "member"),
    genders=("male", "female", "unknown"),
    lifecycles=("introduction", "growth", "mature", "at_risk", "churned"),
    stage_history=True,
)
TODAY = date(2026, 3, 31)

ROUND_TRIPS: dict[str, Node] = {
    "entered:at_risk": Dimension("entered", "at_risk"),
    "entered:at_risk WITHIN 30d": Dimension("entered", "at_risk", (30, Unit.DAY)),
    "entered IN (at_risk, churned) WITHIN 30d": In("entered", ("at_risk", "churned"), None, (30, Unit.DAY)),
    "entered IN (mature, growth)": In("entered", ("mature", "growth")),
    "entered:mature WITHIN 2w AND NOT entered:at_risk WITHIN 1m": conjoin(
        [Dimension("entered", "mature", (2, Unit.WEEK)), Not(Dimension("entered", "at_risk", (1, Unit.MONTH)))]
    ),
}


@pytest.mark.parametrize(("text", "tree"), ROUND_TRIPS.items())
def test_entered_parses_to_its_tree_prints_back_and_reads_from_a_filter(text: str, tree: Node) -> None:
    assert parse(text) == tree
    assert to_text(tree) == text
    assert parse(to_text(parse("  " + text.replace(" WITHIN", "  within")))) == tree  # keywords any case
    assert from_filter(to_filter(tree)) == tree
    bind(tree, CATALOG)  # and it means something


def test_the_structured_filter_of_the_brief() -> None:
    node = from_filter({"dimension": {"name": "entered", "values": ["at_risk", "churned"], "within": "30d"}})
    assert to_text(node) == "entered IN (at_risk, churned) WITHIN 30d"


def _error(text: str) -> TagQueryError:
    with pytest.raises(TagQueryError) as raised:
        bind(parse(text), CATALOG, source=text)
    return raised.value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("entered:active WITHIN 30d", "active"),
        ("entered IN (at_risk, lapsed) WITHIN 30d", "lapsed"),
        ("tier:gold AND entered:dormant", "dormant"),
    ],
)
def test_an_unknown_stage_names_every_stage_at_its_position(text: str, value: str) -> None:
    error = _error(text)
    assert isinstance(error, UnknownNameError)
    column = text.index(value) + 1
    assert (error.code, error.line, error.column, error.suggestion) == (ErrorCode.UNKNOWN_VALUE, 1, column, None)
    assert (error.valid_values, error.valid_count) == (STAGES, 5)
    assert str(error).split("\n", 1)[0] == (
        f"unknown entered '{value}' at 1:{column}; expected one of at_risk, churned, growth, introduction, mature"
    )
    assert error.snippet == f"{text}\n{' ' * (column - 1)}{'^' * len(value)}"


def test_a_close_stage_is_suggested() -> None:
    error = _error("entered:at_rsk")
    assert (error.suggestion, error.column, error.valid_values) == ("at_risk", 9, STAGES)


def test_a_window_needs_a_dated_dimension_and_entered_is_one() -> None:
    error = _error("lifecycle:at_risk WITHIN 30d")
    assert error.code is ErrorCode.TYPE_MISMATCH
    assert "WITHIN after lifecycle needs a dated dimension (entered)" in str(error)


def test_entered_is_only_in_a_catalog_with_stage_history() -> None:
    plain = member_catalog(
        tags={}, tiers=(), channels=("pos",), cities=(), statuses=(), genders=(), lifecycles=("growth",)
    )
    assert "entered" not in plain.dimensions
    spec = CATALOG.dimensions["entered"]
    assert (spec.values, spec.multi, spec.dated) == (frozenset(STAGES), True, True)


def _holds(text: str, entered: dict[str, int]) -> bool:
    facts: dict[str, Any] = {"entered": {stage: TODAY - timedelta(days=days) for stage, days in entered.items()}}
    return evaluate(bind(parse(text), CATALOG), facts, TODAY)


@pytest.mark.parametrize("days", [29, 30, 31])
def test_a_window_of_n_days_includes_an_entry_n_days_ago_and_not_n_plus_one(days: int) -> None:
    member = {"at_risk": days, "mature": 400}
    assert _holds("entered:at_risk WITHIN 30d", member) is (days <= 30)
    assert _holds("entered IN (churned, at_risk) WITHIN 30d", member) is (days <= 30)
    assert _holds("entered:at_risk", member)
    assert _holds("entered:mature AND NOT entered:mature WITHIN 1y", member)
    assert not _holds("entered:churned", member)


def test_a_member_without_history_entered_nothing() -> None:
    assert _holds("NOT entered IN (introduction, growth, mature, at_risk, churned)", {})
    assert evaluate(bind(parse("NOT entered:growth"), CATALOG), {}, TODAY)  # no `entered` fact at all


async def test_graphql_answers_an_unknown_stage_as_invalid_expression(
    gql: GraphQL, pool: AsyncConnectionPool[Any]
) -> None:
    brand = (await seed(pool, count=4)).code
    query = "query ($b: String!, $e: String!) { audience(brand: $b, expression: $e) { count } }"
    (error,) = (await gql.raw(query, b=brand, e="tier:gold AND entered:lapsed WITHIN 30d"))["errors"]
    assert error["message"] == (
        "unknown entered 'lapsed' at 1:23; expected one of at_risk, churned, growth, introduction, mature"
    )
    extensions = error["extensions"]
    assert (extensions["code"], extensions["reason"], extensions["line"], extensions["column"]) == (
        "INVALID_EXPRESSION",
        "UNKNOWN_VALUE",
        1,
        23,
    )
    assert (extensions["validValues"], extensions["validValueCount"]) == (list(STAGES), 5)
    assert (await gql(query, b=brand, e="entered:at_risk WITHIN 30d"))["audience"]["count"] == 0

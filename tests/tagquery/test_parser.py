"""Parsing and printing: golden canonical texts, tree shapes, spans, tree invariants."""

from __future__ import annotations

import pytest

from tagquery import parse, to_text
from tagquery.ast import (
    And,
    Between,
    Compare,
    Dimension,
    In,
    Node,
    Not,
    Op,
    Or,
    Tag,
    Unit,
    Within,
    conjoin,
    disjoin,
)

GOLDEN = [
    # The design's examples.
    (
        "tag:price_sensitive and (channel:tmall or channel:jd) and not tag:churn_risk",
        "tag:price_sensitive AND (channel:tmall OR channel:jd) AND NOT tag:churn_risk",
    ),
    (
        "tier in (platinum,diamond) and points>=1000 and last_purchase within 30D",
        "tier IN (platinum, diamond) AND points >= 1000 AND last_purchase WITHIN 30d",
    ),
    ("lifecycle:at_risk AND orders_365d >= 4", "lifecycle:at_risk AND orders_365d >= 4"),
    (
        "tier IN (platinum, diamond) AND channel:tmall AND NOT tag:churn_risk AND points >= 1000",
        "tier IN (platinum, diamond) AND channel:tmall AND NOT tag:churn_risk AND points >= 1000",
    ),
    # Parentheses: only where precedence needs them.
    ("((tag:a))", "tag:a"),
    ("(tag:a AND tag:b) AND tag:c", "tag:a AND tag:b AND tag:c"),
    ("tag:a OR (tag:b OR tag:c)", "tag:a OR tag:b OR tag:c"),
    ("tag:a AND tag:b OR tag:c", "tag:a AND tag:b OR tag:c"),
    ("(tag:a AND tag:b) OR tag:c", "tag:a AND tag:b OR tag:c"),
    ("tag:a AND (tag:b OR tag:c)", "tag:a AND (tag:b OR tag:c)"),
    ("NOT (tag:a AND tag:b)", "NOT (tag:a AND tag:b)"),
    ("NOT (tag:a OR tag:b) OR tag:c", "NOT (tag:a OR tag:b) OR tag:c"),
    ("(NOT tag:a) AND tag:b", "NOT tag:a AND tag:b"),
    ("NOT NOT tag:a", "NOT NOT tag:a"),
    ("NOT (NOT tag:a)", "NOT NOT tag:a"),
    # Values: quoted only when they would not lex back as one word.
    ('city:"上海"', "city:上海"),
    ("tag\uff1a价格敏感 AND city:上海", "tag:价格敏感 AND city:上海"),
    ('city:"New York"', 'city:"New York"'),
    ('tag:"and"', 'tag:"and"'),
    ('tier IN ("TAG", "", gold)', 'tier IN ("TAG", "", gold)'),
    ('tag:"say \\"hi\\"\\n\\\\"', 'tag:"say \\"hi\\"\\n\\\\"'),
    ('tag:"tab\there"', 'tag:"tab\\there"'),
    ("tag:618_buyer", "tag:618_buyer"),
    # Terms.
    ("TAG IN (a,b)", "tag IN (a, b)"),
    ("tier IN (gold, silver, gold)", "tier IN (gold, silver, gold)"),
    ("points between 1 and 5 and tag:x", "points BETWEEN 1 AND 5 AND tag:x"),
    ("registered>=2024-01-01", "registered >= 2024-01-01"),
    ("total_spend>199.90", "total_spend > 199.90"),
    ("points != -5", "points != -5"),
    ("age<18 OR age<=18 OR age=18 OR age>65", "age < 18 OR age <= 18 OR age = 18 OR age > 65"),
    ("last_purchase WITHIN 0012w", "last_purchase WITHIN 12w"),
    ("tier:gold\n  AND\tpoints>=1", "tier:gold AND points >= 1"),
]


@pytest.mark.parametrize(("text", "canonical"), GOLDEN)
def test_golden_canonical_text(text: str, canonical: str) -> None:
    assert to_text(parse(text)) == canonical
    assert parse(canonical) == parse(text)


def test_and_binds_tighter_than_or_and_not_tighter_than_and() -> None:
    a, b, c = Tag("a"), Tag("b"), Tag("c")
    assert parse("tag:a OR tag:b AND tag:c") == Or((a, And((b, c))))
    assert parse("NOT tag:a AND tag:b") == And((Not(a), b))
    assert parse("NOT tag:a OR tag:b") == Or((Not(a), b))


def test_and_or_are_flattened() -> None:
    expected = And((Tag("a"), Tag("b"), Tag("c"), Tag("d")))
    assert parse("(tag:a AND tag:b) AND (tag:c AND (tag:d))") == expected


def test_terms() -> None:
    node = parse("tier:gold AND points > 5 AND tier IN (a) AND age BETWEEN 1 AND 2 AND registered WITHIN 6m")
    assert node == And(
        (
            Dimension("tier", "gold"),
            Compare("points", Op.GT, "5"),
            In("tier", ("a",)),
            Between("age", "1", "2"),
            Within("registered", 6, Unit.MONTH),
        )
    )


def test_spans_cover_terms_and_values_but_not_equality() -> None:
    node = parse("tier:gold AND points >= 10 AND tag IN (a, 上海)")
    assert isinstance(node, And)
    dimension, compare, tags = node.operands
    assert isinstance(dimension, Dimension)
    assert isinstance(compare, Compare)
    assert isinstance(tags, In)
    assert (node.span, dimension.span, compare.span, tags.span) == ((0, 45), (0, 9), (14, 26), (31, 45))
    assert (dimension.value_spans, compare.value_spans, tags.value_spans) == (
        ((5, 9),),
        ((24, 26),),
        ((39, 40), (42, 44)),
    )
    assert Tag("a", span=(3, 4)) == Tag("a")
    assert hash(Tag("a", span=(3, 4))) == hash(Tag("a"))


def test_not_span_starts_at_the_keyword() -> None:
    node = parse("NOT  NOT tag:a")
    assert isinstance(node, Not)
    assert (node.span, node.operand.span) == ((0, 14), (5, 14))


@pytest.mark.parametrize(
    "build",
    [
        lambda: And((Tag("a"),)),
        lambda: Or(()),
        lambda: And((And((Tag("a"), Tag("b"))), Tag("c"))),
        lambda: Or((Tag("a"), Or((Tag("b"), Tag("c"))))),
        lambda: Dimension("tag", "x"),
        lambda: Dimension("TAG", "x"),
        lambda: Compare("total spend", Op.GT, "1"),
        lambda: Between("", "1", "2"),
        lambda: In("tier", ()),
        lambda: In("Tag", ("a",)),
        lambda: Within("registered", -1, Unit.DAY),
    ],
)
def test_trees_that_could_not_print_and_parse_back_are_refused(build: object) -> None:
    assert callable(build)
    with pytest.raises(ValueError, match=r"."):
        build()


def test_conjoin_and_disjoin_flatten_and_unwrap() -> None:
    a, b, c = Tag("a"), Tag("b"), Tag("c")
    assert conjoin([a]) is a
    assert conjoin([conjoin([a, b]), c]) == And((a, b, c))
    assert disjoin([a, disjoin([b, c])]) == Or((a, b, c))
    mixed: Node = conjoin([disjoin([a, b]), c])
    assert mixed == And((Or((a, b)), c))

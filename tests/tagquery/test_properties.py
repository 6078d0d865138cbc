"""Round trips over random trees, and fuzzing: any text gives a tree or a typed error."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tagquery import TagQueryError, bind, evaluate, parse, to_text
from tagquery.ast import Node
from tagquery.bound import Bound
from tests.tagquery.strategies import CATALOG, TODAY, syntax_trees, valid_trees


@given(syntax_trees)
def test_parse_of_printed_tree_is_the_tree(tree: Node) -> None:
    assert parse(to_text(tree)) == tree


@given(syntax_trees)
def test_canonical_text_is_a_fixed_point(tree: Node) -> None:
    text = to_text(tree)
    assert to_text(parse(text)) == text


@given(valid_trees)
def test_valid_trees_bind(tree: Node) -> None:
    bind(parse(to_text(tree)), CATALOG)


def _parse_and_bind(text: str) -> tuple[Node, Bound] | TagQueryError:
    try:
        node = parse(text)
        return node, bind(node, CATALOG, source=text)
    except TagQueryError as error:
        return error


def _check_any_text(text: str) -> None:
    """Parse, bind and evaluate `text`: only typed errors may escape, with a position in the text."""
    result = _parse_and_bind(text)
    if isinstance(result, TagQueryError):
        assert result.line is not None
        assert result.column is not None
        assert 1 <= result.line <= text.count("\n") + 1
        assert "^" in str(result)
        return
    node, bound = result
    assert parse(to_text(node)) == node
    evaluate(bound, {}, TODAY)


@settings(max_examples=300)
@given(st.text(max_size=120))
def test_arbitrary_text_raises_only_typed_errors(text: str) -> None:
    _check_any_text(text)


_PIECES = [
    "tag", ":", "(", ")", ",", "AND", "or", "NOT", "IN", "BETWEEN", "WITHIN", "points", "age", "registered",
    ">=", "!=", "<", "=", "30d", "101y", "2024-01-01", "2024-02-30", "1.5", "1000", '"x y"', '"', "\\",
    "tier", "gold", "platnum", "price_sensitive", "价格敏感", "city", "上海", "\n", "channel", "tmall",
    "\uff08", "\uff1a",  # full-width parenthesis and colon
]  # fmt: skip


@settings(max_examples=500)
@given(st.lists(st.sampled_from(_PIECES), max_size=14), st.sampled_from([" ", ""]))
def test_token_soup_raises_only_typed_errors(pieces: list[str], glue: str) -> None:
    _check_any_text(glue.join(pieces))

"""Federation's `_Any` for hypothesis-graphql: entity references as GraphQL literals (tests/test_fuzz.py,
tests/test_leaks.py). hypothesis-graphql cannot generate a custom scalar by itself."""

from __future__ import annotations

from typing import Any

from graphql import NameNode, NullValueNode, ObjectFieldNode, ValueNode
from hypothesis import strategies as st
from hypothesis_graphql import nodes


def literal(value: Any) -> ValueNode:
    """A JSON value as a GraphQL literal: `_Any` (an entity reference) takes any."""
    if isinstance(value, dict):
        return nodes.Object([ObjectFieldNode(name=NameNode(value=k), value=literal(v)) for k, v in value.items()])
    if isinstance(value, list):
        return nodes.List([literal(item) for item in value])
    if value is None:
        return NullValueNode()
    if isinstance(value, bool):
        return nodes.Boolean(value)
    return nodes.Int(value) if isinstance(value, int) else nodes.String(value)


# Entity references near the real shape (callers point brand and id at real ones), or anything.
_KEY = st.one_of(st.text(max_size=20), st.integers(), st.booleans(), st.none(), st.sampled_from(["tmall", "WECHAT"]))
ANY_REFERENCE: st.SearchStrategy[ValueNode] = st.one_of(
    st.fixed_dictionaries(
        {"__typename": st.sampled_from(["Member", "ChannelIdentity", "Order"])},
        optional={"id": _KEY, "brand": _KEY, "channel": _KEY, "externalId": _KEY},
    ),
    _KEY,
    st.lists(_KEY, max_size=2),
).map(literal)
# Well-formed references only, their strings aimed at real rows by the caller.
WELL_FORMED_REFERENCE: st.SearchStrategy[ValueNode] = st.one_of(
    st.fixed_dictionaries({"__typename": st.just("Member"), "id": st.just("x")}),
    st.fixed_dictionaries(
        {
            "__typename": st.just("ChannelIdentity"),
            "brand": st.just("x"),
            "channel": st.just("x"),
            "externalId": st.just("x"),
        }
    ),
).map(literal)

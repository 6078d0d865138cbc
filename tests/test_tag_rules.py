"""Rules of tagging that mutation testing found unchecked (docs/testing.md#mutation-testing)."""

from __future__ import annotations

from tests.conftest import GraphQL

DEFINE = """mutation($brand: String!) {
  defineTag(brand: $brand, code: "listed", name: "Listed", category: CUSTOM) { __typename } }"""
TAG = """mutation($brand: String!, $ids: [ID!]!) {
  tagMembers(brand: $brand, tag: "listed", memberIds: $ids) {
    __typename ... on UnknownMembers { unknownIds mergedIds count } } }"""


async def test_unknown_members_lists_the_first_hundred_ids_and_counts_them_all(gql: GraphQL, brand: str) -> None:
    assert (await gql(DEFINE, brand=brand))["defineTag"]["__typename"] == "TagDefined"
    ids = [str(10**15 + n) for n in range(150)]  # no such members
    refused = (await gql(TAG, brand=brand, ids=ids))["tagMembers"]
    assert refused["__typename"] == "UnknownMembers"
    assert (len(refused["unknownIds"]), refused["mergedIds"], refused["count"]) == (100, [], 150)
    assert set(refused["unknownIds"]) <= set(ids)

"""The fuzz suite: documents generated from the schema, invalid ones, and random bodies, sent to a
real server. Whatever arrives, the answer is never a 5xx, never "Unexpected error." (which means a
bug) and never a traceback.

Valid documents come from hypothesis-graphql over the published SDL (every query and mutation
field, random arguments of the right types, including NUL characters and nulls); invalid ones from
its negative mode; bodies from raw bytes and random JSON. A few thousand cases in all.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from graphql import ValueNode, build_schema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis_graphql import Mode, from_schema, mutations, nodes, queries

from tests.conftest import ROOT
from tests.entity_references import ANY_REFERENCE
from tests.server import Server

SDL = (ROOT / "schema" / "schema.graphql").read_text()
SCALARS: dict[str, st.SearchStrategy[ValueNode]] = {
    "Date": st.dates().map(lambda d: nodes.String(d.isoformat())),
    "DateTime": st.datetimes(timezones=st.timezones()).map(lambda d: nodes.String(d.isoformat())),
    "Decimal": st.one_of(
        st.sampled_from(["NaN", "-NaN", "sNaN", "Infinity", "-0", "1e999", "0.001", "1E+2", " 1", ""]).map(
            nodes.String
        ),
        st.decimals(allow_nan=True, allow_infinity=True).map(lambda d: nodes.String(str(d))),
        st.text(max_size=12).map(nodes.String),
    ),
}
# Mostly non-empty text: an empty string is refused by the first check and reaches nothing deeper.
SCALARS["String"] = st.one_of(st.text(min_size=1, max_size=30), st.just("")).map(nodes.String)


SCALARS["_Any"] = ANY_REFERENCE
SCHEMA = build_schema(SDL)
# Every root field gets its own examples: one strategy over all of them reaches few deep enough.
FIELDS = [
    (root.name, name) for root in (SCHEMA.query_type, SCHEMA.mutation_type) if root is not None for name in root.fields
]
CASES = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


BRAND = f"fuzz_{secrets.token_hex(3)}"
SETUP = [
    f'mutation {{ createBrand(code: "{BRAND}", name: "Fuzz", group: "{BRAND}_g") {{ __typename }} }}',
    *(
        f'mutation {{ registerMember(brand: "{BRAND}", channel: "tmall", externalId: "f{i}", phone: "1381234{i:04d}") '
        "{ __typename } }"
        for i in range(3)
    ),
]
ARGUMENTS = re.compile(
    r'\b(brand|channel|memberId|id|survivorId|mergedId|mergeId|buyerId|postingId): "(?:[^"\\]|\\.)*"'
)


@pytest.fixture(scope="module")
def http(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    server = Server(tmp_path_factory.mktemp("fuzz"), database_url)
    server.wait_ready()
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for document in SETUP:
            assert "errors" not in client.post("/graphql", json={"query": document}).json()
        ids = client.post("/graphql", json={"query": f'{{ members(brand: "{BRAND}", first: 3) {{ nodes {{ id }} }} }}'})
        MEMBER_IDS.extend(node["id"] for node in ids.json()["data"]["members"]["nodes"])
        yield client
    server.stop()


MEMBER_IDS: list[str] = []


def _aimed(document: str, aim: int) -> str:
    """Most generated arguments name nothing that exists, and the request stops at the first
    lookup; aimed documents name the fuzz brand and its members, so the rest of the path runs."""
    if aim == 0 or not MEMBER_IDS:
        return document

    def real(match: re.Match[str]) -> str:
        name = match.group(1)
        value = {"brand": BRAND, "channel": "tmall", "buyerId": f"f{aim % 3}"}.get(
            name, MEMBER_IDS[aim % len(MEMBER_IDS)]
        )
        return f'{name}: "{value}"'

    # Arguments that exclude each other (a member by id or by channel identity): keep one.
    dropped = "buyerId" if aim == 2 else "memberId" if aim == 3 else None
    if dropped is not None:
        document = re.sub(rf"\n\s*{dropped}: [^\n]*", "", document)
    return ARGUMENTS.sub(real, document)


def _sound(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text[:2000]
    assert "Unexpected error" not in response.text, response.text[:2000]
    assert "Traceback" not in response.text, response.text[:2000]


def _post(http: httpx.Client, document: Any) -> None:
    _sound(http.post("/graphql", json={"query": document}))


@pytest.mark.parametrize(("root", "field"), FIELDS, ids=[f"{root}.{field}" for root, field in FIELDS])
def test_valid_documents_never_fail_the_server(http: httpx.Client, root: str, field: str) -> None:
    strategy = (queries if root == "Query" else mutations)(SCHEMA, fields=[field], custom_scalars=SCALARS)

    @CASES
    @given(document=strategy)
    def sent(document: str) -> None:
        # The variant from the text, not drawn: hypothesis would favour the plainest (unaimed) one.
        _post(http, _aimed(document, sum(map(ord, document)) % 4))

    sent()


@settings(CASES, max_examples=400)
@given(document=from_schema(SCHEMA, custom_scalars=SCALARS, mode=Mode.NEGATIVE))
def test_invalid_documents_are_client_errors(http: httpx.Client, document: str) -> None:
    _post(http, document)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@settings(CASES, max_examples=400)
@given(
    body=st.one_of(
        st.binary(max_size=200),
        JSON.map(lambda value: json.dumps(value).encode()),
        st.fixed_dictionaries(
            {"query": st.text(max_size=200)}, optional={"variables": JSON, "operationName": JSON}
        ).map(lambda value: json.dumps(value).encode()),
    )
)
def test_random_bodies_are_client_errors(http: httpx.Client, body: bytes) -> None:
    _sound(http.post("/graphql", content=body, headers={"content-type": "application/json"}))

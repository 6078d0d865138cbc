"""The abuse suite of /graphql: documents and bodies refused before anything runs for them.

Each probe was found by hand against the server (issue 12): documents that took seconds of parsing
and validation on the event loop, bodies read whole whatever their size, bodies that answered 500.
Refusals are asserted at the HTTP boundary with nothing behind it (a downstream that fails the test
if reached), so no resolver and no SQL ran for them.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from graphql import get_introspection_query
from starlette.types import Receive, Scope, Send

import api.graphql_app as graphql_app_module
from api.graphql_app import graphql_app
from api.settings import Settings
from schema.documents import LIMITS, Documents, Limits
from schema.root import build_schema
from tests.conftest import ADMIN, GraphQL

MAX_BODY = 1 << 20
SCHEMA = build_schema()


class Unreachable:
    """Stands for everything behind the checks: reaching it fails the test."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("a refused request reached strawberry")


@pytest.fixture
async def gate() -> AsyncIterator[httpx.AsyncClient]:
    endpoint = graphql_app(Settings(None, Path("."), None, graphql_ide=False, max_body=MAX_BODY))
    endpoint._general = Unreachable()  # type: ignore[assignment]

    async def no_plan(*args: Any) -> None:
        raise AssertionError("a refused request reached a plan")

    endpoint._plans.answer = no_plan  # type: ignore[method-assign,assignment]
    endpoint._mutations.answer = no_plan  # type: ignore[method-assign,assignment]

    async def as_admin(scope: Scope, receive: Receive, send: Send) -> None:
        scope["principal"] = ADMIN  # what api.auth puts there
        await endpoint(scope, receive, send)

    transport = httpx.ASGITransport(app=as_admin)
    async with httpx.AsyncClient(transport=transport, base_url="http://omnimember.test") as http:
        yield http


async def _refused(http: httpx.AsyncClient, query: str, **variables: Any) -> dict[str, Any]:
    started = time.perf_counter()
    response = await http.post("/graphql", json={"query": query, "variables": variables})
    elapsed = time.perf_counter() - started
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["data"] is None, body
    assert body["errors"], body
    # Before the checks, the first of these took 8-16 s of parsing and validation on the event loop.
    assert elapsed < 2, f"refused after {elapsed:.1f} s"
    error: dict[str, Any] = body["errors"][0]
    return error


def _aliases(count: int) -> str:
    return "{ " + " ".join(f"a{i}: __typename" for i in range(count)) + " }"


async def test_a_document_of_ten_thousand_aliases_is_refused_before_parsing(gate: httpx.AsyncClient) -> None:
    document = _aliases(10_000)
    assert len(document) > LIMITS.max_chars
    error = await _refused(gate, document)
    assert error["extensions"] == {"code": "DOCUMENT_TOO_LARGE", "limit": LIMITS.max_chars}
    assert "characters" in error["message"]


async def test_the_parser_stops_at_the_token_limit(gate: httpx.AsyncClient) -> None:
    document = "{ " + "a " * 20_000 + "}"  # duplicate fields past the token limit, under the size limit
    assert len(document) < LIMITS.max_chars
    error = await _refused(gate, document)
    assert error["extensions"]["code"] == "TOO_MANY_TOKENS"


async def test_ten_thousand_spreads_of_one_fragment_are_refused(gate: httpx.AsyncClient) -> None:
    document = "{ " + "...F " * 10_000 + "} fragment F on Query { __typename }"
    error = await _refused(gate, document)
    assert error["extensions"]["code"] in ("DOCUMENT_TOO_LARGE", "TOO_MANY_TOKENS")


async def test_fragments_that_multiply_fields_are_counted_expanded(gate: httpx.AsyncClient) -> None:
    # 60 tokens a level, 10 spreads each: 10^4 fields once expanded.
    levels = ["fragment F0 on Query { __typename }"]
    for level in range(1, 5):
        levels.append(f"fragment F{level} on Query {{ " + f"...F{level - 1} " * 10 + "}")
    error = await _refused(gate, "{ ...F4 } " + " ".join(levels))
    assert error["extensions"] == {"code": "TOO_MANY_FIELDS", "limit": LIMITS.max_fields}
    assert "10,000 fields" in error["message"]


async def test_aliases_are_counted_after_fragment_expansion(gate: httpx.AsyncClient) -> None:
    fragment = "fragment F on Query { " + " ".join(f"a{i}: __typename" for i in range(16)) + " }"
    error = await _refused(gate, "{ ...F ... on Query { ...F } } " + fragment)
    assert error["extensions"] == {"code": "TOO_MANY_ALIASES", "limit": LIMITS.max_aliases}
    assert "32 aliases" in error["message"]


async def test_a_chain_of_two_thousand_fragments_is_refused_not_a_recursion_error(gate: httpx.AsyncClient) -> None:
    chain = " ".join(f"fragment F{i} on Query {{ ...F{i + 1} }}" for i in range(2_000))
    error = await _refused(gate, "{ ...F0 } " + chain + " fragment F2000 on Query { __typename }")
    assert error["extensions"]["code"] in ("DOCUMENT_TOO_LARGE", "TOO_MANY_TOKENS")
    short = " ".join(f"fragment F{i} on Query {{ ...F{i + 1} }}" for i in range(30))
    error = await _refused(gate, "{ ...F0 } " + short + " fragment F30 on Query { __typename }")
    assert error["extensions"] == {"code": "TOO_DEEP", "limit": LIMITS.max_fragment_depth}


async def test_fragment_cycles_are_refused_without_recursion(gate: httpx.AsyncClient) -> None:
    error = await _refused(gate, "{ ...A } fragment A on Query { ...B } fragment B on Query { ...A }")
    assert error["extensions"]["code"] == "INVALID_DOCUMENT"
    assert "cycle" in error["message"]


def test_graphiqls_introspection_query_passes_the_depth_limit() -> None:
    """`ofType` chains (wrapping types unwrapped) are not counted: GraphiQL's query nests 15 otherwise,
    and GraphiQL then has no schema (no docs, no completion); every other field still counts."""
    query = get_introspection_query(input_value_deprecation=True, schema_description=True, specified_by_url=True)
    assert SCHEMA.documents.check(query).errors == []
    deep = "{ __schema { types { " + "fields { type { " * 4 + "name" + " }" * 11  # nests 11
    assert [e.extensions for e in SCHEMA.documents.check(deep).errors] == [
        {"code": "TOO_DEEP", "limit": LIMITS.max_depth}
    ]


async def test_deep_nesting_is_refused(gate: httpx.AsyncClient) -> None:
    nested = '{ member(id: "1") { ' + "mergedInto { " * 12 + "id" + " }" * 12 + " } }"
    error = await _refused(gate, nested)
    assert error["extensions"] == {"code": "TOO_DEEP", "limit": LIMITS.max_depth}
    assert "exceeds maximum operation depth" in error["message"]
    parser_deep = "{ " + "a { " * 3_000 + "b" + " }" * 3_000 + " }"
    error = await _refused(gate, parser_deep)
    assert error["extensions"]["code"] in ("TOO_DEEP", "TOO_MANY_TOKENS")


PAGES = """query($n: Int!, $m: Int!) { members(brand: "b", first: $n) { edges { node {
  pointsHistory(first: $m) { nodes { kind amount note createdAt } } } } } }"""


async def test_list_sizes_multiply_through_nesting(gate: httpx.AsyncClient) -> None:
    literal = """{ members(brand: "b", first: 100) { edges { node {
      pointsHistory(first: 100) { nodes { kind amount note createdAt } } } } } }"""
    error = await _refused(gate, literal)
    assert error["extensions"]["code"] == "TOO_COSTLY"
    assert error["extensions"]["cost"] > LIMITS.max_cost
    error = await _refused(gate, PAGES, n=100, m=100)
    assert error["extensions"]["code"] == "TOO_COSTLY"


async def test_small_pages_of_the_same_document_run(gql: GraphQL, brand: str) -> None:
    body = await gql.raw(PAGES.replace('"b"', f'"{brand}"'), n=10, m=10)
    assert "errors" not in body, body
    assert body["data"]["members"]["edges"] == []


async def test_a_limit_refusal_waits_before_answering(gate: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """Clients that send such documents in a loop get few answers a second (bench/abuse.py)."""
    monkeypatch.setattr(graphql_app_module, "ABUSE_DELAY", 0.4)
    started = time.perf_counter()
    error = await _refused(gate, _aliases(40))
    assert error["extensions"]["code"] == "TOO_MANY_ALIASES"
    assert time.perf_counter() - started >= 0.4


async def test_refusals_over_get_too(gate: httpx.AsyncClient) -> None:
    response = await gate.get("/graphql", params={"query": _aliases(40)})
    assert response.status_code == 200
    assert response.json()["errors"][0]["extensions"]["code"] == "TOO_MANY_ALIASES"


# --- bodies -----------------------------------------------------------------------------------------


async def test_a_body_over_the_limit_is_413_before_it_is_read(gate: httpx.AsyncClient) -> None:
    big = json.dumps({"query": "{ __typename }", "padding": "x" * (2 * MAX_BODY)}).encode()
    response = await gate.post("/graphql", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["errors"][0]["extensions"] == {"code": "BODY_TOO_LARGE", "limit": MAX_BODY}


async def test_a_streamed_body_is_cut_at_the_limit(gate: httpx.AsyncClient) -> None:
    sent: list[int] = []

    async def chunks() -> AsyncIterator[bytes]:  # no content-length: chunked
        yield b'{"query": "{ __typename }", "padding": "'
        for _ in range(64):
            sent.append(1)
            yield b"x" * 65_536
        yield b'"}'

    response = await gate.post("/graphql", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["errors"][0]["extensions"]["code"] == "BODY_TOO_LARGE"
    assert len(sent) < 64  # the rest was never read


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"null", "JSON object"),
        (b"[]", "JSON object"),
        (b'{"query": null}', "JSON object"),
        (b"\xff\xfe{}", "UTF-8"),
        (b'{"query": "{ __typename }", "variables": "x"}', '"variables"'),
        (b'{"query": "{ __typename }", "operationName": 3}', '"operationName"'),
        (b'{"query": "{ __typename }", "variables": {"name": "a\\u0000b"}}', "variables.name holds a NUL"),
        (b'{"query": "{ __typename }", "variables": {"p": {"q": ["\\ud800"]}}}', "variables.p.q[0] holds an unpaired"),
    ],
)
async def test_malformed_bodies_are_400_saying_what_is_wrong(gate: httpx.AsyncClient, body: bytes, says: str) -> None:
    response = await gate.post("/graphql", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    error = response.json()["errors"][0]
    assert error["extensions"]["code"] == "BAD_REQUEST"
    assert says in error["message"]


async def test_other_media_types_are_415(gate: httpx.AsyncClient) -> None:
    response = await gate.post("/graphql", content=b"{ __typename }", headers={"content-type": "text/plain"})
    assert response.status_code == 415


async def test_text_that_cannot_be_stored_is_refused_naming_the_argument(gate: httpx.AsyncClient) -> None:
    query = 'mutation { registerMember(brand: "b", channel: "tmall", externalId: "a\\u0000b") { __typename } }'
    error = await _refused(gate, query)
    assert error["extensions"] == {"code": "INVALID_INPUT", "field": "externalId"}
    assert "'externalId' of 'registerMember' holds a NUL character" in error["message"]
    # graphql-core's lexer refuses an unpaired surrogate escape itself.
    error = await _refused(gate, query.replace("a\\u0000b", "\\ud800x"))
    assert error["extensions"]["code"] == "SYNTAX_ERROR"


# --- the memory of documents ------------------------------------------------------------------------


def test_remembered_documents_are_bounded_by_their_text() -> None:
    documents = Documents(SCHEMA._schema, Limits(cache_chars=5_000))
    for i in range(200):
        documents.check("{ " + f"a{i}: __typename " * 10 + "}")
    assert documents._chars <= 5_000
    assert sum(len(text) for text in documents._known) == documents._chars
    assert 0 < len(documents._known) < 200


def test_a_repeated_document_is_checked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    documents = Documents(SCHEMA._schema)
    calls: list[str] = []
    check = documents._check

    def counting(text: str) -> Any:
        calls.append(text)
        return check(text)

    monkeypatch.setattr(documents, "_check", counting)
    for _ in range(3):
        assert documents.parsed("{ __typename }") is not None
    assert calls == ["{ __typename }"]


async def test_long_new_documents_are_checked_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    documents = Documents(SCHEMA._schema)
    threads: list[threading.Thread] = []
    check = documents._check

    def recording(text: str) -> Any:
        threads.append(threading.current_thread())
        return check(text)

    monkeypatch.setattr(documents, "_check", recording)
    await documents.check_async("{ __typename }")
    await documents.check_async("{ " + "__typename " * 400 + "}")
    assert threads[0] is threading.main_thread()
    assert threads[1] is not threading.main_thread()

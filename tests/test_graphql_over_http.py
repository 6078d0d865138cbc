"""GraphQL over HTTP: the application/graphql-response+json media type, and the graphql-http audit suite.

The audit (npm package graphql-http, tests/graphql_http/) runs against a real server and must pass
every MUST and SHOULD audit. The Python tests below pin the same behaviours so that a failure reads
without node: what changes under the newer media type, and that application/json answers as before.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.replies import GRAPHQL_RESPONSE, JSON, negotiate
from store.access.roles import Role
from tests.conftest import ROOT, new_key
from tests.server import Server

AUDIT = ROOT / "tests" / "graphql_http"
RESPONSE_TYPE = "application/graphql-response+json; charset=utf-8"
AS_RESPONSE = {"accept": GRAPHQL_RESPONSE}
AS_JSON = {"accept": JSON}
PARSE_ERROR = "{"
INVALID = "{ noSuchField }"
COERCION = "query Coerce($id: ID!) { member(id: $id) { id } }"
TOO_DEEP = "{ __schema { types { " + "fields { type { " * 5 + "name" + " }" * 13  # 12 deep: the limit is 10


def test_the_graphql_http_audit_passes_every_must_and_should(database_url: str, tmp_path: Path) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not installed: the GraphQL over HTTP audit needs Node.js 18 or later")
    if not (AUDIT / "node_modules" / "graphql-http").is_dir():
        pytest.fail("the audit suite is not installed: run `npm ci --prefix tests/graphql_http`")
    server = Server(tmp_path / "home", database_url)
    try:
        server.wait_ready()
        audit = subprocess.run(
            [node, str(AUDIT / "audit.mjs"), f"{server.url}/graphql"], capture_output=True, text=True, timeout=120
        )
    finally:
        server.stop()
    assert audit.returncode == 0, audit.stdout + audit.stderr
    assert "0 MUST failed, 0 SHOULD failed" in audit.stdout, audit.stdout


@pytest.mark.parametrize(
    ("accept", "chosen"),
    [
        (None, JSON),
        ("", JSON),
        ("*/*", JSON),
        ("application/*", JSON),
        ("application/json", JSON),
        (GRAPHQL_RESPONSE, GRAPHQL_RESPONSE),
        ("Application/GraphQL-Response+JSON; charset=utf-8", GRAPHQL_RESPONSE),
        ("application/graphql-response+json, application/json;q=0.9", GRAPHQL_RESPONSE),  # Apollo's clients
        ("application/json;q=0.9, application/graphql-response+json", GRAPHQL_RESPONSE),
        ("application/json, application/graphql-response+json", JSON),  # equal q: the first named
        ("application/graphql-response+json;q=0.5, */*", JSON),
        ("application/json;q=0, */*", GRAPHQL_RESPONSE),  # refused by name, the wildcard takes the other
        ("application/*;q=0.1, application/graphql-response+json;q=0.2", GRAPHQL_RESPONSE),
        ("text/html", JSON),  # neither: answered in the default rather than 406
        ("application/graphql-response+json;q=0", JSON),
        ("application/graphql-response+json;q=nonsense", JSON),
    ],
)
def test_the_accept_header_chooses_the_media_type(accept: str | None, chosen: str) -> None:
    assert negotiate(accept) == chosen


async def _post(client: httpx.AsyncClient, headers: dict[str, str], query: str, **variables: Any) -> httpx.Response:
    return await client.post("/graphql", json={"query": query, "variables": variables}, headers=headers)


async def test_a_query_answers_in_the_accepted_media_type(client: httpx.AsyncClient) -> None:
    newer = await _post(client, AS_RESPONSE, "{ __typename }")
    assert (newer.status_code, newer.headers["content-type"]) == (200, RESPONSE_TYPE)
    assert newer.json() == {"data": {"__typename": "Query"}}
    for headers in (AS_JSON, {}, {"accept": "*/*"}):
        older = await _post(client, headers, "{ __typename }")
        assert (older.status_code, older.headers["content-type"]) == (200, "application/json"), headers
        assert older.json() == {"data": {"__typename": "Query"}}


@pytest.mark.parametrize(
    ("query", "variables", "code"),
    [
        (PARSE_ERROR, {}, "SYNTAX_ERROR"),
        (INVALID, {}, "INVALID_DOCUMENT"),
        (COERCION, {"id": None}, None),  # graphql-core's coercion error, from strawberry's path
        (TOO_DEEP, {}, "TOO_DEEP"),
    ],
)
async def test_request_errors_are_400_without_data_under_the_newer_type_only(
    client: httpx.AsyncClient, query: str, variables: dict[str, Any], code: str | None
) -> None:
    newer = await _post(client, AS_RESPONSE, query, **variables)
    assert (newer.status_code, newer.headers["content-type"]) == (400, RESPONSE_TYPE), newer.text
    body = newer.json()
    assert "data" not in body
    assert body["errors"][0].get("extensions", {}).get("code") == code
    older = await _post(client, AS_JSON, query, **variables)
    assert (older.status_code, older.headers["content-type"]) == (200, "application/json"), older.text
    assert older.json() == {"data": None, "errors": body["errors"]}


async def test_a_field_the_key_may_not_select_is_403_under_the_newer_type(
    client: httpx.AsyncClient, database_url: str
) -> None:
    token = await new_key(database_url, Role.PARTNER, all_brands=True)
    refused = '{ auditLog(brand: "any") { edges { node { operation } } } }'
    headers = {"authorization": f"Bearer {token}"}
    newer = await _post(client, headers | AS_RESPONSE, refused)
    assert newer.status_code == 403, newer.text
    assert newer.json()["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    assert "data" not in newer.json()
    older = await _post(client, headers | AS_JSON, refused)
    assert older.status_code == 200
    assert older.json()["data"] is None


async def test_strawberrys_refusals_are_graphql_responses_under_the_newer_type(client: httpx.AsyncClient) -> None:
    mutation = {"query": "mutation { __typename }"}
    newer = await client.get("/graphql", params=mutation, headers=AS_RESPONSE)
    assert (newer.status_code, newer.headers["content-type"]) == (400, RESPONSE_TYPE)
    assert newer.json() == {
        "errors": [{"message": "mutations are not allowed when using GET", "extensions": {"code": "BAD_REQUEST"}}]
    }
    older = await client.get("/graphql", params=mutation, headers=AS_JSON)
    assert (older.status_code, older.text) == (400, "mutations are not allowed when using GET")  # as before


async def test_http_level_refusals_keep_their_status_in_either_type(client: httpx.AsyncClient) -> None:
    for accept, content_type in ((AS_RESPONSE, RESPONSE_TYPE), (AS_JSON, "application/json")):
        not_json = await client.post(
            "/graphql", content=b"{ __typename }", headers={"content-type": "text/plain"} | accept
        )
        assert (not_json.status_code, not_json.headers["content-type"]) == (415, content_type)
        broken = await client.post(
            "/graphql", content=b'{"query', headers={"content-type": "application/json"} | accept
        )
        assert (broken.status_code, broken.headers["content-type"]) == (400, content_type)
        assert broken.json()["errors"][0]["extensions"]["code"] == "BAD_REQUEST"


async def test_an_empty_body_is_400_not_413(client: httpx.AsyncClient) -> None:
    response = await client.post("/graphql", content=b"", headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    error = response.json()["errors"][0]
    assert error["extensions"]["code"] == "BAD_REQUEST"
    assert "not JSON" in error["message"]


async def test_get_requests_negotiate_too(client: httpx.AsyncClient) -> None:
    good = await client.get("/graphql", params={"query": "{ __typename }"}, headers=AS_RESPONSE)
    assert (good.status_code, good.headers["content-type"]) == (200, RESPONSE_TYPE)
    bad = await client.get("/graphql", params={"query": INVALID}, headers=AS_RESPONSE)
    assert bad.status_code == 400
    assert "data" not in bad.json()
    older = await client.get("/graphql", params={"query": INVALID}, headers=AS_JSON)
    assert older.status_code == 200
    assert json.loads(older.text)["data"] is None

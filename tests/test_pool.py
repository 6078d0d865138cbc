"""The connection pool never wedges, and while it cannot serve, clients are told so at once.

Found at 9bd6195 (issue 12): one request of 20 aliased audience counts with one bad alias cancelled
its siblings while they waited for connections, psycopg_pool lost the connections handed to them,
and after a few such requests every request answered "Unexpected error." after 30 s.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from psycopg_pool import AsyncConnectionPool

from api.state import AppState
from resolvers import brands
from store.pools import Pool, watch
from tests.conftest import new_brand, serving

COUNTS = "query(" + ", ".join(f"$e{i}: String!" for i in range(20)) + ", $b: String!) { "
COUNTS += " ".join(f"a{i}: audience(brand: $b, expression: $e{i}) {{ count expression }}" for i in range(20)) + " }"


def _whole(pool: Pool) -> bool:
    stats = pool.get_stats()
    return not pool.checkouts and stats["pool_available"] == stats["pool_size"]


@pytest.fixture
async def small(database_url: str, tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, AppState]]:
    async with serving(database_url, tmp_path, pool_min_size=2, pool_max_size=10, pool_timeout=20) as served:
        yield served


async def test_batches_with_one_bad_count_leave_the_pool_whole(
    small: tuple[httpx.AsyncClient, AppState], pool: AsyncConnectionPool[Any]
) -> None:
    http, state = small
    brand = await new_brand(pool)
    good = {f"e{i}": "NOT tier:gold" for i in range(20)} | {"b": brand}
    bad = good | {"e7": "points>=1000AND tag:vip"}
    for batch in range(30):
        response = await http.post("/graphql", json={"query": COUNTS, "variables": bad if batch % 3 == 2 else good})
        assert response.status_code == 200, response.text
        body = response.json()
        if batch % 3 == 2:
            assert body["data"] is None
            assert body["errors"][0]["extensions"]["code"] == "INVALID_EXPRESSION"
        else:
            assert [body["data"][f"a{i}"]["count"] for i in range(20)] == [0] * 20
    for _ in range(250):
        if _whole(state.pool):
            break
        await asyncio.sleep(0.02)
    assert _whole(state.pool), state.pool.get_stats()
    answered = await http.post("/graphql", json={"query": "{ brands { code } }"})
    assert brand in [b["code"] for b in answered.json()["data"]["brands"]]


async def test_the_watchdog_reclaims_a_connection_nobody_returns(database_url: str) -> None:
    async with Pool(database_url, min_size=1, max_size=1, kwargs={"autocommit": True}) as pool:
        leaked = await pool.getconn()  # never given back by its holder
        watchdog = asyncio.create_task(watch(pool, warn_after=0.05, reclaim_after=0.1, every=0.05))
        try:
            async with pool.connection(timeout=3) as conn:
                assert await (await conn.execute("SELECT 1")).fetchone() == (1,)
        finally:
            watchdog.cancel()
        assert leaked.closed
        await pool.putconn(leaked)  # a late return of the reclaimed connection is harmless
        assert _whole(pool)


async def test_a_pool_timeout_is_a_503_with_retry_after(database_url: str, tmp_path: Path) -> None:
    async with serving(database_url, tmp_path, pool_min_size=1, pool_max_size=1, pool_timeout=0.3) as (http, state):
        async with state.pool.connection():
            for query in ("{ brands { code } }", '{ member(id: "1") { id } }'):  # general path, compiled read
                response = await http.post("/graphql", json={"query": query})
                assert response.status_code == 503, response.text
                assert response.headers["retry-after"] == "1"
                assert response.json()["errors"][0]["extensions"]["code"] == "SERVICE_UNAVAILABLE"
        response = await http.post("/graphql", json={"query": "{ brands { code } }"})
        assert response.status_code == 200


async def test_a_wedged_pool_answers_at_once_and_readyz_says_so(database_url: str, tmp_path: Path) -> None:
    async with serving(database_url, tmp_path, pool_min_size=1, pool_max_size=1, request_deadline=0.2) as (
        http,
        state,
    ):
        stuck = await state.pool.getconn()
        await asyncio.sleep(0.45)  # held for longer than twice the request deadline (the watchdog reclaims at 2 s)
        response = await http.post("/graphql", json={"query": "{ brands { code } }"})
        assert response.status_code == 503
        assert response.json()["errors"][0]["extensions"]["code"] == "SERVICE_UNAVAILABLE"
        ready = await http.get("/readyz")
        assert ready.status_code == 503
        assert "stuck" in ready.json()["database"]
        await state.pool.putconn(stuck)
        assert (await http.get("/readyz")).status_code == 200


async def test_a_request_past_its_deadline_is_a_503(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def slow(info: object) -> list[object]:
        await asyncio.sleep(5)
        return []

    monkeypatch.setattr(brands, "list_brands", slow)
    async with serving(database_url, tmp_path, request_deadline=0.2) as (http, _):
        response = await http.post("/graphql", json={"query": "{ brands { code } }"})
    assert response.status_code == 503
    error = response.json()["errors"][0]
    assert error["extensions"]["code"] == "DEADLINE_EXCEEDED"
    assert "retry is safe" in error["message"]


async def test_every_statement_is_bounded_by_statement_timeout(database_url: str, tmp_path: Path) -> None:
    async with serving(database_url, tmp_path, statement_timeout=1.5) as (_, state), state.pool.connection() as conn:
        assert await (await conn.execute("SHOW statement_timeout")).fetchone() == ("1500ms",)

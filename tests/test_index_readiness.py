"""Never a silently stale count (issue 13): while a brand's audience index is being built, audience
reads wait for it a little, then answer INDEX_NOT_READY; freshness, the brand and /readyz say so.

Found at 9bd6195: after `omnimember demo` with the server stopped, then `serve`, every audience count
answered 0 until the index had been rebuilt (42 s at 1,000,000 members). Here a brand's members are
bulk-loaded the way the demo loads them (row triggers off, one request for a full build queued), and
the build is held back by taking the brand's index lock, as a running rebuild holds it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from psycopg_pool import AsyncConnectionPool

from store.audiences import selections
from store.audiences.bitmaps import lock_brand
from store.audiences.deltas import apply_brand
from store.brands import brand_by_code
from tests.conftest import GraphQL, new_brand, serving

MEMBERS = 40
COUNT = 'query($b: String!) { audience(brand: $b, expression: "NOT tier:gold") { count } }'
INDEX = "{ brands { code audienceIndex { state pending } } }"


async def _index(gql: GraphQL, brand: str) -> dict[str, Any]:
    found: dict[str, Any] = next(b for b in (await gql(INDEX))["brands"] if b["code"] == brand)["audienceIndex"]
    return found


async def _bulk_load(pool: AsyncConnectionPool[Any], brand: str, *, request_build: bool) -> int:
    async with pool.connection() as conn, conn.transaction():
        brand_id: int = (await brand_by_code(conn, brand))["id"]
        await conn.execute("SET LOCAL session_replication_role = replica")  # no triggers, as the demo's load
        await conn.execute(
            "INSERT INTO members (brand_id, tier) SELECT %s, 'silver' FROM generate_series(1, %s)", (brand_id, MEMBERS)
        )
        await conn.execute("DELETE FROM audience_index_state WHERE brand_id = %s", (brand_id,))
        if request_build:
            await conn.execute("INSERT INTO audience_changes (brand_id, member_id) VALUES (%s, 0)", (brand_id,))
    return brand_id


@pytest.fixture
async def held(pool: AsyncConnectionPool[Any]) -> AsyncIterator[tuple[str, asyncio.Event]]:
    """A bulk-loaded brand whose build cannot start until the event is set."""
    brand = await new_brand(pool)
    brand_id = await _bulk_load(pool, brand, request_build=True)
    release, locked = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        async with pool.connection() as conn, conn.transaction():
            await lock_brand(conn, brand_id, wait=True)
            locked.set()
            await release.wait()

    holder = asyncio.create_task(hold())
    await locked.wait()
    try:
        yield brand, release
    finally:
        release.set()
        await holder


async def test_reads_answer_index_not_ready_while_the_index_is_built(
    gql: GraphQL,
    client: httpx.AsyncClient,
    held: tuple[str, asyncio.Event],
    monkeypatch: pytest.MonkeyPatch,
    pool: AsyncConnectionPool[Any],
) -> None:
    brand, release = held
    monkeypatch.setattr(selections, "INDEX_WAIT", 0.3)
    body = await gql.raw(COUNT, b=brand)
    assert body["data"] is None
    error = body["errors"][0]
    assert error["extensions"] == {"code": "INDEX_NOT_READY", "pending": 1}
    assert "being built" in error["message"]
    assert (await _index(gql, brand)) == {"state": "BUILDING", "pending": 1}
    ready = (await client.get("/readyz")).json()
    assert brand in ready["audienceIndex"]["building"]
    exported = await client.get("/audiences/export", params={"brand": brand, "expression": "NOT tier:gold"})
    assert exported.status_code == 503
    assert exported.json()["error"]["code"] == "INDEX_NOT_READY"
    saved = await gql(
        'mutation($b: String!) { saveAudience(brand: $b, name: "n", expression: "NOT tier:gold") '
        "{ __typename ... on IndexNotReady { code pending } } }",
        b=brand,
    )
    assert saved["saveAudience"] == {"__typename": "IndexNotReady", "code": "INDEX_NOT_READY", "pending": 1}

    release.set()  # the build may run: here, as the app's applier would (busy with other tests' brands)
    async with pool.connection() as conn:
        await apply_brand(conn, (await brand_by_code(conn, brand))["id"], wait=True)
    assert (await gql(COUNT, b=brand))["audience"]["count"] == MEMBERS
    assert (await _index(gql, brand)) == {"state": "READY", "pending": 0}


async def test_a_brand_never_built_gets_built_on_its_first_read(
    gql: GraphQL, pool: AsyncConnectionPool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    brand = await new_brand(pool)
    brand_id = await _bulk_load(pool, brand, request_build=False)  # members, no index, nothing queued
    monkeypatch.setattr(selections, "INDEX_WAIT", 0.0)
    first = await gql.raw(COUNT, b=brand)  # the read queues the build (whoever applies it)
    queued = "SELECT count(*) FROM audience_changes WHERE brand_id = %s AND member_id = 0"
    async with pool.connection() as conn:
        row = await (await conn.execute(queued, (brand_id,))).fetchone()
        assert first.get("data") is not None or row == (1,)
        await apply_brand(conn, brand_id, wait=True)  # what the app's applier does within a second
    assert (await gql(COUNT, b=brand))["audience"]["count"] == MEMBERS


async def test_a_new_brand_counts_at_once(gql: GraphQL, pool: AsyncConnectionPool[Any]) -> None:
    brand = await new_brand(pool)
    assert (await _index(gql, brand))["state"] == "READY"
    assert (await gql(COUNT, b=brand))["audience"]["count"] == 0


async def test_a_list_of_brands_reads_their_indexes_on_one_connection(
    database_url: str, tmp_path: Path, pool: AsyncConnectionPool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the fuzz suite: `brands { audienceIndex }` took a pooled connection per brand, and
    with a few hundred brands the pool ran dry (503)."""
    for _ in range(12):
        await new_brand(pool)
    async with serving(database_url, tmp_path, pool_min_size=1, pool_max_size=2) as (http, state):
        checkouts: list[int] = []
        getconn = state.pool.getconn

        async def counted(timeout: float | None = None) -> Any:  # noqa: ASYNC109 (the signature it stands for)
            checkouts.append(1)
            return await getconn(timeout)

        monkeypatch.setattr(state.pool, "getconn", counted)
        response = await http.post("/graphql", json={"query": INDEX})
    assert response.status_code == 200, response.text
    brands = response.json()["data"]["brands"]
    assert len(brands) >= 12
    # The brands, then their indexes (and the background applier's passes): not one per brand.
    assert len(checkouts) < len(brands) / 2


async def test_an_index_of_an_older_encoding_is_rebuilt_before_any_count_reads_it(
    gql: GraphQL, client: httpx.AsyncClient, pool: AsyncConnectionPool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An index built before range-encoded digits holds bit slices, no digit keys: read as it is,
    `points >= 350` would count nobody. It counts as not built until the rebuild (an upgrade's first
    start), which the applier runs unasked."""
    brand = await new_brand(pool)
    brand_id = await _bulk_load(pool, brand, request_build=True)
    async with pool.connection() as conn:
        await conn.execute("UPDATE members SET points_balance = 400 WHERE brand_id = %s", (brand_id,))
        await apply_brand(conn, brand_id, wait=True)
        # What the previous encoding's build left: its version in the state, slices instead of digits.
        await conn.execute(
            "UPDATE audience_index_state SET widths = widths || '{\"bands\": 2}' WHERE brand_id = %s", (brand_id,)
        )
        await conn.execute("DELETE FROM audience_bitmaps WHERE brand_id = %s AND key LIKE 'ge:points:d%%'", (brand_id,))
    monkeypatch.setattr(selections, "INDEX_WAIT", 0.0)
    threshold = 'query($b: String!) { audience(brand: $b, expression: "points >= 350") { count } }'
    body = await gql.raw(threshold, b=brand)
    if body.get("data") is not None:  # only if the app's applier rebuilt it in between
        assert body["data"]["audience"]["count"] == MEMBERS
    else:
        assert body["errors"][0]["extensions"]["code"] == "INDEX_NOT_READY"
        assert brand in (await client.get("/readyz")).json()["audienceIndex"]["building"]
    async with pool.connection() as conn:
        applied = await apply_brand(conn, brand_id, wait=True)
    assert applied is not None
    assert (await gql(threshold, b=brand))["audience"]["count"] == MEMBERS
    assert (await _index(gql, brand))["state"] == "READY"


async def test_the_change_queue_is_read_by_brand_through_an_index(pool: AsyncConnectionPool[Any]) -> None:
    """Every reader of audience_changes asks by brand (the drain, readiness, freshness, /readyz). Found
    in CI: without an index each asked by scanning the whole queue once per brand, and with thousands
    of brands /readyz took 1.7 s, past a test server's one-second readiness probe."""
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")
        cursor = await conn.execute(
            "EXPLAIN (FORMAT JSON) SELECT 1 FROM audience_changes WHERE brand_id = 1 AND member_id = 0"
        )
        row = await cursor.fetchone()
    assert row is not None
    assert "Seq Scan" not in json.dumps(row[0])

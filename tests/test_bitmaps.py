"""The bitmap index's upkeep: packing, the change queue its triggers fill, deltas, freshness."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import threading
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from store.audiences import bitmaps, deltas, index_facts
from store.audiences.bitmaps import chunk_rows, sparse_rows
from store.audiences.deltas import IndexState, apply_brand, freshness, run_applier
from store.audiences.engine import decode_chunks
from store.audiences.index_facts import among
from store.brands import brand_by_code
from tagquery.bitmap_keys import ALL_FAMILIES, CHUNK_SIZE, FAMILIES, Layout, digit_key
from tests.conftest import new_brand
from tests.server import OMNIMEMBER

QUEUED_ALL = 32767  # "every family" in the change queue's triggers and default (migration 0004)


def test_chunk_rows_and_decoding_round_trip() -> None:
    ids = np.array([1, 2, 65_535, 65_536, 65_537, 3 * CHUNK_SIZE + 7, 2, 1], dtype=np.int64)
    rows = list(chunk_rows("k", ids))
    assert [chunk for _, chunk, _ in rows] == [0, 1, 3]
    assert all(len(bits) == CHUNK_SIZE // 8 for _, _, bits in rows)
    # What `int4send(chunk) || varbit_send(bits)` returns, one record per chunk.
    data = b"".join(chunk.to_bytes(4, "big") + CHUNK_SIZE.to_bytes(4, "big") + bits for _, chunk, bits in rows)
    assert decode_chunks(data).tolist() == sorted(set(ids.tolist()))
    assert decode_chunks(None).size == 0


def _decoded(rows: list[tuple[str, int, bytes]]) -> list[int]:
    data = b"".join(chunk.to_bytes(4, "big") + CHUNK_SIZE.to_bytes(4, "big") + bits for _, chunk, bits in rows)
    members: list[int] = decode_chunks(data).tolist()
    return members


# Members in any order with repeats, of few chunks or spread over hundreds (bitmaps._SPAN), sparse
# (packed together) or dense (booleans per chunk): each path packs exactly the members' bits.
_spread = st.integers(0, 2).map(lambda n: (1, 40, 600)[n] * CHUNK_SIZE)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(_spread, st.integers(0, 10**6)), min_size=1, max_size=3),
    st.integers(0, 2000),
    st.randoms(use_true_random=False),
)
def test_every_packing_path_sets_exactly_the_members_bits(keys: list[tuple[int, int]], dense: int, rnd: Any) -> None:
    rows: list[tuple[str, int, bytes]] = []
    expected: dict[str, list[int]] = {}
    for n, (spread, offset) in enumerate(keys):
        ids = [offset + rnd.randrange(spread) for _ in range(rnd.choice((0, 3, bitmaps._SPARSE - 1, dense)))]
        ids += ids[: len(ids) // 5]  # repeats
        rnd.shuffle(ids)
        key = f"k{n}"
        expected[key] = sorted(set(ids))
        rows += list(chunk_rows(key, np.array(ids, dtype=np.int64)))
    for key, members in expected.items():
        mine = [row for row in rows if row[0] == key]
        assert [chunk for _, chunk, _ in mine] == sorted({m >> 16 for m in members})  # held chunks only, ascending
        assert _decoded(mine) == members
    together = list(bitmaps.sparse_rows([(key, np.array(m, dtype=np.int64)) for key, m in expected.items()]))
    assert sorted(together) == sorted(rows)  # packed together, as index_rows does for sparse keys


async def _brand(pool: AsyncConnectionPool[Any], members: int) -> tuple[int, list[int]]:
    async with pool.connection() as conn:
        brand_id: int = (await brand_by_code(conn, await new_brand(pool)))["id"]
        rows = await conn.execute(
            "INSERT INTO members (brand_id, tier, city) SELECT %s, 'silver', '上海' FROM generate_series(1, %s)"
            " RETURNING id",
            (brand_id, members),
        )
        ids = [row[0] for row in await rows.fetchall()]
        assert await apply_brand(conn, brand_id, wait=True) is not None
    return brand_id, ids


async def _queued(conn: AsyncConnection[Any], brand_id: int) -> list[int]:
    return [member_id for member_id, _ in await _queued_families(conn, brand_id)]


async def _queued_families(conn: AsyncConnection[Any], brand_id: int) -> list[tuple[int, int]]:
    rows = await conn.execute(
        "SELECT member_id, families FROM audience_changes WHERE brand_id = %s ORDER BY 1, 2", (brand_id,)
    )
    return [(row[0], row[1]) for row in await rows.fetchall()]


async def _keys(conn: AsyncConnection[Any], brand_id: int) -> dict[str, int]:
    rows = await conn.execute(
        "SELECT key, sum(bit_count(bits))::int FROM audience_bitmaps WHERE brand_id = %s GROUP BY key", (brand_id,)
    )
    return {key: count for key, count in await rows.fetchall() if count}


async def test_only_writes_that_change_a_fact_are_queued(pool: AsyncConnectionPool[Any]) -> None:
    brand_id, (a, b, c) = await _brand(pool, 3)
    # One transaction: the server's applier (if running) cannot drain what it cannot see yet.
    async with pool.connection() as conn, conn.transaction():
        assert await _queued(conn, brand_id) == []
        await conn.execute("UPDATE members SET display_name = 'x' WHERE id = %s", (a,))
        assert await _queued(conn, brand_id) == []
        await conn.execute("UPDATE members SET points_balance = 5 WHERE id = ANY(%s)", ([a, b],))
        await conn.execute(
            "INSERT INTO member_identities (brand_id, member_id, channel, external_id) VALUES (%s, %s, 'jd', 'j')",
            (brand_id, c),
        )
        await conn.execute("UPDATE member_identities SET member_id = %s WHERE member_id = %s", (a, c))
        await conn.execute("UPDATE members SET merged_into = %s, merged_at = now() WHERE id = %s", (a, b))
        points, channel = FAMILIES["points"], FAMILIES["channel"]
        assert await _queued_families(conn, brand_id) == [
            (a, channel),
            (a, points),
            (b, points),
            (b, QUEUED_ALL),
            (c, channel),
            (c, channel),
        ]
    # A merge queues every family migration 0004 knew (it touches `u`): the applier reads it as all of them.
    assert deltas._families(QUEUED_ALL) == ALL_FAMILIES


async def test_a_delta_rewrites_the_touched_rows_and_nothing_else(pool: AsyncConnectionPool[Any]) -> None:
    brand_id, ids = await _brand(pool, 5)
    async with pool.connection() as conn:
        assert (await _keys(conn, brand_id))["city:上海"] == 5
        before = await conn.execute(
            "SELECT key, xmin::text FROM audience_bitmaps WHERE brand_id = %s ORDER BY 1, 2", (brand_id,)
        )
        versions = dict(await before.fetchall())
        await conn.execute("UPDATE members SET city = '北京', points_balance = 300 WHERE id = %s", (ids[0],))
        applied = await apply_brand(conn, brand_id, wait=True)
        assert applied is not None
        assert not applied.rebuilt  # (the server's applier, if running, may have applied it first)
        keys = await _keys(conn, brand_id)
        assert (keys["city:上海"], keys["city:北京"]) == (4, 1)
        # 300 = 4 * 64 + 44: digit 0 is >= 1 .. 44, digit 1 >= 1 .. 4 (the others hold 0 points)
        digits = {*(f"ge:points:d0:{j}" for j in range(1, 45)), *(f"ge:points:d1:{j}" for j in range(1, 5))}
        assert {key for key in keys if key.startswith("ge:points:d")} == digits
        after = await conn.execute(
            "SELECT key, xmin::text FROM audience_bitmaps WHERE brand_id = %s ORDER BY 1, 2", (brand_id,)
        )
        rewritten = {key for key, version in await after.fetchall() if versions.get(key) != version}
        bands = {"ge:points:100", "ge:points:200", "ge:points:300"}  # 300 points reach these boundaries
        assert rewritten == {"city:上海", "city:北京", *digits, *bands}
        widths = await conn.execute("SELECT widths FROM audience_index_state WHERE brand_id = %s", (brand_id,))
        assert ((await widths.fetchone()) or [{}])[0]["points"] == 9


async def test_a_delta_compresses_its_bitmaps_as_the_index_does(pool: AsyncConnectionPool[Any]) -> None:
    """The delta's temp rows use the index column's compression (lz4 where the server has it),
    not the default pglz that cost 15x the CPU."""
    brand_id, ids = await _brand(pool, 5)
    async with pool.connection() as conn, conn.transaction():  # the temp rows live until the commit
        await conn.execute("UPDATE members SET points_balance = 300 WHERE id = %s", (ids[0],))
        assert await apply_brand(conn, brand_id, wait=True) is not None
        delta = await conn.execute("SELECT DISTINCT pg_column_compression(bits) FROM audience_delta")
        index = await conn.execute(
            "SELECT DISTINCT pg_column_compression(bits) FROM audience_bitmaps WHERE brand_id = %s", (brand_id,)
        )
        methods = [row[0] for row in await delta.fetchall()]
        assert methods == [row[0] for row in await index.fetchall()]
        assert methods[0] is not None


async def test_merged_and_erased_members_leave_the_universe(pool: AsyncConnectionPool[Any]) -> None:
    brand_id, (a, b, c) = await _brand(pool, 3)
    async with pool.connection() as conn:
        await conn.execute("UPDATE members SET merged_into = %s, merged_at = now() WHERE id = %s", (a, b))
        await conn.execute("DELETE FROM members WHERE id = %s", (c,))
        await apply_brand(conn, brand_id, wait=True)
        assert (await _keys(conn, brand_id))["u"] == 1


async def test_a_time_zone_change_rebuilds_the_brand(pool: AsyncConnectionPool[Any]) -> None:
    brand_id, _ = await _brand(pool, 2)
    async with pool.connection() as conn:
        built = (await freshness(conn, brand_id)).built_at
        async with conn.transaction():
            await conn.execute("UPDATE brand_rules SET timezone = 'Europe/Paris' WHERE brand_id = %s", (brand_id,))
            assert await _queued(conn, brand_id) == [0]
        await apply_brand(conn, brand_id, wait=True)
        rebuilt = (await freshness(conn, brand_id)).built_at
        assert built is not None
        assert rebuilt is not None
        assert rebuilt > built


async def test_freshness_tracks_the_oldest_unapplied_change(pool: AsyncConnectionPool[Any]) -> None:
    brand_id, ids = await _brand(pool, 2)
    async with pool.connection() as conn:
        current = await freshness(conn, brand_id)
        assert current.pending == 0
        assert current.lag is not None
        assert current.lag < timedelta(seconds=1)
        async with conn.transaction():  # pending until it commits, whoever applies it then
            written = await (
                await conn.execute("UPDATE members SET tier = 'gold' WHERE id = %s RETURNING now()", (ids[0],))
            ).fetchone()
            assert written is not None
            behind = await freshness(conn, brand_id)
        assert behind.pending == 1
        assert behind.as_of is not None
        assert behind.as_of <= written[0]
        await apply_brand(conn, brand_id, wait=True)
        caught_up = await freshness(conn, brand_id)
        assert caught_up.pending == 0
        assert caught_up.as_of is not None
        assert caught_up.as_of > written[0]


async def test_a_new_brand_is_born_with_a_current_empty_index(pool: AsyncConnectionPool[Any]) -> None:
    async with pool.connection() as conn:
        brand_id: int = (await brand_by_code(conn, await new_brand(pool)))["id"]
        state = await freshness(conn, brand_id)
        await conn.execute("DELETE FROM audience_index_state WHERE brand_id = %s", (brand_id,))
        never = await freshness(conn, brand_id)
    assert (state.pending, state.state, state.lag) == (0, IndexState.READY, timedelta(0))
    assert state.built_at is not None
    # Never built and without members: nothing to build, and every count (0) is right.
    assert (never.as_of, never.lag, never.pending, never.built_at, never.state) == (
        None,
        None,
        0,
        None,
        IndexState.READY,
    )


async def _omnimember(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(subprocess.run, [*OMNIMEMBER, *args], capture_output=True, text=True, env=env)


async def test_refresh_command_rebuilds_a_brand(pool: AsyncConnectionPool[Any], database_url: str) -> None:
    brand_id, _ = await _brand(pool, 3)
    async with pool.connection() as conn:
        code = (await (await conn.execute("SELECT code FROM brands WHERE id = %s", (brand_id,))).fetchone() or [""])[0]
        built = (await freshness(conn, brand_id)).built_at
    env = {**os.environ, "DATABASE_URL": database_url}
    done = await _omnimember(env, "refresh", "--brand", code)
    assert done.returncode == 0, done.stderr
    assert f"{code}: " in done.stdout
    async with pool.connection() as conn:
        rebuilt = (await freshness(conn, brand_id)).built_at
    assert built is not None
    assert rebuilt is not None
    assert rebuilt > built
    unknown = await _omnimember(env, "refresh", "--brand", "no_such_brand")
    assert unknown.returncode == 1
    assert "no brand with code 'no_such_brand'" in unknown.stderr


async def test_the_background_applier_catches_up_within_its_interval(pool: AsyncConnectionPool[Any]) -> None:
    brand_id, ids = await _brand(pool, 2)
    applier = asyncio.create_task(run_applier(pool, interval=0.05))
    try:
        async with pool.connection() as conn:
            await conn.execute("UPDATE members SET city = '杭州' WHERE id = %s", (ids[0],))
            for _ in range(200):
                if (await freshness(conn, brand_id)).pending == 0:
                    break
                await asyncio.sleep(0.05)
            assert (await _keys(conn, brand_id))["city:杭州"] == 1
    finally:
        applier.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await applier


async def test_building_bitmaps_runs_off_the_event_loop(
    pool: AsyncConnectionPool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's applier shares its event loop with every request: a rebuild or delta that packs bits
    on it stalls them all (found in a full test run: `brands { audienceIndex }` past its 30 s deadline
    while the in-process app rebuilt large brands). The CPU work runs in worker threads: packing, and
    the facts' numpy work (keeping the live members' rows, numbering orders: seconds for a large brand)."""
    loop_thread = threading.current_thread()
    seen: set[threading.Thread] = set()
    facts_seen: set[threading.Thread] = set()

    def recorded(key: str, ids: Any) -> Any:
        seen.add(threading.current_thread())
        return chunk_rows(key, ids)

    def recorded_sparse(keys: Any) -> Any:
        seen.add(threading.current_thread())
        return sparse_rows(keys)

    def recorded_among(ids: Any, universe: Any) -> Any:
        facts_seen.add(threading.current_thread())
        return among(ids, universe)

    monkeypatch.setattr(bitmaps, "chunk_rows", recorded)
    monkeypatch.setattr(bitmaps, "sparse_rows", recorded_sparse)
    monkeypatch.setattr(deltas, "chunk_rows", recorded)
    monkeypatch.setattr(index_facts, "among", recorded_among)
    brand_id, ids = await _brand(pool, 5)  # a delta
    async with pool.connection() as conn:
        await conn.execute("INSERT INTO audience_changes (brand_id, member_id) VALUES (%s, 0)", (brand_id,))
        rebuilt = await apply_brand(conn, brand_id, wait=True)  # a full build
        assert rebuilt is not None
        assert rebuilt.rebuilt
        await conn.execute("UPDATE members SET points_balance = 777 WHERE id = %s", (ids[0],))
        applied = await apply_brand(conn, brand_id, wait=True)  # a delta
    assert applied is not None
    assert seen
    assert loop_thread not in seen
    assert facts_seen
    assert loop_thread not in facts_seen


_members = st.lists(
    st.tuples(st.integers(0, 3 * CHUNK_SIZE - 1), st.integers(0, 2**20 - 1)), max_size=700, unique_by=lambda m: m[0]
)


@settings(max_examples=60, deadline=None)
@given(members=_members, dense=st.booleans(), subset=st.booleans(), bits=st.sampled_from([6, 7, 8]))
def test_digit_rows_hold_exactly_the_members_at_or_above_each_digit(
    members: list[tuple[int, int]], dense: bool, subset: bool, bits: int
) -> None:
    """Both ways of packing a chunk's digits (bit by bit below _SPARSE members, a matrix above)
    against the definition: row (digit i, j, chunk) holds the chunk's members whose digit i is >= j,
    and there is a row exactly when one does."""
    if dense:  # past _SPARSE in one chunk: the matrix path
        members = [*members, *((CHUNK_SIZE + n, n * 7919 % 2**20) for n in range(600))]
        members = list(dict(members).items())
    members.sort()
    ids = np.array([m for m, _ in members], dtype=np.int64)
    values = np.array([v for _, v in members], dtype=np.int64)
    chosen = np.sort(ids[::3]) if subset else None
    layout = Layout(20, bits)
    column = bitmaps.DigitColumn("growth", ids, values, layout)
    found = {
        (key, chunk): set(decode_chunks(chunk.to_bytes(4, "big") + CHUNK_SIZE.to_bytes(4, "big") + bits).tolist())
        for key, chunk, bits in bitmaps.digit_rows(column, chosen)
    }
    kept = [(m, v) for m, v in members if chosen is None or m in set(chosen.tolist())]
    expected: dict[tuple[str, int], set[int]] = {}
    for digit in range(-(-20 // bits)):
        for m, v in kept:
            for j in range(1, ((v >> (bits * digit)) % (1 << bits)) + 1):
                expected.setdefault((digit_key("growth", digit, j), m >> 16), set()).add(m)
    assert found == expected


async def test_a_pass_over_many_brands_lets_others_take_the_pool_between_brands(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pool of one connection (found in the suite: a request waited past its pool timeout while the
    applier's first pass built the persons of many brands on the one connection it held)."""

    class TwoBrandsDue:
        async def all(self, conn: AsyncConnection[Any]) -> list[dict[str, int]]:
            return [{"brand_id": -1}, {"brand_id": -2}]

    async def slow(conn: AsyncConnection[Any], brand_id: int, *, wait: bool = False) -> None:
        await asyncio.sleep(0.3)  # as the persons of a large brand, or of many small ones, take

    monkeypatch.setattr(deltas, "_due", TwoBrandsDue())
    monkeypatch.setattr(deltas, "apply_brand", slow)
    async with AsyncConnectionPool(database_url, min_size=1, max_size=1, open=False) as pool:
        passing = asyncio.create_task(deltas.apply_all(pool))
        await asyncio.sleep(0.1)  # the pass holds the connection, for its first brand
        async with pool.connection(timeout=0.45):  # one brand's worth of waiting, not the whole pass's
            pass
        assert await passing == []


@pytest.mark.parametrize("module", ["lifecycle", "rule_tags"])
async def test_the_scheduled_passes_let_others_take_the_pool_between_brands(
    database_url: str, monkeypatch: pytest.MonkeyPatch, module: str
) -> None:
    """As the applier's pass: the lifecycle and rule-tag passes at a server's start went over every
    due brand of the suite on the one connection of a one-connection pool (found in CI)."""
    from store.audiences import lifecycle, rule_tags

    passes = {"lifecycle": lifecycle, "rule_tags": rule_tags}[module]

    class TwoBrandsDue:
        async def all(self, conn: AsyncConnection[Any]) -> list[dict[str, int]]:
            return [{"brand_id": -1}, {"brand_id": -2}]

    async def slow(conn: AsyncConnection[Any], brand_id: int, **kwargs: Any) -> None:
        await asyncio.sleep(0.3)

    monkeypatch.setattr(passes, "_due", TwoBrandsDue())
    monkeypatch.setattr(passes, "sync_locked", slow)
    async with AsyncConnectionPool(database_url, min_size=1, max_size=1, open=False) as pool:
        passing = asyncio.create_task(passes.sync_due(pool))
        await asyncio.sleep(0.1)
        async with pool.connection(timeout=0.45):
            pass
        assert await passing == []

"""The ledger under load and under faults, through a real server over HTTP.

64 clients hammer 5 members with earns and redemptions (a share of them sent twice with the same
idempotency key, at the same time); then the journal must account for every accepted request
exactly once and every balance must match its entries and lots. A read-check-write ledger fails
this: measured here, it let 2,000 of 2,000 one-point redemptions succeed on a 1,000-point balance.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import pytest

from store.urls import libpq_url
from tests.conftest import unique_code
from tests.fragments import EARN, REDEEM, REGISTER
from tests.server import Server

MEMBERS = 5
START = 1_000


@dataclass
class Tally:
    accepted: dict[str, tuple[str, int, int, str]] = field(default_factory=dict)  # key -> op, member, amount, posting
    refused: int = 0
    replays: int = 0
    failures: int = 0


@pytest.fixture
async def server(database_url: str, tmp_path: Path) -> AsyncIterator[Server]:
    running = Server(tmp_path / "home", database_url)
    try:
        await asyncio.to_thread(running.wait_ready)
        yield running
    finally:
        running.stop()


async def _post(http: httpx.AsyncClient, query: str, **variables: Any) -> dict[str, Any]:
    response = await http.post("/graphql", json={"query": query, "variables": variables})
    body: dict[str, Any] = response.json()
    return body


async def _setup(http: httpx.AsyncClient) -> tuple[str, list[str]]:
    brand = unique_code("load")
    created = await _post(
        http, f'mutation {{ createBrand(code: "{brand}", name: "Load", group: "load") {{ __typename }} }}'
    )
    assert created["data"]["createBrand"]["__typename"] == "BrandCreated"
    members = []
    for n in range(MEMBERS):
        registered = await _post(http, REGISTER, brand=brand, channel="pos", externalId=f"card-{n}")
        member = registered["data"]["registerMember"]["member"]["id"]
        await _post(http, EARN, brand=brand, memberId=member, amount=START, key=f"start-{member}")
        members.append(member)
    return brand, members


async def _operate(
    http: httpx.AsyncClient, tally: Tally, brand: str, member: str, key: str, redeem: bool, amount: int, twice: bool
) -> None:
    """Send one posting (twice at once when ``twice``), retrying transport failures with the same key."""
    query, field_name = (REDEEM, "redeemPoints") if redeem else (EARN, "earnPoints")
    for _ in range(20):
        sends = [_post(http, query, brand=brand, memberId=member, amount=amount, key=key) for _ in range(1 + twice)]
        try:
            bodies = await asyncio.gather(*sends)
        except httpx.TransportError:
            await asyncio.sleep(0.05)
            continue
        if any("errors" in body for body in bodies):  # the service lost its connection: retry the key
            tally.failures += 1
            await asyncio.sleep(0.05)
            continue
        results = [body["data"][field_name] for body in bodies]
        assert {r["__typename"] for r in results} <= {"PointsPosted", "InsufficientPoints"}, results
        postings = {r["posting"]["id"] for r in results if r["__typename"] == "PointsPosted"}
        if not postings:  # a refusal posts nothing and leaves the key free
            tally.refused += 1
            return
        # Copies sent at once answer with the one posting (or one was refused before the other landed).
        assert len(postings) == 1, results
        tally.replays += sum(r.get("replayed", False) for r in results)
        tally.accepted[key] = ("redeem" if redeem else "earn", int(member), amount, postings.pop())
        return
    raise AssertionError(f"{key} never completed")


async def _hammer(
    server: Server, operations: int, clients: int, seed: int, loading: asyncio.Event | None = None
) -> tuple[str, list[str], Tally]:
    """Set up a brand, then load it; ``loading`` is set between the two (setup itself does not retry)."""
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=clients * 2)
    async with httpx.AsyncClient(base_url=server.url, timeout=30, limits=limits) as http:
        brand, members = await _setup(http)
        if loading is not None:
            loading.set()
        tally = Tally()
        queue: asyncio.Queue[int] = asyncio.Queue()
        for n in range(operations):
            queue.put_nowait(n)

        async def client() -> None:
            while not queue.empty():
                n = queue.get_nowait()
                redeem = rng.random() < 0.6
                amount = rng.randint(1, 20) if redeem else rng.randint(1, 10)
                member = members[n % MEMBERS]
                await _operate(http, tally, brand, member, f"op-{n}", redeem, amount, twice=rng.random() < 0.1)

        await asyncio.gather(*(client() for _ in range(clients)))
    return brand, members, tally


def _check_journal(database_url: str, members: list[str], tally: Tally) -> None:
    ids = [int(m) for m in members]
    with psycopg.connect(libpq_url(database_url)) as conn:
        balances = conn.execute(
            "SELECT m.id, m.points_balance,"
            " (SELECT coalesce(sum(amount), 0) FROM points_entries WHERE member_id = m.id),"
            " (SELECT coalesce(sum(remaining), 0) FROM points_lots WHERE member_id = m.id),"
            " (SELECT min(balance_after) FROM points_entries WHERE member_id = m.id)"
            " FROM members m WHERE m.id = ANY(%s)",
            (ids,),
        ).fetchall()
        postings = conn.execute(
            "SELECT p.idempotency_key, p.id, sum(e.amount), count(e.id)"
            " FROM points_postings p JOIN points_entries e ON e.posting_id = p.id"
            " WHERE p.member_id = ANY(%s) AND p.idempotency_key LIKE 'op-%%' GROUP BY p.id",
            (ids,),
        ).fetchall()
    journal = {key: (posting_id, int(total), count) for key, posting_id, total, count in postings}
    assert set(journal) == set(tally.accepted), "every accepted request is in the journal, nothing else is"
    expected = dict.fromkeys(ids, START)
    for key, (operation, member, amount, posting_id) in tally.accepted.items():
        signed = -amount if operation == "redeem" else amount
        assert journal[key] == (int(posting_id), signed, 1), key  # posted exactly once, as asked
        expected[member] += signed
    for member_id, balance, entries, lots, lowest in balances:
        assert balance == entries == lots == expected[member_id], member_id
        assert lowest >= 0


@pytest.mark.slow
async def test_64_clients_never_lose_or_double_a_point(server: Server, database_url: str) -> None:
    _, members, tally = await _hammer(server, operations=10_000, clients=64, seed=7)
    assert tally.refused > 0, "the load must drive balances to the floor to prove it holds"
    assert tally.replays > 0
    assert tally.failures == 0
    _check_journal(database_url, members, tally)


@pytest.mark.slow
async def test_killed_connections_leave_postings_whole_and_retries_exact(server: Server, database_url: str) -> None:
    stop, loading = asyncio.Event(), asyncio.Event()
    killed = 0

    async def killer() -> None:
        nonlocal killed
        await loading.wait()
        async with await psycopg.AsyncConnection.connect(libpq_url(database_url), autocommit=True) as conn:
            while not stop.is_set():
                await asyncio.sleep(0.15)
                # The server's sessions only: the suite's in-process app (same application name)
                # holds connections from this process's ports, and other tests still use it.
                ours = [c.laddr.port for c in psutil.Process().net_connections("tcp")]
                cursor = await conn.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name = 'omnimember' AND datname = current_database()"
                    " AND NOT (coalesce(client_port, -1) = ANY(%s))",
                    (ours,),
                )
                row = await cursor.fetchone()
                killed += row[0] if row else 0

    task = asyncio.create_task(killer())
    try:
        brand, members, tally = await _hammer(server, operations=2_000, clients=16, seed=11, loading=loading)
    finally:
        stop.set()
        loading.set()
        await task
    assert killed > 0
    _check_journal(database_url, members, tally)
    async with httpx.AsyncClient(base_url=server.url) as http:  # recovered by itself
        assert (await http.get("/readyz")).status_code == 200
        assert "errors" not in await _post(http, EARN, brand=brand, memberId=members[0], amount=1, key="after")

"""The ledger under contention: every posting kind at once on a few hot members (issue 12, item 3).

At 9bd6195, 32 clients mixing earns, redemptions, adjustments, orders, refunds and cancellations on
ten members deadlocked dozens of times a minute. A refund locked its order row, then took the weak
lock of its posting's foreign key check on the member, then asked to lock the member for update:
two refunds of one member each waited for the other's weak lock, and a merge holding the member
waited for the refund's order row. Cancellations took the weak lock on the redeemer before locking
the lots' owner, and batches locked their members in arrival order. Clients got "Unexpected error."
once the retries ran out, or waited for a connection until the pool gave up. Every transaction now
locks the member rows first, in id order (the lock order is in `store.ledger.journal`).

The first tests hold two transactions at the lock points of the old order and let them go: each
deadlocked before, none may now. The last drives 32 clients over HTTP at four members with every
posting kind, some sent twice at once under one key, and then checks that every request got an
answer, that retries replay, that PostgreSQL counted no deadlock and that the ledger adds up
exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
import psutil
import psycopg
import pytest
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from store.brands import brand_by_code
from store.ledger import batched, orders, points
from store.ledger.batched import Change
from store.ledger.journal import Request
from store.members import merges
from store.transactions import transact
from store.urls import libpq_url
from tests.conftest import GraphQL, unique_code
from tests.fragments import EARN, MERGE, RECORD_ORDER, REDEEM, REGISTER
from tests.server import Server
from tests.test_points import _blocked_on_locks, balance_check, new_member

T = TypeVar("T")
NOW = dt.datetime.now(dt.UTC)


# --- Two transactions held at the lock points --------------------------------------------------


@dataclass
class Deadlocks:
    """Deadlocks PostgreSQL reported to the work it ran (before `transact` retried them)."""

    seen: list[str] = field(default_factory=list)

    def watch(
        self, name: str, work: Callable[[AsyncConnection[Any]], Awaitable[T]]
    ) -> Callable[[AsyncConnection[Any]], Awaitable[T]]:
        async def watched(conn: AsyncConnection[Any]) -> T:
            try:
                return await work(conn)
            except psycopg.errors.DeadlockDetected:
                self.seen.append(name)
                raise

        return watched


async def _order(gql: GraphQL, brand: str, member: str, order_id: str, amount: str = "100") -> None:
    recorded = await gql(
        RECORD_ORDER,
        brand=brand,
        channel="mall",
        orderId=order_id,
        amount=amount,
        paidAt=NOW.isoformat(),
        memberId=member,
    )
    assert recorded["recordOrder"]["__typename"] == "OrderRecorded", recorded


def _refund(brand_id: int, order_id: str, key: str) -> Callable[[AsyncConnection[Any]], Awaitable[orders.OrderResult]]:
    """A full refund as the API runs it (resolvers.points.refund_order)."""

    async def work(conn: AsyncConnection[Any]) -> orders.OrderResult:
        order = await orders.find_for_refund(conn, brand_id, "mall", order_id)
        return await orders.refund(conn, order, None, key, None, "test")

    return work


_HOLD = {
    "FOR UPDATE": "SELECT 1 FROM members WHERE id = ANY(%s) FOR UPDATE",
    "FOR NO KEY UPDATE": "SELECT 1 FROM members WHERE id = ANY(%s) FOR NO KEY UPDATE",
}


@contextlib.asynccontextmanager
async def _held(pool: AsyncConnectionPool[Any], lock: str, *members: str) -> AsyncIterator[None]:
    """Hold the members' rows with ``lock`` (``FOR UPDATE``, ``FOR NO KEY UPDATE``) while the block runs."""
    async with pool.connection() as holder, holder.transaction():
        await holder.execute(_HOLD[lock], ([int(member) for member in members],))
        yield


async def test_two_refunds_of_one_member_wait_in_line(gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]) -> None:
    """Two refunds of one member's orders, both waiting for the member's row. They used to hold
    the weak lock of their posting's foreign key check and each wait for the other to drop it."""
    member = await new_member(gql, brand)
    await _order(gql, brand, member, "M1")
    await _order(gql, brand, member, "M2")
    async with pool.connection() as conn:
        brand_id = int((await brand_by_code(conn, brand))["id"])
    deadlocks = Deadlocks()
    async with _held(pool, "FOR NO KEY UPDATE", member):  # lets a foreign key check through, not an update
        tasks = [
            asyncio.create_task(transact(pool, deadlocks.watch(name, _refund(brand_id, name, f"rf-{name}"))))
            for name in ("M1", "M2")
        ]
        await _blocked_on_locks(pool, 2)
    refunded = await asyncio.gather(*tasks)
    assert deadlocks.seen == []
    assert all(not result.posting.replayed for result in refunded)
    assert await balance_check(pool, member) == 0


async def test_a_refund_racing_a_merge_follows_the_order_to_the_survivor(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    """A merge moving a member's orders while a refund of one of them waits. The refund used to lock
    the order row first and wait for the member the merge held, while the merge waited for the
    order row; now it locks the member first, finds the order moved, and starts again."""
    survivor = await new_member(gql, brand, "tb-survivor")
    merged = await new_member(gql, brand, "tb-merged")
    await _order(gql, brand, merged, "M3")
    async with pool.connection() as conn:
        brand_id = int((await brand_by_code(conn, brand))["id"])
    deadlocks = Deadlocks()

    async def merge(conn: AsyncConnection[Any]) -> int:
        return await merges.merge(conn, survivor_id=int(survivor), merged_id=int(merged), reason="same person")

    async with _held(pool, "FOR UPDATE", merged):
        merging = asyncio.create_task(transact(pool, deadlocks.watch("merge", merge)))
        await _blocked_on_locks(pool, 1)  # the merge is first in line for the merged member
        refunding = asyncio.create_task(transact(pool, deadlocks.watch("refund", _refund(brand_id, "M3", "rf-M3"))))
        await _blocked_on_locks(pool, 2)
    await merging
    refunded = await refunding
    assert deadlocks.seen == []
    async with pool.connection() as conn:
        row = await (
            await conn.execute("SELECT member_id, refunded FROM orders WHERE id = %s", (refunded.order_id,))
        ).fetchone()
    assert row == (int(survivor), Decimal("100.00"))
    assert refunded.posting.member_id == int(survivor)
    assert (await balance_check(pool, survivor), await balance_check(pool, merged)) == (0, 0)


async def test_a_cancellation_racing_an_unmerge_follows_the_lots_back(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any]
) -> None:
    """Cancelling a redemption whose lots a merge moved to the survivor, while the merge is undone.
    The cancellation used to take the weak lock of its posting's foreign key check on the redeemer
    (the merged member) and wait for the survivor, which the unmerge held while it waited to lock
    the redeemer; now it locks both first, in id order, and finds the lots moved back."""
    survivor = await new_member(gql, brand, "tb-survivor")  # registered first: the lower id
    merged = await new_member(gql, brand, "tb-merged")
    await gql(EARN, brand=brand, memberId=merged, amount=100, key="earn")
    redeemed = (await gql(REDEEM, brand=brand, memberId=merged, amount=30, key="spend"))["redeemPoints"]
    merge_id = (await gql(MERGE, survivorId=survivor, mergedId=merged, reason="same person"))["mergeMembers"]
    async with pool.connection() as conn:
        brand_id = int((await brand_by_code(conn, brand))["id"])
    deadlocks = Deadlocks()

    async def unmerge(conn: AsyncConnection[Any]) -> Any:
        return await merges.unmerge(conn, merge_id=int(merge_id["merge"]["id"]))

    async def cancel(conn: AsyncConnection[Any]) -> Any:
        redemption = int(redeemed["posting"]["id"])
        return await points.cancel_redemption(
            conn, brand_id=brand_id, redemption_id=redemption, key="undo", reason=None, actor="test"
        )

    async with _held(pool, "FOR NO KEY UPDATE", survivor):
        unmerging = asyncio.create_task(transact(pool, deadlocks.watch("unmerge", unmerge)))
        await _blocked_on_locks(pool, 1)  # the unmerge is first in line for the survivor
        cancelling = asyncio.create_task(transact(pool, deadlocks.watch("cancel", cancel)))
        await _blocked_on_locks(pool, 2)
    await unmerging
    cancelled = await cancelling
    assert deadlocks.seen == []
    assert not cancelled.replayed
    assert (await balance_check(pool, survivor), await balance_check(pool, merged)) == (0, 100)


async def test_two_batches_on_the_same_members_lock_them_in_one_order(
    gql: GraphQL, brand: str, pool: AsyncConnectionPool[Any], database_url: str
) -> None:
    """Two batches of earns (as two server processes send them) on the same two members, listed in
    opposite orders. The UPDATE alone used to lock the members in the order its join yielded them."""
    members = [await new_member(gql, brand, f"tb-{n}") for n in range(2)]
    async with pool.connection() as conn:
        brand_id = int((await brand_by_code(conn, brand))["id"])
    deadlocks = Deadlocks()

    def earns(prefix: str, order: list[str]) -> list[Change]:
        return [
            points.earning(Request(brand_id, int(member), f"{prefix}-{member}", "earn", {"amount": 5}), 5)
            for member in order
        ]

    async def batch(conn: AsyncConnection[Any], name: str, changes: list[Change]) -> list[Any]:
        return await deadlocks.watch(name, lambda conn: batched.credit(conn, changes))(conn)

    # Planned as on a members table of real size: the items in their order, each finding its
    # member through the primary key (a table of a few rows here would be read whole instead).
    url = libpq_url(database_url)
    large = "-c enable_seqscan=off -c enable_hashjoin=off -c enable_mergejoin=off"
    connect = AsyncConnection.connect
    async with (
        await connect(url, autocommit=True, options=large) as one,
        await connect(url, autocommit=True, options=large) as two,
    ):
        async with _held(pool, "FOR NO KEY UPDATE", *members):
            tasks = [
                asyncio.create_task(batch(one, "forwards", earns("a", members))),
                asyncio.create_task(batch(two, "backwards", earns("b", members[::-1]))),
            ]
            await _blocked_on_locks(pool, 2)
        results = await asyncio.gather(*tasks, return_exceptions=True)
    assert deadlocks.seen == []
    posted = [posting for result in results if isinstance(result, list) for posting in result]
    assert len(posted) == 4, results
    assert None not in posted, results
    assert [await balance_check(pool, member) for member in members] == [10, 10]


# --- 32 clients, every posting kind, four hot members ----------------------------------------

HOT = 4
CLIENTS = 32
OPERATIONS = 1_600
BUDGET = 30.0  # seconds of load at most: clients take no new operation after it
GRACE = 20.0  # seconds the operations in flight then have to finish
TWICE = 0.15  # share of operations sent twice at once under one key
START = 2_000  # points each hot member starts with
SEED_ORDERS = 5
SEED_REDEMPTIONS = 3
ATTEMPTS = 20  # a client retries a failed request (same key) this often before giving up
MIX = {"earn": 18, "redeem": 18, "adjust": 10, "order": 14, "refund": 22, "cancel": 18}

_ANSWER = "__typename ... on Error { code message }"
_POSTED = f"... on PointsPosted {{ replayed posting {{ id }} }} {_ANSWER}"
_ORDERED = f"... on OrderRecorded {{ replayed posting {{ id }} order {{ id }} }} {_ANSWER}"
_REFUNDED = f"... on OrderRefunded {{ replayed posting {{ id }} order {{ id }} }} {_ANSWER}"
DOCUMENTS = {
    "earn": (
        "mutation($brand: String!, $member: ID!, $amount: Int!, $key: String!) {"
        f" r: earnPoints(brand: $brand, memberId: $member, amount: $amount, idempotencyKey: $key) {{ {_POSTED} }} }}"
    ),
    "redeem": (
        "mutation($brand: String!, $member: ID!, $amount: Int!, $key: String!) {"
        f" r: redeemPoints(brand: $brand, memberId: $member, amount: $amount, idempotencyKey: $key) {{ {_POSTED} }} }}"
    ),
    "adjust": (
        "mutation($brand: String!, $member: ID!, $delta: Int!, $key: String!) {"
        " r: adjustPoints(brand: $brand, memberId: $member, delta: $delta, idempotencyKey: $key,"
        f' reason: "contention") {{ {_POSTED} }} }}'
    ),
    "order": (
        "mutation($brand: String!, $member: ID!, $order: String!, $amount: Decimal!, $paidAt: DateTime!) {"
        ' r: recordOrder(brand: $brand, channel: "pos", externalOrderId: $order, amount: $amount,'
        f" paidAt: $paidAt, memberId: $member) {{ {_ORDERED} }} }}"
    ),
    "refund": (
        "mutation($brand: String!, $order: String!, $amount: Decimal, $key: String!) {"
        ' r: refundOrder(brand: $brand, channel: "pos", externalOrderId: $order, amount: $amount,'
        f" idempotencyKey: $key) {{ {_REFUNDED} }} }}"
    ),
    "cancel": (
        "mutation($brand: String!, $posting: ID!, $key: String!) {"
        f" r: cancelRedemption(brand: $brand, postingId: $posting, idempotencyKey: $key) {{ {_POSTED} }} }}"
    ),
}
POSTED_TYPES = {"earn": "PointsPosted", "redeem": "PointsPosted", "adjust": "PointsPosted", "cancel": "PointsPosted"}
POSTED_TYPES |= {"order": "OrderRecorded", "refund": "OrderRefunded"}
# Refusals a kind may answer with under contention (typed results, nothing posted).
REFUSALS = {
    "earn": set(),
    "redeem": {"INSUFFICIENT_POINTS"},
    "adjust": {"INSUFFICIENT_POINTS"},
    "order": set(),
    "refund": {"ORDER_FULLY_REFUNDED", "INVALID_INPUT"},  # a partial refund may exceed what another left
    "cancel": {"ALREADY_CANCELLED"},
}


@dataclass(frozen=True)
class Operation:
    kind: str
    key: str
    member: str | None  # None for refunds and cancellations: the server finds it
    variables: dict[str, Any]
    target: str | None = None  # the order (refund) or redemption (cancel) it acts on


@dataclass(frozen=True)
class Accepted:
    operation: Operation
    posting: int
    order: int | None


@dataclass
class Tally:
    accepted: dict[str, Accepted] = field(default_factory=dict)  # by operation key
    refused: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)  # answers with GraphQL errors, transport errors
    unanswered: list[str] = field(default_factory=list)
    replays: int = 0
    orders: list[str] = field(default_factory=list)  # external ids recorded: refund targets
    redemptions: list[str] = field(default_factory=list)  # posting ids: cancellation targets


@pytest.fixture
async def server(database_url: str, tmp_path: Path) -> AsyncIterator[Server]:
    running = Server(tmp_path / "home", database_url)
    try:
        await asyncio.to_thread(running.wait_ready)
        yield running
    finally:
        running.stop()


async def _send(http: httpx.AsyncClient, operation: Operation) -> dict[str, Any]:
    response = await http.post("/graphql", json={"query": DOCUMENTS[operation.kind], "variables": operation.variables})
    body: dict[str, Any] = response.json()
    if response.status_code != 200 or "errors" in body:
        raise _Failed(f"{operation.kind} {operation.key}: HTTP {response.status_code} {body.get('errors')}")
    result: dict[str, Any] = body["data"]["r"]
    return result


class _Failed(Exception):
    pass


async def _operate(http: httpx.AsyncClient, tally: Tally, operation: Operation, copies: int = 1) -> None:
    """Send ``operation`` (``copies`` at once under its key), retrying failures with the same key as
    a client would, and account for the answer."""
    for _ in range(ATTEMPTS):
        try:
            results = await asyncio.gather(*(_send(http, operation) for _ in range(copies)))
        except (_Failed, httpx.TransportError) as error:
            tally.failures.append(str(error) or repr(error))
            await asyncio.sleep(0.05)
            continue
        _account(tally, operation, results)
        return
    tally.unanswered.append(operation.key)


def _account(tally: Tally, operation: Operation, results: list[dict[str, Any]]) -> None:
    posted_type = POSTED_TYPES[operation.kind]
    posted = [result for result in results if result["__typename"] == posted_type]
    refused = {result.get("code") for result in results if result["__typename"] != posted_type}
    assert refused <= REFUSALS[operation.kind], (operation, results)
    if not posted:
        tally.refused[refused.pop() or "?"] += 1
        return
    assert len({int(result["posting"]["id"]) for result in posted}) == 1, (operation, results)  # one posting
    tally.replays += sum(result["replayed"] for result in posted)
    order = posted[0].get("order")
    tally.accepted[operation.key] = Accepted(
        operation, int(posted[0]["posting"]["id"]), None if order is None else int(order["id"])
    )
    if operation.kind == "order":
        tally.orders.append(operation.variables["order"])
    elif operation.kind == "redeem":
        tally.redemptions.append(posted[0]["posting"]["id"])


def _operation(rng: random.Random, n: int, brand: str, members: list[str], tally: Tally) -> Operation:
    kind = rng.choices(list(MIX), weights=list(MIX.values()))[0]
    if (kind == "refund" and not tally.orders) or (kind == "cancel" and not tally.redemptions):
        kind = "earn"
    key, member = f"{kind}-{n}", rng.choice(members)
    common = {"brand": brand, "key": key}
    if kind in ("earn", "redeem"):
        return Operation(kind, key, member, common | {"member": member, "amount": rng.randint(1, 60)})
    if kind == "adjust":
        delta = rng.choice([-1, 1]) * rng.randint(1, 40)
        return Operation(kind, key, member, common | {"member": member, "delta": delta})
    if kind == "order":
        amount = f"{rng.randint(1000, 30000) / 100:.2f}"
        variables = {"brand": brand, "member": member, "order": f"o-{n}", "amount": amount, "paidAt": NOW.isoformat()}
        return Operation(kind, f"order:pos:o-{n}", member, variables)
    if kind == "refund":
        target = rng.choice(tally.orders)
        part = None if rng.random() < 0.4 else f"{rng.randint(500, 4000) / 100:.2f}"  # None: all that is left
        return Operation(kind, key, None, common | {"order": target, "amount": part}, target)
    target = rng.choice(tally.redemptions)
    return Operation(kind, key, None, common | {"posting": target}, target)


async def _setup(http: httpx.AsyncClient, tally: Tally) -> tuple[str, list[str]]:
    brand = unique_code("hot")
    created = await http.post(
        "/graphql",
        json={"query": f'mutation {{ createBrand(code: "{brand}", name: "Hot", group: "{brand}") {{ __typename }} }}'},
    )
    assert created.json()["data"]["createBrand"]["__typename"] == "BrandCreated"
    members = []
    for n in range(HOT):
        body = (
            await http.post(
                "/graphql",
                json={"query": REGISTER, "variables": {"brand": brand, "channel": "pos", "externalId": f"card-{n}"}},
            )
        ).json()
        members.append(body["data"]["registerMember"]["member"]["id"])
    for member in members:
        key = f"start-{member}"
        await _operate(
            http, tally, Operation("earn", key, member, {"brand": brand, "member": member, "amount": START, "key": key})
        )
        for n in range(SEED_ORDERS):
            variables = {
                "brand": brand,
                "member": member,
                "order": f"seed-{member}-{n}",
                "amount": "120.00",
                "paidAt": NOW.isoformat(),
            }
            await _operate(http, tally, Operation("order", f"order:pos:seed-{member}-{n}", member, variables))
        for n in range(SEED_REDEMPTIONS):
            key = f"seed-redeem-{member}-{n}"
            variables = {"brand": brand, "member": member, "amount": 50, "key": key}
            await _operate(http, tally, Operation("redeem", key, member, variables))
    assert not tally.failures, tally.failures
    return brand, members


async def _hammer(http: httpx.AsyncClient, rng: random.Random) -> tuple[str, list[str], Tally, float]:
    tally = Tally()
    brand, members = await _setup(http, tally)
    numbers = iter(range(OPERATIONS))
    started = time.monotonic()
    deadline = started + BUDGET

    async def client() -> None:
        for n in numbers:
            if time.monotonic() > deadline:
                return
            operation = _operation(rng, n, brand, members, tally)
            await _operate(http, tally, operation, copies=2 if rng.random() < TWICE else 1)

    try:
        async with asyncio.timeout(BUDGET + GRACE):
            await asyncio.gather(*(client() for _ in range(CLIENTS)))
    except TimeoutError:
        tally.failures.append(f"requests still unanswered {GRACE:g}s after the load's {BUDGET:g}s")
    return brand, members, tally, time.monotonic() - started


async def _replay_some(http: httpx.AsyncClient, tally: Tally, rng: random.Random) -> None:
    """A retry of an accepted request, however long after, answers with the same posting."""
    for accepted in rng.sample(sorted(tally.accepted.values(), key=lambda a: a.posting), 60):
        result = await _send(http, accepted.operation)
        assert result["__typename"] == POSTED_TYPES[accepted.operation.kind], (accepted, result)
        assert (result["replayed"], int(result["posting"]["id"])) == (True, accepted.posting), (accepted, result)


def _deadlocks(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()").fetchone()
    assert row is not None
    return int(row[0])


def _backends_of(server: Server, database_url: str) -> list[int]:
    """The local ports of the server's connections to PostgreSQL (pg_stat_activity.client_port)."""
    port = urlsplit(database_url).port or 5432
    process = psutil.Process(server.proc.pid)
    connections = [c for p in (process, *process.children(recursive=True)) for c in p.net_connections(kind="tcp")]
    return [c.laddr.port for c in connections if c.raddr and c.raddr.port == port]


def _wait_for_backends_to_leave(conn: psycopg.Connection[Any], ports: list[int]) -> None:
    """Backends count their deadlocks into pg_stat_database at the latest when they exit."""
    for _ in range(200):
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE client_port = ANY(%s)", (ports,)).fetchone()
        if row is not None and row[0] == 0:
            return
        time.sleep(0.05)
    raise AssertionError("the server's connections did not close")


def _cents(amount: Decimal) -> int:
    return int(amount * 100)


def _check_ledger(conn: psycopg.Connection[Any], brand: str, members: list[str], tally: Tally) -> None:
    brand_id = conn.execute("SELECT id FROM brands WHERE code = %s", (brand,)).fetchone()
    assert brand_id is not None
    params = {"brand": brand_id[0]}
    # 1. Every member: balance = entries = open lots, never below zero at any entry.
    for member_id, balance, entries, lots, lowest in conn.execute(
        "SELECT m.id, m.points_balance,"
        " (SELECT coalesce(sum(amount), 0) FROM points_entries WHERE member_id = m.id),"
        " (SELECT coalesce(sum(remaining), 0) FROM points_lots WHERE member_id = m.id),"
        " (SELECT coalesce(min(balance_after), 0) FROM points_entries WHERE member_id = m.id)"
        " FROM members m WHERE m.brand_id = %(brand)s",
        params,
    ):
        assert balance == entries == lots >= 0, (member_id, balance, entries, lots)
        assert lowest >= 0, member_id
    # 2. The journal holds exactly the accepted requests, each once, with the entries it asked for.
    journal = {
        posting_id: (operation, int(total), count)
        for posting_id, operation, total, count in conn.execute(
            "SELECT p.id, p.operation, coalesce(sum(e.amount), 0), count(e.id) FROM points_postings p"
            " LEFT JOIN points_entries e ON e.posting_id = p.id WHERE p.brand_id = %(brand)s GROUP BY p.id",
            params,
        )
    }
    by_posting = {accepted.posting: accepted for accepted in tally.accepted.values()}
    assert set(journal) == set(by_posting), "every accepted request is in the journal once, nothing else is"
    order_rows = {
        row[0]: row
        for row in conn.execute(
            "SELECT external_order_id, id, posting_id, amount, refunded, points_earned, points_reversed,"
            " points_unrecovered, growth_earned, growth_reversed FROM orders WHERE brand_id = %(brand)s",
            params,
        )
    }
    refunds_of: dict[str, list[Accepted]] = {}
    cancels_of: dict[int, list[Accepted]] = {}
    for posting_id, accepted in by_posting.items():
        _, total, count = journal[posting_id]
        kind, variables = accepted.operation.kind, accepted.operation.variables
        if kind in ("earn", "redeem", "adjust"):
            signed = {"earn": 1, "redeem": -1}.get(kind, 1) * variables.get("amount", variables.get("delta", 0))
            assert (total, count) == (signed, 1), accepted
        elif kind == "order":
            row = order_rows[variables["order"]]
            assert (row[1], row[2], total) == (accepted.order, posting_id, row[5]), accepted
        elif kind == "refund":
            assert total <= 0, accepted
            assert count <= 1, accepted
            refunds_of.setdefault(variables["order"], []).append(accepted)
        else:
            cancels_of.setdefault(int(variables["posting"]), []).append(accepted)
    # 3. Orders: refunded as the accepted refunds say; points and growth back pro rata, exactly.
    for external_id, row in order_rows.items():
        _, _, _, amount, refunded, earned, reversed_, unrecovered, growth, growth_back = row
        refunds = refunds_of.get(external_id, [])
        if any(r.operation.variables["amount"] is None for r in refunds):
            assert refunded == amount, external_id
        else:
            assert refunded == sum(Decimal(r.operation.variables["amount"]) for r in refunds), external_id
        assert reversed_ + unrecovered == earned * _cents(refunded) // _cents(amount), external_id
        assert 0 <= growth_back <= growth * _cents(refunded) // _cents(amount), external_id
        assert -sum(journal[r.posting][1] for r in refunds) == reversed_, external_id
    # 4. A redemption is cancelled at most once, and gives back exactly what it took.
    for redemption, cancels in cancels_of.items():
        assert len(cancels) == 1, cancels
        assert journal[cancels[0].posting][1] == -journal[redemption][1], cancels
    # 5. Lots: what each lot lost is what the debits still standing drew from it.
    for lot_id, amount, remaining, drawn in conn.execute(
        "SELECT l.id, l.amount, l.remaining, coalesce((SELECT sum(d.amount) FROM lot_draws d"
        "  JOIN points_entries e ON e.id = d.entry_id WHERE d.lot_id = l.id AND NOT EXISTS"
        "  (SELECT 1 FROM points_postings c WHERE c.reverses_posting_id = e.posting_id)), 0)"
        " FROM points_lots l WHERE l.brand_id = %(brand)s",
        params,
    ):
        assert 0 <= remaining <= amount, lot_id
        assert amount - remaining == drawn, (lot_id, amount, remaining, drawn)
    for entry_id, amount, drawn in conn.execute(
        "SELECT e.id, e.amount, (SELECT coalesce(sum(d.amount), 0) FROM lot_draws d WHERE d.entry_id = e.id)"
        " FROM points_entries e WHERE e.brand_id = %(brand)s AND e.amount < 0",
        params,
    ):
        assert drawn == -amount, (entry_id, amount, drawn)


@pytest.mark.slow
async def test_32_clients_on_hot_members_all_answered_and_the_ledger_adds_up(server: Server, database_url: str) -> None:
    rng = random.Random(12)
    with psycopg.connect(libpq_url(database_url), autocommit=True) as conn:
        deadlocks_before = _deadlocks(conn)
        # Idle connections expire here before uvicorn's 5 s keep-alive closes them: at 5 s on both sides
        # a request could go out on a connection the server was closing (found in the suite: one
        # ReadError('') in ~2,000 requests, retried and answered, but counted as a failure).
        limits = httpx.Limits(max_connections=CLIENTS * 2, keepalive_expiry=2.0)
        async with httpx.AsyncClient(base_url=server.url, timeout=GRACE, limits=limits) as http:
            brand, members, tally, elapsed = await _hammer(http, rng)
            done = len(tally.accepted) + sum(tally.refused.values())
            print(f"{done} operations in {elapsed:.1f}s, {tally.replays} replays, refused {dict(tally.refused)}")
            assert not tally.failures, f"{len(tally.failures)} failed answers, e.g. {tally.failures[:3]}"
            assert not tally.unanswered, tally.unanswered
            await _replay_some(http, tally, rng)
        ports = _backends_of(server, database_url)
        server.stop()
        _wait_for_backends_to_leave(conn, ports)
        deadlocks = _deadlocks(conn) - deadlocks_before
        assert deadlocks == 0, f"PostgreSQL detected {deadlocks} deadlocks"
        kinds = Counter(accepted.operation.kind for accepted in tally.accepted.values())
        assert set(kinds) == set(MIX), kinds  # every kind posted
        assert tally.replays > 0
        _check_ledger(conn, brand, members, tally)

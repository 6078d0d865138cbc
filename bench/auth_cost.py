"""What authentication and scope cost a request, measured in one process with both interleaved.

    .venv/bin/python bench/auth_cost.py [--database-url URL] [--rounds 30] [--per-round 300]

One app in development mode (key-less loopback requests act as a `frontend` over every brand)
answers the same requests two ways, in alternating rounds: without a key (no lookup, no scope) and
with a frontend key scoped to the brand (bearer check, cached principal, rate limiter, scope in
the compiled SQL and the loaders). Requests go through httpx's ASGI transport: no sockets, so the
whole difference is the server's own work, and an upper bound on its share of a real request.
Interleaving the rounds makes a busy neighbour slow both alike; the figure is the median ratio of
the rounds' times (keys on / keys off). Scenarios: a profile read by id (the compiled path), a member
by channel identity (strawberry's path), and earnPoints (the batched ledger path, each request audited in both modes).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api.app import create_app
from api.settings import Settings
from store.access.keys import create_key
from store.access.roles import Role

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PROFILE = "query($id: ID!) { member(id: $id) { id displayName birthMonth tier { code } pointsBalance maskedPhone } }"
BY_IDENTITY = """query($b: String!, $e: String!) { memberByIdentity(brand: $b, channel: "wechat", externalId: $e) {
  id tier { code } pointsBalance } }"""
EARN = """mutation($b: String!, $id: ID!, $k: String!) { earnPoints(brand: $b, memberId: $id, amount: 1,
  idempotencyKey: $k) { __typename } }"""
REGISTER = """mutation($b: String!, $e: String!, $p: String!) { registerMember(brand: $b, channel: "wechat",
  externalId: $e, phone: $p, displayName: "王小明") { ... on MemberRegistered { member { id } } } }"""


def _database(server_url: str) -> str:
    name = f"omnimember_auth_bench_{secrets.token_hex(3)}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # generated name
    return server_url.rsplit("/", 1)[0] + "/" + name


def _drop(url: str) -> None:
    server, name = url.rsplit("/", 1)
    with psycopg.connect(server + "/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _post(http: httpx.AsyncClient, query: str, headers: dict[str, str], **variables: Any) -> dict[str, Any]:
    response = await http.post("/graphql", json={"query": query, "variables": variables}, headers=headers)
    body: dict[str, Any] = response.json()
    assert response.status_code == 200, body
    assert "errors" not in body, body
    return body


async def run(url: str, rounds: int, per_round: int) -> None:
    from store import migrate

    migrate.upgrade(url)
    home = Path(tempfile.mkdtemp(prefix="auth-bench-"))
    settings = Settings(url, home, "auth-bench-secret-0123456789", dev=True, dev_role="frontend", rate_limit=0)
    app = create_app(settings)
    async with app.router.lifespan_context(app) as state:

        async def with_state(scope: Any, receive: Any, send: Any) -> None:
            scope["state"] = dict(state or {})
            await app(scope, receive, send)

        transport = httpx.ASGITransport(app=with_state)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench.local") as http:
            async with await psycopg.AsyncConnection.connect(url) as conn:
                from store.brands import create_brand

                async with conn.transaction():
                    await create_brand(conn, code="authbench", name="Auth bench", group_code="authbench_g")
                async with conn.transaction():
                    created = await create_key(conn, name="auth bench", role=Role.FRONTEND, brand_codes=["authbench"])
            admin = {"authorization": f"Bearer {created.token}"}
            ids = []
            for n in range(200):
                body = await _post(http, REGISTER, admin, b="authbench", e=f"wx{n}", p=f"139{n:08d}")
                ids.append(body["data"]["registerMember"]["member"]["id"])
            modes: dict[str, dict[str, str]] = {"keys off": {}, "keys on": admin}
            scenarios: dict[str, Callable[[int], tuple[str, dict[str, Any]]]] = {
                "profile read by id (compiled)": lambda n: (PROFILE, {"id": ids[n % len(ids)]}),
                "member by channel identity (general path)": lambda n: (
                    BY_IDENTITY,
                    {"b": "authbench", "e": f"wx{n % len(ids)}"},
                ),
                "earnPoints (batched, audited)": lambda n: (
                    EARN,
                    {"b": "authbench", "id": ids[n % len(ids)], "k": secrets.token_hex(8)},
                ),
            }
            print(f"{rounds} rounds x {per_round} requests per mode and scenario, c=8, interleaved")
            for title, make in scenarios.items():
                ratios: list[float] = []
                seconds: dict[str, list[float]] = {mode: [] for mode in modes}
                for _ in range(rounds):
                    times = {}
                    for mode, headers in modes.items():
                        started = time.perf_counter()
                        for start in range(0, per_round, 8):
                            calls = [make(n) for n in range(start, start + 8)]
                            await asyncio.gather(*(_post(http, q, headers, **v) for q, v in calls))
                        times[mode] = time.perf_counter() - started
                        seconds[mode].append(times[mode])
                    ratios.append(times["keys on"] / times["keys off"])
                per_request = {m: statistics.median(s) / per_round * 1000 for m, s in seconds.items()}
                print(
                    f"{title}: keys off {per_request['keys off']:.3f} ms/request, keys on "
                    f"{per_request['keys on']:.3f} ms/request, on/off median {statistics.median(ratios):.3f} "
                    f"(quartiles {statistics.quantiles(ratios, n=4)[0]:.3f}-{statistics.quantiles(ratios, n=4)[2]:.3f})"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", DEFAULT_URL))
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--per-round", type=int, default=296)
    args = parser.parse_args()
    url = _database(args.database_url)
    print(f"$ .venv/bin/python bench/auth_cost.py --rounds {args.rounds} --per-round {args.per_round}")
    try:
        asyncio.run(run(url, args.rounds, args.per_round))
    finally:
        _drop(url)


if __name__ == "__main__":
    main()

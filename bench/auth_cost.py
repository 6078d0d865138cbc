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
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from inprocess import DEFAULT_URL, Request, client, interleaved, post, throwaway_database

from api.app import create_app
from api.settings import Settings
from store.access.keys import create_key
from store.access.roles import Role

PROFILE = "query($id: ID!) { member(id: $id) { id displayName birthMonth tier { code } pointsBalance maskedPhone } }"
BY_IDENTITY = """query($b: String!, $e: String!) { memberByIdentity(brand: $b, channel: "wechat", externalId: $e) {
  id tier { code } pointsBalance } }"""
EARN = """mutation($b: String!, $id: ID!, $k: String!) { earnPoints(brand: $b, memberId: $id, amount: 1,
  idempotencyKey: $k) { __typename } }"""
REGISTER = """mutation($b: String!, $e: String!, $p: String!) { registerMember(brand: $b, channel: "wechat",
  externalId: $e, phone: $p, displayName: "王小明") { ... on MemberRegistered { member { id } } } }"""

Make = Callable[[int], tuple[str, dict[str, Any]]]  # the n-th request: document and variables


def _sender(http: httpx.AsyncClient, make: Make, headers: dict[str, str]) -> Request:
    def send(n: int) -> Any:
        query, variables = make(n)
        return post(http, query, headers, **variables)

    return send


async def run(url: str, rounds: int, per_round: int) -> None:
    home = Path(tempfile.mkdtemp(prefix="auth-bench-"))
    settings = Settings(url, home, "auth-bench-secret-0123456789", dev=True, dev_role="frontend", rate_limit=0)
    async with client(create_app(settings)) as http:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            from store.brands import create_brand

            async with conn.transaction():
                await create_brand(conn, code="authbench", name="Auth bench", group_code="authbench_g")
            async with conn.transaction():
                created = await create_key(conn, name="auth bench", role=Role.FRONTEND, brand_codes=["authbench"])
        admin = {"authorization": f"Bearer {created.token}"}
        ids = []
        for n in range(200):
            body = await post(http, REGISTER, admin, b="authbench", e=f"wx{n}", p=f"139{n:08d}")
            ids.append(body["data"]["registerMember"]["member"]["id"])
        scenarios: dict[str, Make] = {
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
            modes = {"keys off": _sender(http, make, {}), "keys on": _sender(http, make, admin)}
            compared = await interleaved(modes, rounds, per_round)
            print(
                f"{title}: keys off {compared.per_request_ms('keys off'):.3f} ms/request, keys on "
                f"{compared.per_request_ms('keys on'):.3f} ms/request, on/off median "
                f"{compared.summary('keys on', 'keys off')}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", DEFAULT_URL))
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--per-round", type=int, default=296)
    args = parser.parse_args()
    print(f"$ .venv/bin/python bench/auth_cost.py --rounds {args.rounds} --per-round {args.per_round}")
    with throwaway_database(args.database_url, "auth_bench") as url:
        asyncio.run(run(url, args.rounds, args.per_round))


if __name__ == "__main__":
    main()

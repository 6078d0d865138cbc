"""What the in-process cost benchmarks share (bench/auth_cost.py, bench/observe_cost.py): a throwaway
database, apps served in this process through httpx's ASGI transport, and timed rounds that
alternate between the modes compared.

No sockets: the whole difference between two modes is the server's own work, and an upper bound on
its share of a real request. Rounds alternate (off, on, on, off, ...), so a busy neighbour or a
warming cache slows both alike; a comparison's figure is the median of the rounds' ratios.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg
from starlette.applications import Starlette

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
CONCURRENCY = 8  # requests in flight at once within a round

Request = Callable[[int], Awaitable[object]]  # the n-th request of a round, sent and checked


@contextlib.contextmanager
def throwaway_database(server_url: str, purpose: str) -> Iterator[str]:
    """A new database on the server of ``server_url``, migrated, dropped afterwards."""
    from store import migrate

    name = f"omnimember_{purpose}_{secrets.token_hex(3)}"
    admin = server_url.rsplit("/", 1)[0]
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')  # a generated name
    try:
        url = f"{admin}/{name}"
        migrate.upgrade(url)
        yield url
    finally:
        with psycopg.connect(f"{admin}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.asynccontextmanager
async def client(app: Starlette, base_url: str = "http://bench.local") -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking to ``app`` in this process, its lifespan entered."""
    async with app.router.lifespan_context(app) as state:

        async def with_state(scope: Any, receive: Any, send: Any) -> None:
            scope["state"] = dict(state or {})
            await app(scope, receive, send)

        transport = httpx.ASGITransport(app=with_state)
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as http:
            yield http


async def post(
    http: httpx.AsyncClient, query: str, headers: Mapping[str, str] | None = None, **variables: Any
) -> dict[str, Any]:
    """A GraphQL request that must succeed (HTTP 200, no errors): its body."""
    response = await http.post("/graphql", json={"query": query, "variables": variables}, headers=headers)
    body: dict[str, Any] = response.json()
    assert response.status_code == 200, body
    assert "errors" not in body, body
    return body


@dataclass
class Comparison:
    """Rounds of the same requests in each mode: seconds (wall and this process's CPU) per round."""

    modes: Sequence[str]
    per_round: int
    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)

    def per_request_ms(self, mode: str, cpu: bool = False) -> float:
        return statistics.median((self.cpu if cpu else self.wall)[mode]) / self.per_round * 1000

    def ratios(self, mode: str, baseline: str, cpu: bool = False) -> list[float]:
        times = self.cpu if cpu else self.wall
        return [a / b for a, b in zip(times[mode], times[baseline], strict=True)]

    def summary(self, mode: str, baseline: str, cpu: bool = False) -> str:
        """'1.012 (quartiles 0.990-1.031)': the median ratio of ``mode`` to ``baseline``."""
        ratios = self.ratios(mode, baseline, cpu)
        quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        return f"{statistics.median(ratios):.3f} (quartiles {quartiles[0]:.3f}-{quartiles[2]:.3f})"


async def interleaved(modes: Mapping[str, Request], rounds: int, per_round: int) -> Comparison:
    """``rounds`` rounds of ``per_round`` requests in every mode, CONCURRENCY at a time, the modes'
    order reversed every other round."""
    comparison = Comparison(list(modes), per_round, {m: [] for m in modes}, {m: [] for m in modes})
    for number in range(rounds):
        order = list(modes) if number % 2 == 0 else list(reversed(list(modes)))
        for mode in order:
            send = modes[mode]
            wall, cpu = time.perf_counter(), time.process_time()
            for start in range(0, per_round, CONCURRENCY):
                await asyncio.gather(*(send(n) for n in range(start, min(start + CONCURRENCY, per_round))))
            comparison.wall[mode].append(time.perf_counter() - wall)
            comparison.cpu[mode].append(time.process_time() - cpu)
    return comparison

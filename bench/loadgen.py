"""HTTP load for bench/profile_read.py: wrk when installed, else a Python client (which competes for CPU).

Every response is checked: a benchmark of error responses is worthless, so bad ones fail the run.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

if TYPE_CHECKING:
    import httpx

LUA_SCRIPT = Path(__file__).resolve().with_name("load.lua")
RESULT_MARKER = "PROFILE_READ_RESULT "
HEADERS = {"Content-Type": "application/json"}


class LoadError(RuntimeError):
    """The load run failed or saw bad responses."""


@dataclass(frozen=True, slots=True)
class Scenario:
    key: str
    title: str
    method: Literal["GET", "POST"]
    path: str
    bodies: tuple[str, ...]  # one picked at random per request; empty for a GET
    expect: str  # every good response body contains it
    query: str = ""  # the GraphQL document, for the report


@dataclass(frozen=True, slots=True)
class LoadStats:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    bad: int  # not 200, or the body lacks the scenario's `expect`
    graphql_errors: int
    socket_errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    def check(self, scenario: Scenario) -> None:
        if self.requests == 0 or self.bad or self.graphql_errors or self.socket_errors:
            raise LoadError(
                f"{scenario.title}: {self.requests} requests, {self.bad} bad responses, "
                f"{self.graphql_errors} with GraphQL errors, {self.socket_errors} socket errors"
            )


class Driver(Protocol):
    name: str

    def run(self, base_url: str, scenario: Scenario, connections: int, seconds: int) -> LoadStats: ...

    def command(self, base_url: str, scenario: Scenario, connections: int, seconds: int) -> str: ...


@dataclass(slots=True)
class WrkDriver:
    """wrk with bench/load.lua: one client thread, C code, negligible CPU next to the server."""

    wrk: str
    workdir: Path
    name: str = "wrk"

    def _bodies_file(self, scenario: Scenario) -> str:
        if not scenario.bodies:
            return "-"
        path = self.workdir / f"{scenario.key}.bodies"
        if not path.exists():
            path.write_text("".join(body + "\n" for body in scenario.bodies))
        return str(path)

    def _argv(self, base_url: str, scenario: Scenario, connections: int, seconds: int) -> list[str]:
        return [
            self.wrk,
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(LUA_SCRIPT),
            base_url + scenario.path,
            "--",
            scenario.method,
            self._bodies_file(scenario),
            scenario.expect,
        ]

    def command(self, base_url: str, scenario: Scenario, connections: int, seconds: int) -> str:
        return shlex.join(self._argv(base_url, scenario, connections, seconds))

    def run(self, base_url: str, scenario: Scenario, connections: int, seconds: int) -> LoadStats:
        argv = self._argv(base_url, scenario, connections, seconds)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
        line = next((x for x in done.stdout.splitlines() if x.startswith(RESULT_MARKER)), None)
        if done.returncode != 0 or line is None:
            raise LoadError(f"wrk failed ({done.returncode}): {done.stdout}{done.stderr}")
        raw = json.loads(line[len(RESULT_MARKER) :])
        return LoadStats(
            requests=raw["requests"],
            seconds=raw["duration_us"] / 1e6,
            p50_ms=raw["p50_us"] / 1000,
            p99_ms=raw["p99_us"] / 1000,
            bad=raw["bad"] + max(0, raw["requests"] - raw["checked"]),
            graphql_errors=raw["graphql_errors"],
            socket_errors=raw["socket_errors"],
        )


@dataclass(slots=True)
class _Tally:
    latencies: list[float] = field(default_factory=list)
    bad: int = 0
    graphql_errors: int = 0
    socket_errors: int = 0


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(slots=True)
class PythonDriver:
    """asyncio + httpx in this process: it shares the machine's cores with the server, so req/s reads low."""

    name: str = "python (asyncio + httpx; competes with the server for CPU)"

    def command(self, base_url: str, scenario: Scenario, connections: int, seconds: int) -> str:
        return f"(in-process httpx client: {scenario.method} {base_url}{scenario.path}, c={connections}, {seconds}s)"

    def run(self, base_url: str, scenario: Scenario, connections: int, seconds: int) -> LoadStats:
        return asyncio.run(self._run(base_url, scenario, connections, seconds))

    async def _run(self, base_url: str, scenario: Scenario, connections: int, seconds: int) -> LoadStats:
        import httpx  # only this fallback needs it (the project's test extra)

        tally = _Tally()
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=10) as client:
            start = time.perf_counter()
            deadline = start + seconds
            workers = [self._worker(client, scenario, deadline, tally, random.Random(i)) for i in range(connections)]
            await asyncio.gather(*workers)
            elapsed = time.perf_counter() - start
        latencies = sorted(tally.latencies)
        return LoadStats(
            requests=len(latencies),
            seconds=elapsed,
            p50_ms=percentile(latencies, 50) * 1000,
            p99_ms=percentile(latencies, 99) * 1000,
            bad=tally.bad,
            graphql_errors=tally.graphql_errors,
            socket_errors=tally.socket_errors,
        )

    @staticmethod
    async def _worker(
        client: httpx.AsyncClient, scenario: Scenario, deadline: float, tally: _Tally, rnd: random.Random
    ) -> None:
        import httpx

        while time.perf_counter() < deadline:
            body = rnd.choice(scenario.bodies) if scenario.bodies else None
            sent = time.perf_counter()
            try:
                response = await client.request(scenario.method, scenario.path, content=body, headers=HEADERS)
            except httpx.HTTPError:
                tally.socket_errors += 1
                continue
            tally.latencies.append(time.perf_counter() - sent)
            text = response.text
            tally.bad += response.status_code != 200 or scenario.expect not in text
            tally.graphql_errors += '"errors"' in text

"""Points ledger throughput over HTTP: postings per second of earnPoints, redeemPoints and recordOrder.

    .venv/bin/python bench/points.py [--members 10000] [--workers 1] [--pool-max 10] [--profile FILE]

Sets up its own brand (`points_bench`) with --members members in the database (default
$DATABASE_URL, else a local `omnimember_points_bench`, created and migrated when missing), starts
`omnimember serve` and drives it with wrk (bench/points.lua) at concurrency 16:

- GET /healthz and GraphQL `{ __typename }`: in-run baselines, as in bench/profile_read.py;
- earnPoints, redeemPoints and recordOrder, each request on a member picked at random among all;
- earnPoints and redeemPoints alternating on one hot member.

Every request carries a unique idempotency key (an order a unique externalOrderId) and every
response is checked. Balances for the redemptions are seeded through the API first (earnPoints,
batched with aliases). After the load, the ledger's invariants are checked in SQL for every member
of the brand, and the postings are counted against the responses wrk saw: PASS, or FAIL and exit
status 1. The figures go to the "Points ledger" section of docs/benchmarks.md. With --profile,
py-spy records the server during an extra run of the earnPoints scenario (keys on).

Access control: all of it (reset, seeding, load, check) runs twice (bench/keys.py), keys off
(development mode, key-less requests as a `frontend`) and then keys on (production mode, a
`frontend` key scoped to the bench brand in every request), and the report gives keys on / keys off.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import hotspots
import keys
import profile_read as common  # the read benchmark's helpers: database, server, CPU meter, environment
import psutil
import psycopg
from loadgen import LoadError, Scenario, WrkDriver
from profile_read import BenchError, CpuMeter, CpuSample, CpuUsage, Environment

from store.brands import brand_by_code, create_brand
from store.errors import DomainError, ErrorCode

ROOT = common.ROOT
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Points ledger: points"
LUA_SCRIPT = Path(__file__).resolve().with_name("points.lua")
RESULT_MARKER = "POINTS_RESULT "
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/omnimember_points_bench"
BENCH_PHONE_KEY = "points-benchmark-data-only"  # phone hashing key: the bench's members have no phones
BRAND = "points_bench"
BRAND_NAME = "Points Bench"
CHANNEL = "pos"
FLOOR = 1000  # postings/s, the issue's floor, spread over many members
TARGET = 2000  # what the issue aims for across members
RAW_DB_REDEEMS = 1550  # redemptions/s of the bare database path (raw psycopg, one hot member), for scale
MAX_REFUSED = 0.01  # share of InsufficientPoints beyond which a redemption run is invalid
SEED_POINTS = 10_000  # per member before the redemptions: a thousand of them
HOT_SEED_POINTS = 10_000_000
AMOUNT = 10  # points per earn or redemption
ORDER_YUAN = "88.00"
SEED_BATCH = 25  # earnPoints per seeding request (aliases; the server allows 30)
BASELINES = ("healthz", "typename")
ROLE = "frontend"  # both modes' role (bench/keys.py): masked, and it may post points
SCENARIO_KEYS = ("earn", "redeem", "order", "hot")

_POSTED = "replayed posting { id idempotencyKey } member { pointsBalance }"
_ERROR = "... on Error { code message }"


def posting_mutation(name: str, field_name: str) -> str:
    return (
        f"mutation {name}($brand: String!, $member: ID!, $amount: Int!, $key: String!) {{\n"
        f"  {field_name}(brand: $brand, memberId: $member, amount: $amount, idempotencyKey: $key,"
        ' reason: "points bench") {\n'
        f"    __typename ... on PointsPosted {{ {_POSTED} }} {_ERROR}\n"
        "  }\n}"
    )


EARN = posting_mutation("Earn", "earnPoints")
REDEEM = posting_mutation("Redeem", "redeemPoints")
ORDER = (
    "mutation Order($brand: String!, $member: ID!, $order: String!, $amount: Decimal!, $paidAt: DateTime!) {\n"
    f'  recordOrder(brand: $brand, channel: "{CHANNEL}", externalOrderId: $order, amount: $amount, paidAt: $paidAt,'
    ' memberId: $member, store: "bench-001") {\n'
    f"    __typename ... on OrderRecorded {{ {_POSTED} order {{ id pointsEarned }} }} {_ERROR}\n"
    "  }\n}"
)


# ---------------------------------------------------------------------------------------------
# Data: the bench brand and its members, reset on every run


@dataclass(frozen=True, slots=True)
class BenchData:
    brand_id: int
    member_ids: tuple[int, ...]

    @property
    def hot_id(self) -> int:
        return self.member_ids[0]


# Everything the brand's members have, children first; the brand and its tiers and rules stay.
_RESET = (
    "DELETE FROM lot_draws d USING points_entries e WHERE e.id = d.entry_id AND e.brand_id = %(brand)s",
    "DELETE FROM points_lots WHERE brand_id = %(brand)s",
    "DELETE FROM orders WHERE brand_id = %(brand)s",
    "DELETE FROM points_entries WHERE brand_id = %(brand)s",
    "DELETE FROM tier_changes WHERE brand_id = %(brand)s",
    "DELETE FROM points_postings WHERE brand_id = %(brand)s",
    "DELETE FROM member_identities WHERE brand_id = %(brand)s",
    "DELETE FROM member_merges WHERE brand_id = %(brand)s",
    "DELETE FROM members WHERE brand_id = %(brand)s",
)
# The same, at once, when the bench brand is the database's only one (its own database, the
# default): row by row, deleting entries checks each against the lots table, which has no index
# on entry_id (nothing else deletes entries), and takes minutes after a few long runs.
_TRUNCATE = (
    "TRUNCATE lot_draws, points_lots, orders, points_entries, tier_changes, points_postings,"
    " member_identities, member_merges"
)
_OTHER_BRANDS = "SELECT count(*) FROM brands WHERE id <> %(brand)s"
_INSERT_MEMBERS = """
    INSERT INTO members (brand_id, tier, display_name)
    SELECT %(brand)s, (SELECT code FROM brand_tiers WHERE brand_id = %(brand)s ORDER BY rank LIMIT 1),
           'bench member ' || n
    FROM generate_series(1, %(count)s) AS n
    RETURNING id"""


async def _ensure_brand(url: str) -> int:
    """The bench brand's id, created (with the default tiers and rules) through the store when missing."""
    async with await psycopg.AsyncConnection.connect(url) as conn, conn.transaction():
        try:
            row = await brand_by_code(conn, BRAND)
        except DomainError as error:
            if error.code != ErrorCode.UNKNOWN_BRAND:
                raise
            print(f"creating brand {BRAND}")
            row = await create_brand(conn, code=BRAND, name=BRAND_NAME, group_code=BRAND, group_name=BRAND_NAME)
        return int(row["id"])


def reset_members(url: str, brand_id: int, count: int) -> tuple[int, ...]:
    """Drop the brand's members and everything they have; insert `count` fresh ones (no points)."""
    print(f"resetting brand {BRAND}: {count:,} members, no points")
    with psycopg.connect(url) as conn:
        others = conn.execute(_OTHER_BRANDS, {"brand": brand_id}).fetchone()
        reset = _RESET if others is None or others[0] else (_TRUNCATE, _RESET[-1])
        try:
            for statement in reset:
                conn.execute(statement, {"brand": brand_id})
        except psycopg.errors.ForeignKeyViolation as error:
            raise BenchError(f"cannot reset the bench brand ({error}); use a fresh --database-url") from error
        rows = conn.execute(_INSERT_MEMBERS, {"brand": brand_id, "count": count}).fetchall()
    return tuple(sorted(int(row[0]) for row in rows))


def prepare_database(url: str, env: dict[str, str]) -> int:
    """The bench brand's id, in a migrated database."""
    common.ensure_database(url)
    common.omnimember("migrate", env=env)
    return asyncio.run(_ensure_brand(url))


def checkpoint(url: str) -> None:
    """A checkpoint before the load, so that each mode starts alike: no checkpoint of the reset's and the
    seeding's writes (or a timed one) in the middle of its runs, and the same full-page writes after it."""
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CHECKPOINT")
    except psycopg.errors.InsufficientPrivilege:
        print("note: no CHECKPOINT (needs a superuser or pg_checkpoint): the modes may differ by one", flush=True)


def prepare_data(url: str, brand_id: int, members: int) -> BenchData:
    ids = reset_members(url, brand_id, members)
    common.vacuum_analyze(url)
    return BenchData(brand_id, ids)


# ---------------------------------------------------------------------------------------------
# Load: wrk with bench/points.lua, and an account of every run for the check afterwards


@dataclass(frozen=True, slots=True)
class WriteScenario:
    key: str
    title: str
    templates: tuple[str, ...]  # request bodies with @KEY@ and @MEMBER@, used in turn
    members: tuple[int, ...]  # one picked at random per request
    query: str  # the GraphQL documents, for the report
    posting_prefix: str = ""  # what the server puts before the key sent (recordOrder: order:<channel>:)
    refusals: bool = False  # InsufficientPoints may happen (rarely); they are counted apart


@dataclass(frozen=True, slots=True)
class Account:
    """What one wrk run posted as far as its responses tell: checked against the ledger afterwards."""

    pattern: str  # LIKE pattern of the posting keys of the run
    posted: int  # responses with a fresh posting
    pending: tuple[str, ...]  # posting keys sent without such a response: in flight at the end, or refused
    limit: int  # of the pending ones, at most this many can have been posted (one in flight per connection)


@dataclass(frozen=True, slots=True)
class WriteStats:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    posted: int
    insufficient: int
    bad: int
    graphql_errors: int
    socket_errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def postings_per_s(self) -> float:
        return self.posted / self.seconds

    def check(self, scenario: WriteScenario) -> None:
        refused_ok = self.insufficient <= (MAX_REFUSED * self.requests if scenario.refusals else 0)
        if self.posted == 0 or self.bad or self.graphql_errors or self.socket_errors or not refused_ok:
            raise LoadError(
                f"{scenario.title}: {self.requests} responses, {self.posted} postings, {self.insufficient} "
                f"InsufficientPoints, {self.bad} bad, {self.graphql_errors} with GraphQL errors, "
                f"{self.socket_errors} socket errors"
            )


@dataclass(slots=True)
class PointsWrk:
    """wrk -t1 with bench/points.lua; keeps an Account of every run."""

    wrk: str
    workdir: Path
    headers: dict[str, str] = field(default_factory=dict)  # sent with every request (wrk -H)
    accounts: list[Account] = field(default_factory=list)

    def _file(self, name: str, lines: Sequence[object]) -> Path:
        path = self.workdir / name
        if not path.exists():
            path.write_text("".join(f"{line}\n" for line in lines))
        return path

    def argv(self, base_url: str, scenario: WriteScenario, connections: int, seconds: int, prefix: str) -> list[str]:
        templates = self._file(f"{scenario.key}.templates", scenario.templates)
        members = self._file(f"{scenario.key}.members", scenario.members)
        pending = self.workdir / f"{prefix}.pending"
        script = [str(LUA_SCRIPT), base_url + "/graphql", "--", str(templates), str(members), prefix, str(pending)]
        flags = keys.header_flags(self.headers)
        return [self.wrk, *flags, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", *script]

    def command(self, base_url: str, scenario: WriteScenario, connections: int, seconds: int, prefix: str) -> str:
        return keys.hide_token(shlex.join(self.argv(base_url, scenario, connections, seconds, prefix)))

    def run(self, base_url: str, scenario: WriteScenario, connections: int, seconds: int, prefix: str) -> WriteStats:
        argv = self.argv(base_url, scenario, connections, seconds, prefix)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
        line = next((x for x in done.stdout.splitlines() if x.startswith(RESULT_MARKER)), None)
        if done.returncode != 0 or line is None:
            raise LoadError(f"wrk failed ({done.returncode}): {done.stdout}{done.stderr}")
        raw = json.loads(line[len(RESULT_MARKER) :])
        pending = Path(argv[-1]).read_text().split()
        self.accounts.append(
            Account(
                pattern=f"{scenario.posting_prefix}{prefix}-t%",
                posted=raw["posted"],
                pending=tuple(scenario.posting_prefix + key for key in pending),
                limit=connections,
            )
        )
        stats = WriteStats(
            requests=raw["requests"],
            seconds=raw["duration_us"] / 1e6,
            p50_ms=raw["p50_us"] / 1000,
            p99_ms=raw["p99_us"] / 1000,
            posted=raw["posted"],
            insufficient=raw["insufficient"],
            bad=raw["bad"] + max(0, raw["requests"] - raw["checked"]),
            graphql_errors=raw["graphql_errors"],
            socket_errors=raw["socket_errors"],
        )
        if stats.bad:
            print(done.stderr, file=sys.stderr)
        return stats


def write_scenarios(data: BenchData, brand: str, paid_at: str) -> list[WriteScenario]:
    def body(query: str, **variables: Any) -> str:
        return common.graphql_body(query, {"brand": brand, "member": "@MEMBER@", **variables})

    earn = body(EARN, amount=AMOUNT, key="@KEY@")
    redeem = body(REDEEM, amount=AMOUNT, key="@KEY@")
    order = body(ORDER, order="@KEY@", amount=ORDER_YUAN, paidAt=paid_at)
    spread, hot = data.member_ids, (data.hot_id,)
    n = len(spread)
    return [
        WriteScenario("earn", f"earnPoints, {n:,} members", (earn,), spread, EARN),
        WriteScenario("redeem", f"redeemPoints, {n:,} members", (redeem,), spread, REDEEM, refusals=True),
        WriteScenario(
            "order", f"recordOrder, {n:,} members", (order,), spread, ORDER, posting_prefix=f"order:{CHANNEL}:"
        ),
        WriteScenario(
            "hot", "earnPoints + redeemPoints alternating, 1 hot member", (earn, redeem), hot, f"{EARN}\n\n{REDEEM}"
        ),
    ]


# ---------------------------------------------------------------------------------------------
# Seeding balances through the API


def seed_request(brand: str, amounts: Sequence[tuple[int, int]], prefix: str) -> str:
    """One mutation with an aliased earnPoints per (member, amount), executed one after another.
    The values travel as variables, so every batch of a size is the same document: distinct
    documents would each stay parsed in the server's caches, and a heap of syntax trees slows
    every full garbage collection of the measured runs that follow (seen: 600-800 ms pauses)."""
    declared = ", ".join(f"$m{i}: ID!, $a{i}: Int!, $k{i}: String!" for i in range(len(amounts)))
    fields = "".join(
        f"  s{i}: earnPoints(brand: $brand, memberId: $m{i}, amount: $a{i}, idempotencyKey: $k{i}, "
        f'reason: "bench seed") {{ ... on PointsPosted {{ replayed }} }}\n'
        for i in range(len(amounts))
    )
    variables: dict[str, Any] = {"brand": brand}
    for i, (member, amount) in enumerate(amounts):
        variables |= {f"m{i}": str(member), f"a{i}": amount, f"k{i}": f"{prefix}-{member}"}
    return common.graphql_body(f"mutation Seed($brand: String!, {declared}) {{\n{fields}}}", variables)


def seed_batch(base_url: str, body: str, size: int, headers: dict[str, str]) -> None:
    status, text = common.http_request(base_url + "/graphql", body, timeout=120, headers=headers)
    if status != 200 or '"errors"' in text or text.count('"replayed":false') != size:
        raise BenchError(f"seeding failed: HTTP {status}: {text[:1000]}")


def seed_balances(
    base_url: str, data: BenchData, prefix: str, accounts: list[Account], headers: dict[str, str]
) -> None:
    """SEED_POINTS for every member (HOT_SEED_POINTS for the hot one), one earnPoints each, via GraphQL."""
    amounts = [(m, HOT_SEED_POINTS if m == data.hot_id else SEED_POINTS) for m in data.member_ids]
    batches = [amounts[i : i + SEED_BATCH] for i in range(0, len(amounts), SEED_BATCH)]
    print(f"seeding balances: {len(amounts):,} earnPoints in {len(batches)} requests", flush=True)
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(seed_batch, base_url, seed_request(BRAND, b, prefix), len(b), headers) for b in batches]
        for future in futures:
            future.result()
    print(f"  done in {time.monotonic() - started:.1f}s", flush=True)
    accounts.append(Account(pattern=f"{prefix}-%", posted=len(amounts), pending=(), limit=0))


# ---------------------------------------------------------------------------------------------
# Measurements


class TreeCpuMeter(CpuMeter):
    """CpuMeter over the server's whole process tree: with --workers, uvicorn's workers are its children.

    A child's CPU time is remembered per pid, so one that exits (a worker uvicorn restarts) keeps
    counting what it had used when last seen: the total never goes back.
    """

    def __init__(self, server_pid: int, conn: psycopg.Connection[Any] | None) -> None:
        super().__init__(server_pid, conn)
        self.children: dict[int, float] = {}
        self.started: int | None = None  # children at the first sample

    @property
    def restarts(self) -> int:
        """Children that appeared after the first sample: workers uvicorn replaced (the figures are suspect)."""
        return len(self.children) - (self.started or 0)

    def sample(self) -> CpuSample:
        base = super().sample()
        for child in psutil.Process(self.pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                times = child.cpu_times()
                self.children[child.pid] = float(times.user + times.system)
        if self.started is None:
            self.started = len(self.children)
        return dataclasses.replace(base, server=base.server + sum(self.children.values()))


@dataclass(frozen=True, slots=True)
class Result:
    key: str
    title: str
    connections: int
    rps: float  # responses per second
    postings: float | None  # postings per second; None for the baselines
    p50_ms: float
    p99_ms: float
    refused: int  # InsufficientPoints
    cpu: CpuUsage
    command: str


@dataclass(slots=True)
class Bench:
    """What every scenario run needs: the load generators, the server, the meter and the options."""

    args: argparse.Namespace
    base_url: str
    run_id: str
    wrk: PointsWrk
    baseline_driver: keys.KeyedWrk
    meter: TreeCpuMeter

    def prefix(self, scenario: str, phase: str) -> str:
        return f"{self.run_id}-{scenario}-{phase}"

    def write(self, scenario: WriteScenario) -> Result:
        args, c = self.args, self.args.connections
        if args.warmup:
            self.wrk.run(self.base_url, scenario, c, args.warmup, self.prefix(scenario.key, "warm")).check(scenario)
        prefix = self.prefix(scenario.key, "run")
        before = self.meter.sample()
        stats = self.wrk.run(self.base_url, scenario, c, args.duration, prefix)
        after = self.meter.sample()
        stats.check(scenario)
        cpu = common.cpu_usage(before, after, stats.requests, stats.seconds)
        command = self.wrk.command(self.base_url, scenario, c, args.duration, prefix)
        return Result(
            scenario.key,
            scenario.title,
            c,
            stats.rps,
            stats.postings_per_s,
            stats.p50_ms,
            stats.p99_ms,
            stats.insufficient,
            cpu,
            command,
        )

    def baseline(self, scenario: Scenario) -> Result:
        common.probe(self.base_url, scenario, self.wrk.headers)
        m = common.measure(self.baseline_driver, self.base_url, scenario, self.args.connections, self.args, self.meter)
        s = m.stats
        return Result(scenario.key, scenario.title, m.connections, s.rps, None, s.p50_ms, s.p99_ms, 0, m.cpu, m.command)


def report_line(result: Result) -> str:
    rate = f"{result.rps:,.0f} req/s" if result.postings is None else f"{result.postings:,.0f} postings/s"
    refused = f", {result.refused} InsufficientPoints" if result.refused else ""
    return (
        f"{rate}, p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms, server {result.cpu.server_ms:.2f} ms CPU/req"
        f"{refused}"
    )


def run_scenarios(bench: Bench, plan: Sequence[WriteScenario]) -> list[Result]:
    """The baselines, then the write scenarios, one after another."""
    baselines = [s for s in common.scenarios((), "") if s.key in BASELINES]
    runs: list[tuple[str, Callable[[], Result]]] = [(s.title, partial(bench.baseline, s)) for s in baselines]
    runs += [(w.title, partial(bench.write, w)) for w in plan]
    results = []
    for title, measure in runs:
        print(f"{title}, c={bench.args.connections} …", end=" ", flush=True)
        result = measure()
        print(report_line(result), flush=True)
        results.append(result)
    return results


# ---------------------------------------------------------------------------------------------
# Profiling


def profile_earn(bench: Bench, scenario: WriteScenario, pid: int, out: Path) -> hotspots.Hotspots:
    """py-spy records the server (and its workers) while wrk runs `scenario` once more."""
    args = bench.args
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [str(common.venv_bin("py-spy")), "record", "--pid", str(pid), "--duration", str(args.duration + 2)]
    command += ["--rate", "200", "--format", "raw", "--output", str(out)]
    if args.workers > 1:
        command.append("--subprocesses")
    print("$", shlex.join(command), flush=True)
    recorder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1)  # let py-spy attach
        prefix = bench.prefix(scenario.key, "profile")
        stats = bench.wrk.run(bench.base_url, scenario, args.connections, args.duration, prefix)
        stats.check(scenario)
        print(f"  under py-spy: {stats.postings_per_s:,.0f} postings/s", flush=True)
        _, errors = recorder.communicate(timeout=args.duration + 60)
    finally:
        if recorder.poll() is None:
            recorder.kill()
            recorder.wait()
    if recorder.returncode != 0 or not out.exists():
        raise BenchError(f"py-spy failed ({recorder.returncode}): {errors}")
    return hotspots.summarise(out.read_text(), ROOT)


# ---------------------------------------------------------------------------------------------
# The check after the load


@dataclass(frozen=True, slots=True)
class Check:
    members: int
    postings: int
    entries: int
    lots: int
    accounted: int  # postings the responses (and the seeding) account for
    problems: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.problems


_MEMBER_INVARIANTS = """
    WITH e AS (
        SELECT member_id, sum(amount) AS total, count(*) FILTER (WHERE balance_after < 0) AS negative
        FROM points_entries WHERE brand_id = %(brand)s GROUP BY member_id
    ), l AS (
        SELECT member_id, sum(remaining) AS total FROM points_lots WHERE brand_id = %(brand)s GROUP BY member_id
    )
    SELECT count(*),
           count(*) FILTER (WHERE m.points_balance <> coalesce(e.total, 0)),
           count(*) FILTER (WHERE m.points_balance <> coalesce(l.total, 0)),
           count(*) FILTER (WHERE m.points_balance < 0),
           coalesce(sum(e.negative), 0)
    FROM members m LEFT JOIN e ON e.member_id = m.id LEFT JOIN l ON l.member_id = m.id
    WHERE m.brand_id = %(brand)s"""
_MEMBER_PROBLEMS = (
    "members whose balance differs from the sum of their entries",
    "members whose balance differs from what is left in their lots",
    "members with a negative balance",
    "entries with a negative balance_after",
)
_LEDGER_PROBLEMS = {
    "debit entries whose lot draws do not add up to them": """
        SELECT count(*) FROM points_entries e
        LEFT JOIN (SELECT entry_id, sum(amount) AS drawn FROM lot_draws GROUP BY entry_id) d ON d.entry_id = e.id
        WHERE e.brand_id = %(brand)s AND e.amount < 0 AND coalesce(d.drawn, 0) <> -e.amount""",
    "postings without entries": """
        SELECT count(*) FROM points_postings p WHERE p.brand_id = %(brand)s
        AND NOT EXISTS (SELECT 1 FROM points_entries e WHERE e.posting_id = p.id)""",
}
_TOTALS = """
    SELECT (SELECT count(*) FROM points_postings WHERE brand_id = %(brand)s),
           (SELECT count(*) FROM points_entries WHERE brand_id = %(brand)s),
           (SELECT count(*) FROM points_lots WHERE brand_id = %(brand)s)"""
_COUNT_LIKE = "SELECT count(*) FROM points_postings WHERE brand_id = %(brand)s AND idempotency_key LIKE %(pattern)s"
_COUNT_KEYS = "SELECT count(*) FROM points_postings WHERE brand_id = %(brand)s AND idempotency_key = ANY(%(keys)s)"


def scalar(conn: psycopg.Connection[Any], query: str, **params: Any) -> int:
    row = conn.execute(query, params).fetchone()
    return int(row[0]) if row else 0


def account_problems(conn: psycopg.Connection[Any], brand_id: int, account: Account) -> tuple[int, list[str]]:
    """(postings the run made, problems): every posting answered once, or still in flight when wrk stopped."""
    found = scalar(conn, _COUNT_LIKE, brand=brand_id, pattern=account.pattern)
    late = scalar(conn, _COUNT_KEYS, brand=brand_id, keys=list(account.pending)) if account.pending else 0
    problems = []
    if found != account.posted + late:
        problems.append(f"{account.pattern}: {found} postings for {account.posted} posted responses (+{late} late)")
    if late > account.limit:
        problems.append(f"{account.pattern}: {late} postings without a response, more than the connections")
    return found, problems


def check_ledger(url: str, brand_id: int, accounts: Sequence[Account]) -> Check:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(_MEMBER_INVARIANTS, {"brand": brand_id}).fetchone()
        assert row is not None
        members, *counts = (int(x) for x in row)
        problems = [f"{n} {what}" for n, what in zip(counts, _MEMBER_PROBLEMS, strict=True) if n]
        for what, query in _LEDGER_PROBLEMS.items():
            n = scalar(conn, query, brand=brand_id)
            problems += [f"{n} {what}"] if n else []
        totals = conn.execute(_TOTALS, {"brand": brand_id}).fetchone()
        assert totals is not None
        postings, entries, lots = (int(x) for x in totals)
        accounted = 0
        for account in accounts:
            found, wrong = account_problems(conn, brand_id, account)
            accounted += found
            problems += wrong
    if accounted != postings:
        problems.append(f"{postings} postings in the brand, {accounted} accounted for by the runs")
    return Check(members, postings, entries, lots, accounted, tuple(problems))


# ---------------------------------------------------------------------------------------------
# Report


@dataclass(frozen=True, slots=True)
class Findings:
    results: list[Result]
    plan: list[WriteScenario]
    machine: Environment
    check: Check
    restarts: int  # server worker processes replaced during the run
    profiled: hotspots.Hotspots | None


def ceiling(cpu: CpuUsage, workers: int, cores: int) -> float:
    """req/s the CPU cost per request allows on this machine alone: each worker saturates at most one
    core, and the server and PostgreSQL share all of them (the load generator's share left out)."""
    limits = [workers * 1000 / cpu.server_ms]
    if cpu.pg_ms is not None:
        limits.append(cores * 1000 / (cpu.server_ms + cpu.pg_ms))
    return min(limits)


def table(results: Sequence[Result], workers: int, cores: int) -> list[str]:
    lines = [
        "| scenario | conns | postings/s (req/s) | p50 | p99 | vs `__typename` | server CPU/req | PG CPU/req "
        "| CPU ceiling | others' CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    typename = next(r.rps for r in results if r.key == "typename")
    for r in results:
        rate = f"({r.rps:,.0f})" if r.postings is None else f"**{r.postings:,.0f}**"
        pg = "-" if r.cpu.pg_ms is None else f"{r.cpu.pg_ms:.2f} ms"
        lines.append(
            f"| {r.title} | {r.connections} | {rate} | {r.p50_ms:.2f} ms | {r.p99_ms:.2f} ms | {r.rps / typename:.2f} "
            f"| {r.cpu.server_ms:.2f} ms | {pg} | {ceiling(r.cpu, workers, cores):,.0f} "
            f"| {r.cpu.others_cores:.2f} cores |"
        )
    return lines


def verdict(findings: Findings, args: argparse.Namespace) -> list[str]:
    cores, check = findings.machine.cpus, findings.check
    by_key = {r.key: r for r in findings.results}
    spread = [by_key[k] for k in ("earn", "redeem", "order")]
    met = all((r.postings or 0) >= FLOOR for r in spread)
    lines = [
        f"- Floor, {FLOOR:,} postings/s spread over {args.members:,} members: {'met' if met else '**NOT met**'} "
        f"({', '.join(f'{r.key} {r.postings or 0:,.0f}' for r in spread)}; the aim is {TARGET:,}).",
    ]
    hot = by_key["hot"]
    lines.append(
        f"- One hot member, earn and redeem alternating: {hot.postings or 0:,.0f} postings/s "
        f"({'at or above' if (hot.postings or 0) >= FLOOR else 'below'} the floor; for scale, the bare database path, "
        f"raw psycopg without HTTP, did about {RAW_DB_REDEEMS:,} redemptions/s on one hot member here)."
    )
    lines += [
        f"- {r.title}: {r.cpu.server_ms:.2f} ms server CPU"
        + ("" if r.cpu.pg_ms is None else f" + {r.cpu.pg_ms:.2f} ms PostgreSQL CPU")
        + f" per posting: at most about {ceiling(r.cpu, args.workers, cores):,.0f} postings/s on this machine alone."
        for r in spread
    ]
    refused = by_key["redeem"].refused
    lines.append(f"- InsufficientPoints during the measured redemptions: {refused} (a valid run has under 1%).")
    if findings.restarts:
        lines.append(f"- **{findings.restarts} server process(es) replaced during the run**: the figures are suspect.")
    lines.append(f"- Invariant check after the load: {'PASS' if check.passed else '**FAIL**'}. {describe(check)}")
    return lines


def describe(check: Check) -> str:
    text = (
        f"For each of the {check.members:,} members, balance = sum of entries = sum left in lots >= 0 and no "
        f"negative balance_after; every debit's lot draws add up; {check.postings:,} postings "
        f"({check.entries:,} entries, {check.lots:,} lots), each answered once with a fresh posting "
        f"(or, still in flight when wrk stopped, at most one per connection): {check.accounted:,} accounted for."
    )
    return text if check.passed else text + " Problems: " + "; ".join(check.problems) + "."


def access_table(off: Findings, on: Findings) -> list[str]:
    """Keys on against keys off, scenario by scenario: postings/s (req/s for the baselines)."""
    lines = [
        "| scenario | conns | keys off | keys on | on / off | server CPU/req off | on | CPU on / off |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    before = {r.key: r for r in off.results}
    for b in on.results:
        a = before[b.key]
        rate_a, rate_b = (a.rps, b.rps) if b.postings is None else (a.postings or 0.0, b.postings)
        unit = "req/s" if b.postings is None else "postings/s"
        lines.append(
            f"| {b.title} | {b.connections} | {rate_a:,.0f} {unit} | {rate_b:,.0f} {unit} | {rate_b / rate_a:.3f} "
            f"| {a.cpu.server_ms:.2f} ms | {b.cpu.server_ms:.2f} ms | {b.cpu.server_ms / a.cpu.server_ms:.3f} |"
        )
    return lines


def access_verdict(off: Findings, on: Findings) -> str:
    """Issue 14's floor over the write scenarios (the baselines only frame them)."""
    before = {r.key: r.postings or 0.0 for r in off.results}
    ratios = [(r.key, (r.postings or 0.0) / before[r.key]) for r in on.results if r.postings is not None]
    worst, low = min(ratios, key=lambda pair: pair[1])
    met = "met" if low >= common.ACCESS_FLOOR else "**NOT met**"
    return (
        f"- Access control (issue 14), keys on within {1 - common.ACCESS_FLOOR:.0%} of keys off in postings/s: "
        f"{met} (lowest on / off {low:.3f}: {worst})."
    )


def section(runs: Mapping[str, Findings], args: argparse.Namespace) -> str:
    off, findings = runs["off"], runs["on"]
    env, cores = findings.machine, findings.machine.cpus
    lines = [
        SECTION,
        "",
        f"Measured {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} by `bench/points.py`. Reproduce with:",
        "",
        "```sh",
        reproduce_command(args),
        "```",
        "",
        f"- Machine: {cores} CPUs ({env.cpu_model}), {env.ram_gib:.1f} GiB RAM, shared with the database.",
        f"- Database: {env.postgres}, at {urlsplit(args.database_url).hostname or 'a unix socket'}. "
        "VACUUM (ANALYZE) after the reset and again after the seeding: plans cached while the ledger tables were "
        "near empty would otherwise keep scanning them whole (autovacuum would re-analyze in time, when on); "
        "then a CHECKPOINT, so that no checkpoint of those writes falls in the measured runs.",
        f"- Server: `omnimember serve --workers {args.workers}`, Python {env.python}; {env.libraries}.",
        f"- Connection pool: {env.pool}.",
        f"- Data: brand `{BRAND}` with {args.members:,} members, reset at the start; before the load every member "
        f"gets {SEED_POINTS:,} points (the hot one {HOT_SEED_POINTS:,}) with one earnPoints each, through the API "
        f"({SEED_BATCH} aliased mutations per request). Earn and redeem post {AMOUNT} points; an order is "
        f"{ORDER_YUAN} yuan on `{CHANNEL}` (base points, growth, tier upgrades as they come).",
        f"- Load: wrk -t1 -c{args.connections} with bench/points.lua, {args.duration}s per run after a {args.warmup}s "
        "warm-up; each request has a unique idempotency key (recordOrder: a unique externalOrderId) and a member "
        "picked at random; every response is checked (HTTP 200, a fresh posting with the key sent, no GraphQL "
        "`errors`; InsufficientPoints counted apart).",
        "- CPU/req: user+system CPU time over the run divided by its requests, of the server's processes and of "
        "PostgreSQL's client backends of the bench database (WAL writer and checkpointer not included). "
        f"CPU ceiling: the req/s that cost allows on this machine alone, min(workers x 1000 / server ms, {cores} "
        "x 1000 / (server + PG ms)). Others' CPU: what the rest of the machine used during the run, in cores out of "
        f"{cores}; when it is high, req/s and latencies read low and the ceiling is the fairer figure.",
        "- Access control: everything above (reset, seeding, load, check) runs twice, keys off, then keys on "
        f"(bench/keys.py). Keys off: development mode, key-less requests acting as `{ROLE}` over every brand. Keys on: "
        f"production mode, a `{ROLE}` key scoped to `{BRAND}` (`omnimember keys create`) as a bearer token in every "
        "request. Every mutation writes an audit record in both modes. Both set "
        f"OMNIMEMBER_RATE_LIMIT={keys.RATE_LIMIT} (the limiter runs but never refuses; its default, 5,000 requests a "
        "second per key, is below these rates). The server restarts between the modes.",
        "",
        f"Keys off (development mode, `{ROLE}`):",
        "",
        *table(off.results, args.workers, cores),
        "",
        f"Keys on (a `{ROLE}` key):",
        "",
        *table(findings.results, args.workers, cores),
        "",
        "Keys on / keys off:",
        "",
        *access_table(off, findings),
        "",
        access_verdict(off, findings),
        *verdict(findings, args),
        f"- Invariant check after the keys-off load: {'PASS' if off.check.passed else '**FAIL**'}."
        + ("" if off.check.passed else " Problems: " + "; ".join(off.check.problems) + "."),
        "",
        "<details><summary>Mutations</summary>",
        "",
        "```graphql",
        "\n\n".join(s.query for s in findings.plan if s.key != "hot"),
        "```",
        "",
        "</details>",
    ]
    if findings.profiled is not None:
        lines += ["", f"### Profile: earnPoints over {args.members:,} members, c={args.connections}, keys on", ""]
        lines += hotspots.render(findings.profiled)
    return "\n".join(lines) + "\n"


def reproduce_command(args: argparse.Namespace) -> str:
    argv = [".venv/bin/python", "bench/points.py", "--members", str(args.members), "--workers", str(args.workers)]
    argv += ["--pool-max", str(args.pool_max), "--duration", str(args.duration), "--warmup", str(args.warmup)]
    if args.connections != 16:
        argv += ["--connections", str(args.connections)]
    if args.database_url != DEFAULT_DATABASE_URL:
        argv += ["--database-url", common.redact(args.database_url)]
    if args.profile is not None:
        argv += ["--profile", str(args.profile)]
    return shlex.join(argv)


# ---------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--members", type=int, default=10_000, help="members of the bench brand (default 10000)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default 1)")
    parser.add_argument(
        "--pool-max",
        type=int,
        default=int(os.environ.get("OMNIMEMBER_POOL_MAX") or 10),
        help="OMNIMEMBER_POOL_MAX of each worker (default: $OMNIMEMBER_POOL_MAX, else 10)",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL,
        help=f"default: $DATABASE_URL, else {DEFAULT_DATABASE_URL} (created when missing)",
    )
    parser.add_argument("--duration", type=int, default=15, help="seconds per measured run (default 15)")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up before each run (default 3)")
    parser.add_argument("--connections", type=int, default=16, help="concurrency (default 16)")
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    parser.add_argument("--profile", type=Path, help="also record the server with py-spy into this raw profile file")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    parser.add_argument(
        "--only",
        type=lambda text: text.split(","),
        default=list(SCENARIO_KEYS),
        help=f"comma-separated scenarios to run, of {','.join(SCENARIO_KEYS)} (default all; a partial run only prints)",
    )
    args = parser.parse_args(argv)
    if unknown := set(args.only) - set(SCENARIO_KEYS):
        parser.error(f"--only: unknown scenario(s) {', '.join(sorted(unknown))}")
    args.no_write = args.no_write or set(args.only) != set(SCENARIO_KEYS)
    if args.members < 1 or args.workers < 1 or args.pool_max < 1 or args.connections < 1:
        parser.error("--members, --workers, --pool-max and --connections must be positive")
    args.database_url = common.libpq_url(args.database_url)
    return args


def child_env(args: argparse.Namespace, home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": args.database_url,
        "OMNIMEMBER_SECRET": BENCH_PHONE_KEY,
        "OMNIMEMBER_HOME": str(home),
        "OMNIMEMBER_POOL_MAX": str(args.pool_max),
    }


def pool_text(args: argparse.Namespace, env: dict[str, str]) -> str:
    pool_min = min(int(env.get("OMNIMEMBER_POOL_MIN") or 2), args.pool_max)
    total = args.workers * args.pool_max
    return (
        f"{pool_min} to {args.pool_max} connections per worker (OMNIMEMBER_POOL_MIN/OMNIMEMBER_POOL_MAX), "
        f"{args.workers} worker(s): at most {total} PostgreSQL connections"
    )


_SETTINGS = ("synchronous_commit", "autovacuum", "shared_buffers", "max_connections")


def describe_machine(
    conn: psycopg.Connection[Any], driver: WrkDriver, args: argparse.Namespace, env: dict[str, str]
) -> Environment:
    """profile_read's description of the machine, with the pool of this run and the settings writes depend on."""
    machine = common.environment(conn, driver)
    settings = ", ".join(f"{name} {scalar_text(conn, name)}" for name in _SETTINGS)
    return dataclasses.replace(machine, postgres=f"{machine.postgres} ({settings})", pool=pool_text(args, env))


def scalar_text(conn: psycopg.Connection[Any], setting: str) -> str:
    row = conn.execute("SELECT current_setting(%s)", (setting,)).fetchone()
    return str(row[0]) if row else "?"


@contextlib.contextmanager
def server(args: argparse.Namespace, env: dict[str, str], log: Path) -> Iterator[tuple[str, int]]:
    """(base URL, pid) of `omnimember serve`, SIGTERMed however the block ends."""
    port = args.port or common.free_port()
    command = [str(common.venv_bin("omnimember")), "serve", "--workers", str(args.workers)]
    with common.running_server(command, port, env, log) as process:
        yield f"http://127.0.0.1:{port}", process.pid


def run(args: argparse.Namespace, workdir: Path) -> int:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise BenchError("wrk not found (apt-get install -y wrk)")
    env = child_env(args, workdir / "home")
    brand_id = prepare_database(args.database_url, env)
    token = keys.create_key(common.venv_bin("omnimember"), env, ROLE, ["--brand", BRAND], "bench points")
    runs = {mode.key: run_mode(args, workdir / mode.key, wrk, brand_id, mode) for mode in keys.modes(env, ROLE, token)}
    report(runs, args)
    return 0 if all(findings.check.passed for findings in runs.values()) else 1


def run_mode(args: argparse.Namespace, workdir: Path, wrk: str, brand_id: int, mode: keys.Mode) -> Findings:
    """One mode from fresh data: reset, serve, seed, load, check."""
    print(f"\n== {mode.title}", flush=True)
    workdir.mkdir(parents=True)
    data = prepare_data(args.database_url, brand_id, args.members)
    run_id = f"pb{int(time.time()):x}{mode.key}"
    plan = write_scenarios(data, BRAND, dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    plan = [scenario for scenario in plan if scenario.key in args.only]
    log = workdir / "server.log"
    points_wrk = PointsWrk(wrk, workdir, dict(mode.headers))
    with server(args, mode.env, log) as (base_url, pid), psycopg.connect(args.database_url, autocommit=True) as conn:
        driver = keys.KeyedWrk(wrk, workdir, headers=dict(mode.headers))
        machine = describe_machine(conn, driver, args, mode.env)
        meter = TreeCpuMeter(pid, conn if common.is_local(args.database_url) else None)
        bench = Bench(args, base_url, run_id, points_wrk, driver, meter)
        try:
            seed_balances(base_url, data, bench.prefix("seed", "earn"), points_wrk.accounts, points_wrk.headers)
            common.vacuum_analyze(args.database_url)
            checkpoint(args.database_url)
            results = run_scenarios(bench, plan)
            profiled = None
            if args.profile is not None and mode.keys_on:
                profiled = profile_earn(bench, plan[0], pid, args.profile)
        except LoadError as error:
            raise BenchError(f"{error}\nserver log:\n{common.tail(log)}") from error
    check = check_ledger(args.database_url, data.brand_id, points_wrk.accounts)
    print(f"invariant check ({mode.title}): {'PASS' if check.passed else 'FAIL'}", flush=True)
    return Findings(results, plan, machine, check, meter.restarts, profiled)


def report(runs: Mapping[str, Findings], args: argparse.Namespace) -> None:
    if set(args.only) == set(SCENARIO_KEYS):  # the section reports every scenario
        text = section(runs, args)
        print()
        print(text)
    else:
        for mode, findings in runs.items():
            print(f"\nkeys {mode}:")
            print("\n".join(table(findings.results, args.workers, findings.machine.cpus)))
    print("load commands of the measured runs (keys on: TOKEN=$(omnimember keys create ...), see bench/keys.py):")
    for mode, findings in runs.items():
        for r in findings.results:
            print(f"  [keys {mode}] {r.command}")
    for mode, findings in runs.items():
        print(f"\ninvariant check, keys {mode}: {'PASS' if findings.check.passed else 'FAIL'}")
        for problem in findings.check.problems:
            print(f"  {problem}")
    if not args.no_write:  # only when every scenario ran (parse_args)
        common.write_section(DOCS, text, SECTION)
        print(f"wrote {DOCS.relative_to(ROOT)}")


def main(argv: Sequence[str] | None = None) -> int:
    failures = (BenchError, LoadError, keys.KeysError, psycopg.Error)
    return common.bench_main(run, parse_args(argv), "points-bench-", failures)


if __name__ == "__main__":
    sys.exit(main())

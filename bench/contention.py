"""Ledger throughput under contention: every posting kind at once on 10 hot members, and on 200.

    .venv/bin/python bench/contention.py [--hot 10] [--spread 200] [--connections 32] [--duration 15]

Issue 12, item 3: 32 clients mixing earn, redeem, adjust, recordOrder, refundOrder and
cancelRedemption on 10 members deadlocked, answered "Unexpected error." and fell from 397 to 7-14
requests/s, while the same mix over 200 members ran at 397/s. This runs that mix through the HTTP
API on `--hot` members and on `--spread` members with wrk (its script, `LUA` below, is written
to a temporary directory), and reports postings/s, p50 and p99, the answers by kind, errors (a
GraphQL error, an unexpected answer or a socket error fails the run), the deadlocks PostgreSQL
counted in the bench database over all runs, and the ledger's invariants checked in SQL after.

Sets up its own brand (`contention_bench`) in the database (default $DATABASE_URL, else a local
`omnimember_contention_bench`, created and migrated when missing): --spread members, the first
--hot of them the hot ones. Before the load, through the API: every member gets SEED_POINTS;
each scenario gets ORDERS orders over its members (what refunds take back) and --cancellations
redemptions (what cancellations give back). Then `omnimember serve` is driven with the mix
(MIX), each request under a unique idempotency key and on a member picked at random: earn and
redeem 10 points, adjust +5 or -5, an order of 88 yuan, a refund of 1 yuan of a seeded order
picked at random, a cancellation of the next seeded redemption. The figures go to the
"Contention: contention" section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import points as ledger_bench  # the points benchmark: CPU meter over the server's tree, machine text
import profile_read as common  # the read benchmark's helpers: database, server, CPU meter, environment
import psycopg
from loadgen import LoadError, WrkDriver
from profile_read import BenchError, CpuUsage, Environment

from store.brands import brand_by_code, create_brand
from store.errors import DomainError, ErrorCode

ROOT = common.ROOT
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Contention: contention"
RESULT_MARKER = "CONTENTION_RESULT "
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/omnimember_contention_bench"
BENCH_PHONE_KEY = "contention-benchmark-data-only"
BRAND = "contention_bench"
CHANNEL = "pos"
SEED_POINTS = 1_000_000  # per member: redemptions and negative adjustments are never refused
ORDERS = 200  # seeded per scenario, over its members: refunds take 1 yuan of one at random
ORDER_YUAN = "88.00"  # the orders of the load
SEED_ORDER_YUAN = "500.00"  # the seeded ones: room for 500 refunds of 1 yuan each
SEED_BATCH = 25  # aliased mutations per seeding request (the server allows 30)
# The mix: how many of every 20 requests are of each kind (and in which order, shuffled once).
MIX = {"earn": 4, "redeem": 4, "adjust+": 1, "adjust-": 1, "order": 3, "refund": 4, "cancel": 3}
KINDS = ("earn", "redeem", "adjust", "order", "refund", "cancel")
# Typed refusals that are not errors under this load (nothing posted, the key stays free).
REFUSALS = {"INSUFFICIENT_POINTS", "ORDER_FULLY_REFUNDED", "ALREADY_CANCELLED"}

_ANSWER = "__typename ... on Error { code message }"
_POSTED = f"... on PointsPosted {{ replayed posting {{ idempotencyKey }} }} {_ANSWER}"
DOCUMENTS = {
    "earn": "mutation Earn($brand: String!, $member: ID!, $key: String!) {\n"
    "  r: earnPoints(brand: $brand, memberId: $member, amount: 10, idempotencyKey: $key,"
    f' reason: "contention bench") {{ {_POSTED} }}\n}}',
    "redeem": "mutation Redeem($brand: String!, $member: ID!, $key: String!) {\n"
    "  r: redeemPoints(brand: $brand, memberId: $member, amount: 10, idempotencyKey: $key,"
    f' reason: "contention bench") {{ {_POSTED} }}\n}}',
    "adjust": "mutation Adjust($brand: String!, $member: ID!, $delta: Int!, $key: String!) {\n"
    "  r: adjustPoints(brand: $brand, memberId: $member, delta: $delta, idempotencyKey: $key,"
    f' reason: "contention bench") {{ {_POSTED} }}\n}}',
    "order": "mutation Order($brand: String!, $member: ID!, $order: String!, $paidAt: DateTime!) {\n"
    f'  r: recordOrder(brand: $brand, channel: "{CHANNEL}", externalOrderId: $order, amount: "{ORDER_YUAN}",'
    " paidAt: $paidAt, memberId: $member) {\n"
    f"    ... on OrderRecorded {{ replayed posting {{ idempotencyKey }} }} {_ANSWER}\n  }}\n}}",
    "refund": "mutation Refund($brand: String!, $order: String!, $key: String!) {\n"
    f'  r: refundOrder(brand: $brand, channel: "{CHANNEL}", externalOrderId: $order, amount: "1.00",'
    " idempotencyKey: $key) {\n"
    f"    ... on OrderRefunded {{ replayed posting {{ idempotencyKey }} }} {_ANSWER}\n  }}\n}}",
    "cancel": "mutation Cancel($brand: String!, $posting: ID!, $key: String!) {\n"
    f"  r: cancelRedemption(brand: $brand, postingId: $posting, idempotencyKey: $key) {{ {_POSTED} }}\n}}",
}

# wrk's script. Request n of a thread uses template line (n - 1) % lines + 1 (the mix, in its
# order) with @KEY@ (PREFIX-t<thread>-<n>), @MEMBER@ (one of MEMBERS at random), @ORDER@ (one of
# ORDERS at random) and @REDEMPTION@ (the next of REDEMPTIONS after START: one per cancellation).
# A good answer is HTTP 200 with a fresh posting under the key sent (`"replayed":false`); typed
# refusals are counted by code; anything else is bad. done() prints one RESULT_MARKER line of JSON
# and writes the keys sent without a posting in their answer (in flight at the end, refused) to
# PENDING.
LUA = r"""
local threads = {}
local templates, kinds, members, orders, redemptions = {}, {}, {}, {}, {}
local prefix

sent = 0
checked = 0
posted = 0
bad = 0
graphql_errors = 0
cancellations = 0
start = 0
pending = {}
pending_path = nil
by_kind = {}
refused = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

local function lines(path)
  local out = {}
  for line in io.lines(path) do
    if line ~= "" then
      out[#out + 1] = line
    end
  end
  return out
end

function init(args)
  templates, kinds, members = lines(args[1]), lines(args[2]), lines(args[3])
  orders, redemptions = lines(args[4]), lines(args[5])
  start = tonumber(args[6])
  prefix = args[7] .. "-t" .. tid .. "-"
  pending_path = args[8]
  math.randomseed(20261207 + tid)
  wrk.headers["Content-Type"] = "application/json"
end

function request()
  sent = sent + 1
  local key = prefix .. sent
  local line = (sent - 1) % #templates + 1
  if kinds[line] == "cancel" then
    cancellations = cancellations + 1
  end
  local redemption = redemptions[(start + cancellations - 1) % #redemptions + 1]
  pending[key] = true
  local body = templates[line]:gsub("@KEY@", key):gsub("@MEMBER@", members[math.random(#members)])
    :gsub("@ORDER@", orders[math.random(#orders)]):gsub("@REDEMPTION@", redemption)
  return wrk.format("POST", nil, nil, body)
end

function response(status, headers, body)
  checked = checked + 1
  local key = string.match(body, '"idempotencyKey":"([^"]*)"')
  local code = string.match(body, '"code":"([A-Z_]*)"')
  if string.find(body, '"errors"', 1, true) then
    graphql_errors = graphql_errors + 1
  elseif status == 200 and key and string.find(body, '"replayed":false', 1, true) then
    local sent_key = string.match(key, "([^:]*)$")
    pending[sent_key] = nil
    posted = posted + 1
    local kind = kinds[(tonumber(string.match(sent_key, "(%d+)$")) - 1) % #kinds + 1]
    by_kind[kind] = (by_kind[kind] or 0) + 1
    return
  elseif status == 200 and code then
    refused[code] = (refused[code] or 0) + 1
    return
  else
    bad = bad + 1
  end
  if bad + graphql_errors <= 3 then
    io.stderr:write("bad response (HTTP " .. status .. "): " .. string.sub(body, 1, 500) .. "\n")
  end
end

local function object(counts)
  local parts = {}
  for name, value in pairs(counts) do
    parts[#parts + 1] = string.format('"%s":%d', name, value)
  end
  return "{" .. table.concat(parts, ",") .. "}"
end

function done(summary, latency, requests)
  local totals = { sent = 0, checked = 0, posted = 0, bad = 0, graphql_errors = 0, cancellations = 0 }
  local kinds_posted, codes = {}, {}
  local out = assert(io.open(threads[1]:get("pending_path"), "w"))
  for _, thread in ipairs(threads) do
    for name, value in pairs(totals) do
      totals[name] = value + thread:get(name)
    end
    for name, value in pairs(thread:get("by_kind")) do
      kinds_posted[name] = (kinds_posted[name] or 0) + value
    end
    for name, value in pairs(thread:get("refused")) do
      codes[name] = (codes[name] or 0) + value
    end
    for key in pairs(thread:get("pending")) do
      out:write(key, "\n")
    end
  end
  out:close()
  local e = summary.errors
  io.write(string.format(
    'CONTENTION_RESULT {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,"sent":%d,'
      .. '"checked":%d,"posted":%d,"bad":%d,"graphql_errors":%d,"cancellations":%d,"non_2xx":%d,'
      .. '"socket_errors":%d,"by_kind":%s,"refused":%s}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99), latency.max,
    totals.sent, totals.checked, totals.posted, totals.bad, totals.graphql_errors, totals.cancellations,
    e.status, e.connect + e.read + e.write + e.timeout, object(kinds_posted), object(codes)
  ))
end
"""


# ---------------------------------------------------------------------------------------------
# Data: the bench brand and its members, reset on every run

# Everything the brand's members have, children first; the brand, its tiers and rules stay.
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
_INSERT_MEMBERS = """
    INSERT INTO members (brand_id, tier, display_name)
    SELECT %(brand)s, (SELECT code FROM brand_tiers WHERE brand_id = %(brand)s ORDER BY rank LIMIT 1),
           'contention member ' || n
    FROM generate_series(1, %(count)s) AS n
    RETURNING id"""


async def _ensure_brand(url: str) -> int:
    async with await psycopg.AsyncConnection.connect(url) as conn, conn.transaction():
        try:
            row = await brand_by_code(conn, BRAND)
        except DomainError as error:
            if error.code != ErrorCode.UNKNOWN_BRAND:
                raise
            row = await create_brand(conn, code=BRAND, name="Contention Bench", group_code=BRAND)
        return int(row["id"])


def prepare_data(url: str, count: int, env: dict[str, str]) -> tuple[int, tuple[int, ...]]:
    """(brand id, member ids): the bench brand with `count` fresh members and nothing else."""
    common.ensure_database(url)
    common.omnimember("migrate", env=env)
    brand_id = asyncio.run(_ensure_brand(url))
    print(f"resetting brand {BRAND}: {count:,} members, no points")
    with psycopg.connect(url) as conn:
        for statement in _RESET:
            conn.execute(statement, {"brand": brand_id})
        rows = conn.execute(_INSERT_MEMBERS, {"brand": brand_id, "count": count}).fetchall()
    common.vacuum_analyze(url)
    return brand_id, tuple(sorted(int(row[0]) for row in rows))


# ---------------------------------------------------------------------------------------------
# Seeding through the API: balances, the orders refunds take back, the redemptions to cancel


def _seed(base_url: str, declared: str, field: str, variables: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One mutation per SEED_BATCH of aliased ``field``s (`$x{i}` variables from ``variables``);
    returns each field's result. Same-sized batches are one document (see points.seed_request)."""

    def batch(part: list[dict[str, Any]]) -> list[dict[str, Any]]:
        names = ", ".join(declared.replace("{i}", str(i)) for i in range(len(part)))
        fields = "".join(f"  s{i}: {field.replace('{i}', str(i))}\n" for i in range(len(part)))
        values: dict[str, Any] = {"brand": BRAND}
        for i, item in enumerate(part):
            values |= {f"{name}{i}": value for name, value in item.items()}
        body = common.graphql_body(f"mutation Seed($brand: String!, {names}) {{\n{fields}}}", values)
        status, text = common.http_request(base_url + "/graphql", body, timeout=120)
        if status != 200 or '"errors"' in text or text.count('"replayed":false') != len(part):
            raise BenchError(f"seeding failed: HTTP {status}: {text[:1000]}")
        data = json.loads(text)["data"]
        return [data[f"s{i}"] for i in range(len(part))]

    parts = [variables[i : i + SEED_BATCH] for i in range(0, len(variables), SEED_BATCH)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        return [result for results in pool.map(batch, parts) for result in results]


def seed_points(base_url: str, members: Sequence[int], prefix: str) -> None:
    field = (
        f"earnPoints(brand: $brand, memberId: $m{{i}}, amount: {SEED_POINTS}, idempotencyKey: $k{{i}}) "
        "{ ... on PointsPosted { replayed } }"
    )
    _seed(base_url, "$m{i}: ID!, $k{i}: String!", field, [{"m": str(m), "k": f"{prefix}-{m}"} for m in members])


def seed_orders(base_url: str, members: Sequence[int], prefix: str, paid_at: str) -> list[str]:
    """ORDERS orders over ``members`` (round robin); returns their external ids."""
    ids = [f"{prefix}-{n}" for n in range(ORDERS)]
    field = (
        f'recordOrder(brand: $brand, channel: "{CHANNEL}", externalOrderId: $o{{i}}, amount: "{SEED_ORDER_YUAN}", '
        f'paidAt: "{paid_at}", memberId: $m{{i}}) {{ ... on OrderRecorded {{ replayed }} }}'
    )
    items = [{"m": str(members[n % len(members)]), "o": order} for n, order in enumerate(ids)]
    _seed(base_url, "$m{i}: ID!, $o{i}: String!", field, items)
    return ids


def seed_redemptions(base_url: str, members: Sequence[int], count: int, prefix: str) -> list[str]:
    """``count`` redemptions of 10 points over ``members`` (round robin); returns their posting ids."""
    field = (
        "redeemPoints(brand: $brand, memberId: $m{i}, amount: 10, idempotencyKey: $k{i}) "
        "{ ... on PointsPosted { replayed posting { id } } }"
    )
    items = [{"m": str(members[n % len(members)]), "k": f"{prefix}-{n}"} for n in range(count)]
    return [str(result["posting"]["id"]) for result in _seed(base_url, "$m{i}: ID!, $k{i}: String!", field, items)]


# ---------------------------------------------------------------------------------------------
# Load: wrk with LUA


@dataclass(frozen=True, slots=True)
class Scenario:
    key: str
    title: str
    members: tuple[int, ...]
    orders: tuple[str, ...]  # external ids refunds pick from
    redemptions: tuple[str, ...]  # posting ids cancellations take in turn


@dataclass(frozen=True, slots=True)
class Run:
    """What one wrk run saw; `prefix` and `pending` let the check count its postings afterwards."""

    scenario: str
    prefix: str
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    posted: int
    by_kind: dict[str, int]
    refused: dict[str, int]
    errors: int  # GraphQL errors, other bad answers, non-2xx, socket errors, refusals not in REFUSALS
    cancellations: int
    pending: tuple[str, ...]
    command: str
    cpu: CpuUsage | None = None

    @property
    def postings_per_s(self) -> float:
        return self.posted / self.seconds

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def mix(paid_at: str) -> tuple[list[str], list[str]]:
    """The request templates (JSON bodies) and their kinds, MIX shuffled once (fixed seed)."""
    variables: dict[str, dict[str, Any]] = {
        "earn": {"member": "@MEMBER@", "key": "@KEY@"},
        "redeem": {"member": "@MEMBER@", "key": "@KEY@"},
        "adjust+": {"member": "@MEMBER@", "delta": 5, "key": "@KEY@"},
        "adjust-": {"member": "@MEMBER@", "delta": -5, "key": "@KEY@"},
        "order": {"member": "@MEMBER@", "order": "@KEY@", "paidAt": paid_at},
        "refund": {"order": "@ORDER@", "key": "@KEY@"},
        "cancel": {"posting": "@REDEMPTION@", "key": "@KEY@"},
    }
    lines = [name for name, weight in MIX.items() for _ in range(weight)]
    random.Random(12).shuffle(lines)
    kinds = [name.rstrip("+-") for name in lines]
    templates = [
        common.graphql_body(DOCUMENTS[kind], {"brand": BRAND, **variables[name]})
        for name, kind in zip(lines, kinds, strict=True)
    ]
    return templates, kinds


@dataclass(slots=True)
class Wrk:
    wrk: str
    workdir: Path
    templates: list[str]
    kinds: list[str]

    def _file(self, name: str, lines: Sequence[object]) -> Path:
        path = self.workdir / name
        path.write_text("".join(f"{line}\n" for line in lines))
        return path

    def argv(
        self, base_url: str, scenario: Scenario, connections: int, seconds: int, start: int, prefix: str
    ) -> list[str]:
        script = self._file("contention.lua", [LUA])
        files = [
            self._file("templates", self.templates),
            self._file("kinds", self.kinds),
            self._file(f"{scenario.key}.members", scenario.members),
            self._file(f"{scenario.key}.orders", scenario.orders),
            self._file(f"{scenario.key}.redemptions", scenario.redemptions),
        ]
        pending = self.workdir / f"{prefix}.pending"
        args = [*map(str, files), str(start), prefix, str(pending)]
        return [
            self.wrk,
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            base_url + "/graphql",
            "--",
            *args,
        ]

    def run(self, base_url: str, scenario: Scenario, connections: int, seconds: int, start: int, prefix: str) -> Run:
        argv = self.argv(base_url, scenario, connections, seconds, start, prefix)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 120, check=False)
        line = next((x for x in done.stdout.splitlines() if x.startswith(RESULT_MARKER)), None)
        if done.returncode != 0 or line is None:
            raise LoadError(f"wrk failed ({done.returncode}): {done.stdout}{done.stderr}")
        raw = json.loads(line[len(RESULT_MARKER) :])
        refused: dict[str, int] = raw["refused"]
        errors = raw["bad"] + raw["graphql_errors"] + raw["non_2xx"] + raw["socket_errors"]
        errors += max(0, raw["requests"] - raw["checked"]) + sum(
            n for code, n in refused.items() if code not in REFUSALS
        )
        if errors:
            print(done.stderr, file=sys.stderr)
        return Run(
            scenario=scenario.key,
            prefix=prefix,
            requests=raw["requests"],
            seconds=raw["duration_us"] / 1e6,
            p50_ms=raw["p50_us"] / 1000,
            p99_ms=raw["p99_us"] / 1000,
            max_ms=raw["max_us"] / 1000,
            posted=raw["posted"],
            by_kind=raw["by_kind"],
            refused=refused,
            errors=errors,
            cancellations=raw["cancellations"],
            pending=tuple(Path(argv[-1]).read_text().split()),
            command=shlex.join(argv),
        )


def measure(
    args: argparse.Namespace, wrk: Wrk, base_url: str, scenario: Scenario, meter: ledger_bench.TreeCpuMeter, run_id: str
) -> list[Run]:
    """A warm-up (when asked) and the measured run: both, for the check afterwards."""
    runs = []
    start = 1
    if args.warmup:
        warm = wrk.run(base_url, scenario, args.connections, args.warmup, start, f"{run_id}-{scenario.key}-warm")
        runs.append(warm)
        start += warm.cancellations
    before = meter.sample()
    run = wrk.run(base_url, scenario, args.connections, args.duration, start, f"{run_id}-{scenario.key}-run")
    after = meter.sample()
    runs.append(dataclasses.replace(run, cpu=common.cpu_usage(before, after, run.requests, run.seconds)))
    return runs


# ---------------------------------------------------------------------------------------------
# The check after the load


@dataclass(frozen=True, slots=True)
class Check:
    members: int
    postings: int
    entries: int
    lots: int
    orders: int
    accounted: int
    deadlocks: int
    problems: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.problems


# Each counts the rows that break an invariant; all must be 0.
_LEDGER = {
    "members whose balance differs from the sum of their entries or from what is left in their lots, "
    "or is negative": """
        SELECT count(*) FROM members m WHERE m.brand_id = %(brand)s AND NOT (
            m.points_balance >= 0
            AND m.points_balance = (SELECT coalesce(sum(amount), 0) FROM points_entries WHERE member_id = m.id)
            AND m.points_balance = (SELECT coalesce(sum(remaining), 0) FROM points_lots WHERE member_id = m.id))""",
    "entries with a negative balance_after": """
        SELECT count(*) FROM points_entries WHERE brand_id = %(brand)s AND balance_after < 0""",
    "debit entries whose lot draws do not add up to them": """
        SELECT count(*) FROM points_entries e
        LEFT JOIN (SELECT entry_id, sum(amount) AS drawn FROM lot_draws GROUP BY entry_id) d ON d.entry_id = e.id
        WHERE e.brand_id = %(brand)s AND e.amount < 0 AND coalesce(d.drawn, 0) <> -e.amount""",
    "lots whose spent points differ from the draws of the debits still standing (not cancelled)": """
        SELECT count(*) FROM points_lots l WHERE l.brand_id = %(brand)s AND (l.remaining < 0 OR l.amount - l.remaining
            <> (SELECT coalesce(sum(d.amount), 0) FROM lot_draws d JOIN points_entries e ON e.id = d.entry_id
                WHERE d.lot_id = l.id AND NOT EXISTS
                    (SELECT 1 FROM points_postings c WHERE c.reverses_posting_id = e.posting_id)))""",
    "orders whose points taken back and unrecovered are not their points pro rata to the refunded yuan": """
        SELECT count(*) FROM orders WHERE brand_id = %(brand)s AND (refunded > amount
            OR points_reversed + points_unrecovered
               <> points_earned * (refunded * 100)::bigint / (amount * 100)::bigint)""",
    "orders whose refund entries do not add up to the points taken back": """
        SELECT count(*) FROM orders o WHERE o.brand_id = %(brand)s AND o.points_reversed <> -coalesce((
            SELECT sum(e.amount) FROM points_entries e JOIN points_postings p ON p.id = e.posting_id
            WHERE p.operation = 'refund' AND p.member_id = o.member_id
            AND e.note LIKE '%% on order ' || o.external_order_id), 0)""",
    "cancellations that do not give back exactly what their redemption took": """
        SELECT count(*) FROM points_postings c WHERE c.brand_id = %(brand)s AND c.reverses_posting_id IS NOT NULL
        AND (SELECT sum(amount) FROM points_entries WHERE posting_id = c.id)
            <> -(SELECT sum(amount) FROM points_entries WHERE posting_id = c.reverses_posting_id)""",
    "postings without entries (refunds that took nothing back aside)": """
        SELECT count(*) FROM points_postings p WHERE p.brand_id = %(brand)s AND p.operation <> 'refund'
        AND NOT EXISTS (SELECT 1 FROM points_entries e WHERE e.posting_id = p.id)""",
}
_TOTALS = """
    SELECT (SELECT count(*) FROM members WHERE brand_id = %(brand)s),
           (SELECT count(*) FROM points_postings WHERE brand_id = %(brand)s),
           (SELECT count(*) FROM points_entries WHERE brand_id = %(brand)s),
           (SELECT count(*) FROM points_lots WHERE brand_id = %(brand)s),
           (SELECT count(*) FROM orders WHERE brand_id = %(brand)s)"""
_RUN_POSTINGS = """
    SELECT count(*) FROM points_postings WHERE brand_id = %(brand)s
    AND (idempotency_key LIKE %(pattern)s OR idempotency_key LIKE %(order_pattern)s)"""
_LATE_POSTINGS = """
    SELECT count(*) FROM points_postings WHERE brand_id = %(brand)s
    AND (idempotency_key = ANY(%(keys)s) OR idempotency_key = ANY(%(order_keys)s))"""


def deadlocks(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()").fetchone()
    return int(row[0]) if row else 0


def wait_for_backends_to_leave(conn: psycopg.Connection[Any]) -> None:
    """A backend adds its deadlocks to pg_stat_database at the latest when it exits."""
    for _ in range(300):
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name = 'omnimember'"
        ).fetchone()
        if row is not None and row[0] == 0:
            return
        time.sleep(0.05)
    raise BenchError("the server's connections did not close")


def scalar(conn: psycopg.Connection[Any], query: str, **params: Any) -> int:
    row = conn.execute(query, params).fetchone()
    return int(row[0]) if row else 0


def account(conn: psycopg.Connection[Any], brand_id: int, run: Run, connections: int) -> tuple[int, list[str]]:
    """(postings the run made, problems): each answered once with a fresh posting, or still in flight
    when wrk stopped (at most one per connection)."""
    pattern, order_pattern = f"{run.prefix}-t%", f"order:{CHANNEL}:{run.prefix}-t%"
    found = scalar(conn, _RUN_POSTINGS, brand=brand_id, pattern=pattern, order_pattern=order_pattern)
    keys = list(run.pending)
    late = scalar(conn, _LATE_POSTINGS, brand=brand_id, keys=keys, order_keys=[f"order:{CHANNEL}:{k}" for k in keys])
    problems = []
    if found != run.posted + late:
        problems.append(f"{run.prefix}: {found} postings for {run.posted} posted answers (+{late} in flight)")
    if late > connections:
        problems.append(f"{run.prefix}: {late} postings without an answer, more than the connections")
    return found, problems


def check_ledger(url: str, brand_id: int, runs: Sequence[Run], seeded: int, connections: int, locked: int) -> Check:
    with psycopg.connect(url, autocommit=True) as conn:
        problems = [f"{n} {what}" for what, query in _LEDGER.items() if (n := scalar(conn, query, brand=brand_id))]
        totals = conn.execute(_TOTALS, {"brand": brand_id}).fetchone()
        assert totals is not None
        members, postings, entries, lots, orders = (int(x) for x in totals)
        accounted = seeded
        for run in runs:
            found, wrong = account(conn, brand_id, run, connections)
            accounted += found
            problems += wrong
    if accounted != postings:
        problems.append(f"{postings} postings in the brand, {accounted} accounted for by the seeding and the runs")
    if locked:
        problems.append(f"PostgreSQL detected {locked} deadlocks")
    return Check(members, postings, entries, lots, orders, accounted, locked, tuple(problems))


# ---------------------------------------------------------------------------------------------
# Report


@dataclass(frozen=True, slots=True)
class Findings:
    runs: list[Run]  # warm-ups included
    scenarios: list[Scenario]
    machine: Environment
    check: Check
    restarts: int

    def measured(self) -> list[Run]:
        return [run for run in self.runs if run.cpu is not None]


def table(findings: Findings, connections: int) -> list[str]:
    lines = [
        "| scenario | conns | postings/s (req/s) | p50 | p99 | max | errors | refused | server CPU/req | PG CPU/req "
        "| others' CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    titles = {s.key: s.title for s in findings.scenarios}
    for r in findings.measured():
        assert r.cpu is not None
        pg = "-" if r.cpu.pg_ms is None else f"{r.cpu.pg_ms:.2f} ms"
        refused = ", ".join(f"{n} {code}" for code, n in sorted(r.refused.items())) or "0"
        lines.append(
            f"| {titles[r.scenario]} | {connections} | **{r.postings_per_s:,.0f}** ({r.rps:,.0f}) | {r.p50_ms:.2f} ms "
            f"| {r.p99_ms:.2f} ms | {r.max_ms:,.0f} ms | {r.errors} | {refused} | {r.cpu.server_ms:.2f} ms | {pg} "
            f"| {r.cpu.others_cores:.2f} cores |"
        )
    return lines


def by_kind(run: Run) -> str:
    return ", ".join(f"{kind} {run.by_kind.get(kind, 0) / run.seconds:,.0f}" for kind in KINDS)


def verdict(findings: Findings) -> list[str]:
    measured = {r.scenario: r for r in findings.measured()}
    hot, spread = measured["hot"], measured["spread"]
    check = findings.check
    errors = sum(r.errors for r in findings.runs)
    lines = [
        f"- Hot members against spread: {hot.postings_per_s:,.0f} postings/s against {spread.postings_per_s:,.0f} "
        f"({hot.postings_per_s / spread.postings_per_s:.0%}); p99 {hot.p99_ms:.0f} ms against {spread.p99_ms:.0f} ms. "
        "Issue 12 measured 7-14 requests/s on 10 hot members against 397/s on 200 before the lock order.",
        *(f"- {s.title}, postings/s by kind: {by_kind(measured[s.key])}." for s in findings.scenarios),
        f"- Errors over all runs (warm-ups included): {errors}; deadlocks PostgreSQL counted in the bench database "
        f"over all runs and the seeding: {check.deadlocks}.",
    ]
    if findings.restarts:
        lines.append(f"- **{findings.restarts} server process(es) replaced during the run**: the figures are suspect.")
    lines.append(f"- Invariant check after the load: {'PASS' if check.passed else '**FAIL**'}. {describe(check)}")
    return lines


def describe(check: Check) -> str:
    text = (
        f"For each of the {check.members:,} members, balance = sum of entries = sum left in lots >= 0, no negative "
        "balance_after; every debit's lot draws add up and every lot lost exactly what the debits still standing drew; "
        f"each of the {check.orders:,} orders took back its points pro rata to the yuan refunded, with refund entries "
        "to match; every cancellation gave back what its redemption took; "
        f"{check.postings:,} postings ({check.entries:,} entries, {check.lots:,} lots), each answered once with a "
        "fresh posting (or, in flight when wrk stopped, at most one per connection): "
        f"{check.accounted:,} accounted for."
    )
    return text if check.passed else text + " Problems: " + "; ".join(check.problems) + "."


def section(findings: Findings, args: argparse.Namespace) -> str:
    env, cores = findings.machine, findings.machine.cpus
    lines = [
        SECTION,
        "",
        f"Measured {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} by `bench/contention.py` (issue 12, item 3). "
        "Reproduce with:",
        "",
        "```sh",
        reproduce_command(args),
        "```",
        "",
        f"- Machine: {cores} CPUs ({env.cpu_model}), {env.ram_gib:.1f} GiB RAM, shared with the database and with "
        "other sessions.",
        f"- Database: {env.postgres}, at {urlsplit(args.database_url).hostname or 'a unix socket'}.",
        f"- Server: `omnimember serve --workers {args.workers}`, Python {env.python}; {env.libraries}.",
        f"- Connection pool: {env.pool}.",
        f"- Data: brand `{BRAND}` with {args.spread:,} members, reset at the start, the first {args.hot} of them the "
        f"hot ones; every member gets {SEED_POINTS:,} points; each scenario gets {ORDERS} orders of "
        f"{SEED_ORDER_YUAN} yuan over its members and {args.cancellations:,} redemptions of 10 points to cancel, "
        "all through the API before the load.",
        f"- Load: wrk -t1 -c{args.connections} (its script is in bench/contention.py), {args.duration}s per scenario "
        f"after a {args.warmup}s warm-up; of every 20 requests {MIX['earn']} earnPoints (10), {MIX['redeem']} "
        f"redeemPoints (10), {MIX['adjust+'] + MIX['adjust-']} adjustPoints (+5, -5), {MIX['order']} recordOrder "
        f"({ORDER_YUAN} yuan), {MIX['refund']} refundOrder (1 yuan of a seeded order picked at random) and "
        f"{MIX['cancel']} cancelRedemption (the next seeded redemption), each under a unique idempotency key on a "
        "member picked at random among the scenario's; every answer is checked: a fresh posting under the key sent, "
        f"or a typed refusal ({', '.join(sorted(REFUSALS))}); anything else (a GraphQL error such as "
        '"Unexpected error.", another code, HTTP or socket errors) is an error and fails the run.',
        "- CPU/req: user+system CPU time over the run divided by its requests, of the server and of PostgreSQL's "
        f"client backends of the bench database. Others' CPU: what the rest of the machine used, in cores out of "
        f"{cores}.",
        "",
        *table(findings, args.connections),
        "",
        *verdict(findings),
    ]
    return "\n".join(lines) + "\n"


def reproduce_command(args: argparse.Namespace) -> str:
    argv = [".venv/bin/python", "bench/contention.py", "--hot", str(args.hot), "--spread", str(args.spread)]
    argv += ["--connections", str(args.connections), "--duration", str(args.duration), "--warmup", str(args.warmup)]
    argv += [
        "--cancellations",
        str(args.cancellations),
        "--workers",
        str(args.workers),
        "--pool-max",
        str(args.pool_max),
    ]
    if args.database_url != DEFAULT_DATABASE_URL:
        argv += ["--database-url", common.redact(args.database_url)]
    return shlex.join(argv)


# ---------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--hot", type=int, default=10, help="members of the hot scenario (default 10)")
    parser.add_argument("--spread", type=int, default=200, help="members of the spread scenario (default 200)")
    parser.add_argument("--connections", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--duration", type=int, default=15, help="seconds per measured run (default 15)")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up before each run (default 3)")
    parser.add_argument(
        "--cancellations",
        type=int,
        default=3000,
        help="redemptions seeded per scenario for cancelRedemption (default 3000)",
    )
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
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    if not 1 <= args.hot <= args.spread or min(args.connections, args.workers, args.pool_max, args.cancellations) < 1:
        parser.error("need 1 <= --hot <= --spread, and positive --connections, --workers, --pool-max, --cancellations")
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


def seed(
    base_url: str, members: tuple[int, ...], args: argparse.Namespace, run_id: str, paid_at: str
) -> tuple[list[Scenario], int]:
    """The scenarios with what they refund and cancel, and how many postings the seeding made."""
    started = time.monotonic()
    seed_points(base_url, members, f"{run_id}-seed")
    scenarios = []
    for key, chosen in (("hot", members[: args.hot]), ("spread", members)):
        orders = seed_orders(base_url, chosen, f"{run_id}-{key}-orders", paid_at)
        redemptions = seed_redemptions(base_url, chosen, args.cancellations, f"{run_id}-{key}-redeem")
        title = f"all kinds, {len(chosen):,} {'hot ' if key == 'hot' else ''}members"
        scenarios.append(Scenario(key, title, chosen, tuple(orders), tuple(redemptions)))
    postings = len(members) + 2 * (ORDERS + args.cancellations)
    print(f"seeded {postings:,} postings in {time.monotonic() - started:.1f}s", flush=True)
    return scenarios, postings


def run(args: argparse.Namespace, workdir: Path) -> int:
    wrk_path = shutil.which("wrk")
    if wrk_path is None:
        raise BenchError("wrk not found (apt-get install -y wrk)")
    env = child_env(args, workdir / "home")
    brand_id, members = prepare_data(args.database_url, args.spread, env)
    run_id = f"cb{int(time.time()):x}"
    paid_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    templates, kinds = mix(paid_at)
    wrk = Wrk(wrk_path, workdir, templates, kinds)
    log = workdir / "server.log"
    runs: list[Run] = []
    port = args.port or common.free_port()
    # Development mode, key-less requests as a frontend (bench/points.py compares keys on and off).
    command = [str(common.venv_bin("omnimember")), "serve", "--dev", "--workers", str(args.workers)]
    env |= {"OMNIMEMBER_DEV_ROLE": "frontend", "OMNIMEMBER_RATE_LIMIT": "0"}
    with psycopg.connect(args.database_url, autocommit=True) as conn:
        locked_before = deadlocks(conn)
        with common.running_server(command, port, env, log) as server:
            base_url = f"http://127.0.0.1:{port}"
            machine = ledger_bench.describe_machine(conn, WrkDriver(wrk_path, workdir), args, env)
            meter = ledger_bench.TreeCpuMeter(server.pid, conn if common.is_local(args.database_url) else None)
            try:
                scenarios, seeded = seed(base_url, members, args, run_id, paid_at)
                common.vacuum_analyze(args.database_url)
                for scenario in scenarios:
                    print(f"{scenario.title}, c={args.connections} …", end=" ", flush=True)
                    runs += measure(args, wrk, base_url, scenario, meter, run_id)
                    r = runs[-1]
                    print(f"{r.postings_per_s:,.0f} postings/s, p99 {r.p99_ms:.1f} ms, {r.errors} errors", flush=True)
            except LoadError as error:
                raise BenchError(f"{error}\nserver log:\n{common.tail(log)}") from error
        wait_for_backends_to_leave(conn)
        locked = deadlocks(conn) - locked_before
    check = check_ledger(args.database_url, brand_id, runs, seeded, args.connections, locked)
    findings = Findings(runs, scenarios, machine, check, meter.restarts)
    report(findings, args)
    errors = sum(r.errors for r in runs)
    return 0 if check.passed and not errors else 1


def report(findings: Findings, args: argparse.Namespace) -> None:
    text = section(findings, args)
    print()
    print(text)
    print("load commands of the measured runs:")
    for r in findings.measured():
        print(f"  {r.command}")
    print(f"\ninvariant check: {'PASS' if findings.check.passed else 'FAIL'}")
    for problem in findings.check.problems:
        print(f"  {problem}")
    if not args.no_write:
        common.write_section(DOCS, text, SECTION)
        print(f"wrote {DOCS.relative_to(ROOT)}")


def main(argv: Sequence[str] | None = None) -> int:
    return common.bench_main(run, parse_args(argv), "contention-bench-", (BenchError, LoadError, psycopg.Error))


if __name__ == "__main__":
    sys.exit(main())

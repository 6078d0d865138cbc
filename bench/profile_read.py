"""Read-path throughput over HTTP: one member's profile by id, and the first page of a brand's members.

    .venv/bin/python bench/profile_read.py --members 100000 [--database-url URL] [--duration 15]

Builds (once) the demo data with `omnimember demo`, starts `omnimember serve` (one uvicorn worker)
and drives it with wrk at concurrency 1 and 16 through these scenarios:

- GET /healthz, a bare Starlette route, and the GraphQL query `{ __typename }`: in-run baselines;
- (a) one member by id with its brand, profile fields, tier, identities, person and, once the
  schema has them, its last 10 points entries and its tags (see LATER_PROFILE_FIELDS);
- (b) the first 100 members of a brand (id, tier, points);
- (c) the same page of the demo's second brand.

Access control: it runs them all twice on the same data (bench/keys.py), keys off (development mode,
key-less requests as a `campaign`) and then keys on (production mode, a `campaign` key scoped to the
demo group in every request). `campaign` is the masked role that may run every scenario (`frontend`
may not list a brand's members); masked roles take the compiled read path and audit no reads.

It prints req/s, p50 and p99 with each scenario's ratio to the baselines (these machines are
noisy; ratios within one run are what compares), for each mode, and keys on / keys off, and
writes them to docs/benchmarks.md. With --profile it then records the server with py-spy (keys on)
while wrk drives (a) (or --profile-scenario) at the highest concurrency.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import random
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import hotspots
import keys
import loadgen
import psutil
import psycopg
from loadgen import Driver, LoadError, LoadStats, PythonDriver, Scenario

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks.md"
SECTION = "## Read path: profile_read"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/omnimember_bench"
# Phone hashing key of the benchmark's own throwaway data; the demo and the server must agree on it.
BENCH_PHONE_KEY = "profile-read-benchmark-data-only"
DEMO_GROUP = "demo"
PAGE_BRAND = "teahouse"
# Its ids follow the first brand's: a page that walks the ids from 1 reads the first brand's rows.
SECOND_BRAND = "orchard"
SECOND_BRAND_FLOOR = 1 / 1.5  # issue 13: any brand's page within 1.5x of the first brand's throughput
ID_SAMPLE = 2000  # member ids (a) picks from at random, spread over the data
SIZE_TOLERANCE = 0.02  # the demo data is reused when it holds the requested members ±2%
FLOOR_RPS = 1000  # the floor for (a) at the highest concurrency
# The best generic GraphQL-over-PostgreSQL server on this machine, same data, c=16, one process.
REFERENCE_RPS = {"profile": 1600, "page": 2050}

# (a), the member's profile. Parts of it that land later join the query once the schema has them.
PROFILE_FIELDS = (
    "id status pointsBalance growthValue displayName gender birthday city",
    "registeredAt firstPurchaseAt lastPurchaseAt orderCount totalSpend maskedPhone mergedAt",
    "tier { code name rank }",
    "brand { id code name }",
    "identities { channel externalId boundAt }",
    "person { key memberships { id brand { code } tier { code } pointsBalance } }",
)
LATER_PROFILE_FIELDS = {
    "pointsHistory": "pointsHistory(first: 10) { nodes { id kind amount balanceAfter note createdAt } }",
    "tags": "tags { code name category assignedAt }",
}
# Member fields (a) leaves out on purpose: other reads than the profile the issue names.
NOT_PROFILE = {"mergedInto", "merges", "orders", "expiringPoints", "tierHistory"}
PAGE_QUERY = """query Page($brand: String!) {
  members(brand: $brand, first: 100) { nodes { id tier { code } pointsBalance } }
}"""
LABELS = {"profile": "(a) member profile", "page": "(b) page of 100 members"}
# Both modes' role (bench/keys.py): masked, and it may list a brand's members, which (b) and (c) do.
ROLE = "campaign"
ACCESS_FLOOR = 0.9  # issue 14: keys on within 10% of keys off
READS = ("profile", "page", "page2")  # the scenarios the floor is about (the others are baselines)


class BenchError(RuntimeError):
    """The benchmark cannot produce a valid figure."""


# ---------------------------------------------------------------------------------------------
# Database and demo data


@dataclass(frozen=True, slots=True)
class DataSize:
    brands: int
    members: int
    live_members: int
    identities: int
    points_entries: int = 0  # in the whole database (the demo's only)
    member_tags: int = 0  # likewise


def redact(url: str) -> str:
    """The URL without its password, for printing."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def libpq_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme.startswith("postgres"):
        raise BenchError(f"not a PostgreSQL URL: {redact(url)}")
    return "postgresql://" + rest


def with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + database))


def ensure_database(url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(with_database(url, "postgres"), autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            print(f"creating database {name}")
            conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))


def demo_size(conn: psycopg.Connection[Any]) -> DataSize:
    row = conn.execute(
        """SELECT (SELECT count(*) FROM brands b WHERE b.group_id = g.id),
                  count(m.id), count(m.id) FILTER (WHERE m.merged_into IS NULL),
                  (SELECT count(*) FROM member_identities i JOIN brands b ON b.id = i.brand_id
                   WHERE b.group_id = g.id)
           FROM groups g LEFT JOIN brands b ON b.group_id = g.id LEFT JOIN members m ON m.brand_id = b.id
           WHERE g.code = %s GROUP BY g.id""",
        (DEMO_GROUP,),
    ).fetchone()
    if row is None:
        return DataSize(0, 0, 0, 0)
    brands, members, live, identities = row
    entries, tags = count_if_exists(conn, "points_entries"), count_if_exists(conn, "member_tags")
    return DataSize(brands, members, live, identities, entries, tags)


def count_if_exists(conn: psycopg.Connection[Any], table: str) -> int:
    """Rows of a table that a later migration adds; 0 before it."""
    found = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (table,)).fetchone()
    if not found or not found[0]:
        return 0
    row = conn.execute(psycopg.sql.SQL("SELECT count(*) FROM {}").format(psycopg.sql.Identifier(table))).fetchone()
    return int(row[0]) if row else 0


def sample_member_ids(conn: psycopg.Connection[Any], seed: int) -> list[int]:
    """Live members of the demo group, a fixed random sample spread over all of them."""
    rows = conn.execute(
        """SELECT m.id FROM members m JOIN brands b ON b.id = m.brand_id JOIN groups g ON g.id = b.group_id
           WHERE g.code = %s AND m.merged_into IS NULL ORDER BY m.id""",
        (DEMO_GROUP,),
    ).fetchall()
    ids = [row[0] for row in rows]
    return random.Random(seed).sample(ids, min(ID_SAMPLE, len(ids)))


def close_enough(size: DataSize, members: int) -> bool:
    """The demo holds about this many members, with the ledger and tags the profile reads."""
    complete = size.points_entries > 0 and size.member_tags > 0
    return complete and abs(size.members - members) <= SIZE_TOLERANCE * members


def omnimember(*args: str, env: dict[str, str]) -> None:
    command = [str(venv_bin("omnimember")), *args]
    print("$", shlex.join(["omnimember", *args]), flush=True)
    if subprocess.run(command, env=env, cwd=ROOT, check=False).returncode != 0:
        raise BenchError(f"`omnimember {' '.join(args)}` failed")


def vacuum_analyze(url: str) -> None:
    """Fresh statistics and visibility: right after a bulk load the planner guesses (and misses)."""
    print("VACUUM (ANALYZE)", flush=True)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM (ANALYZE)")


def prepare_data(url: str, members: int, seed: int, env: dict[str, str]) -> DataSize:
    """Migrate, build the demo data unless it already holds about `members` members, analyze."""
    ensure_database(url)
    omnimember("migrate", env=env)
    with psycopg.connect(url) as conn:
        size = demo_size(conn)
    if close_enough(size, members):
        print(f"reusing the demo data: {size.members} members, {size.identities} identities")
    else:
        size = build_demo(url, members, seed, env, replace=size.brands > 0)
    vacuum_analyze(url)
    return size


def build_demo(
    url: str, members: int, seed: int, env: dict[str, str], *, replace: bool, ledger: str = "full"
) -> DataSize:
    """`omnimember demo`: the group `demo` with brands teahouse and orchard, with tags and the points
    ledger (`ledger`: full, the default, or opening; see `omnimember demo --help`)."""
    if not (ROOT / "demo" / "build.py").exists():
        raise BenchError(f"no demo data of about {members} members, and `omnimember demo` is not there yet")
    flags = ["--replace"] if replace else []
    # With the ledger and tags, so that the profile's points history and tags have rows to read.
    ledger_flags = ["--points"] if ledger == "full" else ["--ledger", ledger]
    omnimember("demo", "--members", str(members), "--seed", str(seed), *ledger_flags, "--tags", *flags, env=env)
    with psycopg.connect(url) as conn:
        size = demo_size(conn)
    if not close_enough(size, members):
        raise BenchError(f"asked the demo for {members} members, the demo group holds {size.members}")
    return size


# ---------------------------------------------------------------------------------------------
# The server


def venv_bin(name: str) -> Path:
    for directory in (ROOT / ".venv" / "bin", Path(sys.executable).parent):
        if (directory / name).exists():
            return directory / name
    found = shutil.which(name)
    if found is None:
        raise BenchError(f"{name} not found (expected in .venv/bin)")
    return Path(found)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_request(
    url: str, body: str | None = None, timeout: float = 2, headers: Mapping[str, str] | None = None
) -> tuple[int, str]:
    """GET, or POST a JSON body; (status, text)."""
    data = None if body is None else body.encode()
    sent = {"Content-Type": "application/json", **(headers or {})}
    request = urllib.request.Request(url, data=data, headers=sent)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (our own http URL)
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_ready(base_url: str, server: subprocess.Popen[bytes], log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise BenchError(f"the server exited ({server.returncode}):\n{tail(log)}")
        with contextlib.suppress(OSError):
            status, _ = http_request(base_url + "/readyz")
            if status == 200:
                return
        time.sleep(0.1)
    raise BenchError(f"the server was not ready within {timeout:.0f}s:\n{tail(log)}")


def tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


@contextlib.contextmanager
def running_server(
    command: Sequence[str], port: int, env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """`omnimember serve` (one uvicorn worker); stopped with SIGTERM however the block ends."""
    with log.open("wb") as out:
        server = subprocess.Popen(
            [*command, "--port", str(port)],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us, and we stop the server ourselves
        )
    try:
        wait_ready(f"http://127.0.0.1:{port}", server, log)
        yield server
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


# ---------------------------------------------------------------------------------------------
# Scenarios and measurements


def graphql_body(query: str, variables: dict[str, Any] | None = None) -> str:
    payload: dict[str, Any] = {"query": query}
    if variables:
        payload["variables"] = variables
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def member_fields(base_url: str) -> list[str]:
    """The Member type's fields, by introspection: development mode only (production refuses it)."""
    status, text = http_request(base_url + "/graphql", graphql_body('{ __type(name: "Member") { fields { name } } }'))
    if status != 200:
        raise BenchError(f"introspection failed: HTTP {status}: {text[:500]}")
    return [field["name"] for field in json.loads(text)["data"]["__type"]["fields"]]


def profile_query(fields: Sequence[str]) -> str:
    """(a) with the later parts of the profile that the schema has today."""
    parts = [*PROFILE_FIELDS, *(part for name, part in LATER_PROFILE_FIELDS.items() if name in fields)]
    body = "".join(f"    {part}\n" for part in parts)
    return f"query Profile($id: ID!) {{\n  member(id: $id) {{\n{body}  }}\n}}"


def unasked_fields(fields: Sequence[str], query: str) -> list[str]:
    """Member fields (a) does not ask for that may belong in a profile (tags… as they land)."""
    return [name for name in fields if name not in query and name not in NOT_PROFILE]


def scenarios(member_ids: Sequence[int], profile: str) -> list[Scenario]:
    typename = "{ __typename }"
    return [
        Scenario("healthz", "GET /healthz (bare Starlette route)", "GET", "/healthz", (), '"ok"'),
        Scenario(
            "typename", f"GraphQL `{typename}`", "POST", "/graphql", (graphql_body(typename),), '"Query"', typename
        ),
        Scenario(
            "profile",
            "(a) member by id: profile, tier, brand, identities, person"
            + (", points history" if "pointsHistory" in profile else "")
            + (", tags" if "tags {" in profile else ""),
            "POST",
            "/graphql",
            tuple(graphql_body(profile, {"id": str(i)}) for i in member_ids),
            '"externalId"',  # only inside an identity: the profile came back with its identities
            profile,
        ),
        Scenario(
            "page",
            f"(b) first 100 members of `{PAGE_BRAND}` (id, tier, points)",
            "POST",
            "/graphql",
            (graphql_body(PAGE_QUERY, {"brand": PAGE_BRAND}),),
            '"pointsBalance"',  # only inside a node: the page is not empty
            PAGE_QUERY,
        ),
        Scenario(
            "page2",
            f"(c) first 100 members of `{SECOND_BRAND}`, the demo's second brand (ids after the first's)",
            "POST",
            "/graphql",
            (graphql_body(PAGE_QUERY, {"brand": SECOND_BRAND}),),
            '"pointsBalance"',
            PAGE_QUERY,
        ),
    ]


def probe(base_url: str, scenario: Scenario, headers: Mapping[str, str] | None = None) -> None:
    """One request, checked, before any load: fail loudly with the body the server returned."""
    body = scenario.bodies[0] if scenario.bodies else None
    status, text = http_request(base_url + scenario.path, body, timeout=10, headers=headers)
    if status != 200 or scenario.expect not in text or '"errors"' in text:
        raise BenchError(f"{scenario.title}: HTTP {status}, expected {scenario.expect!r} in:\n{text[:2000]}")


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy since boot (all cores, from /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    """CPU seconds of this process and its finished children: the load generator."""
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


@dataclass(frozen=True, slots=True)
class CpuSample:
    server: float
    backends: dict[int, float] | None  # per pid; None when they cannot be read
    machine: float
    client: float


class CpuMeter:
    """CPU seconds of the server, the database's client backends (when local), the client, the machine."""

    def __init__(self, server_pid: int, conn: psycopg.Connection[Any] | None) -> None:
        self.pid = server_pid
        self._server = psutil.Process(server_pid)
        self._conn = conn

    def sample(self) -> CpuSample:
        times = self._server.cpu_times()
        return CpuSample(float(times.user + times.system), self._backends(), machine_busy(), own_cpu())

    def _backends(self) -> dict[int, float] | None:
        if self._conn is None:
            return None
        rows = self._conn.execute(
            """SELECT pid FROM pg_stat_activity WHERE datname = current_database()
               AND backend_type = 'client backend' AND pid <> pg_backend_pid()"""
        ).fetchall()
        used: dict[int, float] = {}
        for (pid,) in rows:
            try:
                times = psutil.Process(pid).cpu_times()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                return None
            used[pid] = float(times.user + times.system)
        return used


@dataclass(frozen=True, slots=True)
class CpuUsage:
    server_ms: float  # per request
    pg_ms: float | None  # per request, when the database runs on this machine
    others_cores: float  # everything else on the machine (other sessions, neighbours), in cores


def cpu_usage(before: CpuSample, after: CpuSample, requests: int, seconds: float) -> CpuUsage:
    server = after.server - before.server
    pg = None
    if before.backends is not None and after.backends is not None:
        pg = sum(used - before.backends.get(pid, 0.0) for pid, used in after.backends.items())
    ours = server + (pg or 0.0) + after.client - before.client
    others = max(0.0, after.machine - before.machine - ours) / seconds
    return CpuUsage(server * 1000 / requests, None if pg is None else pg * 1000 / requests, others)


@dataclass(frozen=True, slots=True)
class Measurement:
    scenario: Scenario
    connections: int
    stats: LoadStats
    cpu: CpuUsage
    command: str


def measure(
    driver: Driver, base_url: str, scenario: Scenario, connections: int, args: argparse.Namespace, meter: CpuMeter
) -> Measurement:
    if args.warmup:
        driver.run(base_url, scenario, connections, args.warmup).check(scenario)
    before = meter.sample()
    stats = driver.run(base_url, scenario, connections, args.duration)
    after = meter.sample()
    stats.check(scenario)
    usage = cpu_usage(before, after, stats.requests, stats.seconds)
    command = driver.command(base_url, scenario, connections, args.duration)
    return Measurement(scenario, connections, stats, usage, command)


def ratio(results: Sequence[Measurement], m: Measurement, key: str) -> float:
    base = next(r for r in results if r.scenario.key == key and r.connections == m.connections)
    return m.stats.rps / base.stats.rps


# ---------------------------------------------------------------------------------------------
# Profiling


def profile(
    driver: Driver, base_url: str, scenario: Scenario, connections: int, seconds: int, server_pid: int, out: Path
) -> hotspots.Hotspots:
    """py-spy records the server while the driver runs `scenario`; idle samples are left out."""
    py_spy = venv_bin("py-spy")
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [str(py_spy), "record", "--pid", str(server_pid), "--duration", str(seconds + 2)]
    command += ["--rate", "200", "--format", "raw", "--output", str(out)]
    print("$", shlex.join(command), flush=True)
    recorder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1)  # let py-spy attach
        driver.run(base_url, scenario, connections, seconds).check(scenario)
        _, errors = recorder.communicate(timeout=seconds + 60)
    finally:
        if recorder.poll() is None:
            recorder.kill()
            recorder.wait()
    if recorder.returncode != 0 or not out.exists():
        raise BenchError(f"py-spy failed ({recorder.returncode}): {errors}")
    return hotspots.summarise(out.read_text(), ROOT)


# ---------------------------------------------------------------------------------------------
# Report


@dataclass(frozen=True, slots=True)
class Environment:
    cpus: int
    cpu_model: str
    ram_gib: float
    postgres: str
    python: str
    libraries: str
    driver: str
    pool: str


def meminfo_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024 / 1024
    return float("nan")


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def server_versions() -> tuple[str, str]:
    """Python and library versions of the venv the server runs in."""
    code = (
        "import json, platform, importlib.metadata as m\n"
        "names = ['strawberry-graphql', 'graphql-core', 'starlette', 'uvicorn', 'uvloop', 'httptools', 'psycopg']\n"
        "print(json.dumps([platform.python_version(), [(n, m.version(n)) for n in names]]))"
    )
    out = subprocess.run([str(venv_bin("python")), "-c", code], capture_output=True, text=True, check=True).stdout
    python, libraries = json.loads(out)
    return python, ", ".join(f"{name} {version}" for name, version in libraries)


def environment(conn: psycopg.Connection[Any], driver: Driver) -> Environment:
    row = conn.execute("SELECT version()").fetchone()
    python, libraries = server_versions()
    pool_min = os.environ.get("OMNIMEMBER_POOL_MIN", "2")
    pool_max = os.environ.get("OMNIMEMBER_POOL_MAX", "10")
    return Environment(
        cpus=os.cpu_count() or 0,
        cpu_model=cpu_model(),
        ram_gib=meminfo_gib(),
        postgres=str(row[0]).split(",")[0] if row else "unknown",
        python=python,
        libraries=libraries,
        driver=driver.name,
        pool=f"{pool_min} to {pool_max} connections (OMNIMEMBER_POOL_MIN/OMNIMEMBER_POOL_MAX)",
    )


def table(results: Sequence[Measurement]) -> list[str]:
    lines = [
        "| scenario | conns | req/s | p50 | p99 | vs healthz | vs `__typename` "
        "| server CPU/req | PG CPU/req | others' CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for m in results:
        s, cpu = m.stats, m.cpu
        pg = "-" if cpu.pg_ms is None else f"{cpu.pg_ms:.2f} ms"
        lines.append(
            f"| {m.scenario.title} | {m.connections} | {s.rps:,.0f} | {s.p50_ms:.2f} ms | {s.p99_ms:.2f} ms "
            f"| {ratio(results, m, 'healthz'):.3f} | {ratio(results, m, 'typename'):.2f} "
            f"| {cpu.server_ms:.2f} ms | {pg} | {cpu.others_cores:.2f} cores |"
        )
    return lines


def access_table(off: Sequence[Measurement], on: Sequence[Measurement]) -> list[str]:
    """Keys on against keys off, scenario by scenario."""
    lines = [
        "| scenario | conns | keys off req/s | keys on req/s | on / off | server CPU/req off | on | CPU on / off |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for a, b in paired(off, on):
        lines.append(
            f"| {b.scenario.title} | {b.connections} | {a.stats.rps:,.0f} | {b.stats.rps:,.0f} "
            f"| {b.stats.rps / a.stats.rps:.3f} | {a.cpu.server_ms:.2f} ms | {b.cpu.server_ms:.2f} ms "
            f"| {b.cpu.server_ms / a.cpu.server_ms:.3f} |"
        )
    return lines


def paired(off: Sequence[Measurement], on: Sequence[Measurement]) -> list[tuple[Measurement, Measurement]]:
    by_run = {(m.scenario.key, m.connections): m for m in off}
    return [(by_run[m.scenario.key, m.connections], m) for m in on]


def access_verdict(off: Sequence[Measurement], on: Sequence[Measurement]) -> str:
    """Issue 14's floor over the GraphQL reads ((a), (b), (c); the baselines only frame them)."""
    ratios = [(b, b.stats.rps / a.stats.rps) for a, b in paired(off, on) if b.scenario.key in READS]
    worst, low = min(ratios, key=lambda pair: pair[1])
    met = "met" if low >= ACCESS_FLOOR else "**NOT met**"
    return (
        f"- Access control (issue 14), keys on within {1 - ACCESS_FLOOR:.0%} of keys off over (a), (b) and (c): {met} "
        f"(lowest on / off {low:.3f}: {worst.scenario.key}, c={worst.connections})."
    )


def verdict(results: Sequence[Measurement]) -> list[str]:
    top = max(m.connections for m in results)
    at_top = {m.scenario.key: m for m in results if m.connections == top}
    profile_rps = at_top["profile"].stats.rps
    met = "met" if profile_rps >= FLOOR_RPS else "**NOT met**"
    cpu_ms = at_top["profile"].cpu.server_ms
    lines = [
        f"- Floor for (a), {FLOOR_RPS:,} req/s at c={top}: {met} ({profile_rps:,.0f} req/s).",
        f"- (a) costs {cpu_ms:.2f} ms of server CPU per request: one worker, even with a core to itself, tops "
        f"out near {1000 / cpu_ms:,.0f} req/s. The floor needs at most {1000 / FLOOR_RPS:.2f} ms.",
    ]
    second = at_top["page2"].stats.rps / at_top["page"].stats.rps
    lines.append(
        f"- (c) `{SECOND_BRAND}`'s page at c={top}: {second:.2f}x `{PAGE_BRAND}`'s; floor {SECOND_BRAND_FLOOR:.2f}x: "
        + ("met." if second >= SECOND_BRAND_FLOOR else "**NOT met**.")
    )
    for key, reference in REFERENCE_RPS.items():
        rps = at_top[key].stats.rps
        lines.append(
            f"- {LABELS[key]} at c={top}: {rps:,.0f} req/s, "
            f"{rps / reference:.2f}x the reference generic GraphQL-over-PostgreSQL server ({reference:,} req/s, "
            "measured on this machine in an earlier run, so compare with care)."
        )
    return lines


def section(
    runs: Mapping[str, Sequence[Measurement]],
    env: Environment,
    size: DataSize,
    args: argparse.Namespace,
    command: str,
    profiled: hotspots.Hotspots | None,
) -> str:
    lines = [
        SECTION,
        "",
        f"Measured {dt.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} by `bench/profile_read.py`. Reproduce with:",
        "",
        "```sh",
        command,
        "```",
        "",
        f"- Machine: {env.cpus} CPUs ({env.cpu_model}), {env.ram_gib:.1f} GiB RAM, shared with the database.",
        f"- Database: {env.postgres}, at {urlsplit(args.database_url).hostname or 'a unix socket'}.",
        f"- Server: `omnimember serve`, one uvicorn worker, Python {env.python}; {env.libraries}.",
        f"- Connection pool: {env.pool}.",
        f"- Data: the demo group (`omnimember demo --members {args.members} --seed {args.seed}`): "
        f"{size.brands} brands, {size.members:,} members ({size.live_members:,} live), "
        f"{size.identities:,} identities, {size.points_entries:,} points entries, "
        f"{size.member_tags:,} tag assignments. "
        f"(a) picks one of {ID_SAMPLE:,} member ids at random per request.",
        f"- Load: {env.driver}, {args.duration}s per run after a {args.warmup}s warm-up; every response is "
        "checked (HTTP 200, the expected data, no GraphQL `errors`).",
        "- CPU/req: the process's user+system CPU time over the run divided by its requests "
        "(PG: the database's client backends); less sensitive to the noisy neighbour than req/s. "
        "Others' CPU: what the rest of the machine (other sessions, other databases) used during the run, "
        f"in cores out of {env.cpus}; when it is high, req/s and latencies read low.",
        f"- Access control: every scenario runs twice on the same data, keys off, then keys on (bench/keys.py). "
        f"Keys off: development mode, key-less requests acting as `{ROLE}` over every brand. Keys on: production "
        f"mode, a `{ROLE}` key scoped to the group `{DEMO_GROUP}` (`omnimember keys create`) as a bearer token in "
        f"every request. `{ROLE}`: the masked role that may run every scenario (`frontend` may not list a brand's "
        "members), so the compiled read path and no read audit, as for `frontend`. Both modes set "
        f"OMNIMEMBER_RATE_LIMIT={keys.RATE_LIMIT} (the limiter runs but never refuses; its default, 5,000 requests a "
        "second per key, is below these rates). The server restarts between the modes.",
        "",
        f"Keys off (development mode, `{ROLE}`):",
        "",
        *table(runs["off"]),
        "",
        f"Keys on (a `{ROLE}` key):",
        "",
        *table(runs["on"]),
        "",
        "Keys on / keys off:",
        "",
        *access_table(runs["off"], runs["on"]),
        "",
        access_verdict(runs["off"], runs["on"]),
        *verdict(runs["on"]),
        "",
        "<details><summary>Queries</summary>",
        "",
        "```graphql",
        "\n\n".join(query_of(runs["on"], key) for key in ("profile", "page")),
        "```",
        "",
        "</details>",
    ]
    if profiled is not None:
        target = next(m.scenario.title for m in runs["on"] if m.scenario.key == args.profile_scenario)
        top = args.levels[-1]
        lines += ["", f"### Profile: {target}, c={top}, keys on", "", *hotspots.render(profiled)]
    return "\n".join(lines) + "\n"


def query_of(results: Sequence[Measurement], key: str) -> str:
    return next(m.scenario.query for m in results if m.scenario.key == key)


def section_bounds(lines: list[str], title: str) -> tuple[int, int] | None:
    """Where the `## ` section titled `title` starts, and where the next one starts."""
    start = next((i for i, line in enumerate(lines) if line.rstrip() == title), None)
    if start is None:
        return None
    return start, next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))


def write_section(path: Path, text: str, title: str = SECTION) -> None:
    """Replace a benchmark's section of the file (up to the next `## ` heading), keep the rest."""
    old = path.read_text() if path.exists() else "# Benchmarks\n"
    lines = old.splitlines(keepends=True)
    bounds = section_bounds(lines, title)
    if bounds is None:
        new = old.rstrip("\n") + "\n\n" + text
    else:
        rest = "".join(lines[bounds[1] :])
        new = "".join(lines[: bounds[0]]) + text + ("\n" + rest if rest else "")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


# ---------------------------------------------------------------------------------------------
# Main


def reproduce_command(args: argparse.Namespace) -> str:
    argv = [".venv/bin/python", "bench/profile_read.py", "--members", str(args.members), "--seed", str(args.seed)]
    argv += ["--duration", str(args.duration), "--warmup", str(args.warmup)]
    if args.database_url != DEFAULT_DATABASE_URL:
        argv += ["--database-url", redact(args.database_url)]
    if args.levels != [1, 16]:
        argv += ["--connections", ",".join(map(str, args.levels))]
    if args.server_command:
        argv += ["--server-command", args.server_command]
    if args.python_client:
        argv.append("--python-client")
    if args.profile is not None:
        argv += ["--profile", str(args.profile)]
        if args.profile_scenario != "profile":
            argv += ["--profile-scenario", args.profile_scenario]
    return shlex.join(argv)


def pick_driver(args: argparse.Namespace, workdir: Path, headers: Mapping[str, str] | None = None) -> Driver:
    """wrk, whose requests carry `headers`; else the Python client (see python_client_headers)."""
    wrk = None if args.python_client else shutil.which("wrk")
    if wrk is not None:
        return keys.KeyedWrk(wrk, workdir, headers=dict(headers or {}))
    why = "--python-client" if args.python_client else "wrk not found (apt-get install -y wrk)"
    print(
        f"WARNING: {why}: the Python client runs on the same cores as the server and takes CPU from it, "
        "so req/s reads low and latency high. Compare ratios only.",
        file=sys.stderr,
    )
    return PythonDriver()


@contextlib.contextmanager
def python_client_headers(headers: Mapping[str, str]) -> Iterator[None]:
    """The Python client sends loadgen.HEADERS: with `headers` too, inside the block."""
    saved = dict(loadgen.HEADERS)
    loadgen.HEADERS.update(headers)
    try:
        yield
    finally:
        loadgen.HEADERS.clear()
        loadgen.HEADERS.update(saved)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--members", type=int, default=100_000, help="demo data size (default 100000)")
    parser.add_argument("--seed", type=int, default=42, help="demo data seed (default 42)")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL") or DEFAULT_DATABASE_URL,
        help=f"default: $DATABASE_URL, else {DEFAULT_DATABASE_URL} (created when missing)",
    )
    parser.add_argument("--duration", type=int, default=15, help="seconds per measured run (default 15)")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up before each run (default 3)")
    parser.add_argument("--connections", default="1,16", help="concurrency levels (default 1,16)")
    parser.add_argument("--port", type=int, default=0, help="server port (default: a free one)")
    parser.add_argument(
        "--server-command",
        help="serve with this command instead of `.venv/bin/omnimember serve` (--port P is appended), to A/B a variant",
    )
    parser.add_argument("--python-client", action="store_true", help="use the Python client even if wrk exists")
    parser.add_argument("--profile", type=Path, help="also record the server with py-spy into this raw profile file")
    parser.add_argument(
        "--profile-scenario",
        choices=["profile", "page", "page2", "typename", "healthz"],
        default="profile",
        help="what load --profile records: profile = (a) (default), page = (b)",
    )
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    args.database_url = libpq_url(args.database_url)
    args.levels = sorted({int(c) for c in args.connections.split(",")})
    return args


def child_env(url: str, home: Path) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": url, "OMNIMEMBER_SECRET": BENCH_PHONE_KEY, "OMNIMEMBER_HOME": str(home)}


def is_local(url: str) -> bool:
    """The database runs on this machine (so its backends' CPU can be read)."""
    return urlsplit(url).hostname in (None, "", "localhost", "127.0.0.1", "::1")


def run(args: argparse.Namespace, workdir: Path) -> int:
    env = child_env(args.database_url, workdir / "home")
    size = prepare_data(args.database_url, args.members, args.seed, env)
    with psycopg.connect(args.database_url) as conn:
        member_ids = sample_member_ids(conn, args.seed)
    if not member_ids:
        raise BenchError("the demo group has no live members")
    token = keys.create_key(venv_bin("omnimember"), env, ROLE, ["--group", DEMO_GROUP], "bench profile_read")
    command = shlex.split(args.server_command) if args.server_command else [str(venv_bin("omnimember")), "serve"]
    runs: dict[str, list[Measurement]] = {}
    plan: list[Scenario] = []
    env_info: Environment | None = None
    profiled = None
    for mode in keys.modes(env, ROLE, token):  # keys off first: its development mode allows introspection
        print(f"\n== {mode.title}", flush=True)
        driver = pick_driver(args, workdir, mode.headers)
        port = args.port or free_port()
        base_url = f"http://127.0.0.1:{port}"
        log = workdir / f"server-{mode.key}.log"
        with (
            python_client_headers(mode.headers),
            running_server(command, port, mode.env, log) as server,
            psycopg.connect(args.database_url, autocommit=True) as conn,
        ):
            env_info = env_info or environment(conn, driver)
            plan = plan or build_plan(base_url, member_ids)
            cpu = CpuMeter(server.pid, conn if is_local(args.database_url) else None)
            try:
                runs[mode.key], found = benchmark(driver, base_url, plan, args, cpu, mode)
            except LoadError as error:
                raise BenchError(f"{error}\nserver log:\n{tail(log)}") from error
            profiled = found or profiled
    assert env_info is not None
    report(runs, env_info, size, args, profiled)
    return 0


def build_plan(base_url: str, member_ids: Sequence[int]) -> list[Scenario]:
    fields = member_fields(base_url)
    profile = profile_query(fields)
    unasked = unasked_fields(fields, profile)
    if unasked:
        print(f"note: Member fields (a) does not ask for: {', '.join(unasked)}", file=sys.stderr)
    return scenarios(member_ids, profile)


def benchmark(
    driver: Driver, base_url: str, plan: Sequence[Scenario], args: argparse.Namespace, cpu: CpuMeter, mode: keys.Mode
) -> tuple[list[Measurement], hotspots.Hotspots | None]:
    """Every scenario at every concurrency; with --profile, py-spy in the keys-on mode."""
    for scenario in plan:
        probe(base_url, scenario, mode.headers)
    results = []
    for connections in args.levels:
        for scenario in plan:
            print(f"{scenario.title}, c={connections} …", end=" ", flush=True)
            m = measure(driver, base_url, scenario, connections, args, cpu)
            print(f"{m.stats.rps:,.0f} req/s, p50 {m.stats.p50_ms:.2f} ms, p99 {m.stats.p99_ms:.2f} ms", flush=True)
            results.append(m)
    profiled = None
    if args.profile is not None and mode.keys_on:
        target = next(s for s in plan if s.key == args.profile_scenario)
        profiled = profile(driver, base_url, target, args.levels[-1], args.duration, cpu.pid, args.profile)
    return results, profiled


def report(
    runs: Mapping[str, Sequence[Measurement]],
    env: Environment,
    size: DataSize,
    args: argparse.Namespace,
    profiled: hotspots.Hotspots | None,
) -> None:
    command = reproduce_command(args)
    text = section(runs, env, size, args, command, profiled)
    print()
    print(text)
    print("load commands of the runs (keys on: TOKEN=$(omnimember keys create ...), see bench/keys.py):")
    for mode, results in runs.items():
        for m in results:
            print(f"  [keys {mode}] {m.command}")
    if not args.no_write:
        write_section(DOCS, text)
        print(f"\nwrote {DOCS.relative_to(ROOT)}")


def bench_main(run: Callable[[Any, Path], int], args: Any, prefix: str, failures: tuple[type[Exception], ...]) -> int:
    """Run a benchmark in a temporary directory; a failure is a message and exit status 1."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind, so the server gets stopped
    try:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            return run(args, Path(tmp))
    except failures as error:
        print(f"\nBENCHMARK FAILED: {error}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    return bench_main(run, parse_args(argv), "profile_read-", (BenchError, LoadError, keys.KeysError, psycopg.Error))


if __name__ == "__main__":
    sys.exit(main())

"""The service under abuse: /healthz latency and profile reads while 4 clients send abusive requests.

    .venv/bin/python bench/abuse.py [--members 100000] [--database-url URL] [--duration 10]

Uses bench/profile_read.py's demo data (built once in the same database), starts `omnimember
serve` (one uvicorn worker) and measures with wrk, first quiet, then while 4 client threads send
the probes of issue 12 in a loop (wrk, 4 connections; the refusals are counted):

- a document of 10,000 aliases (289 KB), one of 20,000 duplicate fields, 10,000 spreads of one
  fragment, a chain of 2,000 fragments, fragments multiplying to 10,000 fields, pages multiplying
  to 1,000,000 rows, a 2 MB body, a body of `null`.

Measured: GET /healthz at 4 connections (p50, p99) and (a) the member profile at 16 connections
(req/s, p99). Prints both phases, the ratios (abused / quiet) and the goals of issue 12 (healthz
p99 under 100 ms, profile throughput at least 80% of quiet), and writes the "Abuse: abuse" section
of docs/benchmarks.md (unless --no-write). Ratios within one run are what compares: these machines
are noisy.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import profile_read as common  # the read benchmark's helpers: database, server, demo data, load driver
import psycopg
from loadgen import LUA_SCRIPT, RESULT_MARKER, LoadStats, Scenario

DOCS = common.ROOT / "docs" / "benchmarks.md"
SECTION = "## Abuse: abuse"
ABUSERS = 4
HEALTHZ_CONNECTIONS = 4
PROFILE_CONNECTIONS = 16
GOAL_HEALTHZ_P99_MS = 100.0
GOAL_THROUGHPUT = 0.8


def _aliases(count: int) -> str:
    return "{ " + " ".join(f"a{i}: __typename" for i in range(count)) + " }"


def _fragment_bomb() -> str:
    levels = ["fragment F0 on Query { __typename }"]
    levels += [f"fragment F{n} on Query {{ " + f"...F{n - 1} " * 10 + "}" for n in range(1, 5)]
    return "{ ...F4 } " + " ".join(levels)


def _chain(length: int) -> str:
    links = " ".join(f"fragment F{i} on Query {{ ...F{i + 1} }}" for i in range(length))
    return "{ ...F0 } " + links + f" fragment F{length} on Query {{ __typename }}"


PAGES = """{ members(brand: "teahouse", first: 100) { nodes {
  pointsHistory(first: 100) { nodes { id kind amount note createdAt } } } } }"""


def probes() -> dict[str, bytes]:
    """Each probe's request body, as an abusive client would send it."""
    documents = {
        "10,000 aliases": _aliases(10_000),
        "20,000 duplicate fields": "{ " + "__typename " * 20_000 + "}",
        "10,000 spreads of a fragment": "{ " + "...F " * 10_000 + "} fragment F on Query { __typename }",
        "a chain of 2,000 fragments": _chain(2_000),
        "fragments multiplying to 10,000 fields": _fragment_bomb(),
        "pages multiplying to 1,000,000 rows": PAGES,
    }
    bodies = {name: json.dumps({"query": text}).encode() for name, text in documents.items()}
    bodies["a 2 MB body"] = json.dumps({"query": "{ __typename }", "padding": "x" * 2_000_000}).encode()
    bodies["a body of null"] = b"null"
    return bodies


@dataclass(frozen=True, slots=True)
class Abuse:
    """What the abusive clients sent and got back (wrk's tally)."""

    sent: int
    refused: int  # answered with a body carrying "errors": every refusal has one
    socket_errors: int  # a 413 closes the connection while the client may still be sending
    p50_ms: float


class Abusers:
    """wrk on the probes, in the background: C code, so the abusers take little of the CPU the
    server and the measuring wrk share (Python clients took more than the server's refusals)."""

    def __init__(self, base_url: str, workdir: Path, seconds: int) -> None:
        bodies = workdir / "abuse.bodies"
        bodies.write_bytes(b"".join(body + b"\n" for body in probes().values()))
        wrk = shutil.which("wrk")
        if wrk is None:
            raise common.BenchError("bench/abuse.py needs wrk (apt-get install -y wrk)")
        self.argv = [wrk, "-t1", f"-c{ABUSERS}", f"-d{seconds}s", "--latency", "-s", str(LUA_SCRIPT)]
        self.argv += [f"{base_url}/graphql", "--", "POST", str(bodies), '"errors"']
        self.process = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def result(self) -> Abuse:
        out, _ = self.process.communicate(timeout=120)
        line = next((x for x in out.splitlines() if x.startswith(RESULT_MARKER)), None)
        if line is None:
            raise common.BenchError(f"the abusers' wrk failed: {out}")
        raw = json.loads(line[len(RESULT_MARKER) :])
        return Abuse(raw["requests"], raw["graphql_errors"], raw["socket_errors"], raw["p50_us"] / 1000)


@dataclass(frozen=True, slots=True)
class Phase:
    healthz: LoadStats
    profile: LoadStats
    abuse: Abuse | None


def phase(run: Callable[[Scenario, int], LoadStats], plan: dict[str, Scenario], abusers: Abusers | None) -> Phase:
    if abusers is not None:
        time.sleep(1)  # the abusers are at it before the measurement starts
    healthz = run(plan["healthz"], HEALTHZ_CONNECTIONS)
    profile = run(plan["profile"], PROFILE_CONNECTIONS)
    return Phase(healthz, profile, abusers.result() if abusers is not None else None)


def report(quiet: Phase, abused: Phase, args: argparse.Namespace, members: int) -> str:
    tally = abused.abuse
    assert tally is not None
    throughput = abused.profile.rps / quiet.profile.rps
    healthz_ok = abused.healthz.p99_ms < GOAL_HEALTHZ_P99_MS
    lines = [
        SECTION,
        "",
        f"Measured {dt.date.today().isoformat()} on {platform.node() or 'this machine'} "
        f"({common.cpu_model()}, {common.meminfo_gib():.0f} GiB), demo data of {members:,} members, one uvicorn "
        f"worker; {ABUSERS} abusive clients each sending the probes of issue 12 in turn. Reproduce: "
        f"`{reproduce(args)}`.",
        "",
        "| measurement | quiet | abused | abused / quiet | goal |",
        "|---|---|---|---|---|",
        _row(
            f"GET /healthz p99, c={HEALTHZ_CONNECTIONS}",
            quiet.healthz.p99_ms,
            abused.healthz.p99_ms,
            "ms",
            f"under {GOAL_HEALTHZ_P99_MS:.0f} ms: {'met' if healthz_ok else 'NOT met'}",
        ),
        _row(f"GET /healthz p50, c={HEALTHZ_CONNECTIONS}", quiet.healthz.p50_ms, abused.healthz.p50_ms, "ms", ""),
        _row(
            f"(a) member profile, c={PROFILE_CONNECTIONS}",
            quiet.profile.rps,
            abused.profile.rps,
            "req/s",
            f"at least {GOAL_THROUGHPUT:.0%}: {'met' if throughput >= GOAL_THROUGHPUT else 'NOT met'}",
        ),
        _row("(a) member profile p99", quiet.profile.p99_ms, abused.profile.p99_ms, "ms", ""),
        "",
        f"The abusers (wrk, {ABUSERS} connections) sent {tally.sent:,} probes: {tally.refused:,} refused "
        f"(median answer {tally.p50_ms:.1f} ms), {tally.socket_errors:,} connections closed on a 413 while "
        "sending. Before the checks of issue 12 (commit 9bd6195) the first probe alone held the event loop 8-16 s and"
        " /healthz waited up to 42 s behind four of them.",
    ]
    return "\n".join(lines) + "\n"


def _row(name: str, quiet: float, abused: float, unit: str, goal: str) -> str:
    shown = "{:,.0f} " if unit == "req/s" else "{:.2f} "
    return f"| {name} | {shown.format(quiet)}{unit} | {shown.format(abused)}{unit} | {abused / quiet:.2f} | {goal} |"


def reproduce(args: argparse.Namespace) -> str:
    parts = [".venv/bin/python", "bench/abuse.py", "--members", str(args.members), "--duration", str(args.duration)]
    if args.database_url != common.libpq_url(common.DEFAULT_DATABASE_URL):
        parts += ["--database-url", common.redact(args.database_url)]
    return shlex.join(parts)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--members", type=int, default=100_000, help="demo data size (default 100000)")
    parser.add_argument("--seed", type=int, default=42, help="demo data seed (default 42)")
    parser.add_argument("--database-url", default=common.DEFAULT_DATABASE_URL, help="as bench/profile_read.py")
    parser.add_argument("--duration", type=int, default=10, help="seconds per measured run (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up before each run (default 2)")
    parser.add_argument("--python-client", action="store_true", help="use the Python load client even if wrk exists")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args(argv)
    args.database_url = common.libpq_url(args.database_url)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="abuse-") as tmp:
        workdir = Path(tmp)
        env = common.child_env(args.database_url, workdir / "home")
        size = common.prepare_data(args.database_url, args.members, args.seed, env)
        with psycopg.connect(args.database_url) as conn:
            member_ids = common.sample_member_ids(conn, args.seed)
        driver = common.pick_driver(args, workdir)
        port = common.free_port()
        base_url = f"http://127.0.0.1:{port}"
        # Development mode, key-less requests as a masked role (the compiled read path), no rate limit.
        command = [str(common.venv_bin("omnimember")), "serve", "--dev"]
        env |= {"OMNIMEMBER_DEV_ROLE": "campaign", "OMNIMEMBER_RATE_LIMIT": "0"}
        with common.running_server(command, port, env, workdir / "server.log"):
            plan = {s.key: s for s in common.build_plan(base_url, member_ids)}

            def run(scenario: Scenario, connections: int) -> LoadStats:
                if args.warmup:
                    driver.run(base_url, scenario, connections, args.warmup)
                stats = driver.run(base_url, scenario, connections, args.duration)
                stats.check(scenario)
                print(
                    f"  {scenario.key}, c={connections}: {stats.rps:,.0f} req/s, p99 {stats.p99_ms:.2f} ms", flush=True
                )
                return stats

            print("quiet …", flush=True)
            quiet = phase(run, plan, None)
            print(f"abused by {ABUSERS} clients …", flush=True)
            seconds = 3 + 2 * (args.warmup + args.duration)
            abused = phase(run, plan, Abusers(base_url, workdir, seconds))
    text = report(quiet, abused, args, size.members)
    print()
    print(text)
    if not args.no_write:
        common.write_section(DOCS, text, SECTION)
        print(f"wrote the section to {DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

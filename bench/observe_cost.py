"""What metrics and request logs cost (issue 16's benchmark: under 5%), both on against both off.

    .venv/bin/python bench/observe_cost.py [--database-url URL] [--rounds 30] [--per-round 296] [--no-write]

Two apps in this process on one throwaway database, both in production mode with keys: one with
/metrics counting and one JSON log line per request (written to a file, as a server's standard
error would be), one with both off (OMNIMEMBER_METRICS=0, OMNIMEMBER_REQUEST_LOG=0: no `Observe` at
all). They answer the requests of bench/profile_read.py ((a) a member's profile by id, (b) a page
of 100 members, as a `campaign` key) and of bench/points.py (earnPoints and redeemPoints, as a
`frontend` key) in alternating rounds (bench/inprocess.py), and the figure is the median on/off
ratio of the rounds: of this process's CPU time (the cost itself) and of wall time. Traces stay
off in both (they are off unless an OTLP endpoint is set). The result goes to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import os
import secrets
import statistics
import tempfile
from collections.abc import Mapping
from pathlib import Path

import httpx
import points
import profile_read
import psycopg
from inprocess import DEFAULT_URL, Comparison, Request, client, interleaved, post, throwaway_database
from prometheus_client.parser import text_string_to_metric_families

from api.app import create_app
from api.observe import configure_logging
from api.settings import Settings
from store.access.keys import create_key
from store.access.roles import Role
from store.brands import create_brand

BRAND = "observebench"
SECTION = "## Observability cost: observe_cost"
CEILING = 1.05  # issue 16: metrics and logs cost under 5%
AMOUNT = 10
SEED_POINTS = 1_000_000  # per member: every redemption of the run finds enough
REGISTER = """mutation($b: String!, $e: String!, $u: String!, $p: String!) {
  a: registerMember(brand: $b, channel: "wechat", externalId: $e, phone: $p, displayName: "王小明", city: "上海") {
    ... on MemberRegistered { member { id } } }
  b: registerMember(brand: $b, channel: "tmall", externalId: $u, phone: $p) { __typename } }"""
OFF, ON = "both off", "both on"


def settings(url: str, home: Path, observed: bool) -> Settings:
    return Settings(url, home, "observe-bench-secret-0123456789", rate_limit=0, metrics=observed, request_log=observed)


async def seed(url: str, http: httpx.AsyncClient, members: int) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """The brand, a campaign key and a frontend key for it (their headers), and members with a
    second identity, a phone and points to redeem."""
    async with await psycopg.AsyncConnection.connect(url) as conn:
        async with conn.transaction():
            await create_brand(conn, code=BRAND, name="Observe bench", group_code="observebench_g")
        keys = {}
        for role in (Role.CAMPAIGN, Role.FRONTEND):
            async with conn.transaction():
                made = await create_key(conn, name=f"observe bench {role}", role=role, brand_codes=[BRAND])
            keys[role] = {"authorization": f"Bearer {made.token}"}
    ids = []
    for n in range(members):
        body = await post(http, REGISTER, keys[Role.FRONTEND], b=BRAND, e=f"wx{n}", u=f"tb{n}", p=f"139{n:08d}")
        ids.append(body["data"]["a"]["member"]["id"])
    for member in ids:
        await post(http, points.EARN, keys[Role.FRONTEND], brand=BRAND, member=member, amount=SEED_POINTS, key=member)
    return keys[Role.CAMPAIGN], keys[Role.FRONTEND], ids


def scenarios(
    http: httpx.AsyncClient, reader: dict[str, str], writer: dict[str, str], ids: list[str]
) -> dict[str, Request]:
    profile = profile_read.profile_query(list(profile_read.LATER_PROFILE_FIELDS))

    async def posted(document: str, n: int) -> None:
        member = ids[n % len(ids)]
        body = await post(http, document, writer, brand=BRAND, member=member, amount=AMOUNT, key=secrets.token_hex(8))
        (result,) = body["data"].values()
        assert result["__typename"] == "PointsPosted", result

    return {
        "profile_read (a): a member's profile by id": lambda n: post(http, profile, reader, id=ids[n % len(ids)]),
        "profile_read (b): a page of 100 members": lambda n: post(http, profile_read.PAGE_QUERY, reader, brand=BRAND),
        "points: earnPoints": lambda n: posted(points.EARN, n),
        "points: redeemPoints": lambda n: posted(points.REDEEM, n),
    }


async def run(url: str, args: argparse.Namespace, workdir: Path) -> dict[str, Comparison]:
    log = workdir / "requests.log"
    with log.open("w") as stream:
        configure_logging("json", stream)
        logging.getLogger("httpx").setLevel(logging.WARNING)  # the bench's client: a line per request, both modes
        on_app = create_app(settings(url, workdir / "on", observed=True))
        off_app = create_app(settings(url, workdir / "off", observed=False))
        async with client(on_app) as on, client(off_app) as off:
            reader, writer, ids = await seed(url, on, args.members)
            compared = {}
            print(f"{args.rounds} rounds x {args.per_round} requests per mode and scenario, c=8, interleaved")
            for (title, on_request), off_request in zip(
                scenarios(on, reader, writer, ids).items(), scenarios(off, reader, writer, ids).values(), strict=True
            ):
                compared[title] = await interleaved({OFF: off_request, ON: on_request}, args.rounds, args.per_round)
                print(line(title, compared[title]), flush=True)
            await check_modes(on, off, compared)
    lines = sum(1 for _ in log.open())
    print(f"request log: {lines:,} lines, {log.stat().st_size / 1e6:.1f} MB written to a file")
    return compared


async def check_modes(on: httpx.AsyncClient, off: httpx.AsyncClient, compared: Mapping[str, Comparison]) -> None:
    """The modes were what they claim: the on app counted every request it answered, the off one has
    no /metrics."""
    assert (await off.get("/metrics")).status_code == 404
    scraped = (await on.get("/metrics")).text
    counted = sum(
        sample.value
        for family in text_string_to_metric_families(scraped)
        for sample in family.samples
        if sample.name == "omnimember_requests_total" and sample.labels.get("route") == "/graphql"
    )
    sent = sum(len(c.wall[ON]) * c.per_round for c in compared.values())
    assert counted >= sent, (counted, sent)


def line(title: str, compared: Comparison) -> str:
    return (
        f"{title}: off {compared.per_request_ms(OFF):.3f} ms, on {compared.per_request_ms(ON):.3f} ms a request; "
        f"on/off CPU {compared.summary(ON, OFF, cpu=True)}, wall {compared.summary(ON, OFF)}"
    )


def section(compared: Mapping[str, Comparison], args: argparse.Namespace) -> str:
    worst = max(statistics.median(c.ratios(ON, OFF, cpu=True)) for c in compared.values())
    verdict = "met" if worst <= CEILING else "NOT met"
    rows = [
        f"| {title} | {c.per_request_ms(OFF, cpu=True):.3f} ms | {c.per_request_ms(ON, cpu=True):.3f} ms "
        f"| {c.summary(ON, OFF, cpu=True)} | {c.summary(ON, OFF)} |"
        for title, c in compared.items()
    ]
    return "\n".join(
        [
            SECTION,
            "",
            f"Measured {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC by `bench/observe_cost.py` "
            f"({args.rounds} rounds of {args.per_round} requests per mode and scenario, 8 at a time, "
            f"{args.members} members). Reproduce with:",
            "",
            "```sh",
            f".venv/bin/python bench/observe_cost.py --rounds {args.rounds} --per-round {args.per_round}",
            "```",
            "",
            "Two apps in one process on one database, keys on: metrics and JSON request logs both on, and both "
            "off (no `Observe` middleware at all). CPU: this process's CPU time per request, the httpx client's "
            "included, so a ratio reads a little lower than the server's own would.",
            "",
            "| scenario | CPU/request off | on | on/off CPU, median | on/off wall, median |",
            "|---|---:|---:|---:|---:|",
            *rows,
            "",
            f"- Issue 16, metrics and logs under {CEILING - 1:.0%}: {verdict} (worst median CPU ratio {worst:.3f}).",
            "",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", DEFAULT_URL))
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--per-round", type=int, default=296)
    parser.add_argument("--members", type=int, default=200)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    print(f"$ .venv/bin/python bench/observe_cost.py --rounds {args.rounds} --per-round {args.per_round}")
    with (
        tempfile.TemporaryDirectory(prefix="observe-bench-") as tmp,
        throwaway_database(args.database_url, "observe_bench") as url,
    ):
        compared = asyncio.run(run(url, args, Path(tmp)))
    text = section(compared, args)
    print("\n" + text)
    if not args.no_write:
        profile_read.write_section(profile_read.DOCS, text, SECTION)
        print(f"wrote {profile_read.DOCS.relative_to(profile_read.ROOT)}")


if __name__ == "__main__":
    main()

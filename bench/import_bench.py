"""Bulk import throughput (issue 16): members with two identities each, orders, tag assignments.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/import_bench.py \
        --members 1000000 --orders 3000000 --tags 10000000

Writes the three CSV files under --dir (default /tmp/omnimember-import-bench, never the work tree),
creates the database `omnimember_import_bench` on that server afresh (migrated, one brand with the
default rules and 200 tags), then runs `omnimember import members|orders|tags` one after the other,
each as its own process with `--no-index`, and prints rows/s and the process's peak RSS for each;
then the audience index catching up with all of it, timed apart. Floors: 100,000 members/s,
50,000 orders/s, 1,000,000 assignments/s.

The data: member i has the phone 13<9 digits of i>, a Tmall identity tb_<i> with its profile and a
WeChat identity wx_<i> with the phone only (all Tmall rows first: the WeChat half binds by phone to
members created chunks earlier); orders are bought on Tmall by members drawn at random, 10-2,000
yuan, paid over the last two years; tags go to members drawn at random (a member's tags distinct).
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

ROOT = Path(__file__).resolve().parent.parent
DATABASE = "omnimember_import_bench"
BRAND = "importbench"
TAGS = 200
CITIES = ("上海", "北京", "杭州", "成都", "深圳", "广州", "南京", "武汉")


def _members(path: Path, count: int) -> None:
    with path.open("w", encoding="utf-8", newline="") as file:
        out = csv.writer(file)
        out.writerow(("channel", "external_id", "phone", "display_name", "gender", "birthday", "city"))
        for i in range(count):
            gender = ("female", "male", "")[i % 3]
            birthday = f"{1960 + i % 45}-{1 + i % 12:02d}-{1 + i % 28:02d}"
            out.writerow(("tmall", f"tb_{i}", f"13{i:09d}", f"会员{i}", gender, birthday, CITIES[i % len(CITIES)]))
        for i in range(count):
            out.writerow(("wechat", f"wx_{i}", f"+86 13{i:09d}", "", "", "", ""))


def _orders(path: Path, count: int, members: int, seed: int) -> None:
    rand = random.Random(seed)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    with path.open("w", encoding="utf-8", newline="") as file:
        out = csv.writer(file)
        out.writerow(("channel", "external_order_id", "buyer_id", "amount", "paid_at", "store"))
        for i in range(count):
            paid = now - dt.timedelta(seconds=rand.randrange(730 * 86_400))
            cents = rand.randrange(1_000, 200_000)
            buyer = rand.randrange(members)
            out.writerow(
                ("tmall", f"TB{i:010d}", f"tb_{buyer}", f"{cents // 100}.{cents % 100:02d}", paid.isoformat(), "")
            )


def _tags(path: Path, count: int, members: int, seed: int) -> None:
    rand = random.Random(seed)
    per_member = max(1, count // members)
    with path.open("w", encoding="utf-8", newline="") as file:
        file.write("channel,external_id,tag\n")
        written = 0
        for i in range(members):
            take = min(per_member + (1 if i < count - per_member * members else 0), TAGS)
            for tag in rand.sample(range(TAGS), take):
                file.write(f"tmall,tb_{i},bench_tag_{tag}\n")
            written += take
            if written >= count:
                break


def _fresh_database(server: str) -> str:
    from store import migrate
    from store.urls import libpq_url, with_database

    with psycopg.connect(libpq_url(server), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')  # constant name
        conn.execute(f'CREATE DATABASE "{DATABASE}"')
    url = with_database(libpq_url(server), DATABASE)
    migrate.upgrade(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO groups (code, name) VALUES ('importbench', 'import bench')")
        brand_id = conn.execute(
            "INSERT INTO brands (group_id, code, name) SELECT id, %s, 'import bench' FROM groups RETURNING id", (BRAND,)
        ).fetchone()
        assert brand_id is not None
        for rank, code in enumerate(("silver", "gold", "platinum", "diamond")):
            conn.execute(
                "INSERT INTO brand_tiers (brand_id, code, name, rank, threshold) VALUES (%s, %s, %s, %s, %s)",
                (brand_id[0], code, code, rank, rank * 3000),
            )
        conn.execute("INSERT INTO brand_rules (brand_id) VALUES (%s)", brand_id)
        conn.execute(
            "INSERT INTO tag_definitions (brand_id, code, name, category)"
            " SELECT %s, 'bench_tag_' || n, 'bench tag ' || n, 'custom' FROM generate_series(0, %s) n",
            (brand_id[0], TAGS - 1),
        )
    return url


def _timed(argv: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Run a command; its wall time and peak RSS in MB (its own, from wait4)."""
    started = time.monotonic()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.monotonic() - started
    out = process.stdout.read() if process.stdout else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {out}")
    print(out.strip())
    return seconds, usage.ru_maxrss // 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--orders", type=int, default=3_000_000)
    parser.add_argument("--tags", type=int, default=10_000_000)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/omnimember-import-bench"))  # noqa: S108
    parser.add_argument("--keep-files", action="store_true", help="reuse files of the same sizes if present")
    args = parser.parse_args()
    server = os.environ.get("DATABASE_URL")
    if not server:
        raise SystemExit("set DATABASE_URL to a PostgreSQL server (a database is created on it)")
    args.dir.mkdir(parents=True, exist_ok=True)
    files = {
        "members": args.dir / f"members-{args.members}.csv",
        "orders": args.dir / f"orders-{args.orders}.csv",
        "tags": args.dir / f"tags-{args.tags}.csv",
    }
    writers: dict[str, Any] = {
        "members": lambda path: _members(path, args.members),
        "orders": lambda path: _orders(path, args.orders, args.members, 1),
        "tags": lambda path: _tags(path, args.tags, args.members, 2),
    }
    for kind, path in files.items():
        if not (args.keep_files and path.exists()):
            started = time.monotonic()
            writers[kind](path)
            print(f"wrote {path} ({path.stat().st_size / 1e6:,.0f} MB) in {time.monotonic() - started:.0f} s")
    url = _fresh_database(server)
    env = {**os.environ, "DATABASE_URL": url, "COLUMNS": "120"}
    rows = {"members": args.members, "orders": args.orders, "tags": args.tags}
    units = {"members": "members", "orders": "orders", "tags": "assignments"}
    results = []
    for kind, path in files.items():
        command = [sys.executable, "-m", "api", "import", kind, str(path), "--brand", BRAND, "--no-index"]
        seconds, rss = _timed(command, env)
        rate = f"{rows[kind] / seconds:,.0f} {units[kind]}/s"
        results.append(f"{kind}: {rows[kind]:,} {units[kind]} in {seconds:.1f} s = {rate}, peak RSS {rss} MB")
    probe = (
        "import asyncio, sys; from store.imports.index import catch_up; "
        "print(asyncio.run(catch_up(sys.argv[1], sys.argv[2])))"
    )
    seconds, rss = _timed([sys.executable, "-c", probe, url, BRAND], env)
    results.append(f"audience index catching up with all of it: {seconds:.1f} s, peak RSS {rss} MB")
    print("\n".join(results))


if __name__ == "__main__":
    main()

"""CPU time of the CLI's quick commands (issue 16, item 9: well under a second each).

    .venv/bin/python bench/cli_start.py [--database-url URL] [--runs 11]

Runs `omnimember --help`, `omnimember config` and `omnimember audience count` (against a throwaway
migrated database with one brand) --runs times each, every run a new process, and prints the
median and least user+system CPU seconds of the process (a busy machine disturbs CPU time less
than wall time, printed beside it). tests/test_cli_start.py checks what the commands import.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg
from inprocess import DEFAULT_URL, throwaway_database

from store.brands import create_brand

OMNIMEMBER = str(Path(sys.executable).with_name("omnimember"))
CEILING = 1.0  # CPU seconds: "well under a second"
BRAND = "clistart"


def cpu_of(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one run of ``argv``, which must succeed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr}")
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


async def add_brand(url: str) -> None:
    async with await psycopg.AsyncConnection.connect(url) as conn, conn.transaction():
        await create_brand(conn, code=BRAND, name="CLI start", group_code="clistart_g")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", DEFAULT_URL))
    parser.add_argument("--runs", type=int, default=11)
    args = parser.parse_args()
    print(f"$ .venv/bin/python bench/cli_start.py --runs {args.runs}")
    with throwaway_database(args.database_url, "cli_start") as url:
        asyncio.run(add_brand(url))
        env = {**os.environ, "DATABASE_URL": url}
        commands = {
            "omnimember --help": [OMNIMEMBER, "--help"],
            "omnimember config": [OMNIMEMBER, "config"],
            "omnimember audience count": [OMNIMEMBER, "audience", "count", "tier:silver", "--brand", BRAND],
        }
        worst = 0.0
        for title, argv in commands.items():
            runs = [cpu_of(argv, env) for _ in range(args.runs)]
            cpu = statistics.median(c for c, _ in runs)
            worst = max(worst, cpu)
            print(
                f"{title}: CPU median {cpu:.3f} s (least {min(c for c, _ in runs):.3f} s), "
                f"wall median {statistics.median(w for _, w in runs):.3f} s"
            )
    print(f"under {CEILING:g} s of CPU each: {'met' if worst < CEILING else 'NOT met'} (worst median {worst:.3f} s)")


if __name__ == "__main__":
    main()

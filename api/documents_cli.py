"""`omnimember documents register|list|show|remove`: persisted (trusted) documents, on DATABASE_URL
(or the embedded database). See docs/persisted-documents.md."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from api.settings import Settings

if TYPE_CHECKING:
    from graphql import DocumentNode, GraphQLError

    from store.access.documents import NewDocument

documents = typer.Typer(
    help="Persisted documents: register the operations trusted keys may run, list, show, remove.",
    no_args_is_help=True,
)
_SHORTEST_PREFIX = 8


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


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(1)


@documents.command()
def register(
    files: Annotated[
        list[Path],
        typer.Argument(
            metavar="FILE",
            exists=True,
            dir_okay=False,
            readable=True,
            help="GraphQL files; fragments may be in any of them.",
        ),
    ],
    name: Annotated[
        str | None,
        typer.Option(show_default="the file of each operation", help="What to record as their source."),
    ] = None,
) -> None:
    """Register every operation of FILES, each as its own document: the operation with the fragments it
    uses, in canonical print, found by its SHA-256. Nothing is registered unless all are valid."""
    if name is not None and not 1 <= len(name) <= 500:
        raise typer.BadParameter("a source name is 1-500 characters", param_hint="--name")
    new = _documents(files, name)

    async def work(conn: Any) -> Any:
        from store.access.documents import register as register_one

        return [await register_one(conn, document) for document in new]

    for row, created in _run(work):
        what = f"{row['operation_type']} {row['operation_name'] or '(anonymous)'}"
        state = "registered" if created else f"already registered (from {row['source']})"
        typer.echo(f"{row['sha256']}  {what}  {state}")


def _documents(files: list[Path], name: str | None) -> list[NewDocument]:
    """Each operation of the files as a document, or exit naming every problem with file:line:column."""
    from graphql import DocumentNode, GraphQLSyntaxError, OperationDefinitionNode, Source, parse

    from api.persisted import operations
    from store.access.documents import NewDocument

    definitions: list[Any] = []
    for path in files:
        try:
            parsed = parse(Source(path.read_text(encoding="utf-8"), str(path)))
        except GraphQLSyntaxError as error:
            raise _fail(_where(error) + error.message) from None
        except UnicodeDecodeError as error:
            raise _fail(f"{path} is not UTF-8 text ({error.reason} at byte {error.start})") from None
        definitions.extend(parsed.definitions)
    merged = DocumentNode(definitions=tuple(definitions))
    problems = _problems(merged)
    if problems:
        raise _fail("nothing registered:\n  " + "\n  ".join(problems))
    found = operations(merged)
    if not found:
        raise _fail("the files hold no operation (only fragments?)")
    # operations() keeps the document's order: the n-th operation definition is the n-th operation.
    sources = [
        name or (d.loc.source.name if d.loc else str(files[0]))
        for d in merged.definitions
        if isinstance(d, OperationDefinitionNode)
    ]
    return [NewDocument(op.text, op.type, op.name, source) for op, source in zip(found, sources, strict=True)]


def _problems(merged: DocumentNode) -> list[str]:
    """What keeps the operations from being registered: the schema's validation over all the files
    together (a fragment unused by these operations is no problem), then each operation's limits."""
    from graphql import NoUnusedFragmentsRule, specified_rules, validate

    from api.persisted import operations
    from schema.root import build_schema

    schema = build_schema(introspection=True, suggestions=True)
    rules = [rule for rule in specified_rules if rule is not NoUnusedFragmentsRule]
    problems = [_where(error) + error.message for error in validate(schema._schema, merged, rules)]
    if problems:
        return problems
    for operation in operations(merged):
        for error in schema.documents.check(operation.text).errors:
            problems.append(f"operation {operation.name or '(anonymous)'}: {error.message}")
    return problems


def _where(error: GraphQLError) -> str:
    node = error.nodes[0] if error.nodes else None
    source = error.source or (node.loc.source if node is not None and node.loc else None)
    locations = error.locations or []
    if source is None or not locations:
        return ""
    return f"{source.name}:{locations[0].line}:{locations[0].column}: "


@documents.command("list")
def list_command() -> None:
    """Every registered document: hash, operation, source, when. `show` prints a document's text."""
    from store.access.documents import list_documents

    async def work(conn: Any) -> Any:
        return await list_documents(conn)

    for row in _run(work):
        what = f"{row['operation_type']} {row['operation_name'] or '(anonymous)'}"
        typer.echo(f"{row['sha256']}  {what}  {row['source']}  {row['registered_at']:%Y-%m-%d %H:%M}")


async def _one_hash(conn: Any, prefix: str) -> str:
    from store.access.documents import hashes_starting

    found = await hashes_starting(conn, prefix.lower())
    if len(found) != 1:
        raise _fail(f"{len(found) or 'no'} registered documents have a hash starting with {prefix!r}")
    return found[0]


def _prefix(value: str) -> str:
    if len(value) < _SHORTEST_PREFIX or not all(c in "0123456789abcdefABCDEF" for c in value):
        raise typer.BadParameter(f"a document's hash, or its first {_SHORTEST_PREFIX} or more hex digits")
    return value


@documents.command()
def show(
    sha256: Annotated[
        str, typer.Argument(metavar="HASH", help="The document's hash (or its first 8+ hex digits).", callback=_prefix)
    ],
) -> None:
    """Print a registered document's text: what a client sends (or sends the hash of)."""
    from store.access.documents import body_of

    async def work(conn: Any) -> Any:
        return await body_of(conn, await _one_hash(conn, sha256))

    typer.echo(_run(work))


@documents.command()
def remove(
    sha256: Annotated[
        str, typer.Argument(metavar="HASH", help="The document's hash (or its first 8+ hex digits).", callback=_prefix)
    ],
) -> None:
    """Remove a registered document: keys held to trusted documents can no longer run it (within seconds)."""
    from store.access.documents import remove as remove_one

    async def work(conn: Any) -> Any:
        return await remove_one(conn, await _one_hash(conn, sha256))

    row = _run(work)
    typer.echo(f"{row['sha256']}  {row['operation_type']} {row['operation_name'] or '(anonymous)'}  removed")

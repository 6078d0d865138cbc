"""Registered (trusted) documents: one GraphQL operation each, found by the SHA-256 of its text.

`omnimember documents register` writes them (api.documents_cli); /graphql reads them by hash
(api.persisted). The database checks that a row's hash is its text's, so whoever finds a row by
hash runs exactly the text that was registered under it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from psycopg import AsyncConnection
from sqlalchemy.dialects.postgresql import insert

from store.sql import Query, Row
from store.tables import persisted_documents

_COLUMNS = ("sha256", "body", "operation_type", "operation_name", "source")
_summary = (
    persisted_documents.c.sha256,
    persisted_documents.c.operation_type,
    persisted_documents.c.operation_name,
    persisted_documents.c.source,
    persisted_documents.c.registered_at,
)


def sha256_hex(text: str) -> str:
    """The hash documents go by: SHA-256 of the UTF-8 text, 64 lower-case hex digits."""
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class NewDocument:
    body: str
    operation_type: str  # query, mutation or subscription
    operation_name: str | None
    source: str  # the file it came from, or the name given

    @property
    def sha256(self) -> str:
        return sha256_hex(self.body)


# One statement, so a concurrent `remove` cannot fall between "it exists" and "here it is": a known
# hash updates nothing of its row (the first registration's source and time stay) and the row comes
# back all the same; `xmax = 0` holds only for a row this statement inserted (PostgreSQL's marker).
_register = Query(
    insert(persisted_documents)
    .values({name: sa.bindparam(name) for name in _COLUMNS})
    .on_conflict_do_update(index_elements=["sha256"], set_={"sha256": sa.text("excluded.sha256")})
    .returning(*_summary, sa.literal_column("xmax = 0").label("new"))
)
_body = Query(sa.select(persisted_documents.c.body).where(persisted_documents.c.sha256 == sa.bindparam("sha256")))
_all = Query(sa.select(*_summary).order_by(persisted_documents.c.registered_at, persisted_documents.c.sha256))
_matching = Query(
    sa.select(persisted_documents.c.sha256).where(persisted_documents.c.sha256.startswith(sa.bindparam("prefix")))
)
_delete = Query(
    sa.delete(persisted_documents).where(persisted_documents.c.sha256 == sa.bindparam("sha256")).returning(*_summary)
)


async def register(conn: AsyncConnection[Any], document: NewDocument) -> tuple[Row, bool]:
    """The document's row, and whether it is new (False: the same text was registered before, and
    the row is that first registration's)."""
    row = await _register.one(conn, **{name: getattr(document, name) for name in _COLUMNS})
    assert row is not None  # an upsert returns its row
    new = bool(row.pop("new"))
    return row, new


async def body_of(conn: AsyncConnection[Any], sha256: str) -> str | None:
    """The registered text with this hash, or None."""
    body: str | None = await _body.scalar(conn, sha256=sha256)
    return body


async def list_documents(conn: AsyncConnection[Any]) -> list[Row]:
    """Every registered document without its text, oldest first."""
    return await _all.all(conn)


async def hashes_starting(conn: AsyncConnection[Any], prefix: str) -> list[str]:
    """The hashes of registered documents starting with ``prefix`` (hex digits only)."""
    if not all(c in "0123456789abcdef" for c in prefix):
        raise ValueError(f"a document hash is hexadecimal, not {prefix!r}")
    return [row["sha256"] for row in await _matching.all(conn, prefix=prefix)]


async def remove(conn: AsyncConnection[Any], sha256: str) -> Row | None:
    """The removed document, or None when no document has this hash."""
    return await _delete.one(conn, sha256=sha256)

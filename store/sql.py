"""Run SQLAlchemy Core statements on psycopg connections, compiled once.

The read path serves thousands of requests a second, so statements are compiled to SQL text at
import time (bound parameters stay ``%(name)s`` placeholders) and psycopg prepares them on the
server after a few executions. User input only ever travels as a bound parameter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import sqlalchemy as sa
from psycopg import AsyncConnection
from psycopg.rows import dict_row
from sqlalchemy.dialects.postgresql import psycopg as psycopg_dialect
from sqlalchemy.sql import ClauseElement

Row = dict[str, Any]
# A literal zero rather than a bound parameter: partial indexes ("WHERE remaining > 0") stay usable
# by prepared statements only when the predicate is a constant.
ZERO: sa.ColumnClause[int] = sa.literal_column("0")
DIALECT = psycopg_dialect.dialect()  # type: ignore[no-untyped-call]


class Query:
    """A Core statement compiled once for the psycopg dialect."""

    __slots__ = ("_constants", "sql")
    # Statements executed by this process: tests use it to prove loaders batch (no N+1).
    executions: ClassVar[int] = 0

    def __init__(self, statement: ClauseElement) -> None:
        compiled = statement.compile(dialect=DIALECT)
        self.sql = str(compiled)
        # Values SQLAlchemy bound itself (literals in the statement); callers supply the rest.
        self._constants = {k: v for k, v in compiled.params.items() if v is not None}

    def _params(self, params: dict[str, Any]) -> dict[str, Any]:
        Query.executions += 1
        return {**self._constants, **params} if self._constants else params

    async def all(self, conn: AsyncConnection[Any], **params: Any) -> list[Row]:
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(self.sql, self._params(params))
            return await cur.fetchall()

    async def one(self, conn: AsyncConnection[Any], **params: Any) -> Row | None:
        async with conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(self.sql, self._params(params))
            return await cur.fetchone()

    async def scalar(self, conn: AsyncConnection[Any], **params: Any) -> Any:
        async with conn.cursor() as cur:
            await cur.execute(self.sql, self._params(params))
            row = await cur.fetchone()
            return None if row is None else row[0]

    async def run(self, conn: AsyncConnection[Any], **params: Any) -> int:
        """Execute for effect; return the number of rows touched."""
        async with conn.cursor() as cur:
            await cur.execute(self.sql, self._params(params))
            return cur.rowcount


def group_by(rows: Sequence[Row], key: str, keys: Sequence[Any]) -> list[list[Row]]:
    """Bucket rows by ``row[key]`` in the order of ``keys`` (a DataLoader batch result)."""
    buckets: dict[Any, list[Row]] = {k: [] for k in keys}
    for row in rows:
        buckets[row[key]].append(row)
    return [buckets[k] for k in keys]


def index_by(rows: Sequence[Row], key: str, keys: Sequence[Any]) -> list[Row | None]:
    """One row or None per key, in the order of ``keys``."""
    found: Mapping[Any, Row] = {row[key]: row for row in rows}
    return [found.get(k) for k in keys]

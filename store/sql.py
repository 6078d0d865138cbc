"""Run SQLAlchemy Core statements on psycopg connections, compiled once.

The read path serves thousands of requests a second, so statements are compiled to SQL text at
import time (bound parameters stay ``%(name)s`` placeholders) and psycopg prepares them on the
server after a few executions. User input only ever travels as a bound parameter.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from psycopg import AsyncConnection, AsyncRawCursor
from psycopg.rows import dict_row
from sqlalchemy.dialects.postgresql import psycopg as psycopg_dialect
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

Row = dict[str, Any]
# A literal zero rather than a bound parameter: partial indexes ("WHERE remaining > 0") stay usable
# by prepared statements only when the predicate is a constant.
ZERO: sa.ColumnClause[int] = sa.literal_column("0")
DIALECT = psycopg_dialect.dialect()  # type: ignore[no-untyped-call]
_NUMBERED = psycopg_dialect.dialect(paramstyle="numeric_dollar")  # type: ignore[no-untyped-call]


@dataclass
class StatementCount:
    value: int = 0


_COUNT: ContextVar[StatementCount | None] = ContextVar("statement_count", default=None)


@contextmanager
def counted_statements() -> Iterator[StatementCount]:
    """Count the statements run inside the block by this task and the tasks and threads it starts
    (tests use it to prove loaders batch: no N+1). A context variable rather than a process-wide
    counter: the app's background loops (the index applier, the lifecycle pass) run statements of
    their own at any moment, and must not land in a request's count."""
    count = StatementCount()
    token = _COUNT.set(count)
    try:
        yield count
    finally:
        _COUNT.reset(token)


class Query:
    """A Core statement compiled once for the psycopg dialect."""

    __slots__ = ("_binary", "_constants", "_names", "_numbered", "sql")

    def __init__(self, statement: ClauseElement, *, binary: bool = False) -> None:
        # Results in PostgreSQL's binary format: for bulk bytea (the index's packed facts), which the
        # text format sends hex-encoded, twice the bytes, encoded and decoded on either side.
        self._binary = binary
        compiled = statement.compile(dialect=DIALECT)
        self.sql = str(compiled)  # %(name)s placeholders, for callers with their own cursor
        # Values SQLAlchemy bound itself (literals in the statement); callers supply the rest.
        self._constants = {k: v for k, v in compiled.params.items() if v is not None}
        # What the methods below run: the same statement with $n placeholders, on psycopg's raw
        # cursors, which send it as it is. A %(name)s query is re-parsed on every execution once it
        # is longer than 4 KB (psycopg caches only shorter ones): 0.7 ms of CPU per recorded order.
        numbered = statement.compile(dialect=_NUMBERED)
        assert isinstance(numbered, SQLCompiler)
        self._numbered = str(numbered)
        self._names = tuple(numbered.positiontup or ())

    def _values(self, params: dict[str, Any]) -> tuple[Any, ...]:
        merged = self._params(params)
        return tuple(merged[name] for name in self._names)

    def _params(self, params: dict[str, Any]) -> dict[str, Any]:
        count = _COUNT.get()
        if count is not None:
            count.value += 1
        return {**self._constants, **params} if self._constants else params

    async def all(self, conn: AsyncConnection[Any], **params: Any) -> list[Row]:
        async with AsyncRawCursor(conn, row_factory=dict_row) as cur:
            await cur.execute(self._numbered, self._values(params), binary=self._binary)
            return await cur.fetchall()

    async def one(self, conn: AsyncConnection[Any], **params: Any) -> Row | None:
        async with AsyncRawCursor(conn, row_factory=dict_row) as cur:
            await cur.execute(self._numbered, self._values(params), binary=self._binary)
            return await cur.fetchone()

    async def scalar(self, conn: AsyncConnection[Any], **params: Any) -> Any:
        async with AsyncRawCursor(conn) as cur:
            await cur.execute(self._numbered, self._values(params), binary=self._binary)
            row = await cur.fetchone()
            return None if row is None else row[0]

    async def explain(self, conn: AsyncConnection[Any], **params: Any) -> dict[str, Any]:
        """The plan PostgreSQL ran the statement with (EXPLAIN ANALYZE, as JSON): it does run it."""
        async with AsyncRawCursor(conn) as cur:
            await cur.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + self._numbered, self._values(params))
            row = await cur.fetchone()
        assert row is not None
        plan: dict[str, Any] = row[0][0]["Plan"]
        return plan

    async def run(self, conn: AsyncConnection[Any], **params: Any) -> int:
        """Execute for effect; return the number of rows touched."""
        async with AsyncRawCursor(conn) as cur:
            await cur.execute(self._numbered, self._values(params))
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

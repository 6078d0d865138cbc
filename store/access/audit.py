"""The audit log: who did what to which ids. Every mutation and every read of personal data in
clear gets a record; rows hold ids and a summary, never personal data itself.

A record is written once its operation has run and before the caller gets the answer, by
`AuditWriter`, which commits the records of concurrent requests together (group commit: one insert
per round trip however many requests wait, so auditing costs a mutation about one round trip of
latency and almost no throughput). A crash between an operation's commit and its record's is
possible and leaves an operation unrecorded; that window is one round trip.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb

from store.access.principals import Principal
from store.sql import Query, Row
from store.tables import audit_log

log = logging.getLogger(__name__)
_COLUMNS = ("key_id", "key_name", "role", "operation", "brand_id", "target_ids", "summary", "request_id")
_append = Query(
    sa.insert(audit_log).values({name: sa.bindparam(name, type_=audit_log.c[name].type) for name in _COLUMNS})
)
_page = Query(
    sa.select(*audit_log.c)
    .where(
        audit_log.c.brand_id == sa.any_(sa.bindparam("brand_ids")),
        audit_log.c.id < sa.func.coalesce(sa.bindparam("before", sa.BigInteger), 9223372036854775807),
    )
    .order_by(audit_log.c.id.desc())
    .limit(sa.bindparam("limit"))
)


def entry(
    principal: Principal,
    *,
    operation: str,
    brand_id: int | None,
    target_ids: Sequence[int | str],
    summary: Mapping[str, Any],
    request_id: str,
) -> dict[str, Any]:
    return {
        "key_id": principal.key_id,
        "key_name": principal.key_name,
        "role": str(principal.role),
        "operation": operation,
        "brand_id": brand_id,
        "target_ids": [str(i) for i in target_ids],
        "summary": Jsonb(dict(summary)),
        "request_id": request_id,
    }


class AuditWriter:
    """Appends records, committing those of concurrent callers in one statement."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._waiting: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._writing: asyncio.Task[None] | None = None

    async def append(self, record: dict[str, Any]) -> None:
        """Returns once the record is committed; raises if it could not be."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append((record, done))
        if self._writing is None or self._writing.done():
            self._writing = asyncio.create_task(self._write())
        await asyncio.shield(done)

    async def _write(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting, []
            try:
                async with self._pool.connection() as conn, conn.cursor() as cur:
                    await cur.executemany(_append.sql, [record for record, _ in batch])
            except Exception as error:  # every waiter hears of it; the writer goes on with the next batch
                log.error("audit records not written (%d): %s", len(batch), error)
                for _, done in batch:
                    if not done.done():
                        done.set_exception(error)
                continue
            for _, done in batch:
                if not done.done():
                    done.set_result(None)


async def page(conn: AsyncConnection[Any], brand_ids: Sequence[int], before: int | None, limit: int) -> list[Row]:
    """Newest first, ids below ``before``."""
    return await _page.all(conn, brand_ids=list(brand_ids), before=before, limit=limit)

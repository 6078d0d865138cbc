"""The audit log: who did what to which ids. Every mutation, every export and every read of personal
data in clear gets a record; rows hold ids and a summary, never personal data itself.

Requests queue their records (`AuditWriter.append`, no waiting) and one task writes whatever is
queued every `INTERVAL` seconds, with COPY in one transaction: a posting pays for its record with a
few microseconds of Python, not with a round trip and a commit of its own (measured: awaiting a
group-committed insert per mutation cost the points ledger a quarter to a half of its postings a
second). What that buys is a window: records queued in the last `INTERVAL` seconds before a crash
are lost (a clean shutdown writes them, api.app); an operation is never recorded without having
run. `auditLog` writes what is queued before it reads, so an admin sees every record up to its own
request.
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
INTERVAL = 0.01  # seconds between writes of the queued records
_COLUMNS = ("key_id", "key_name", "role", "operation", "brand_id", "target_ids", "summary", "request_id")
_TYPES = ["int8", "text", "text", "text", "int8", "text[]", "jsonb", "text"]
_COPY = f"COPY audit_log ({', '.join(_COLUMNS)}) FROM STDIN"
Record = tuple[Any, ...]
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
) -> Record:
    """A record, its values in `_COLUMNS` order."""
    return (
        principal.key_id,
        principal.key_name,
        str(principal.role),
        operation,
        brand_id,
        [str(i) for i in target_ids],
        Jsonb(dict(summary)),
        request_id,
    )


class AuditWriter:
    """Queues records and writes them in batches (see the module's docstring)."""

    def __init__(self, pool: Any, interval: float = INTERVAL) -> None:
        self._pool = pool
        self._interval = interval
        self._queued: list[Record] = []
        self._writing = asyncio.Lock()

    def append(self, record: Record) -> None:
        self._queued.append(record)

    async def run(self) -> None:
        """Write what is queued every `interval` seconds, until cancelled."""
        while True:
            await asyncio.sleep(self._interval)
            if self._queued:
                try:
                    await self.flush()
                except Exception as error:  # kept queued: the next pass tries again
                    log.error("audit records not written yet (%d queued): %s", len(self._queued), error)

    async def flush(self) -> None:
        """Write every record queued so far; on failure they stay queued, in order."""
        async with self._writing:
            batch, self._queued = self._queued, []
            if not batch:
                return
            try:
                async with (
                    self._pool.connection() as conn,
                    conn.transaction(),
                    conn.cursor().copy(_COPY) as copy,
                ):
                    copy.set_types(_TYPES)
                    for record in batch:
                        await copy.write_row(record)
            except BaseException:
                self._queued[:0] = batch
                raise


async def page(conn: AsyncConnection[Any], brand_ids: Sequence[int], before: int | None, limit: int) -> list[Row]:
    """Newest first, ids below ``before``."""
    return await _page.all(conn, brand_ids=list(brand_ids), before=before, limit=limit)

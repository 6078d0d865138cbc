"""How far an import got: one row per brand, kind and file (by SHA-256), written in each chunk's
transaction, so that it names exactly the chunks committed and a rerun resumes after them."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from psycopg import AsyncConnection
from psycopg.types.json import Jsonb
from sqlalchemy.dialects.postgresql import BYTEA, JSONB, insert

from store.sql import Query
from store.tables import import_checkpoints

_KEY = sa.and_(
    import_checkpoints.c.brand_id == sa.bindparam("brand_id"),
    import_checkpoints.c.kind == sa.bindparam("kind"),
    import_checkpoints.c.file_sha256 == sa.bindparam("file_sha256", type_=BYTEA),
)
_read = Query(
    sa.select(import_checkpoints.c.line, import_checkpoints.c.counts, import_checkpoints.c.finished_at).where(_KEY)
)
_upsert = insert(import_checkpoints).values(
    brand_id=sa.bindparam("brand_id"),
    kind=sa.bindparam("kind"),
    file_sha256=sa.bindparam("file_sha256", type_=BYTEA),
    file_name=sa.bindparam("file_name"),
    line=sa.bindparam("line", type_=sa.BigInteger),
    counts=sa.bindparam("counts", type_=JSONB),
)
_save = Query(
    _upsert.on_conflict_do_update(
        index_elements=[import_checkpoints.c.brand_id, import_checkpoints.c.kind, import_checkpoints.c.file_sha256],
        set_={
            "file_name": _upsert.excluded.file_name,
            "line": _upsert.excluded.line,
            "counts": _upsert.excluded.counts,
            "updated_at": sa.func.now(),
            "finished_at": sa.null(),
        },
    )
)
_finish = Query(sa.update(import_checkpoints).where(_KEY).values(finished_at=sa.func.now(), updated_at=sa.func.now()))
# One import of a file at a time: a second one would do the same work again and wait on its locks.
_try_lock = Query(
    sa.select(
        sa.func.pg_try_advisory_lock(
            sa.func.hashtextextended(
                sa.literal("omnimember import ")
                + sa.cast(sa.bindparam("brand_id", type_=sa.BigInteger), sa.Text)
                + " "
                + sa.bindparam("kind", type_=sa.Text)
                + " "
                + sa.func.encode(sa.bindparam("file_sha256", type_=BYTEA), "hex"),
                0,
            )
        )
    )
)


@dataclass(frozen=True, slots=True)
class FileKey:
    brand_id: int
    kind: str
    file_sha256: bytes

    def params(self) -> dict[str, Any]:
        return {"brand_id": self.brand_id, "kind": self.kind, "file_sha256": self.file_sha256}


@dataclass(frozen=True, slots=True)
class Checkpoint:
    line: int  # the first line of the last record committed (0: none)
    counts: Counter[str]
    finished: bool


LOCK_WAIT = 3.0  # seconds a new import waits for the file's lock before refusing


async def lock(conn: AsyncConnection[Any], key: FileKey, wait: float = LOCK_WAIT) -> bool:
    """Hold the file's import lock for the session; False when another session still holds it after
    `wait` seconds. Waiting covers an interrupted import's session: its server process releases the
    lock only once it has noticed the client went away, a moment after (found in the suite: a resume
    right after an interruption was refused as "another import of this file is running")."""
    deadline = time.monotonic() + wait
    while not await _try_lock.scalar(conn, **key.params()):
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def read(conn: AsyncConnection[Any], key: FileKey) -> Checkpoint | None:
    row = await _read.one(conn, **key.params())
    if row is None:
        return None
    return Checkpoint(row["line"], Counter(row["counts"]), row["finished_at"] is not None)


async def save(conn: AsyncConnection[Any], key: FileKey, file_name: str, line: int, counts: Counter[str]) -> None:
    await _save.run(conn, **key.params(), file_name=file_name, line=line, counts=Jsonb(dict(counts)))


async def finish(conn: AsyncConnection[Any], key: FileKey) -> None:
    await _finish.run(conn, **key.params())

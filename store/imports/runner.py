"""Running an import: the file read, checked and merged chunk by chunk, each in one transaction.

A worker thread reads and checks the next chunk (Python's share of the work: parsing, hashing and
encrypting phones, formatting COPY text) while the database merges the current one, so the two
cores work at once. Each chunk commits with its checkpoint and its audit record; its rejects are
written just before, so a crash leaves whole chunks only and a rerun resumes after the last one.
Rows already loaded change nothing when loaded again (each kind's merge compares them to what is
there), so running a file twice, or two files that overlap, is safe.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import sqlalchemy as sa
from psycopg import AsyncConnection, errors, sql
from psycopg.types.json import Jsonb

from store.audiences.deltas import REBUILD_OVER
from store.brands import brand_by_code
from store.imports import checkpoints, triggers
from store.imports.checkpoints import FileKey
from store.imports.files import Columns, FileError, Format, Record, Source, guess_format, sha256_of
from store.imports.members import MemberImport
from store.imports.orders import OrderImport
from store.imports.rejects import RejectFile
from store.imports.rows import Reject
from store.imports.staged import Merged, Staged
from store.imports.tags import TagImport
from store.members.phones import PhoneVault
from store.sql import Query
from store.tables import IMPORT_KINDS, audience_changes, audit_log
from store.transactions import ATTEMPTS, pause
from store.urls import libpq_url

# Rows per chunk (one transaction each): large enough that a statement's fixed cost vanishes,
# small enough that a chunk's rows and COPY text stay a few tens of megabytes.
CHUNK_ROWS = {"members": 50_000, "orders": 50_000, "tags": 200_000}
# Called with a stage ("hashing", "reading", "merging"), how far it is and its total when known.
Progress = Callable[[str, int, int | None], None]
# Without triggers, past this many rows the chunks ask for a rebuild of the brand's index (member 0)
# instead of queueing their members: the applier would rebuild anyway (past REBUILD_OVER queued
# members), and queueing millions of rows costs the import and the applier's memory (16 million rows
# of a 1M-member import: 4 GB to drain). Every chunk asks, so a rebuild that ran mid-import is not
# the last word.
_queue_rebuild = Query(sa.insert(audience_changes).values(brand_id=sa.bindparam("brand_id"), member_id=0))
_RETRIED = (errors.UniqueViolation, errors.DeadlockDetected, errors.SerializationFailure)
_audit = Query(
    sa.insert(audit_log).values(
        key_name="omnimember import",
        role="admin",
        operation=sa.bindparam("operation"),
        brand_id=sa.bindparam("brand_id"),
        summary=sa.bindparam("summary"),
        request_id=sa.bindparam("request_id"),
    )
)


class Kind(Protocol):
    kind: str
    columns: Columns
    tables: tuple[str, ...]  # the brand's tables its merges read and grow (see `_Load.run`)

    async def prepare(self, conn: AsyncConnection[Any]) -> None: ...

    def stage(self, records: list[Record]) -> Staged: ...

    def close(self) -> None: ...

    async def merge(self, conn: AsyncConnection[Any], staged: Staged, queue: bool) -> Merged:
        """Merge a chunk in the caller's transaction; with ``queue``, also queue the members it
        changed for the audience index (the triggers do not run: `store.imports.triggers`)."""


@dataclass(frozen=True, slots=True)
class Report:
    kind: str
    brand: str
    counts: Counter[str]  # rows by outcome, rejected included, over every run of this file
    rejects: Path | None  # the reject file, when a row was rejected
    resumed_after: int  # the line a resumed import read on from (0: from the start)
    finished_before: bool  # the file had been imported completely already: nothing was done
    seconds: float

    @property
    def loaded(self) -> int:
        """Rows that were loaded or found already loaded: everything but the rejects."""
        return sum(self.counts.values()) - self.counts["rejected"]


def new_kind(kind: str, url: str, vault: PhoneVault, brand_id: int) -> Kind:
    if kind == "members":
        return MemberImport(vault, brand_id)
    if kind == "orders":
        return OrderImport(url, brand_id)
    if kind == "tags":
        return TagImport(brand_id)
    raise FileError(f"unknown kind {kind!r}: one of {', '.join(IMPORT_KINDS)}")


def _ignore(stage: str, done: int, total: int | None) -> None:
    pass


async def run_import(
    url: str,
    vault: PhoneVault,
    *,
    brand: str,
    kind: str,
    path: Path,
    fmt: Format | None = None,
    rejects: Path | None = None,
    chunk_rows: int | None = None,
    restart: bool = False,
    progress: Progress = _ignore,
    skip_triggers: bool = True,
) -> Report:
    """Import ``path`` into the brand; resumes an interrupted import of the same file unless
    ``restart``. Chunks merge without row triggers where `store.imports.triggers` finds that safe,
    unless ``skip_triggers`` is False. Raises FileError (nothing loaded) or DomainError (UNKNOWN_BRAND)."""
    started = time.monotonic()
    if not await asyncio.to_thread(path.is_file):
        raise FileError(f"{path}: no such file")
    async with await AsyncConnection.connect(libpq_url(url), autocommit=True) as conn:
        brand_row = await brand_by_code(conn, brand)
        loader = new_kind(kind, url, vault, brand_row["id"])
        source = Source(path, fmt or guess_format(path), loader.columns)
        try:
            size = source.size
            digest = await asyncio.to_thread(sha256_of, path, _counter(progress, "hashing", size))
            key = FileKey(brand_row["id"], kind, digest)
            if not await checkpoints.lock(conn, key):
                raise FileError(f"{path}: another import of this file into {brand} is running")
            checkpoint = None if restart else await checkpoints.read(conn, key)
            counts = Counter(checkpoint.counts) if checkpoint else Counter[str]()
            reject_path = rejects or path.with_name(path.name + ".rejects.csv")
            if checkpoint is not None and checkpoint.finished:
                return Report(kind, brand, counts, _existing(reject_path), 0, True, time.monotonic() - started)
            after = checkpoint.line if checkpoint else 0
            reject_file = RejectFile(reject_path, keep_through=after)
            try:
                await loader.prepare(conn)
                fast = skip_triggers and await triggers.may_skip(conn)
                load = _Load(conn, loader, key, path, reject_file, counts, progress, fast)
                await load.run(source, after, chunk_rows or CHUNK_ROWS[kind])
                await checkpoints.finish(conn, key)
            finally:
                reject_file.close()
        finally:
            source.close()
            loader.close()
    seconds = time.monotonic() - started
    return Report(kind, brand, counts, _existing(reject_path), after, False, seconds)


def _existing(path: Path) -> Path | None:
    return path if path.exists() else None


def _counter(progress: Progress, stage: str, total: int) -> Callable[[int], None]:
    done = 0

    def advance(amount: int) -> None:
        nonlocal done
        done += amount
        progress(stage, done, total)

    return advance


class _Load:
    """One run over a file's chunks (see the module docstring)."""

    def __init__(
        self,
        conn: AsyncConnection[Any],
        loader: Kind,
        key: FileKey,
        path: Path,
        rejects: RejectFile,
        counts: Counter[str],
        progress: Progress,
        skip_triggers: bool,
    ) -> None:
        self._conn = conn
        self._loader = loader
        self._key = key
        self._path = path
        self._rejects = rejects
        self.counts = counts  # updated in place, chunk by chunk
        self._progress = progress
        self._skip_triggers = skip_triggers
        self._merged_rows = 0  # this run's, so far

    async def run(self, source: Source, after: int, size: int) -> None:
        chunks = _chunks(source.records(after), size)

        def produce() -> tuple[list[Record], Staged] | None:
            records = next(chunks, None)
            return None if records is None else (records, self._loader.stage(records))

        loop = asyncio.get_running_loop()
        done = chunks_done = 0
        with ThreadPoolExecutor(1, thread_name_prefix="import-reader") as reader:
            pending = loop.run_in_executor(reader, produce)
            while (chunk := await pending) is not None:
                pending = loop.run_in_executor(reader, produce)  # the next chunk, while this one merges
                self._progress("reading", source.lines.bytes_read, source.size)
                records, staged = chunk
                await self._commit(records, staged)
                done += len(records)
                chunks_done += 1
                if chunks_done & (chunks_done - 1) == 0:
                    await self._analyze()
                self._progress("merging", done, None)
            self._progress("reading", source.size, source.size)

    async def _analyze(self) -> None:
        """Fresh statistics for the tables the merges grow, after chunks 1, 2, 4, 8...: planned with
        those of a table a tenth of its size (autovacuum lags a bulk load), a merge's join with its
        staging table became a nested loop over both, quadratic (minutes for one chunk of 50,000)."""
        statement = sql.SQL("ANALYZE {}").format(sql.SQL(", ").join(map(sql.Identifier, self._loader.tables)))
        await self._conn.execute(statement)

    async def _commit(self, records: list[Record], staged: Staged) -> None:
        """Merge one chunk with its checkpoint, audit record and rejects, retrying the whole chunk
        when a concurrent writer won a race (the merge then sees its rows)."""
        for attempt in range(1, ATTEMPTS + 1):
            mark = self._rejects.mark()
            try:
                async with self._conn.transaction():
                    queue = self._skip_triggers and self._merged_rows + staged.rows <= REBUILD_OVER
                    if self._skip_triggers:
                        await self._conn.execute(triggers.SKIP)
                    merged = await self._loader.merge(self._conn, staged, queue=queue)
                    if self._skip_triggers and not queue:
                        await _queue_rebuild.run(self._conn, brand_id=self._key.brand_id)
                    rejects = _with_text(staged.rejects + merged.rejects, records)
                    chunk = staged.counts + merged.counts + Counter(rejected=len(rejects))  # + drops zeros
                    counts = self.counts + chunk
                    await checkpoints.save(self._conn, self._key, self._path.name, records[-1].line, counts)
                    await self._audit(records, chunk)
                    self._rejects.write(rejects)
            except _RETRIED:
                self._rejects.undo(mark)
                if attempt == ATTEMPTS:
                    raise
                await asyncio.sleep(pause(attempt))
                continue
            except BaseException:
                self._rejects.undo(mark)
                raise
            self.counts.update(chunk)
            self._merged_rows += staged.rows
            return

    async def _audit(self, records: list[Record], chunk: Counter[str]) -> None:
        summary = {
            "file": self._path.name,
            "sha256": self._key.file_sha256.hex(),
            "lines": [records[0].line, records[-1].line],
            **chunk,
        }
        await _audit.run(
            self._conn,
            operation=f"import {self._loader.kind}",
            brand_id=self._key.brand_id,
            summary=Jsonb(summary),
            request_id=f"import-{self._key.file_sha256.hex()[:12]}",
        )


def _chunks(records: Iterator[Record], size: int) -> Iterator[list[Record]]:
    while batch := list(itertools.islice(records, size)):
        yield batch


def _with_text(rejects: list[Reject], records: list[Record]) -> list[Reject]:
    """The rejects in line order, each with its record's text (the database's know only the line)."""
    if any(not reject.text for reject in rejects):
        texts = {record.line: record.text for record in records}
        rejects = [
            reject if reject.text else Reject(reject.line, reject.code, reject.reason, texts.get(reject.line, ""))
            for reject in rejects
        ]
    return sorted(rejects, key=lambda reject: reject.line)

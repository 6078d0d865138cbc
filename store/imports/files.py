"""Reading an import file: CSV with a header, or NDJSON; records with their line numbers.

A file is read as bytes, one line at a time, so that it is never whole in memory, progress can be
told in bytes, and every record keeps its text as written (for the reject file) and the number of
the line it starts on (a CSV record may span lines inside quotes). Values come out as text or None
(an empty CSV cell, a JSON null or a missing key); what they must hold is each kind's business.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

# Spellings the API uses (externalId, paidAt) are accepted for the column names too.
_CAMEL = {
    "externalId": "external_id",
    "displayName": "display_name",
    "externalOrderId": "external_order_id",
    "buyerId": "buyer_id",
    "paidAt": "paid_at",
    "expiresAt": "expires_at",
}


class Format(StrEnum):
    CSV = "csv"
    NDJSON = "ndjson"


class FileError(Exception):
    """The file cannot be imported at all (unreadable, no header, unknown columns): nothing loads."""


@dataclass(frozen=True, slots=True)
class Columns:
    """A kind's columns: those every record must have, then the optional ones, in COPY order."""

    required: tuple[str, ...]
    optional: tuple[str, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return self.required + self.optional


@dataclass(frozen=True, slots=True)
class Record:
    """One record: the line it starts on, its text as written, and its values in `Columns.names`
    order (None when absent). ``problem`` says why it could not be read, when it could not."""

    line: int
    text: str
    values: tuple[str | None, ...]
    problem: str | None = None


def guess_format(path: Path) -> Format:
    suffixes = [suffix.lower() for suffix in path.suffixes]
    if suffixes and suffixes[-1] in (".ndjson", ".jsonl"):
        return Format.NDJSON
    return Format.CSV


def sha256_of(path: Path, progress: Callable[[int], None] | None = None) -> bytes:
    """The file's SHA-256: which file a checkpoint is for."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
            if progress is not None:
                progress(len(block))
    return digest.digest()


def column_name(name: str) -> str:
    stripped = name.strip()
    return _CAMEL.get(stripped, stripped.lower())


class Lines:
    """A binary file's lines decoded as UTF-8, counting bytes read and lines begun, keeping the
    text of the lines since `take` was last called (a record's own text)."""

    def __init__(self, file: IO[bytes]) -> None:
        self._file = file
        self.bytes_read = 0
        self.line = 0  # number of the last line read (1-based)
        self._taken: list[str] = []

    def __iter__(self) -> Iterator[str]:
        for raw in self._file:
            self.bytes_read += len(raw)
            self.line += 1
            text = raw.decode("utf-8", errors="replace")
            if self.line == 1:
                text = text.removeprefix("\ufeff")  # a byte order mark that spreadsheets write
            self._taken.append(text)
            yield text

    def take(self) -> str:
        text = "".join(self._taken).rstrip("\r\n")
        self._taken.clear()
        return text


class Source:
    """The records of one file, after the header (CSV), from the first line past ``after``."""

    def __init__(self, path: Path, fmt: Format, columns: Columns) -> None:
        self.path = path
        self.format = fmt
        self.columns = columns
        self.size = path.stat().st_size
        self._file: IO[bytes] = path.open("rb")
        self.lines = Lines(self._file)
        self._rows: Iterator[list[str]] | None = None
        self._positions: list[int] | None = None
        self._width = 0
        if fmt is Format.CSV:
            try:
                self._read_header()
            except FileError:
                self.close()
                raise

    def close(self) -> None:
        self._file.close()

    def _read_header(self) -> None:
        self._rows = csv.reader(iter(self.lines), strict=True)
        try:
            header = next(self._rows)
        except StopIteration:
            raise FileError(f"{self.path}: empty file, expected a header line") from None
        except csv.Error as error:
            raise FileError(f"{self.path}: line 1: {error}") from None
        self.lines.take()
        names = [column_name(name) for name in header]
        self._positions = self._check_names(names, "header")
        self._width = len(names)

    def _check_names(self, names: list[str], where: str) -> list[int]:
        """Where each column sits in a row (-1: absent); FileError for an unknown or missing one."""
        unknown = [name for name in names if name not in self.columns.names]
        if unknown:
            raise FileError(
                f"{self.path}: {where}: unknown column {unknown[0]!r}; expected {', '.join(self.columns.names)}"
            )
        if len(set(names)) != len(names):
            raise FileError(f"{self.path}: {where}: a column is named twice")
        missing = [name for name in self.columns.required if name not in names]
        if missing:
            raise FileError(f"{self.path}: {where}: missing column {missing[0]!r}")
        return [names.index(name) if name in names else -1 for name in self.columns.names]

    def records(self, after: int = 0) -> Iterator[Record]:
        """Every record starting on a line after ``after`` (those before are read, not parsed)."""
        if self.format is Format.CSV:
            yield from self._csv_records(after)
        else:
            yield from self._json_records(after)

    def _csv_records(self, after: int) -> Iterator[Record]:
        assert self._rows is not None
        assert self._positions is not None
        positions, width = self._positions, self._width
        while True:
            start = self.lines.line + 1
            try:
                row = next(self._rows)
            except StopIteration:
                return
            except csv.Error as error:  # bad quoting; the reader goes on with the next line
                text = self.lines.take()
                if start > after:
                    yield Record(start, text, (), f"not a CSV record: {error}")
                continue
            text = self.lines.take()
            if start <= after or not row:  # already loaded, or a blank line
                continue
            if len(row) != width:
                yield Record(start, text, (), f"expected {width} fields as in the header, found {len(row)}")
                continue
            yield Record(start, text, tuple(_cell(row, p) for p in positions))

    def _json_records(self, after: int) -> Iterator[Record]:
        for text in self.lines:
            line = self.lines.line
            text = self.lines.take()
            if line <= after or not text.strip():
                continue
            try:
                value = json.loads(text, parse_float=Decimal)
            except ValueError as error:
                yield Record(line, text, (), f"not a JSON object: {error}")
                continue
            if not isinstance(value, dict):
                yield Record(line, text, (), "not a JSON object")
                continue
            yield _json_record(line, text, value, self.columns)


def _cell(row: list[str], position: int) -> str | None:
    if position < 0:
        return None
    value = row[position]
    return value if value != "" else None


def _json_record(line: int, text: str, value: dict[str, Any], columns: Columns) -> Record:
    names = {column_name(key): item for key, item in value.items()}
    unknown = [name for name in names if name not in columns.names]
    if unknown:
        return Record(line, text, (), f"unknown field {unknown[0]!r}; expected {', '.join(columns.names)}")
    values: list[str | None] = []
    for name in columns.names:
        item = names.get(name)
        if isinstance(item, dict | list | bool):
            return Record(line, text, (), f"{name} must be a string or a number")
        values.append(None if item is None or item == "" else str(item))
    return Record(line, text, tuple(values))

"""What every kind of import shares: rejected rows, checks of a row's values, COPY's text format,
and the staging tables a chunk is copied into.

The checks refuse what the API refuses, with the same codes and messages: a field's text has the
API's length, a moment carries its offset and falls inside the days the audience index can hold
(as `schema/inputs.py` says; the bounds come from the same place, `tagquery.bitmap_keys`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa
from psycopg import AsyncConnection, sql

from store.errors import DomainError, ErrorCode
from store.sql import DIALECT
from tagquery.bitmap_keys import EPOCH, MAX_DAY

EARLIEST = dt.datetime.combine(EPOCH + dt.timedelta(days=1), dt.time.min, dt.UTC)
LATEST = dt.datetime.combine(EPOCH + dt.timedelta(days=MAX_DAY - 1), dt.time.max, dt.UTC)
STAGING = sa.MetaData()  # temporary tables only: never part of the schema alembic compares


@dataclass(frozen=True, slots=True)
class Reject:
    """A row that was not loaded: where it is, why (an error code and its message), and its text."""

    line: int
    code: str
    reason: str
    text: str


def rejected(line: int, text: str, error: DomainError) -> Reject:
    return Reject(line, str(error.code), error.message, text)


def invalid(field: str, message: str) -> DomainError:
    return DomainError(ErrorCode.INVALID_INPUT, message, field=field)


def required(value: str | None, field: str) -> str:
    if value is None:
        raise invalid(field, f"{field} is required")
    return value


def text(value: str | None, field: str, most: int) -> str | None:
    """Without surrounding spaces, 1 to ``most`` characters; None stays None."""
    if value is None:
        return None
    stripped = value.strip()
    if not 1 <= len(stripped) <= most:
        raise invalid(field, f"{field} must be 1-{most} characters")
    return stripped


def moment(value: str | None, field: str) -> dt.datetime | None:
    """An ISO 8601 instant with its offset, within the index's days."""
    if value is None:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise invalid(field, f"{field} must be an ISO 8601 date and time, e.g. 2026-01-02T10:00:00+08:00") from None
    if parsed.utcoffset() is None:
        raise invalid(field, f"{field} needs a time zone offset, e.g. 2026-01-02T10:00:00+08:00 or ...Z")
    if not EARLIEST <= parsed <= LATEST:
        raise invalid(field, f"{field} must be between {_iso(EARLIEST)} and {_iso(LATEST)}")
    return parsed


def day(value: str | None, field: str) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.date.fromisoformat(value.strip())
    except ValueError:
        raise invalid(field, f"{field} must be a date, e.g. 1990-05-17") from None


def yuan(value: str, field: str) -> Decimal:
    """A finite number; which amounts are allowed is the ledger's to say."""
    try:
        amount = Decimal(value.strip())
    except InvalidOperation:
        raise invalid(field, f"{field} must be a number of yuan, not {value!r}") from None
    if not amount.is_finite():
        raise invalid(field, f"{field} must be a number of yuan, not {value}")
    return amount


def _iso(moment: dt.datetime) -> str:
    return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")


# --- COPY's text format ----------------------------------------------------------------------------

_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
NULL = "\\N"


def copy_text(value: str | None) -> str:
    return NULL if value is None else value.translate(_ESCAPES)


def copy_bytes(value: bytes | None) -> str:
    return NULL if value is None else "\\\\x" + value.hex()


def copy_line(fields: list[str]) -> str:
    return "\t".join(fields) + "\n"


# --- staging tables --------------------------------------------------------------------------------


def staging_table(name: str, *columns: sa.Column[Any]) -> sa.Table:
    """A temporary table a chunk is copied into; emptied when the chunk's transaction ends."""
    return sa.Table(name, STAGING, *columns, prefixes=["TEMPORARY"], postgresql_on_commit="DELETE ROWS")


async def create_staging(conn: AsyncConnection[Any], *tables: sa.Table, indexes: tuple[sa.Index, ...] = ()) -> None:
    for table in tables:
        await conn.execute(str(sa.schema.CreateTable(table, if_not_exists=True).compile(dialect=DIALECT)))
    for index in indexes:
        await conn.execute(str(sa.schema.CreateIndex(index, if_not_exists=True).compile(dialect=DIALECT)))


async def copy_into(conn: AsyncConnection[Any], table: sa.Table, columns: Sequence[str], data: bytes) -> None:
    """COPY ``data`` (COPY's text format, a line per row) into these columns of ``table``."""
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table.name), sql.SQL(", ").join(sql.Identifier(name) for name in columns)
    )
    async with conn.cursor() as cur, cur.copy(statement) as copy:
        await copy.write(data)

"""The demo ledgers' rows on their way in: ids, COPY text and COPY statements, shared by the full ledger
(`demo.ledger`) and the opening balances (`demo.opening`).

Both fill the same tables in the same column order: the helpers that format columns, the orders rows,
the COPY statements (whose columns every row renderer follows) and the ids reserved per table and
block live here once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from psycopg import sql

from demo.orders import I64, U64, Buyers, Connection, Orders, Randomness, Strings
from store import tables

NULL = "\\N"
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


@dataclass(frozen=True, slots=True)
class Ids:
    """The first of the ids reserved for one block, per table."""

    posting: int
    entry: int
    lot: int
    order: int


@dataclass(frozen=True, slots=True)
class Copies:
    """COPY text of one block's ledger rows, in foreign-key order."""

    postings: bytes
    entries: bytes
    lots: bytes
    draws: bytes
    orders: bytes
    order_count: int
    lines: bytes = b""  # order_lines (demo.products), after their orders


def upper_bounds(orders: int, members: int) -> Ids:
    """At most how many rows per table a block with ``orders`` orders and ``members`` members writes."""
    return Ids(posting=2 * orders + members, entry=2 * orders + members, lot=orders, order=orders)


# --- COPY text ---------------------------------------------------------------------------------------------


def timestamps(seconds: I64) -> list[str]:
    text: list[str] = np.datetime_as_string(seconds.astype("datetime64[s]"), unit="s", timezone="UTC").tolist()
    return text


def text(values: npt.NDArray[Any]) -> list[str]:
    out: list[str] = values.astype(str).tolist()
    return out


def lines(columns: Sequence[Sequence[str]]) -> bytes:
    if not columns or not len(columns[0]):
        return b""
    return ("\n".join(map("\t".join, zip(*columns, strict=True))) + "\n").encode()


def yuan(cents: I64) -> Strings:
    whole = (cents // 100).astype(str)
    return np.strings.add(np.strings.add(whole, "."), np.strings.zfill((cents % 100).astype(str), 2))


def fingerprints(rand: Randomness, index: U64) -> list[str]:
    """32 random bytes per posting (a stand-in for the request's SHA-256), as COPY text bytea."""
    words = np.stack([rand.bits(f"fingerprint/{w}", index) for w in range(4)], axis=1)
    raw = np.ascontiguousarray(words).view(np.uint8).reshape(len(index), 32)
    chars = np.empty((len(index), 64), dtype=np.uint8)
    chars[:, 0::2] = _HEX[raw >> 4]
    chars[:, 1::2] = _HEX[raw & 15]
    hexes = chars.view("S64").ravel().astype(str)
    return text(np.strings.add("\\\\x", hexes)) if len(index) else []


def order_text(
    buyers: Buyers, first_id: int, orders: Orders, external: Strings, channel: Strings, posting: I64
) -> bytes:
    """The orders rows, ids from ``first_id``, each pointing at the posting given for it."""
    count = len(orders.owner)
    refunded = orders.refunded
    columns: list[Sequence[str]] = [
        text(first_id + np.arange(count)),
        [str(buyers.brand_id)] * count,
        text(buyers.member_id[orders.owner]),
        text(channel),
        text(external),
        text(yuan(orders.cents)),
        text(yuan(orders.cents * refunded)),
        timestamps(orders.paid),
        [NULL] * count,
        text(posting),
        text(orders.points),
        text(orders.growth),
        text(orders.points * refunded),
        text(orders.growth * refunded),
        timestamps(orders.paid),
    ]
    return lines(columns)


# --- the database ------------------------------------------------------------------------------------------


def _copy_statement(table: str, columns: Sequence[str]) -> sql.Composed:
    return sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )


_COPIES = (
    (
        "postings",
        _copy_statement(
            tables.points_postings.name,
            (
                "id",
                "brand_id",
                "member_id",
                "idempotency_key",
                "operation",
                "fingerprint",
                "channel",
                "reason",
                "actor",
                "reverses_posting_id",
                "created_at",
            ),
        ),
    ),
    (
        "entries",
        _copy_statement(
            tables.points_entries.name,
            ("id", "posting_id", "brand_id", "member_id", "kind", "amount", "balance_after", "note", "created_at"),
        ),
    ),
    (
        "lots",
        _copy_statement(
            tables.points_lots.name, ("id", "brand_id", "member_id", "entry_id", "amount", "remaining", "expires_at")
        ),
    ),
    ("draws", _copy_statement(tables.lot_draws.name, ("entry_id", "lot_id", "amount"))),
    (
        "orders",
        _copy_statement(
            tables.orders.name,
            (
                "id",
                "brand_id",
                "member_id",
                "channel",
                "external_order_id",
                "amount",
                "refunded",
                "paid_at",
                "store",
                "posting_id",
                "points_earned",
                "growth_earned",
                "points_reversed",
                "growth_reversed",
                "created_at",
            ),
        ),
    ),
    (
        "lines",
        _copy_statement(tables.order_lines.name, ("order_id", "line", "sku", "category", "quantity", "amount")),
    ),
)
TABLES = (tables.points_postings, tables.points_entries, tables.points_lots, tables.lot_draws, tables.orders)


def copy(conn: Connection, copies: Copies) -> None:
    for field, statement in _COPIES:
        data: bytes = getattr(copies, field)
        if data:
            with conn.cursor() as cur, cur.copy(statement) as out:
                out.write(data)


def reserve(conn: Connection, table: str, count: int) -> int:
    """The first of ``count`` consecutive ids taken from ``table``'s identity sequence (see demo/build.py)."""
    sequence = sql.SQL("pg_get_serial_sequence({}, 'id')").format(sql.Literal(table))
    with conn.transaction():
        conn.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(sql.Identifier(table)))
        row = conn.execute(sql.SQL("SELECT nextval({})").format(sequence)).fetchone()
        assert row is not None
        first = int(row[0])
        if count > 1:
            conn.execute(sql.SQL("SELECT setval({}, %s)").format(sequence), (first + count - 1,))
    return first

"""SQL expressions that render GraphQL values exactly as strawberry serialises them.

Every helper here has a Python twin on the general path, and tests/test_sqljson.py requires the
two responses to parse to equal JSON over random selections.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSON, aggregate_order_by

from resolvers.sqljson.selection import NotCompilable
from store.sql import DIALECT

# json_build_object takes at most 100 arguments: 50 keys and their values.
MAX_KEYS = 50
EMPTY_LIST = sa.literal_column("'[]'::json", JSON)
_QUOTE = sa.Text().literal_processor(DIALECT)  # type: ignore[no-untyped-call]


def text(value: str) -> sa.ColumnElement[str]:
    """A constant of the plan (a response key, a format) rendered by SQLAlchemy's own quoting.

    Not a bound parameter: a profile plan holds ~80 of them, which would otherwise be adapted and
    sent with every request. They never come from request values: keys are GraphQL names
    (``[_A-Za-z][_0-9A-Za-z]*``, enforced by the parser), the rest are written here.
    """
    return sa.literal_column(_QUOTE(value), sa.Text)


def json_object(pairs: list[tuple[str, sa.ColumnElement[Any]]]) -> sa.ColumnElement[Any]:
    if len(pairs) > MAX_KEYS:
        raise NotCompilable("too many fields in one object")
    args: list[sa.ColumnElement[Any]] = []
    for key, value in pairs:
        args += [text(key), value]
    return sa.func.json_build_object(*args, type_=JSON)


def json_list(
    element: sa.ColumnElement[Any],
    order_by: tuple[sa.ColumnElement[Any], ...],
    where: sa.ColumnElement[bool] | None = None,
) -> sa.ColumnElement[Any]:
    """``json_agg`` in order, ``[]`` rather than null for no rows (as a resolver's empty list)."""
    aggregated: Any = sa.func.json_agg(aggregate_order_by(element, *order_by), type_=JSON)
    if where is not None:
        aggregated = aggregated.filter(where)
    return sa.func.coalesce(aggregated, EMPTY_LIST, type_=JSON)


def id_text(column: sa.ColumnElement[int]) -> sa.ColumnElement[str]:
    """An ``ID`` made from a bigint: strawberry sends the decimal string."""
    return sa.cast(column, sa.Text)


def enum_name(column: sa.ColumnElement[str]) -> sa.ColumnElement[str]:
    """Enum values are stored as lower-case codes whose GraphQL names are the upper-case codes."""
    return sa.func.upper(column, type_=sa.Text)


def decimal_text(column: sa.ColumnElement[Any]) -> sa.ColumnElement[str]:
    """``Decimal`` is sent as its string; numeric(…, 2) prints the same digits in both."""
    return sa.cast(column, sa.Text)


def iso_datetime(column: sa.ColumnElement[Any]) -> sa.ColumnElement[str]:
    """``datetime.isoformat()`` of the value psycopg would return (session time zone): seconds,
    six-digit microseconds only when non-zero, and the ``+HH:MM`` offset. PostgreSQL's own JSON
    form trims trailing zeros of the fraction, so it is not used."""
    micros = sa.func.to_char(column, text("US"))
    fraction = sa.case((micros == text("000000"), text("")), else_=text(".") + micros)
    return (
        sa.func.to_char(column, text('YYYY-MM-DD"T"HH24:MI:SS'), type_=sa.Text)
        + fraction
        + sa.func.to_char(column, text("TZH:TZM"), type_=sa.Text)
    )


def cursor(kind: str, *keys: sa.ColumnElement[Any]) -> sa.ColumnElement[str]:
    """`resolvers.cursors.encode` in SQL: URL-safe base64 of ``kind:key:key``."""
    plain: sa.ColumnElement[str] = text(kind)
    for key in keys:
        plain = plain + text(":") + sa.cast(key, sa.Text)
    encoded = sa.func.encode(sa.func.convert_to(plain, text("UTF8")), text("base64"))
    # PostgreSQL wraps base64 at 76 characters; cursors are far shorter, but never send a newline.
    return sa.func.translate(encoded, text("+/\n"), text("-_"), type_=sa.Text)

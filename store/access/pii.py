"""Personal information as a caller sees it: masked forms, and per-caller pseudonyms of channel ids.

The Python functions serve strawberry's resolvers and exports; the SQL ones the compiled reads
(resolvers.sqljson). tests/test_pii.py checks that both give the same text for the same value.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
from typing import Any

import sqlalchemy as sa


def mask_name(name: str | None) -> str | None:
    """``王小明`` → ``王*``: the first character and one star, whatever the length (which says little)."""
    if not name:
        return name
    return name[0] + "*"


def mask_name_sql(column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    masked = sa.func.left(column, 1).op("||")(sa.literal("*", sa.Text))
    return sa.case((sa.func.coalesce(column, "") == "", column), else_=masked)


def birth_month(birthday: dt.date | None) -> int | None:
    return None if birthday is None else birthday.month


def pseudonym(key: bytes, channel: str, external_id: str) -> str:
    """A channel id as one caller sees it: stable for that caller, unlinkable across callers."""
    digest = hmac.digest(key, f"{channel}\x00{external_id}".encode(), hashlib.sha256)
    return "p_" + base64.b32encode(digest[:15]).decode().lower()


def pseudonym_key(secret: bytes, key_prefix: str) -> bytes:
    """The pseudonym key of one API key, derived from the service secret."""
    return hmac.digest(secret, b"omnimember/pseudonym/v1/" + key_prefix.encode(), hashlib.sha256)

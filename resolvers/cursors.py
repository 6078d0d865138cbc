"""Opaque keyset cursors and ids: what clients pass back, never what they should parse."""

from __future__ import annotations

import base64
import binascii

from store.errors import DomainError, ErrorCode


def encode(kind: str, *keys: int) -> str:
    """``("member", 42)`` → an opaque string that `decode` turns back into ``(42,)``."""
    text = ":".join([kind, *map(str, keys)])
    return base64.urlsafe_b64encode(text.encode()).decode()


def decode(cursor: str, kind: str, size: int, field: str = "after") -> tuple[int, ...]:
    """The keys of a cursor made by `encode` for ``kind``; INVALID_INPUT for anything else."""
    try:
        found, *keys = base64.urlsafe_b64decode(cursor.encode()).decode().split(":")
        if found == kind and len(keys) == size:
            return tuple(int(key) for key in keys)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise DomainError(ErrorCode.INVALID_INPUT, f"{field} is not a cursor of this connection", field=field)


def check_first(first: int, maximum: int) -> int:
    if not 0 <= first <= maximum:
        raise DomainError(ErrorCode.INVALID_INPUT, f"first must be between 0 and {maximum}", field="first")
    return first


def parse_id(value: str) -> int | None:
    """A numeric id from its GraphQL form; None when it cannot name a row."""
    return int(value) if value.isascii() and value.isdigit() and len(value) < 19 else None

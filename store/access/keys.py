"""API keys: created and revoked by the CLI, only a hash of the secret stored, checked per request.

A token reads ``om_<prefix>_<secret>``: the prefix finds the row, the SHA-256 of the whole token
must match (the secret has 256 bits of entropy, so a plain hash is as good as a slow one).
Authentication is cached for `CACHE_SECONDS`: a revoked key, or a brand added to a key's group, takes
effect within that time on every process.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from psycopg import AsyncConnection

from store.access.pii import pseudonym_key
from store.access.principals import Principal
from store.access.roles import Capability, Role, capabilities
from store.sql import Query, Row
from store.tables import api_keys, brands, groups

CACHE_SECONDS = 5.0
_CACHE_SIZE = 10_000
_TOKEN_PREFIX = "om_"  # noqa: S105 - the public prefix of every token, not a secret


class KeyRefused(ValueError):
    """A key cannot be created as asked (unknown brand or group, a grant the role cannot take)."""


@dataclass(frozen=True, slots=True)
class NewKey:
    token: str  # shown once; never stored
    row: Row


def _hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _prefix_of(token: str) -> str | None:
    if not token.startswith(_TOKEN_PREFIX):
        return None
    prefix, sep, _ = token[len(_TOKEN_PREFIX) :].partition("_")
    return prefix if sep and len(prefix) == 8 else None


_GIVEN = (
    "prefix",
    "secret_hash",
    "name",
    "role",
    "grants",
    "brand_ids",
    "group_ids",
    "all_brands",
    "expires_at",
    "trusted_documents",
)
_insert = Query(
    sa.insert(api_keys)
    .values({name: sa.bindparam(name, api_keys.c[name].type) for name in _GIVEN})
    .returning(*api_keys.c)
)
_brand_ids = Query(sa.select(brands.c.id, brands.c.code).where(brands.c.code == sa.any_(sa.bindparam("codes"))))
_group_ids = Query(sa.select(groups.c.id, groups.c.code).where(groups.c.code == sa.any_(sa.bindparam("codes"))))
_by_prefix = Query(sa.select(*api_keys.c).where(api_keys.c.prefix == sa.bindparam("prefix")))
_group_brands = Query(sa.select(brands.c.id).where(brands.c.group_id == sa.any_(sa.bindparam("group_ids"))))
_all = Query(sa.select(*api_keys.c).order_by(api_keys.c.id))
_revoke = Query(
    sa.update(api_keys)
    .where(api_keys.c.prefix == sa.bindparam("prefix"), api_keys.c.revoked_at.is_(None))
    .values(revoked_at=sa.func.now())
    .returning(*api_keys.c)
)


async def _ids(conn: AsyncConnection[Any], query: Query, codes: list[str], what: str) -> list[int]:
    rows = {row["code"]: row["id"] for row in await query.all(conn, codes=codes)}
    missing = [code for code in codes if code not in rows]
    if missing:
        raise KeyRefused(f"no {what} with code {', '.join(map(repr, missing))}")
    return [rows[code] for code in codes]


async def create_key(
    conn: AsyncConnection[Any],
    *,
    name: str,
    role: Role,
    brand_codes: list[str] = [],  # noqa: B006 - never mutated
    group_codes: list[str] = [],  # noqa: B006
    all_brands: bool = False,
    grants: frozenset[Capability] = frozenset(),
    expires_at: dt.datetime | None = None,
    trusted_documents: bool = False,
) -> NewKey:
    """A new key; its token is in the result and nowhere else."""
    if not 1 <= len(name) <= 200:
        raise KeyRefused("a key's name is 1-200 characters")
    if all_brands == bool(brand_codes or group_codes):
        raise KeyRefused("give a key a scope: one or more brands, one or more groups, or all brands")
    if expires_at is not None and expires_at <= dt.datetime.now(dt.UTC):
        raise KeyRefused("the expiry must be in the future")
    try:
        capabilities(role, grants)
    except ValueError as error:
        raise KeyRefused(str(error)) from None
    prefix = secrets.token_hex(4)
    token = f"{_TOKEN_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    row = await _insert.one(
        conn,
        prefix=prefix,
        secret_hash=_hash(token),
        name=name,
        role=str(role),
        grants=sorted(grants),
        brand_ids=await _ids(conn, _brand_ids, brand_codes, "brand"),
        group_ids=await _ids(conn, _group_ids, group_codes, "group"),
        all_brands=all_brands,
        expires_at=expires_at,
        trusted_documents=trusted_documents,
    )
    assert row is not None
    return NewKey(token, row)


async def list_keys(conn: AsyncConnection[Any]) -> list[Row]:
    return await _all.all(conn)


async def revoke_key(conn: AsyncConnection[Any], prefix: str) -> Row | None:
    """The revoked key, or None when no live key has this prefix."""
    return await _revoke.one(conn, prefix=prefix)


class Keys:
    """Turns bearer tokens into principals, remembering answers (good and bad) for a few seconds."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        self._cache: dict[bytes, tuple[float, Principal | None]] = {}

    async def authenticate(self, conn_factory: Any, token: str) -> Principal | None:
        """The principal of a live key, or None (unknown, revoked, expired or malformed)."""
        prefix = _prefix_of(token)
        if prefix is None:
            return None
        digest = _hash(token)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        async with conn_factory() as conn:
            principal = await self._load(conn, prefix, digest)
        if len(self._cache) >= _CACHE_SIZE:
            self._cache.clear()
        self._cache[digest] = (now + CACHE_SECONDS, principal)
        return principal

    async def _load(self, conn: AsyncConnection[Any], prefix: str, digest: bytes) -> Principal | None:
        row = await _by_prefix.one(conn, prefix=prefix)
        if row is None or not hmac.compare_digest(row["secret_hash"], digest) or row["revoked_at"] is not None:
            return None
        if row["expires_at"] is not None and row["expires_at"] <= dt.datetime.now(dt.UTC):
            return None
        brand_ids: frozenset[int] | None = None
        group_ids: frozenset[int] | None = None
        if not row["all_brands"]:
            group_ids = frozenset(row["group_ids"])
            in_groups = await _group_brands.all(conn, group_ids=list(group_ids)) if group_ids else []
            brand_ids = frozenset(row["brand_ids"]) | {r["id"] for r in in_groups}
        return self.principal(row, brand_ids, group_ids)

    def principal(self, row: Row, brand_ids: frozenset[int] | None, group_ids: frozenset[int] | None) -> Principal:
        role = Role(row["role"])
        return Principal(
            key_id=row["id"],
            key_name=row["name"],
            key_prefix=row["prefix"],
            role=role,
            capabilities=capabilities(role, frozenset(Capability(g) for g in row["grants"])),
            brand_ids=brand_ids,
            group_ids=group_ids,
            pseudonym_key=pseudonym_key(self._secret, row["prefix"]),
            trusted_documents=bool(row.get("trusted_documents", False)),
        )

    def development(self, role: Role = Role.ADMIN) -> Principal:
        """Development mode's caller: ``role`` over every brand (never stored, never on a public address)."""
        row: Row = {"id": None, "name": "development", "prefix": "dev", "role": str(role), "grants": []}
        return self.principal(row, None, None)

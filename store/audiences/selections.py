"""Choosing an audience: an expression (text or structured filter) checked against a brand's catalog.

The GraphQL fields, the export endpoints and the CLI all start here, so an expression means the
same everywhere and a bad one fails the same way: `InvalidExpressionError`, a DomainError with
code INVALID_EXPRESSION that keeps the tag language's own code (`reason`), the position (line,
column, caret snippet) for text, the path for a structured filter, and a suggestion for unknown
names.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import time
import weakref
from datetime import date
from typing import Any

from psycopg import AsyncConnection

from store.audiences.catalogs import BrandCatalog, CatalogCache
from store.audiences.deltas import IndexState
from store.errors import DomainError, ErrorCode
from tagquery import ErrorCode as QueryCode
from tagquery import TagQueryError, bind, from_filter, parse, to_text
from tagquery.ast import Node
from tagquery.bound import Bound

# One catalog cache per connection pool (the process has one pool; tests have several databases,
# and brand ids of different databases must never share an entry).
_caches: weakref.WeakKeyDictionary[object, CatalogCache] = weakref.WeakKeyDictionary()


def catalog_cache(pool: object) -> CatalogCache:
    cache = _caches.get(pool)
    if cache is None:
        cache = _caches[pool] = CatalogCache()
    return cache


class InvalidExpressionError(DomainError):
    """The expression or filter does not parse, or names what the brand does not have."""

    def __init__(self, error: TagQueryError, field: str) -> None:
        # str(error) is the message with its position and suggestion, then the caret snippet.
        super().__init__(ErrorCode.INVALID_EXPRESSION, str(error).split("\n", 1)[0], field=field)
        self.reason = error.code.value
        self.line = error.line
        self.column = error.column
        self.snippet = error.snippet or None
        self.suggestion = error.suggestion
        self.path = error.path
        # An unknown name's valid names (None for other errors): docs/audiences.md#bad-expressions.
        self.valid_values = list(error.valid_values) if error.valid_count is not None else None
        self.valid_count = error.valid_count

    def details(self) -> dict[str, Any]:
        """What clients get besides code and message (GraphQL extensions, the export's 400 body)."""
        return {
            "field": self.field,
            "reason": self.reason,
            "line": self.line,
            "column": self.column,
            "snippet": self.snippet,
            "suggestion": self.suggestion,
            "path": self.path,
            "validValues": self.valid_values,
            "validValueCount": self.valid_count,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class Selection:
    """A checked audience of one brand, for one day."""

    brand_code: str
    brand: BrandCatalog
    node: Node
    bound: Bound
    today: date

    @property
    def text(self) -> str:
        """The canonical expression (what a saved audience stores)."""
        return to_text(self.node)


# Campaign tools send the same few expressions over and over; a tree is immutable, so each text is
# parsed once (a parse is ~0.1 ms of CPU, about a tenth of what a count request costs the process).
_parsed = functools.lru_cache(maxsize=1024)(parse)


def read_expression(expression: str | None, filter: object | None, *, field: str = "expression") -> Node:
    """The syntax tree of exactly one of `expression` / `filter`; INVALID_INPUT naming `field` otherwise."""
    if (expression is None) == (filter is None):
        raise DomainError(ErrorCode.INVALID_INPUT, "give exactly one of expression and filter", field=field)
    try:
        return _parsed(expression) if expression is not None else from_filter(filter)
    except TagQueryError as error:
        raise InvalidExpressionError(error, field if expression is not None else "filter") from None


async def select(
    conn: AsyncConnection[Any],
    cache: CatalogCache,
    brand: dict[str, Any],
    node: Node,
    *,
    source: str | None,
    field: str = "expression",
    today: date | None = None,
) -> Selection:
    """Bind `node` to the brand's catalog. An unknown name is checked once more against a freshly
    loaded catalog: a tag defined (or a city indexed) after the cached copy was read must work."""
    catalog = await ready_catalog(conn, cache, brand)
    try:
        bound = _bind(node, catalog, source, field)
    except InvalidExpressionError as error:
        if error.reason not in _NAME_CODES:
            raise
        cache.invalidate(brand["id"])
        catalog = await cache.get(conn, brand["id"])
        bound = _bind(node, catalog, source, field)
    return Selection(brand["code"], catalog, node, bound, today or catalog.today())


async def ready_catalog(conn: AsyncConnection[Any], cache: CatalogCache, brand: dict[str, Any]) -> BrandCatalog:
    """The brand's catalog once its index can answer (IndexNotReadyError after INDEX_WAIT): what
    every read of the index starts from, with an expression (`select`) or without one."""
    catalog = await cache.get(conn, brand["id"])
    return catalog if catalog.index.state is IndexState.READY else await _when_built(conn, cache, brand)


INDEX_WAIT = 3.0  # seconds an audience read waits for its brand's index to be built, then refuses


class IndexNotReadyError(DomainError):
    """The brand's index is being built: a count from it now would be wrong, not merely late."""

    def __init__(self, brand_code: str, pending: int, index: str = "audience index") -> None:
        super().__init__(
            ErrorCode.INDEX_NOT_READY,
            f"the {index} of brand {brand_code!r} is being built ({pending:,} member changes queued);"
            " counts would be wrong until it is: retry in a little while (freshness says when it is READY)",
        )
        self.pending = pending


async def _when_built(conn: AsyncConnection[Any], cache: CatalogCache, brand: dict[str, Any]) -> BrandCatalog:
    """The brand's catalog once its index is READY, waiting up to INDEX_WAIT (the applier builds it);
    IndexNotReadyError after that."""
    deadline = time.monotonic() + INDEX_WAIT
    while True:
        cache.invalidate(brand["id"])
        catalog = await cache.get(conn, brand["id"])
        if catalog.index.state is IndexState.READY:
            return catalog
        if time.monotonic() >= deadline:
            raise IndexNotReadyError(brand["code"], catalog.index.pending)
        await asyncio.sleep(0.2)


_NAME_CODES = {
    code.value
    for code in (QueryCode.UNKNOWN_TAG, QueryCode.UNKNOWN_DIMENSION, QueryCode.UNKNOWN_FIELD, QueryCode.UNKNOWN_VALUE)
}


def _bind(node: Node, catalog: BrandCatalog, source: str | None, field: str) -> Bound:
    try:
        return bind(node, catalog.catalog, source=source)
    except TagQueryError as error:
        raise InvalidExpressionError(error, field) from None

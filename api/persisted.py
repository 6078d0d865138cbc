"""Persisted documents: automatic persisted queries (Apollo's protocol) and trusted documents.

A request may name its document by the SHA-256 of its text (64 hex digits) in
``extensions: {"persistedQuery": {"version": 1, "sha256Hash": ...}}``:

- with the text too (``query``), the hash must be the text's; once the document passes the checks,
  the process remembers it (`Remembered`, an LRU bounded in documents and characters);
- without the text, the document is the one remembered, else a registered one (`Registry`); with
  neither, ``PERSISTED_QUERY_NOT_FOUND``, on which Apollo's clients send the text with the hash.

The remembered documents are shared by every caller: a document's text is no secret (partners get
the schema), and each execution passes its own caller's permission checks all the same.

A caller held to trusted documents (its key made with ``--trusted-documents``; every partner key or
every caller under ``OMNIMEMBER_TRUSTED_DOCUMENTS``) runs registered documents only (`omnimember
documents register`): by hash, or by text, registered exactly or as the canonical print of the
operation it selects. Anything else is ``DOCUMENT_NOT_TRUSTED`` before any check or plan runs, and
nothing such a caller sends is remembered.

Registered documents are looked up by hash on first use and kept `CACHE_SECONDS`, found or not,
so a registration or removal takes effect on every process within that time.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    InlineFragmentNode,
    OperationDefinitionNode,
    SelectionSetNode,
    print_ast,
)
from psycopg import AsyncConnection

from schema.documents import Documents
from store.access.documents import body_of, sha256_hex
from store.access.principals import Principal
from store.access.roles import Role

NOT_FOUND = "PERSISTED_QUERY_NOT_FOUND"
NOT_TRUSTED = "DOCUMENT_NOT_TRUSTED"
HASH_MISMATCH = "PERSISTED_QUERY_HASH_MISMATCH"
CACHE_SECONDS = 5.0
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_REGISTER = "register it with `omnimember documents register FILE.graphql`"

Connect = Callable[[], AbstractAsyncContextManager[AsyncConnection[Any]]]


class Malformed(ValueError):
    """A request whose persistedQuery extension cannot be used as sent (a 400, whatever the media type)."""

    def __init__(self, message: str, code: str = "BAD_REQUEST") -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation standing alone: printed with the fragments it spreads."""

    type: str  # query, mutation or subscription
    name: str | None
    text: str

    @property
    def sha256(self) -> str:
        return sha256_hex(self.text)


def operations(document: DocumentNode) -> list[Operation]:
    """Each operation of a document on its own, in canonical text: graphql-core's printer over the
    operation and the fragments it needs, directly or through other fragments, in document order.
    Formatting and comments do not change it; renaming anything does."""
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    return [_standalone(d, fragments) for d in document.definitions if isinstance(d, OperationDefinitionNode)]


def selected(document: DocumentNode, name: str | None) -> Operation | None:
    """The operation a request with this operationName runs, as GraphQL selects it; None if none is."""
    found = operations(document)
    if name is None:
        return found[0] if len(found) == 1 else None
    named = [operation for operation in found if operation.name == name]
    return named[0] if len(named) == 1 else None


def _standalone(operation: OperationDefinitionNode, fragments: dict[str, FragmentDefinitionNode]) -> Operation:
    needed: set[str] = set()
    stack: list[SelectionSetNode] = [operation.selection_set]
    while stack:
        for selection in stack.pop().selections:
            if isinstance(selection, FragmentSpreadNode):
                name = selection.name.value
                if name in fragments and name not in needed:
                    needed.add(name)
                    stack.append(fragments[name].selection_set)
            elif isinstance(selection, FieldNode | InlineFragmentNode) and selection.selection_set is not None:
                stack.append(selection.selection_set)
    definitions = (operation, *(f for name, f in fragments.items() if name in needed))
    text = print_ast(DocumentNode(definitions=definitions))
    return Operation(operation.operation.value, operation.name.value if operation.name else None, text)


class Remembered:
    """Automatic persisted queries: texts by hash, least recently used forgotten first. Per process
    (each worker learns on its own; a client that meets PERSISTED_QUERY_NOT_FOUND sends the text)."""

    def __init__(self, max_documents: int = 5_000, max_chars: int = 5_000_000) -> None:
        self._texts: OrderedDict[str, str] = OrderedDict()
        self._chars = 0
        self._max_documents = max_documents
        self._max_chars = max_chars

    def get(self, sha256: str) -> str | None:
        text = self._texts.get(sha256)
        if text is not None:
            self._texts.move_to_end(sha256)
        return text

    def put(self, sha256: str, text: str) -> None:
        if sha256 in self._texts or len(text) > self._max_chars:
            return
        self._texts[sha256] = text
        self._chars += len(text)
        while len(self._texts) > self._max_documents or self._chars > self._max_chars:
            _, oldest = self._texts.popitem(last=False)
            self._chars -= len(oldest)

    def __len__(self) -> int:
        return len(self._texts)


class Registry:
    """Registered documents by hash, each answer (found or not) kept `CACHE_SECONDS`; at most
    ``size`` answers, least recently used dropped first, so unknown hashes cannot grow it."""

    def __init__(self, seconds: float | None = None, size: int = 10_000) -> None:
        self._seconds = CACHE_SECONDS if seconds is None else seconds
        self._size = size
        self._known: OrderedDict[str, tuple[float, str | None]] = OrderedDict()

    async def find(self, connect: Connect, sha256: str) -> str | None:
        now = time.monotonic()
        cached = self._known.get(sha256)
        if cached is not None and cached[0] > now:
            self._known.move_to_end(sha256)
            return cached[1]
        async with connect() as conn:
            body = await body_of(conn, sha256)
        self._known[sha256] = (now + self._seconds, body)
        self._known.move_to_end(sha256)
        while len(self._known) > self._size:
            self._known.popitem(last=False)
        return body


@dataclass(frozen=True, slots=True)
class Resolved:
    query: str  # the document to check and run
    remember: str | None = None  # remember it under this hash once it passes the checks


class PersistedDocuments:
    """The document a request stands for, for the caller who sent it."""

    def __init__(self, documents: Documents, mode: str = "off") -> None:
        self._documents = documents
        self._mode = mode
        self.remembered = Remembered()
        self.registry = Registry()

    def held(self, principal: Principal) -> bool:
        """Whether the caller runs registered documents only."""
        if principal.trusted_documents or self._mode == "all":
            return True
        return self._mode == "partners" and principal.role is Role.PARTNER

    async def resolve(self, request: dict[str, Any], principal: Principal, connect: Connect) -> Resolved | GraphQLError:
        """The document to run, or the refusal to answer; `Malformed` for an unusable extension."""
        named = persisted_hash(request.get("extensions"))
        query: str | None = request.get("query")
        held = self.held(principal)
        if query is None:
            if named is None:
                raise Malformed('send the document as a string in "query", or its hash in extensions.persistedQuery')
            return await self._by_hash(named, held, connect)
        if named is not None and sha256_hex(query) != named:
            raise Malformed(
                'extensions.persistedQuery.sha256Hash is not the SHA-256 of the document in "query"'
                " (hex digits of the UTF-8 text, exactly as sent)",
                HASH_MISMATCH,
            )
        if not held:
            return Resolved(query, named)
        return await self._trusted(query, request.get("operationName"), connect)

    def remember(self, resolved: Resolved) -> None:
        if resolved.remember is not None:
            self.remembered.put(resolved.remember, resolved.query)

    async def _by_hash(self, sha256: str, held: bool, connect: Connect) -> Resolved | GraphQLError:
        text = None if held else self.remembered.get(sha256)
        if text is None:
            text = await self.registry.find(connect, sha256)
        if text is not None:
            return Resolved(text)
        if held:
            return _not_trusted(f"no registered document has the hash {sha256}", sha256)
        # The message is the one Apollo's clients look for (as is the code).
        return GraphQLError("PersistedQueryNotFound", extensions={"code": NOT_FOUND})

    async def _trusted(self, query: str, operation_name: str | None, connect: Connect) -> Resolved | GraphQLError:
        exact = sha256_hex(query)
        if await self.registry.find(connect, exact) is not None:
            return Resolved(query)
        checked = await self._documents.check_async(query)
        if checked.document is None:
            return _not_trusted("the document is not a registered one", exact)
        operation = selected(checked.document, operation_name)
        if operation is None:
            return _not_trusted("the request selects no one operation of the document (operationName)", exact)
        if operation.sha256 != exact and await self.registry.find(connect, operation.sha256) is not None:
            return Resolved(operation.text)  # what was registered runs, not the rest of what was sent
        return _not_trusted("the operation is not a registered document", operation.sha256)


def persisted_hash(extensions: Any) -> str | None:
    """The hash in ``extensions.persistedQuery`` (lower case), None without one; `Malformed` if unusable."""
    if not isinstance(extensions, dict) or extensions.get("persistedQuery") is None:
        return None
    persisted = extensions["persistedQuery"]
    if not isinstance(persisted, dict):
        raise Malformed('extensions.persistedQuery must be an object: {"version": 1, "sha256Hash": "<64 hex digits>"}')
    if persisted.get("version") != 1:
        raise Malformed(f"extensions.persistedQuery.version must be 1, not {persisted.get('version')!r}")
    sha256 = persisted.get("sha256Hash")
    if not isinstance(sha256, str) or not _HEX64.fullmatch(sha256):
        raise Malformed("extensions.persistedQuery.sha256Hash must be the SHA-256 of the document: 64 hex digits")
    return sha256.lower()


def _not_trusted(why: str, sha256: str) -> GraphQLError:
    message = f"this key runs registered documents only, and {why}: {_REGISTER}, then send it or its hash"
    return GraphQLError(message, extensions={"code": NOT_TRUSTED, "sha256Hash": sha256})

"""What compiled reads and planned mutations share: a valid operation from a document, and a
bounded per-process memory of the documents seen."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from graphql import DocumentNode, FragmentDefinitionNode, OperationDefinitionNode, OperationType

T = TypeVar("T")
MAX_DOCUMENTS = 1000  # distinct documents remembered per process, planned or not
# ... and at most this much document text: a plan keeps its document's syntax tree, thousands of
# objects for a large one, and every full garbage collection walks them all (measured: 400
# distinct 25-alias documents kept ~950k objects alive and stalled the process 600-800 ms a pass).
MAX_TEXT = 256_000


@dataclass(frozen=True, slots=True)
class Operation:
    node: OperationDefinitionNode
    fragments: Mapping[str, FragmentDefinitionNode]


class ParsedDocuments(Protocol):
    """Where documents come from already checked (schema.documents.Documents, which the api layer
    hands in): parsed and valid within the service's limits, or None."""

    def parsed(self, text: str) -> DocumentNode | None: ...


def valid_operation(
    documents: ParsedDocuments, document: str, operation_name: str | None, kind: OperationType
) -> Operation | None:
    """The one operation of ``kind`` the request names, if the document is valid and the operation
    carries no directives; else None, and strawberry's general path reports whatever is wrong."""
    ast = documents.parsed(document)
    if ast is None:
        return None
    named = [
        d
        for d in ast.definitions
        if isinstance(d, OperationDefinitionNode)
        and (operation_name is None or (d.name is not None and d.name.value == operation_name))
    ]
    if len(named) != 1 or named[0].operation is not kind or named[0].directives:
        return None
    fragments = {d.name.value: d for d in ast.definitions if isinstance(d, FragmentDefinitionNode)}
    return Operation(named[0], fragments)


class Memo(Generic[T]):
    """The plan (or None) of each (document, operation name), computed once, oldest forgotten first."""

    def __init__(self, compute: Callable[[str, str | None], T | None]) -> None:
        self._compute = compute
        self._known: dict[tuple[str, str | None], T | None] = {}
        self._text = 0  # characters of the documents in _known

    def get(self, document: str, operation_name: str | None) -> T | None:
        key = (document, operation_name)
        try:
            return self._known[key]
        except KeyError:
            pass
        while self._known and (len(self._known) >= MAX_DOCUMENTS or self._text + len(document) > MAX_TEXT):
            oldest = next(iter(self._known))
            self._text -= len(oldest[0])
            del self._known[oldest]
        found = self._known[key] = self._compute(document, operation_name)
        self._text += len(document)
        return found

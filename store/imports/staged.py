"""A chunk between the two halves of an import: checked and formatted for COPY (in a worker thread),
then merged into the brand's tables (in the chunk's transaction)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from store.imports.rows import Reject


@dataclass(frozen=True, slots=True)
class Staged:
    """The rows of a chunk to merge as COPY text, the rows already refused, and what the check alone
    could count (a row repeated in the chunk, say); ``items`` carries what a kind needs besides."""

    data: bytes
    rows: int
    rejects: list[Reject]
    counts: Counter[str]
    items: Sequence[Any] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class Merged:
    """What merging a chunk did, by outcome, and the rows only the database could refuse."""

    counts: Counter[str]
    rejects: list[Reject]

"""The data layer's vocabulary, as the schema may use it: rows, the domain's errors and the values
resolvers take and return.

The schema sits above the resolvers and never imports the data layer (an import-linter contract);
what it needs of the data layer's types comes through here, so this module is the whole of that
surface and grows only on purpose.
"""

from __future__ import annotations

from store.access.principals import Principal
from store.access.roles import Capability, Role
from store.audiences.deltas import Freshness, IndexState
from store.audiences.selections import IndexNotReadyError, InvalidExpressionError, Selection
from store.errors import DomainError, ErrorCode
from store.members.unification import Binding, Profile
from store.sql import Row
from store.tags.assignments import LISTED, MAX_MEMBER_IDS, TooManyIdsError, UnknownMembersError
from store.tags.catalog import UnknownTagError

# What a client reads for any error it was not meant to see (the trace goes to the log).
UNEXPECTED = "Unexpected error."

__all__ = [
    "LISTED",
    "MAX_MEMBER_IDS",
    "UNEXPECTED",
    "Binding",
    "Capability",
    "DomainError",
    "ErrorCode",
    "Freshness",
    "IndexNotReadyError",
    "IndexState",
    "InvalidExpressionError",
    "Principal",
    "Profile",
    "Role",
    "Row",
    "Selection",
    "TooManyIdsError",
    "UnknownMembersError",
    "UnknownTagError",
]

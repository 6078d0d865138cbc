"""Expected failures of domain operations: a stable code, a message and the offending field.

The GraphQL layer turns each code into a typed result; nothing here knows about GraphQL.
"""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    UNKNOWN_BRAND = "UNKNOWN_BRAND"
    UNKNOWN_GROUP = "UNKNOWN_GROUP"
    UNKNOWN_CHANNEL = "UNKNOWN_CHANNEL"
    UNKNOWN_MEMBER = "UNKNOWN_MEMBER"
    UNKNOWN_MERGE = "UNKNOWN_MERGE"
    INVALID_PHONE = "INVALID_PHONE"
    INVALID_INPUT = "INVALID_INPUT"
    DUPLICATE_BRAND = "DUPLICATE_BRAND"
    IDENTITY_ALREADY_BOUND = "IDENTITY_ALREADY_BOUND"
    SELF_MERGE = "SELF_MERGE"
    CROSS_BRAND_MERGE = "CROSS_BRAND_MERGE"
    ALREADY_MERGED = "ALREADY_MERGED"
    MERGE_NOT_REVERSIBLE = "MERGE_NOT_REVERSIBLE"
    INSUFFICIENT_POINTS = "INSUFFICIENT_POINTS"
    DUPLICATE_REQUEST = "DUPLICATE_REQUEST"
    UNKNOWN_POSTING = "UNKNOWN_POSTING"
    UNKNOWN_ORDER = "UNKNOWN_ORDER"
    ALREADY_CANCELLED = "ALREADY_CANCELLED"
    ORDER_FULLY_REFUNDED = "ORDER_FULLY_REFUNDED"
    UNKNOWN_TAG = "UNKNOWN_TAG"
    INVALID_TAG_CODE = "INVALID_TAG_CODE"
    DUPLICATE_TAG = "DUPLICATE_TAG"
    UNKNOWN_MEMBERS = "UNKNOWN_MEMBERS"
    TOO_MANY_IDS = "TOO_MANY_IDS"
    INVALID_EXPRESSION = "INVALID_EXPRESSION"
    UNKNOWN_AUDIENCE = "UNKNOWN_AUDIENCE"
    UNKNOWN_SNAPSHOT = "UNKNOWN_SNAPSHOT"
    INDEX_NOT_READY = "INDEX_NOT_READY"
    NOT_ALLOWED = "NOT_ALLOWED"


class DomainError(Exception):
    """An expected failure; the operation wrote nothing."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        field: str | None = None,
        member_id: int | None = None,
        available: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        # Points the member could spend, for INSUFFICIENT_POINTS.
        self.available = available
        # The member the failure is about, where one exists (e.g. the current owner of an identity).
        self.member_id = member_id

"""Typed errors of the audience API: a bad expression, an unknown saved audience or snapshot."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

import strawberry
from graphql import GraphQLError

from resolvers.domain import DomainError, ErrorCode, IndexNotReadyError, InvalidExpressionError
from schema.errors import Error, error_result

T = TypeVar("T")


@strawberry.type(
    description="The expression (or filter) does not parse, or names something the brand does not have. "
    "Text errors carry the position and a caret snippet; filter errors the path of the bad member."
)
class InvalidExpression(Error):
    reason: str = strawberry.field(
        description="The tag language's code: SYNTAX, INVALID_FILTER, UNKNOWN_TAG, UNKNOWN_DIMENSION, "
        "UNKNOWN_FIELD, UNKNOWN_VALUE, TYPE_MISMATCH, OUT_OF_RANGE, TOO_LONG, TOO_DEEP, TOO_MANY_TERMS; and CYCLE for "
        "a rule tag's rule that would make rule tags depend on themselves."
    )
    line: int | None = strawberry.field(description="1-based line of the offending text.")
    column: int | None = strawberry.field(description="1-based column (in characters) of the offending text.")
    snippet: str | None = strawberry.field(description="The source line and a line of carets under the problem.")
    suggestion: str | None = strawberry.field(description="The closest known name, for an unknown one.")
    path: str | None = strawberry.field(description="Where in a structured filter, e.g. `filter.and[1].field.op`.")
    valid_values: list[str] | None = strawberry.field(
        description="For an unknown tag, dimension, field or value: the valid ones, all of them when there are "
        "at most 20, else the closest few (`validValueCount` says how many there are); null for other errors."
    )
    valid_value_count: int | None = strawberry.field(
        description="For an unknown name: how many valid ones there are; null for other errors."
    )


@strawberry.type(description="No saved audience has this id.")
class UnknownAudience(Error):
    pass


@strawberry.type(description="No audience snapshot has this id.")
class UnknownSnapshot(Error):
    pass


@strawberry.type(
    description="The brand's audience index is being built (after a bulk load or a restore): an answer "
    "from it now would be wrong, not merely late. Retry shortly; `Brand.audienceIndex` says when it is READY."
)
class IndexNotReady(Error):
    pending: int = strawberry.field(description="Member changes queued for the index.")


def audience_error(error: DomainError) -> Any:
    """The typed result of an audience failure (other codes as schema.errors maps them)."""
    common: dict[str, Any] = {"code": error.code, "message": error.message, "field": error.field}
    if isinstance(error, InvalidExpressionError):
        return InvalidExpression(
            reason=error.reason,
            line=error.line,
            column=error.column,
            snippet=error.snippet,
            suggestion=error.suggestion,
            path=error.path,
            valid_values=error.valid_values,
            valid_value_count=error.valid_count,
            **common,
        )
    if error.code is ErrorCode.UNKNOWN_AUDIENCE:
        return UnknownAudience(**common)
    if error.code is ErrorCode.UNKNOWN_SNAPSHOT:
        return UnknownSnapshot(**common)
    if isinstance(error, IndexNotReadyError):
        return IndexNotReady(pending=error.pending, **common)
    return error_result(error)


async def or_query_error(result: Awaitable[T]) -> T:
    """Queries have no result unions: a failure becomes a GraphQL error whose extensions carry the
    code and, for a bad expression, the same details InvalidExpression has."""
    try:
        return await result
    except InvalidExpressionError as error:
        raise GraphQLError(error.message, extensions={"code": error.code.value, **error.details()}) from None
    except IndexNotReadyError as error:
        raise GraphQLError(error.message, extensions={"code": error.code.value, "pending": error.pending}) from None
    except DomainError as error:
        raise GraphQLError(error.message, extensions={"code": error.code.value, "field": error.field}) from None

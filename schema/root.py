"""The Schema object and its SDL snapshot."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.schema.types.base_scalars import DateTimeDefinition
from strawberry.types import ExecutionContext

from resolvers.domain import UNEXPECTED
from schema import federation, federation_spec
from schema.audiences import AudienceMutation
from schema.consent import ConsentMutation
from schema.documents import LIMITS, CheckedDocuments, Documents, Limits
from schema.erasure import ErasureMutation
from schema.errors import Error
from schema.lifecycle import LifecycleMutation
from schema.mutation import MemberMutation
from schema.points_mutation import PointsMutation
from schema.query import Query
from schema.tags import TagMutation

log = logging.getLogger("omnimember.graphql")
SDL_PATH = federation.SDL_PATH  # what `_service` answers


def _is_unexpected(error: GraphQLError) -> bool:
    """Mask errors raised by bugs; keep GraphQL's own (syntax, validation) and coded query errors."""
    return error.original_error is not None and not isinstance(error.original_error, GraphQLError)


@strawberry.type(description="Change members, identities, brands, points, orders, tags and saved audiences.")
class Mutation(
    MemberMutation, PointsMutation, TagMutation, AudienceMutation, ErasureMutation, ConsentMutation, LifecycleMutation
):
    pass


@strawberry.type(
    name="Query", description="Read member profiles and tag catalogs; entities for a federated supergraph."
)
class RootQuery(Query, federation.EntityQuery):
    pass


class Schema(strawberry.Schema):
    def __init__(
        self, *args: Any, limits: Limits = LIMITS, introspection: bool = True, suggestions: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        # Every document is parsed and validated here once, within limits (schema.documents).
        self.documents = Documents(self._schema, limits, introspection=introspection, suggestions=suggestions)

    def process_errors(self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None) -> None:
        """Log what clients see as "Unexpected error." with the request id; expected errors are data."""
        context = getattr(execution_context, "context", None)
        request_id = getattr(context, "request_id", "-")
        for error in errors:
            if _is_unexpected(error):
                log.error("request %s: %s", request_id, error.message, exc_info=error.original_error)


def mask_unexpected(errors: list[GraphQLError], request_id: str | None = None) -> list[GraphQLError]:
    """What clients see of errors: bugs become "Unexpected error." (logged in full by `Schema`).

    Done once at the HTTP boundary rather than by strawberry's MaskErrors extension, whose
    per-request hooks cost more than the rest of a trivial query.
    """
    return [
        GraphQLError(
            UNEXPECTED,
            nodes=e.nodes,
            source=e.source,
            positions=e.positions,
            path=e.path,
            extensions={"code": "INTERNAL", **({"requestId": request_id} if request_id else {})},
        )
        if _is_unexpected(e)
        else e
        for e in errors
    ]


assert DateTimeDefinition.parse_value is not None
_STRAWBERRY_DATETIME: Callable[[Any], Any] = DateTimeDefinition.parse_value


def _parse_datetime(value: object) -> object:
    """strawberry's DateTime parsing (dateutil's isoparse, its errors), with the standard
    library's parser tried first: every order carries a paidAt, and isoparse took about 8% of
    the server's time handling a recordOrder request."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return dt.datetime.fromisoformat(value)
    return _STRAWBERRY_DATETIME(value)


DATETIME = dataclasses.replace(DateTimeDefinition, parse_value=_parse_datetime)


def build_schema(*, introspection: bool = True, suggestions: bool = True) -> Schema:
    """The schema; production turns introspection and "did you mean" suggestions off (api.settings)."""
    return Schema(
        introspection=introspection,
        suggestions=suggestions,
        query=RootQuery,
        mutation=Mutation,
        types=[Error, federation.ChannelIdentity],
        # A subgraph of an Apollo Federation 2 supergraph (schema.federation, docs/federation.md).
        schema_directives=[federation_spec.FEDERATION_LINK],
        scalar_overrides={dt.datetime: DATETIME, **federation_spec.SCALARS, **federation.SCALARS},
        # Parsing and validating dominate the cost of a small query: each document once, and
        # within limits (schema.documents).
        extensions=[CheckedDocuments],
    )


def sdl() -> str:
    return build_schema().as_str() + "\n"

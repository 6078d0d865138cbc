"""Plans: a read document compiled once to one SQL statement, then answered per request."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
import sqlalchemy as sa
from graphql import GraphQLSchema, OperationDefinitionNode, OperationType
from graphql.execution.values import get_argument_values, get_variable_values
from psycopg_pool import PoolTimeout

from resolvers.sqljson.compiler import Binding, Compiler, Needs
from resolvers.sqljson.documents import Memo, ParsedDocuments, valid_operation
from resolvers.sqljson.json_sql import json_object, text
from resolvers.sqljson.members import member_root, members_page
from resolvers.sqljson.selection import NotCompilable
from store.errors import DomainError
from store.sql import Query

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Plan:
    operation: OperationDefinitionNode
    query: Query
    bindings: tuple[Binding, ...]
    scope: tuple[str, str] | None  # the parameters of the caller's brand scope
    channel_ids: bool  # reads raw channel ids


class Plans:
    """Documents seen by this process: their plan, or None when they take the general path."""

    def __init__(self, schema: GraphQLSchema, documents: ParsedDocuments) -> None:
        self._schema = schema
        self._documents = documents
        self._known = Memo(self._compile)

    def plan(self, document: str, operation_name: str | None) -> Plan | None:
        return self._known.get(document, operation_name)

    async def answer(self, plan: Plan, variables: Mapping[str, Any] | None, needs: Needs) -> bytes | None:
        """The response body, or None when the request must take the general path (bad variables,
        arguments the general path reports as errors, a database error it will report or retry)."""
        coerced = get_variable_values(self._schema, plan.operation.variable_definitions or (), dict(variables or {}))
        if isinstance(coerced, list):
            return None
        principal = needs.principal
        if plan.channel_ids and principal.pseudonymous_ids:
            return None  # pseudonyms are keyed hashes, made by the general path's resolvers
        params: dict[str, Any] = {}
        if plan.scope is not None:
            every, brand_ids = plan.scope
            params[every] = principal.brand_ids is None
            params[brand_ids] = sorted(principal.brand_ids or ())
        try:
            for binding in plan.bindings:
                arguments = get_argument_values(binding.field, binding.node, coerced)
                params.update(await binding.binder(arguments, needs))
            async with needs.pool.connection() as conn:
                data: str = await plan.query.scalar(conn, **params)
        except DomainError:
            return None
        except PoolTimeout:  # no connection: the general path would only wait again (the caller answers 503)
            raise
        except psycopg.Error as error:
            log.warning("compiled read failed, taking the general path: %s", error)
            return None
        return b'{"data":' + data.encode() + b"}"

    def _compile(self, document: str, operation_name: str | None) -> Plan | None:
        found = valid_operation(self._documents, document, operation_name, OperationType.QUERY)
        if found is None:
            return None
        operation, fragments = found.node, found.fragments
        compiler = Compiler(self._schema, fragments)
        try:
            fields = compiler.fields([operation.selection_set], "Query")
            data = json_object([(field.key, _root_field(compiler, field)) for field in fields])
        except NotCompilable as reason:
            log.debug("general path for %s: %s", operation.name.value if operation.name else "anonymous", reason)
            return None
        scope = None if compiler.scope is None else (compiler.scope[0].key, compiler.scope[1].key)
        query = Query(sa.select(sa.cast(data, sa.Text)))
        return Plan(operation, query, tuple(compiler.bindings), scope, compiler.channel_ids)


def _root_field(c: Compiler, field: Any) -> sa.ColumnElement[Any]:
    match field.name:
        case "__typename":
            return text("Query")
        case "member":
            return member_root(c, field)
        case "members":
            return members_page(c, field)
    raise NotCompilable(f"Query.{field.name}")

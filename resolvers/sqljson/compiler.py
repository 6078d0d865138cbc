"""What a compiled plan is made of: bound parameters, and the bindings that fill them per request."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from graphql import FieldNode, FragmentDefinitionNode, GraphQLField, GraphQLSchema, SelectionSetNode

from resolvers.sqljson.selection import NotCompilable, Selected, collect
from store.access.principals import Principal
from store.brands import ScopedBrands

Params = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Needs:
    """What a binding may consult: the brand directory as the caller sees it, the pool, the caller."""

    brands: ScopedBrands
    pool: Any
    principal: Principal


# Turns a field's coerced arguments into parameter values; raises DomainError for arguments the
# general path reports as errors, and the request then takes that path.
Binder = Callable[[Mapping[str, Any], Needs], Awaitable[Params]]


@dataclass(frozen=True, slots=True)
class Binding:
    field: GraphQLField
    node: FieldNode
    binder: Binder


class Compiler:
    """Collects the parameters and argument bindings of one operation while it is compiled."""

    def __init__(self, schema: GraphQLSchema, fragments: Mapping[str, FragmentDefinitionNode]) -> None:
        self._schema = schema
        self._fragments = fragments
        self._names = itertools.count()
        self.bindings: list[Binding] = []
        # The caller's brand scope, as two parameters every plan that filters by brand shares.
        self.scope: tuple[sa.BindParameter[Any], sa.BindParameter[Any]] | None = None
        # Whether the plan reads channel ids, which some callers see only as pseudonyms (general path).
        self.channel_ids = False

    def fields(self, selection_sets: list[SelectionSetNode], type_name: str) -> list[Selected]:
        return collect(selection_sets, type_name, self._fragments)

    def subfields(self, selected: Selected, type_name: str) -> list[Selected]:
        return self.fields(selected.subselection(), type_name)

    def alias(self, table: sa.Table) -> sa.TableClause:
        """A uniquely named alias, so nested subqueries never capture each other's tables."""
        return table.alias(f"{table.name[:1]}{next(self._names)}")  # type: ignore[return-value]

    def param(self, type_: type[sa.types.TypeEngine[Any]]) -> sa.BindParameter[Any]:
        """A per-request parameter; cast so PostgreSQL knows its type inside json_build_object."""
        return sa.bindparam(f"p{next(self._names)}", type_=type_)

    def in_scope(self, brand_id: Any) -> sa.ColumnElement[bool]:
        """True for rows of brands the caller sees (rows of others read as missing)."""
        if self.scope is None:
            self.scope = (self.param(sa.Boolean), self.param(sa.ARRAY(sa.BigInteger)))  # type: ignore[arg-type]
        every, brand_ids = self.scope
        return sa.or_(every, brand_id == sa.any_(brand_ids))

    def bind(self, parent_type: str, selected: Selected, binder: Binder) -> None:
        parent = self._schema.get_type(parent_type)
        field = getattr(parent, "fields", {}).get(selected.name)
        if field is None:
            raise NotCompilable(f"{parent_type}.{selected.name}")
        self.bindings.append(Binding(field, selected.node, binder))

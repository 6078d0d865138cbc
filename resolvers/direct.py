"""Mutations executed without graphql-core: strawberry's own resolvers and types, a lean walker.

A posting spends most of its server time in GraphQL execution (info objects, middleware, value
completion per field), not in its one or two statements. For a mutation document this module has
planned (validated once, every field on every possible runtime type known to be resolvable, only
scalar arguments), a request calls the same root resolvers strawberry would, serially and in
order, and renders their results by walking the selection: attributes are read, field resolvers
(which take only ``info``) awaited, leaves serialised by the schema's own scalars and enums. The
answer is what graphql-core would produce (tests/test_direct.py compares the two), minus the
machinery. Anything else, decided before anything runs, goes to the general path.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    GraphQLAbstractType,
    GraphQLEnumType,
    GraphQLError,
    GraphQLField,
    GraphQLInputType,
    GraphQLList,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLOutputType,
    GraphQLScalarType,
    GraphQLSchema,
    OperationDefinitionNode,
    OperationType,
    SelectionSetNode,
    Undefined,
    VariableNode,
    is_abstract_type,
    is_required_argument,
    type_from_ast,
)
from graphql.execution.values import (
    VariableValues,
    get_argument_values,
    get_variable_values,
    maybe_use_default_value,
)
from graphql.utilities.coerce_input_value import coerce_input_literal
from psycopg_pool import PoolTimeout
from strawberry.types.base import StrawberryObjectDefinition
from strawberry.types.field import StrawberryField

from resolvers.context import Context
from resolvers.domain import UNEXPECTED
from resolvers.sqljson.documents import Memo, ParsedDocuments, valid_operation
from resolvers.sqljson.selection import NotCompilable, Selected, collect

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Argument:
    """Where a root field's argument comes from: a variable, or a value known when planning."""

    keyword: str
    variable: str | None
    value: Any  # the constant, or the default when the variable is missing; Undefined: none
    required: bool


@dataclass(frozen=True, slots=True)
class _Root:
    key: str
    field: GraphQLField
    node: FieldNode
    resolver: StrawberryField
    python_names: Mapping[str, str]  # GraphQL argument name -> keyword
    arguments: tuple[_Argument, ...] | None  # None: graphql-core works them out per request


@dataclass(frozen=True, slots=True)
class _Variable:
    name: str
    scalar: GraphQLScalarType | None  # a (non-null) named scalar without a default: parsed here
    non_null: bool


@dataclass(frozen=True, slots=True)
class MutationPlan:
    operation: OperationDefinitionNode
    roots: tuple[_Root, ...]
    fragments: Mapping[str, FragmentDefinitionNode]
    variables: tuple[_Variable, ...]
    # How to render each runtime type under given field nodes: the same for every request.
    renderings: dict[tuple[str, tuple[int, ...]], list[_Rendered]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Rendered:
    """One selected field of an object, worked out once per plan."""

    key: str  # the response key (alias or name)
    resolver: StrawberryField | None  # awaited with the object; None: read ``attribute``
    attribute: str | None  # the Python attribute; None for __typename
    output: GraphQLOutputType | None  # None for __typename
    nodes: list[FieldNode]


@dataclass(frozen=True, slots=True)
class _Info:
    """What our resolvers read of strawberry's Info: the context, nothing else."""

    context: Context


class DirectMutations:
    def __init__(self, strawberry_schema: Any, documents: ParsedDocuments) -> None:
        self._strawberry = strawberry_schema
        self._schema: GraphQLSchema = strawberry_schema._schema
        self._documents = documents
        self._known = Memo(self._compile)
        self._fields: dict[str, dict[str, StrawberryField]] = {}

    def plan(self, document: str, operation_name: str | None) -> MutationPlan | None:
        return self._known.get(document, operation_name)

    async def answer(self, plan: MutationPlan, variables: Mapping[str, Any] | None, context: Context) -> bytes | None:
        """The response body; None (before anything ran) when the variables are not valid."""
        # The common case (scalar variables, arguments from variables and constants) is worked
        # out here; anything else by graphql-core, as before.
        planned = _planned_keywords(plan, variables or {})
        found: VariableValues | None = None
        if planned is None:
            coerced = get_variable_values(
                self._schema, plan.operation.variable_definitions or (), dict(variables or {})
            )
            if isinstance(coerced, list):
                return None
            found = coerced
        info = _Info(context)
        data: dict[str, Any] = {}
        try:
            for index, root in enumerate(plan.roots):
                if planned is not None:
                    kwargs = planned[index]
                else:
                    arguments = get_argument_values(root.field, root.node, found)
                    kwargs = {root.python_names[name]: value for name, value in arguments.items()}
                result = await _resolve(root.resolver, None, info, kwargs)
                data[root.key] = await self._complete(result, root.field.type, [root.node], plan, info)
        except PoolTimeout:  # nothing ran without a connection: the caller answers 503, a retry is safe
            raise
        except Exception:  # a bug: what the general path would mask, logged in full
            log.exception("request %s: unexpected error in a mutation", context.request_id)
            extensions = {"code": "INTERNAL", "requestId": context.request_id}
            return _encode({"data": None, "errors": [{"message": UNEXPECTED, "extensions": extensions}]})
        return _encode({"data": data})

    # --- planning -------------------------------------------------------------------------------

    def _compile(self, document: str, operation_name: str | None) -> MutationPlan | None:
        found = valid_operation(self._documents, document, operation_name, OperationType.MUTATION)
        if found is None:
            return None
        operation, fragments = found.node, found.fragments
        mutation_type = self._schema.mutation_type
        assert mutation_type is not None
        try:
            roots = []
            for selected in collect([operation.selection_set], mutation_type.name, fragments):
                roots.append(self._root(mutation_type, selected))
                self._check(mutation_type.fields[selected.name].type, selected.subselection(), fragments)
        except NotCompilable as reason:
            log.debug("general path for a mutation: %s", reason)
            return None
        return MutationPlan(operation, tuple(roots), fragments, self._variables(operation))

    def _variables(self, operation: OperationDefinitionNode) -> tuple[_Variable, ...]:
        planned = []
        for definition in operation.variable_definitions or ():
            input_type = type_from_ast(self._schema, definition.type)
            non_null = isinstance(input_type, GraphQLNonNull)
            named = input_type.of_type if isinstance(input_type, GraphQLNonNull) else input_type
            scalar = named if isinstance(named, GraphQLScalarType) and definition.default_value is None else None
            planned.append(_Variable(definition.variable.name.value, scalar, non_null))
        return tuple(planned)

    def _root(self, mutation_type: GraphQLObjectType, selected: Selected) -> _Root:
        if selected.name == "__typename":
            raise NotCompilable("__typename at the mutation root")
        field = self._strawberry_fields(mutation_type.name)[selected.name]
        if field.base_resolver is None:
            raise NotCompilable(f"{selected.name} has no resolver")
        names = {}
        for argument in field.arguments:
            names[self._strawberry.config.name_converter.get_graphql_name(argument)] = argument.python_name
        given = {argument.name.value for argument in selected.node.arguments or ()}
        for name, graphql_argument in mutation_type.fields[selected.name].args.items():
            # An input object the document leaves out takes its default (recordOrder's `lines`: null).
            if name in given and not _scalar_input(graphql_argument.type):
                raise NotCompilable(f"argument {name} is not a scalar")
        graphql_field = mutation_type.fields[selected.name]
        return _Root(
            selected.key, graphql_field, selected.node, field, names, _planned_arguments(graphql_field, selected, names)
        )

    def _check(
        self,
        output: GraphQLOutputType,
        selection_sets: list[SelectionSetNode],
        fragments: Mapping[str, FragmentDefinitionNode],
    ) -> None:
        """Every field selectable on every runtime type can be rendered here, or NotCompilable."""
        named = _unwrap(output)
        if isinstance(named, GraphQLScalarType | GraphQLEnumType):
            return
        possible = self._schema.get_possible_types(named) if is_abstract_type(named) else [named]
        for object_type in possible:
            assert isinstance(object_type, GraphQLObjectType)
            fields = self._strawberry_fields(object_type.name)
            for selected in collect(selection_sets, object_type.name, fragments, self._condition_matches):
                if selected.name == "__typename":
                    continue
                field = fields.get(selected.name)
                if field is None or any(node.arguments for node in selected.nodes) or field.arguments:
                    raise NotCompilable(f"{object_type.name}.{selected.name}")
                self._check(object_type.fields[selected.name].type, selected.subselection(), fragments)

    def _strawberry_fields(self, type_name: str) -> dict[str, StrawberryField]:
        fields = self._fields.get(type_name)
        if fields is None:
            definition = self._strawberry.get_type_by_name(type_name)
            if not isinstance(definition, StrawberryObjectDefinition):
                raise NotCompilable(type_name)
            convert = self._strawberry.config.name_converter.get_graphql_name
            fields = self._fields[type_name] = {convert(field): field for field in definition.fields}
        return fields

    def _condition_matches(self, condition: str, type_name: str) -> bool:
        if condition == type_name:
            return True
        abstract = self._schema.get_type(condition)
        object_type = self._schema.get_type(type_name)
        return (
            isinstance(abstract, GraphQLAbstractType)
            and isinstance(object_type, GraphQLObjectType)
            and self._schema.is_sub_type(abstract, object_type)
        )

    # --- rendering ------------------------------------------------------------------------------

    async def _complete(
        self, value: Any, output: GraphQLOutputType, nodes: list[FieldNode], plan: MutationPlan, info: _Info
    ) -> Any:
        if isinstance(output, GraphQLNonNull):
            if value is None:
                raise ValueError(f"null for a non-null {output}")
            output = output.of_type
        elif value is None:
            return None
        if isinstance(output, GraphQLList):
            return [await self._complete(item, output.of_type, nodes, plan, info) for item in value]
        if isinstance(output, GraphQLScalarType | GraphQLEnumType):
            return output.serialize(value)
        definition: StrawberryObjectDefinition = value.__strawberry_definition__
        rendered: dict[str, Any] = {}
        for entry in self._rendering(plan, definition.name, nodes):
            if entry.output is None:
                rendered[entry.key] = definition.name
                continue
            if entry.resolver is None:
                assert entry.attribute is not None
                field_value = getattr(value, entry.attribute)
            else:
                field_value = await _resolve(entry.resolver, value, info, {})
            rendered[entry.key] = await self._complete(field_value, entry.output, entry.nodes, plan, info)
        return rendered

    def _rendering(self, plan: MutationPlan, type_name: str, nodes: list[FieldNode]) -> list[_Rendered]:
        key = (type_name, tuple(id(node) for node in nodes))  # nodes live as long as the plan
        rendering = plan.renderings.get(key)
        if rendering is None:
            rendering = plan.renderings[key] = self._render_plan(plan, type_name, nodes)
        return rendering

    def _render_plan(self, plan: MutationPlan, type_name: str, nodes: list[FieldNode]) -> list[_Rendered]:
        object_type = self._schema.get_type(type_name)
        assert isinstance(object_type, GraphQLObjectType)
        fields = self._strawberry_fields(type_name)
        selection_sets = [node.selection_set for node in nodes if node.selection_set is not None]
        rendering = []
        for selected in collect(selection_sets, type_name, plan.fragments, self._condition_matches):
            if selected.name == "__typename":
                rendering.append(_Rendered(selected.key, None, None, None, []))
                continue
            strawberry_field = fields[selected.name]
            resolver = strawberry_field if strawberry_field.base_resolver is not None else None
            attribute = None if resolver is not None else strawberry_field.python_name
            output = object_type.fields[selected.name].type
            rendering.append(_Rendered(selected.key, resolver, attribute, output, list(selected.nodes)))
        return rendering


def _scalar_variables(plan: MutationPlan, variables: Mapping[str, Any]) -> dict[str, Any] | None:
    """The variables parsed as graphql-core would when each is a scalar that was sent (or may be
    null); None when any needs more than that or is not valid, for graphql-core to decide."""
    coerced: dict[str, Any] = {}
    for variable in plan.variables:
        if variable.scalar is None or variable.name not in variables:
            return None
        value = variables[variable.name]
        if value is None:
            if variable.non_null:
                return None
            coerced[variable.name] = None
            continue
        try:
            parsed = variable.scalar.parse_value(value)
        except Exception:  # graphql-core reports it
            return None
        if parsed is Undefined:
            return None
        coerced[variable.name] = parsed
    return coerced


def _planned_arguments(
    graphql_field: GraphQLField, selected: Selected, names: Mapping[str, str]
) -> tuple[_Argument, ...] | None:
    """A root field's arguments as graphql-core's get_argument_values finds them, for the common
    shapes (variables, constants, defaults); None for anything else."""
    given = {argument.name.value: argument.value for argument in selected.node.arguments or ()}
    planned = []
    for name, definition in graphql_field.args.items():
        node = given.get(name)
        default: dict[str, Any] = {}
        maybe_use_default_value(default, name, definition, _no_default)
        required = is_required_argument(definition)
        if isinstance(node, VariableNode):
            planned.append(_Argument(names[name], node.name.value, default.get(name, Undefined), required))
            continue
        value = default.get(name, Undefined) if node is None else coerce_input_literal(node, definition.type)
        if node is not None and value is Undefined:  # not valid: graphql-core explains
            return None
        planned.append(_Argument(names[name], None, value, required))
    return tuple(planned)


def _no_default(error: GraphQLError, path: list[str | int]) -> None:
    raise error


def _planned_keywords(plan: MutationPlan, variables: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """Each root resolver's keyword arguments; None when graphql-core has to work them out."""
    coerced = _scalar_variables(plan, variables)
    if coerced is None:
        return None
    planned = []
    for root in plan.roots:
        if root.arguments is None:
            return None
        keywords: dict[str, Any] = {}
        for argument in root.arguments:
            if argument.variable is None or argument.variable not in coerced:
                if argument.variable is not None and argument.required:
                    return None
                if argument.value is not Undefined:
                    keywords[argument.keyword] = argument.value
                continue
            value = coerced[argument.variable]
            if value is None and argument.required:
                return None
            keywords[argument.keyword] = value
        planned.append(keywords)
    return planned


def _encode(response: dict[str, Any]) -> bytes:
    return json.dumps(response, separators=(",", ":")).encode()  # as strawberry's encode_json


async def _resolve(field: StrawberryField, parent: Any, info: _Info, arguments: dict[str, Any]) -> Any:
    """Call a strawberry field's resolver as strawberry does: self, then info if it asks for it."""
    resolver = field.base_resolver
    assert resolver is not None
    if resolver.info_parameter is not None:
        arguments = {**arguments, resolver.info_parameter.name: info}
    function: Any = resolver.wrapped_func
    value = function(parent, **arguments)
    return await value if resolver.is_async else value


def _unwrap(output: Any) -> Any:
    while isinstance(output, GraphQLNonNull | GraphQLList):
        output = output.of_type
    return output


def _scalar_input(input_type: GraphQLInputType) -> bool:
    return isinstance(_unwrap(input_type), GraphQLScalarType)

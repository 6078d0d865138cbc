"""Every GraphQL document is checked here once, before anything else looks at it.

In order, each step bounding the cost of the next: its length (`max_chars`), its tokens (the parser
stops at `max_tokens`), its shape after fragment expansion (fields, aliases, depth, fragment
nesting and cycles, counted without recursion), then validation against the schema. What passes is
remembered by text, within a budget of text characters (an AST costs in proportion to its text), so
a repeated document costs a dictionary lookup. The cost of a request (`cost`) also depends on its
variables: list sizes (`first` / `last`) multiply through nesting.

Large documents are checked on a worker thread (`check_async`), so no request holds the event loop
for long. Refusals are GraphQL errors with a code in `extensions`, never exceptions.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import anyio
from graphql import (
    DocumentNode,
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    GraphQLError,
    GraphQLSchema,
    InlineFragmentNode,
    IntValueNode,
    ListValueNode,
    NoSchemaIntrospectionCustomRule,
    ObjectValueNode,
    OperationDefinitionNode,
    SelectionSetNode,
    StringValueNode,
    ValueNode,
    VariableNode,
    parse,
    specified_rules,
)
from strawberry.extensions import SchemaExtension
from strawberry.schema.schema import validate_document

from resolvers.domain import Capability


@dataclass(frozen=True, slots=True)
class Limits:
    """What one document may ask for. Generous for any real client (the largest documents of the
    tour and the benchmarks use under a tenth of each); bounded so that parsing, validating and
    answering one stays in milliseconds."""

    max_chars: int = 100_000
    max_tokens: int = 5_000
    max_depth: int = 10  # field nesting, fragments expanded
    max_fragment_depth: int = 20  # fragments spread within fragments
    max_aliases: int = 30  # after fragment expansion
    max_fields: int = 1_000  # selected fields after fragment expansion, duplicates counted
    max_cost: int = 25_000  # fields times the list sizes (`first`/`last`) around them
    cache_chars: int = 2_000_000  # text of the remembered documents
    cache_documents: int = 1_000
    inline_chars: int = 2_000  # longer new documents are checked on a worker thread


LIMITS = Limits()
# graphql-core's parser refusals by what their message says; anything else is a syntax error.
_PARSE_CODES = {"tokens": "TOO_MANY_TOKENS", "comments": "TOO_MANY_TOKENS", "nested too deeply": "TOO_DEEP"}
# Introspection's `__Type.ofType` (no field of the schema has the name) is not counted in the depth: a
# chain of them only unwraps one list or non-null type after another, a few at most, one object each;
# counted, GraphiQL's introspection query nests 15 and its schema (docs, completion) never loads.
_UNWRAP = "ofType"
# Checks of large documents at once, on worker threads: more would only queue on the GIL.
_THREADS = anyio.CapacityLimiter(2)
_SUGGESTION = re.compile(r"\s*Did you mean [^?]*\?")


def refusal(code: str, message: str, **extensions: Any) -> GraphQLError:
    return GraphQLError(message, extensions={"code": code, **extensions})


def unstorable(text: str) -> str | None:
    """Why PostgreSQL could not store this text, if it could not: a NUL character or invalid
    Unicode (an unpaired surrogate, which JSON's escapes can carry)."""
    if "\x00" in text:
        return "a NUL character (U+0000)"
    try:
        text.encode()
    except UnicodeEncodeError:
        return "an unpaired surrogate (not valid Unicode)"
    return None


@dataclass(frozen=True, slots=True)
class Shape:
    """A selection set's size with its fragments expanded, per unit of its parent's list size."""

    fields: int = 0
    aliases: int = 0
    depth: int = 0
    cost: int = 0


@dataclass(slots=True)
class Checked:
    """A document after the checks: parsed and valid (``errors`` empty), or refused."""

    document: DocumentNode | None
    errors: list[GraphQLError]
    # Whether any `first`/`last` takes a variable: only then does a request's cost need its variables.
    sized_by_variables: bool = False
    static_cost: int = 0
    fragments: dict[str, FragmentDefinitionNode] = field(default_factory=dict)
    # The capabilities its fields need, with the first field needing each (schema.permissions fills it once).
    needs: tuple[tuple[Capability, str], ...] | None = None


class Documents:
    """The checks, and the memory of documents that passed or failed them."""

    def __init__(
        self, schema: GraphQLSchema, limits: Limits = LIMITS, *, introspection: bool = True, suggestions: bool = True
    ) -> None:
        self._schema = schema
        self._rules = tuple(specified_rules) + (() if introspection else (NoSchemaIntrospectionCustomRule,))
        self._suggestions = suggestions
        self.limits = limits
        self._known: OrderedDict[str, Checked] = OrderedDict()
        self._chars = 0
        self._lock = threading.Lock()

    def check(self, text: str) -> Checked:
        with self._lock:
            known = self._known.get(text)
            if known is not None:
                self._known.move_to_end(text)
                return known
        checked = self._check(text)
        with self._lock:
            if text not in self._known and len(text) <= self.limits.cache_chars:
                self._known[text] = checked
                self._chars += len(text)
                while self._chars > self.limits.cache_chars or len(self._known) > self.limits.cache_documents:
                    oldest, _ = self._known.popitem(last=False)
                    self._chars -= len(oldest)
        return checked

    def parsed(self, text: str) -> DocumentNode | None:
        """The document if it passed every check (what compiled reads and planned mutations take)."""
        checked = self.check(text)
        return checked.document if not checked.errors else None

    async def check_async(self, text: str) -> Checked:
        """`check`, on a worker thread when the document is new and long."""
        if len(text) <= self.limits.inline_chars or text in self._known:
            return self.check(text)
        return await anyio.to_thread.run_sync(self.check, text, limiter=_THREADS)

    def cost(
        self, checked: Checked, operation_name: str | None, variables: Mapping[str, Any] | None
    ) -> GraphQLError | None:
        """The refusal of a request whose list sizes make it too costly, else None."""
        if checked.document is None:
            return None
        cost = checked.static_cost
        if checked.sized_by_variables:
            operation = _operation(checked.document, operation_name)
            if operation is None:
                return None
            cost = _shape(operation.selection_set, checked.fragments, dict(variables or {})).cost
        if cost > self.limits.max_cost:
            return refusal(
                "TOO_COSTLY",
                f"the document asks for up to {cost:,} fields and list items; at most {self.limits.max_cost:,}:"
                " ask for smaller pages (first / last)",
                limit=self.limits.max_cost,
                cost=cost,
            )
        return None

    def _check(self, text: str) -> Checked:
        limits = self.limits
        if len(text) > limits.max_chars:
            message = f"the document has {len(text):,} characters; at most {limits.max_chars:,}"
            return Checked(None, [refusal("DOCUMENT_TOO_LARGE", message, limit=limits.max_chars)])
        try:
            document = parse(text, max_lexical_tokens=limits.max_tokens, max_comments=limits.max_tokens)
        except GraphQLError as refused:
            code = _PARSE_CODES.get(next((k for k in _PARSE_CODES if k in refused.message), ""), "SYNTAX_ERROR")
            refused.extensions = {**(refused.extensions or {}), "code": code}
            return Checked(None, [refused])
        fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
        too_big, cost = self._refuse_shape(document, fragments)
        if too_big is not None:
            return Checked(None, [too_big])
        bad_text = _unstorable_argument(document)
        if bad_text is not None:
            return Checked(None, [bad_text])
        errors = validate_document(self._schema, document, self._rules)
        for error in errors:
            error.extensions = {**(error.extensions or {}), "code": "INVALID_DOCUMENT"}
            if not self._suggestions:  # they would spell out the schema to a caller who cannot introspect it
                error.message = _SUGGESTION.sub("", error.message)
        sized = any(_sized_by_variable(node) for node in _fields(document))
        static = 0 if sized else cost
        return Checked(document, errors, sized_by_variables=sized, static_cost=static, fragments=fragments)

    def _refuse_shape(
        self, document: DocumentNode, fragments: dict[str, FragmentDefinitionNode]
    ) -> tuple[GraphQLError | None, int]:
        """The refusal of a document past a limit, and the highest cost of its operations (list
        sizes from variables counted as 1: `cost` redoes it with the request's variables)."""
        limits = self.limits
        nesting = _fragment_nesting(fragments)
        if nesting is None:
            return refusal("INVALID_DOCUMENT", "fragments spread within themselves (a cycle)"), 0
        if nesting > limits.max_fragment_depth:
            return refusal(
                "TOO_DEEP",
                f"fragments nest {nesting} deep; at most {limits.max_fragment_depth}",
                limit=limits.max_fragment_depth,
            ), 0
        cost = 0
        for operation in _operations(document):
            shape = _shape(operation.selection_set, fragments, {})
            name = f"operation '{operation.name.value}'" if operation.name else "the operation"
            if shape.depth > limits.max_depth:
                message = f"{name} exceeds maximum operation depth of {limits.max_depth} (it nests {shape.depth})"
                return refusal("TOO_DEEP", message, limit=limits.max_depth), 0
            if shape.aliases > limits.max_aliases:
                message = f"{name} has {shape.aliases} aliases with fragments expanded; at most {limits.max_aliases}"
                return refusal("TOO_MANY_ALIASES", message, limit=limits.max_aliases), 0
            if shape.fields > limits.max_fields:
                message = (
                    f"{name} selects {shape.fields:,} fields with fragments expanded; at most {limits.max_fields:,}"
                )
                return refusal("TOO_MANY_FIELDS", message, limit=limits.max_fields), 0
            cost = max(cost, shape.cost)
        return None, cost


def _operations(document: DocumentNode) -> Iterator[OperationDefinitionNode]:
    return (d for d in document.definitions if isinstance(d, OperationDefinitionNode))


def _operation(document: DocumentNode, name: str | None) -> OperationDefinitionNode | None:
    found = [o for o in _operations(document) if name is None or (o.name is not None and o.name.value == name)]
    return found[0] if len(found) == 1 else None


def _fields(document: DocumentNode) -> Iterator[FieldNode]:
    """Every field node of the document, without recursion."""
    stack: list[SelectionSetNode] = [
        d.selection_set for d in document.definitions if isinstance(d, OperationDefinitionNode | FragmentDefinitionNode)
    ]
    while stack:
        for selection in stack.pop().selections:
            if isinstance(selection, FieldNode):
                yield selection
            if isinstance(selection, FieldNode | InlineFragmentNode) and selection.selection_set is not None:
                stack.append(selection.selection_set)


def _unstorable_argument(document: DocumentNode) -> GraphQLError | None:
    """The first argument whose text could not be stored, as an INVALID_INPUT naming it."""
    for node in _fields(document):
        for argument in node.arguments or ():
            values: list[ValueNode] = [argument.value]
            while values:
                value = values.pop()
                if isinstance(value, ListValueNode):
                    values.extend(value.values)
                elif isinstance(value, ObjectValueNode):
                    values.extend(f.value for f in value.fields)
                elif isinstance(value, StringValueNode) and (why := unstorable(value.value)) is not None:
                    name = argument.name.value
                    message = f"the argument '{name}' of '{node.name.value}' holds {why}: it cannot be stored"
                    return GraphQLError(message, value, extensions={"code": "INVALID_INPUT", "field": name})
    return None


# Arguments that say how many items a field returns: page sizes, and federation's entity references
# (`_entities` answers one entity per reference, schema.federation).
_SIZES = ("first", "last")
_REFERENCES = "representations"


def _sized_by_variable(node: FieldNode) -> bool:
    return any(
        a.name.value in (*_SIZES, _REFERENCES) and isinstance(a.value, VariableNode) for a in node.arguments or ()
    )


def _list_size(node: FieldNode, variables: Mapping[str, Any]) -> int:
    """How many items a field may return per parent, as far as its arguments say (1 if they don't)."""
    for argument in node.arguments or ():
        value = argument.value
        if argument.name.value == _REFERENCES:
            references = variables.get(value.name.value) if isinstance(value, VariableNode) else None
            if isinstance(value, ListValueNode):
                return max(len(value.values), 1)
            return max(len(references), 1) if isinstance(references, list) else 1
        if argument.name.value not in _SIZES:
            continue
        if isinstance(value, IntValueNode):
            return max(int(value.value), 1)
        if isinstance(value, VariableNode) and isinstance(variables.get(value.name.value), int):
            return max(int(variables[value.name.value]), 1)
    return 1


def _fragment_nesting(fragments: dict[str, FragmentDefinitionNode]) -> int | None:
    """How deep fragments spread within fragments (1: none does), or None on a cycle; no recursion,
    so a chain of thousands answers instead of overflowing the stack."""
    spreads = {name: _spreads(fragment.selection_set) for name, fragment in fragments.items()}
    depth: dict[str, int] = {}
    for root in fragments:
        if root in depth:
            continue
        path: list[str] = [root]
        on_path = {root}
        pending: list[Iterator[str]] = [iter(spreads[root])]
        while pending:
            child = next(pending[-1], None)
            if child is None:
                done = path.pop()
                on_path.discard(done)
                pending.pop()
                depth[done] = 1 + max((depth.get(c, 0) for c in spreads[done] if c in fragments), default=0)
                continue
            if child not in fragments or child in depth:
                continue
            if child in on_path:
                return None
            path.append(child)
            on_path.add(child)
            pending.append(iter(spreads[child]))
    return max(depth.values(), default=0)


def _spreads(selection_set: SelectionSetNode) -> list[str]:
    names: list[str] = []
    stack = [selection_set]
    while stack:
        for selection in stack.pop().selections:
            if isinstance(selection, FragmentSpreadNode):
                names.append(selection.name.value)
            elif isinstance(selection, FieldNode | InlineFragmentNode) and selection.selection_set is not None:
                stack.append(selection.selection_set)
    return names


def _shape(
    selection_set: SelectionSetNode, fragments: Mapping[str, FragmentDefinitionNode], variables: Mapping[str, Any]
) -> Shape:
    """Fields, aliases, depth and cost of a selection set, fragments expanded, computed bottom-up
    with an explicit stack and each fragment's shape once (the nesting check ran before: no cycle,
    bounded depth)."""
    memo: dict[int, Shape] = {}

    def children(node: SelectionSetNode) -> list[SelectionSetNode]:
        found: list[SelectionSetNode] = []
        for selection in node.selections:
            if isinstance(selection, FragmentSpreadNode):
                fragment = fragments.get(selection.name.value)
                if fragment is not None:
                    found.append(fragment.selection_set)
            elif isinstance(selection, FieldNode | InlineFragmentNode) and selection.selection_set is not None:
                found.append(selection.selection_set)
        return found

    stack: list[tuple[SelectionSetNode, bool]] = [(selection_set, False)]
    while stack:
        node, expanded = stack.pop()
        if id(node) in memo:
            continue
        if not expanded:
            stack.append((node, True))
            stack.extend((child, False) for child in children(node) if id(child) not in memo)
            continue
        memo[id(node)] = _combine(node, memo, fragments, variables)
    return memo[id(selection_set)]


def _combine(
    node: SelectionSetNode,
    memo: Mapping[int, Shape],
    fragments: Mapping[str, FragmentDefinitionNode],
    variables: Mapping[str, Any],
) -> Shape:
    fields = aliases = depth = cost = 0
    for selection in node.selections:
        if isinstance(selection, FieldNode):
            inner = memo[id(selection.selection_set)] if selection.selection_set is not None else Shape()
            size = _list_size(selection, variables)
            fields += 1 + inner.fields
            aliases += (selection.alias is not None) + inner.aliases
            depth = max(depth, (selection.name.value != _UNWRAP) + inner.depth)
            cost += 1 + size * inner.cost
            continue
        if isinstance(selection, FragmentSpreadNode):
            fragment = fragments.get(selection.name.value)
            if fragment is None:
                continue  # validation reports it
            inner = memo[id(fragment.selection_set)]
        else:
            assert isinstance(selection, InlineFragmentNode)
            inner = memo[id(selection.selection_set)]
        fields += inner.fields
        aliases += inner.aliases
        depth = max(depth, inner.depth)
        cost += inner.cost
    return Shape(fields, aliases, depth, cost)


class CheckedDocuments(SchemaExtension):
    """strawberry's parse and validation steps, answered from `Documents` (the schema's)."""

    def _checked(self) -> Checked:
        context = self.execution_context
        documents: Documents = context.schema.documents  # type: ignore[attr-defined]
        return documents.check(context.query or "")

    def on_parse(self) -> Iterator[None]:
        checked = self._checked()
        if checked.document is None:
            raise checked.errors[0]
        self.execution_context.graphql_document = checked.document
        yield

    def on_validate(self) -> Iterator[None]:
        self.execution_context.pre_execution_errors = list(self._checked().errors)
        yield

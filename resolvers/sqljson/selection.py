"""Flatten a validated selection set into the fields a response object gets, in response order."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from graphql import (
    FieldNode,
    FragmentDefinitionNode,
    FragmentSpreadNode,
    InlineFragmentNode,
    SelectionSetNode,
)


class NotCompilable(Exception):
    """The request takes strawberry's general path: something here has no SQL form (yet)."""


@dataclass(frozen=True, slots=True)
class Selected:
    """One response key: the field nodes that name it (several when fragments repeat a field)."""

    key: str
    name: str
    nodes: tuple[FieldNode, ...]

    @property
    def node(self) -> FieldNode:
        return self.nodes[0]

    def subselection(self) -> list[SelectionSetNode]:
        return [node.selection_set for node in self.nodes if node.selection_set is not None]


def collect(
    selection_sets: list[SelectionSetNode],
    type_name: str,
    fragments: Mapping[str, FragmentDefinitionNode],
) -> list[Selected]:
    """The fields selected on an object of ``type_name``, merged by response key as GraphQL does.

    Directives (@include, @skip, ...) and type conditions naming anything but ``type_name`` are
    left to the general path rather than evaluated here.
    """
    found: dict[str, list[FieldNode]] = {}
    for selection_set in selection_sets:
        _walk(selection_set, type_name, fragments, found, depth=0)
    return [Selected(key, nodes[0].name.value, tuple(nodes)) for key, nodes in found.items()]


def _walk(
    selection_set: SelectionSetNode,
    type_name: str,
    fragments: Mapping[str, FragmentDefinitionNode],
    found: dict[str, list[FieldNode]],
    depth: int,
) -> None:
    if depth > len(fragments) + 1:  # validation rejects fragment cycles; never loop regardless
        raise NotCompilable("fragment nesting")
    for selection in selection_set.selections:
        if selection.directives:
            raise NotCompilable("directives")
        match selection:
            case FieldNode():
                key = selection.alias.value if selection.alias else selection.name.value
                found.setdefault(key, []).append(selection)
            case InlineFragmentNode():
                condition = selection.type_condition
                _check_condition(condition.name.value if condition else None, type_name)
                _walk(selection.selection_set, type_name, fragments, found, depth + 1)
            case FragmentSpreadNode():
                fragment = fragments[selection.name.value]
                if fragment.directives:
                    raise NotCompilable("directives")
                _check_condition(fragment.type_condition.name.value, type_name)
                _walk(fragment.selection_set, type_name, fragments, found, depth + 1)
            case _:
                raise NotCompilable(type(selection).__name__)


def _check_condition(condition: str | None, type_name: str) -> None:
    if condition is not None and condition != type_name:
        raise NotCompilable(f"fragment on {condition}")

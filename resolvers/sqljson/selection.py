"""Flatten a validated selection set into the fields a response object gets, in response order."""

from __future__ import annotations

from collections.abc import Callable, Mapping
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


Matches = Callable[[str, str], bool]  # (type condition, runtime type name) -> the fragment applies


def collect(
    selection_sets: list[SelectionSetNode],
    type_name: str,
    fragments: Mapping[str, FragmentDefinitionNode],
    matches: Matches | None = None,
) -> list[Selected]:
    """The fields selected on an object of ``type_name``, merged by response key as GraphQL does.

    Directives (@include, @skip, ...) are left to the general path rather than evaluated here; so
    are type conditions naming anything but ``type_name``, unless ``matches`` says which apply.
    """
    found: dict[str, list[FieldNode]] = {}
    for selection_set in selection_sets:
        _walk(selection_set, type_name, fragments, found, 0, matches)
    return [Selected(key, nodes[0].name.value, tuple(nodes)) for key, nodes in found.items()]


def _walk(
    selection_set: SelectionSetNode,
    type_name: str,
    fragments: Mapping[str, FragmentDefinitionNode],
    found: dict[str, list[FieldNode]],
    depth: int,
    matches: Matches | None,
) -> None:
    if depth > len(fragments):  # spreads nested deeper than there are fragments form a cycle
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
                if _applies(condition.name.value if condition else None, type_name, matches):
                    _walk(selection.selection_set, type_name, fragments, found, depth, matches)
            case FragmentSpreadNode():
                fragment = fragments[selection.name.value]
                if fragment.directives:
                    raise NotCompilable("directives")
                if _applies(fragment.type_condition.name.value, type_name, matches):
                    _walk(fragment.selection_set, type_name, fragments, found, depth + 1, matches)
            case _:
                raise NotCompilable(type(selection).__name__)


def _applies(condition: str | None, type_name: str, matches: Matches | None) -> bool:
    if condition is None or condition == type_name:
        return True
    if matches is None:
        raise NotCompilable(f"fragment on {condition}")
    return matches(condition, type_name)

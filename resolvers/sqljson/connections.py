"""Relay connections in one subquery: the page (one extra row tells whether more follow), then
nodes, edges and page info aggregated from it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from graphql import SelectionSetNode

from resolvers.sqljson.compiler import Compiler
from resolvers.sqljson.json_sql import cursor, json_list, json_object, text
from resolvers.sqljson.selection import NotCompilable, Selected

NodeBuilder = Callable[[list[SelectionSetNode]], sa.ColumnElement[Any]]


@dataclass(frozen=True, slots=True)
class Shape:
    """The GraphQL names of one connection type and how its cursors are made."""

    connection: str
    edge: str
    page_info: str
    cursor_kind: str
    descending: bool  # newest first (points history) or ascending ids (members)


@dataclass(frozen=True, slots=True)
class Page:
    rows: sa.Select[Any]  # filtered rows with an ``id`` column, unordered and unlimited
    key: sa.ColumnElement[int]  # the id the page is cursored by (and ordered by, unless `order`)
    first: sa.BindParameter[int]
    has_previous: sa.BindParameter[bool]
    # Columns to order by when not by the key alone, ending with it: an index's columns, so that
    # PostgreSQL reads the page from that index (see store.members.profiles.brand_keyset).
    order: tuple[sa.ColumnElement[Any], ...] = ()


def connection(
    c: Compiler,
    selected: Selected,
    shape: Shape,
    page: Page,
    node: NodeBuilder,
    extra: dict[str, sa.ColumnElement[Any]] | None = None,
) -> sa.ColumnElement[Any]:
    """The connection object for ``selected``; ``extra`` answers fields beyond Relay's (totalCount)."""
    order = [column.desc() if shape.descending else column.asc() for column in page.order or (page.key,)]
    position = sa.func.row_number().over(order_by=order).label("position")
    node_columns: list[sa.ColumnElement[Any]] = []

    def node_column(selection_sets: list[SelectionSetNode]) -> str:
        label = f"node{len(node_columns)}"
        node_columns.append(node(selection_sets).label(label))
        return label

    # Node objects are built inside the page subquery (where the row's tables are in scope), then
    # aggregated; labels are resolved once the subquery exists.
    pending: list[tuple[str, Callable[[Any], sa.ColumnElement[Any]]]] = []
    for field in c.subfields(selected, shape.connection):
        pending.append((field.key, _field(c, field, shape, page, node_column, extra or {})))
    ranked = (
        page.rows.add_columns(page.key.label("page_key"), position, *node_columns)
        .order_by(*order)
        .limit(page.first + 1)
        .subquery()
    )
    data = json_object([(key, build(ranked)) for key, build in pending])
    # Every value is an aggregate or a constant: GROUP BY () makes one row even of an empty page.
    return sa.select(data).select_from(ranked).group_by(sa.text("()")).scalar_subquery()


def _field(
    c: Compiler,
    field: Selected,
    shape: Shape,
    page: Page,
    node_column: Callable[[list[SelectionSetNode]], str],
    extra: dict[str, sa.ColumnElement[Any]],
) -> Callable[[Any], sa.ColumnElement[Any]]:
    match field.name:
        case "__typename":
            return lambda ranked: text(shape.connection)
        case "nodes":
            label = node_column(field.subselection())
            return lambda ranked: json_list(ranked.c[label], (ranked.c.position,), ranked.c.position <= page.first)
        case "edges":
            return _edges(c, field, shape, page, node_column)
        case "pageInfo":
            return _page_info(c, field, shape, page)
        case name if name in extra:
            value = extra[name]
            return lambda ranked: value
    raise NotCompilable(f"{shape.connection}.{field.name}")


def _edges(
    c: Compiler,
    field: Selected,
    shape: Shape,
    page: Page,
    node_column: Callable[[list[SelectionSetNode]], str],
) -> Callable[[Any], sa.ColumnElement[Any]]:
    parts: list[tuple[str, Callable[[Any], sa.ColumnElement[Any]]]] = []
    for edge_field in c.subfields(field, shape.edge):
        match edge_field.name:
            case "__typename":
                parts.append((edge_field.key, lambda ranked: text(shape.edge)))
            case "cursor":
                parts.append((edge_field.key, lambda ranked: cursor(shape.cursor_kind, ranked.c.page_key)))
            case "node":
                label = node_column(edge_field.subselection())
                parts.append((edge_field.key, _column(label)))
            case _:
                raise NotCompilable(f"{shape.edge}.{edge_field.name}")
    return lambda ranked: json_list(
        json_object([(key, build(ranked)) for key, build in parts]),
        (ranked.c.position,),
        ranked.c.position <= page.first,
    )


def _page_info(c: Compiler, field: Selected, shape: Shape, page: Page) -> Callable[[Any], sa.ColumnElement[Any]]:
    def build(ranked: Any) -> sa.ColumnElement[Any]:
        in_page = ranked.c.position <= page.first
        first_key = sa.func.min(ranked.c.page_key).filter(in_page)
        last_key = sa.func.max(ranked.c.page_key).filter(in_page)
        start, end = (last_key, first_key) if shape.descending else (first_key, last_key)
        values: dict[str, sa.ColumnElement[Any]] = {
            "__typename": text(shape.page_info),
            "hasNextPage": sa.func.count() > page.first,
            "hasPreviousPage": page.has_previous,
            "startCursor": cursor(shape.cursor_kind, start),
            "endCursor": cursor(shape.cursor_kind, end),
        }
        pairs = []
        for info_field in c.subfields(field, shape.page_info):
            if info_field.name not in values:
                raise NotCompilable(f"{shape.page_info}.{info_field.name}")
            pairs.append((info_field.key, values[info_field.name]))
        return json_object(pairs)

    return build


def _column(label: str) -> Callable[[Any], sa.ColumnElement[Any]]:
    return lambda ranked: ranked.c[label]

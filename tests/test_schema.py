"""The published schema: snapshot kept current, every element described."""

from __future__ import annotations

from typing import Any

from graphql import GraphQLEnumType, GraphQLInputObjectType, GraphQLInterfaceType, GraphQLObjectType

from schema.root import SDL_PATH, build_schema, sdl


def test_checked_in_sdl_is_current() -> None:
    assert SDL_PATH.read_text() == sdl(), "schema changed: run `omnimember schema > schema/schema.graphql`"


def test_every_type_field_and_argument_is_described() -> None:
    missing: list[str] = []
    for name, graphql_type in build_schema()._schema.type_map.items():
        if name.startswith("__") or name in {"String", "Int", "Boolean", "ID", "Float"}:
            continue
        if not graphql_type.description:
            missing.append(name)
        fields: dict[str, Any] = {}
        if isinstance(graphql_type, GraphQLObjectType | GraphQLInterfaceType | GraphQLInputObjectType):
            fields = graphql_type.fields
        for field_name, field in fields.items():
            if not field.description:
                missing.append(f"{name}.{field_name}")
            for arg_name, arg in getattr(field, "args", {}).items():
                if not arg.description:
                    missing.append(f"{name}.{field_name}({arg_name})")
        if isinstance(graphql_type, GraphQLEnumType) and not graphql_type.description:
            missing.append(name)
    assert missing == []


def test_client_contract_names_exist() -> None:
    schema = build_schema()._schema
    assert schema.query_type is not None
    assert schema.mutation_type is not None
    assert {"brands", "member", "memberByIdentity", "memberByPhone", "members"} <= set(schema.query_type.fields)
    assert {"registerMember", "bindIdentity", "mergeMembers", "unmergeMembers"} <= set(schema.mutation_type.fields)

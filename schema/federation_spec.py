"""The few definitions of Apollo Federation 2 the subgraph uses: `@link`, `@key` and their types.

Defined here rather than taken from strawberry.federation, whose printer leaves the definitions
out of the SDL (they are imported by `@link`): printed in full, the schema's SDL
(schema/schema.graphql) stays a self-contained GraphQL document that graphql-core builds (the
breaking-change check, the fuzz suite) and that Apollo's composition accepts as it is, because the
definitions are the specification's own (names, argument types and defaults;
tests/test_federation.py composes it). See docs/federation.md.
"""

from __future__ import annotations

import enum
from typing import NewType

import strawberry
from strawberry.schema_directive import Location
from strawberry.types.unset import UNSET

# Federation 2.0: only `@key` is used, and every Federation 2 router and composition knows 2.0.
FEDERATION = "https://specs.apollo.dev/federation/v2.0"

FieldSet = NewType("FieldSet", str)
LinkImport = NewType("LinkImport", object)
# Handed to the schema (schema.root): strawberry takes scalars for NewTypes this way.
SCALARS = {
    FieldSet: strawberry.scalar(
        name="federation__FieldSet",
        description="A selection of fields, as text: the fields that identify an entity (`@key`).",
        serialize=str,
        parse_value=str,
    ),
    LinkImport: strawberry.scalar(
        name="link__Import",
        description='A name `@link` imports from a specification, e.g. "@key".',
        serialize=lambda value: value,
        parse_value=lambda value: value,
    ),
}


@strawberry.enum(name="link__Purpose", description="What a linked specification is for (the link specification).")
class LinkPurpose(enum.Enum):
    SECURITY = strawberry.enum_value("SECURITY", description="It secures the schema.")
    EXECUTION = strawberry.enum_value("EXECUTION", description="It changes how the schema executes.")


@strawberry.schema_directive(
    locations=[Location.SCHEMA],
    name="link",
    repeatable=True,
    description="Links this schema to a specification (here Apollo Federation) and imports names from it.",
)
class Link:
    url: str
    as_: str | None = strawberry.directive_field(name="as", default=UNSET)
    for_: LinkPurpose | None = strawberry.directive_field(name="for", default=UNSET)
    import_: list[LinkImport | None] | None = strawberry.directive_field(name="import", default=UNSET)


@strawberry.schema_directive(
    locations=[Location.OBJECT, Location.INTERFACE],
    name="key",
    repeatable=True,
    description="Federation: the fields that identify an entity, which other subgraphs may refer to it by.",
)
class Key:
    fields: FieldSet
    resolvable: bool | None = True


FEDERATION_LINK = Link(url=FEDERATION, import_=[LinkImport("@key")])

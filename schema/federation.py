"""omnimember as a subgraph of an Apollo Federation 2 supergraph (docs/federation.md).

Two entities: `Member`, keyed by its id, and `ChannelIdentity`, keyed by (brand, channel,
externalId), whose `member` is the member the identity is bound to. A channel identity is not a
key of `Member` itself: a member has many identities (a key would be the whole list, which other
subgraphs never hold), and a merge or its undoing moves an identity from one member to another,
while a key names one entity for good. What a router sends as references is checked here, each
representation on its own: a malformed one is an error at its own index and the others resolve.
Scope, masking and permissions are those of every other read (resolvers/entities.py,
schema/permissions.py).
"""

from __future__ import annotations

import asyncio
import functools
from pathlib import Path
from typing import Annotated, Any, NewType, cast

import strawberry
from graphql import GraphQLError

from resolvers import entities, pii
from resolvers.context import Info
from resolvers.domain import DomainError
from schema.enums import Channel
from schema.federation_spec import FieldSet, Key
from schema.member import Member

MAX_REPRESENTATIONS = 1_000  # references per request: a router's batch is one per distinct entity
ENTITIES = "Member (by id) or ChannelIdentity (by brand, channel, externalId)"

Representation = NewType("Representation", object)
SCALARS = {
    Representation: strawberry.scalar(
        name="_Any",
        description="An entity reference, as a router sends it: `__typename` and the fields of one of the entity's "
        'keys, e.g. `{"__typename": "Member", "id": "42"}`.',
        serialize=lambda value: value,
        parse_value=lambda value: value,
    ),
}


@strawberry.type(name="_Service", description="This subgraph, as a router or a composition tool reads it.")
class Service:
    sdl: str = strawberry.field(
        description="The subgraph's schema with its federation directives (the same text as schema/schema.graphql)."
    )


@strawberry.type(
    description="A channel identity as another subgraph knows it (a buyer id on a platform, an openid): an "
    "entity keyed by brand, channel and the channel's own id, resolving to the member it is bound to.",
    directives=[Key(fields=FieldSet("brand channel externalId"))],
)
class ChannelIdentity:
    brand: str = strawberry.field(description="Brand code.")
    channel: Channel = strawberry.field(description="The channel that issued the identity.")
    raw_external_id: strawberry.Private[str]

    @strawberry.field(
        description="The channel's own id as the reference gave it, spaces around it dropped; for partner keys a "
        "pseudonym, as in Identity: a partner never receives a raw channel id, not even one it sent."
    )
    def external_id(self, info: Info) -> str:
        return pii.channel_id(info, None, self.channel.value, self.raw_external_id)

    @strawberry.field(
        description="The member the identity is bound to (after merges, the survivor); null when it is bound to "
        "none, or the brand is unknown or outside the key's scope."
    )
    async def member(self, info: Info) -> Member | None:
        row = await entities.member_by_identity(
            info, brand=self.brand, channel=self.channel.value, external_id=self.raw_external_id
        )
        return None if row is None else Member.from_row(row)


Entity = Annotated[
    Member | ChannelIdentity,
    strawberry.union("_Entity", description="Every entity this subgraph resolves by reference."),
]


def _invalid(where: str, message: str, code: str = "INVALID_INPUT") -> GraphQLError:
    return GraphQLError(f"{where}: {message}", extensions={"code": code, "field": where})


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _text(representation: dict[str, Any], name: str, where: str, *, numbers: bool = False) -> str:
    """A key field's value: text (an id may come as a number, as ID arguments may)."""
    if name not in representation:
        raise _invalid(f"{where}.{name}", "is missing")
    value = representation[name]
    if isinstance(value, str):
        return value
    if numbers and isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise _invalid(
        f"{where}.{name}", f"must be {'a string or an integer' if numbers else 'a string'}, not {_shown(value)}"
    )


async def _member(info: Info, representation: dict[str, Any], where: str) -> Member | None:
    member_id = entities.member_id(_text(representation, "id", where, numbers=True))
    row = None if member_id is None else await entities.member_by_id(info, member_id=member_id)
    return None if row is None else Member.from_row(row)


def _channel_identity(representation: dict[str, Any], where: str) -> ChannelIdentity:
    brand = _text(representation, "brand", where)
    channel, external_id = _text(representation, "channel", where), _text(representation, "externalId", where)
    try:
        code, checked = entities.identity_key(channel, external_id)
    except DomainError as error:
        field = f"{where}.{error.field}" if error.field else where
        raise _invalid(field, error.message, error.code.value) from None
    return ChannelIdentity(brand=brand, channel=Channel(code), raw_external_id=checked)


async def _entity(info: Info, index: int, representation: object) -> Member | ChannelIdentity | GraphQLError | None:
    """One reference resolved, or the error that stands in its place (graphql-core reports it at
    `_entities.<index>` and the other references still resolve)."""
    where = f"representations[{index}]"
    try:
        if not isinstance(representation, dict):
            raise _invalid(where, f"must be an object with __typename and the fields of a key of {ENTITIES}")
        typename = representation.get("__typename")
        if typename == "Member":
            return await _member(info, representation, where)
        if typename == "ChannelIdentity":
            return _channel_identity(representation, where)
        raise _invalid(f"{where}.__typename", f"must name {ENTITIES}, not {_shown(typename)}")
    except GraphQLError as error:
        return error


# The SDL shipped beside this module, which tests/test_schema.py holds equal to the built schema's.
SDL_PATH = Path(__file__).with_name("schema.graphql")


@functools.cache
def subgraph_sdl() -> str:
    return SDL_PATH.read_text()


@strawberry.type
class EntityQuery:
    """The two root fields a router asks a subgraph (the Apollo Federation subgraph specification)."""

    @strawberry.field(
        name="_entities",
        description=f"Entities by reference, for a federation router: {ENTITIES}; each in the order given, null "
        "when it names nothing the key can see (as `member(id)` answers), an error at its own index when it is "
        f"malformed. At most {MAX_REPRESENTATIONS:,} a request.",
    )
    async def entities(
        self,
        info: Info,
        representations: Annotated[
            list[Representation],
            strawberry.argument(description="The references: `__typename` and the fields of one key each."),
        ],
    ) -> list[Entity | None]:
        if len(representations) > MAX_REPRESENTATIONS:
            raise GraphQLError(
                f"representations: {len(representations):,} references; at most {MAX_REPRESENTATIONS:,} a request",
                extensions={"code": "TOO_MANY_IDS", "field": "representations", "limit": MAX_REPRESENTATIONS},
            )
        found = await asyncio.gather(*(_entity(info, i, r) for i, r in enumerate(representations)))
        # Errors stand in the list where their references were: graphql-core raises each at its index.
        return cast(list[Entity | None], found)

    @strawberry.field(
        name="_service",
        description="This subgraph's schema, for composing a supergraph (`rover subgraph introspect`); admin "
        "keys only.",
    )
    def service(self) -> Service:
        return Service(sdl=subgraph_sdl())

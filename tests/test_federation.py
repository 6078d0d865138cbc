"""omnimember as an Apollo Federation 2 subgraph (docs/federation.md): its SDL, fetched from
`_service`, composes with a second subgraph under Apollo's own composition library (the npm
project in tests/federation); `_entities` resolves members by id and by channel identity over HTTP,
with the scope, masking, pseudonyms and permissions of every other read, and malformed references
are errors at their own index."""

from __future__ import annotations

import json
import re
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from psycopg_pool import AsyncConnectionPool

from resolvers.loaders import Loaders
from schema.federation import MAX_REPRESENTATIONS
from schema.root import SDL_PATH, build_schema
from store.access.roles import Role
from store.brands import BrandDirectory, ScopedBrands, brand_by_code
from store.sql import counted_statements
from tests.conftest import ROOT, GraphQL, new_brand, new_key, unique_code
from tests.fragments import MERGE, REGISTER

PROJECT = ROOT / "tests" / "federation"
ENTITIES = """query($representations: [_Any!]!) { _entities(representations: $representations) {
  __typename
  ... on Member { id displayName birthday maskedPhone mergedInto { id } identities { channel externalId } }
  ... on ChannelIdentity { brand channel externalId member { id displayName } }
} }"""


# --- composition ------------------------------------------------------------------------------------


def _compose(sdl: str, tmp_path: Path) -> dict[str, Any]:
    """Apollo's composition of ``sdl`` with tests/federation/reviews.graphql: errors, hints, supergraph."""
    node = shutil.which("node")
    assert node is not None, "node (20 or later) runs the composition check (tests/federation)"
    assert (PROJECT / "node_modules" / "@apollo" / "composition").is_dir(), (
        "Apollo's composition library is not installed: run `npm ci --prefix tests/federation`"
    )
    subgraph = tmp_path / "omnimember.graphql"
    subgraph.write_text(sdl)
    done = subprocess.run(
        [node, str(PROJECT / "compose.mjs"), str(subgraph)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


async def _service_sdl(client: httpx.AsyncClient) -> str:
    answer = await GraphQL(client)("{ _service { sdl } }")
    sdl: str = answer["_service"]["sdl"]
    return sdl


async def test_the_served_sdl_composes_with_a_second_subgraph(client: httpx.AsyncClient, tmp_path: Path) -> None:
    sdl = await _service_sdl(client)
    assert sdl == SDL_PATH.read_text() == build_schema().as_str() + "\n"  # what partners read, as served
    composed = _compose(sdl, tmp_path)
    assert composed["errors"] == []
    assert composed["hints"] == []
    supergraph = composed["supergraphSdl"]
    member = supergraph[supergraph.index("type Member\n") :].split("\n{", 1)[0]
    assert '@join__type(graph: OMNIMEMBER, key: "id"' in member
    assert '@join__type(graph: REVIEWS, key: "id")' in member
    assert re.search(r"reviews: \[Review!\]! @join__field\(graph: REVIEWS\)", supergraph)
    identity = supergraph[supergraph.index("type ChannelIdentity\n") :].split("\n{", 1)[0]
    assert '@join__type(graph: OMNIMEMBER, key: "brand channel externalId"' in identity


def test_composition_fails_when_the_subgraph_loses_its_entity_key(tmp_path: Path) -> None:
    """The check bites: without Member's key, the reviews subgraph's Member clashes with ours."""
    keyless = SDL_PATH.read_text().replace('type Member @key(fields: "id", resolvable: true) {', "type Member {")
    assert keyless != SDL_PATH.read_text()
    composed = _compose(keyless, tmp_path)
    assert composed["errors"], composed["hints"]
    assert any("Member" in error["message"] for error in composed["errors"])


async def test_the_service_field_answers_admin_keys_with_introspection_off(
    client: httpx.AsyncClient, database_url: str
) -> None:
    admin = GraphQL(client)
    refused = await admin.raw("{ __schema { queryType { name } } }")  # production mode: no introspection
    assert refused["errors"][0]["extensions"]["code"] == "INVALID_DOCUMENT"
    assert "type Member @key" in await _service_sdl(client)
    for role in (Role.FRONTEND, Role.CAMPAIGN, Role.PARTNER, Role.SUPPORT):
        other = GraphQL(client, await new_key(database_url, role, all_brands=True))
        answer = await other.raw("{ _service { sdl } }")
        assert answer == {
            "data": None,
            "errors": [
                {
                    "message": f"a {role} key may not select Query._service (it needs manage_brands)",
                    "extensions": {"code": "FORBIDDEN", "field": "Query._service", "needs": "manage_brands"},
                }
            ],
        }


# --- entities over HTTP -------------------------------------------------------------------------------


@dataclass(frozen=True)
class World:
    """Brand ``a`` (the keys' scope) with one member, brand ``b`` outside it with another."""

    a: str
    b: str
    a_member: str
    b_member: str
    a_openid: str
    b_openid: str


@pytest.fixture
async def world(gql: GraphQL, pool: AsyncConnectionPool[Any]) -> World:
    group = unique_code("g")
    a, b = await new_brand(pool, group), await new_brand(pool, group)
    ids = {a: f"oA{secrets.token_hex(5)}", b: f"oB{secrets.token_hex(5)}"}
    members = {}
    for code, openid in ids.items():
        registered = await gql(
            REGISTER,
            brand=code,
            channel="wechat",
            externalId=openid,
            phone="139" + str(secrets.randbelow(10**8)).zfill(8),
            displayName="王小明",
            birthday="1990-05-17",
        )
        members[code] = registered["registerMember"]["member"]["id"]
    return World(a, b, members[a], members[b], ids[a], ids[b])


def _member(id_: str | int) -> dict[str, Any]:
    return {"__typename": "Member", "id": id_}


def _identity(brand: str, external_id: str, channel: str = "WECHAT") -> dict[str, Any]:
    return {"__typename": "ChannelIdentity", "brand": brand, "channel": channel, "externalId": external_id}


async def _entities(caller: GraphQL, *representations: Any) -> list[Any]:
    data = await caller(ENTITIES, representations=list(representations))
    found: list[Any] = data["_entities"]
    return found


async def _scoped(client: httpx.AsyncClient, database_url: str, role: Role, world: World) -> GraphQL:
    return GraphQL(client, await new_key(database_url, role, brand_codes=[world.a]))


async def test_members_by_id_and_by_identity_in_one_request(
    client: httpx.AsyncClient, database_url: str, world: World
) -> None:
    frontend = await _scoped(client, database_url, Role.FRONTEND, world)
    found = await _entities(
        frontend,
        _member(world.a_member),
        _identity(world.a, world.a_openid),
        _identity(world.a, f"  {world.a_openid} ", channel="wechat"),  # read as memberByIdentity reads it
        _member(int(world.a_member)),  # an ID may come as a number
        _member("999999999999"),
        _member("not-a-number"),
        _identity(world.a, "nobody-has-this-id"),
    )
    assert [entity and entity["__typename"] for entity in found] == [
        "Member",
        "ChannelIdentity",
        "ChannelIdentity",
        "Member",
        None,
        None,
        "ChannelIdentity",
    ]
    assert found[0]["id"] == found[3]["id"] == world.a_member
    assert found[0]["displayName"] == "王*"  # a frontend key sees names masked
    assert found[1] == {
        "__typename": "ChannelIdentity",
        "brand": world.a,
        "channel": "WECHAT",
        "externalId": world.a_openid,
        "member": {"id": world.a_member, "displayName": "王*"},
    }
    assert found[2]["member"]["id"] == world.a_member
    assert found[6]["member"] is None


PSEUDONYM = re.compile(r"\bp_[a-z2-7]+")


@pytest.mark.parametrize("role", list(Role))
async def test_out_of_scope_references_read_exactly_as_missing_ones(
    client: httpx.AsyncClient, database_url: str, world: World, role: Role
) -> None:
    caller = await _scoped(client, database_url, role, world)
    outside = await caller.raw(ENTITIES, representations=[_member(world.b_member), _identity(world.b, world.b_openid)])
    missing = await caller.raw(ENTITIES, representations=[_member("999999999999"), _identity("no_such", "o_none")])
    assert outside["data"]["_entities"][0] is None
    assert outside["data"]["_entities"][1]["member"] is None
    placeholders = {world.b: "BRAND", "no_such": "BRAND", world.b_openid: "ID", "o_none": "ID"}

    def neutral(answer: dict[str, Any]) -> str:
        text = json.dumps(answer, ensure_ascii=False)
        for value, placeholder in placeholders.items():
            text = text.replace(value, placeholder)
        return PSEUDONYM.sub("ID", text)  # a partner's pseudonyms of the two ids

    assert neutral(outside) == neutral(missing)


async def test_the_identity_loader_sees_only_brands_in_scope(pool: AsyncConnectionPool[Any], world: World) -> None:
    """The first of two guards (the member loader is the second, which the test above holds to)."""
    async with pool.connection() as conn:
        a_id = (await brand_by_code(conn, world.a))["id"]
    loaders = Loaders(pool, ScopedBrands(BrandDirectory(), frozenset({a_id})))
    keys = [(world.a, "wechat", world.a_openid), (world.b, "wechat", world.b_openid), ("no_such", "wechat", "o_1")]
    assert await loaders.member_id_by_identity.load_many(keys) == [int(world.a_member), None, None]


async def test_personal_data_is_masked_by_role_and_partners_see_pseudonyms(
    client: httpx.AsyncClient, database_url: str, world: World, gql: GraphQL
) -> None:
    references = (_member(world.a_member), _identity(world.a, world.a_openid))
    admin_member, _ = await _entities(await _scoped(client, database_url, Role.ADMIN, world), *references)
    assert (admin_member["displayName"], admin_member["birthday"]) == ("王小明", "1990-05-17")
    assert admin_member["identities"][0]["externalId"] == world.a_openid
    for role in (Role.CAMPAIGN, Role.FRONTEND):
        member, identity = await _entities(await _scoped(client, database_url, role, world), *references)
        assert (member["displayName"], member["birthday"]) == ("王*", None)
        assert member["maskedPhone"].count("*") == 4
        assert identity["member"]["displayName"] == "王*"
    partner = await _scoped(client, database_url, Role.PARTNER, world)
    member, identity = await _entities(partner, *references)
    assert (member["displayName"], member["birthday"]) == ("王*", None)
    pseudonym = member["identities"][0]["externalId"]
    assert pseudonym.startswith("p_")
    assert world.a_openid not in pseudonym
    # A partner finds the member by the real id it holds, and gets back its pseudonym, never a raw id
    # (found by tests/test_leaks.py's partner fuzz run when the entity echoed the id as sent).
    assert identity["member"]["id"] == world.a_member
    assert identity["externalId"] == pseudonym
    # The admin's clear read is audited, as on `member(id)`.
    log = await gql(
        "query($b: String!) { auditLog(brand: $b, first: 5) { nodes { operation role targetIds } } }", b=world.a
    )
    clear_read = {"operation": "read personal data", "role": "admin", "targetIds": [world.a_member]}
    assert clear_read in log["auditLog"]["nodes"]


async def test_a_merged_identity_resolves_to_the_survivor(gql: GraphQL, world: World) -> None:
    second = await gql(REGISTER, brand=world.a, channel="jd", externalId="jd-second")
    merged_id = second["registerMember"]["member"]["id"]
    await gql(MERGE, survivorId=world.a_member, mergedId=merged_id, reason="same person")
    merged, identity = await _entities(gql, _member(merged_id), _identity(world.a, "jd-second", channel="JD"))
    assert merged["id"] == merged_id
    assert merged["mergedInto"] == {"id": world.a_member}  # as `member(id)` answers a merged member
    assert identity["member"]["id"] == world.a_member


MALFORMED: list[tuple[Any, str, str]] = [
    ("a string", "INVALID_INPUT", "representations[1]"),
    ({"id": "1"}, "INVALID_INPUT", "representations[2].__typename"),
    ({"__typename": "Order", "id": "1"}, "INVALID_INPUT", "representations[3].__typename"),
    ({"__typename": "Member"}, "INVALID_INPUT", "representations[4].id"),
    ({"__typename": "Member", "id": True}, "INVALID_INPUT", "representations[5].id"),
    ({"__typename": "Member", "id": {"nested": 1}}, "INVALID_INPUT", "representations[6].id"),
    (
        {"__typename": "ChannelIdentity", "channel": "WECHAT", "externalId": "x"},
        "INVALID_INPUT",
        "representations[7].brand",
    ),
    (_identity("b", "x", channel="FAX"), "UNKNOWN_CHANNEL", "representations[8].channel"),
    (_identity("b", "x" * 129), "INVALID_INPUT", "representations[9].externalId"),
    (_identity("b", "   "), "INVALID_INPUT", "representations[10].externalId"),
    ({**_identity("b", "x"), "channel": None}, "INVALID_INPUT", "representations[11].channel"),
    ([_member("1")], "INVALID_INPUT", "representations[12]"),
]


async def test_malformed_references_are_errors_at_their_own_index(gql: GraphQL, world: World) -> None:
    sent = [_member(world.a_member), *(representation for representation, _, _ in MALFORMED)]
    answer = await gql.raw(ENTITIES, representations=sent)
    found = answer["data"]["_entities"]
    assert found[0]["id"] == world.a_member  # the good reference still resolves
    assert found[1:] == [None] * len(MALFORMED)
    errors = {tuple(error["path"]): error for error in answer["errors"]}
    assert len(errors) == len(MALFORMED)
    for index, (_, code, field) in enumerate(MALFORMED, start=1):
        error = errors[("_entities", index)]
        assert error["extensions"] == {"code": code, "field": field}, error
        assert error["message"].startswith(f"{field}: "), error
    assert "Unexpected error" not in json.dumps(answer)


async def test_a_literal_reference_in_the_document_resolves_too(gql: GraphQL, world: World) -> None:
    document = '{ _entities(representations: [{__typename: "Member", id: "%s"}]) { ... on Member { id } } }'
    assert await gql(document % world.a_member) == {"_entities": [{"id": world.a_member}]}


async def test_too_many_references_are_refused_with_the_limit(gql: GraphQL) -> None:
    document = "query($r: [_Any!]!) { _entities(representations: $r) { __typename } }"
    answer = await gql.raw(document, r=[_member(n) for n in range(MAX_REPRESENTATIONS + 1)])
    assert answer["data"] is None
    assert answer["errors"][0]["extensions"] == {
        "code": "TOO_MANY_IDS",
        "field": "representations",
        "limit": MAX_REPRESENTATIONS,
    }


async def test_the_cost_of_a_document_counts_every_reference(gql: GraphQL, world: World) -> None:
    """A reference is an item of a list, as a page's member is: 100 entities each with a page of 100
    entries cost what `members(first: 100)` with them would, and are refused before anything runs."""
    rich = """query($representations: [_Any!]!) { _entities(representations: $representations) {
      ... on Member { pointsHistory(first: 100) { edges { node { amount balanceAfter } } } } } }"""
    refused = await gql.raw(rich, representations=[_member(world.a_member)] * 100)
    assert refused["data"] is None
    assert refused["errors"][0]["extensions"]["code"] == "TOO_COSTLY"
    references = ", ".join([f'{{__typename: "Member", id: "{world.a_member}"}}'] * 100)
    literal = f"{{ _entities(representations: [{references}]) {{ ... on Member {{ pointsHistory(first: 100) {{"
    literal += " edges { node { amount } } } } } }"
    assert (await gql.raw(literal))["errors"][0]["extensions"]["code"] == "TOO_COSTLY"
    assert await gql(rich, representations=[_member(world.a_member)] * 2)


async def test_a_routers_batch_costs_a_few_statements(gql: GraphQL, pool: AsyncConnectionPool[Any]) -> None:
    brand = await new_brand(pool)
    ids = []
    for n in range(20):
        registered = await gql(REGISTER, brand=brand, channel="pos", externalId=f"card-{n}")
        ids.append(registered["registerMember"]["member"]["id"])
    document = """query($representations: [_Any!]!) { _entities(representations: $representations) {
      ... on Member { id tier { code } } ... on ChannelIdentity { member { id } } } }"""

    async def statements(count: int) -> int:
        """``count`` members by id and ``count`` others by their identities, in one request."""
        references = [_member(i) for i in ids[:count]]
        references += [_identity(brand, f"card-{n}", channel="POS") for n in range(count, 2 * count)]
        with counted_statements() as counted:
            found = (await gql(document, representations=references))["_entities"]
        spent = counted.value
        assert [entity["id"] for entity in found[:count]] == ids[:count]
        assert [entity["member"]["id"] for entity in found[count:]] == ids[count : 2 * count]
        return spent

    # Members by id, identities (the brand's code known already), the identities' members: never
    # one per reference.
    small, large = await statements(1), await statements(10)
    assert small == large
    assert large <= 3

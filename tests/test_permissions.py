"""The permission matrix, generated from the role table (store.access.roles) and the field rules
(schema.permissions): every role by every field of the schema, checked on a document that reaches
the field; then every root field and the export routes over HTTP, for every role, on a brand in the
key's scope and on one outside it. A field without a rule fails here."""

from __future__ import annotations

import json
import secrets
from collections import deque
from typing import Any

import httpx
import pytest
from graphql import (
    GraphQLEnumType,
    GraphQLField,
    GraphQLInputObjectType,
    GraphQLInputType,
    GraphQLList,
    GraphQLNamedType,
    GraphQLNonNull,
    GraphQLObjectType,
    GraphQLScalarType,
    get_named_type,
    is_abstract_type,
    is_leaf_type,
    is_object_type,
)
from psycopg_pool import AsyncConnectionPool

from schema.documents import Documents
from schema.permissions import RULES, Permissions, rule
from schema.root import build_schema
from store.access.roles import ROLES, Capability, Role, table
from store.audiences.deltas import apply_brand
from store.brands import brand_by_code
from tests.conftest import ROOT, GraphQL, new_brand, new_key, principal, unique_code
from tests.fragments import REGISTER

BUILT = build_schema()
SCHEMA = BUILT._schema
DOCUMENTS = BUILT.documents
PERMISSIONS = Permissions(SCHEMA)
ERRORS = {t.name for t in SCHEMA.type_map.values() if any(i.name == "Error" for i in getattr(t, "interfaces", []))}


def _literal(type_: GraphQLInputType) -> str:
    """A valid literal of an input type (required input fields filled)."""
    if isinstance(type_, GraphQLNonNull):
        return _literal(type_.of_type)
    if isinstance(type_, GraphQLList):
        return f"[{_literal(type_.of_type)}]"
    if isinstance(type_, GraphQLEnumType):
        return str(next(iter(type_.values)))
    if isinstance(type_, GraphQLInputObjectType):
        fields = [f"{n}: {_literal(f.type)}" for n, f in type_.fields.items() if isinstance(f.type, GraphQLNonNull)]
        return "{" + ", ".join(fields) + "}"
    assert isinstance(type_, GraphQLScalarType)
    return {
        "Int": "1",
        "Float": "1.5",
        "Boolean": "true",
        "Date": '"2000-01-01"',
        "DateTime": '"2000-01-01T00:00:00Z"',
        "Decimal": '"1"',
    }.get(type_.name, '"1"')


def _call(name: str, field: GraphQLField) -> str:
    required = [f"{n}: {_literal(a.type)}" for n, a in field.args.items() if isinstance(a.type, GraphQLNonNull)]
    return f"{name}({', '.join(required)})" if required else name


def _paths() -> dict[tuple[str, str], tuple[str, list[tuple[str, str]]]]:
    """For every (type, field) of an object type: the operation that reaches it shortest and the
    (type, field) coordinates on the way, as a document template with `{}` where the field goes."""
    found: dict[tuple[str, str], tuple[str, list[tuple[str, str]]]] = {}
    queue: deque[tuple[GraphQLNamedType, str, list[tuple[str, str]], str]] = deque()
    for operation, root in (("query", SCHEMA.query_type), ("mutation", SCHEMA.mutation_type)):
        assert root is not None
        queue.append((root, operation + " { %s }", [], operation))
    seen: set[str] = set()
    while queue:
        type_, template, path, _ = queue.popleft()
        if type_.name in seen:
            continue
        seen.add(type_.name)
        if is_abstract_type(type_):
            for possible in SCHEMA.get_possible_types(type_):
                queue.append((possible, template % f"... on {possible.name} {{ %s }}", path, ""))
            continue
        assert isinstance(type_, GraphQLObjectType)
        for name, field in type_.fields.items():
            coordinate = (type_.name, name)
            call = _call(name, field)
            here = [*path, coordinate]
            target = get_named_type(field.type)
            leaf = call if is_leaf_type(target) else f"{call} {{ __typename }}"
            found.setdefault(coordinate, (template % leaf, here))
            if not is_leaf_type(target):
                queue.append((target, template % f"{call} {{ %s }}", here, ""))
    return found


PATHS = _paths()


def _expected(role: Role, path: list[tuple[str, str]]) -> bool:
    allowed = ROLES[role].capabilities
    needs = {rule(t, f, t in ERRORS) for t, f in path}
    return all(need is None or need in allowed for need in needs)


def test_every_field_of_every_type_has_a_rule_and_every_root_field_its_own() -> None:
    for type_ in SCHEMA.type_map.values():
        if type_.name.startswith("__") or not is_object_type(type_):
            continue
        assert isinstance(type_, GraphQLObjectType)
        for name in type_.fields:
            rule(type_.name, name, type_.name in ERRORS)  # raises without one
    for root in ("Query", "Mutation"):
        root_type = SCHEMA.get_type(root)
        assert isinstance(root_type, GraphQLObjectType)
        assert {f"{root}.{name}" for name in root_type.fields} <= set(RULES)
    assert all(key.split(".")[0] in SCHEMA.type_map for key in RULES), "a rule for a type that is gone"


def test_every_type_is_reached_by_the_matrix() -> None:
    reached = {type_name for type_name, _ in PATHS}
    objects = {t.name for t in SCHEMA.type_map.values() if is_object_type(t) and not t.name.startswith("__")}
    assert objects <= reached, objects - reached


@pytest.mark.parametrize("role", list(Role))
def test_each_role_may_select_exactly_the_fields_its_capabilities_cover(role: Role) -> None:
    caller = principal(role)
    for (type_name, field), (document, path) in PATHS.items():
        checked = DOCUMENTS.check(document)
        assert checked.errors == [], document
        refused = PERMISSIONS.refusal(caller, checked)
        assert (refused is None) == _expected(role, path), (role, f"{type_name}.{field}", document)
        if refused is not None:
            assert refused.extensions is not None
            assert refused.extensions["code"] == "FORBIDDEN"


def test_a_field_without_a_rule_is_refused_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(RULES, "Member")
    with pytest.raises(LookupError, match=r"no permission rule for Member\.id"):
        Permissions(SCHEMA).refusal(principal(Role.ADMIN), Documents(SCHEMA).check('{ member(id: "1") { id } }'))


# --- over HTTP: every root field and the exports, every role, in and out of scope -------------------

RESULT = "{ __typename ... on Error { code } }"


def _mutation(variables: str, call: str) -> str:
    return f"mutation{variables} {{ {call} {RESULT} }}"


ROOT_CALLS: dict[str, str] = {
    "Query.brands": "{ brands { code } }",
    "Query.member": "query($m: ID!) { member(id: $m) { id displayName } }",
    "Query.memberByIdentity": (
        'query($b: String!, $e: String!) { memberByIdentity(brand: $b, channel: "wechat", externalId: $e) { id } }'
    ),
    "Query.memberByPhone": "query($b: String!, $p: String!) { memberByPhone(brand: $b, phone: $p) { id } }",
    "Query.memberMerge": 'query { memberMerge(id: "999999999") { id } }',
    "Query.members": "query($b: String!) { members(brand: $b) { totalCount nodes { id } } }",
    "Query.audience": 'query($b: String!) { audience(brand: $b, expression: "tier:silver") { count } }',
    "Query.savedAudiences": "query($b: String!) { savedAudiences(brand: $b) { id } }",
    "Query.savedAudience": 'query { savedAudience(id: "999999999") { id } }',
    "Query.compareSnapshots": 'query { compareSnapshots(before: "999999998", after: "999999999") { __typename } }',
    "Query.channelOverlap": "query($b: String!) { channelOverlap(brand: $b) { total pairs { both } } }",
    "Query.tags": "query($b: String!) { tags(brand: $b) { code } }",
    "Query.auditLog": "query($b: String!) { auditLog(brand: $b) { nodes { id } } }",
    "Query.lifecycleTransitions": (
        'query($b: String!) { lifecycleTransitions(brand: $b, since: "2026-01-01T00:00:00Z") { count } }'
    ),
    "Query._entities": (
        'query($m: ID!, $b: String!, $e: String!) { _entities(representations: [{__typename: "Member", id: $m},'
        ' {__typename: "ChannelIdentity", brand: $b, channel: "WECHAT", externalId: $e}])'
        " { __typename ... on Member { id displayName } ... on ChannelIdentity { member { id } } } }"
    ),
    "Query._service": "{ _service { sdl } }",
    "Mutation.createBrand": _mutation("($b: String!)", 'createBrand(code: $b, name: "x", group: "g_matrix")'),
    "Mutation.registerMember": _mutation(
        "($b: String!)", 'registerMember(brand: $b, channel: "pos", externalId: "m1")'
    ),
    "Mutation.bindIdentity": _mutation("($b: String!)", 'bindIdentity(brand: $b, channel: "pos", externalId: "m2")'),
    "Mutation.mergeMembers": _mutation("($m: ID!)", 'mergeMembers(survivorId: $m, mergedId: "999999999", reason: "r")'),
    "Mutation.unmergeMembers": _mutation("", 'unmergeMembers(mergeId: "999999999")'),
    "Mutation.earnPoints": _mutation(
        "($b: String!, $m: ID!, $k: String!)", "earnPoints(brand: $b, memberId: $m, amount: 1, idempotencyKey: $k)"
    ),
    "Mutation.redeemPoints": _mutation(
        "($b: String!, $m: ID!, $k: String!)", "redeemPoints(brand: $b, memberId: $m, amount: 1, idempotencyKey: $k)"
    ),
    "Mutation.cancelRedemption": _mutation(
        "($b: String!, $k: String!)", 'cancelRedemption(brand: $b, postingId: "999999999", idempotencyKey: $k)'
    ),
    "Mutation.adjustPoints": _mutation(
        "($b: String!, $m: ID!, $k: String!)",
        'adjustPoints(brand: $b, memberId: $m, delta: 1, reason: "r", idempotencyKey: $k)',
    ),
    "Mutation.recordOrder": _mutation(
        "($b: String!, $m: ID!, $k: String!)",
        'recordOrder(brand: $b, channel: "pos", externalOrderId: $k, amount: "10", paidAt: "2026-01-01T00:00:00Z",'
        " memberId: $m)",
    ),
    "Mutation.refundOrder": _mutation(
        "($b: String!, $k: String!)",
        'refundOrder(brand: $b, channel: "pos", externalOrderId: "none", idempotencyKey: $k)',
    ),
    "Mutation.defineTag": _mutation(
        "($b: String!, $k: String!)", 'defineTag(brand: $b, code: $k, name: "t", category: CUSTOM)'
    ),
    "Mutation.tagMembers": _mutation("($b: String!, $m: ID!)", 'tagMembers(brand: $b, tag: "none", memberIds: [$m])'),
    "Mutation.untagMembers": _mutation(
        "($b: String!, $m: ID!)", 'untagMembers(brand: $b, tag: "none", memberIds: [$m])'
    ),
    "Mutation.saveAudience": _mutation(
        "($b: String!)", 'saveAudience(brand: $b, name: "n", expression: "tier:silver")'
    ),
    "Mutation.refreshAudience": _mutation("", 'refreshAudience(id: "999999999")'),
    "Mutation.setLifecycleRules": _mutation("($b: String!)", "setLifecycleRules(brand: $b, atRiskDays: 90)"),
    "Mutation.setTagRule": _mutation("($b: String!)", 'setTagRule(brand: $b, tag: "none", rule: "tier:silver")'),
}
# Root fields whose own tests check their scope (tests/test_consent.py, tests/test_erasure.py,
# tests/test_overlap.py: brandOverlap names a group, which the matrix's key sees only part of).
EXTRA_ROOTS = {"Mutation.setConsent", "Mutation.setGuardianConsent", "Mutation.eraseMember", "Query.brandOverlap"}


def test_every_root_field_is_called_over_http() -> None:
    roots = {f"{root}.{name}" for root in ("Query", "Mutation") for name in SCHEMA.type_map[root].fields}  # type: ignore[attr-defined]
    assert roots <= set(ROOT_CALLS) | EXTRA_ROOTS, roots - set(ROOT_CALLS)


@pytest.fixture(scope="module")
async def brands(pool: AsyncConnectionPool[Any], client: httpx.AsyncClient) -> dict[str, Any]:
    group = unique_code("g")
    mine, theirs = await new_brand(pool, group), await new_brand(pool, group)
    admin = GraphQL(client)
    members = {}
    for code, external in ((mine, "wx-mine"), (theirs, "wx-theirs")):
        data = await admin(REGISTER, brand=code, channel="wechat", externalId=external, phone="13700001111")
        members[code] = data["registerMember"]["member"]["id"]
    async with pool.connection() as conn:  # the index counts them from now on
        for code in (mine, theirs):
            await apply_brand(conn, (await brand_by_code(conn, code))["id"], wait=True)
    return {"mine": mine, "theirs": theirs, "members": members}


def _variables(document: str, brand: str, member: str) -> dict[str, str]:
    values = {"b": brand, "m": member, "e": "wx-theirs" if brand.endswith("theirs") else "wx-mine"}
    values |= {"p": "13700001111", "k": f"k{secrets.token_hex(6)}"}
    return {name: value for name, value in values.items() if f"${name}" in document}


def _neutral(text: str, replaced: dict[str, str]) -> str:
    for value, placeholder in replaced.items():
        text = text.replace(value, placeholder)
    return text


@pytest.mark.parametrize("role", list(Role))
async def test_every_root_field_for_every_role_in_and_out_of_scope(
    role: Role, client: httpx.AsyncClient, database_url: str, brands: dict[str, Any]
) -> None:
    mine, theirs = brands["mine"], brands["theirs"]
    token = await new_key(database_url, role, brand_codes=[mine])
    caller = GraphQL(client, token)
    allowed = ROLES[role].capabilities
    for coordinate, document in ROOT_CALLS.items():
        need = RULES[coordinate]
        inside = await caller.raw(document, **_variables(document, mine, brands["members"][mine]))
        outside = await caller.raw(document, **_variables(document, theirs, brands["members"][theirs]))
        missing = await caller.raw(document, **_variables(document, "no_such_brand", "999999999"))
        if need is not None and need not in allowed:
            for answer in (inside, outside, missing):
                assert answer["errors"][0]["extensions"]["code"] == "FORBIDDEN", (role, coordinate, answer)
            continue
        assert "FORBIDDEN" not in json.dumps(inside), (role, coordinate, inside)
        # Out of scope reads exactly as missing: nothing of the other brand, no other answer.
        seen = json.dumps(outside, ensure_ascii=False)
        assert "wx-theirs" not in seen
        assert f'"{brands["members"][theirs]}"' not in json.dumps(outside.get("data")), (role, coordinate, outside)
        placeholders = {theirs: "BRAND", "no_such_brand": "BRAND", brands["members"][theirs]: "ID", "999999999": "ID"}
        assert _neutral(seen, placeholders) == _neutral(json.dumps(missing, ensure_ascii=False), placeholders), (
            role,
            coordinate,
        )


@pytest.mark.parametrize("role", list(Role))
async def test_exports_for_every_role_in_and_out_of_scope(
    role: Role, client: httpx.AsyncClient, database_url: str, brands: dict[str, Any]
) -> None:
    token = {"authorization": f"Bearer {await new_key(database_url, role, brand_codes=[brands['mine']])}"}
    answers = {
        which: await client.get(
            "/audiences/export",
            params={"brand": code, "expression": "tier:silver", "fields": "id,channel:wechat"},
            headers=token,
        )
        for which, code in (("mine", brands["mine"]), ("theirs", brands["theirs"]), ("none", "no_such_brand"))
    }
    if Capability.EXPORT not in ROLES[role].capabilities:
        assert {a.status_code for a in answers.values()} == {403}
        return
    assert answers["mine"].status_code == 200
    assert "wx-mine" in answers["mine"].text
    assert answers["theirs"].status_code == answers["none"].status_code == 404
    assert answers["theirs"].json()["error"]["code"] == answers["none"].json()["error"]["code"] == "UNKNOWN_BRAND"
    assert "wx-theirs" not in answers["theirs"].text


def test_the_documented_role_table_is_the_enforced_one() -> None:
    text = (ROOT / "docs" / "access.md").read_text()
    documented = text.split("<!-- roles:begin -->\n")[1].split("\n<!-- roles:end -->")[0]
    assert documented == table()

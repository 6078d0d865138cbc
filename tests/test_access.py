"""Keys, roles, scope and personal data, tried as an anonymous caller, a partner and a campaign tool
would (issue 14): 401 without a valid key on every route, a key sees only its brands (another
brand's rows answer exactly as missing ones), personal data masked by role, clear reads and
mutations audited."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool
from typer.testing import CliRunner

from api import auth
from api.app import create_app
from api.cli import cli
from api.settings import Settings
from store.access.roles import Role
from tests.conftest import TEST_SECRET, GraphQL, new_brand, new_key, serving, unique_code
from tests.fragments import REGISTER


@dataclass(frozen=True)
class World:
    """Two brands of one group, the same person in both (same phone), each with distinctive data."""

    group: str
    a: str
    b: str
    a_member: str
    b_member: str
    phone: str
    a_unionid: str
    b_buyer: str


def _phone() -> str:
    return "139" + "".join(secrets.choice("0123456789") for _ in range(8))


@pytest.fixture
async def world(gql: GraphQL, pool: AsyncConnectionPool[Any]) -> World:
    group = unique_code("g")
    a, b = await new_brand(pool, group), await new_brand(pool, group)
    phone, unionid, buyer = _phone(), f"oUnion{secrets.token_hex(6)}", f"tb{secrets.token_hex(6)}"
    person = {"phone": phone, "displayName": "王小明", "birthday": "1990-05-17", "city": "杭州"}
    first = await gql(REGISTER, brand=a, channel="wechat", externalId=unionid, **person)
    second = await gql(REGISTER, brand=b, channel="tmall", externalId=buyer, **person)
    return World(
        group,
        a,
        b,
        first["registerMember"]["member"]["id"],
        second["registerMember"]["member"]["id"],
        phone,
        unionid,
        buyer,
    )


async def _as(gql: GraphQL, database_url: str, role: Role, **scope: Any) -> GraphQL:
    return GraphQL(gql.http, await new_key(database_url, role, **scope))


PROFILE = """query($id: ID!) { member(id: $id) {
  id displayName birthday birthMonth maskedPhone city identities { channel externalId }
  person { memberships { id brand { code } } } } }"""


# --- keys ------------------------------------------------------------------------------------------


async def test_every_route_but_health_answers_401_without_a_valid_key(
    client: httpx.AsyncClient, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(auth, "WRONG_KEY_DELAY", 0.01)
    anonymous = {"authorization": ""}
    revoked = await new_key(database_url)
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        await conn.execute("UPDATE api_keys SET revoked_at = now() WHERE prefix = %s", [revoked.split("_")[1]])
        expired = await new_key(database_url)
        await conn.execute("UPDATE api_keys SET expires_at = now() WHERE prefix = %s", [expired.split("_")[1]])
        await conn.commit()
    # A real token with its secret changed: the prefix exists, the hash does not match.
    forged = revoked[:12] + ("A" if revoked[12] != "A" else "B") + revoked[13:]
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", "/graphql", {"json": {"query": "{ brands { code } }"}}),
        ("GET", "/graphql?query=%7B%20brands%20%7B%20code%20%7D%20%7D", {}),
        ("GET", "/audiences/export?brand=x&expression=tier:gold", {}),
        ("GET", "/audiences/1/export", {}),
        ("GET", "/no-such-route", {}),
    ]
    for header in (None, "Bearer", "Bearer nonsense", "Basic dXNlcjpwYXNz", f"Bearer {revoked}", f"Bearer {expired}"):
        for method, path, extra in requests:
            headers = {"authorization": header} if header is not None else anonymous
            response = await client.request(method, path, headers=headers, **extra)
            assert response.status_code == 401, (header, path, response.text)
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert response.json()["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED"
    response = await client.post(
        "/graphql", json={"query": "{ brands { code } }"}, headers={"authorization": f"Bearer {forged}"}
    )
    assert response.status_code == 401
    for open_path in ("/healthz", "/readyz"):
        assert (await client.get(open_path, headers=anonymous)).status_code == 200


async def test_only_a_hash_of_a_token_is_stored(database_url: str) -> None:
    token = await new_key(database_url, Role.CAMPAIGN, all_brands=True)
    secret = token.split("_", 2)[2]
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        rows = await (await conn.execute("SELECT t::text FROM api_keys t")).fetchall()
    assert rows
    assert not any(secret in row[0] or token in row[0] for row in rows)


async def test_development_mode_admits_key_less_requests_from_loopback_only(database_url: str, tmp_path: Path) -> None:
    async with serving(database_url, tmp_path, dev=True) as (http, _):
        local = await http.post("/graphql", json={"query": "{ brands { code } }"}, headers={"authorization": ""})
        assert local.status_code == 200, local.text
        app = http._transport.app  # type: ignore[attr-defined]
        remote_transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 5555))
        async with httpx.AsyncClient(transport=remote_transport, base_url="http://omnimember.test") as remote:
            refused = await remote.post("/graphql", json={"query": "{ brands { code } }"})
        assert refused.status_code == 401
    async with serving(database_url, tmp_path) as (http, _):  # production: no key, no answer
        assert (
            await http.post("/graphql", json={"query": "{ brands { code } }"}, headers={"authorization": ""})
        ).status_code == 401


def test_the_cli_refuses_development_mode_on_a_public_address() -> None:
    result = CliRunner().invoke(cli, ["serve", "--dev", "--host", "0.0.0.0"])  # noqa: S104 - the point of the test
    assert result.exit_code == 2
    assert "loopback" in result.output


def test_keys_are_created_listed_and_revoked_with_the_cli(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    runner = CliRunner()
    created = runner.invoke(cli, ["keys", "create", "--role", "campaign", "--name", "SMS tool", "--all-brands"])
    assert created.exit_code == 0, created.output
    token = created.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"om_[0-9a-f]{8}_[A-Za-z0-9_-]{43}", token)
    prefix = token.split("_")[1]
    listed = runner.invoke(cli, ["keys", "list"])
    line = next(line for line in listed.stdout.splitlines() if line.startswith(prefix))
    assert line.split()[1:3] == ["campaign", "'SMS"]
    assert line.endswith("live")
    assert token.split("_", 2)[2] not in listed.stdout
    assert runner.invoke(cli, ["keys", "revoke", prefix]).exit_code == 0
    assert "revoked" in next(
        line for line in runner.invoke(cli, ["keys", "list"]).stdout.splitlines() if line.startswith(prefix)
    )
    again = runner.invoke(cli, ["keys", "revoke", prefix])
    assert again.exit_code == 1
    bad = runner.invoke(
        cli, ["keys", "create", "--role", "partner", "--name", "x", "--all-brands", "--grant", "export"]
    )
    assert bad.exit_code == 1
    assert "cannot be granted export" in bad.output
    unscoped = runner.invoke(cli, ["keys", "create", "--role", "partner", "--name", "x"])
    assert unscoped.exit_code == 1
    assert "scope" in unscoped.output


# --- scope -----------------------------------------------------------------------------------------


async def test_a_brand_key_sees_its_brand_only_and_another_brands_member_reads_as_missing(
    gql: GraphQL, database_url: str, world: World
) -> None:
    campaign = await _as(gql, database_url, Role.CAMPAIGN, brand_codes=[world.a])
    brands = await campaign("{ brands { code } }")
    assert brands == {"brands": [{"code": world.a}]}
    mine = await campaign(PROFILE, id=world.a_member)
    assert mine["member"]["id"] == world.a_member
    # The same person in brand B (same phone, same group): not listed, not readable.
    assert mine["member"]["person"] == {"memberships": []}
    other = await campaign.raw(PROFILE, id=world.b_member)
    missing = await campaign.raw(PROFILE, id="999999999999")
    assert other == missing == {"data": {"member": None}}
    for brand in (world.b, "no_such_brand"):
        page = await campaign.raw("query($b: String!) { members(brand: $b) { totalCount } }", b=brand)
        assert page["errors"][0]["message"] == f"no brand with code {brand!r}"
        assert page["errors"][0]["extensions"]["code"] == "UNKNOWN_BRAND"
    admin_view = await gql(PROFILE, id=world.a_member)
    assert [m["id"] for m in admin_view["member"]["person"]["memberships"]] == [world.b_member]


async def test_writes_to_another_brands_member_answer_as_for_a_missing_one(
    gql: GraphQL, database_url: str, world: World
) -> None:
    admin_a = await _as(gql, database_url, Role.ADMIN, brand_codes=[world.a])
    earn = """mutation($brand: String!, $id: ID!, $key: String!) { earnPoints(brand: $brand, memberId: $id, amount: 5,
      idempotencyKey: $key) { __typename ... on Error { code message field } } }"""
    theirs = await admin_a(earn, brand=world.a, id=world.b_member, key=secrets.token_hex(4))
    nobody = await admin_a(earn, brand=world.a, id="999999999999", key=secrets.token_hex(4))
    assert theirs["earnPoints"]["code"] == nobody["earnPoints"]["code"] == "UNKNOWN_MEMBER"
    assert theirs["earnPoints"]["message"].replace(world.b_member, "N") == nobody["earnPoints"]["message"].replace(
        "999999999999", "N"
    )
    merge = """mutation($s: ID!, $m: ID!) { mergeMembers(survivorId: $s, mergedId: $m, reason: "dup") {
      __typename ... on Error { code message field } } }"""
    crossed = await admin_a(merge, s=world.a_member, m=world.b_member)
    absent = await admin_a(merge, s=world.a_member, m="999999999999")
    assert crossed["mergeMembers"]["code"] == absent["mergeMembers"]["code"] == "UNKNOWN_MEMBER"
    balance = await gql("query($id: ID!) { member(id: $id) { pointsBalance } }", id=world.b_member)
    assert balance["member"]["pointsBalance"] == 0


async def test_brands_are_created_only_in_groups_the_key_holds(gql: GraphQL, database_url: str, world: World) -> None:
    create = """mutation($code: String!, $group: String!) { createBrand(code: $code, name: "N", group: $group) {
      __typename ... on Error { code } } }"""
    brand_admin = await _as(gql, database_url, Role.ADMIN, brand_codes=[world.a])
    for group in (world.group, unique_code("g")):
        refused = await brand_admin(create, code=unique_code("b"), group=group)
        assert refused["createBrand"] == {"__typename": "NotAllowed", "code": "NOT_ALLOWED"}
    group_admin = await _as(gql, database_url, Role.ADMIN, group_codes=[world.group])
    made = await group_admin(create, code=unique_code("b"), group=world.group)
    assert made["createBrand"]["__typename"] == "BrandCreated"
    new_group = await group_admin(create, code=unique_code("b"), group=unique_code("g"))
    assert new_group["createBrand"]["__typename"] == "NotAllowed"


async def test_a_group_key_sees_every_brand_of_its_group(gql: GraphQL, database_url: str, world: World) -> None:
    support = await _as(gql, database_url, Role.SUPPORT, group_codes=[world.group])
    assert {b["code"] for b in (await support("{ brands { code } }"))["brands"]} == {world.a, world.b}
    assert (await support(PROFILE, id=world.b_member))["member"]["id"] == world.b_member


# --- personal data ---------------------------------------------------------------------------------


async def test_campaign_keys_see_personal_data_masked_on_both_read_paths(
    gql: GraphQL, database_url: str, world: World
) -> None:
    campaign = await _as(gql, database_url, Role.CAMPAIGN, brand_codes=[world.a])
    read = "query($id: ID!) { member(id: $id) { displayName birthday birthMonth maskedPhone city } }"
    general = (await campaign(PROFILE, id=world.a_member))["member"]
    compiled = (await campaign(read, id=world.a_member))["member"]  # takes the compiled path
    for seen in (general, compiled):
        assert seen["displayName"] == "王*"
        assert seen["birthday"] is None
        assert seen["birthMonth"] == 5
        assert seen["maskedPhone"] == f"{world.phone[:3]}****{world.phone[-4:]}"
    assert world.phone not in json.dumps(general)


async def test_partners_get_pseudonyms_stable_for_them_and_different_across_partners(
    gql: GraphQL, database_url: str, world: World
) -> None:
    first = await _as(gql, database_url, Role.PARTNER, brand_codes=[world.a])
    second = await _as(gql, database_url, Role.PARTNER, brand_codes=[world.a])
    query = "query($id: ID!) { member(id: $id) { displayName identities { channel externalId } } }"
    seen = [(await partner(query, id=world.a_member))["member"] for partner in (first, first, second)]
    ids = [member["identities"][0]["externalId"] for member in seen]
    assert ids[0] == ids[1] != ids[2]
    assert all(i.startswith("p_") and world.a_unionid not in i for i in ids)
    assert seen[0]["displayName"] == "王*"
    by_identity = """query($b: String!, $e: String!) { memberByIdentity(brand: $b, channel: "wechat", externalId: $e) {
      id } }"""
    assert (await first(by_identity, b=world.a, e=world.a_unionid))["memberByIdentity"]["id"] == world.a_member


async def test_clear_reads_are_audited_with_the_members_read(gql: GraphQL, database_url: str, world: World) -> None:
    support = await _as(gql, database_url, Role.SUPPORT, brand_codes=[world.a])
    seen = (await support(PROFILE, id=world.a_member))["member"]
    assert seen["displayName"] == "王小明"
    assert seen["birthday"] == "1990-05-17"
    assert seen["identities"][0]["externalId"] == world.a_unionid
    log = await gql(
        "query($b: String!) { auditLog(brand: $b, first: 5) { nodes { operation keyName role targetIds summary } } }",
        b=world.a,
    )
    read = log["auditLog"]["nodes"][0]
    assert read["operation"] == "read personal data"
    assert read["role"] == "support"
    assert read["targetIds"] == [world.a_member]
    masked = await _as(gql, database_url, Role.CAMPAIGN, brand_codes=[world.a])
    await masked(PROFILE, id=world.a_member)
    after = await gql("query($b: String!) { auditLog(brand: $b, first: 1) { nodes { id role } } }", b=world.a)
    assert after["auditLog"]["nodes"][0]["role"] == "support"  # masked reads leave no record


async def test_every_mutation_is_audited_without_the_personal_data_it_carried(
    gql: GraphQL, database_url: str, world: World
) -> None:
    frontend = await _as(gql, database_url, Role.FRONTEND, brand_codes=[world.a])
    phone = _phone()
    registered = await frontend(
        REGISTER, brand=world.a, channel="pos", externalId="card-9", phone=phone, displayName="李雷"
    )
    member_id = registered["registerMember"]["member"]["id"]
    request = await frontend.http.post(
        "/graphql",
        json={
            "query": """mutation($b: String!, $id: ID!) { redeemPoints(brand: $b, memberId: $id, amount: 50,
              idempotencyKey: "r1") { __typename } }""",
            "variables": {"b": world.a, "id": member_id},
        },
        headers={**frontend.headers, "x-request-id": "trace-me-42"},
    )
    assert request.headers["x-request-id"] == "trace-me-42"
    log = await gql(
        """query($b: String!) { auditLog(brand: $b, first: 2) { nodes { operation keyName role targetIds summary
          requestId } } }""",
        b=world.a,
    )
    redeem, register = log["auditLog"]["nodes"]
    assert redeem["operation"] == "redeemPoints"
    assert redeem["requestId"] == "trace-me-42"
    assert redeem["summary"]["result"] == "InsufficientPoints"
    assert redeem["summary"]["arguments"]["amount"] == 50
    assert member_id in redeem["targetIds"]
    assert register["operation"] == "registerMember"
    assert register["role"] == "frontend"
    assert register["summary"]["arguments"]["phone"] == "given"
    assert phone not in json.dumps(log)
    assert "李雷" not in json.dumps(log)
    campaign = await _as(gql, database_url, Role.CAMPAIGN, brand_codes=[world.a])
    refused = await campaign.raw("query($b: String!) { auditLog(brand: $b) { nodes { id } } }", b=world.a)
    assert refused["errors"][0]["extensions"]["code"] == "FORBIDDEN"


async def test_the_audit_log_cannot_be_changed_or_emptied(database_url: str, gql: GraphQL, world: World) -> None:
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        for statement in ("UPDATE audit_log SET role = 'admin'", "DELETE FROM audit_log", "TRUNCATE audit_log"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await conn.execute(statement)


# --- limits and production mode --------------------------------------------------------------------


async def test_a_key_past_its_rate_answers_429_with_retry_after(database_url: str, tmp_path: Path) -> None:
    async with serving(database_url, tmp_path, rate_limit=3) as (http, _):
        statuses = [(await http.post("/graphql", json={"query": "{ brands { code } }"})) for _ in range(5)]
    assert [r.status_code for r in statuses[:3]] == [200, 200, 200]
    assert statuses[4].status_code == 429
    assert int(statuses[4].headers["retry-after"]) >= 1


async def test_phone_lookups_are_limited_per_key(
    database_url: str, tmp_path: Path, pool: AsyncConnectionPool[Any]
) -> None:
    brand = await new_brand(pool)
    query = "query($b: String!, $p: String!) { memberByPhone(brand: $b, phone: $p) { id } }"
    async with serving(database_url, tmp_path, phone_lookups=6) as (http, _):
        answers = [
            await http.post("/graphql", json={"query": query, "variables": {"b": brand, "p": _phone()}})
            for _ in range(3)
        ]
    assert answers[0].status_code == 200
    assert answers[0].json() == {"data": {"memberByPhone": None}}
    assert answers[2].status_code == 429
    assert answers[2].json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
    assert int(answers[2].headers["retry-after"]) >= 1


async def test_production_mode_hides_the_schema_and_development_mode_shows_it(
    gql: GraphQL, database_url: str, tmp_path: Path
) -> None:
    introspect = "{ __schema { queryType { name } } }"
    refused = await gql.raw(introspect)
    assert refused["errors"][0]["extensions"]["code"] == "INVALID_DOCUMENT"
    typo = await gql.raw("{ brandz { code } }")
    assert "Did you mean" not in typo["errors"][0]["message"]
    async with serving(database_url, tmp_path, dev=True) as (http, _):
        assert (await http.post("/graphql", json={"query": introspect})).json() == {
            "data": {"__schema": {"queryType": {"name": "Query"}}}
        }
        suggested = (await http.post("/graphql", json={"query": "{ brandz { code } }"})).json()
        assert "Did you mean" in suggested["errors"][0]["message"]


async def test_an_unexpected_error_names_the_request_and_nothing_of_the_database(
    gql: GraphQL, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from resolvers import brands as brand_resolvers

    async def broken(info: Any) -> list[Any]:
        raise psycopg.errors.UndefinedTable('relation "secret_table" does not exist')

    monkeypatch.setattr(brand_resolvers, "list_brands", broken)
    response = await gql.http.post("/graphql", json={"query": "{ brands { code } }"}, headers={"x-request-id": "r-77"})
    error = response.json()["errors"][0]
    assert error["message"] == "Unexpected error."
    assert error["extensions"] == {"code": "INTERNAL", "requestId": "r-77"}
    assert "secret_table" not in response.text
    assert any("r-77" in record.getMessage() and record.exc_info for record in caplog.records)


async def test_websockets_are_refused_so_no_document_runs_without_a_key(database_url: str, tmp_path: Path) -> None:
    """The key check sees HTTP only; strawberry would run queries over graphql-transport-ws. The
    schema has no subscriptions and the route is HTTP-only, so a websocket is closed at once: this
    keeps it so."""
    app = create_app(Settings(database_url=database_url, home=tmp_path, secret=TEST_SECRET))
    incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    sent: list[MutableMapping[str, Any]] = []
    for message in (
        {"type": "websocket.connect"},
        {"type": "websocket.receive", "text": json.dumps({"type": "connection_init"})},
        {
            "type": "websocket.receive",
            "text": json.dumps({"id": "1", "type": "subscribe", "payload": {"query": "{ brands { code } }"}}),
        },
    ):
        incoming.put_nowait(message)

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    async with app.router.lifespan_context(app) as state:
        scope = {
            "type": "websocket",
            "path": "/graphql",
            "raw_path": b"/graphql",
            "query_string": b"",
            "headers": [(b"sec-websocket-protocol", b"graphql-transport-ws")],
            "subprotocols": ["graphql-transport-ws"],
            "client": ("127.0.0.1", 5000),
            "state": dict(state or {}),
        }
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(app(scope, incoming.get, send), timeout=3)
    assert sent, "no answer at all"
    assert sent[0]["type"] == "websocket.close", sent
    assert not any("brands" in json.dumps(message) for message in sent)


async def test_a_wrong_key_is_answered_after_a_pause_and_a_missing_one_at_once(client: httpx.AsyncClient) -> None:
    timings = []
    for header in ("Bearer om_00000000_guess", ""):
        started = time.perf_counter()
        response = await client.post(
            "/graphql", json={"query": "{ brands { code } }"}, headers={"authorization": header}
        )
        timings.append(time.perf_counter() - started)
        assert response.status_code == 401
    assert timings[0] >= auth.WRONG_KEY_DELAY
    assert timings[1] < auth.WRONG_KEY_DELAY


async def test_queued_audit_records_are_written_within_moments_and_at_shutdown(
    database_url: str, tmp_path: Path, pool: AsyncConnectionPool[Any]
) -> None:
    brand = await new_brand(pool)
    register = 'mutation($b: String!) { registerMember(brand: $b, channel: "pos", externalId: "c1") { __typename } }'

    async def recorded(request_id: str) -> int:
        async with pool.connection() as conn:
            cursor = await conn.execute("SELECT count(*) FROM audit_log WHERE request_id = %s", [request_id])
            row = await cursor.fetchone()
        assert row is not None
        return int(row[0])

    async with serving(database_url, tmp_path) as (http, _):
        await http.post(
            "/graphql", json={"query": register, "variables": {"b": brand}}, headers={"x-request-id": "soon"}
        )
        for _ in range(100):  # the writer's interval is 10 ms
            if await recorded("soon"):
                break
            await asyncio.sleep(0.02)
        assert await recorded("soon") == 1
    async with serving(database_url, tmp_path) as (http, state):
        state.audit._interval = 3600  # nothing written until shutdown, once the writer's current pause ends
        await asyncio.sleep(0.05)
        await http.post(
            "/graphql", json={"query": register, "variables": {"b": brand}}, headers={"x-request-id": "late"}
        )
        await asyncio.sleep(0.05)
        assert await recorded("late") == 0
    assert await recorded("late") == 1

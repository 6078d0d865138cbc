"""Persisted documents: automatic persisted queries, registered documents and keys held to them."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from graphql import parse
from psycopg_pool import AsyncConnectionPool
from typer.testing import CliRunner

import api.persisted
from api.cli import cli
from api.persisted import Remembered, operations, selected
from api.settings import Settings
from store.access.documents import NewDocument, register, remove, sha256_hex
from store.access.roles import Role
from tests.conftest import new_key, serving, unique_code

AS_RESPONSE = {"accept": "application/graphql-response+json"}
TYPENAME = {"data": {"__typename": "Query"}}


def _unique_query() -> str:
    """A document no other test sends: the remembered documents and the registry outlive a test."""
    return f"query Probe{secrets.token_hex(4)} {{ __typename }}"


def _persisted(sha256: str) -> dict[str, Any]:
    return {"persistedQuery": {"version": 1, "sha256Hash": sha256}}


async def _send(
    http: httpx.AsyncClient, headers: dict[str, str] | None = None, **request: Any
) -> tuple[int, dict[str, Any]]:
    response = await http.post("/graphql", json=request, headers=headers or {})
    body: dict[str, Any] = response.json()
    return response.status_code, body


def _code(body: dict[str, Any]) -> str | None:
    errors = body.get("errors") or [{}]
    code: str | None = errors[0].get("extensions", {}).get("code")
    return code


async def _register(pool: AsyncConnectionPool[Any], text: str, source: str = "test") -> list[str]:
    """Register the operations of ``text`` as the CLI does; their hashes."""
    async with pool.connection() as conn, conn.transaction():
        return [
            (await register(conn, NewDocument(op.text, op.type, op.name, source)))[0]["sha256"]
            for op in operations(parse(text))
        ]


# --- the canonical form -----------------------------------------------------------------------------

DOCUMENT = """
# comments and layout do not matter
query First { brands { ...Outer } }
query Second { __typename }
fragment Outer on Brand { code ...Inner }
fragment Inner on Brand { name }
fragment Unused on Brand { code }
"""


def test_each_operation_stands_alone_with_the_fragments_it_uses() -> None:
    first, second = operations(parse(DOCUMENT))
    assert (first.type, first.name, second.name) == ("query", "First", "Second")
    assert first.text == (
        "query First {\n  brands {\n    ...Outer\n  }\n}\n\n"
        "fragment Outer on Brand {\n  code\n  ...Inner\n}\n\n"
        "fragment Inner on Brand {\n  name\n}"
    )
    assert second.text == "query Second {\n  __typename\n}"
    squeezed = " ".join(line.split("#")[0] for line in DOCUMENT.splitlines())
    assert [op.sha256 for op in operations(parse(squeezed))] == [first.sha256, second.sha256]
    assert first.sha256 == sha256_hex(first.text)


def test_the_selected_operation_is_the_one_graphql_would_run() -> None:
    document = parse(DOCUMENT)
    assert selected(document, None) is None  # two operations and no name
    chosen = selected(document, "Second")
    assert chosen is not None
    assert chosen.name == "Second"
    assert selected(document, "Third") is None
    only = selected(parse("{ __typename }"), None)
    assert only is not None
    assert only.name is None


def test_remembered_documents_are_bounded_least_recently_used_first() -> None:
    remembered = Remembered(max_documents=2, max_chars=10)
    remembered.put("a", "aaa")
    remembered.put("b", "bbb")
    assert remembered.get("a") == "aaa"  # now b is the least recently used
    remembered.put("c", "ccc")
    assert (remembered.get("a"), remembered.get("b"), remembered.get("c")) == ("aaa", None, "ccc")
    remembered.put("d", "dddddddd")  # 3 + 3 + 8 characters: over the budget
    assert (remembered.get("a"), remembered.get("c"), remembered.get("d")) == (None, None, "dddddddd")
    remembered.put("e", "e" * 11)  # larger than the whole budget: never kept
    assert remembered.get("e") is None
    assert len(remembered) == 1


# --- automatic persisted queries -----------------------------------------------------------------


async def test_a_hash_is_unknown_until_its_text_comes_with_it(client: httpx.AsyncClient) -> None:
    query = _unique_query()
    sha256 = sha256_hex(query)
    assert await _send(client, extensions=_persisted(sha256)) == (
        200,
        {
            "data": None,
            "errors": [{"message": "PersistedQueryNotFound", "extensions": {"code": "PERSISTED_QUERY_NOT_FOUND"}}],
        },
    )
    status, body = await _send(client, AS_RESPONSE, extensions=_persisted(sha256))
    assert (status, _code(body), "data" in body) == (404, "PERSISTED_QUERY_NOT_FOUND", False)
    # With its text (the hash in capitals is the same hash), it runs and is remembered.
    assert await _send(client, query=query, extensions=_persisted(sha256.upper())) == (200, TYPENAME)
    assert await _send(client, extensions=_persisted(sha256)) == (200, TYPENAME)


async def test_get_requests_send_the_hash_as_a_json_parameter(client: httpx.AsyncClient) -> None:
    query = f"query GetProbe{secrets.token_hex(4)} {{ __typename }}"
    extensions = json.dumps(_persisted(sha256_hex(query)))
    unknown = await client.get("/graphql", params={"extensions": extensions})
    assert _code(unknown.json()) == "PERSISTED_QUERY_NOT_FOUND"
    learnt = await client.get("/graphql", params={"query": query, "extensions": extensions})
    assert learnt.json() == {"data": {"__typename": "Query"}}
    known = await client.get("/graphql", params={"extensions": extensions})
    assert known.json() == {"data": {"__typename": "Query"}}
    broken = await client.get("/graphql", params={"extensions": "{not json"})
    assert (broken.status_code, _code(broken.json())) == (400, "BAD_REQUEST")


@pytest.mark.parametrize(
    ("extensions", "code", "says"),
    [
        (
            {"persistedQuery": {"version": 1, "sha256Hash": "0" * 64}},
            "PERSISTED_QUERY_HASH_MISMATCH",
            "not the SHA-256",
        ),
        ({"persistedQuery": {"version": 2, "sha256Hash": "0" * 64}}, "BAD_REQUEST", "version must be 1"),
        ({"persistedQuery": {"version": 1, "sha256Hash": "xyz"}}, "BAD_REQUEST", "64 hex digits"),
        ({"persistedQuery": "abc"}, "BAD_REQUEST", "must be an object"),
        ("abc", "BAD_REQUEST", '"extensions" must be an object'),
    ],
)
async def test_unusable_persisted_query_extensions_are_400(
    client: httpx.AsyncClient, extensions: Any, code: str, says: str
) -> None:
    for headers in ({}, AS_RESPONSE):
        status, body = await _send(client, headers, query="{ __typename }", extensions=extensions)
        assert (status, _code(body), "data" in body) == (400, code, False), body
        assert says in body["errors"][0]["message"]


async def test_no_document_and_no_hash_is_400(client: httpx.AsyncClient) -> None:
    status, body = await _send(client, extensions={"other": 1})
    assert (status, _code(body)) == (400, "BAD_REQUEST")
    assert "persistedQuery" in body["errors"][0]["message"]


async def test_only_documents_that_pass_the_checks_are_remembered(client: httpx.AsyncClient) -> None:
    query = f"query Broken{secrets.token_hex(4)} {{ noSuchField }}"
    sha256 = sha256_hex(query)
    _, refused = await _send(client, query=query, extensions=_persisted(sha256))
    assert _code(refused) == "INVALID_DOCUMENT"
    _, unknown = await _send(client, extensions=_persisted(sha256))
    assert _code(unknown) == "PERSISTED_QUERY_NOT_FOUND"


async def test_a_remembered_document_is_checked_for_each_caller(client: httpx.AsyncClient, database_url: str) -> None:
    query = f'query Audit{secrets.token_hex(4)} {{ auditLog(brand: "none") {{ edges {{ node {{ operation }} }} }} }}'
    sha256 = sha256_hex(query)
    _, learnt = await _send(client, query=query, extensions=_persisted(sha256))
    assert _code(learnt) != "FORBIDDEN"  # an admin may read the audit log
    partner = {"authorization": f"Bearer {await new_key(database_url, Role.PARTNER)}"}
    _, refused = await _send(client, partner, extensions=_persisted(sha256))
    assert _code(refused) == "FORBIDDEN"


async def test_document_text_never_reaches_the_log(client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture) -> None:
    marker = f"marker{secrets.token_hex(6)}"
    query = f"query Quiet {{ {marker}: __typename }}"
    with caplog.at_level(logging.DEBUG):
        await _send(client, query=query, extensions=_persisted(sha256_hex(query)))
        await _send(client, extensions=_persisted(sha256_hex(query)))
        await _send(client, query=query + " {", extensions=_persisted(sha256_hex(query + " {")))
    assert caplog.records
    assert not [r for r in caplog.records if marker in r.getMessage()]


# --- registered documents and keys held to them -----------------------------------------------------


@pytest.fixture
def quick_registry(monkeypatch: pytest.MonkeyPatch) -> float:
    """Registry answers kept 0.2 s instead of 5, for the apps a test starts."""
    monkeypatch.setattr(api.persisted, "CACHE_SECONDS", 0.2)
    return 0.2


async def _brand_exists(pool: AsyncConnectionPool[Any], code: str) -> bool:
    async with pool.connection() as conn:
        row = await (await conn.execute("SELECT 1 FROM brands WHERE code = %s", [code])).fetchone()
    return row is not None


async def test_a_held_key_runs_registered_documents_only(
    database_url: str, tmp_path: Path, pool: AsyncConnectionPool[Any]
) -> None:
    name = f"Held{secrets.token_hex(4)}"
    # As a source file might be: one fragment no operation uses, which alone would not validate.
    registered = (
        f"query {name} {{ brands {{ code }} }}\nquery Other{name} {{ __typename }}\nfragment U on Brand {{ code }}"
    )
    by_name = dict(zip([name, f"Other{name}"], await _register(pool, registered), strict=True))
    held = await new_key(database_url, Role.CAMPAIGN, all_brands=True, trusted_documents=True)
    async with serving(database_url, tmp_path, held) as (http, _):
        (exact,) = [op.text for op in operations(parse(registered)) if op.name == name]
        status, body = await _send(http, extensions=_persisted(by_name[name]))
        assert (status, "errors" in body) == (200, False), body
        status, body = await _send(http, query=exact)
        assert (status, "errors" in body) == (200, False), body
        # The file as written, with the operation named: its canonical print is registered.
        status, body = await _send(http, query=registered, operationName=f"Other{name}")
        assert (status, body) == (200, {"data": {"__typename": "Query"}})

        brand = unique_code("held")
        create = f'mutation {{ createBrand(code: "{brand}", name: "x", group: "{brand}") {{ __typename }} }}'
        for request in ({"query": create}, {"query": create, "extensions": _persisted(sha256_hex(create))}):
            status, body = await _send(http, **request)
            assert (status, _code(body), body["data"]) == (200, "DOCUMENT_NOT_TRUSTED", None)
            # The hash the operation would be registered under (its canonical print's).
            assert body["errors"][0]["extensions"]["sha256Hash"] == operations(parse(create))[0].sha256
        assert not await _brand_exists(pool, brand)  # refused before anything ran
        status, body = await _send(http, AS_RESPONSE, extensions=_persisted("ab" * 32))
        assert (status, _code(body), "data" in body) == (403, "DOCUMENT_NOT_TRUSTED", False)
        status, body = await _send(http, query=registered)  # two operations, none named
        assert _code(body) == "DOCUMENT_NOT_TRUSTED"
        assert "operationName" in body["errors"][0]["message"]
        # Nothing a held key sends is remembered for others, nor what others taught the process run by it.
        free = {"authorization": f"Bearer {await new_key(database_url)}"}
        _, body = await _send(http, free, extensions=_persisted(sha256_hex(create)))
        assert _code(body) == "PERSISTED_QUERY_NOT_FOUND"
        taught = _unique_query()
        assert await _send(http, free, query=taught, extensions=_persisted(sha256_hex(taught))) == (200, TYPENAME)
        _, body = await _send(http, extensions=_persisted(sha256_hex(taught)))
        assert _code(body) == "DOCUMENT_NOT_TRUSTED"
        # A key not held runs a registered document by its hash too.
        _, body = await _send(http, free, extensions=_persisted(by_name[f"Other{name}"]))
        assert body == {"data": {"__typename": "Query"}}


async def test_registration_and_removal_take_effect_while_serving(
    database_url: str, tmp_path: Path, pool: AsyncConnectionPool[Any], quick_registry: float
) -> None:
    query = _unique_query()
    held = await new_key(database_url, Role.PARTNER, all_brands=True, trusted_documents=True)
    async with serving(database_url, tmp_path, held) as (http, _):
        _, body = await _send(http, query=query)
        assert _code(body) == "DOCUMENT_NOT_TRUSTED"
        (sha256,) = await _register(pool, query)
        await asyncio.sleep(quick_registry * 1.5)
        status, body = await _send(http, extensions=_persisted(sha256))
        assert (status, body) == (200, TYPENAME)
        async with pool.connection() as conn:
            assert await remove(conn, sha256) is not None
        await asyncio.sleep(quick_registry * 1.5)
        _, body = await _send(http, extensions=_persisted(sha256))
        assert _code(body) == "DOCUMENT_NOT_TRUSTED"


@pytest.mark.parametrize(
    ("mode", "partner_held", "campaign_held"), [("off", False, False), ("partners", True, False), ("all", True, True)]
)
async def test_the_setting_holds_partner_keys_or_every_key(
    database_url: str, tmp_path: Path, mode: str, partner_held: bool, campaign_held: bool
) -> None:
    async with serving(database_url, tmp_path, trusted_documents=mode) as (http, _):
        for role, held in ((Role.PARTNER, partner_held), (Role.CAMPAIGN, campaign_held)):
            headers = {"authorization": f"Bearer {await new_key(database_url, role)}"}
            _, body = await _send(http, headers, query=_unique_query())
            assert (_code(body) == "DOCUMENT_NOT_TRUSTED") == held, (mode, role, body)


def test_the_setting_takes_three_values() -> None:
    assert Settings.from_env({}).trusted_documents == "off"
    assert Settings.from_env({"OMNIMEMBER_TRUSTED_DOCUMENTS": "Partners"}).trusted_documents == "partners"
    with pytest.raises(ValueError, match="OMNIMEMBER_TRUSTED_DOCUMENTS must be one of off, partners, all"):
        Settings.from_env({"OMNIMEMBER_TRUSTED_DOCUMENTS": "some"})


async def test_the_database_refuses_a_hash_that_is_not_the_texts(database_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        with pytest.raises(psycopg.errors.CheckViolation, match="sha256_of_body"):
            await conn.execute(
                "INSERT INTO persisted_documents (sha256, body, operation_type, source) VALUES (%s, %s, 'query', 't')",
                [sha256_hex("{ a }"), "{ b }"],
            )


# --- the command line ----------------------------------------------------------------------------------


def test_documents_are_registered_listed_shown_and_removed_with_the_cli(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    runner = CliRunner()
    suffix = secrets.token_hex(4)
    fragments = tmp_path / "fragments.graphql"
    fragments.write_text(f"fragment Bits{suffix} on Brand {{ code name }}\n")
    ops = tmp_path / "ops.graphql"
    ops.write_text(f"query A{suffix} {{ brands {{ ...Bits{suffix} }} }}\nmutation B{suffix} {{ __typename }}\n")
    registered = runner.invoke(cli, ["documents", "register", str(ops), str(fragments)])
    assert registered.exit_code == 0, registered.output
    lines = registered.stdout.splitlines()
    assert [line.split()[1:] for line in lines] == [
        ["query", f"A{suffix}", "registered"],
        ["mutation", f"B{suffix}", "registered"],
    ]
    first = lines[0].split()[0]
    again = runner.invoke(cli, ["documents", "register", str(ops), str(fragments), "--name", "partner app"])
    assert f"already registered (from {ops})" in again.stdout
    listed = runner.invoke(cli, ["documents", "list"]).stdout
    assert f"{first}  query A{suffix}  {ops}" in listed
    shown = runner.invoke(cli, ["documents", "show", first[:12]])
    assert shown.stdout.strip() == next(
        op.text for op in operations(parse(ops.read_text() + fragments.read_text())) if op.name == f"A{suffix}"
    )
    assert runner.invoke(cli, ["documents", "remove", first]).exit_code == 0
    assert first not in runner.invoke(cli, ["documents", "list"]).stdout
    gone = runner.invoke(cli, ["documents", "remove", first])
    assert (gone.exit_code, "no registered documents" in gone.output) == (1, True)
    short = runner.invoke(cli, ["documents", "show", "abc"])
    assert short.exit_code == 2


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("query Q { brands { code }", "bad.graphql:1:26: Syntax Error"),
        ("query Q { brands { nope } }", "bad.graphql:1:20: Cannot query field 'nope'"),
        ("fragment F on Brand { code }", "no operation"),
        ("query Q { brands { ...Missing } }", "Unknown fragment 'Missing'"),
    ],
)
def test_the_cli_registers_nothing_from_an_invalid_file(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, says: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.chdir(tmp_path)
    Path("bad.graphql").write_text(text)
    result = CliRunner().invoke(cli, ["documents", "register", "bad.graphql"])
    assert result.exit_code == 1
    assert says in result.output


def test_keys_can_be_held_to_trusted_documents_with_the_cli(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", database_url)
    runner = CliRunner()
    created = runner.invoke(
        cli, ["keys", "create", "--role", "partner", "--name", "app", "--all-brands", "--trusted-documents"]
    )
    assert created.exit_code == 0, created.output
    prefix = created.stdout.strip().splitlines()[-1].split("_")[1]
    line = next(line for line in runner.invoke(cli, ["keys", "list"]).stdout.splitlines() if line.startswith(prefix))
    assert line.endswith("trusted documents only")

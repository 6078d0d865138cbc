"""Bulk import (issue 16, item 8): `omnimember import members|orders|tags FILE --brand B`.

The central test is differential: a file imported into one brand ends exactly as the same rows
sent one by one through the API (registerMember, recordOrder, tagMembers) to another brand with the
same rules, members, identities, ledger, tiers and tags compared by their natural keys, and every
row the import rejects is one the API refuses with the same code.
"""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import json
import os
import random
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg_pool import AsyncConnectionPool
from typer.testing import CliRunner

from api.cli import cli
from store.audiences.bitmaps import lock_brand
from store.audiences.offline import count as audience_count
from store.brands import brand_by_code
from store.imports import checkpoints
from store.imports.files import Format
from store.imports.index import catch_up
from store.imports.orders import OrderImport
from store.imports.runner import Report, run_import
from store.members.phones import PhoneVault
from tests.conftest import TEST_SECRET, GraphQL, new_brand

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
SHANGHAI = dt.timezone(dt.timedelta(hours=8))
MEMBER_COLUMNS = ("channel", "external_id", "phone", "display_name", "gender", "birthday", "city")
ORDER_COLUMNS = ("channel", "external_order_id", "buyer_id", "amount", "paid_at", "store")
TAG_COLUMNS = ("channel", "external_id", "tag", "expires_at")
Row = dict[str, str | None]


# --- files, brands, imports -------------------------------------------------------------------------


def write(path: Path, columns: Sequence[str], rows: Sequence[Row], fmt: Format = Format.CSV) -> Path:
    with path.open("w", encoding="utf-8", newline="") as file:
        if fmt is Format.CSV:
            out = csv.writer(file)
            out.writerow(columns)
            out.writerows([[row.get(column) or "" for column in columns] for row in rows])
        else:
            for row in rows:
                file.write(json.dumps({k: v for k, v in row.items() if v is not None}, ensure_ascii=False) + "\n")
    return path


async def load(url: str, brand: str, kind: str, path: Path, **options: Any) -> Report:
    return await run_import(url, PhoneVault(TEST_SECRET.encode()), brand=brand, kind=kind, path=path, **options)


async def rules_brand(pool: AsyncConnectionPool[Any]) -> str:
    """A brand whose gold and platinum tiers give a points bonus, with two tags: one with a TTL."""
    code = await new_brand(pool)
    async with pool.connection() as conn:
        brand_id = (await brand_by_code(conn, code))["id"]
        await conn.execute(
            "UPDATE brand_tiers SET points_multiplier = CASE code WHEN 'gold' THEN 1.5 WHEN 'platinum' THEN 2"
            " ELSE points_multiplier END WHERE brand_id = %s",
            (brand_id,),
        )
        await conn.execute(
            "INSERT INTO tag_definitions (brand_id, code, name, category, ttl_days) VALUES"
            " (%s, 'vip', 'VIP', 'custom', NULL), (%s, 'trial', 'Trial', 'campaign', 30)",
            (brand_id, brand_id),
        )
    return code


def rejects_of(report: Report) -> dict[int, str]:
    if report.rejects is None:
        return {}
    with report.rejects.open(encoding="utf-8", newline="") as file:
        return {int(row["line"]): row["code"] for row in csv.DictReader(file)}


# --- what a brand holds, by natural keys -----------------------------------------------------------

_SNAPSHOT = {
    "members": """
        SELECT m.id, m.status, m.tier, m.points_balance, m.growth_value, m.points_earned, m.display_name, m.gender,
               m.birthday, m.city, m.order_count, m.total_spend, m.first_purchase_at, m.last_purchase_at,
               m.phone_hash, m.phone_masked, m.phone_encrypted, m.merged_into IS NULL AS live
        FROM members m WHERE m.brand_id = %(b)s""",
    "identities": "SELECT member_id, channel, external_id FROM member_identities WHERE brand_id = %(b)s",
    "postings": """SELECT id, member_id, idempotency_key, operation, channel, reason FROM points_postings
        WHERE brand_id = %(b)s""",
    "entries": """SELECT e.member_id, p.idempotency_key, e.kind, e.amount, e.balance_after, e.note
        FROM points_entries e JOIN points_postings p ON p.id = e.posting_id WHERE e.brand_id = %(b)s ORDER BY e.id""",
    "lots": """SELECT l.member_id, p.idempotency_key, e.note, l.amount, l.remaining, l.expires_at
        FROM points_lots l JOIN points_entries e ON e.id = l.entry_id JOIN points_postings p ON p.id = e.posting_id
        WHERE l.brand_id = %(b)s ORDER BY l.id""",
    "orders": """SELECT member_id, channel, external_order_id, amount, paid_at, store, points_earned, growth_earned,
        refunded FROM orders WHERE brand_id = %(b)s""",
    "tier_changes": "SELECT member_id, from_tier, to_tier, cause FROM tier_changes WHERE brand_id = %(b)s ORDER BY id",
    "tags": """SELECT t.member_id, d.code, t.expires_at FROM member_tags t JOIN tag_definitions d ON d.id = t.tag_id
        WHERE t.brand_id = %(b)s""",
}


async def snapshot(pool: AsyncConnectionPool[Any], brand: str) -> dict[str, Any]:
    """The brand's rows with member ids replaced by the member's identities, phones decrypted."""
    vault = PhoneVault(TEST_SECRET.encode())
    async with pool.connection() as conn:
        brand_id = (await brand_by_code(conn, brand))["id"]
        tables = {}
        for name, query in _SNAPSHOT.items():
            cursor = await conn.execute(query, {"b": brand_id})
            columns = [c.name for c in cursor.description or ()]
            tables[name] = [dict(zip(columns, row, strict=True)) for row in await cursor.fetchall()]
    keys: dict[int, tuple[tuple[str, str], ...]] = {}
    for identity in tables["identities"]:
        keys[identity["member_id"]] = (
            *keys.get(identity["member_id"], ()),
            (identity["channel"], identity["external_id"]),
        )
    keys = {member: tuple(sorted(identities)) for member, identities in keys.items()}

    def named(rows: list[dict[str, Any]], ordered: bool = False) -> list[tuple[Any, ...]]:
        out = [tuple(keys.get(v, v) if k == "member_id" else v for k, v in row.items()) for row in rows]
        # ordered: each member's rows in id order (the order they were written in), members by key
        return sorted(out, key=lambda row: repr(row[0])) if ordered else sorted(out, key=repr)

    members = []
    for row in tables["members"]:
        encrypted = row.pop("phone_encrypted")
        row["phone"] = None if encrypted is None else vault.decrypt(bytes(encrypted))
        row["id"] = keys.get(row.pop("id"))
        members.append(tuple(row.items()))
    return {
        "members": sorted(members, key=repr),
        "postings": named([{k: v for k, v in row.items() if k != "id"} for row in tables["postings"]]),
        **{name: named(tables[name], ordered=True) for name in ("entries", "lots", "tier_changes")},
        "orders": named(tables["orders"]),
        "tags": named(tables["tags"]),
    }


def assert_same(imported: dict[str, Any], replayed: dict[str, Any]) -> None:
    """Equal, but for a tag's expiry that a TTL set from now: the two ran seconds apart."""
    for name in imported:
        if name != "tags":
            assert imported[name] == replayed[name], name
    assert len(imported["tags"]) == len(replayed["tags"])
    for ours, theirs in zip(imported["tags"], replayed["tags"], strict=True):
        assert ours[:2] == theirs[:2]
        if ours[2] != theirs[2]:
            assert ours[2] is not None
            assert theirs[2] is not None
            assert abs(ours[2] - theirs[2]) < dt.timedelta(minutes=2), (ours, theirs)


async def dump(pool: AsyncConnectionPool[Any], brand: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row the brand has in the tables an import writes, exactly (ids and times included)."""
    tables = ["members", "member_identities", "orders", "points_postings", "points_entries", "points_lots"]
    tables += ["tier_changes", "member_tags"]
    async with pool.connection() as conn:
        brand_id = (await brand_by_code(conn, brand))["id"]
        out = {}
        for table in tables:  # constant names
            cursor = await conn.execute(f"SELECT * FROM {table} WHERE brand_id = %s ORDER BY 1, 2", (brand_id,))  # noqa: S608
            out[table] = sorted(await cursor.fetchall(), key=repr)
        cursor = await conn.execute(
            "SELECT d.* FROM lot_draws d JOIN points_lots l ON l.id = d.lot_id WHERE l.brand_id = %s", (brand_id,)
        )
        out["lot_draws"] = sorted(await cursor.fetchall(), key=repr)
    return out


# --- the API, row by row ----------------------------------------------------------------------------

_REGISTER = """
mutation($brand: String!, $channel: String!, $externalId: String!, $phone: String, $displayName: String,
         $gender: Gender, $birthday: Date, $city: String) {
  registerMember(brand: $brand, channel: $channel, externalId: $externalId, phone: $phone,
                 displayName: $displayName, gender: $gender, birthday: $birthday, city: $city) {
    __typename ... on Error { code }
  }
}"""
_ORDER = """
mutation($brand: String!, $channel: String!, $order: String!, $buyer: String!, $amount: Decimal!,
         $paidAt: DateTime!, $store: String) {
  recordOrder(brand: $brand, channel: $channel, externalOrderId: $order, buyerId: $buyer, amount: $amount,
              paidAt: $paidAt, store: $store) { __typename ... on Error { code } }
}"""
_MEMBER = """query($brand: String!, $channel: String!, $id: String!) {
  memberByIdentity(brand: $brand, channel: $channel, externalId: $id) { id } }"""
_TAG = """
mutation($brand: String!, $tag: String!, $ids: [ID!], $expiresAt: DateTime) {
  tagMembers(brand: $brand, tag: $tag, memberIds: $ids, expiresAt: $expiresAt) { __typename ... on Error { code } }
}"""


def _code(result: dict[str, Any]) -> str | None:
    payload = next(iter(result.values()))
    return payload.get("code")  # type: ignore[no-any-return]


async def replay(gql: GraphQL, brand: str, kind: str, rows: Sequence[Row]) -> dict[int, str]:
    """Send each row through the API, in order; the refused ones' codes by line (the header is line 1)."""
    refused = {}
    for line, row in enumerate(rows, start=2):
        code = await _send(gql, brand, kind, row)
        if code is not None:
            refused[line] = code
    return refused


async def _send(gql: GraphQL, brand: str, kind: str, row: Row) -> str | None:
    if kind == "members":
        gender = row.get("gender")
        return _code(
            await gql(
                _REGISTER,
                brand=brand,
                channel=row["channel"],
                externalId=row["external_id"],
                phone=row.get("phone"),
                displayName=row.get("display_name"),
                gender=gender.upper() if gender else None,
                birthday=row.get("birthday"),
                city=row.get("city"),
            )
        )
    if kind == "orders":
        return _code(
            await gql(
                _ORDER,
                brand=brand,
                channel=row["channel"],
                order=row["external_order_id"],
                buyer=row["buyer_id"],
                amount=row["amount"],
                paidAt=row["paid_at"],
                store=row.get("store"),
            )
        )
    member = (await gql(_MEMBER, brand=brand, channel=row["channel"], id=row["external_id"]))["memberByIdentity"]
    if member is None:
        return "UNKNOWN_MEMBER"
    return _code(await gql(_TAG, brand=brand, tag=row["tag"], ids=[member["id"]], expiresAt=row.get("expires_at")))


# --- generated files ----------------------------------------------------------------------------------


def _at(rand: random.Random, days: int) -> str:
    return (NOW - dt.timedelta(seconds=rand.randrange(3600, days * 86_400))).astimezone(SHANGHAI).isoformat()


def member_rows(rand: random.Random, count: int) -> list[Row]:
    """Identities of ~count/3 people: phones shared across rows and written several ways, profiles
    given piecemeal, an identity repeated (with another phone), and a few rows the API refuses."""
    month = NOW.astimezone(SHANGHAI).month
    rows: list[Row] = []
    for n in range(count):
        person = rand.randrange(count // 3)
        number = f"1390000{person:04d}"
        phone = rand.choice(
            [number, f"+86 {number[:3]} {number[3:7]} {number[7:]}", f"{number[:3]}-{number[3:]}", None]
        )
        rows.append(
            {
                "channel": rand.choice(["tmall", "jd", "wechat", "TMALL"]),
                "external_id": f"p{person}" if rand.random() < 0.8 else f"x{n}",
                "phone": phone,
                "display_name": rand.choice([None, f"顾客{person}", f"Client {n}"]),
                "gender": rand.choice([None, "female", "male", "unknown"]),
                "birthday": rand.choice([None, f"1990-{month:02d}-03", "1985-01-20"]),
                "city": rand.choice([None, "上海", "杭州"]),
            }
        )
    bad: list[Row] = [
        {"channel": "taobao", "external_id": "bad1"},
        {"channel": "tmall", "external_id": "bad2", "phone": "12345"},
        {"channel": "jd", "external_id": "x" * 129},
        {"channel": "jd", "external_id": "bad3", "display_name": "长" * 65},
        {"channel": "jd", "external_id": "bad4", "birthday": "2999-01-01"},
    ]
    for row in bad:
        rows.insert(rand.randrange(len(rows)), row)
    return rows


def order_rows(rand: random.Random, members: Sequence[Row], count: int) -> list[Row]:
    """Several orders per buyer (cents, amounts that cross tier thresholds, payments more than a
    year ago), an order sent twice, an order number reused for another order, unknown buyers."""
    buyers = sorted({(m["channel"].lower(), m["external_id"]) for m in members if m["channel"].lower() != "taobao"})  # type: ignore[union-attr]
    rows: list[Row] = []
    for n in range(count):
        channel, buyer = rand.choice(buyers)
        amount = rand.choice(["88.55", "0.01", "299.99", "301", "1234.50", "19.9"])
        rows.append(
            {
                "channel": channel,
                "external_order_id": f"O{n}",
                "buyer_id": buyer,
                "amount": amount,
                "paid_at": _at(rand, rand.choice([30, 300, 500])),
                "store": rand.choice([None, "s-01"]),
            }
        )
    rows.insert(rand.randrange(len(rows)), dict(rows[3]))  # the same order again: a replay
    rows.insert(rand.randrange(len(rows)), {**rows[5], "amount": "7.77"})  # DUPLICATE_REQUEST
    rows.insert(rand.randrange(len(rows)), {**rows[6], "external_order_id": "N1", "buyer_id": "nobody"})
    rows.insert(rand.randrange(len(rows)), {**rows[7], "external_order_id": "N2", "amount": "0"})
    return rows


def tag_rows(rand: random.Random, members: Sequence[Row], count: int) -> list[Row]:
    people = sorted({(m["channel"].lower(), m["external_id"]) for m in members if m["channel"].lower() != "taobao"})  # type: ignore[union-attr]
    rows: list[Row] = []
    for _ in range(count):
        channel, external_id = rand.choice(people)
        expires = rand.choice([None, None, (NOW + dt.timedelta(days=rand.choice([7, 90]))).isoformat()])
        rows.append(
            {
                "channel": channel,
                "external_id": external_id,
                "tag": rand.choice(["vip", "trial"]),
                "expires_at": expires,
            }
        )
    rows.insert(rand.randrange(len(rows)), {**rows[0], "tag": "vipp"})
    rows.insert(rand.randrange(len(rows)), {**rows[1], "expires_at": (NOW - dt.timedelta(days=1)).isoformat()})
    rows.insert(rand.randrange(len(rows)), {**rows[2], "external_id": "nobody"})
    return rows


# --- the tests ------------------------------------------------------------------------------------

_MERGE = """mutation($s: ID!, $m: ID!) { mergeMembers(survivorId: $s, mergedId: $m, reason: "same person") {
  __typename ... on Error { code } } }"""


async def _before(gql: GraphQL, brand: str) -> None:
    """Members the brand had before the import: one per phone of the file's people 0-2, and a
    merged pair whose merged-away member held person 3's phone."""
    rows: list[Row] = [
        {"channel": "pos", "external_id": "old0", "phone": "13900000000", "display_name": "老客"},
        {"channel": "pos", "external_id": "old1", "phone": "13900000001", "city": "北京"},
        {"channel": "tmall", "external_id": "p2", "phone": "13900000002"},
        {"channel": "pos", "external_id": "old3s", "phone": "13811112222"},
        {"channel": "pos", "external_id": "old3m", "phone": "13900000003"},
    ]
    assert await replay(gql, brand, "members", rows) == {}
    ids = [
        (await gql(_MEMBER, brand=brand, channel="pos", id=name))["memberByIdentity"]["id"]
        for name in ("old3s", "old3m")
    ]
    merged = await gql(_MERGE, s=ids[0], m=ids[1])
    assert merged["mergeMembers"]["__typename"] == "MembersMerged"


async def test_an_import_ends_as_the_same_rows_sent_through_the_api(
    database_url: str, pool: AsyncConnectionPool[Any], gql: GraphQL, tmp_path: Path
) -> None:
    rand = random.Random(16)
    members = member_rows(rand, 90)
    files = {
        "members": (MEMBER_COLUMNS, members),
        "orders": (ORDER_COLUMNS, order_rows(rand, members, 120)),
        "tags": (TAG_COLUMNS, tag_rows(rand, members, 60)),
    }
    imported, replayed = await rules_brand(pool), await rules_brand(pool)
    await _before(gql, imported)
    await _before(gql, replayed)
    for kind, (columns, rows) in files.items():
        report = await load(database_url, imported, kind, write(tmp_path / f"{kind}.csv", columns, rows))
        refused = await replay(gql, replayed, kind, rows)
        assert rejects_of(report) == refused, kind
        assert report.counts["rejected"] == len(refused)
    ours, theirs = await snapshot(pool, imported), await snapshot(pool, replayed)
    assert_same(ours, theirs)
    # what the comparison covered: phone matches, several orders a member, bonuses, upgrades, tags
    assert len(ours["members"]) < len(members) - 5
    assert any(entry[5].startswith("birthday") for entry in ours["entries"])
    assert any(entry[5].startswith("tier bonus") for entry in ours["entries"])
    assert ours["tier_changes"]
    assert {tag[1] for tag in ours["tags"]} == {"vip", "trial"}


async def test_csv_and_ndjson_load_alike(database_url: str, pool: AsyncConnectionPool[Any], tmp_path: Path) -> None:
    rows = member_rows(random.Random(3), 30)
    as_csv, as_json = await new_brand(pool), await new_brand(pool)
    one = await load(database_url, as_csv, "members", write(tmp_path / "m.csv", MEMBER_COLUMNS, rows))
    other = await load(
        database_url, as_json, "members", write(tmp_path / "m.ndjson", MEMBER_COLUMNS, rows, Format.NDJSON)
    )
    assert one.counts == other.counts
    assert one.counts["created"] > 5
    assert await snapshot(pool, as_csv) == await snapshot(pool, as_json)


async def test_rejected_rows_go_to_the_reject_file_and_the_rest_loads(
    database_url: str, pool: AsyncConnectionPool[Any], tmp_path: Path
) -> None:
    brand = await new_brand(pool)
    path = tmp_path / "members.csv"
    path.write_text(
        "channel,externalId,phone,city\n"
        "tmall,a1,13800000001,上海\n"
        "taobao,a2,,\n"  # line 3: unknown channel
        'tmall,"a3\nspans two lines",12345,\n'  # lines 4-5: a bad phone
        "jd,a4,13800000004\n"  # line 6: a field short
        "jd,a5,,杭州\n"
        '{"not": "csv"},,,\n',  # line 8: a valid CSV row with a bad channel
        encoding="utf-8",
    )
    report = await load(database_url, brand, "members", path)
    assert report.counts["created"] == 2
    assert report.rejects == tmp_path / "members.csv.rejects.csv"
    with report.rejects.open(encoding="utf-8", newline="") as file:
        rejected = list(csv.DictReader(file))
    assert [(int(r["line"]), r["code"]) for r in rejected] == [
        (3, "UNKNOWN_CHANNEL"),
        (4, "INVALID_PHONE"),
        (6, "INVALID_INPUT"),
        (8, "UNKNOWN_CHANNEL"),
    ]
    assert rejected[1]["record"] == 'tmall,"a3\nspans two lines",12345,'
    assert "expected 4 fields" in rejected[2]["reason"]
    assert "mainland China mobile number" in rejected[1]["reason"]


async def test_ndjson_lines_that_are_not_rows_are_rejected(
    database_url: str, pool: AsyncConnectionPool[Any], tmp_path: Path
) -> None:
    brand = await new_brand(pool)
    path = tmp_path / "orders.jsonl"
    lines = [
        '{"channel": "pos", "externalId": "a", "phone": 13800000001}',  # a number is its text
        "not json",
        "[1, 2]",
        '{"channel": "pos", "external_id": "b", "points": 1}',
        '{"channel": "pos", "external_id": {"id": "c"}}',
        "",
        '{"channel": "jd", "external_id": "d", "birthday": null}',
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = await load(database_url, brand, "members", path)
    assert report.counts == {"created": 2, "rejected": 4}
    with report.rejects.open(encoding="utf-8", newline="") as file:  # type: ignore[union-attr]
        rejected = [(int(row["line"]), row["reason"], row["record"]) for row in csv.DictReader(file)]
    assert [line for line, _, _ in rejected] == [2, 3, 4, 5]
    assert rejected[0][1].startswith("not a JSON object")
    assert "unknown field 'points'" in rejected[2][1]
    assert rejected[3][2] == lines[4]


async def test_a_header_the_kind_does_not_have_loads_nothing(
    database_url: str, pool: AsyncConnectionPool[Any], tmp_path: Path
) -> None:
    from store.imports.files import FileError

    brand = await new_brand(pool)
    path = tmp_path / "m.csv"
    path.write_text("channel,external_id,points\ntmall,a,1\n", encoding="utf-8")
    with pytest.raises(FileError, match="unknown column 'points'"):
        await load(database_url, brand, "members", path)
    path.write_text("channel,phone\ntmall,13800000000\n", encoding="utf-8")
    with pytest.raises(FileError, match="missing column 'external_id'"):
        await load(database_url, brand, "members", path)
    assert (await snapshot(pool, brand))["members"] == []


async def test_running_a_file_again_changes_nothing(
    database_url: str, pool: AsyncConnectionPool[Any], tmp_path: Path
) -> None:
    rand = random.Random(5)
    members = member_rows(rand, 60)
    brand = await rules_brand(pool)
    files = {
        "members": write(tmp_path / "m.csv", MEMBER_COLUMNS, members),
        "orders": write(tmp_path / "o.csv", ORDER_COLUMNS, order_rows(rand, members, 80)),
        "tags": write(tmp_path / "t.csv", TAG_COLUMNS, tag_rows(rand, members, 40)),
    }
    first = {kind: await load(database_url, brand, kind, path) for kind, path in files.items()}
    before = await dump(pool, brand)
    assert before["points_entries"]
    assert before["member_tags"]
    for kind, path in files.items():
        again = await load(database_url, brand, kind, path)  # the checkpoint says it is done
        assert again.finished_before
        assert again.counts == first[kind].counts
        reread = await load(database_url, brand, kind, path, restart=True)  # every row compared
        unchanged = {"members": "existing", "orders": "unchanged", "tags": "unchanged"}[kind]
        assert reread.counts[unchanged] == first[kind].loaded
        assert reread.counts["rejected"] == first[kind].counts["rejected"]
        assert rejects_of(reread) == rejects_of(first[kind])
    assert await dump(pool, brand) == before


async def test_the_same_row_twice_in_one_file_is_loaded_once(
    database_url: str, pool: AsyncConnectionPool[Any], tmp_path: Path
) -> None:
    brand = await new_brand(pool)
    member: Row = {"channel": "pos", "external_id": "c1", "phone": "13800000009"}
    await load(database_url, brand, "members", write(tmp_path / "m.csv", MEMBER_COLUMNS, [member, member]))
    order: Row = {
        "channel": "pos",
        "external_order_id": "o1",
        "buyer_id": "c1",
        "amount": "100",
        "paid_at": NOW.isoformat(),
    }
    report = await load(database_url, brand, "orders", write(tmp_path / "o.csv", ORDER_COLUMNS, [order, order]))
    assert report.counts == {"recorded": 1, "unchanged": 1}
    shot = await snapshot(pool, brand)
    assert [(dict(m)["id"], dict(m)["points_balance"]) for m in shot["members"]] == [((("pos", "c1"),), 100)]


async def test_identities_bind_by_phone_to_members_of_the_file_and_before_it(
    database_url: str, pool: AsyncConnectionPool[Any], gql: GraphQL, tmp_path: Path
) -> None:
    brand = await new_brand(pool)
    first: Row = {"channel": "pos", "external_id": "s1", "phone": "13800000077", "display_name": "原名"}
    assert await replay(gql, brand, "members", [first]) == {}
    rows: list[Row] = [
        {"channel": "tmall", "external_id": "t1", "phone": "+86 138 0000 0077", "display_name": "新名", "city": "上海"},
        {"channel": "jd", "external_id": "j1", "phone": "13800000088", "gender": "female"},
        {"channel": "wechat", "external_id": "w1", "phone": "138-0000-0088", "city": "杭州", "gender": "male"},
    ]
    path = write(tmp_path / "m.csv", MEMBER_COLUMNS, rows)
    report = await load(database_url, brand, "members", path, chunk_rows=1)
    assert report.counts == {"created": 1, "matched": 2}
    members = {dict(m)["id"]: dict(m) for m in (await snapshot(pool, brand))["members"]}
    old = members[(("pos", "s1"), ("tmall", "t1"))]
    assert (old["display_name"], old["city"]) == ("原名", "上海")  # filled, never overwritten
    new = members[(("jd", "j1"), ("wechat", "w1"))]
    assert (new["gender"], new["city"], new["phone"]) == ("female", "杭州", "13800000088")


async def test_an_interrupted_import_resumes_and_ends_as_an_uninterrupted_one(
    database_url: str, pool: AsyncConnectionPool[Any], tmp_path: Path
) -> None:
    rand = random.Random(9)
    members = member_rows(rand, 60)
    members.insert(2, {"channel": "taobao", "external_id": "early"})  # a reject before the interruption
    paths = {
        "members": write(tmp_path / "m.csv", MEMBER_COLUMNS, members),
        "orders": write(tmp_path / "o.csv", ORDER_COLUMNS, order_rows(rand, members, 90)),
    }
    whole, broken = await rules_brand(pool), await rules_brand(pool)

    def stop_after_two_chunks(stage: str, done: int, total: int | None) -> None:
        if stage == "merging" and done >= 20:
            raise KeyboardInterrupt

    for kind, path in paths.items():
        expected = await load(database_url, whole, kind, path, chunk_rows=10)
        with pytest.raises(KeyboardInterrupt):
            await load(database_url, broken, kind, path, chunk_rows=10, progress=stop_after_two_chunks)
        resumed = await load(database_url, broken, kind, path, chunk_rows=10)
        assert resumed.resumed_after > 0
        assert resumed.counts == expected.counts
        assert rejects_of(resumed) == rejects_of(expected)
    assert await snapshot(pool, broken) == await snapshot(pool, whole)


async def test_a_killed_import_resumes(database_url: str, pool: AsyncConnectionPool[Any], tmp_path: Path) -> None:
    """SIGKILL in the middle of the CLI's import, then the same command again."""
    brand, whole = await new_brand(pool), await new_brand(pool)
    rows: list[Row] = [{"channel": "pos", "external_id": f"k{n}", "phone": f"1370000{n // 2:04d}"} for n in range(3000)]
    rows[100]["phone"] = rows[2500]["phone"] = "not a phone"  # before and after the kill
    path = write(tmp_path / "m.csv", MEMBER_COLUMNS, rows)
    command = [sys.executable, "-m", "api", "import", "members", str(path), "--brand", brand, "--chunk", "50"]
    env = {**os.environ, "DATABASE_URL": database_url, "OMNIMEMBER_SECRET": TEST_SECRET}
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        while await _checkpoint_line(pool, brand) <= 500:  # noqa: ASYNC110 (another process)
            await asyncio.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()
    assert process.returncode == -signal.SIGKILL
    done = await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "resumed after line" in done.stdout
    expected = await load(database_url, whole, "members", path, rejects=tmp_path / "whole.csv")
    assert await snapshot(pool, brand) == await snapshot(pool, whole)
    assert rejects_of(expected) == {102: "INVALID_PHONE", 2502: "INVALID_PHONE"}
    with (tmp_path / "m.csv.rejects.csv").open(encoding="utf-8") as file:
        assert [row["line"] for row in csv.DictReader(file)] == ["102", "2502"]


async def _checkpoint_line(pool: AsyncConnectionPool[Any], brand: str) -> int:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT coalesce(max(line), 0) FROM import_checkpoints WHERE brand_id = (SELECT id FROM brands"
            " WHERE code = %s)",
            (brand,),
        )
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def test_without_triggers_or_with_them_the_rows_and_the_index_agree(
    database_url: str, pool: AsyncConnectionPool[Any], tmp_path: Path
) -> None:
    """The fast path (no row triggers: its own locks and audience queue) against the triggers'."""
    rand = random.Random(11)
    members = member_rows(rand, 60)
    paths = {
        "members": write(tmp_path / "m.csv", MEMBER_COLUMNS, members),
        "orders": write(tmp_path / "o.csv", ORDER_COLUMNS, order_rows(rand, members, 60)),
        "tags": write(tmp_path / "t.csv", TAG_COLUMNS, tag_rows(rand, members, 40)),
    }
    fast, slow = await rules_brand(pool), await rules_brand(pool)
    for brand in (fast, slow):  # an index built before the import, which then catches up by delta
        await catch_up(database_url, brand)
    for kind, path in paths.items():  # after each kind, the index counts what the tables hold
        await load(database_url, fast, kind, path)
        await load(database_url, slow, kind, path, skip_triggers=False)
        for brand in (fast, slow):
            applied = await catch_up(database_url, brand)  # (or the test app's applier, a moment before)
            assert applied is not None
            assert not applied.rebuilt  # a delta
        expected = [await _count(pool, fast, where) for where in _TRUTH.values()]
        for brand in (fast, slow):
            counted = [(await audience_count(database_url, brand, expression))[1] for expression in _TRUTH]
            assert counted == expected, (kind, brand)
    assert all(expected)
    assert_same(await snapshot(pool, fast), await snapshot(pool, slow))


async def test_a_large_import_asks_for_an_index_rebuild_instead_of_queueing_every_member(
    database_url: str, pool: AsyncConnectionPool[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("store.imports.runner.REBUILD_OVER", 15)
    brand = await rules_brand(pool)
    await catch_up(database_url, brand)
    rows: list[Row] = [{"channel": "jd", "external_id": f"r{n}", "city": "上海"} for n in range(40)]
    path = write(tmp_path / "m.csv", MEMBER_COLUMNS, rows)
    async with pool.connection() as conn, conn.transaction():
        # the brand's index lock: no applier (the test app's) drains the queue while it is read
        await lock_brand(conn, (await brand_by_code(conn, brand))["id"], wait=True)
        await load(database_url, brand, "members", path, chunk_rows=10)
        cursor = await conn.execute(
            "SELECT member_id = 0, count(*) FROM audience_changes c JOIN brands b ON b.id = c.brand_id"
            " WHERE b.code = %s GROUP BY 1 ORDER BY 1",
            (brand,),
        )
        queued = await cursor.fetchall()
    assert queued == [(False, 10), (True, 3)]  # the first chunk's members, then a rebuild per chunk
    applied = await catch_up(database_url, brand)
    assert applied is not None
    assert applied.rebuilt
    assert (await audience_count(database_url, brand, "channel:jd"))[1] == 40


# Expressions, and what they count as SQL over the system of record.
_TRUTH = {
    "NOT tier:silver": "tier <> 'silver'",
    "status:member": "status = 'member'",
    "tag:vip": "EXISTS (SELECT 1 FROM member_tags t JOIN tag_definitions d ON d.id = t.tag_id"
    " WHERE t.member_id = m.id AND d.code = 'vip')",
    "channel:jd": "EXISTS (SELECT 1 FROM member_identities i WHERE i.member_id = m.id AND i.channel = 'jd')",
}


async def _count(pool: AsyncConnectionPool[Any], brand: str, where: str) -> int:
    query = f"SELECT count(*) FROM members m JOIN brands b ON b.id = m.brand_id WHERE b.code = %s AND {where}"  # noqa: S608
    async with pool.connection() as conn:
        row = await (await conn.execute(query, (brand,))).fetchone()
    assert row is not None
    return int(row[0])


_MERGED_ID = """mutation($s: ID!, $m: ID!) { mergeMembers(survivorId: $s, mergedId: $m, reason: "same person") {
  ... on MembersMerged { merge { id } } } }"""
_UNMERGE = "mutation($id: ID!) { unmergeMembers(mergeId: $id) { __typename } }"


async def test_an_order_whose_buyer_moved_after_the_worker_looked_goes_to_its_member_now(
    database_url: str, pool: AsyncConnectionPool[Any], gql: GraphQL, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker found the buyer's member before an unmerge gave the identity back to another one:
    the order goes to the member that holds the identity when the chunk merges."""
    brand = await new_brand(pool)
    rows: list[Row] = [{"channel": "pos", "external_id": "keep"}, {"channel": "pos", "external_id": "back"}]
    assert await replay(gql, brand, "members", rows) == {}
    keep, back = [
        (await gql(_MEMBER, brand=brand, channel="pos", id=n))["memberByIdentity"]["id"] for n in ("keep", "back")
    ]
    merged = await gql(_MERGED_ID, s=keep, m=back)
    undone = await gql(_UNMERGE, id=merged["mergeMembers"]["merge"]["id"])  # "back" is its own member's again
    assert undone["unmergeMembers"]["__typename"] == "MembersUnmerged"
    as_seen_before = OrderImport._buyers

    def stale(self: OrderImport, checked: Any) -> list[int | None]:
        return [int(keep) for _ in as_seen_before(self, checked)]  # what it saw while merged

    monkeypatch.setattr(OrderImport, "_buyers", stale)
    order: Row = {
        "channel": "pos",
        "external_order_id": "o1",
        "buyer_id": "back",
        "amount": "10",
        "paid_at": NOW.isoformat(),
    }
    report = await load(database_url, brand, "orders", write(tmp_path / "o.csv", ORDER_COLUMNS, [order]))
    assert report.counts == {"recorded": 1}
    buyers = {dict(member)["id"]: dict(member)["order_count"] for member in (await snapshot(pool, brand))["members"]}
    assert buyers == {(("pos", "back"),): 1, (("pos", "keep"),): 0}


async def test_tags_refused_as_tag_members_refuses_them(
    database_url: str, pool: AsyncConnectionPool[Any], tmp_path: Path
) -> None:
    brand = await rules_brand(pool)
    await load(
        database_url,
        brand,
        "members",
        write(tmp_path / "m.csv", MEMBER_COLUMNS, [{"channel": "pos", "external_id": "a"}]),
    )
    rows: list[Row] = [
        {"channel": "pos", "external_id": "a", "tag": "vipp"},
        {"channel": "pos", "external_id": "a", "tag": "vip", "expires_at": "2020-01-01T00:00:00Z"},
        {"channel": "pos", "external_id": "a", "tag": "vip", "expires_at": "2031-01-01T00:00:00"},
        {"channel": "pos", "external_id": "b", "tag": "vip"},
        {"channel": "pos", "external_id": "a", "tag": "vip"},
    ]
    report = await load(database_url, brand, "tags", write(tmp_path / "t.csv", TAG_COLUMNS, rows))
    assert rejects_of(report) == {2: "UNKNOWN_TAG", 3: "INVALID_INPUT", 4: "INVALID_INPUT", 5: "UNKNOWN_MEMBER"}
    with report.rejects.open(encoding="utf-8") as file:  # type: ignore[union-attr]
        reasons = [row["reason"] for row in csv.DictReader(file)]
    assert "did you mean 'vip'?" in reasons[0]
    assert "time zone offset" in reasons[2]
    assert report.counts["assigned"] == 1


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(min_value=0, max_value=10**6), st.integers(min_value=1, max_value=40))
async def test_any_small_file_in_any_chunks_loads_as_row_by_row(
    database_url: str, pool: AsyncConnectionPool[Any], gql: GraphQL, tmp_path: Path, seed: int, chunk: int
) -> None:
    """Random members and orders, cut into random chunks, against the API row by row."""
    rand = random.Random(seed)
    members = member_rows(rand, rand.randrange(6, 40))
    orders = order_rows(rand, members, rand.randrange(8, 40))
    imported, replayed = await rules_brand(pool), await rules_brand(pool)
    for kind, columns, rows in (("members", MEMBER_COLUMNS, members), ("orders", ORDER_COLUMNS, orders)):
        path = write(tmp_path / f"{kind}-{seed}-{chunk}.csv", columns, rows)
        report = await load(database_url, imported, kind, path, chunk_rows=chunk)
        assert rejects_of(report) == await replay(gql, replayed, kind, rows)
    assert_same(await snapshot(pool, imported), await snapshot(pool, replayed))


def test_the_command_names_its_stages_and_exits_by_outcome(database_url: str, tmp_path: Path) -> None:
    runner = CliRunner()
    env = {"DATABASE_URL": database_url, "OMNIMEMBER_SECRET": TEST_SECRET, "COLUMNS": "200"}
    code = asyncio.run(_fresh_brand(database_url))
    good = write(
        tmp_path / "m.csv",
        MEMBER_COLUMNS,
        [{"channel": "pos", "external_id": "a"}, {"channel": "x", "external_id": "b"}],
    )
    result = runner.invoke(cli, ["import", "members", str(good), "--brand", code], env=env)
    assert result.exit_code == 0, result.output
    for stage in ("hashing m.csv", "reading m.csv", "merging members", "index:"):
        assert stage in result.output
    assert "1 created" in result.output
    assert "1 rejected" in result.output
    bad = write(tmp_path / "bad.csv", MEMBER_COLUMNS, [{"channel": "x", "external_id": "b"}])
    assert runner.invoke(cli, ["import", "members", str(bad), "--brand", code], env=env).exit_code == 1
    assert runner.invoke(cli, ["import", "members", str(good), "--brand", "no_such"], env=env).exit_code == 2
    assert runner.invoke(cli, ["import", "tags", str(good), "--brand", code], env=env).exit_code == 2  # no tag column


async def _fresh_brand(database_url: str) -> str:
    async with AsyncConnectionPool(database_url, min_size=1, max_size=1, kwargs={"autocommit": True}) as pool:
        return await new_brand(pool)


async def test_a_new_import_waits_a_moment_for_the_lock_of_an_interrupted_one(pool: AsyncConnectionPool[Any]) -> None:
    """An interrupted import's server process lets go of the file's lock a moment after its client
    left (found in the suite: the resume right after an interruption was refused as running)."""
    key = checkpoints.FileKey(-1, "members", os.urandom(32))
    async with pool.connection() as holder, pool.connection() as other:
        assert await checkpoints.lock(holder, key)

        async def leave_soon() -> None:
            await asyncio.sleep(0.3)
            await holder.execute("SELECT pg_advisory_unlock_all()")

        leaving = asyncio.create_task(leave_soon())
        assert await checkpoints.lock(other, key)  # waited for it
        await leaving
        assert not await checkpoints.lock(holder, key, wait=0.2)  # held by `other` all along: refused
        await other.execute("SELECT pg_advisory_unlock_all()")

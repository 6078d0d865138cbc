"""Erasure (PIPL's right to deletion): no erased value left in any table, snapshot or log; the member
found by nothing, out of audiences and snapshot exports; its ledger intact; idempotent; no oracle."""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import secrets
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from store.brands import brand_by_code
from tests.audience_seed import catch_up
from tests.conftest import GraphQL, new_brand
from tests.fragments import BIND, EARN, MERGE, RECORD_ORDER, REDEEM, REGISTER

ERASE = """
mutation Erase($brand: String!, $memberId: ID!, $reason: String!) {
  eraseMember(brand: $brand, memberId: $memberId, reason: $reason) {
    __typename
    ... on MemberErased {
      erasedAt erasedMemberIds
      member { id erasedAt displayName birthday birthMonth city gender maskedPhone pointsBalance orderCount
               identities { channel externalId } person { key } }
    }
    ... on AlreadyMerged { survivorId }
    ... on Error { code message field }
  }
}
"""
LOOKUPS = """
query ($brand: String!, $phone: String!, $channel: String!, $externalId: String!) {
  memberByPhone(brand: $brand, phone: $phone) { id }
  memberByIdentity(brand: $brand, channel: $channel, externalId: $externalId) { id }
}
"""
LEDGER = """
query ($id: ID!) {
  member(id: $id) {
    id erasedAt displayName birthday city maskedPhone pointsBalance growthValue orderCount totalSpend
    tier { code } identities { externalId } tags { code }
    pointsHistory(first: 100) { edges { node { kind amount balanceAfter } } }
    orders(first: 100) { edges { node { externalOrderId amount pointsEarned } } }
  }
}
"""
COUNT = "query ($b: String!, $e: String!) { audience(brand: $b, expression: $e) { count } }"
SAVE = """mutation ($b: String!, $e: String!) {
  saveAudience(brand: $b, name: "erasure", expression: $e) { ... on AudienceSaved { audience { id } snapshot { id } } }
}"""
TAG = """mutation ($b: String!, $ids: [ID!]) {
  defineTag(brand: $b, code: "erasure_vip", name: "会员", category: CUSTOM) { __typename }
  tagMembers(brand: $b, tag: "erasure_vip", memberIds: $ids) { __typename }
}"""
REASON = "PIPL deletion request #4711"


def _digits(n: int) -> str:
    return "".join(random.choice("0123456789") for _ in range(n))


@dataclass
class Person:
    """A member with every kind of personal data, distinctive (random) so that any hit is real."""

    brand: str
    phone: str = field(default_factory=lambda: "19" + _digits(9))
    other_phone: str = field(default_factory=lambda: "17" + _digits(9))  # of the member merged into it
    name: str = field(default_factory=lambda: f"擦除{secrets.token_hex(4)}")
    city: str = field(default_factory=lambda: f"城{secrets.token_hex(4)}")
    birthday: dt.date = field(
        default_factory=lambda: dt.date(1901, 1, 1) + dt.timedelta(days=random.randrange(38 * 365))
    )
    tmall: str = field(default_factory=lambda: f"tb_{secrets.token_hex(8)}")
    wechat: str = field(default_factory=lambda: f"oWx_{secrets.token_hex(8)}")
    jd: str = field(default_factory=lambda: f"jd_{secrets.token_hex(8)}")
    douyin: str = field(default_factory=lambda: f"dy_{secrets.token_hex(8)}")  # on the member merged into it
    id: str = ""
    merged_id: str = ""

    @property
    def masked(self) -> list[str]:
        return [f"{phone[:3]}****{phone[-4:]}" for phone in (self.phone, self.other_phone)]

    @property
    def channel_ids(self) -> dict[str, str]:
        return {"tmall": self.tmall, "wechat": self.wechat, "jd": self.jd, "douyin": self.douyin}

    def values(self) -> list[str]:
        return [
            self.phone,
            self.other_phone,
            *self.masked,
            self.name,
            self.city,
            self.birthday.isoformat(),
            *self.channel_ids.values(),
        ]


async def _create(gql: GraphQL, person: Person) -> None:
    first = await gql(
        REGISTER,
        brand=person.brand,
        channel="tmall",
        externalId=person.tmall,
        phone=person.phone,
        displayName=person.name,
        gender="FEMALE",
        birthday=person.birthday.isoformat(),
        city=person.city,
    )
    person.id = first["registerMember"]["member"]["id"]
    again = await gql(REGISTER, brand=person.brand, channel="wechat", externalId=person.wechat, phone=person.phone)
    assert again["registerMember"]["outcome"] == "PHONE_MATCH"
    bound = await gql(BIND, brand=person.brand, channel="jd", externalId=person.jd, memberId=person.id)
    assert bound["bindIdentity"]["__typename"] == "IdentityBound"
    other = await gql(
        REGISTER, brand=person.brand, channel="douyin", externalId=person.douyin, phone=person.other_phone
    )
    person.merged_id = other["registerMember"]["member"]["id"]
    await gql(EARN, brand=person.brand, memberId=person.merged_id, amount=40, key=f"gift-{person.merged_id}")
    merged = await gql(MERGE, survivorId=person.id, mergedId=person.merged_id, reason="same person")
    assert merged["mergeMembers"]["__typename"] == "MembersMerged"
    for n, amount in enumerate(("120.00", "35.50", "880.00")):
        order = await gql(
            RECORD_ORDER,
            brand=person.brand,
            channel="tmall",
            orderId=f"TB{person.id}{n}",
            amount=amount,
            paidAt=f"2026-11-0{n + 1}T10:00:00+08:00",
            buyerId=person.tmall,
        )
        assert order["recordOrder"]["__typename"] == "OrderRecorded"
    await gql(EARN, brand=person.brand, memberId=person.id, amount=500, key=f"welcome-{person.id}")
    spent = await gql(REDEEM, brand=person.brand, memberId=person.id, amount=70, key=f"mall-{person.id}")
    assert spent["redeemPoints"]["__typename"] == "PointsPosted"


async def _phone_forms(pool: AsyncConnectionPool[Any], member_id: str) -> list[str]:
    """The phone's hash and ciphertext as hex, as a bytea column reads in text (and JSONB holds it)."""
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT phone_hash, phone_encrypted FROM members WHERE id = %s", (int(member_id),))
        row = await cur.fetchone()
    assert row is not None
    assert row[0] is not None
    return [bytes(row[0]).hex(), bytes(row[1]).hex()]


async def scan(pool: AsyncConnectionPool[Any], needles: list[str]) -> list[tuple[str, str, str]]:
    """Every (table, needle, row text) where a needle occurs in any column of any row of any table.

    Each column as text (bytea as hex, as it also reads inside JSONB), joined per row; bit strings
    (the audience index's bitmaps: 0s and 1s, which hold no text) are left out, their keys are not."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            """
            SELECT c.table_schema, c.table_name, c.column_name, c.data_type
            FROM information_schema.columns c
            JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
            WHERE t.table_type = 'BASE TABLE'
              AND c.table_schema NOT IN ('pg_catalog', 'information_schema')
              AND c.table_schema NOT LIKE 'pg_temp%' AND c.table_schema NOT LIKE 'pg_toast%'
            ORDER BY c.table_schema, c.table_name, c.ordinal_position
            """
        )
        columns: dict[tuple[str, str], list[sql.Composable]] = {}
        for schema, table, column, data_type in await cur.fetchall():
            name = sql.Identifier(column)
            if data_type == "bit varying":
                continue
            text = (
                sql.SQL("encode({}, 'hex')").format(name) if data_type == "bytea" else sql.SQL("{}::text").format(name)
            )
            columns.setdefault((schema, table), []).append(text)
        hits: list[tuple[str, str, str]] = []
        for (schema, table), texts in columns.items():
            statement = sql.SQL(
                "SELECT n, x.row FROM (SELECT concat_ws(chr(31), {}) AS row FROM {}) x, unnest(%s::text[]) n"
                " WHERE strpos(x.row, n) > 0"
            ).format(sql.SQL(", ").join(texts), sql.Identifier(schema, table))
            for needle, row in await (await conn.execute(statement, (needles,))).fetchall():
                hits.append((table, needle, row[:300]))
    assert "members" in {table for schema, table in columns}
    return hits


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)  # every logger, every level
    return caplog


def _logged(caplog: pytest.LogCaptureFixture, needles: list[str]) -> list[str]:
    text = caplog.text + "\n".join(
        f"{record.getMessage()} {record.args!r} {record.exc_text or ''}" for record in caplog.records
    )
    return [needle for needle in needles if needle in text]


async def _unused_person(pool: AsyncConnectionPool[Any], brand: str) -> Person:
    """A person none of whose values (masked phone included: 7 digits) occurs anywhere yet."""
    while True:
        person = Person(brand)
        if not await scan(pool, person.values()):
            return person


async def test_no_erased_value_remains_in_any_table_snapshot_or_log(
    pool: AsyncConnectionPool[Any],
    client: httpx.AsyncClient,
    gql: GraphQL,
    brand: str,
    logs: pytest.LogCaptureFixture,
) -> None:
    person = await _unused_person(pool, brand)
    await _create(gql, person)
    bystander = (await gql(REGISTER, brand=brand, channel="pos", externalId=f"card_{secrets.token_hex(6)}"))[
        "registerMember"
    ]["member"]["id"]
    await gql(TAG, b=brand, ids=[person.id, bystander])
    async with pool.connection() as conn:
        brand_id = (await brand_by_code(conn, brand))["id"]
    await catch_up(pool, brand_id)
    saved = (await gql(SAVE, b=brand, e="tag:erasure_vip"))["saveAudience"]
    snapshot_export = f"/audiences/{saved['audience']['id']}/export"
    frozen = await client.get(snapshot_export, params={"fields": "id"})
    assert frozen.text.splitlines() == ["id", *sorted([person.id, bystander], key=int)]
    before = (await gql(LEDGER, id=person.id))["member"]
    counts = {e: (await gql(COUNT, b=brand, e=e))["audience"]["count"] for e in ("tag:erasure_vip", "channel:jd")}
    assert counts == {"tag:erasure_vip": 2, "channel:jd": 1}
    needles = person.values() + await _phone_forms(pool, person.id) + await _phone_forms(pool, person.merged_id)
    found = {needle for _, needle, _ in await scan(pool, needles)}
    # The scan sees them all where they were (the phone itself is never stored: only its forms).
    assert found == set(needles) - {person.phone, person.other_phone}

    erased = (await gql(ERASE, brand=brand, memberId=person.id, reason=REASON))["eraseMember"]

    assert erased["__typename"] == "MemberErased", erased
    await catch_up(pool, brand_id)
    assert await scan(pool, needles) == []
    assert _logged(logs, needles) == []
    assert erased["erasedMemberIds"] == sorted([person.id, person.merged_id], key=int)
    assert erased["member"] == {
        "id": person.id,
        "erasedAt": erased["erasedAt"],
        "displayName": None,
        "birthday": None,
        "birthMonth": None,
        "city": None,
        "gender": "UNKNOWN",
        "maskedPhone": None,
        "pointsBalance": before["pointsBalance"],
        "orderCount": 3,
        "identities": [],
        "person": None,
    }

    # Found by nothing; out of every audience; the snapshot keeps the id but its export leaves it out.
    for (channel, external_id), phone in zip(
        person.channel_ids.items(), [person.phone, person.other_phone] * 2, strict=True
    ):
        found_by = await gql(LOOKUPS, brand=brand, phone=phone, channel=channel, externalId=external_id)
        assert found_by == {"memberByPhone": None, "memberByIdentity": None}
    for expression, count in counts.items():
        assert (await gql(COUNT, b=brand, e=expression))["audience"]["count"] == count - 1
    exported = await client.get(
        snapshot_export,
        params={"format": "ndjson", "fields": "id,maskedPhone,city,channel:tmall,channel:wechat"},
    )
    assert exported.status_code == 200, exported.text
    rows = [json.loads(line) for line in exported.text.splitlines()]
    assert [row["id"] for row in rows] == [int(bystander)]
    assert exported.headers["x-member-count"] == "1"
    ids_only = await client.get(snapshot_export, params={"fields": "id"})
    assert ids_only.text.splitlines() == ["id", bystander]
    assert ids_only.headers["x-member-count"] == "1"

    # The ledger is intact under the pseudonymous id.
    after = (await gql(LEDGER, id=person.id))["member"]
    assert after["erasedAt"] == erased["erasedAt"]
    personal = {"erasedAt", "displayName", "birthday", "city", "maskedPhone", "identities", "tags"}
    assert {k: v for k, v in after.items() if k not in personal} == {
        k: v for k, v in before.items() if k not in personal
    }
    assert len(after["orders"]["edges"]) == 3
    assert (after["displayName"], after["birthday"], after["city"], after["identities"], after["tags"]) == (
        None,
        None,
        None,
        [],
        [],
    )

    # Registering the same phone and channel id again makes a new member, not the erased one.
    again = (await gql(REGISTER, brand=brand, channel="tmall", externalId=person.tmall, phone=person.phone))[
        "registerMember"
    ]
    assert again["outcome"] == "CREATED"
    assert again["member"]["id"] not in (person.id, person.merged_id)


async def test_erasing_again_answers_the_same_and_writes_nothing(
    pool: AsyncConnectionPool[Any], gql: GraphQL, brand: str
) -> None:
    person = Person(brand)
    await _create(gql, person)
    first = await gql(ERASE, brand=brand, memberId=person.id, reason=REASON)
    versions = """SELECT array_agg(xmin::text ORDER BY id) FROM members WHERE id = ANY(%(ids)s)
                  UNION ALL SELECT array_agg(xmin::text ORDER BY id) FROM member_merges WHERE survivor_id = ANY(%(ids)s)
                  UNION ALL SELECT array_agg(member_id::text) FROM audience_changes WHERE member_id = ANY(%(ids)s)"""
    ids = [int(person.id), int(person.merged_id)]
    async with pool.connection() as conn:
        await catch_up(pool, (await brand_by_code(conn, brand))["id"])
        written = await (await conn.execute(versions, {"ids": ids})).fetchall()
    second = await gql(ERASE, brand=brand, memberId=person.id, reason="asked twice")
    assert second == first
    async with pool.connection() as conn:
        assert await (await conn.execute(versions, {"ids": ids})).fetchall() == written


async def test_another_brands_member_is_unknown_as_a_missing_id(
    pool: AsyncConnectionPool[Any], gql: GraphQL, brand: str
) -> None:
    other = await new_brand(pool)
    theirs = (await gql(REGISTER, brand=other, channel="tmall", externalId=f"tb_{secrets.token_hex(6)}"))[
        "registerMember"
    ]["member"]["id"]
    missing = str(int(theirs) + 10_000_000)

    def without_id(answer: dict[str, Any], member_id: str) -> str:
        return json.dumps(answer).replace(member_id, "<id>")

    cross = (await gql(ERASE, brand=brand, memberId=theirs, reason=REASON))["eraseMember"]
    absent = (await gql(ERASE, brand=brand, memberId=missing, reason=REASON))["eraseMember"]
    assert cross == {
        "__typename": "UnknownMember",
        "code": "UNKNOWN_MEMBER",
        "message": f"no member {theirs} in this brand",
        "field": "memberId",
    }
    assert without_id(cross, theirs) == without_id(absent, missing)
    not_an_id = (await gql(ERASE, brand=brand, memberId="x1", reason=REASON))["eraseMember"]
    assert without_id(not_an_id, "x1") == without_id(absent, missing)
    # Untouched: still findable in its own brand.
    assert (await gql(LEDGER, id=theirs))["member"]["erasedAt"] is None


async def test_merged_members_and_bad_reasons_are_refused(gql: GraphQL, brand: str) -> None:
    person = Person(brand)
    await _create(gql, person)
    merged = (await gql(ERASE, brand=brand, memberId=person.merged_id, reason=REASON))["eraseMember"]
    assert merged["__typename"] == "AlreadyMerged"
    assert (merged["code"], merged["field"], merged["survivorId"]) == ("ALREADY_MERGED", "memberId", person.id)
    blank = (await gql(ERASE, brand=brand, memberId=person.id, reason="  "))["eraseMember"]
    assert (blank["__typename"], blank["field"]) == ("InvalidInput", "reason")
    unknown = (await gql(ERASE, brand="no_such_brand", memberId=person.id, reason=REASON))["eraseMember"]
    assert unknown["__typename"] == "UnknownBrand"
    assert (await gql(LEDGER, id=person.id))["member"]["erasedAt"] is None


async def test_an_erased_member_stays_apart(gql: GraphQL, brand: str) -> None:
    """No merge, unmerge or explicit binding names an erased member again."""
    person = Person(brand)
    await _create(gql, person)
    merge_id = (await gql(LEDGER.replace("erasedAt", "erasedAt merges { id }", 1), id=person.id))["member"]["merges"][
        0
    ]["id"]
    await gql(ERASE, brand=brand, memberId=person.id, reason=REASON)
    newcomer = (await gql(REGISTER, brand=brand, channel="mall", externalId=f"m_{secrets.token_hex(6)}"))[
        "registerMember"
    ]["member"]["id"]
    for survivor, merged in ((person.id, newcomer), (newcomer, person.id)):
        refused = (await gql(MERGE, survivorId=survivor, mergedId=merged, reason="same person"))["mergeMembers"]
        assert (refused["__typename"], refused["message"]) == ("InvalidInput", f"member {person.id} was erased")
    bound = (await gql(BIND, brand=brand, channel="jd", externalId=person.jd, memberId=person.id))["bindIdentity"]
    assert (bound["__typename"], bound["field"]) == ("InvalidInput", "memberId")
    undo = f'mutation {{ unmergeMembers(mergeId: "{merge_id}") {{ __typename ... on Error {{ code }} }} }}'
    assert (await gql(undo))["unmergeMembers"] == {"__typename": "MergeNotReversible", "code": "MERGE_NOT_REVERSIBLE"}

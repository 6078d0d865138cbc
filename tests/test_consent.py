"""Marketing consent and minors (PIPL): setting and reading consent, `consent:<channel>` terms,
minors by the brand's day, reach and touch-channel exports; on real PostgreSQL."""

from __future__ import annotations

import csv
import io
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg_pool import AsyncConnectionPool

from store.audiences import reach as audience_reach
from store.audiences.catalogs import load_catalog
from store.brands import brand_by_code
from store.tables import TOUCH_CHANNELS
from tagquery import bind, parse
from tests.audience_seed import catch_up, reference_ids
from tests.conftest import GraphQL, new_brand
from tests.fragments import ERROR, MERGE, REGISTER

SET_CONSENT = f"""
mutation Set($brand: String!, $memberId: ID!, $channel: TouchChannel!, $granted: Boolean!, $source: String!,
             $givenAt: DateTime) {{
  setConsent(brand: $brand, memberId: $memberId, channel: $channel, granted: $granted, source: $source,
             givenAt: $givenAt) {{
    __typename
    ... on ConsentRecorded {{ superseded consent {{ channel granted givenAt source recordedAt }} member {{ id }} }}
    {ERROR}
  }}
}}
"""
SET_GUARDIAN = f"""
mutation Guardian($brand: String!, $memberId: ID!, $granted: Boolean!, $source: String!) {{
  setGuardianConsent(brand: $brand, memberId: $memberId, granted: $granted, source: $source) {{
    __typename
    ... on ConsentRecorded {{ consent {{ channel granted }} }}
    {ERROR}
  }}
}}
"""
CONSENTS = "query($id: ID!) { member(id: $id) { consents { channel granted givenAt source } } }"
REACH = """
query($brand: String!, $expression: String!, $touch: TouchChannel!) {
  audience(brand: $brand, expression: $expression) {
    count reach(touch: $touch) { touch count excludedNoConsent excludedMinor }
  }
}
"""
COUNT = "query($brand: String!, $expression: String!) { audience(brand: $brand, expression: $expression) { count } }"
# Far from UTC, so the brand's day differs from the UTC day for 14 hours of every 24.
ZONE = "Pacific/Kiritimati"


async def _register(gql: GraphQL, brand: str, n: int, birthday: date | None = None) -> str:
    found = await gql(
        REGISTER,
        brand=brand,
        channel="tmall",
        externalId=f"tb_{n}",
        birthday=None if birthday is None else birthday.isoformat(),
    )
    assert found["registerMember"]["__typename"] == "MemberRegistered", found
    member_id: str = found["registerMember"]["member"]["id"]
    return member_id


async def _consent(
    gql: GraphQL, brand: str, member_id: str, channel: str, granted: bool, **more: Any
) -> dict[str, Any]:
    found = await gql(
        SET_CONSENT, brand=brand, memberId=member_id, channel=channel, granted=granted, source="test", **more
    )
    result: dict[str, Any] = found["setConsent"]
    return result


async def _brand_id(pool: AsyncConnectionPool[Any], code: str) -> int:
    async with pool.connection() as conn:
        return int((await brand_by_code(conn, code))["id"])


async def _in_zone(pool: AsyncConnectionPool[Any], brand: str, zone: str) -> date:
    """Put the brand in `zone` (before any audience read caches its catalog); its day now."""
    async with pool.connection() as conn:
        await conn.execute(
            "UPDATE brand_rules SET timezone = %s WHERE brand_id = %s", (zone, await _brand_id(pool, brand))
        )
    return datetime.now(ZoneInfo(zone)).date()


def _years_before(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 02-29
        pytest.skip("the brand's day is 02-29: the 14th birthday falls on another day in a common year")


async def test_set_withdraw_and_read_consent(gql: GraphQL, brand: str) -> None:
    member = await _register(gql, brand, 1)
    granted = await _consent(gql, brand, member, "SMS", True, givenAt="2026-01-02T10:00:00+08:00")
    assert granted["__typename"] == "ConsentRecorded"
    assert granted["superseded"] is False
    assert granted["member"] == {"id": member}
    assert granted["consent"]["channel"] == "SMS"
    assert granted["consent"]["granted"] is True
    assert datetime.fromisoformat(granted["consent"]["givenAt"]) == datetime.fromisoformat("2026-01-02T02:00:00Z")
    await _consent(gql, brand, member, "WECOM", True)  # givenAt: now
    withdrawn = await gql(
        SET_CONSENT,
        brand=brand,
        memberId=member,
        channel="SMS",
        granted=False,
        source="unsubscribe link",
        givenAt="2026-02-01T09:00:00Z",
    )
    assert withdrawn["setConsent"]["consent"]["granted"] is False
    assert withdrawn["setConsent"]["consent"]["source"] == "unsubscribe link"
    # An older decision arriving late changes nothing.
    late = await _consent(gql, brand, member, "SMS", True, givenAt="2026-01-15T00:00:00Z")
    assert late["superseded"] is True
    assert late["consent"]["granted"] is False
    consents = (await gql(CONSENTS, id=member))["member"]["consents"]
    assert [(c["channel"], c["granted"], c["source"]) for c in consents] == [
        ("SMS", False, "unsubscribe link"),
        ("WECOM", True, "test"),
    ]
    assert datetime.fromisoformat(consents[0]["givenAt"]) == datetime.fromisoformat("2026-02-01T09:00:00Z")
    assert datetime.fromisoformat(consents[1]["givenAt"]) > datetime.now().astimezone() - timedelta(minutes=1)


@pytest.mark.parametrize(
    ("variables", "field"),
    [
        ({"source": " "}, "source"),
        ({"source": "x" * 201}, "source"),
        ({"givenAt": "2099-01-01T00:00:00Z"}, "givenAt"),
        ({"givenAt": "2026-01-01T00:00:00"}, "givenAt"),
    ],
)
async def test_bad_arguments_are_invalid_input(gql: GraphQL, brand: str, variables: dict[str, Any], field: str) -> None:
    member = await _register(gql, brand, 1)
    found = await gql(
        SET_CONSENT,
        **{"brand": brand, "memberId": member, "channel": "SMS", "granted": True, "source": "t", **variables},
    )
    assert found["setConsent"]["__typename"] == "InvalidInput"
    assert found["setConsent"]["field"] == field
    assert (await gql(CONSENTS, id=member))["member"]["consents"] == []


async def test_another_brands_member_answers_like_a_missing_one(
    gql: GraphQL, pool: AsyncConnectionPool[Any], brand: str
) -> None:
    other = await new_brand(pool)
    theirs = await _register(gql, other, 1)
    ours = await _register(gql, brand, 2)
    merged = await _register(gql, brand, 3)
    assert (await gql(MERGE, survivorId=ours, mergedId=merged, reason="same person"))["mergeMembers"][
        "__typename"
    ] == "MembersMerged"
    missing = str(int(theirs) + 10_000_000)
    answers = {
        member_id: await _consent(gql, brand, member_id, "SMS", True) for member_id in (theirs, missing, merged, "x1")
    }
    for member_id, answer in answers.items():
        assert answer == {
            "__typename": "UnknownMember",
            "code": "UNKNOWN_MEMBER",
            "message": f"no member {member_id} in this brand",
            "field": "memberId",
        }
    assert (await gql(CONSENTS, id=theirs))["member"]["consents"] == []
    unknown_brand = await gql(
        SET_CONSENT, brand="no_such_brand", memberId=ours, channel="SMS", granted=True, source="t"
    )
    assert unknown_brand["setConsent"]["__typename"] == "UnknownBrand"


async def test_consent_terms_count_what_the_rows_say(gql: GraphQL, pool: AsyncConnectionPool[Any], brand: str) -> None:
    granted, withdrawn, other_channel, none, survivor, merged = [await _register(gql, brand, n) for n in range(6)]
    await _consent(gql, brand, granted, "SMS", True)
    await _consent(gql, brand, withdrawn, "SMS", True, givenAt="2026-01-01T00:00:00Z")
    await _consent(gql, brand, withdrawn, "SMS", False)
    await _consent(gql, brand, other_channel, "WECOM", True)
    await _consent(gql, brand, merged, "SMS", True)
    await gql(MERGE, survivorId=survivor, mergedId=merged, reason="same person")
    brand_id = await _brand_id(pool, brand)
    await catch_up(pool, brand_id)
    expected = {
        "consent:sms": [granted],
        "NOT consent:sms": [withdrawn, other_channel, none, survivor],
        "consent:wecom": [other_channel],
        "consent IN (sms, wecom)": [granted, other_channel],
        "consent:ai_call OR consent:guardian": [],
    }
    for expression, members in expected.items():
        ids = sorted(int(m) for m in members)
        assert await reference_ids(pool, brand_id, expression) == ids, expression
        assert (await gql(COUNT, brand=brand, expression=expression))["audience"]["count"] == len(ids), expression
    # A withdrawal reaches the index too.
    await _consent(gql, brand, granted, "SMS", False)
    await catch_up(pool, brand_id)
    assert (await gql(COUNT, brand=brand, expression="consent:sms"))["audience"]["count"] == 0


async def test_an_unknown_consent_channel_is_an_unknown_value(gql: GraphQL, brand: str) -> None:
    body = await gql.raw(COUNT, brand=brand, expression="tier:silver AND consent:smss")
    extensions = body["errors"][0]["extensions"]
    assert extensions["code"] == "INVALID_EXPRESSION"
    assert extensions["reason"] == "UNKNOWN_VALUE"
    assert (extensions["line"], extensions["column"], extensions["suggestion"]) == (1, 25, "sms")
    assert body["errors"][0]["message"] == "unknown consent 'smss' at 1:25, did you mean 'sms'?"


async def test_minors_by_the_brands_day_and_guardian_consent(
    gql: GraphQL, pool: AsyncConnectionPool[Any], brand: str
) -> None:
    today = await _in_zone(pool, brand, ZONE)
    fourteen_today = await _register(gql, brand, 1, _years_before(today, 14))
    fourteen_tomorrow = await _register(gql, brand, 2, _years_before(today + timedelta(days=1), 14))
    no_birthday = await _register(gql, brand, 3)
    no_consent = await _register(gql, brand, 4, _years_before(today, 10))
    for member in (fourteen_today, fourteen_tomorrow, no_birthday):
        await _consent(gql, brand, member, "SMS", True)
    await catch_up(pool, await _brand_id(pool, brand))
    reach = (await gql(REACH, brand=brand, expression="tier:silver", touch="SMS"))["audience"]
    assert reach["count"] == 4
    assert reach["reach"] == {"touch": "SMS", "count": 2, "excludedNoConsent": 1, "excludedMinor": 1}
    minors = await reference_ids(pool, await _brand_id(pool, brand), "age < 14")
    assert minors == sorted([int(fourteen_tomorrow), int(no_consent)])
    guardian = await gql(SET_GUARDIAN, brand=brand, memberId=fourteen_tomorrow, granted=True, source="paper form")
    assert guardian["setGuardianConsent"]["consent"] == {"channel": "GUARDIAN", "granted": True}
    await catch_up(pool, await _brand_id(pool, brand))
    reach = (await gql(REACH, brand=brand, expression="tier:silver", touch="SMS"))["audience"]["reach"]
    assert reach == {"touch": "SMS", "count": 3, "excludedNoConsent": 1, "excludedMinor": 0}
    reach = (await gql(REACH, brand=brand, expression="tier:silver", touch="EMAIL"))["audience"]["reach"]
    assert reach == {"touch": "EMAIL", "count": 0, "excludedNoConsent": 4, "excludedMinor": 0}


async def test_a_touch_export_leaves_out_who_reach_leaves_out(
    gql: GraphQL, client: httpx.AsyncClient, pool: AsyncConnectionPool[Any], brand: str
) -> None:
    today = await _in_zone(pool, brand, ZONE)
    adult = _years_before(today, 30)
    child = _years_before(today, 10)
    plan: list[tuple[date | None, bool, bool]] = [  # birthday, sms consent, guardian consent
        (adult, True, False),
        (None, True, False),
        (adult, False, False),
        (child, True, False),
        (child, True, True),
        (child, False, True),
        (adult, True, False),
    ]
    members = []
    for n, (birthday, sms, guardian) in enumerate(plan):
        member = await _register(gql, brand, n, birthday)
        members.append(int(member))
        await _consent(gql, brand, member, "SMS", sms)
        if guardian:
            await gql(SET_GUARDIAN, brand=brand, memberId=member, granted=True, source="form")
    await catch_up(pool, await _brand_id(pool, brand))
    expected = [members[i] for i in (0, 1, 4, 6)]
    params = {"brand": brand, "expression": "tier:silver", "touch": "sms"}
    response = await client.get("/audiences/export", params=params)
    assert response.status_code == 200, response.text
    rows = list(csv.reader(io.StringIO(response.text)))
    assert [int(row[0]) for row in rows[1:]] == expected
    headers = {name: response.headers[name] for name in ("x-member-count", "x-excluded-no-consent", "x-excluded-minor")}
    assert headers == {"x-member-count": "4", "x-excluded-no-consent": "2", "x-excluded-minor": "1"}
    reach = (await gql(REACH, brand=brand, expression="tier:silver", touch="SMS"))["audience"]["reach"]
    assert (reach["count"], reach["excludedNoConsent"], reach["excludedMinor"]) == (4, 2, 1)
    # Without touch: everyone, and no exclusion headers.
    everyone = await client.get("/audiences/export", params={"brand": brand, "expression": "tier:silver"})
    assert everyone.headers["x-member-count"] == str(len(plan))
    assert "x-excluded-minor" not in everyone.headers
    # A saved audience's snapshot, filtered by consent as it stands now.
    saved = await gql(
        'mutation($b: String!) { saveAudience(brand: $b, name: "all", expression: "tier:silver") {'
        " ... on AudienceSaved { audience { id } } } }",
        b=brand,
    )
    audience_id = saved["saveAudience"]["audience"]["id"]
    await _consent(gql, brand, str(members[0]), "SMS", False)
    await catch_up(pool, await _brand_id(pool, brand))
    snapshot = await client.get(f"/audiences/{audience_id}/export", params={"touch": "sms", "format": "ndjson"})
    assert snapshot.status_code == 200, snapshot.text
    assert [int(line.split('"id": ')[1].split(",")[0].rstrip("}")) for line in snapshot.text.splitlines()] == [
        members[i] for i in (1, 4, 6)
    ]
    assert snapshot.headers["x-excluded-no-consent"] == "3"
    assert snapshot.headers["x-excluded-minor"] == "1"
    bad = await client.get("/audiences/export", params={**params, "touch": "fax"})
    assert bad.status_code == 400
    assert bad.json()["error"]["parameter"] == "touch"


# --- property: reach from the index equals a row-by-row computation --------------------------------

_MEMBERS = 10
_consents = st.sampled_from([None, True, False])  # no row, granted, withdrawn
_assignments = st.lists(
    st.fixed_dictionaries(
        {
            "birthday": st.none() | st.integers(-3, 3).map(lambda d: ("minor-edge", d)) | st.integers(1, 60),
            "consents": st.fixed_dictionaries(dict.fromkeys((*TOUCH_CHANNELS, "guardian"), _consents)),
        }
    ),
    min_size=_MEMBERS,
    max_size=_MEMBERS,
)


@pytest.fixture(scope="module")
async def property_brand(pool: AsyncConnectionPool[Any]) -> tuple[int, list[int]]:
    code = await new_brand(pool)
    brand_id = await _brand_id(pool, code)
    async with pool.connection() as conn:
        await conn.execute("UPDATE brand_rules SET timezone = %s WHERE brand_id = %s", (ZONE, brand_id))
        cursor = await conn.execute(
            "INSERT INTO members (brand_id, tier) SELECT %s, 'silver' FROM generate_series(1, %s) RETURNING id",
            (brand_id, _MEMBERS),
        )
        ids = sorted(row[0] for row in await cursor.fetchall())
    await catch_up(pool, brand_id)
    return brand_id, ids


def _birthday(today: date, spec: Any) -> date | None:
    if spec is None:
        return None
    if isinstance(spec, tuple):  # days around the 14th birthday
        return _years_before(today, 14) + timedelta(days=spec[1])
    return _years_before(today, spec) - timedelta(days=spec * 7 % 365)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(assignments=_assignments)
async def test_reach_equals_a_row_by_row_computation(
    pool: AsyncConnectionPool[Any], property_brand: tuple[int, list[int]], assignments: list[dict[str, Any]]
) -> None:
    brand_id, ids = property_brand
    today = datetime.now(ZoneInfo(ZONE)).date()
    birthdays = [_birthday(today, a["birthday"]) for a in assignments]
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("DELETE FROM member_consents WHERE brand_id = %s", (brand_id,))
        for member_id, birthday, assignment in zip(ids, birthdays, assignments, strict=True):
            await conn.execute("UPDATE members SET birthday = %s WHERE id = %s", (birthday, member_id))
            for channel, granted in assignment["consents"].items():
                if granted is not None:
                    await conn.execute(
                        "INSERT INTO member_consents (brand_id, member_id, channel, granted, given_at, source)"
                        " VALUES (%s, %s, %s, %s, now(), 'test')",
                        (brand_id, member_id, channel, granted),
                    )
    await catch_up(pool, brand_id)
    async with pool.connection() as conn:
        brand = await load_catalog(conn, brand_id)
        day = brand.today()
        audience = bind(parse("tier:silver"), brand.catalog)
        for touch in TOUCH_CHANNELS:
            found = await audience_reach.reach(conn, brand, audience, day, touch)
            expected = {"count": 0, "no_consent": 0, "minor": 0}
            for birthday, assignment in zip(birthdays, assignments, strict=True):
                age = (
                    None
                    if birthday is None
                    else day.year - birthday.year - ((day.month, day.day) < (birthday.month, birthday.day))
                )
                if assignment["consents"][touch] is not True:
                    expected["no_consent"] += 1
                elif age is not None and age < 14 and assignment["consents"]["guardian"] is not True:
                    expected["minor"] += 1
                else:
                    expected["count"] += 1
            assert (found.count, found.excluded_no_consent, found.excluded_minor) == (
                expected["count"],
                expected["no_consent"],
                expected["minor"],
            ), touch

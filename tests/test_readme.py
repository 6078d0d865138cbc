"""The README tour, run as written against a fresh database: it must return what it says."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from store import migrate
from tests.conftest import ROOT, in_process, throwaway_database

README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```graphql\n(.*?)```", README, re.S)
# The documents quoted inline in the tour's prose, in order: they must run as written too.
INLINE = [
    span
    for span in (" ".join(s.split()) for s in re.findall(r"`([^`]+)`", re.sub(r"```.*?```", "", README, flags=re.S)))
    if span.startswith(("mutation {", "{ "))
]


def _inline(*words: str) -> str:
    """The one inline document holding every word."""
    (found,) = [span for span in INLINE if all(word in span for word in words)]
    return found


@pytest.fixture
def fresh_database(database_url: str) -> Iterator[str]:
    with throwaway_database(database_url, "readme") as url:
        migrate.upgrade(url)
        yield url


@pytest.fixture
async def tour(fresh_database: str, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with in_process(fresh_database, tmp_path) as http:
        yield http


async def _run(http: httpx.AsyncClient, query: str) -> dict[str, Any]:
    body: dict[str, Any] = (await http.post("/graphql", json={"query": query})).json()
    assert "errors" not in body, (query, body)
    data: dict[str, Any] = body["data"]
    return data


async def test_the_tour_returns_what_the_readme_says(tour: httpx.AsyncClient) -> None:
    assert len(BLOCKS) == 8
    brand, member, phone_match, lookups, bad_phone, merge, order, redeem = BLOCKS

    created = (await _run(tour, brand))["createBrand"]
    assert created["__typename"] == "BrandCreated"
    assert [t["rank"] for t in created["brand"]["tiers"]] == [0, 1, 2, 3]

    registered = (await _run(tour, member))["registerMember"]
    assert (registered["outcome"], registered["member"]["status"]) == ("CREATED", "PROSPECT")
    assert (registered["member"]["maskedPhone"], registered["member"]["tier"]) == ("138****5678", {"code": "silver"})

    matched = (await _run(tour, phone_match))["registerMember"]
    assert (matched["outcome"], matched["member"]["id"]) == ("PHONE_MATCH", registered["member"]["id"])
    assert matched["member"]["identities"] == [
        {"channel": "TMALL", "externalId": "tb_2088001"},
        {"channel": "WECHAT", "externalId": "oWx_9f3kQ"},
    ]

    found = await _run(tour, lookups)
    assert found["memberByIdentity"]["id"] == found["memberByPhone"]["id"] == "1"
    assert (found["members"]["totalCount"], found["members"]["pageInfo"]["hasNextPage"]) == (1, False)

    failed = (await _run(tour, bad_phone))["registerMember"]
    assert (failed["__typename"], failed["code"], failed["field"]) == ("InvalidPhone", "INVALID_PHONE", "phone")

    second = (await _run(tour, _inline("registerMember", "jd_77")))["registerMember"]
    assert second["member"]["id"] == "2"
    merged = (await _run(tour, merge))["mergeMembers"]["merge"]
    assert merged["movedIdentities"] == [{"channel": "JD", "externalId": "jd_77"}]
    jd = '{ memberByIdentity(brand: "teashop", channel: "jd", externalId: "jd_77") { id } }'
    assert (await _run(tour, jd))["memberByIdentity"]["id"] == "1"
    assert (await _run(tour, 'mutation { unmergeMembers(mergeId: "1") { __typename } }'))["unmergeMembers"] == {
        "__typename": "MembersUnmerged"
    }
    assert (await _run(tour, jd))["memberByIdentity"]["id"] == "2"

    recorded = (await _run(tour, order))["recordOrder"]
    assert (recorded["order"]["pointsEarned"], recorded["order"]["growthEarned"]) == (358, 3580)
    assert recorded["member"] == {"status": "MEMBER", "pointsBalance": 358, "tier": {"code": "gold"}}

    spent = (await _run(tour, redeem))["redeemPoints"]
    assert (spent["replayed"], spent["member"]["pointsBalance"]) == (False, 258)
    again = (await _run(tour, redeem))["redeemPoints"]
    assert (again["replayed"], again["member"]["pointsBalance"]) == (True, 258)

    read = (await _run(tour, _inline("pointsHistory", "tierHistory")))["member"]
    assert [entry["kind"] for entry in read["pointsHistory"]["nodes"]] == ["REDEEM", "EARN"]
    assert read["tierHistory"][-1]["toTier"] == "gold"

    assert (await _run(tour, _inline("defineTag", "tea_lover")))["defineTag"] == {"__typename": "TagDefined"}
    tagged = (await _run(tour, _inline("tagMembers", "tea_lover")))["tagMembers"]
    assert (tagged["tagged"], tagged["added"]) == (1, 1)
    shown = await _run(tour, _inline("tags {", "memberCount"))
    assert [t["code"] for t in shown["member"]["tags"]] == ["tea_lover"]

    audience = _inline("audience(", "whyMember")
    for _ in range(50):  # "the index catches up with writes within about a second"
        counted = (await _run(tour, audience))["audience"]
        if counted["count"] == 1:
            break
        await asyncio.sleep(0.1)
    assert counted["count"] == 1
    assert [(s["clause"], s["count"], s["removed"]) for s in counted["explain"]["steps"]] == [
        (None, 2, 0),
        ("tag:tea_lover", 1, 1),
        ("NOT tier:silver", 1, 0),
    ]
    assert counted["whyMember"]["matches"] is True
    saved = (await _run(tour, _inline("saveAudience", "tea lovers")))["saveAudience"]
    assert saved["snapshot"]["count"] == 1
    assert len(INLINE) == 7, INLINE  # every inline document of the tour ran above

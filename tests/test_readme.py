"""The README, run as written (issue 16, item 10): the serve command, the tour through its own `gql`
helper, the CLI examples and the curl exports, against a real `omnimember serve --dev` on a fresh
database; each answer checked against what the README says it is. A snippet the test neither runs
nor excuses fails it. How snippets are found and what a run may change: tests/readme.py.
"""

from __future__ import annotations

import csv
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import throwaway_database
from tests.readme import BLOCKS, COMMANDS, DOCUMENTS, SNIPPETS, Reader, block, inline

INSTALL_AND_SERVE = "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/omnimember serve --dev"
# Not run here, each for its reason. The install commands before `serve --dev` are CI's first steps
# (.ci/run installs the package into a new venv); the serve command after them runs here.
EXCUSED = {
    "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/pytest": "CI runs it; it runs this test",
    "bash .ci/run": "CI itself",
    "pip install -e '.[otel]'": "an install of an extra",
}
DEMO_TAGS = {"buys_oolong", "lc_at_risk", "rfm_champion", "coupon_hunter"}


class Tour:
    """GraphQL documents sent as the README sends them: saved as q.graphql, posted by its `gql` block."""

    def __init__(self, reader: Reader) -> None:
        self.reader = reader
        self.block = block("bash", "gql() {")
        assert self.block.endswith("gql < q.graphql\n")
        # What the block defines, for later snippets that use `gql` (as in the reader's terminal).
        self.defined = self.block.removesuffix("gql < q.graphql\n")
        reader.ran.add(self.block)

    def __call__(self, document: str) -> dict[str, Any]:
        return self.reader.gql(self.block, document)


@pytest.fixture
def reader(database_url: str, tmp_path: Path) -> Iterator[Reader]:
    with throwaway_database(database_url, "readme") as url:
        reader = Reader(tmp_path, url)
        try:
            yield reader
        finally:
            reader.stop()


def test_every_snippet_is_found() -> None:
    """The finder sees what a reader sees: the blocks, the CLI examples, the inline documents."""
    languages = [language for language, _ in BLOCKS]
    assert (languages.count("bash"), languages.count("graphql"), len(BLOCKS)) == (6, 8, 14)
    assert ".venv/bin/omnimember migrate" in COMMANDS
    assert inline("audiences/1/export").startswith("curl '127.0.0.1:8000/")
    assert len(DOCUMENTS) == 9, DOCUMENTS
    assert set(EXCUSED) <= {snippet.strip() for snippet in SNIPPETS}, "an excused snippet is no longer in the README"


def test_the_readme_runs_as_written(reader: Reader) -> None:
    migrated = reader.run(inline("omnimember migrate"))
    assert "database at revision" in migrated.stdout
    install_and_serve = block("bash", "serve --dev")
    assert install_and_serve == INSTALL_AND_SERVE + "\n"
    reader.ran.add(install_and_serve)
    reader.serve(INSTALL_AND_SERVE.rsplit(" && ", 1)[-1])

    tour = Tour(reader)
    _members(tour)
    _points(tour)
    _demo(reader, tour)
    _tags_and_audiences(reader, tour)
    _demo_audiences(reader)
    _keys(reader, tour)

    unaccounted = [snippet for snippet in SNIPPETS if snippet not in reader.ran and snippet.strip() not in EXCUSED]
    assert unaccounted == [], "README snippets that this test neither runs nor excuses"


def _graphql_blocks() -> list[str]:
    return [body for language, body in BLOCKS if language == "graphql"]


def _members(gql: Tour) -> None:
    """Steps 1 to 6."""
    brand, member, phone_match, lookups, bad_phone, merge, _, _ = _graphql_blocks()
    created = gql(brand)["createBrand"]
    assert created["__typename"] == "BrandCreated"
    assert [t["rank"] for t in created["brand"]["tiers"]] == [0, 1, 2, 3]

    registered = gql(member)["registerMember"]
    assert (registered["outcome"], registered["member"]["status"]) == ("CREATED", "PROSPECT")
    assert (registered["member"]["maskedPhone"], registered["member"]["tier"]) == ("138****5678", {"code": "silver"})

    matched = gql(phone_match)["registerMember"]
    assert (matched["outcome"], matched["member"]["id"]) == ("PHONE_MATCH", registered["member"]["id"])
    assert matched["member"]["identities"] == [
        {"channel": "TMALL", "externalId": "tb_2088001"},
        {"channel": "WECHAT", "externalId": "oWx_9f3kQ"},
    ]

    found = gql(lookups)
    assert found["memberByIdentity"]["id"] == found["memberByPhone"]["id"] == "1"
    assert (found["members"]["totalCount"], found["members"]["pageInfo"]["hasNextPage"]) == (1, False)

    failed = gql(bad_phone)["registerMember"]
    assert (failed["__typename"], failed["code"], failed["field"]) == ("InvalidPhone", "INVALID_PHONE", "phone")

    assert gql(inline("registerMember", "jd_77"))["registerMember"]["member"]["id"] == "2"
    merged = gql(merge)["mergeMembers"]["merge"]
    assert merged["movedIdentities"] == [{"channel": "JD", "externalId": "jd_77"}]
    jd = '{ memberByIdentity(brand: "teashop", channel: "jd", externalId: "jd_77") { id } }'
    assert gql(jd)["memberByIdentity"]["id"] == "1"
    assert gql(inline("unmergeMembers"))["unmergeMembers"] == {"__typename": "MembersUnmerged"}
    assert gql(jd)["memberByIdentity"]["id"] == "2"


def _points(gql: Tour) -> None:
    """Step 7."""
    *_, order, redeem = _graphql_blocks()
    recorded = gql(order)["recordOrder"]
    assert (recorded["order"]["pointsEarned"], recorded["order"]["growthEarned"]) == (358, 3580)
    assert recorded["member"] == {"status": "MEMBER", "pointsBalance": 358, "tier": {"code": "gold"}}

    spent = gql(redeem)["redeemPoints"]
    assert (spent["replayed"], spent["member"]["pointsBalance"]) == (False, 258)
    again = gql(redeem)["redeemPoints"]
    assert (again["replayed"], again["member"]["pointsBalance"]) == (True, 258)

    read = gql(inline("pointsHistory", "tierHistory"))["member"]
    assert [entry["kind"] for entry in read["pointsHistory"]["nodes"]] == ["REDEEM", "EARN"]
    assert read["tierHistory"][-1]["toTier"] == "gold"


def _demo(reader: Reader, gql: Tour) -> None:
    """Step 8: the demo, built while the service runs."""
    reader.run(block("bash", "omnimember demo"))
    sizes = '{ a: members(brand: "teahouse") { totalCount } b: members(brand: "orchard") { totalCount } }'
    assert [brand["totalCount"] for brand in gql(sizes).values()] == [6000, 4000]
    people = (
        '{ members(brand: "teahouse", first: 100) { edges { node { person { memberships { brand { code } } } } } } }'
    )
    elsewhere = [
        membership["brand"]["code"]
        for edge in gql(people)["members"]["edges"]
        for membership in (edge["node"]["person"] or {"memberships": []})["memberships"]
    ]
    assert "orchard" in elsewhere  # "people in both"
    tags = gql(inline("tags(brand:", "teahouse"))["tags"]
    assert 150 <= len(tags) <= 250, len(tags)  # "~200 tags a brand"
    assert {tag["code"] for tag in tags} >= DEMO_TAGS


def _tags_and_audiences(reader: Reader, gql: Tour) -> None:
    """Steps 9 and 10, on the tour's brand."""
    assert gql(inline("defineTag", "tea_lover"))["defineTag"] == {"__typename": "TagDefined"}
    tagged = gql(inline("tagMembers", "tea_lover"))["tagMembers"]
    assert (tagged["tagged"], tagged["added"]) == (1, 1)
    shown = gql(inline("tags {", "memberCount", "member("))
    assert [t["code"] for t in shown["member"]["tags"]] == ["tea_lover"]

    audience = inline("audience(", "whyMember")
    for _ in range(50):  # "the index catches up with writes within about a second"
        counted = gql(audience)["audience"]
        if counted["count"] == 1:
            break
        time.sleep(0.1)
    assert counted["count"] == 1
    assert [(s["clause"], s["count"], s["removed"]) for s in counted["explain"]["steps"]] == [
        (None, 2, 0),
        ("tag:tea_lover", 1, 1),
        ("NOT tier:silver", 1, 0),
    ]
    assert counted["whyMember"]["matches"] is True
    saved = gql(inline("saveAudience", "tea lovers"))["saveAudience"]
    assert (saved["audience"]["id"], saved["snapshot"]["count"]) == ("1", 1)

    exported = reader.run(inline("audiences/1/export")).stdout
    assert exported.splitlines() == ["id,tier,maskedPhone,channel:wechat", "1,gold,138****5678,oWx_9f3kQ"]


def _demo_audiences(reader: Reader) -> None:
    """Step 11: a count in the tens, the same members in lapsing.csv and as NDJSON."""
    snippet = block("bash", "audience count", "lapsing.csv")
    expressions = re.findall(r"'(?:expression=)?([^']+)'", snippet)
    assert len(expressions) == 3, expressions
    assert len(set(expressions)) == 1, expressions  # one audience, three ways
    done = reader.run(snippet)
    count, *lines = done.stdout.splitlines()
    assert 10 <= int(count) < 100, count
    assert f"{count} members written to lapsing.csv" in done.stderr
    with (reader.workdir / "lapsing.csv").open(newline="") as saved:
        rows = list(csv.DictReader(saved))
    assert len(rows) == int(count)
    assert set(rows[0]) == {"id", "tier", "city", "pointsBalance"}
    members = [json.loads(line) for line in lines]
    assert [m["id"] for m in members] == [int(row["id"]) for row in rows]
    assert {m["tier"] for m in members} <= {"gold", "platinum", "diamond"}  # NOT tier:silver


def _keys(reader: Reader, gql: Tour) -> None:
    """A partner's key with `gql`: masked name, pseudonymous ids."""
    snippet = block("bash", "keys create")
    answer = json.loads(reader.run(snippet, prelude=gql.defined).stdout)
    assert "errors" not in answer, answer
    member = answer["data"]["memberByPhone"]
    assert member["displayName"] == "王*"
    ids = [identity["externalId"] for identity in member["identities"]]
    assert len(ids) == 2, ids
    assert all(external.startswith("p_") for external in ids), ids

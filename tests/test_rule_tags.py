"""Rule tags (issue 15, item 3): a tag computed from a rule, versioned, kept current.

Members are checked against references computed here in Python from the seeded facts (and against
`audience(expression:)`, the bitmap engine), the incremental path against a full recompute, the
refusals for writing nothing, and the scheduled pass with the clock moved.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool

import resolvers.tags
from store.audiences import rule_tags
from store.audiences.bitmaps import locked_pass
from store.audiences.deltas import apply_brand
from store.brands import brand_by_code
from store.imports.runner import run_import
from store.members.phones import PhoneVault
from store.sql import counted_statements
from store.tags import assignments, catalog
from tagquery import parse
from tagquery.bitmap_keys import ALL_FAMILIES, FAMILIES
from tests.audience_seed import TIERS, Seeded, catch_up, has_churn, has_vip, seed, tier_of
from tests.conftest import TEST_SECRET, GraphQL, new_brand
from tests.fragments import MERGE, UNMERGE

ZONE = ZoneInfo("Asia/Shanghai")  # the brands' default time zone
ERROR = "... on Error { __typename code message field }"
EXPRESSION_ERROR = "... on InvalidExpression { reason line column snippet }"
DEFINE = f"""
mutation($brand: String!, $code: String!, $rule: String, $ttlDays: Int) {{
  defineTag(brand: $brand, code: $code, name: $code, category: CUSTOM, rule: $rule, ttlDays: $ttlDays) {{
    __typename
    ... on TagDefined {{ tag {{ code rule ruleVersion memberCount }} }}
    {EXPRESSION_ERROR}
    {ERROR}
  }}
}}"""
SET_RULE = f"""
mutation($brand: String!, $tag: String!, $rule: String!) {{
  setTagRule(brand: $brand, tag: $tag, rule: $rule) {{
    __typename
    ... on TagRuleSet {{
      changed added removed
      tag {{ code rule ruleVersion memberCount ruleVersions {{ version rule createdAt createdBy }} }}
    }}
    {EXPRESSION_ERROR}
    {ERROR}
  }}
}}"""
TAG = f"""
mutation($brand: String!, $tag: String!, $ids: [ID!], $where: String) {{
  tagMembers(brand: $brand, tag: $tag, memberIds: $ids, where: $where) {{ __typename {ERROR} }}
}}"""
UNTAG = f"""
mutation($brand: String!, $tag: String!, $ids: [ID!]!) {{
  untagMembers(brand: $brand, tag: $tag, memberIds: $ids) {{ __typename {ERROR} }}
}}"""
CATALOG = """
query($brand: String!) {
  tags(brand: $brand) {
    code rule ruleVersion memberCount
    ruleVersions { version rule }
    computation { computedAt asOfDay asOf lagSeconds }
  }
}"""
MEMBER_TAGS = """
query($id: ID!) { member(id: $id) { tags { code source assignedAt ruleVersion computedAt } } }"""
AUDIENCE = """
query($brand: String!, $expression: String!) {
  audience(brand: $brand, expression: $expression) { count sample(first: 100) { edges { node { id } } } }
}"""
ORDER = """
mutation($b: String!, $m: ID!, $k: String!, $at: DateTime!) {
  recordOrder(brand: $b, channel: "pos", externalOrderId: $k, amount: "10.00", paidAt: $at, memberId: $m) {
    __typename ... on Error { code message }
  }
}"""

GOLD_FANS = "tier IN (gold, platinum) AND points >= 1000 AND NOT tag:churn_risk"


def gold_fan(i: int) -> bool:
    """GOLD_FANS for seeded member number i (tests.audience_seed: points are 100 * i)."""
    return tier_of(i) in ("gold", "platinum") and 100 * i >= 1000 and not has_churn(i)


@pytest.fixture
async def seeded(pool: AsyncConnectionPool[Any]) -> Seeded:
    return await seed(pool)


async def define(gql: GraphQL, brand: str, code: str, rule: str | None, **extra: Any) -> dict[str, Any]:
    found: dict[str, Any] = (await gql(DEFINE, brand=brand, code=code, rule=rule, **extra))["defineTag"]
    return found


async def set_rule(gql: GraphQL, brand: str, tag: str, rule: str) -> dict[str, Any]:
    found: dict[str, Any] = (await gql(SET_RULE, brand=brand, tag=tag, rule=rule))["setTagRule"]
    return found


async def carriers(pool: AsyncConnectionPool[Any], brand_id: int) -> dict[str, set[int]]:
    """Who carries each tag of the brand, from member_tags as it is."""
    async with pool.connection() as conn:
        rows = await (
            await conn.execute(
                "SELECT d.code, t.member_id FROM member_tags t JOIN tag_definitions d ON d.id = t.tag_id"
                " WHERE t.brand_id = %s",
                (brand_id,),
            )
        ).fetchall()
    found: dict[str, set[int]] = {}
    for code, member_id in rows:
        found.setdefault(code, set()).add(member_id)
    return found


async def audience_ids(gql: GraphQL, brand: str, expression: str) -> set[int]:
    found = (await gql(AUDIENCE, brand=brand, expression=expression))["audience"]
    ids = {int(edge["node"]["id"]) for edge in found["sample"]["edges"]}
    assert len(ids) == found["count"]
    return ids


async def rules_written(pool: AsyncConnectionPool[Any], brand_id: int) -> list[tuple[Any, ...]]:
    async with pool.connection() as conn:
        cursor = await conn.execute(
            "SELECT d.code, r.version, r.rule FROM tag_rules r JOIN tag_definitions d ON d.id = r.tag_id"
            " WHERE r.brand_id = %s ORDER BY d.code, r.version",
            (brand_id,),
        )
        rows: list[tuple[Any, ...]] = await cursor.fetchall()
        return rows


# --- what a rule tag holds --------------------------------------------------------------------------------


async def test_a_rule_tag_carries_exactly_the_members_its_rule_selects(
    pool: AsyncConnectionPool[Any], gql: GraphQL, seeded: Seeded
) -> None:
    made = await define(gql, seeded.code, "gold_fan", GOLD_FANS)
    assert made["__typename"] == "TagDefined", made
    assert made["tag"]["rule"] == GOLD_FANS
    assert made["tag"]["ruleVersion"] == 1
    expected = {member for i, member in enumerate(seeded.ids) if gold_fan(i)}
    assert expected, "the seed has gold fans"
    assert made["tag"]["memberCount"] == len(expected)
    assert (await carriers(pool, seeded.brand_id))["gold_fan"] == expected
    assert await audience_ids(gql, seeded.code, GOLD_FANS) == expected
    await catch_up(pool, seeded.brand_id)  # the assignments reach the index like any other tag's
    assert await audience_ids(gql, seeded.code, "tag:gold_fan") == expected
    assert await audience_ids(gql, seeded.code, "tag:gold_fan OR tag:vip") == expected | {
        member for i, member in enumerate(seeded.ids) if has_vip(i)
    }


async def test_a_rule_naming_tags_by_display_name_is_kept_with_their_codes(
    pool: AsyncConnectionPool[Any], gql: GraphQL, seeded: Seeded
) -> None:
    made = await define(gql, seeded.code, "vip_silver", "tag:贵宾 AND tier:silver")
    assert made["tag"]["rule"] == "tag:vip AND tier:silver"
    expected = {member for i, member in enumerate(seeded.ids) if has_vip(i) and tier_of(i) == "silver"}
    assert (await carriers(pool, seeded.brand_id))["vip_silver"] == expected


async def test_writes_move_members_in_and_out_without_a_full_pass(
    pool: AsyncConnectionPool[Any], gql: GraphQL, seeded: Seeded
) -> None:
    rules = {"gold_fan": GOLD_FANS, "buyer": "order_count >= 1", "vip_kept": "tag:vip AND NOT tag:churn_risk"}
    for code, rule in rules.items():
        assert (await define(gql, seeded.code, code, rule))["__typename"] == "TagDefined"
    ids = seeded.ids
    churned_fan = next(i for i in range(len(ids)) if has_churn(i) and tier_of(i) in ("gold", "platinum") and i >= 10)
    fan = next(i for i in range(len(ids)) if gold_fan(i))
    gold = next(i for i in range(len(ids)) if not has_vip(i) and not has_churn(i))
    vip = next(i for i in range(1, len(ids)) if has_vip(i) and not has_churn(i))  # member 0 buys below
    untouched = next(i for i in range(len(ids)) if gold_fan(i) and i not in (fan, churned_fan, gold, vip, 0))
    # An assignment lost behind the engine's back (no trigger): only a full pass would find it. (The
    # members the rules just assigned are queued: applied first, the delta below holds only the writes.)
    await catch_up(pool, seeded.brand_id)
    async with pool.connection() as conn, conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute(
            "DELETE FROM member_tags WHERE member_id = %s AND tag_id = %s",
            (ids[untouched], await _tag_id(conn, seeded.brand_id, "gold_fan")),
        )

    # A tag write: churn_risk taken off a gold member with points; put on a fan.
    untagged = await gql(UNTAG, brand=seeded.code, tag="churn_risk", ids=[str(ids[churned_fan])])
    assert untagged["untagMembers"]["__typename"] == "MembersUntagged"
    tagged = await gql(TAG, brand=seeded.code, tag="churn_risk", ids=[str(ids[fan])])
    assert tagged["tagMembers"]["__typename"] == "MembersTagged"
    # An order makes a buyer.
    paid = datetime.now(UTC) - timedelta(days=1)
    order = await gql(ORDER, b=seeded.code, m=str(ids[0]), k=f"o-{secrets.token_hex(4)}", at=paid.isoformat())
    assert order["recordOrder"]["__typename"] == "OrderRecorded", order
    # A merge: the gold member takes the vip member's tags, the vip member is merged away.
    merged = await gql(MERGE, survivorId=str(ids[gold]), mergedId=str(ids[vip]), reason="same person")
    assert merged["mergeMembers"]["__typename"] == "MembersMerged", merged

    await catch_up(pool, seeded.brand_id)
    held = await carriers(pool, seeded.brand_id)
    assert ids[churned_fan] in held["gold_fan"]
    assert ids[fan] not in held["gold_fan"]
    assert held["buyer"] == {ids[0]}
    assert ids[gold] in held["vip_kept"]
    assert ids[vip] not in held["vip_kept"]
    assert ids[untouched] not in held["gold_fan"]  # the writes' members were computed, nobody else
    for code, rule in rules.items():
        assert held[code] | ({ids[untouched]} if code == "gold_fan" else set()) == await audience_ids(
            gql, seeded.code, rule
        ), code
    async with pool.connection() as conn:  # a full pass finds the lost one
        full = await rule_tags.sync_locked(conn, seeded.brand_id, wait=True)
    assert full is not None
    assert (full.added, full.removed) == (1, 0)


async def _computed_days(conn: AsyncConnection[Any], brand_id: int) -> list[tuple[Any, ...]]:
    cursor = await conn.execute(
        "SELECT tag_id, day, lifecycle_version, rfm_computed_at FROM rule_tag_state WHERE brand_id = %s ORDER BY 1",
        (brand_id,),
    )
    return await cursor.fetchall()


# --- property: incremental = full recompute = reference --------------------------------------------------

FANS, EITHER, LOW = "fans", "either", "low"
RULES = {
    FANS: "tier IN (gold, platinum) AND points >= 1000 AND NOT tag:churn_risk",
    EITHER: "tag:fans OR tag:vip OR channel:wechat",  # a rule tag naming a rule tag
    LOW: "NOT tag:either AND points < 500",
}
member_facts = st.tuples(st.sampled_from(TIERS), st.integers(0, 3000), st.booleans(), st.booleans())
writes = st.lists(
    st.one_of(
        st.tuples(st.just("tier"), st.integers(0, 11), st.sampled_from(TIERS)),
        st.tuples(st.just("points"), st.integers(0, 11), st.integers(0, 3000)),
        st.tuples(st.just("tag"), st.integers(0, 11), st.sampled_from(("vip", "churn_risk"))),
        st.tuples(st.just("untag"), st.integers(0, 11), st.sampled_from(("vip", "churn_risk"))),
        st.tuples(st.just("wechat"), st.integers(0, 11)),
        st.tuples(st.just("merge"), st.integers(0, 11), st.integers(0, 11)),
        st.tuples(st.just("unmerge"), st.integers(0, 5)),
        st.tuples(st.just("apply")),
    ),
    max_size=20,
)


@dataclasses.dataclass
class Brand:
    code: str
    brand_id: int
    ids: list[int]
    tags: dict[str, dict[str, Any]]
    merges: list[str] = dataclasses.field(default_factory=list)


async def _brand_of(pool: AsyncConnectionPool[Any], gql: GraphQL, facts: list[tuple[str, int, bool, bool]]) -> Brand:
    code = await new_brand(pool)
    async with pool.connection() as conn, conn.transaction():
        brand_id: int = (await brand_by_code(conn, code))["id"]
        tags = {
            name: await catalog.define(conn, brand_id=brand_id, code=name, name=name, category="custom", ttl_days=None)
            for name in ("vip", "churn_risk")
        }
        ids = []
        for n, (tier, points, vip, churn) in enumerate(facts):
            cursor = await conn.execute(
                "INSERT INTO members (brand_id, tier, points_balance, phone_masked, phone_hash, phone_encrypted)"
                " VALUES (%s, %s, %s, '138****0000', int8send(%s), int8send(%s)) RETURNING id",
                (brand_id, tier, points, brand_id * 1000 + n, n),
            )
            row = await cursor.fetchone()
            assert row is not None
            ids.append(row[0])
            for name, held in (("vip", vip), ("churn_risk", churn)):
                if held:
                    await assignments.tag_members(conn, tag=tags[name], member_ids=[row[0]])
    await catch_up(pool, brand_id)  # the index built (a rule may name a city: the catalog reads them from it)
    for name, rule in RULES.items():
        assert (await define(gql, code, name, rule))["__typename"] == "TagDefined"
    return Brand(code, brand_id, ids, tags)


async def _write(pool: AsyncConnectionPool[Any], gql: GraphQL, brand: Brand, step: tuple[Any, ...]) -> None:
    kind, *args = step
    async with pool.connection() as conn:
        if kind == "apply":
            await apply_brand(conn, brand.brand_id, wait=True)
        elif kind in ("tier", "points"):
            column = {"tier": "tier", "points": "points_balance"}[kind]
            await conn.execute(f"UPDATE members SET {column} = %s WHERE id = %s", (args[1], brand.ids[args[0]]))  # noqa: S608
        elif kind in ("tag", "untag"):
            async with conn.transaction():
                write = assignments.tag_members if kind == "tag" else assignments.untag_members
                live = await assignments.live_member_ids(conn, brand_id=brand.brand_id, member_ids=[brand.ids[args[0]]])
                if live:
                    await write(conn, tag=brand.tags[args[1]], member_ids=live)
        elif kind == "wechat":  # an identity bound (to whom it now belongs: a merge moves them)
            await conn.execute(
                "INSERT INTO member_identities (brand_id, member_id, channel, external_id)"
                " VALUES (%s, %s, 'wechat', %s)",
                (brand.brand_id, brand.ids[args[0]], f"wx-{secrets.token_hex(6)}"),
            )
        elif kind == "unmerge":
            if args[0] < len(brand.merges):  # (refused, and fine, when undone already or merged again since)
                await gql(UNMERGE, mergeId=brand.merges[args[0]])
        elif args[0] != args[1]:  # a merge of two members (refused, and fine, when either is merged away)
            done = await gql(MERGE, survivorId=str(brand.ids[args[0]]), mergedId=str(brand.ids[args[1]]), reason="r")
            if done["mergeMembers"]["__typename"] == "MembersMerged":
                brand.merges.append(done["mergeMembers"]["merge"]["id"])


async def _reference(pool: AsyncConnectionPool[Any], brand_id: int) -> dict[str, set[int]]:
    """The rules evaluated in Python over plain reads of members and their hand-made tags."""
    async with pool.connection() as conn:
        members = await (
            await conn.execute(
                "SELECT id, tier, points_balance FROM members WHERE brand_id = %s AND merged_into IS NULL"
                " AND erased_at IS NULL",
                (brand_id,),
            )
        ).fetchall()
        held = await (
            await conn.execute(
                "SELECT t.member_id, d.code FROM member_tags t JOIN tag_definitions d ON d.id = t.tag_id"
                " WHERE t.brand_id = %s AND t.source <> 'rule'"
                " UNION SELECT member_id, 'channel:' || channel FROM member_identities WHERE brand_id = %s",
                (brand_id, brand_id),
            )
        ).fetchall()
    tags: dict[int, set[str]] = {}
    for member_id, code in held:
        tags.setdefault(member_id, set()).add(code)
    found: dict[str, set[int]] = {FANS: set(), EITHER: set(), LOW: set()}
    for member_id, tier, points in members:
        mine = tags.get(member_id, set())
        fan = tier in ("gold", "platinum") and points >= 1000 and "churn_risk" not in mine
        either = fan or "vip" in mine or "channel:wechat" in mine
        for code, holds in ((FANS, fan), (EITHER, either), (LOW, not either and points < 500)):
            if holds:
                found[code].add(member_id)
    return found


def _rule_tags_only(held: dict[str, set[int]]) -> dict[str, set[int]]:
    return {code: held.get(code, set()) for code in RULES}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(facts=st.lists(member_facts, min_size=12, max_size=12), steps=writes)
async def test_incremental_rule_tags_equal_a_full_recompute_and_the_reference(
    pool: AsyncConnectionPool[Any], gql: GraphQL, facts: list[tuple[str, int, bool, bool]], steps: list[Any]
) -> None:
    brand = await _brand_of(pool, gql, facts)
    assert _rule_tags_only(await carriers(pool, brand.brand_id)) == await _reference(pool, brand.brand_id)
    for step in steps:
        await _write(pool, gql, brand, step)
    await catch_up(pool, brand.brand_id)
    incremental = _rule_tags_only(await carriers(pool, brand.brand_id))
    assert incremental == await _reference(pool, brand.brand_id)
    async with pool.connection() as conn:
        full = await rule_tags.sync_locked(conn, brand.brand_id, wait=True)
    assert full is not None
    assert (full.tags, full.added, full.removed) == (3, 0, 0)  # the full recompute finds nothing to change
    assert _rule_tags_only(await carriers(pool, brand.brand_id)) == incremental


# --- versions -------------------------------------------------------------------------------------------


async def test_a_changed_rule_is_a_new_version_and_assignments_keep_theirs(
    pool: AsyncConnectionPool[Any], gql: GraphQL, seeded: Seeded
) -> None:
    await define(gql, seeded.code, "rich", "points >= 2000")
    async with pool.connection() as conn:
        first = dict(
            await (
                await conn.execute(
                    "SELECT t.member_id, t.computed_at FROM member_tags t JOIN tag_definitions d ON d.id = t.tag_id"
                    " WHERE t.brand_id = %s AND d.code = 'rich'",
                    (seeded.brand_id,),
                )
            ).fetchall()
        )
    changed = await set_rule(gql, seeded.code, "rich", "points >= 3000 OR tier:silver")
    assert changed["__typename"] == "TagRuleSet", changed
    assert changed["changed"] is True
    tag = changed["tag"]
    assert (tag["rule"], tag["ruleVersion"]) == ("points >= 3000 OR tier:silver", 2)
    assert [(v["version"], v["rule"]) for v in tag["ruleVersions"]] == [
        (1, "points >= 2000"),
        (2, "points >= 3000 OR tier:silver"),
    ]
    assert all(v["createdBy"] for v in tag["ruleVersions"])
    expected = {m for i, m in enumerate(seeded.ids) if 100 * i >= 3000 or tier_of(i) == "silver"}
    assert (await carriers(pool, seeded.brand_id))["rich"] == expected
    old = {m for i, m in enumerate(seeded.ids) if 100 * i >= 2000}
    assert changed["added"] == len(expected - old)
    assert changed["removed"] == len(old - expected)

    kept = next(m for i, m in enumerate(seeded.ids) if 100 * i >= 3000)  # matched under both versions
    new = next(m for i, m in enumerate(seeded.ids) if 100 * i < 2000 and tier_of(i) == "silver")
    for member, version in ((kept, 1), (new, 2)):
        tags = (await gql(MEMBER_TAGS, id=str(member)))["member"]["tags"]
        rich = next(t for t in tags if t["code"] == "rich")
        assert (rich["source"], rich["ruleVersion"]) == ("rule", version)
        assert rich["computedAt"] is not None
    kept_tag = next(t for t in (await gql(MEMBER_TAGS, id=str(kept)))["member"]["tags"] if t["code"] == "rich")
    assert datetime.fromisoformat(kept_tag["computedAt"]) == first[kept]  # computed under version 1, then

    again = await set_rule(gql, seeded.code, "rich", "points>=3000 or tier:silver")  # the same rule, other spelling
    assert (again["changed"], again["added"], again["removed"]) == (False, None, None)
    assert again["tag"]["ruleVersion"] == 2
    assert len(await rules_written(pool, seeded.brand_id)) == 2


async def test_a_manual_tag_given_a_rule_becomes_a_rule_tag(
    pool: AsyncConnectionPool[Any], gql: GraphQL, seeded: Seeded
) -> None:
    changed = await set_rule(gql, seeded.code, "vip", "points >= 3500")
    assert changed["changed"] is True
    assert (await carriers(pool, seeded.brand_id))["vip"] == {m for i, m in enumerate(seeded.ids) if 100 * i >= 3500}
    tags = (await gql(MEMBER_TAGS, id=str(seeded.ids[36])))["member"]["tags"]  # vip by hand before, by rule now
    assert next(t for t in tags if t["code"] == "vip")["source"] == "rule"


# --- refusals --------------------------------------------------------------------------------------------


async def test_a_rule_naming_its_own_tag_is_refused_and_nothing_is_written(
    pool: AsyncConnectionPool[Any], gql: GraphQL, seeded: Seeded
) -> None:
    refused = await define(gql, seeded.code, "selfish", "points > 10 AND tag:selfish")
    assert refused["__typename"] == "InvalidExpression", refused
    assert (refused["code"], refused["reason"], refused["field"]) == ("INVALID_EXPRESSION", "CYCLE", "rule")
    assert "rule tags form a cycle: selfish -> selfish" in refused["message"]
    assert (refused["line"], refused["column"]) == (1, 17)
    assert refused["snippet"].splitlines()[1] == " " * 16 + "^" * len("tag:selfish")
    codes = {t["code"] for t in (await gql(CATALOG, brand=seeded.code))["tags"]}
    assert "selfish" not in codes
    assert await rules_written(pool, seeded.brand_id) == []


async def test_two_and_three_cycles_are_refused_naming_the_cycle(
    pool: AsyncConnectionPool[Any], gql: GraphQL, seeded: Seeded
) -> None:
    assert (await define(gql, seeded.code, "a", "points >= 1000"))["__typename"] == "TagDefined"
    assert (await define(gql, seeded.code, "b", "tag:a AND tier:gold"))["__typename"] == "TagDefined"
    assert (await define(gql, seeded.code, "c", "tag:b OR tag:vip"))["__typename"] == "TagDefined"
    before = (await rules_written(pool, seeded.brand_id), await carriers(pool, seeded.brand_id))

    two = await set_rule(gql, seeded.code, "a", "tier:gold AND tag:b")
    assert (two["__typename"], two["reason"]) == ("InvalidExpression", "CYCLE")
    assert "rule tags form a cycle: a -> b -> a" in two["message"]
    assert (two["line"], two["column"]) == (1, 15)
    three = await set_rule(gql, seeded.code, "a", "tag:vip OR tag:c")
    assert "rule tags form a cycle: a -> c -> b -> a" in three["message"]
    assert (three["line"], three["column"]) == (1, 12)
    in_list = await set_rule(gql, seeded.code, "a", "tag IN (vip, c)")
    assert "a -> c -> b -> a" in in_list["message"]
    assert (in_list["line"], in_list["column"]) == (1, 14)  # the value of the list that closes it

    assert (await rules_written(pool, seeded.brand_id), await carriers(pool, seeded.brand_id)) == before


async def test_bad_rules_fail_as_audience_expressions_do(gql: GraphQL, seeded: Seeded) -> None:
    unknown = await define(gql, seeded.code, "x", "points > 1 AND tag:vipp")
    assert (unknown["__typename"], unknown["reason"], unknown["column"]) == ("InvalidExpression", "UNKNOWN_TAG", 20)
    syntax = await define(gql, seeded.code, "x", "points >")
    assert (syntax["__typename"], syntax["reason"]) == ("InvalidExpression", "SYNTAX")
    with_ttl = await define(gql, seeded.code, "x", "points > 1", ttlDays=3)
    assert (with_ttl["__typename"], with_ttl["field"]) == ("InvalidInput", "ttlDays")
    assert "x" not in {t["code"] for t in (await gql(CATALOG, brand=seeded.code))["tags"]}


async def test_a_rule_tag_is_never_assigned_by_hand(
    pool: AsyncConnectionPool[Any], gql: GraphQL, seeded: Seeded, database_url: str, tmp_path: Path
) -> None:
    await define(gql, seeded.code, "gold_fan", GOLD_FANS)
    before = await carriers(pool, seeded.brand_id)
    outsider = next(m for i, m in enumerate(seeded.ids) if not gold_fan(i))
    insider = next(m for i, m in enumerate(seeded.ids) if gold_fan(i))
    for refused in (
        (await gql(TAG, brand=seeded.code, tag="gold_fan", ids=[str(outsider)]))["tagMembers"],
        (await gql(TAG, brand=seeded.code, tag="gold_fan", where="tier:silver"))["tagMembers"],
        (await gql(UNTAG, brand=seeded.code, tag="gold_fan", ids=[str(insider)]))["untagMembers"],
    ):
        assert (refused["__typename"], refused["code"], refused["field"]) == ("InvalidInput", "INVALID_INPUT", "tag")
        assert "rule tag" in refused["message"]
    # A bulk import rejects the row with the reason, and imports the others.
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO member_identities (brand_id, member_id, channel, external_id) VALUES (%s, %s, 'pos', 'out')",
            (seeded.brand_id, outsider),
        )
    path = tmp_path / "tags.csv"
    path.write_text("channel,external_id,tag\npos,out,gold_fan\npos,out,churn_risk\n", encoding="utf-8")
    report = await run_import(database_url, PhoneVault(TEST_SECRET.encode()), brand=seeded.code, kind="tags", path=path)
    assert report.rejects is not None
    rejects = report.rejects.read_text(encoding="utf-8")
    assert "INVALID_INPUT" in rejects
    assert "rule tag" in rejects
    after = await carriers(pool, seeded.brand_id)
    assert after["gold_fan"] == before["gold_fan"]
    assert after["churn_risk"] == before["churn_risk"] | {outsider}


async def test_a_rule_tag_naming_a_rule_tag_is_computed_after_it(
    pool: AsyncConnectionPool[Any], gql: GraphQL, seeded: Seeded
) -> None:
    await define(gql, seeded.code, "b", "points >= 2000")
    await define(gql, seeded.code, "a", "tag:b AND tier:gold")
    await define(gql, seeded.code, "z", "NOT tag:a AND tag:b")  # a chain z -> a -> b, codes out of order
    changed = await set_rule(gql, seeded.code, "b", "points >= 1000")
    assert changed["changed"] is True
    held = await carriers(pool, seeded.brand_id)
    b = {m for i, m in enumerate(seeded.ids) if 100 * i >= 1000}
    a = {m for i, m in enumerate(seeded.ids) if 100 * i >= 1000 and tier_of(i) == "gold"}
    assert (held["b"], held["a"], held["z"]) == (b, a, b - a)  # in this very call, without the applier
    async with pool.connection() as conn:
        ordered = [tag.code for tag in rule_tags.in_order(await rule_tags.brand_rule_tags(conn, seeded.brand_id))]
    assert ordered == ["b", "a", "z"]


# --- time and freshness ----------------------------------------------------------------------------------


def at_noon(day: date) -> datetime:
    return datetime.combine(day, time(12), ZONE)


async def test_a_time_relative_rule_moves_members_out_on_the_scheduled_pass(
    pool: AsyncConnectionPool[Any], gql: GraphQL, seeded: Seeded
) -> None:
    today = datetime.now(ZONE).date()
    bought = {seeded.ids[1]: 29, seeded.ids[2]: 10, seeded.ids[3]: 40}  # member -> days since the last purchase
    async with pool.connection() as conn:
        for member, days in bought.items():
            await conn.execute(
                "UPDATE members SET last_purchase_at = %s WHERE id = %s",
                (at_noon(today - timedelta(days=days)), member),
            )
    await catch_up(pool, seeded.brand_id)
    await define(gql, seeded.code, "recent", "last_purchase WITHIN 30d")
    assert (await carriers(pool, seeded.brand_id))["recent"] == {seeded.ids[1], seeded.ids[2]}

    async def scheduled(days: int) -> rule_tags.Evaluated:
        async with pool.connection() as conn:
            done = await rule_tags.sync_locked(conn, seeded.brand_id, wait=True, now=at_noon(today + timedelta(days)))
        assert done is not None
        return done

    assert (await scheduled(1)).removed == 0  # 30 days since: still within
    moved = await scheduled(2)
    assert (moved.removed, moved.added, moved.day) == (1, 0, today + timedelta(days=2))
    assert (await carriers(pool, seeded.brand_id))["recent"] == {seeded.ids[2]}
    # The server's own clock is behind the moved one: a write computes on the kept day, nobody comes back.
    async with pool.connection() as conn:
        await conn.execute("UPDATE members SET points_balance = 1 WHERE id = %s", (seeded.ids[1],))
    await catch_up(pool, seeded.brand_id)
    assert (await carriers(pool, seeded.brand_id))["recent"] == {seeded.ids[2]}


async def test_the_scheduled_pass_takes_brands_whose_day_moved_on(pool: AsyncConnectionPool[Any], gql: GraphQL) -> None:
    seeded = await seed(pool, count=4)
    await define(gql, seeded.code, "recent", "last_purchase WITHIN 30d")
    async with pool.connection() as conn:
        assert seeded.brand_id not in {row["brand_id"] for row in await rule_tags._due.all(conn)}
        # As if computed yesterday (the server's own loop may take it first: either way it is done).
        await conn.execute("UPDATE rule_tag_state SET day = day - 1 WHERE brand_id = %s", (seeded.brand_id,))
        assert seeded.brand_id in {row["brand_id"] for row in await rule_tags._due.all(conn)}
    await rule_tags.sync_due(pool)
    async with pool.connection() as conn:
        assert [row[1] for row in await _computed_days(conn, seeded.brand_id)] == [datetime.now(ZONE).date()]
        assert seeded.brand_id not in {row["brand_id"] for row in await rule_tags._due.all(conn)}


async def test_the_catalog_says_when_a_rule_tag_was_computed_and_how_far_behind_it_is(
    pool: AsyncConnectionPool[Any], gql: GraphQL, seeded: Seeded
) -> None:
    started = datetime.now(UTC)
    await define(gql, seeded.code, "gold_fan", GOLD_FANS)
    listed = {t["code"]: t for t in (await gql(CATALOG, brand=seeded.code))["tags"]}
    fan, vip = listed["gold_fan"], listed["vip"]
    assert (vip["rule"], vip["ruleVersion"], vip["ruleVersions"], vip["computation"]) == (None, None, [], None)
    assert (fan["rule"], fan["ruleVersion"]) == (GOLD_FANS, 1)
    assert fan["ruleVersions"] == [{"version": 1, "rule": GOLD_FANS}]
    computation = fan["computation"]
    assert datetime.fromisoformat(computation["computedAt"]) >= started
    assert date.fromisoformat(computation["asOfDay"]) == datetime.now(ZONE).date()
    assert 0 <= computation["lagSeconds"] < 60
    async with pool.connection() as conn:  # a day behind: the lag runs from the start of the next day
        await conn.execute("UPDATE rule_tag_state SET day = day - 1 WHERE brand_id = %s", (seeded.brand_id,))
        found = await rule_tags.freshness(conn, int(await _tag_id(conn, seeded.brand_id, "gold_fan")))
    assert found is not None
    assert found.as_of is not None
    assert found.lag is not None
    assert found.as_of == datetime.combine(datetime.now(ZONE).date(), time(), ZONE)
    async with pool.connection() as conn:  # computed again: current
        assert await rule_tags.sync_locked(conn, seeded.brand_id, wait=True) is not None
        found = await rule_tags.freshness(conn, int(await _tag_id(conn, seeded.brand_id, "gold_fan")))
    assert found is not None
    assert found.day == datetime.now(ZONE).date()


async def _tag_id(conn: AsyncConnection[Any], brand_id: int, code: str) -> int:
    return int((await catalog.definition(conn, brand_id=brand_id, code=code))["id"])


# --- concurrency ----------------------------------------------------------------------------------------


async def test_passes_and_rule_changes_at_once_never_double_or_lose_an_assignment(
    pool: AsyncConnectionPool[Any], gql: GraphQL, seeded: Seeded
) -> None:
    await define(gql, seeded.code, "rich", "points >= 2000")

    async def full_pass() -> rule_tags.Evaluated | None:
        async with pool.connection() as conn:
            return await rule_tags.sync_locked(conn, seeded.brand_id, wait=True)

    async def delta() -> None:
        async with pool.connection() as conn:
            await apply_brand(conn, seeded.brand_id, wait=True)

    changes = [set_rule(gql, seeded.code, "rich", f"points >= {limit}") for limit in (1000, 3000)]
    outcome = await asyncio.gather(full_pass(), full_pass(), delta(), *changes)
    assert {result["__typename"] for result in outcome[3:]} == {"TagRuleSet"}
    versions = await rules_written(pool, seeded.brand_id)
    assert [row[1] for row in versions] == [1, 2, 3]
    last = versions[-1][2]
    limit = int(last.split(">=")[1])
    assert (await carriers(pool, seeded.brand_id))["rich"] == {m for i, m in enumerate(seeded.ids) if 100 * i >= limit}


async def test_refresh_computes_every_rule_tag(
    pool: AsyncConnectionPool[Any], gql: GraphQL, seeded: Seeded, database_url: str
) -> None:
    await define(gql, seeded.code, "gold_fan", GOLD_FANS)
    async with pool.connection() as conn, conn.transaction():  # as a bulk load without triggers leaves it
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute(
            "DELETE FROM member_tags WHERE tag_id = %s", (await _tag_id(conn, seeded.brand_id, "gold_fan"),)
        )
    done = dict(await rule_tags.refresh(database_url, seeded.code))
    report = done[seeded.code]
    assert report is not None
    expected = {m for i, m in enumerate(seeded.ids) if gold_fan(i)}
    assert (report.tags, report.added, report.removed) == (1, len(expected), 0)
    assert (await carriers(pool, seeded.brand_id))["gold_fan"] == expected


async def test_listing_rules_costs_no_statement_per_tag(gql: GraphQL, seeded: Seeded) -> None:
    listing = """query($brand: String!) { tags(brand: $brand) {
      code rule ruleVersion memberCount ruleVersions { version rule } computation { computedAt asOf lagSeconds }
    } }"""

    async def statements() -> int:
        with counted_statements() as counted:
            await gql(listing, brand=seeded.code)
        return counted.value

    await define(gql, seeded.code, "rich", "points >= 2000")
    one = await statements()
    for code in ("richer", "richest"):
        await define(gql, seeded.code, code, f"tag:rich AND points >= {3000 if code == 'richer' else 3500}")
    assert await statements() == one


async def test_a_rule_change_while_the_index_is_busy_is_computed_by_the_scheduled_pass(
    pool: AsyncConnectionPool[Any], gql: GraphQL, seeded: Seeded
) -> None:
    await define(gql, seeded.code, "rich", "points >= 2000")
    async with pool.connection() as busy, busy.transaction():  # a long rebuild of the brand, say
        await busy.execute("SELECT pg_advisory_xact_lock(%s, %s)", (0x617564, seeded.brand_id))
        changed = await set_rule(gql, seeded.code, "rich", "points >= 3000")
        assert (changed["changed"], changed["added"], changed["removed"]) == (True, None, None)
        assert changed["tag"]["ruleVersion"] == 2
        listed = {t["code"]: t for t in (await gql(CATALOG, brand=seeded.code))["tags"]}
        assert listed["rich"]["computation"]["computedAt"] is None
    await rule_tags.sync_due(pool)  # (unless the server's own loop was first: the same either way)
    assert (await carriers(pool, seeded.brand_id))["rich"] == {m for i, m in enumerate(seeded.ids) if 100 * i >= 3000}


@pytest.mark.parametrize(
    ("rule", "families"),
    [
        ("tag:vip AND NOT tag:churn_risk", {"u", "tag"}),
        ("tier IN (gold, platinum) AND points >= 1000", {"u", "tier", "points"}),
        ("lifecycle:at_risk OR age BETWEEN 20 AND 30", {"u", "order", "last_purchase", "birthday"}),
        ("last_purchase WITHIN 30d AND channel:wechat", {"u", "last_purchase", "channel"}),
        ("entered:at_risk WITHIN 30d AND tier:gold", {"u", "stage", "tier"}),
    ],
)
def test_a_rule_reads_the_families_of_its_names(rule: str, families: set[str]) -> None:
    assert rule_tags.families_read(parse(rule)) == sum(FAMILIES[family] for family in families)


def test_a_name_the_table_does_not_know_reads_every_family() -> None:
    assert rule_tags.families_read(parse("points > 1 OR newfangled >= 3")) == ALL_FAMILIES


async def test_a_write_a_rule_does_not_read_leaves_its_tag_alone(
    pool: AsyncConnectionPool[Any], gql: GraphQL, seeded: Seeded
) -> None:
    await define(gql, seeded.code, "vip_kept", "tag:vip AND NOT tag:churn_risk")
    await catch_up(pool, seeded.brand_id)
    member = next(m for i, m in enumerate(seeded.ids) if has_vip(i) and not has_churn(i))
    async with pool.connection() as conn, conn.transaction():  # lost behind the engine's back (no trigger)
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute(
            "DELETE FROM member_tags WHERE member_id = %s AND tag_id = %s",
            (member, await _tag_id(conn, seeded.brand_id, "vip_kept")),
        )
    async with pool.connection() as conn:
        await conn.execute("UPDATE members SET points_balance = points_balance + 1 WHERE id = %s", (member,))
    await catch_up(pool, seeded.brand_id)
    assert member not in (await carriers(pool, seeded.brand_id))["vip_kept"]  # points: not computed
    async with pool.connection() as conn:
        await conn.execute("UPDATE members SET tier = 'diamond' WHERE id = %s", (member,))
    await catch_up(pool, seeded.brand_id)
    assert member not in (await carriers(pool, seeded.brand_id))["vip_kept"]  # nor a tier
    assert (await gql(TAG, brand=seeded.code, tag="vip", ids=[str(member)]))["tagMembers"]["__typename"] == (
        "MembersTagged"
    )
    await catch_up(pool, seeded.brand_id)
    assert member in (await carriers(pool, seeded.brand_id))["vip_kept"]  # a tag write: computed


async def test_a_rule_change_too_large_for_the_request_is_left_to_the_scheduled_pass(
    pool: AsyncConnectionPool[Any], gql: GraphQL, seeded: Seeded, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A brand of millions takes longer than a request should: past COMPUTE_BUDGET a statement is
    cancelled, nothing of the computation is written, the answer says so, the schedule computes it."""
    await define(gql, seeded.code, "rich", "points >= 2000")
    real_evaluate = rule_tags.evaluate

    async def slow(conn: AsyncConnection[Any], brand_id: int, **kwargs: Any) -> Any:
        await conn.execute("SELECT pg_sleep(0.5)")  # as a statement over millions of members would
        return await real_evaluate(conn, brand_id, **kwargs)

    monkeypatch.setattr(resolvers.tags, "COMPUTE_BUDGET", 0.1)
    monkeypatch.setattr(rule_tags, "evaluate", slow)
    changed = await set_rule(gql, seeded.code, "rich", "points >= 3000")
    assert (changed["changed"], changed["added"], changed["removed"]) == (True, None, None)
    expected = {m for i, m in enumerate(seeded.ids) if 100 * i >= 3000}
    assert (await carriers(pool, seeded.brand_id))["rich"] != expected  # still the old rule's members
    monkeypatch.setattr(rule_tags, "evaluate", real_evaluate)
    await rule_tags.sync_due(pool)
    assert (await carriers(pool, seeded.brand_id))["rich"] == expected


async def test_a_pass_past_its_budget_writes_nothing(pool: AsyncConnectionPool[Any], seeded: Seeded) -> None:
    async with pool.connection() as conn:

        async def work() -> str:
            await conn.execute("UPDATE members SET city = 'budget' WHERE id = %s", (seeded.ids[0],))
            await conn.execute("SELECT pg_sleep(0.3)")
            return "done"

        assert await locked_pass(conn, seeded.brand_id, work, wait=True, budget=0.05) is None
        assert await locked_pass(conn, seeded.brand_id, work, wait=True, budget=None) == "done"
        row = await (await conn.execute("SELECT city FROM members WHERE id = %s", (seeded.ids[0],))).fetchone()
    assert row == ("budget",)  # written by the second pass only: the first rolled back

"""The demo group: `build_demo` and `omnimember demo`, on a few thousand members."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import subprocess
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from demo import loading as demo
from demo import people
from demo import tags as demo_tags
from demo.build import DemoError, DemoSummary, build_demo
from demo.loading import Ledger
from store.ledger import points
from store.members.phones import PhoneVault, mask, normalise
from store.tables import CHANNELS, DEFAULT_TIERS, TAG_CATEGORIES
from store.tags.catalog import check_code
from tests.conftest import TEST_SECRET, GraphQL
from tests.server import OMNIMEMBER

Rows = list[tuple[Any, ...]]


async def build(database_url: str, vault: PhoneVault, members: int, seed: int = 7, replace: bool = True) -> DemoSummary:
    """The demo with its ledger (`--points`). build_demo runs an event loop of its own: keep it off the test's."""
    return await asyncio.to_thread(
        build_demo, database_url, vault, members=members, seed=seed, replace=replace, ledger=Ledger.FULL
    )


async def rows(pool: AsyncConnectionPool[Any], query: str) -> Rows:
    """Runs ``query`` with ``%(demo)s`` bound to the ids of the demo brands; its rows, if any."""
    async with pool.connection() as conn:
        brands = await (await conn.execute("SELECT id FROM brands WHERE code IN ('teahouse', 'orchard')")).fetchall()
        cursor = await conn.execute(query, {"demo": [brand for (brand,) in brands]})
        found: Rows = await cursor.fetchall() if cursor.description else []
    return found


async def value(pool: AsyncConnectionPool[Any], query: str) -> Any:
    [[found]] = await rows(pool, query)
    return found


async def test_builds_two_brands_of_buyers_and_prospects(
    database_url: str, vault: PhoneVault, pool: AsyncConnectionPool[Any]
) -> None:
    summary = await build(database_url, vault, 3000)

    assert await rows(
        pool,
        "SELECT b.code, b.name, g.code, g.name, count(m.id) FROM brands b JOIN groups g ON g.id = b.group_id"
        " LEFT JOIN members m ON m.brand_id = b.id WHERE b.id = ANY(%(demo)s) GROUP BY 1, 2, 3, 4 ORDER BY 5 DESC",
    ) == [
        ("teahouse", "山茶 Teahouse", "demo", "Demo Group 示范集团", 1800),
        ("orchard", "果园 Orchard", "demo", "Demo Group 示范集团", 1200),
    ]
    assert (summary.members, summary.per_brand) == (3000, (("teahouse", 1800), ("orchard", 1200)))
    prospects = await value(pool, "SELECT count(*) FROM members WHERE brand_id = ANY(%(demo)s) AND status = 'prospect'")
    assert prospects == summary.prospects
    assert 0.25 <= prospects / 3000 <= 0.35
    # Prospects never bought; buyers' histories are consistent and within the last two / three years.
    assert await rows(
        pool,
        "SELECT status, bool_and(first_purchase_at IS NULL), bool_and(last_purchase_at IS NULL), max(order_count),"
        " max(total_spend), bool_and(tier = 'silver'), bool_and(points_balance = 0 AND growth_value = 0)"
        " FROM members WHERE brand_id = ANY(%(demo)s) AND status = 'prospect' GROUP BY status",
    ) == [("prospect", True, True, 0, 0, True, True)]
    [buyers] = await rows(
        pool,
        "SELECT bool_and(order_count >= 1), bool_and(total_spend >= 0),"  # refunds lower the spend
        " bool_and(registered_at <= first_purchase_at AND first_purchase_at <= last_purchase_at),"
        " bool_and(last_purchase_at <= now() AND last_purchase_at > now() - interval '2 years 1 day'),"
        " bool_and(registered_at > now() - interval '3 years 1 day'), max(order_count),"
        " percentile_disc(0.5) WITHIN GROUP (ORDER BY last_purchase_at)"
        " FROM members WHERE brand_id = ANY(%(demo)s) AND status = 'member'",
    )
    assert buyers[:5] == (True, True, True, True, True)
    assert buyers[5] >= 10  # a long tail of frequent buyers
    assert buyers[6] > dt.datetime.now(dt.UTC) - dt.timedelta(days=365)  # recent purchases dominate


async def test_buyers_tiers_and_profiles_look_real(
    database_url: str, vault: PhoneVault, pool: AsyncConnectionPool[Any]
) -> None:
    await build(database_url, vault, 3000)

    tiers: dict[str, int] = dict(
        await rows(
            pool,
            "SELECT tier, count(*) FROM members WHERE brand_id = ANY(%(demo)s) AND status = 'member' GROUP BY tier",
        )
    )
    buyers = sum(tiers.values())
    assert set(tiers) == set(DEFAULT_TIERS)
    assert 0.62 < tiers["silver"] / buyers < 0.78
    assert 0.14 < tiers["gold"] / buyers < 0.26
    assert tiers["silver"] > tiers["gold"] > tiers["platinum"] > tiers["diamond"] > 0
    spend_by_tier: dict[str, Decimal] = dict(
        await rows(pool, "SELECT tier, avg(total_spend) FROM members WHERE brand_id = ANY(%(demo)s) GROUP BY tier")
    )
    assert spend_by_tier["silver"] < spend_by_tier["gold"] < spend_by_tier["platinum"] < spend_by_tier["diamond"]

    profiles = await rows(
        pool, "SELECT display_name, gender, birthday, city FROM members WHERE brand_id = ANY(%(demo)s)"
    )
    assert all(re.fullmatch(r"[\u4e00-\u9fff]{2,3}", name) for name, *_ in profiles)
    assert Counter(name[0] for name, *_ in profiles).most_common(1)[0][0] in "王李张刘陈"
    genders = Counter(gender for _, gender, _, _ in profiles)
    assert genders["female"] > genders["male"] > genders["unknown"] > 0
    birthdays = [birthday for _, _, birthday, _ in profiles if birthday is not None]
    assert 0.8 < len(birthdays) / len(profiles) < 0.95
    ages = [(dt.date.today() - birthday).days / 365.25 for birthday in birthdays]
    assert min(ages) > 17.9
    assert 60 < max(ages) < 71.1  # born before 1970 too
    cities = Counter(city for *_, city in profiles)
    assert 40 <= len(cities) <= 100
    assert {city for city, _ in cities.most_common(3)} <= {"上海", "北京", "广州", "深圳", "成都", "杭州"}


async def test_members_have_one_to_four_identities_shaped_like_each_channel(
    database_url: str, vault: PhoneVault, pool: AsyncConnectionPool[Any]
) -> None:
    summary = await build(database_url, vault, 3000)

    per_member = await rows(
        pool,
        "SELECT count(i.id) FROM members m LEFT JOIN member_identities i ON i.member_id = m.id"
        " WHERE m.brand_id = ANY(%(demo)s) GROUP BY m.id",
    )
    counts = Counter(count for (count,) in per_member)
    assert set(counts) == {1, 2, 3, 4}
    assert counts[1] > counts[2] > counts[3] > counts[4]
    assert sum(counts.values()) == 3000
    assert sum(k * n for k, n in counts.items()) == summary.identities

    identities = await rows(
        pool,
        "SELECT i.channel, i.external_id, i.bound_at >= m.registered_at FROM member_identities i"
        " JOIN members m ON m.id = i.member_id AND m.brand_id = i.brand_id WHERE i.brand_id = ANY(%(demo)s)",
    )
    assert len(identities) == summary.identities  # every identity belongs to a member of its brand
    assert all(after_registration for *_, after_registration in identities)
    channels = Counter(channel for channel, *_ in identities)
    assert set(channels) == set(CHANNELS)
    assert {channel for channel, _ in channels.most_common(3)} == {"wechat", "tmall", "pos"}
    shapes = {
        "wechat": r"o[A-Za-z0-9_-]{27}",
        "tmall": r"[1-9]\d{10}",
        "jd": r"[1-9]\d{9}",
        "pos": r"(8860|6688)\d{12}",
        "wecom": r"wm[A-Za-z0-9_-]{30}",
        "douyin": r"_000[A-Za-z0-9_-]{32}",
        "mall": r"M\d{10}",
    }
    assert all(re.fullmatch(shapes[channel], external) for channel, external, _ in identities)


async def test_phones_are_stored_as_hash_ciphertext_and_mask_and_link_people_across_brands(
    database_url: str, vault: PhoneVault, pool: AsyncConnectionPool[Any]
) -> None:
    summary = await build(database_url, vault, 3000)

    members = await rows(
        pool,
        "SELECT b.code, m.phone_hash, m.phone_encrypted, m.phone_masked FROM members m"
        " JOIN brands b ON b.id = m.brand_id WHERE m.brand_id = ANY(%(demo)s)",
    )
    with_phone = [row for row in members if row[1] is not None]
    assert 0.80 < len(with_phone) / len(members) < 0.90
    for _, hashed, encrypted, masked in with_phone:
        number = vault.decrypt(encrypted)
        assert normalise(number) == number  # a valid mainland mobile number
        assert (hashed, masked) == (vault.hash(number), mask(number))
    for brand in ("teahouse", "orchard"):
        hashes = [hashed for code, hashed, _, _ in with_phone if code == brand]
        assert len(set(hashes)) == len(hashes)

    # The same person in both brands: same phone, same profile.
    shared = await rows(
        pool,
        "SELECT t.display_name = o.display_name AND t.city = o.city AND t.gender = o.gender"
        " AND t.birthday IS NOT DISTINCT FROM o.birthday"
        " FROM members t JOIN members o ON o.phone_hash = t.phone_hash"
        " WHERE t.brand_id = (SELECT id FROM brands WHERE code = 'teahouse')"
        " AND o.brand_id = (SELECT id FROM brands WHERE code = 'orchard')",
    )
    assert len(shared) == summary.shared_people
    assert 0.15 < len(shared) / 1200 < 0.25
    assert all(same for (same,) in shared)


SNAPSHOT = (
    "SELECT m.display_name, m.gender, m.birthday, m.city, m.tier, m.registered_at, m.order_count, m.total_spend,"
    " m.points_balance, m.growth_value, m.points_earned,"
    " m.phone_hash, array(SELECT i.channel || ':' || i.external_id FROM member_identities i"
    " WHERE i.member_id = m.id ORDER BY i.channel)"
    " FROM members m WHERE m.brand_id = ANY(%(demo)s) ORDER BY m.brand_id, m.id"
)
PHONES = (
    "SELECT phone_hash, phone_encrypted FROM members"
    " WHERE brand_id = ANY(%(demo)s) AND phone_hash IS NOT NULL ORDER BY brand_id, id"
)


async def test_the_same_seed_builds_the_same_data(
    database_url: str, vault: PhoneVault, pool: AsyncConnectionPool[Any]
) -> None:
    await build(database_url, vault, 2000, seed=11)
    first, first_phones = await rows(pool, SNAPSHOT), await rows(pool, PHONES)
    await build(database_url, vault, 2000, seed=11)
    again, again_phones = await rows(pool, SNAPSHOT), await rows(pool, PHONES)
    await build(database_url, vault, 2000, seed=12)
    other = await rows(pool, SNAPSHOT)

    assert again == first
    assert sum(a != b for a, b in zip(other, first, strict=True)) > 1900
    # Only the AES-GCM nonces differ: fresh ciphertexts of the same numbers.
    assert len(first_phones) == len(again_phones) > 1500
    for (hashed, encrypted), (hashed_again, encrypted_again) in zip(first_phones, again_phones, strict=True):
        assert hashed == hashed_again
        assert encrypted != encrypted_again
        assert vault.decrypt(encrypted) == vault.decrypt(encrypted_again)


async def test_an_existing_demo_is_kept_unless_replace_is_asked(
    database_url: str, vault: PhoneVault, pool: AsyncConnectionPool[Any]
) -> None:
    await build(database_url, vault, 1500)
    before = await rows(pool, "SELECT min(id), max(id), count(*) FROM members WHERE brand_id = ANY(%(demo)s)")
    # Rows that hang off members: replace must clear them too.
    await rows(
        pool,
        "INSERT INTO member_merges (brand_id, survivor_id, merged_id, reason, moved)"
        " SELECT brand_id, min(id), max(id), 'test', '{}' FROM members WHERE brand_id = ANY(%(demo)s)"
        " GROUP BY brand_id",
    )
    await rows(
        pool,
        "INSERT INTO tier_changes (brand_id, member_id, from_tier, to_tier, cause)"
        " SELECT brand_id, id, 'silver', 'gold', 'test' FROM members WHERE brand_id = ANY(%(demo)s) LIMIT 5",
    )

    with pytest.raises(DemoError, match=r"already have 1,500 members: pass --replace"):
        await build(database_url, vault, 1000, replace=False)
    assert await rows(pool, "SELECT min(id), max(id), count(*) FROM members WHERE brand_id = ANY(%(demo)s)") == before

    await build(database_url, vault, 1000, replace=True)
    [(low, _, count)] = await rows(
        pool, "SELECT min(id), max(id), count(*) FROM members WHERE brand_id = ANY(%(demo)s)"
    )
    assert count == 1000
    assert low > before[0][1]  # fresh ids from the sequence
    assert await value(pool, "SELECT count(*) FROM member_merges WHERE brand_id = ANY(%(demo)s)") == 0
    assert await value(pool, "SELECT count(*) FROM tier_changes WHERE brand_id = ANY(%(demo)s)") == 0
    orphans = "SELECT count(*) FROM member_identities i LEFT JOIN members m ON m.id = i.member_id WHERE m.id IS NULL"
    assert await value(pool, orphans) == 0


async def test_ids_reserved_from_the_sequence_stay_clear_of_later_members(
    database_url: str, vault: PhoneVault, pool: AsyncConnectionPool[Any]
) -> None:
    await build(database_url, vault, 500)
    highest = await value(pool, "SELECT max(id) FROM members")
    async with pool.connection() as conn:
        [[next_id]] = await (await conn.execute("SELECT nextval(pg_get_serial_sequence('members', 'id'))")).fetchall()
    assert next_id > highest


async def test_builds_with_foreign_key_checks_where_triggers_cannot_be_skipped(
    database_url: str, vault: PhoneVault, pool: AsyncConnectionPool[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    await build(database_url, vault, 800)
    monkeypatch.setattr(demo, "_skip_row_triggers", lambda conn: False)
    summary = await build(database_url, vault, 600)  # the delete and the load now check every row
    assert summary.members == await value(pool, "SELECT count(*) FROM members WHERE brand_id = ANY(%(demo)s)") == 600


def test_the_fast_path_clears_every_table_that_references_members(database_url: str) -> None:
    """Fails when a new table references members (or their dependents) and demo.py does not clear it:
    the demo would then check every foreign key row by row, three times slower."""
    with psycopg.connect(database_url) as conn:
        assert demo._skip_row_triggers(conn)
        assert conn.execute("SHOW session_replication_role").fetchone() == ("replica",)
        conn.rollback()


def test_permutations_give_distinct_values_inside_the_domain() -> None:
    rand = people._Random(3, "test")
    for domain in (1, 2, 1000, 4099, 10**10):
        size = min(domain, 5000)
        values = rand.permute("p", np.arange(size, dtype=np.uint64), domain)
        assert len(set(values.tolist())) == size
        assert int(values.max()) < domain
    tokens = people._tokens(rand, "t", np.arange(100_000, dtype=np.uint64), "o", 27)
    assert len(set(tokens.tolist())) == 100_000


# Members whose row disagrees with their orders, entries or lots (none expected).
INCONSISTENT_MEMBERS = """
WITH e AS (SELECT member_id, sum(amount) AS total, min(balance_after) AS low FROM points_entries
           WHERE brand_id = ANY(%(demo)s) GROUP BY member_id),
     l AS (SELECT member_id, sum(remaining) AS total FROM points_lots
           WHERE brand_id = ANY(%(demo)s) GROUP BY member_id),
     o AS (SELECT member_id, count(*) AS n, sum(amount - refunded) AS spend, min(paid_at) AS first,
                  max(paid_at) AS last, sum(growth_earned - growth_reversed) AS growth, sum(points_earned) AS earned
           FROM orders WHERE brand_id = ANY(%(demo)s) GROUP BY member_id)
SELECT m.id FROM members m LEFT JOIN e ON e.member_id = m.id LEFT JOIN l ON l.member_id = m.id
LEFT JOIN o ON o.member_id = m.id
WHERE m.brand_id = ANY(%(demo)s) AND NOT (
    m.points_balance >= 0 AND m.points_balance = coalesce(e.total, 0) AND m.points_balance = coalesce(l.total, 0)
    AND coalesce(e.low, 0) >= 0 AND m.order_count = coalesce(o.n, 0) AND m.total_spend = coalesce(o.spend, 0)
    AND m.first_purchase_at IS NOT DISTINCT FROM o.first AND m.last_purchase_at IS NOT DISTINCT FROM o.last
    AND m.growth_value = coalesce(o.growth, 0) AND m.points_earned = coalesce(o.earned, 0))
"""
# Entries whose balance_after is not the running balance in id order.
WRONG_RUNNING_BALANCES = """
SELECT id FROM (SELECT id, balance_after, sum(amount) OVER (PARTITION BY member_id ORDER BY id) AS running
                FROM points_entries WHERE brand_id = ANY(%(demo)s)) AS r WHERE balance_after <> running
"""
# Orders whose points_earned is not the sum of their EARN entries, or whose lot expires at the wrong time.
WRONG_ORDERS = """
SELECT o.id FROM orders o LEFT JOIN points_entries e ON e.posting_id = o.posting_id AND e.kind = 'earn'
LEFT JOIN points_lots l ON l.entry_id = e.id JOIN points_postings p ON p.id = o.posting_id
WHERE o.brand_id = ANY(%(demo)s)
GROUP BY o.id, o.points_earned, o.paid_at, o.channel, o.external_order_id, p.idempotency_key
HAVING o.points_earned <> coalesce(sum(e.amount), 0)
    OR p.idempotency_key <> 'order:' || o.channel || ':' || o.external_order_id
    OR bool_or(l.expires_at <> make_timestamptz(
           extract(year FROM o.paid_at AT TIME ZONE 'Asia/Shanghai')::int + 3, 1, 1, 0, 0, 0, 'Asia/Shanghai'))
    OR bool_or(l.amount <> e.amount)
"""
# Lots whose draws do not account for what they lost, debits whose draws do not add up to them.
WRONG_DRAWS = """
SELECT 'lot', l.id FROM points_lots l LEFT JOIN lot_draws d ON d.lot_id = l.id WHERE l.brand_id = ANY(%(demo)s)
GROUP BY l.id HAVING l.amount - l.remaining <> coalesce(sum(d.amount), 0)
UNION ALL
SELECT 'entry', e.id FROM points_entries e LEFT JOIN lot_draws d ON d.entry_id = e.id
WHERE e.brand_id = ANY(%(demo)s) AND e.amount < 0 GROUP BY e.id HAVING -e.amount <> coalesce(sum(d.amount), 0)
"""


async def test_buyers_have_orders_refunds_and_expired_points_that_keep_every_ledger_invariant(
    database_url: str, vault: PhoneVault, pool: AsyncConnectionPool[Any]
) -> None:
    summary = await build(database_url, vault, 3000)

    assert await rows(pool, INCONSISTENT_MEMBERS) == []
    assert await rows(pool, WRONG_RUNNING_BALANCES) == []
    assert await rows(pool, WRONG_ORDERS) == []
    assert await rows(pool, WRONG_DRAWS) == []
    orders = await value(pool, "SELECT count(*) FROM orders WHERE brand_id = ANY(%(demo)s)")
    assert (
        orders
        == summary.orders
        == await value(pool, "SELECT sum(order_count) FROM members WHERE brand_id = ANY(%(demo)s)")
    )
    # About 5% refunded in full, their points taken back from their own lot.
    [(refunded, reversed_in_full)] = await rows(
        pool,
        "SELECT count(*), bool_and(points_reversed = points_earned AND growth_reversed = growth_earned)"
        " FROM orders WHERE brand_id = ANY(%(demo)s) AND refunded = amount",
    )
    assert 0.02 < refunded / orders < 0.08
    assert reversed_in_full
    assert (
        await value(
            pool,
            "SELECT count(*) FROM orders o JOIN points_entries e ON e.posting_id = o.posting_id"
            " JOIN points_lots l ON l.entry_id = e.id WHERE o.brand_id = ANY(%(demo)s) AND o.refunded > 0"
            " AND l.remaining > 0",
        )
        == 0
    )
    # Some lots expired, each member's by one EXPIRE entry; nothing expired is left open.
    [(expire_entries, expiring_members)] = await rows(
        pool,
        "SELECT count(*), count(DISTINCT member_id) FROM points_entries"
        " WHERE brand_id = ANY(%(demo)s) AND kind = 'expire'",
    )
    assert expire_entries == expiring_members > 0
    assert (
        await value(
            pool,
            "SELECT count(*) FROM points_lots WHERE brand_id = ANY(%(demo)s) AND expires_at <= now() AND remaining > 0",
        )
        == 0
    )
    assert (
        await value(pool, "SELECT count(*) FROM points_entries WHERE brand_id = ANY(%(demo)s) AND kind = 'reverse'") > 0
    )


async def test_the_live_expiry_job_finds_nothing_the_demo_already_expired(
    database_url: str, vault: PhoneVault, pool: AsyncConnectionPool[Any]
) -> None:
    await build(database_url, vault, 2000)
    entries = "SELECT count(*) FROM points_entries WHERE brand_id = ANY(%(demo)s)"
    before = await value(pool, entries)
    [(member, brand)] = await rows(
        pool,
        "SELECT member_id, brand_id FROM points_entries WHERE brand_id = ANY(%(demo)s) AND kind = 'expire' LIMIT 1",
    )
    now = dt.datetime.now(dt.UTC)
    demo_brands = {brand_id for (brand_id,) in await rows(pool, "SELECT id FROM brands WHERE id = ANY(%(demo)s)")}
    async with pool.connection() as conn, conn.transaction():
        found = await points.members_with_expired_lots(conn, now, 0, 1_000_000)
        # Other tests may leave expired lots of their own brands: only the demo's count here.
        assert [pair for pair in found if pair[1] in demo_brands] == []
        assert await points.expire_member(conn, brand, member, now) == 0
    assert await value(pool, entries) == before
    assert await rows(pool, INCONSISTENT_MEMBERS) == []


async def test_a_demo_members_points_history_is_served(
    database_url: str, vault: PhoneVault, pool: AsyncConnectionPool[Any], gql: GraphQL
) -> None:
    await build(database_url, vault, 500)
    [(member, count, balance)] = await rows(
        pool,
        "SELECT e.member_id, count(*), min(m.points_balance) FROM points_entries e JOIN members m ON m.id = e.member_id"
        " WHERE e.brand_id = ANY(%(demo)s) GROUP BY e.member_id ORDER BY count(*) DESC, e.member_id LIMIT 1",
    )
    query = "query($id: ID!) { member(id: $id) { pointsBalance pointsHistory(first: 100) { nodes { kind amount } } } }"
    found = (await gql(query, id=str(member)))["member"]
    assert found["pointsBalance"] == balance
    assert len(found["pointsHistory"]["nodes"]) == count > 1
    assert {node["kind"] for node in found["pointsHistory"]["nodes"]} >= {"EARN"}


async def test_without_points_buyers_have_profiles_only(
    database_url: str, vault: PhoneVault, pool: AsyncConnectionPool[Any]
) -> None:
    summary = await asyncio.to_thread(build_demo, database_url, vault, members=800, seed=7, replace=True)
    assert summary.orders == 0
    assert await value(pool, "SELECT count(*) FROM orders WHERE brand_id = ANY(%(demo)s)") == 0
    assert await rows(
        pool,
        "SELECT bool_and(points_balance = 0 AND growth_value = 0 AND points_earned = 0 AND total_spend >= order_count)"
        " FROM members WHERE brand_id = ANY(%(demo)s)",
    ) == [(True,)]


def _cli(database_url: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TEST_DATABASE_URL"}
    env |= {"DATABASE_URL": database_url, "OMNIMEMBER_HOME": str(tmp_path), "OMNIMEMBER_SECRET": TEST_SECRET}
    return subprocess.run([*OMNIMEMBER, "demo", *args], env=env, capture_output=True, text=True, timeout=120)


async def test_the_command_refuses_to_overwrite_without_replace(
    database_url: str, vault: PhoneVault, tmp_path: Path
) -> None:
    await build(database_url, vault, 300)

    refused = await asyncio.to_thread(_cli, database_url, tmp_path, "--members", "200")
    assert refused.returncode == 1
    assert (
        refused.stderr.strip()
        == "error: the demo brands already have 300 members: pass --replace (replace=True) to rebuild them"
    )

    replaced = await asyncio.to_thread(_cli, database_url, tmp_path, "--members", "200", "--replace", "--seed", "3")
    assert replaced.returncode == 0, replaced.stderr
    assert "200 members (teahouse 120, orchard 80)" in " ".join(replaced.stdout.split())


# --- tags (--tags) ----------------------------------------------------------------------------------------


async def build_tagged(database_url: str, vault: PhoneVault, members: int, seed: int = 7) -> DemoSummary:
    return await asyncio.to_thread(
        build_demo, database_url, vault, members=members, seed=seed, replace=True, ledger=Ledger.FULL, tags=True
    )


async def test_tags_define_two_hundred_words_of_the_tag_language_per_brand(
    database_url: str, vault: PhoneVault, pool: AsyncConnectionPool[Any]
) -> None:
    await build_tagged(database_url, vault, 500)
    per_brand = await rows(
        pool,
        "SELECT brand_id, count(*), array_agg(code), array_agg(DISTINCT category), bool_and(name <> '')"
        " FROM tag_definitions WHERE brand_id = ANY(%(demo)s) GROUP BY brand_id",
    )
    assert len(per_brand) == 2
    for _, count, codes, categories, named in per_brand:
        assert count == len(set(codes)) == 200
        assert all(check_code(code) == code for code in codes)
        assert set(categories) == set(TAG_CATEGORIES)
        assert named
        assert {"app_user", "lc_at_risk", "rfm_champion", "src_tmall", "高潜客户"} <= set(codes)


async def test_tags_are_skewed_like_real_catalogs(
    database_url: str, vault: PhoneVault, pool: AsyncConnectionPool[Any]
) -> None:
    summary = await build_tagged(database_url, vault, 4000)
    [(assignments, members)] = await rows(
        pool,
        "SELECT count(*), (SELECT count(*) FROM members WHERE brand_id = ANY(%(demo)s)) FROM member_tags"
        " WHERE brand_id = ANY(%(demo)s)",
    )
    assert assignments == summary.tag_assignments
    assert 13 <= assignments / members <= 17  # ~15 tags per member
    shares = await rows(
        pool,
        "SELECT d.code, count(t.member_id)::float / (SELECT count(*) FROM members m WHERE m.brand_id = d.brand_id)"
        " FROM tag_definitions d LEFT JOIN member_tags t ON t.tag_id = d.id"
        " WHERE d.brand_id = (SELECT id FROM brands WHERE code = 'teahouse') GROUP BY d.id",
    )
    share: dict[str, float] = dict(shares)
    bands = Counter(
        "common" if p >= 0.3 else "medium" if p >= 0.01 else "rare" if p > 0 else "unseen" for _, p in shares
    )
    assert 6 <= bands["common"] <= 14  # a few on 30-60% of members
    assert bands["medium"] >= 80  # many on 1-20%
    assert bands["rare"] + bands["unseen"] >= 50  # many below 1%
    assert max(share.values()) <= 0.65
    # The independent tags land near their targets (sampling noise on 2,400 members aside).
    targets = demo_tags.catalog("teahouse", 7)
    for tag in targets:
        if tag.share >= 0.01:
            assert abs(share[tag.code] - tag.share) < 0.05, tag
    # Per member: heavy and light members, almost nobody without a tag.
    low, median, high = await value(
        pool,
        "SELECT percentile_disc(ARRAY[0.01, 0.5, 0.99]) WITHIN GROUP (ORDER BY n) FROM"
        " (SELECT count(t.tag_id) AS n FROM members m LEFT JOIN member_tags t ON t.member_id = m.id"
        "  WHERE m.brand_id = ANY(%(demo)s) GROUP BY m.id) AS per_member",
    )
    assert 1 <= low <= 6
    assert 10 <= median <= 18
    assert 28 <= high <= 50


# Assignments that break an invariant: a row of another brand's member or tag, of a merged or missing
# member (foreign keys are not checked during the load), expired, or assigned outside the member's life.
BAD_ASSIGNMENTS = """
SELECT t.member_id, t.tag_id FROM member_tags t
LEFT JOIN members m ON m.id = t.member_id LEFT JOIN tag_definitions d ON d.id = t.tag_id
WHERE t.brand_id = ANY(%(demo)s) AND (m.id IS NULL OR d.id IS NULL OR m.brand_id <> t.brand_id
   OR d.brand_id <> t.brand_id OR m.merged_into IS NOT NULL OR t.source <> 'demo'
   OR t.expires_at <= now() OR t.assigned_at < m.registered_at OR t.assigned_at > now()
   OR (d.ttl_days IS NULL) <> (t.expires_at IS NULL)
   OR t.expires_at <> t.assigned_at + make_interval(days => d.ttl_days))
"""
# Members whose derived tags disagree with their record: one lifecycle stage (introduction exactly for
# prospects), one RFM segment for buyers and none for prospects, one source channel they hold.
WRONG_DERIVED = """
SELECT m.id FROM members m
LEFT JOIN member_tags t ON t.member_id = m.id LEFT JOIN tag_definitions d ON d.id = t.tag_id
WHERE m.brand_id = ANY(%(demo)s)
GROUP BY m.id, m.status
HAVING count(*) FILTER (WHERE d.category = 'lifecycle') <> 1
    OR bool_or(d.code = 'lc_introduction') IS DISTINCT FROM (m.status = 'prospect')
    OR count(*) FILTER (WHERE d.category = 'rfm') <> (CASE m.status WHEN 'member' THEN 1 ELSE 0 END)
    OR count(*) FILTER (WHERE d.code LIKE 'src\\_%%') <> 1
    OR NOT bool_or(d.code LIKE 'src\\_%%' AND substr(d.code, 5) IN
           (SELECT channel FROM member_identities i WHERE i.member_id = m.id))
"""


async def test_tags_belong_to_live_members_of_the_same_brand_and_follow_their_records(
    database_url: str, vault: PhoneVault, pool: AsyncConnectionPool[Any]
) -> None:
    await build_tagged(database_url, vault, 3000)
    assert await rows(pool, BAD_ASSIGNMENTS) == []
    assert await rows(pool, WRONG_DERIVED) == []
    # The checks do catch a bad row: expire one assignment, take one member's lifecycle tag away.
    [(member, tag)] = await rows(
        pool,
        "UPDATE member_tags SET expires_at = now() - interval '1 day' WHERE (member_id, tag_id) ="
        " (SELECT member_id, tag_id FROM member_tags WHERE brand_id = ANY(%(demo)s) LIMIT 1)"
        " RETURNING member_id, tag_id",
    )
    assert await rows(pool, BAD_ASSIGNMENTS) == [(member, tag)]
    [(member,)] = await rows(
        pool,
        "DELETE FROM member_tags WHERE (member_id, tag_id) = (SELECT t.member_id, t.tag_id FROM member_tags t"
        " JOIN tag_definitions d ON d.id = t.tag_id WHERE t.brand_id = ANY(%(demo)s) AND d.category = 'lifecycle'"
        " LIMIT 1) RETURNING member_id",
    )
    assert await rows(pool, WRONG_DERIVED) == [(member,)]
    assert (
        await value(pool, "SELECT count(*) FROM member_tags WHERE brand_id = ANY(%(demo)s) AND expires_at IS NOT NULL")
        > 0
    )


TAG_SNAPSHOT = """
SELECT b.code, m.id - min(m.id) OVER (PARTITION BY m.brand_id), d.code, t.assigned_at, t.expires_at
FROM member_tags t JOIN members m ON m.id = t.member_id JOIN tag_definitions d ON d.id = t.tag_id
JOIN brands b ON b.id = t.brand_id WHERE t.brand_id = ANY(%(demo)s) ORDER BY 1, 2, 3
"""


async def test_the_same_seed_tags_the_same_members(
    database_url: str, vault: PhoneVault, pool: AsyncConnectionPool[Any]
) -> None:
    await build_tagged(database_url, vault, 1500, seed=5)
    first = await rows(pool, TAG_SNAPSHOT)
    await build_tagged(database_url, vault, 1500, seed=5)
    assert await rows(pool, TAG_SNAPSHOT) == first
    await build_tagged(database_url, vault, 1500, seed=6)
    assert await rows(pool, TAG_SNAPSHOT) != first


async def test_demo_tags_are_served_and_replaced(
    database_url: str, vault: PhoneVault, pool: AsyncConnectionPool[Any], gql: GraphQL
) -> None:
    await build_tagged(database_url, vault, 800)
    [(member, count)] = await rows(
        pool,
        "SELECT member_id, count(*) FROM member_tags WHERE brand_id = ANY(%(demo)s)"
        " GROUP BY member_id ORDER BY count(*) DESC, member_id LIMIT 1",
    )
    found = (await gql("query($id: ID!) { member(id: $id) { tags { code source } } }", id=str(member)))["member"]
    assert len(found["tags"]) == count > 10
    assert {tag["source"] for tag in found["tags"]} == {"demo"}
    catalog = (await gql('{ tags(brand: "orchard") { code memberCount } }'))["tags"]
    counted: dict[str, int] = dict(
        await rows(
            pool,
            "SELECT d.code, count(*) FROM member_tags t JOIN tag_definitions d ON d.id = t.tag_id"
            " WHERE d.brand_id = (SELECT id FROM brands WHERE code = 'orchard') GROUP BY d.code",
        )
    )
    assert {tag["code"]: tag["memberCount"] for tag in catalog} == {
        tag["code"]: counted.get(tag["code"], 0) for tag in catalog
    }
    # Replacing the demo without tags takes the assignments with the members (the catalog stays).
    await asyncio.to_thread(build_demo, database_url, vault, members=300, seed=7, replace=True)
    assert await value(pool, "SELECT count(*) FROM member_tags WHERE brand_id = ANY(%(demo)s)") == 0
    assert await value(pool, "SELECT count(*) FROM tag_definitions WHERE brand_id = ANY(%(demo)s)") == 400

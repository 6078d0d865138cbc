"""Per-request DataLoaders: every to-one and to-many read is batched into one statement.

Each batch takes its own pooled connection, since loaders run concurrently and a connection
serves one statement at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Sequence
from functools import cached_property
from typing import Any

from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from strawberry.dataloader import DataLoader

from store.audiences import lifecycle_rules, rfm_store, rule_tags, stage_history
from store.audiences.deltas import Freshness, freshness_of_brands
from store.audiences.lifecycle_rules import RulesVersion
from store.audiences.rfm_store import StoredThresholds
from store.brands import ScopedBrands
from store.errors import DomainError
from store.ledger import history
from store.members import consent, merges, profiles
from store.sql import Row, group_by, index_by
from store.tags import assignments, catalog, rules

Fetch = Callable[[AsyncConnection[Any], Sequence[Any]], Awaitable[list[Row]]]
Cached = Callable[[AsyncConnectionPool[Any], Sequence[Any]], Awaitable[list[Row]]]
Grouped = Callable[[AsyncConnection[Any], Sequence[Any]], Awaitable[list[list[Row]]]]


class Loaders:
    """The loaders of one request, named ``<thing>_by_<key>``."""

    def __init__(self, pool: AsyncConnectionPool[Any], directory: ScopedBrands) -> None:
        self._pool = pool
        self._directory = directory

    # Each loader is made the first time a request asks for it: most requests use two or three.
    @cached_property
    def member_by_id(self) -> DataLoader[int, Row | None]:
        return DataLoader(self._members)

    @cached_property
    def brand_by_id(self) -> DataLoader[int, Row | None]:
        return DataLoader(self._cached(self._directory.brands, "id"))

    @cached_property
    def group_by_id(self) -> DataLoader[int, Row | None]:
        return DataLoader(self._cached(self._directory.groups, "id"))

    @cached_property
    def tiers_by_brand(self) -> DataLoader[int, list[Row]]:
        return DataLoader(self._cached_many(self._directory.tiers, "brand_id"))

    @cached_property
    def audience_index_by_brand(self) -> DataLoader[int, Freshness]:
        return DataLoader(self._audience_indexes)

    async def _audience_indexes(self, brand_ids: Sequence[int]) -> list[Freshness]:
        """On one connection: a list of every brand must not take a pooled connection per brand."""
        async with self._pool.connection() as conn:
            found = await freshness_of_brands(conn, brand_ids)
        return [found[brand_id] for brand_id in brand_ids]

    @cached_property
    def lifecycle_rules_by_brand(self) -> DataLoader[int, RulesVersion]:
        return DataLoader(self._one_by_one(lifecycle_rules.current_rules))

    @cached_property
    def lifecycle_rule_versions_by_brand(self) -> DataLoader[int, list[RulesVersion]]:
        return DataLoader(self._one_by_one(lifecycle_rules.rules_history))

    @cached_property
    def rfm_by_brand(self) -> DataLoader[int, StoredThresholds]:
        return DataLoader(self._one_by_one(rfm_store.current))

    def _one_by_one(
        self, load: Callable[[AsyncConnection[Any], int], Awaitable[Any]]
    ) -> Callable[[Sequence[int]], Awaitable[list[Any]]]:
        """Per brand, one after another on one connection: a list of every brand must not take a
        pooled connection per brand (the pool runs dry, the request past its deadline)."""

        async def batch(brand_ids: Sequence[int]) -> list[Any]:
            async with self._pool.connection() as conn:
                return [await load(conn, brand_id) for brand_id in brand_ids]

        return batch

    @cached_property
    def identities_by_member(self) -> DataLoader[int, list[Row]]:
        return DataLoader(self._many(profiles.identities_by_member, "member_id"))

    @cached_property
    def member_id_by_identity(self) -> DataLoader[tuple[str, str, str], int | None]:
        """(brand code, channel, external id) → the member bound to it; None for a brand the caller
        does not see, exactly as for one that does not exist (federation's entity references)."""
        return DataLoader(self._identities)

    @cached_property
    def merge_by_id(self) -> DataLoader[int, Row | None]:
        return DataLoader(self._one(merges.merges_by_id, "id"))

    @cached_property
    def merges_by_member(self) -> DataLoader[int, list[Row]]:
        return DataLoader(self._grouped(merges.merges_by_member))

    @cached_property
    def members_by_person(self) -> DataLoader[tuple[int, bytes], list[Row]]:
        return DataLoader(self._people)

    @cached_property
    def posting_by_id(self) -> DataLoader[int, Row | None]:
        return DataLoader(self._one(history.postings_by_id, "id"))

    @cached_property
    def entries_by_posting(self) -> DataLoader[int, list[Row]]:
        return DataLoader(self._many(history.entries_by_posting, "posting_id"))

    @cached_property
    def order_by_id(self) -> DataLoader[int, Row | None]:
        return DataLoader(self._one(history.orders_by_id, "id"))

    @cached_property
    def tier_changes_by_member(self) -> DataLoader[int, list[Row]]:
        return DataLoader(self._many(history.tier_changes_by_member, "member_id"))

    @cached_property
    def stage_changes_by_member(self) -> DataLoader[int, list[Row]]:
        return DataLoader(self._many(stage_history.stage_histories, "member_id"))

    @cached_property
    def stage_by_member(self) -> DataLoader[int, Row | None]:
        return DataLoader(self._one(stage_history.current_stages, "member_id"))

    @cached_property
    def tags_by_member(self) -> DataLoader[int, list[Row]]:
        return DataLoader(self._many(assignments.tags_by_member, "member_id"))

    @cached_property
    def consents_by_member(self) -> DataLoader[int, list[Row]]:
        return DataLoader(self._many(consent.consents_by_member, "member_id"))

    @cached_property
    def member_count_by_tag(self) -> DataLoader[int, int]:
        return DataLoader(self._tag_counts)

    @cached_property
    def rule_versions_by_tag(self) -> DataLoader[int, list[rules.RuleVersion]]:
        return DataLoader(self._rule_versions)

    @cached_property
    def rule_freshness_by_tag(self) -> DataLoader[int, rule_tags.RuleFreshness | None]:
        return DataLoader(self._rule_freshness)

    async def _rule_freshness(self, keys: list[int]) -> list[rule_tags.RuleFreshness | None]:
        async with self._pool.connection() as conn:
            found = await rule_tags.freshness_of(conn, keys)
        return [found[key] for key in keys]

    async def _rule_versions(self, keys: list[int]) -> list[list[rules.RuleVersion]]:
        async with self._pool.connection() as conn:
            found = await rules.history(conn, keys)
        return [found.get(key, []) for key in keys]

    def _in_scope(self, rows: list[Row]) -> list[Row]:
        """Rows of brands the caller sees: the others load as missing (the same answer as no row)."""
        sees = self._directory.sees
        return [row for row in rows if sees(row["brand_id"])]

    def _one(self, fetch: Fetch, key: str) -> Callable[[list[Any]], Awaitable[list[Row | None]]]:
        async def load(keys: list[Any]) -> list[Row | None]:
            async with self._pool.connection() as conn:
                return index_by(self._in_scope(await fetch(conn, keys)), key, keys)

        return load

    def _many(self, fetch: Fetch, key: str) -> Callable[[list[Any]], Awaitable[list[list[Row]]]]:
        async def load(keys: list[Any]) -> list[list[Row]]:
            async with self._pool.connection() as conn:
                return group_by(await fetch(conn, keys), key, keys)

        return load

    async def _members(self, keys: list[int]) -> list[Row | None]:
        async with self._pool.connection() as conn:
            rows = self._in_scope(await profiles.members_by_id(conn, keys))
        for row in rows:  # they came with their identities: spare that loader a statement
            self.identities_by_member.prime(row["id"], profiles.identities_of(row))
        return index_by(rows, "id", keys)

    async def _identities(self, keys: list[tuple[str, str, str]]) -> list[int | None]:
        """All keys on one connection: each brand code looked up once, then one statement."""
        brand_ids: dict[str, int] = {}
        async with self._pool.connection() as conn:
            for code in dict.fromkeys(brand for brand, _, _ in keys):
                with contextlib.suppress(DomainError):  # UNKNOWN_BRAND: unknown or out of scope
                    brand_ids[code] = (await self._directory.get(conn, code))["id"]
            known = [(brand_ids[b], c, e) for b, c, e in keys if b in brand_ids]
            rows = await profiles.member_ids_by_identity(conn, known) if known else []
        bound = {(r["brand_id"], r["channel"], r["external_id"]): r["member_id"] for r in rows}
        return [bound.get((brand_ids[b], c, e)) if b in brand_ids else None for b, c, e in keys]

    def _cached(self, fetch: Cached, key: str) -> Callable[[list[Any]], Awaitable[list[Row | None]]]:
        async def load(keys: list[Any]) -> list[Row | None]:
            return index_by(await fetch(self._pool, keys), key, keys)

        return load

    def _cached_many(self, fetch: Cached, key: str) -> Callable[[list[Any]], Awaitable[list[list[Row]]]]:
        async def load(keys: list[Any]) -> list[list[Row]]:
            return group_by(await fetch(self._pool, keys), key, keys)

        return load

    def _grouped(self, fetch: Grouped) -> Callable[[list[Any]], Awaitable[list[list[Row]]]]:
        async def load(keys: list[Any]) -> list[list[Row]]:
            async with self._pool.connection() as conn:
                return await fetch(conn, keys)

        return load

    async def _tag_counts(self, keys: list[int]) -> list[int]:
        async with self._pool.connection() as conn:
            counts = {row["tag_id"]: row["members"] for row in await catalog.live_counts(conn, keys)}
        return [counts.get(key, 0) for key in keys]

    async def _people(self, keys: list[tuple[int, bytes]]) -> list[list[Row]]:
        """Live members per (group id, phone hash): one person's memberships across the group."""
        async with self._pool.connection() as conn:
            rows = await profiles.members_sharing_phone(
                conn,
                group_ids=sorted({g for g, _ in keys}),
                hashes=sorted({h for _, h in keys}),
            )
        buckets: dict[tuple[int, bytes], list[Row]] = {key: [] for key in keys}
        for row in self._in_scope(rows):
            bucket = buckets.get((row["group_id"], row["phone_hash"]))
            if bucket is not None:
                bucket.append(row)
        return [buckets[key] for key in keys]

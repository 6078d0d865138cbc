"""The tag catalog and tag assignments."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import AsyncConnection

from resolvers import audiences
from resolvers.context import Info
from resolvers.cursors import parse_id
from store.audiences import rule_tags
from store.errors import DomainError, ErrorCode
from store.sql import Row
from store.tags import assignments as tags
from store.tags import catalog, rules
from store.transactions import transact
from tagquery import GRAMMAR_VERSION

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Tagging:
    tag: Row
    tagged: int
    added: int
    expires_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class Untagging:
    tag: Row
    removed: int


def _member_ids(values: Sequence[str]) -> list[int]:
    """Ids as numbers; UNKNOWN_MEMBERS naming those that cannot be ids. The cap is checked first."""
    if len(values) > tags.MAX_MEMBER_IDS:
        raise tags.TooManyIdsError(len(values))
    parsed = [parse_id(value) for value in values]
    bad = [value for value, member_id in zip(values, parsed, strict=True) if member_id is None]
    if bad:
        raise tags.UnknownMembersError(bad, [])
    return [member_id for member_id in parsed if member_id is not None]


async def _tag(info: Info, conn: AsyncConnection[Any], brand: str, code: str) -> Row:
    brand_id: int = (await info.context.brands.get(conn, brand))["id"]
    return await catalog.definition(conn, brand_id=brand_id, code=code)


def _forget_cached(info: Info) -> None:
    """The request's cached assignments and counts are stale after a write."""
    info.context.loaders.tags_by_member.clear_all()
    info.context.loaders.member_count_by_tag.clear_all()


COMPUTE_WAIT = 2.0  # seconds a rule change waits for the brand's index lock, then leaves it to the schedule
# Seconds a statement of that computation may take within the request (a brand of millions takes
# longer): past it the scheduled pass computes the tag, and the answer's added and removed are null.
COMPUTE_BUDGET = 10.0


async def define_tag(
    info: Info, *, brand: str, code: str, name: str, category: str, ttl_days: int | None, rule: str | None = None
) -> Row:
    """Add a tag; with a rule, checked and kept in the same transaction, then computed (`_compute`)."""

    async def work(conn: AsyncConnection[Any]) -> Row:
        brand_id: int = (await info.context.brands.get(conn, brand))["id"]
        if rule is not None:
            await rules.lock(conn, brand_id)
        row = await catalog.define(
            conn,
            brand_id=brand_id,
            code=code,
            name=name,
            category=category,
            ttl_days=ttl_days,
            ruled=rule is not None,
        )
        if rule is not None:
            await _set_rule(info, conn, row, rule)
        return row

    row = await transact(info.context.pool, work)
    if rule is None:
        return row
    await _compute(info, row["brand_id"], row["code"])
    return await _definition(info, row["brand_id"], row["code"])


@dataclass(frozen=True, slots=True)
class RuleSet:
    tag: Row
    changed: bool
    computed: rule_tags.Evaluated | None
    """None: the rule is unchanged, or computing it was left to the server's scheduled pass."""


async def set_tag_rule(info: Info, *, brand: str, tag: str, rule: str) -> RuleSet:
    """Give a tag a new rule (a new version), then compute it and the rule tags that depend on it; the
    current rule again is no change. A tag assigned by hand becomes a rule tag."""

    async def work(conn: AsyncConnection[Any]) -> tuple[Row, bool]:
        brand_id: int = (await info.context.brands.get(conn, brand))["id"]
        await rules.lock(conn, brand_id)
        row = await catalog.definition(conn, brand_id=brand_id, code=tag)
        if row["ttl_days"] is not None:
            raise DomainError(
                ErrorCode.INVALID_INPUT,
                f"tag {tag!r} has ttlDays: a rule tag has none (its rule decides who carries it)",
                field="tag",
            )
        return row, await _set_rule(info, conn, row, rule)

    row, changed = await transact(info.context.pool, work)
    computed = await _compute(info, row["brand_id"], row["code"]) if changed else None
    return RuleSet(await _definition(info, row["brand_id"], row["code"]), changed, computed)


async def _set_rule(info: Info, conn: AsyncConnection[Any], tag: Row, text: str) -> bool:
    """Check the rule (catalog, cycles) and keep it as the tag's current version; whether it changed.
    The caller holds the brand's rules lock."""
    checked = await rule_tags.check_rule(conn, tag["brand_id"], text)
    references = [rules.Reference(code, span) for code, span in checked.references]
    cycle = rules.find_cycle(tag["code"], references, await rule_tags.rule_graph(conn, tag["brand_id"]))
    if cycle is not None:
        raise rule_tags.RuleCycleError(cycle.text, cycle.at.span, text)
    _, changed = await rules.set_rule(
        conn, tag=tag, rule=checked.text, grammar_version=GRAMMAR_VERSION, created_by=info.context.principal.key_name
    )
    return changed


async def _compute(info: Info, brand_id: int, code: str) -> rule_tags.Evaluated | None:
    """The tag and its dependents for every member, in a transaction of its own: the rule is kept
    whatever happens here, and the scheduled pass computes what this could not (the brand's index
    busy past COMPUTE_WAIT, a statement past COMPUTE_BUDGET)."""
    _forget_cached(info)
    try:
        async with info.context.pool.connection() as conn:
            return await rule_tags.sync_locked(
                conn, brand_id, wait=True, codes={code}, lock_timeout=COMPUTE_WAIT, budget=COMPUTE_BUDGET
            )
    except Exception:
        log.exception("rule tag %s of brand %s: not computed now; the scheduled pass will", code, brand_id)
        return None


async def _definition(info: Info, brand_id: int, code: str) -> Row:
    async with info.context.pool.connection() as conn:
        return await catalog.definition(conn, brand_id=brand_id, code=code)


async def get_rule_history(info: Info, *, tag_id: int) -> list[rules.RuleVersion]:
    return await info.context.loaders.rule_versions_by_tag.load(tag_id)


async def get_rule_freshness(info: Info, *, tag_id: int) -> rule_tags.RuleFreshness | None:
    return await info.context.loaders.rule_freshness_by_tag.load(tag_id)


async def _chosen_ids(info: Info, brand: str, member_ids: Sequence[str] | None, where: str | None) -> list[int]:
    """The ids given, or those the expression selects; exactly one of the two."""
    if (member_ids is None) == (where is None):
        raise DomainError(ErrorCode.INVALID_INPUT, "give exactly one of memberIds and where", field="memberIds")
    if member_ids is not None:
        return _member_ids(member_ids)
    chosen = await audiences.selection(info, brand=brand, expression=where, filter=None, field="where")
    return await audiences.capped_ids(info, chosen)


async def _live(conn: AsyncConnection[Any], tag: Row, ids: list[int], where: str | None) -> list[int]:
    """Ids an expression selected, less members merged away since the index read them."""
    return ids if where is None else await tags.live_member_ids(conn, brand_id=tag["brand_id"], member_ids=ids)


async def tag_members(
    info: Info,
    *,
    brand: str,
    tag: str,
    member_ids: Sequence[str] | None,
    expires_at: dt.datetime | None,
    where: str | None = None,
) -> Tagging:
    ids = await _chosen_ids(info, brand, member_ids, where)

    async def work(conn: AsyncConnection[Any]) -> Tagging:
        row = await _tag(info, conn, brand, tag)
        chosen = await _live(conn, row, ids, where)
        done = await tags.tag_members(conn, tag=row, member_ids=chosen, expires_at=expires_at)
        return Tagging(row, done.tagged, done.added, done.expires_at)

    result = await transact(info.context.pool, work)
    _forget_cached(info)
    return result


async def untag_members(
    info: Info, *, brand: str, tag: str, member_ids: Sequence[str] | None, where: str | None = None
) -> Untagging:
    ids = await _chosen_ids(info, brand, member_ids, where)

    async def work(conn: AsyncConnection[Any]) -> Untagging:
        row = await _tag(info, conn, brand, tag)
        return Untagging(row, await tags.untag_members(conn, tag=row, member_ids=await _live(conn, row, ids, where)))

    result = await transact(info.context.pool, work)
    _forget_cached(info)
    return result


async def list_tags(info: Info, *, brand: str, category: str | None) -> list[Row]:
    brand_id = await info.context.brands.id_of(info.context.pool, brand)
    async with info.context.pool.connection() as conn:
        return await catalog.definitions(conn, brand_id=brand_id, category=category)


async def get_member_count(info: Info, *, tag_id: int) -> int:
    return await info.context.loaders.member_count_by_tag.load(tag_id)


async def get_member_tags(info: Info, *, member_id: int) -> list[Row]:
    return await info.context.loaders.tags_by_member.load(member_id)

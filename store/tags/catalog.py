"""A brand's tag catalog: define tags, read definitions and live member counts.

A tag code is one word of the tag language, so ``tag:<code>`` always parses. Assignments (who carries
a tag, until when) live in `store.tags.assignments`; `unexpired` is the one rule both read by.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from psycopg import AsyncConnection
from sqlalchemy.dialects.postgresql import ARRAY, insert

from store.errors import DomainError, ErrorCode
from store.sql import Query, Row
from store.tables import TAG_CATEGORIES, member_tags, rule_tag_state, tag_definitions, tag_rules
from tagquery.tokens import is_bare_word

MAX_CODE = 64
MAX_NAME = 100
MAX_TTL_DAYS = 36_500

_IDS = sa.bindparam("ids", type_=ARRAY(sa.BigInteger))

TAG_COLUMNS = (
    tag_definitions.c.id,
    tag_definitions.c.brand_id,
    tag_definitions.c.code,
    tag_definitions.c.name,
    tag_definitions.c.category,
    tag_definitions.c.ttl_days,
    tag_definitions.c.created_at,
)


def unexpired(table: sa.FromClause = member_tags) -> sa.ColumnElement[bool]:
    """Not expired: the only assignments any read sees."""
    return sa.or_(table.c.expires_at.is_(None), table.c.expires_at > sa.func.now())


class UnknownTagError(DomainError):
    """UNKNOWN_TAG, with the brand's closest code when one is close."""

    def __init__(self, code: str, suggestion: str | None) -> None:
        hint = f", did you mean {suggestion!r}?" if suggestion else ""
        super().__init__(ErrorCode.UNKNOWN_TAG, f"no tag {code!r} in this brand{hint}", field="tag")
        self.suggestion = suggestion


_insert_definition = Query(
    insert(tag_definitions)
    .values(
        brand_id=sa.bindparam("brand_id"),
        code=sa.bindparam("code"),
        name=sa.bindparam("name"),
        category=sa.bindparam("category"),
        ttl_days=sa.bindparam("ttl_days", type_=sa.Integer),
    )
    .on_conflict_do_nothing(index_elements=[tag_definitions.c.brand_id, tag_definitions.c.code])
    .returning(*TAG_COLUMNS)
)
# A rule tag's current rule and when it was last computed (NULL for a tag assigned by hand).
_with_rule = tag_definitions.outerjoin(rule_tag_state, rule_tag_state.c.tag_id == tag_definitions.c.id).outerjoin(
    tag_rules, sa.and_(tag_rules.c.tag_id == rule_tag_state.c.tag_id, tag_rules.c.version == rule_tag_state.c.version)
)
RULE_COLUMNS = (
    tag_rules.c.rule,
    rule_tag_state.c.version.label("rule_version"),
    rule_tag_state.c.computed_at.label("rule_computed_at"),
)
_definition_by_code = Query(
    sa.select(*TAG_COLUMNS, *RULE_COLUMNS)
    .select_from(_with_rule)
    .where(tag_definitions.c.brand_id == sa.bindparam("brand_id"), tag_definitions.c.code == sa.bindparam("code"))
)
_codes = Query(sa.select(tag_definitions.c.code).where(tag_definitions.c.brand_id == sa.bindparam("brand_id")))
_catalog = (
    sa.select(*TAG_COLUMNS, *RULE_COLUMNS)
    .select_from(_with_rule)
    .order_by(tag_definitions.c.category, tag_definitions.c.code)
)
_all_definitions = Query(_catalog.where(tag_definitions.c.brand_id == sa.bindparam("brand_id")))
_definitions_in = Query(
    _catalog.where(
        tag_definitions.c.brand_id == sa.bindparam("brand_id"), tag_definitions.c.category == sa.bindparam("category")
    )
)
_live_counts = Query(
    sa.select(member_tags.c.tag_id, sa.func.count().label("members"))
    .where(member_tags.c.tag_id == sa.any_(_IDS), unexpired())
    .group_by(member_tags.c.tag_id)
)


def check_code(code: str) -> str:
    """A code must be one word of the tag language, so that ``tag:<code>`` always parses."""
    if len(code) > MAX_CODE or not is_bare_word(code):
        raise DomainError(
            ErrorCode.INVALID_TAG_CODE,
            f"{code!r} is not a tag code: 1-{MAX_CODE} letters (any script), digits, '_', '-' or '.',"
            " and not a keyword of the tag language (AND, OR, NOT, IN, BETWEEN, WITHIN, TAG)",
            field="code",
        )
    return code


def _check_definition(name: str, category: str, ttl_days: int | None) -> str:
    name = name.strip()
    if not 1 <= len(name) <= MAX_NAME:
        raise DomainError(ErrorCode.INVALID_INPUT, f"name must be 1-{MAX_NAME} characters", field="name")
    if category not in TAG_CATEGORIES:
        raise DomainError(ErrorCode.INVALID_INPUT, f"category must be one of {TAG_CATEGORIES}", field="category")
    if ttl_days is not None and not 1 <= ttl_days <= MAX_TTL_DAYS:
        raise DomainError(ErrorCode.INVALID_INPUT, f"ttlDays must be 1-{MAX_TTL_DAYS}", field="ttlDays")
    return name


async def define(
    conn: AsyncConnection[Any],
    *,
    brand_id: int,
    code: str,
    name: str,
    category: str,
    ttl_days: int | None,
    ruled: bool = False,
) -> Row:
    """Add a tag to the brand's catalog; DUPLICATE_TAG when the code is taken. A tag with a rule
    (`ruled`: the caller sets it, store.tags.rules) has no TTL: its rule decides who carries it."""
    name = _check_definition(name, category, ttl_days)
    if ruled and ttl_days is not None:
        raise DomainError(
            ErrorCode.INVALID_INPUT, "a rule tag has no ttlDays: its rule decides who carries it", field="ttlDays"
        )
    row = await _insert_definition.one(
        conn, brand_id=brand_id, code=check_code(code), name=name, category=category, ttl_days=ttl_days
    )
    if row is None:
        raise DomainError(ErrorCode.DUPLICATE_TAG, f"the brand already has a tag {code!r}", field="code")
    return {**row, "rule": None, "rule_version": None, "rule_computed_at": None}


async def definition(conn: AsyncConnection[Any], *, brand_id: int, code: str) -> Row:
    """The brand's tag with this code; UNKNOWN_TAG (with the closest code) when there is none."""
    row = await _definition_by_code.one(conn, brand_id=brand_id, code=code)
    if row is None:
        codes = [r["code"] for r in await _codes.all(conn, brand_id=brand_id)]
        raise UnknownTagError(code, next(iter(difflib.get_close_matches(code, codes, n=1)), None))
    return row


async def definitions(conn: AsyncConnection[Any], *, brand_id: int, category: str | None = None) -> list[Row]:
    """The brand's catalog by category, then code."""
    if category is None:
        return await _all_definitions.all(conn, brand_id=brand_id)
    return await _definitions_in.all(conn, brand_id=brand_id, category=category)


async def live_counts(conn: AsyncConnection[Any], tag_ids: Sequence[int]) -> list[Row]:
    """(tag_id, members) for the tags that have unexpired assignments."""
    return await _live_counts.all(conn, ids=list(tag_ids))

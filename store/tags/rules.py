"""Rule tags: the versions of a tag's rule, and the check that rules never form a cycle.

A rule is an expression of the tag language; the engine (store.audiences.rule_tags) evaluates it and
keeps the members it selects as the tag's assignments. Every version of a rule is kept
(`tag_rules`); `rule_tag_state.version` is the current one. A changed rule is a new version, the
same rule again is no change. Rule changes of a brand run one at a time (`lock`), so two never
race for a version number, nor pass the cycle check each against the other's old rule.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from psycopg import AsyncConnection
from sqlalchemy.dialects.postgresql import ARRAY, insert

from store.errors import DomainError, ErrorCode
from store.sql import Query, Row
from store.tables import rule_tag_state, tag_rules
from tagquery.errors import Span

_state = rule_tag_state.c
_rules = tag_rules.c


@dataclasses.dataclass(frozen=True, slots=True)
class RuleVersion:
    tag_id: int
    version: int
    rule: str
    created_at: dt.datetime
    created_by: str


@dataclasses.dataclass(frozen=True, slots=True)
class Reference:
    """A `tag:` term of a rule: the tag's code and where the term is in the rule's text."""

    code: str
    span: Span | None


@dataclasses.dataclass(frozen=True, slots=True)
class Cycle:
    path: tuple[str, ...]
    """The codes around the cycle, the first repeated last: ("a", "b", "a")."""
    at: Reference
    """The term of the new rule that closes it."""

    @property
    def text(self) -> str:
        return " -> ".join(self.path)


class RuleTagError(DomainError):
    """INVALID_INPUT naming the tag: a rule tag is assigned by its rule, never by hand."""

    def __init__(self, code: str) -> None:
        super().__init__(
            ErrorCode.INVALID_INPUT,
            f"tag {code!r} is a rule tag: the engine assigns it from its rule; change the rule (setTagRule)"
            " to change who carries it; nothing was changed",
            field="tag",
        )


def find_cycle(code: str, references: Sequence[Reference], graph: Mapping[str, frozenset[str]]) -> Cycle | None:
    """The first cycle that `code`'s rule (its `references`) would close, given the other rule tags'
    current references (`graph`: code -> codes its rule names; `code`'s own entry is ignored)."""
    others = {tag: refs for tag, refs in graph.items() if tag != code}
    for reference in references:
        path = _path(reference.code, code, others)
        if path is not None:
            return Cycle((code, *path), reference)
    return None


def _path(start: str, goal: str, graph: Mapping[str, frozenset[str]]) -> tuple[str, ...] | None:
    """A path of references from `start` to `goal` (both included), depth first, in code order."""
    stack: list[tuple[str, tuple[str, ...]]] = [(start, (start,))]
    seen: set[str] = set()
    while stack:
        tag, path = stack.pop()
        if tag == goal:
            return path
        if tag in seen:
            continue
        seen.add(tag)
        stack.extend((nxt, (*path, nxt)) for nxt in sorted(graph.get(tag, ()), reverse=True))
    return None


# --- versions ---------------------------------------------------------------------------------------------

_lock = Query(sa.select(sa.func.pg_advisory_xact_lock(sa.literal(0x72756C), sa.bindparam("brand_id"))))


async def lock(conn: AsyncConnection[Any], brand_id: int) -> None:
    """Serialise the brand's rule changes for the rest of the transaction (not its index lock:
    computing a rule waits for that one, changing one does not)."""
    await _lock.scalar(conn, brand_id=brand_id)


_VERSION_COLUMNS = (_rules.tag_id, _rules.version, _rules.rule, _rules.created_at, _rules.created_by)
_current = Query(
    sa.select(*_VERSION_COLUMNS)
    .join(rule_tag_state, sa.and_(_state.tag_id == _rules.tag_id, _state.version == _rules.version))
    .where(_rules.tag_id == sa.bindparam("tag_id"))
)
_add = Query(
    insert(tag_rules)
    .from_select(
        ["tag_id", "version", "brand_id", "rule", "grammar_version", "created_by"],
        sa.select(
            sa.cast(sa.bindparam("tag_id"), sa.BigInteger),
            sa.func.coalesce(sa.func.max(_rules.version), 0) + 1,
            sa.cast(sa.bindparam("brand_id"), sa.BigInteger),
            sa.cast(sa.bindparam("rule"), sa.Text),
            sa.cast(sa.bindparam("grammar_version"), sa.Integer),
            sa.cast(sa.bindparam("created_by"), sa.Text),
        ).where(_rules.tag_id == sa.bindparam("tag_id")),
    )
    .returning(*_VERSION_COLUMNS)
)
_point = insert(rule_tag_state).values(
    tag_id=sa.bindparam("tag_id"), brand_id=sa.bindparam("brand_id"), version=sa.bindparam("version")
)
# A new version is not computed yet: `computed_at` says so until the engine has run it.
_point_state = Query(
    _point.on_conflict_do_update(
        index_elements=[_state.tag_id], set_={"version": _point.excluded.version, "computed_at": sa.null()}
    )
)
_history = Query(
    sa.select(*_VERSION_COLUMNS)
    .where(_rules.tag_id == sa.any_(sa.bindparam("ids", type_=ARRAY(sa.BigInteger))))
    .order_by(_rules.tag_id, _rules.version)
)
_is_rule_tag = Query(sa.select(sa.exists().where(_state.tag_id == sa.bindparam("tag_id"))))


def _version(row: Row) -> RuleVersion:
    return RuleVersion(row["tag_id"], row["version"], row["rule"], row["created_at"], row["created_by"])


async def current(conn: AsyncConnection[Any], tag_id: int) -> RuleVersion | None:
    """The tag's current rule; None for a tag assigned by hand."""
    row = await _current.one(conn, tag_id=tag_id)
    return None if row is None else _version(row)


async def set_rule(
    conn: AsyncConnection[Any], *, tag: Row, rule: str, grammar_version: int, created_by: str
) -> tuple[RuleVersion, bool]:
    """Make `rule` (checked, canonical text) the tag's rule: (the current version, whether it is new).
    The same rule as the current one is no change. The caller holds `lock` and has the engine
    compute the tag afterwards (until then `rule_tag_state.computed_at` is NULL)."""
    found = await current(conn, tag["id"])
    if found is not None and found.rule == rule:
        return found, False
    row = await _add.one(
        conn,
        tag_id=tag["id"],
        brand_id=tag["brand_id"],
        rule=rule,
        grammar_version=grammar_version,
        created_by=created_by,
    )
    assert row is not None
    added = _version(row)
    await _point_state.run(conn, tag_id=tag["id"], brand_id=tag["brand_id"], version=added.version)
    return added, True


async def history(conn: AsyncConnection[Any], tag_ids: Sequence[int]) -> dict[int, list[RuleVersion]]:
    """Every version of each tag's rule, oldest first (an empty list for a tag assigned by hand)."""
    found: dict[int, list[RuleVersion]] = {tag_id: [] for tag_id in tag_ids}
    for row in await _history.all(conn, ids=list(tag_ids)):
        found[row["tag_id"]].append(_version(row))
    return found


async def assignable(conn: AsyncConnection[Any], tag: Row) -> None:
    """Refuse (RuleTagError) to assign or unassign a rule tag by hand. A definition read with its
    rule (store.tags.catalog.definition) costs no statement. A tag given a rule while a hand
    assignment of it commits is put right by the engine: the write queues its members, whose
    assignments the next delta recomputes from the rule."""
    ruled = (
        tag["rule_version"] is not None if "rule_version" in tag else await _is_rule_tag.scalar(conn, tag_id=tag["id"])
    )
    if ruled:
        raise RuleTagError(tag["code"])


async def rule_tag_ids(conn: AsyncConnection[Any], brand_id: int) -> set[int]:
    """The brand's rule tags (for a bulk import, which refuses rows of them)."""
    return {row["tag_id"] for row in await _brand_rule_tags.all(conn, brand_id=brand_id)}


_brand_rule_tags = Query(sa.select(_state.tag_id).where(_state.brand_id == sa.bindparam("brand_id")))

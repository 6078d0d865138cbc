"""Rule tags computed by the engine: a tag whose members are those its rule (an expression) selects.

A rule tag's assignments are ordinary `member_tags` rows (source "rule", with the rule's version
and when they were computed), so `tag:<code>`, the bitmap index, counts, exports and overlap see
them like any other tag. They are computed with the row compiler (tagquery.compile_rows) over the
system of record, not the index: a rule naming another rule tag then reads that tag's assignments
as just written in the same transaction, so one pass in dependency order is exact.

When:
  - `sync_locked(codes=...)`: a rule defined or changed (resolvers.tags), for that tag and the rule
    tags that depend on it (every member of the brand);
  - `after_apply`: the applier's hook (store.audiences.deltas.apply_brand) for the members whose
    writes it just applied (orders, refunds, tag writes and expiries, identities, merges) in a key
    family some rule reads (`families_read`), or for every member after a full rebuild;
  - `sync_due` / `run_rule_tags`: the server's scheduled pass, for brands whose day moved on (rules
    such as `last_purchase WITHIN 30d` move with the clock), whose lifecycle rules or RFM bounds
    changed, or whose tags were never computed; `refresh` for `omnimember refresh`.

Every pass runs under the brand's index lock, so two passes never interleave; each write
is one statement (an upsert of the members selected, a delete of those no longer selected), so a
pass run twice changes nothing the second time. An assignment that still holds keeps the version
and time it was first computed with: a rule change rewrites only the members it moves.
"""

from __future__ import annotations

import dataclasses
import functools
import graphlib
import logging
import operator
from collections import OrderedDict
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from psycopg import AsyncConnection
from psycopg_pool import AsyncConnectionPool
from sqlalchemy.dialects.postgresql import ARRAY, insert

from store.audiences import rfm_store
from store.audiences.bitmaps import locked_pass
from store.audiences.catalogs import BrandCatalog, load_catalog
from store.audiences.deltas import freshness_of_brands
from store.audiences.facts import DEFAULT_TIMEZONE, MemberRowFacts, expand_derived, live_members
from store.audiences.lifecycle import day_start
from store.audiences.schedule import each_due, every
from store.audiences.selections import InvalidExpressionError, read_expression
from store.brands import for_each_brand
from store.sql import Query
from store.tables import member_tags, members, rule_tag_state, tag_definitions, tag_rules
from tagquery import QueryLimitError, QueryTypeError, TagQueryError, bind, parse, to_text
from tagquery.ast import TAG, And, Between, Compare, Dimension, In, Node, Not, Or, Tag, Within
from tagquery.bitmap_keys import ALL_FAMILIES, FAMILIES
from tagquery.bound import Bound
from tagquery.compile_rows import compile_rows
from tagquery.errors import ErrorCode, Span
from tagquery.limits import MAX_LENGTH

log = logging.getLogger(__name__)
SOURCE = "rule"
INTERVAL = 30.0  # seconds between scheduled passes
_IDS = sa.bindparam("ids", type_=ARRAY(sa.BigInteger))
_TIME = sa.DateTime(timezone=True)
_state = rule_tag_state.c


class RuleCycleError(InvalidExpressionError):
    """INVALID_EXPRESSION (reason CYCLE): the rule would make rule tags depend on themselves."""

    def __init__(self, path: str, span: Span | None, source: str) -> None:
        error = QueryTypeError(
            f"rule tags form a cycle: {path}", code=ErrorCode.TYPE_MISMATCH, source=source, span=span
        )
        super().__init__(error, "rule")
        self.reason = "CYCLE"


# --- checking a rule ------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class CheckedRule:
    text: str
    """Canonical text, every tag named by its code (a display name may later become ambiguous)."""
    references: tuple[tuple[str, Span | None], ...]
    """The tags the rule names (codes), each with where it is named in the text given."""


def tag_terms(node: Node) -> Iterator[tuple[str, Span | None]]:
    """Every tag a rule names, as written (code or display name), with its position."""
    match node:
        case And(operands) | Or(operands):
            for operand in operands:
                yield from tag_terms(operand)
        case Not(operand):
            yield from tag_terms(operand)
        case Tag(code):
            yield code, node.span
        case In(name, values) if name == TAG:
            for i, value in enumerate(values):
                yield value, node.value_spans[i] if i < len(node.value_spans) else node.span


def with_codes(node: Node, code_of: Mapping[str, str]) -> Node:
    """The rule with every tag named by its code."""
    match node:
        case And(operands):
            return And(tuple(with_codes(operand, code_of) for operand in operands), span=node.span)
        case Or(operands):
            return Or(tuple(with_codes(operand, code_of) for operand in operands), span=node.span)
        case Not(operand):
            return Not(with_codes(operand, code_of), span=node.span)
        case Tag(code):
            return dataclasses.replace(node, code=code_of.get(code, code))
        case In(name, values) if name == TAG:
            return dataclasses.replace(node, values=tuple(code_of.get(value, value) for value in values))
    return node


async def check_rule(conn: AsyncConnection[Any], brand_id: int, text: str) -> CheckedRule:
    """Check a rule against the brand's catalog as `audience(expression:)` checks an expression
    (InvalidExpressionError, field `rule`, with the position); cycles are the caller's check
    (store.tags.rules.find_cycle, with `rule_graph`)."""
    node = read_expression(text, None, field="rule")
    catalog = await load_catalog(conn, brand_id)
    try:
        bind(node, catalog.catalog, source=text)
    except TagQueryError as error:
        raise InvalidExpressionError(error, "rule") from None
    code_of = {written: catalog.catalog.tag_code(written) or written for written, _ in tag_terms(node)}
    canonical = to_text(with_codes(node, code_of))
    if len(canonical) > MAX_LENGTH:  # codes may be longer than the display names written
        too_long = QueryLimitError(
            f"the rule is {len(canonical)} characters with tags named by code; at most {MAX_LENGTH}",
            code=ErrorCode.TOO_LONG,
        )
        raise InvalidExpressionError(too_long, "rule")
    return CheckedRule(canonical, tuple((code_of[written], span) for written, span in tag_terms(node)))


# --- the brand's rule tags ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class RuleTag:
    tag_id: int
    code: str
    version: int
    rule: str
    day: date | None

    @property
    def references(self) -> frozenset[str]:
        return _references(self.rule)

    @property
    def families(self) -> int:
        return _families(self.rule)


# The index key families (the change queue's) each name of the language reads: a write queued in
# none of a brand's rules' families cannot move a rule tag, and costs the applier nothing here.
# A name not listed (one added to the language later) reads every family, to be safe.
_NAME_FAMILIES = {
    "tier": ("tier",),
    "city": ("city",),
    "status": ("status",),
    "gender": ("gender",),
    "channel": ("channel",),
    "consent": ("consent",),
    "points": ("points",),
    "growth": ("growth",),
    "order_count": ("order_count",),
    "total_spend": ("total_spend",),
    "registered": ("registered",),
    "last_purchase": ("last_purchase",),
    "days_since_last_purchase": ("last_purchase",),
    "birthday": ("birthday",),
    "age": ("birthday",),
    "orders_365d": ("order",),
    "lifecycle": ("order", "last_purchase"),
    "rfm": ("last_purchase", "order_count", "total_spend"),
    "rfm_r": ("last_purchase",),
    "rfm_f": ("order_count",),
    "rfm_m": ("total_spend",),
    "entered": ("stage",),
}


def families_read(node: Node) -> int:
    """The change-queue families (tagquery.bitmap_keys.FAMILIES) whose changes can change what a
    rule selects; the universe's always (a member added, merged or erased)."""
    match node:
        case And(operands) | Or(operands):
            found = FAMILIES["u"]
            for operand in operands:
                found |= families_read(operand)
            return found
        case Not(operand):
            return families_read(operand)
        case Tag():
            return FAMILIES["u"] | FAMILIES["tag"]
        case In(name) | Dimension(name) | Compare(name) | Between(name) | Within(name):
            if name == TAG:
                return FAMILIES["u"] | FAMILIES["tag"]
            named = _NAME_FAMILIES.get(name)
            return ALL_FAMILIES if named is None else FAMILIES["u"] | sum(FAMILIES[family] for family in named)
    return ALL_FAMILIES


@functools.lru_cache(maxsize=1024)
def _references(rule: str) -> frozenset[str]:
    return frozenset(code for code, _ in tag_terms(parse(rule)))


@functools.lru_cache(maxsize=1024)
def _families(rule: str) -> int:
    return families_read(parse(rule))


_brand_rules = Query(
    sa.select(
        tag_definitions.c.id.label("tag_id"),
        tag_definitions.c.code,
        _state.version,
        _state.day,
        tag_rules.c.rule,
    )
    .select_from(
        rule_tag_state.join(tag_definitions, tag_definitions.c.id == _state.tag_id).join(
            tag_rules, sa.and_(tag_rules.c.tag_id == _state.tag_id, tag_rules.c.version == _state.version)
        )
    )
    .where(_state.brand_id == sa.bindparam("brand_id"))
    .order_by(tag_definitions.c.code)
)


async def brand_rule_tags(conn: AsyncConnection[Any], brand_id: int) -> list[RuleTag]:
    return [
        RuleTag(row["tag_id"], row["code"], row["version"], row["rule"], row["day"])
        for row in await _brand_rules.all(conn, brand_id=brand_id)
    ]


async def rule_graph(conn: AsyncConnection[Any], brand_id: int) -> dict[str, frozenset[str]]:
    """Each rule tag's code -> the codes of the tags its current rule names."""
    return {tag.code: tag.references for tag in await brand_rule_tags(conn, brand_id)}


def in_order(tags: Sequence[RuleTag], codes: set[str] | None = None) -> list[RuleTag]:
    """The tags (all, or `codes` and every rule tag that depends on them, directly or not), each
    after the rule tags its rule names."""
    by_code = {tag.code: tag for tag in tags}
    needs = {tag.code: tag.references & by_code.keys() for tag in tags}
    chosen = set(by_code) if codes is None else _with_dependents(codes & by_code.keys(), needs)
    sorter = graphlib.TopologicalSorter({code: needs[code] & chosen for code in sorted(chosen)})
    return [by_code[code] for code in sorter.static_order()]


def _with_dependents(codes: set[str], needs: Mapping[str, frozenset[str]]) -> set[str]:
    chosen = set(codes)
    while True:
        more = {code for code, refs in needs.items() if code not in chosen and refs & chosen}
        if not more:
            return chosen
        chosen |= more


# --- computing them -------------------------------------------------------------------------------------


def _materialize(m: sa.FromClause, predicate: sa.ColumnElement[bool], scoped: bool) -> Query:
    """One statement: the live members `m` the rule selects (of `:ids` when scoped) carry the tag, the
    others (of `:ids`) do not. Returns how many were added and removed. An assignment that holds
    already is left as it is (its version and time); one made by hand, or expiring, becomes the rule's."""
    wanted = [live_members(m), predicate, *([m.c.id == sa.any_(_IDS)] if scoped else [])]
    want = sa.select(m.c.id).where(*wanted).cte("want")
    made = insert(member_tags).from_select(
        ["member_id", "tag_id", "brand_id", "source", "assigned_at", "expires_at", "rule_version", "computed_at"],
        sa.select(
            want.c.id,
            sa.cast(sa.bindparam("tag_id"), sa.BigInteger),
            sa.cast(sa.bindparam("brand_id"), sa.BigInteger),
            sa.literal(SOURCE, sa.Text),
            sa.func.now(),
            sa.cast(sa.null(), _TIME),
            sa.cast(sa.bindparam("version"), sa.Integer),
            sa.func.now(),
        ),
    )
    added = (
        made.on_conflict_do_update(
            index_elements=[member_tags.c.member_id, member_tags.c.tag_id],
            set_={
                name: made.excluded[name]
                for name in ("source", "assigned_at", "expires_at", "rule_version", "computed_at")
            },
            where=sa.or_(
                member_tags.c.source != SOURCE,
                member_tags.c.rule_version.is_(None),
                member_tags.c.expires_at.is_not(None),
            ),
        )
        .returning(member_tags.c.member_id)
        .cte("added")
    )
    removed = (
        sa.delete(member_tags)
        .where(
            member_tags.c.tag_id == sa.bindparam("tag_id"),
            *([member_tags.c.member_id == sa.any_(_IDS)] if scoped else []),
            ~sa.exists().where(want.c.id == member_tags.c.member_id),
        )
        .returning(member_tags.c.member_id)
        .cte("removed")
    )
    return Query(
        sa.select(
            sa.select(sa.func.count()).select_from(added).scalar_subquery().label("added"),
            sa.select(sa.func.count()).select_from(removed).scalar_subquery().label("removed"),
        )
    )


class _Statements:
    """Compiled statements by (rule, day, lifecycle rules, RFM bounds, scoped): compiling costs
    milliseconds of SQLAlchemy, and the applier runs the same few rules every second."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._found: OrderedDict[tuple[object, ...], Query] = OrderedDict()

    def get(self, tag: RuleTag, bound: Bound, catalog: BrandCatalog, today: date, scoped: bool) -> Query:
        key = (tag.rule, today, catalog.lifecycle, catalog.rfm, scoped)
        statement = self._found.get(key)
        if statement is None:
            expanded = expand_derived(bound, catalog.lifecycle, catalog.rfm)
            m = members.alias("m")
            predicate = compile_rows(expanded, MemberRowFacts(m), today)
            statement = self._found[key] = _materialize(m, predicate, scoped)
            if len(self._found) > self.size:
                self._found.popitem(last=False)
        else:
            self._found.move_to_end(key)
        return statement


_statements = _Statements()


@dataclasses.dataclass(frozen=True, slots=True)
class Evaluated:
    brand_id: int
    tags: int
    """Rule tags computed."""
    added: int
    removed: int
    day: date | None = None
    failed: tuple[str, ...] = ()
    """Rule tags whose rule no longer binds (a city no member has any more): left as they were."""


_mark_full = Query(
    sa.update(rule_tag_state)
    .where(_state.tag_id == sa.any_(_IDS))
    .values(
        computed_at=sa.bindparam("now", type_=_TIME),
        day=sa.bindparam("day", type_=sa.Date),
        lifecycle_version=sa.bindparam("lifecycle_version", type_=sa.Integer),
        rfm_computed_at=sa.bindparam("rfm_computed_at", type_=_TIME),
    )
)
_mark_touched = Query(
    sa.update(rule_tag_state)
    .where(_state.tag_id == sa.any_(_IDS), _state.computed_at.is_not(None))
    .values(computed_at=sa.bindparam("now", type_=_TIME))
)


async def evaluate(
    conn: AsyncConnection[Any],
    brand_id: int,
    *,
    members: Sequence[int] | None = None,
    codes: set[str] | None = None,
    now: datetime | None = None,
) -> Evaluated:
    """Compute the brand's rule tags (`codes` and their dependents, else all) for `members` (else
    every member), in dependency order, on the brand's day at `now` (never before the day they
    were last computed for: a clock moved back changes nothing). The caller holds the brand's
    index lock (`lock_brand`)."""
    tags = await brand_rule_tags(conn, brand_id)
    chosen = in_order(tags, codes)
    if not chosen:
        return Evaluated(brand_id, 0, 0, 0)
    catalog = await load_catalog(conn, brand_id)
    now = now or datetime.now(UTC)
    today = max([catalog.today(now), *(tag.day for tag in tags if tag.day is not None)])
    added = removed = 0
    done: list[int] = []
    failed: list[str] = []
    for tag in chosen:
        try:
            bound = bind(parse(tag.rule), catalog.catalog, source=tag.rule)
        except TagQueryError:
            log.warning("rule tag %s of brand %s: its rule no longer binds; left as it was", tag.code, brand_id)
            failed.append(tag.code)
            continue
        statement = _statements.get(tag, bound, catalog, today, members is not None)
        row = await statement.one(
            conn,
            tag_id=tag.tag_id,
            brand_id=brand_id,
            version=tag.version,
            today=today,
            tz=catalog.timezone,
            ids=list(members or ()),
        )
        assert row is not None
        added, removed = added + row["added"], removed + row["removed"]
        done.append(tag.tag_id)
    if members is None:
        computed = (await rfm_store.stored(conn, brand_id)).computed_at
        await _mark_full.run(
            conn, ids=done, now=now, day=today, lifecycle_version=catalog.lifecycle_version, rfm_computed_at=computed
        )
    else:
        await _mark_touched.run(conn, ids=done, now=now)
    return Evaluated(brand_id, len(done), added, removed, today, tuple(failed))


_compute_all_next = Query(
    sa.update(rule_tag_state).where(_state.brand_id == sa.bindparam("brand_id")).values(computed_at=sa.null())
)


async def after_apply(conn: AsyncConnection[Any], brand_id: int, changed: Mapping[int, int] | None) -> None:
    """The applier's hook, in its transaction (holding the lock): the brand's rule tags for the
    members of a delta (`changed`: member id -> families), or for every member after a rebuild
    (None). Rule tags must never stop the index: a failure is logged and rolled back alone, and the
    scheduled pass computes every member."""
    touched: list[int] | None = None
    if changed is not None:
        tags = await brand_rule_tags(conn, brand_id)
        read = functools.reduce(operator.or_, (tag.families for tag in tags), 0)
        touched = sorted(member for member, families in changed.items() if member > 0 and families & read)
        if not touched:
            return  # no rule tags, or no change they read (a points posting, for rules on tags)
    try:
        async with conn.transaction():  # a savepoint
            await evaluate(conn, brand_id, members=touched)
    except Exception:
        log.exception("rule tags of brand %s: not updated with this delta; the next pass computes all", brand_id)
        await _compute_all_next.run(conn, brand_id=brand_id)


# --- the schedule -----------------------------------------------------------------------------------------

_due = Query(
    sa.text(f"""
SELECT DISTINCT s.brand_id FROM rule_tag_state s
LEFT JOIN brand_rules r ON r.brand_id = s.brand_id
LEFT JOIN rfm_thresholds f ON f.brand_id = s.brand_id
WHERE s.computed_at IS NULL OR s.day IS NULL
   OR s.day < (now() AT TIME ZONE coalesce(r.timezone, '{DEFAULT_TIMEZONE}'))::date
   OR s.lifecycle_version IS DISTINCT FROM
      coalesce((SELECT max(l.version) FROM lifecycle_rules l WHERE l.brand_id = s.brand_id), 0)
   OR s.rfm_computed_at IS DISTINCT FROM f.computed_at
ORDER BY s.brand_id
""")  # noqa: S608 (constant text)
)


async def sync_locked(
    conn: AsyncConnection[Any],
    brand_id: int,
    *,
    wait: bool,
    now: datetime | None = None,
    codes: set[str] | None = None,
    lock_timeout: float | None = None,
    budget: float | None = None,
) -> Evaluated | None:
    """The brand's rule tags (`codes` and their dependents, else all) for every member, in a
    transaction of its own under the brand's index lock; None when it could not run now
    (store.audiences.bitmaps.locked_pass: the lock busy, or `budget` seconds a statement spent)."""

    def work() -> Awaitable[Evaluated]:
        return evaluate(conn, brand_id, now=now, codes=codes)

    return await locked_pass(conn, brand_id, work, wait=wait, lock_timeout=lock_timeout, budget=budget)


async def sync_due(pool: AsyncConnectionPool[Any], now: datetime | None = None) -> list[Evaluated]:
    """One scheduled pass over the brands whose rule tags are due (module docstring)."""
    done = await each_due(pool, _due, lambda conn, brand_id: sync_locked(conn, brand_id, wait=False, now=now))
    return [report for report in done if report is not None]


async def run_rule_tags(pool: AsyncConnectionPool[Any], interval: float = INTERVAL) -> None:
    """`sync_due` every `interval` seconds until cancelled (the server's lifespan runs this;
    store.audiences.schedule)."""

    async def one_pass() -> None:
        for report in await sync_due(pool):
            log.info("rule tags computed: %s", report)

    await every(interval, "rule tags", log, one_pass)


async def refresh(url: str, brand: str | None, now: datetime | None = None) -> list[tuple[str, Evaluated | None]]:
    """`omnimember refresh`: every rule tag of one brand (by code) or of every brand, waiting for
    each brand's lock."""
    return await for_each_brand(url, brand, lambda conn, row: sync_locked(conn, row["id"], wait=True, now=now))


# --- freshness --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class RuleFreshness:
    computed_at: datetime | None
    """When the tag was last computed (for every member or for members just written); None: not yet."""
    day: date | None
    """The brand day its time-relative terms were last evaluated for, for every member."""
    as_of: datetime | None
    """Every write committed before this instant is reflected (None: never computed)."""
    lag: timedelta | None


_tag_states = Query(
    sa.text(f"""
SELECT s.tag_id, s.brand_id, s.computed_at, s.day,
       coalesce((SELECT timezone FROM brand_rules WHERE brand_id = s.brand_id), '{DEFAULT_TIMEZONE}') AS timezone
FROM rule_tag_state s WHERE s.tag_id = ANY(:tag_ids)
""").bindparams(sa.bindparam("tag_ids", type_=ARRAY(sa.BigInteger)))  # noqa: S608 (constant text)
)


async def freshness(conn: AsyncConnection[Any], tag_id: int, now: datetime | None = None) -> RuleFreshness | None:
    """How current a rule tag is (None for a tag assigned by hand): see `freshness_of`."""
    return (await freshness_of(conn, [tag_id], now))[tag_id]


async def freshness_of(
    conn: AsyncConnection[Any], tag_ids: Sequence[int], now: datetime | None = None
) -> dict[int, RuleFreshness | None]:
    """How current each rule tag is (None for a tag assigned by hand): it follows the index's change
    queue (writes not applied yet are not computed yet either) and the brand's day. Two statements
    whatever the number of tags: their states, then their brands' index freshness."""
    rows = {row["tag_id"]: row for row in await _tag_states.all(conn, tag_ids=list(tag_ids))}
    now = now or datetime.now(UTC)
    indexes = await freshness_of_brands(conn, sorted({row["brand_id"] for row in rows.values()}))
    found: dict[int, RuleFreshness | None] = {}
    for tag_id in tag_ids:
        row = rows.get(tag_id)
        if row is None:
            found[tag_id] = None
        elif row["computed_at"] is None or row["day"] is None:
            found[tag_id] = RuleFreshness(row["computed_at"], row["day"], None, None)
        else:
            index = indexes[row["brand_id"]]
            behind = [] if index.as_of is None or index.as_of >= now else [index.as_of]
            next_day = day_start(row["day"] + timedelta(days=1), row["timezone"])
            if next_day <= now:
                behind.append(next_day)
            as_of = min(behind, default=now)
            found[tag_id] = RuleFreshness(row["computed_at"], row["day"], as_of, max(now - as_of, timedelta(0)))
    return found

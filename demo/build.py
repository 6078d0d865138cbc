"""A realistic demo group, bulk-loaded with COPY: ``omnimember demo --members 1000000``.

Two brands of one group share some of their people (the same phone number in both), every member
has one to four channel identities, about 30% are prospects who never bought anything.

Randomness is counter-based: every value is a pure function of (seed, scope, stream, index), e.g.
the city of person 123 456. Blocks of members are therefore independent of each other, and a person
who is a member of both brands looks the same from either. Only the AES-GCM nonces of the encrypted
phones differ between two runs with the same seed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections import deque
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import numpy as np
import psycopg
import sqlalchemy as sa
from psycopg import sql
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from sqlalchemy.dialects.postgresql import ARRAY

from store import demo_ledger, demo_opening, demo_tags, tables
from store.brands import brand_by_code, create_brand, groups_by_id, tiers_by_brand
from store.demo_people import (
    DAY,
    NONE,
    Block,
    DemoBrand,
    Plan,
    identity_counts,
    identity_text,
    member_block,
    member_text,
    purchases,
)
from store.errors import DomainError, ErrorCode
from store.phones import PhoneVault
from store.sql import Query
from store.tables import DEFAULT_TIERS

GROUP_CODE = "demo"
GROUP_NAME = "Demo Group 示范集团"
BLOCK = 100_000  # members generated, formatted and copied at a time
LOADERS = 2  # connections copying blocks at once (a fresh load; a replacement uses one)


class Ledger(StrEnum):
    """How much of the buyers' points ledger the demo writes."""

    NONE = "none"  # profiles only: spend and order counts, no orders, points or growth
    FULL = "full"  # every order, refund and expiry with its postings, entries, lots and draws
    OPENING = "opening"  # the same orders and totals; the balance as one imported posting (demo_opening)


DEMO_BRANDS = (
    DemoBrand("teahouse", "山茶 Teahouse", 0.6, 168.0, "8860"),
    DemoBrand("orchard", "果园 Orchard", 0.4, 72.0, "6688"),
)


class DemoError(Exception):
    """The demo cannot be built as asked (e.g. it exists and replacing it was not asked for)."""


@dataclass(frozen=True, slots=True)
class DemoSummary:
    members: int
    prospects: int
    identities: int
    shared_people: int  # members of the second brand with the phone of a member of the first
    orders: int
    seconds: float
    per_brand: tuple[tuple[str, int], ...]
    tag_assignments: int = 0

    @property
    def prospect_share(self) -> float:
        return self.prospects / self.members if self.members else 0.0


# --- the database ------------------------------------------------------------------------------------------


# Everything a member's rows can be referenced from, children before parents: --replace empties these
# for the demo brands. lot_draws has no brand_id; its rows go with their entries and lots.
_CLEARED = (
    tables.lot_draws,
    tables.member_tags,
    tables.orders,
    tables.points_lots,
    tables.points_entries,
    tables.points_postings,
    tables.tier_changes,
    tables.member_merges,
    tables.member_identities,
    tables.members,
)
_BRAND_IDS = sa.bindparam("brand_ids", type_=ARRAY(sa.BigInteger))


def _of_brands(table: sa.Table) -> sa.ColumnElement[bool]:
    return table.c.brand_id == sa.any_(_BRAND_IDS)


_count_members = Query(sa.select(sa.func.count()).select_from(tables.members).where(_of_brands(tables.members)))
# Two deletes, not one with OR: each IN is then a hashed semi-join, not a subquery scan per row.
_deletes = [
    Query(
        sa.delete(tables.lot_draws).where(
            tables.lot_draws.c.entry_id.in_(
                sa.select(tables.points_entries.c.id).where(_of_brands(tables.points_entries))
            )
        )
    ),
    Query(
        sa.delete(tables.lot_draws).where(
            tables.lot_draws.c.lot_id.in_(sa.select(tables.points_lots.c.id).where(_of_brands(tables.points_lots)))
        )
    ),
    *(Query(sa.delete(table).where(_of_brands(table))) for table in _CLEARED[1:]),
]
_referencing_tables = (
    "SELECT DISTINCT conrelid::regclass::text FROM pg_constraint"
    " WHERE contype = 'f' AND confrelid = ANY(%(tables)s::text[]::regclass[])"
)
# The audience index's queue triggers (migration 0004) are safe to skip: the load asks for a full
# rebuild of the demo brands instead (`_queue_rebuild`), which is what 1M queued members lead to anyway.
_user_triggers = (
    "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal AND tgrelid = ANY(%(tables)s::text[]::regclass[])"
    " AND tgname NOT LIKE 'audience\\_%%'"
)
# Member 0 asks the audience index for a full rebuild of the brand (store/bitmap_deltas.py).
_queue_rebuild = Query(
    sa.insert(tables.audience_changes).from_select(
        ["brand_id", "member_id"], sa.select(sa.func.unnest(_BRAND_IDS), sa.literal_column("0"))
    )
)
_sequence = sql.SQL("pg_get_serial_sequence({}, 'id')").format(sql.Literal(tables.members.name))
_COPY_MEMBERS = sql.SQL("COPY {} ({}) FROM STDIN").format(
    sql.Identifier(tables.members.name),
    sql.SQL(", ").join(
        map(
            sql.Identifier,
            (
                "id",
                "brand_id",
                "tier",
                "display_name",
                "gender",
                "birthday",
                "city",
                "registered_at",
                "first_purchase_at",
                "last_purchase_at",
                "order_count",
                "total_spend",
                "points_balance",
                "growth_value",
                "points_earned",
                "phone_hash",
                "phone_encrypted",
                "phone_masked",
            ),
        )
    ),
)
# Identity ids are reserved per block like the ledger's, so that blocks copied in parallel get the
# same ids as in a serial load.
_COPY_IDENTITIES = sql.SQL("COPY {} ({}) FROM STDIN").format(
    sql.Identifier(tables.member_identities.name),
    sql.SQL(", ").join(map(sql.Identifier, ("id", "brand_id", "member_id", "channel", "external_id", "bound_at"))),
)
_ANALYZE = sql.SQL("ANALYZE {}").format(
    sql.SQL(", ").join(
        sql.Identifier(table.name)
        for table in (tables.members, tables.member_identities, tables.member_tags, *demo_ledger.TABLES)
    )
)

Connection = psycopg.Connection[Any]


def _ensure_brands(url: str) -> list[int]:
    """The demo brands' ids, creating the group, brands and tiers where missing."""

    async def ensure() -> list[int]:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            ids = []
            for brand in DEMO_BRANDS:
                async with conn.transaction():
                    ids.append(await _demo_brand(conn, brand))
            return ids

    return asyncio.run(ensure())


async def _demo_brand(conn: psycopg.AsyncConnection[Any], brand: DemoBrand) -> int:
    try:
        row = await brand_by_code(conn, brand.code)
    except DomainError as error:
        if error.code != ErrorCode.UNKNOWN_BRAND:
            raise
        row = await create_brand(conn, code=brand.code, name=brand.name, group_code=GROUP_CODE, group_name=GROUP_NAME)
    [group] = await groups_by_id(conn, [row["group_id"]])
    if group["code"] != GROUP_CODE:
        raise DemoError(
            f"brand {brand.code!r} belongs to group {group['code']!r}, not to the demo group {GROUP_CODE!r}"
        )
    tiers = [tier["code"] for tier in await tiers_by_brand(conn, [row["id"]])]
    if tiers != list(DEFAULT_TIERS):
        raise DemoError(f"brand {brand.code!r} has the tiers {tiers}; the demo needs {list(DEFAULT_TIERS)}")
    return int(row["id"])


def _existing_members(conn: Connection, brand_ids: list[int]) -> int:
    row = conn.execute(_count_members.sql, {"brand_ids": brand_ids}).fetchone()
    return int(row[0]) if row else 0


def _reserve_member_ids(conn: Connection, count: int) -> int:
    """The first of ``count`` consecutive ids taken from the members identity sequence.

    The table lock keeps out concurrent inserts (they draw ids from the same sequence) while the
    block is claimed; it is released at once, not held through the load.
    """
    with conn.transaction():
        conn.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(sql.Identifier(tables.members.name)))
        row = conn.execute(sql.SQL("SELECT nextval({})").format(_sequence)).fetchone()
        assert row is not None
        first = int(row[0])
        conn.execute(sql.SQL("SELECT setval({}, %s)").format(_sequence), (first + count - 1,))
    return first


def _skip_row_triggers(conn: Connection) -> bool:
    """Turn off row triggers, foreign key checks included, for the rest of the transaction where that
    is safe and allowed; False where not (the load is then about three times slower).

    Checking every row's foreign keys costs twice as much as the rest of the load, and the rows are
    consistent by construction: the brands and tiers were just read, identities follow their
    members. Safe: no user triggers on the tables the demo writes or clears, and no foreign key into
    them from a table it does not clear (its rows would be left dangling). Allowed: superusers, or
    roles granted SET on session_replication_role. ``pg_restore --disable-triggers`` does the same.
    """
    names = [table.name for table in _CLEARED]
    referencing = {row[0] for row in conn.execute(_referencing_tables, {"tables": names})}
    triggers = conn.execute(_user_triggers, {"tables": names}).fetchone()
    if not referencing <= set(names) or (triggers and triggers[0]):
        return False
    try:
        with conn.transaction():  # a savepoint: a refusal leaves the load's transaction usable
            conn.execute("SET LOCAL session_replication_role = replica")
    except psycopg.errors.InsufficientPrivilege:
        return False
    return True


def _delete_members(conn: Connection, brand_ids: list[int]) -> None:
    for query in _deletes:
        conn.execute(query.sql, {"brand_ids": brand_ids})


def _copy(conn: Connection, statement: sql.Composed, data: bytes) -> None:
    with conn.cursor() as cur, cur.copy(statement) as copy:
        copy.write(data)


# --- putting it together -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Chunk:
    """One block, ready to copy."""

    plan: Plan
    members: bytes
    identities: bytes
    ledger: demo_ledger.Copies | None
    tags: demo_tags.Copy | None
    count: int
    prospects: int
    identity_count: int
    shared: int


@dataclass(frozen=True, slots=True)
class _Ledger:
    """What posting the demo's orders needs: each brand's rules, each block's reserved ids, the moment."""

    mode: Ledger  # FULL or OPENING
    rules: dict[int, demo_ledger.Rules]  # by brand id
    ids: dict[tuple[int, int], demo_ledger.Ids]  # by (brand id, block start)
    as_of: int  # epoch seconds: lots expired by then are expired


_Identities = dict[tuple[int, int], int]  # the first identity id reserved for each (brand id, block start)


def _chunk(
    plan: Plan, start: int, stop: int, vault: PhoneVault, identity_ids: _Identities, ledger: _Ledger | None, tags: _Tags
) -> _Chunk:
    block = member_block(plan, start, stop)
    identities, identity_count = identity_text(block, identity_ids[plan.brand_id, start])
    buyers = _buyers(block)
    catalog = tags.get(plan.brand_id)
    tag_copy = None if catalog is None else demo_tags.assign(catalog, buyers, block.registered, plan.today, start)
    copies = None
    if ledger is None:
        totals = demo_ledger.Totals.without_points(buyers)
    else:
        ids, rules = ledger.ids[plan.brand_id, start], ledger.rules[plan.brand_id]
        post = demo_opening.open_balances if ledger.mode is Ledger.OPENING else demo_ledger.post
        totals, copies = post(buyers, ids, plan.rand, rules, ledger.as_of)
    return _Chunk(
        plan=plan,
        members=member_text(block, vault, totals),
        identities=identities,
        ledger=copies,
        tags=tag_copy,
        count=len(block),
        prospects=int((block.first_purchase == NONE).sum()),
        identity_count=identity_count,
        shared=int(block.shared.sum()),
    )


def _buyers(block: Block) -> demo_ledger.Buyers:
    return demo_ledger.Buyers(
        brand_id=block.plan.brand_id,
        member_id=(block.index + np.uint64(block.plan.first_id)).astype(np.int64),
        index=block.index,
        orders=block.orders,
        spend_cents=block.spend_cents,
        first=block.first_purchase,
        last=block.last_purchase,
        channels=block.channels,
    )


def _ledger(conn: Connection, plans: list[Plan], mode: Ledger) -> _Ledger:
    """Reserves ids for every block's ledger rows (an upper bound: gaps are harmless) and reads the rules."""
    bounds = {
        (plan.brand_id, start): demo_ledger.upper_bounds(
            int(purchases(plan, np.arange(start, stop, dtype=np.uint64))[1].sum()), stop - start
        )
        for plan, start, stop in _blocks(plans)
    }
    first: dict[str, int] = {}
    for table, name in zip(demo_ledger.TABLES[:3] + demo_ledger.TABLES[4:], _ID_FIELDS, strict=True):
        first[name] = demo_ledger.reserve(conn, table.name, sum(getattr(b, name) for b in bounds.values()))
    ids = {}
    for key, bound in bounds.items():
        ids[key] = demo_ledger.Ids(**first)
        first = {name: first[name] + getattr(bound, name) for name in _ID_FIELDS}
    rules = {plan.brand_id: demo_ledger.rules(conn, plan.brand_id) for plan in plans}
    return _Ledger(mode, rules, ids, int(time.time()))


def _identity_ids(conn: Connection, plans: list[Plan]) -> _Identities:
    counts = {
        (plan.brand_id, start): int(identity_counts(plan.rand, np.arange(start, stop, dtype=np.uint64)).sum())
        for plan, start, stop in _blocks(plans)
    }
    first = demo_ledger.reserve(conn, tables.member_identities.name, sum(counts.values()))
    starts = itertools.accumulate(counts.values(), initial=first)
    return dict(zip(counts, starts, strict=False))


_ID_FIELDS = ("posting", "entry", "lot", "order")


def _blocks(plans: list[Plan]) -> Iterator[tuple[Plan, int, int]]:
    for plan in plans:
        for start in range(0, plan.size, BLOCK):
            yield plan, start, min(start + BLOCK, plan.size)


_Tags = dict[int, demo_tags.Catalog]  # by brand id; empty without --tags


def _chunks(
    plans: list[Plan], vault: PhoneVault, identity_ids: _Identities, ledger: _Ledger | None, tags: _Tags, ahead: int
) -> Generator[_Chunk]:
    """Chunks in order, the next ``ahead`` formatted in threads while the current ones are copied:
    psycopg releases the GIL while it waits for the server, so client and server work in parallel.
    One chunk ahead per loader is enough (the server is the slower side) and bounds the memory."""
    blocks = _blocks(plans)
    with ThreadPoolExecutor(max_workers=ahead, thread_name_prefix="demo") as pool:
        waiting = deque(
            pool.submit(_chunk, *block, vault, identity_ids, ledger, tags) for block in itertools.islice(blocks, ahead)
        )
        while waiting:
            chunk = waiting.popleft().result()
            following = next(blocks, None)
            if following is not None:
                waiting.append(pool.submit(_chunk, *following, vault, identity_ids, ledger, tags))
            yield chunk


def _plans(brand_ids: list[int], first_id: int, total: int, seed: int) -> list[Plan]:
    """The first brand's members take the first ids; the second brand shares people with the first."""
    first, second = DEMO_BRANDS
    first_size = round(total * first.share)
    today = int(datetime.now(UTC).timestamp()) // DAY * DAY
    return [
        Plan(first, brand_ids[0], first_id, first_size, shares_with=0, seed=seed, today=today),
        Plan(second, brand_ids[1], first_id + first_size, total - first_size, first_size, seed, today),
    ]


def build_demo(
    url: str,
    vault: PhoneVault,
    *,
    members: int,
    seed: int,
    replace: bool = False,
    ledger: Ledger = Ledger.NONE,
    tags: bool = False,
) -> DemoSummary:
    """Build the demo group (code ``demo``) with ``members`` members across its two brands.

    Raises DemoError when the demo brands already have members and ``replace`` is false; with
    ``replace`` their members and everything hanging off them are deleted in the transaction that
    loads the new ones. ``ledger``: FULL gives buyers their orders, refunds, points and expired lots
    (store/demo_ledger.py); OPENING the same orders and totals with the balance imported as one
    posting (store/demo_opening.py); NONE only their profiles. With ``tags`` each brand gets ~200
    tags and every member ~15 of them (store/demo_tags.py). Runs an event loop of its own: call it
    where none is running (a thread).
    """
    if members < 1:
        raise ValueError("members must be at least 1")
    started = time.perf_counter()
    brand_ids = _ensure_brands(url)
    with psycopg.connect(url, autocommit=True) as conn:
        existing = _existing_members(conn, brand_ids)
        if existing and not replace:
            raise DemoError(
                f"the demo brands already have {existing:,} members: pass --replace (replace=True) to rebuild them"
            )
        plans = _plans(brand_ids, _reserve_member_ids(conn, members), members, seed)
        identity_ids = _identity_ids(conn, plans)
        posting = None if ledger is Ledger.NONE else _ledger(conn, plans, ledger)
        catalogs = {p.brand_id: demo_tags.define(conn, p.brand_id, p.brand.code, seed) for p in plans if tags}
        source = _Source(plans, vault, identity_ids, posting, catalogs)
        with _progress() as progress:
            totals = _load(conn, url, source, progress, replace=existing > 0)
            analyzing = progress.add_task("analyze", total=1)
            conn.execute(_ANALYZE)  # fresh statistics, or the first queries plan for empty tables
            progress.advance(analyzing)
    summary = DemoSummary(
        members=totals.count,
        prospects=totals.prospects,
        identities=totals.identity_count,
        shared_people=totals.shared,
        orders=totals.orders,
        seconds=time.perf_counter() - started,
        per_brand=tuple((plan.brand.code, plan.size) for plan in plans),
        tag_assignments=totals.tags,
    )
    _print_summary(summary)
    return summary


@dataclass(slots=True)
class _Totals:
    count: int = 0
    prospects: int = 0
    identity_count: int = 0
    shared: int = 0
    orders: int = 0
    tags: int = 0

    def add(self, chunk: _Chunk) -> None:
        self.orders += chunk.ledger.order_count if chunk.ledger else 0
        self.tags += chunk.tags.count if chunk.tags else 0
        self.count += chunk.count
        self.prospects += chunk.prospects
        self.identity_count += chunk.identity_count
        self.shared += chunk.shared


@dataclass(frozen=True, slots=True)
class _Source:
    """Everything the blocks are made from."""

    plans: list[Plan]
    vault: PhoneVault
    identity_ids: _Identities
    ledger: _Ledger | None
    tags: _Tags

    def chunks(self, ahead: int) -> Generator[_Chunk]:
        return _chunks(self.plans, self.vault, self.identity_ids, self.ledger, self.tags, ahead)


def _load(conn: Connection, url: str, source: _Source, progress: Progress, *, replace: bool) -> _Totals:
    """Delete (with ``replace``) and copy, in one transaction per connection.

    A replacement runs on ``conn`` alone, so readers see the old demo or the new one: the new rows
    have the old ones' unique keys (phones, channel ids), which a second connection could not insert
    before the delete commits. A fresh load copies on LOADERS connections at once (the server side
    of a COPY takes most of a core); their transactions commit one after the other once every block
    is in, so readers may see part of the new demo for that moment, and an error before it rolls
    every connection back. Blocks get the same ids either way (reserved per block).
    """
    brand_ids = [plan.brand_id for plan in source.plans]
    deleting = progress.add_task("delete the old demo", total=1) if replace else None
    tasks = {plan.brand.code: _brand_tasks(progress, plan) for plan in source.plans}
    with contextlib.ExitStack() as stack:
        others = (
            [] if replace else [stack.enter_context(psycopg.connect(url, autocommit=True)) for _ in range(1, LOADERS)]
        )
        loaders = [conn, *others]
        for loader in loaders:  # entered in order, so they commit in reverse: conn, with the delete, last
            stack.enter_context(loader.transaction())
        skips = [_skip_row_triggers(loader) for loader in loaders]
        if not all(skips):
            progress.console.print("Checking foreign keys row by row (skipping them needs a superuser): slower")
        if deleting is not None:
            _delete_members(conn, brand_ids)
            progress.advance(deleting)
        totals = _copy_blocks(loaders, source, progress, tasks)
        if any(skips):  # the audience index's queue triggers did not see (all of) the load
            conn.execute(_queue_rebuild.sql, {"brand_ids": brand_ids})
    return totals


def _copy_blocks(
    loaders: list[Connection], source: _Source, progress: Progress, tasks: dict[str, tuple[TaskID, TaskID]]
) -> _Totals:
    """Every block copied by whichever loader is free; the first error stops the others."""
    totals = _Totals()
    lock = threading.Lock()
    failed = threading.Event()

    def load(conn: Connection, chunks: Iterator[_Chunk]) -> None:
        try:
            while not failed.is_set():
                with lock:  # a generator cannot be advanced by two threads at once
                    chunk = next(chunks, None)
                if chunk is None:
                    return
                _copy_chunk(conn, chunk)
                with lock:
                    totals.add(chunk)
                    member_task, identity_task = tasks[chunk.plan.brand.code]
                    progress.advance(member_task, chunk.count)
                    progress.advance(identity_task, chunk.identity_count)
        except BaseException:
            failed.set()
            raise

    with contextlib.closing(source.chunks(ahead=len(loaders))) as chunks:
        if len(loaders) == 1:
            load(loaders[0], chunks)
        else:
            with ThreadPoolExecutor(max_workers=len(loaders), thread_name_prefix="demo-copy") as pool:
                for done in [pool.submit(load, conn, chunks) for conn in loaders]:
                    done.result()
    return totals


def _copy_chunk(conn: Connection, chunk: _Chunk) -> None:
    _copy(conn, _COPY_MEMBERS, chunk.members)
    _copy(conn, _COPY_IDENTITIES, chunk.identities)
    if chunk.ledger is not None:
        demo_ledger.copy(conn, chunk.ledger)
    if chunk.tags is not None:
        demo_tags.copy(conn, chunk.tags)


def _brand_tasks(progress: Progress, plan: Plan) -> tuple[TaskID, TaskID]:
    identities = sum(
        int(identity_counts(plan.rand, np.arange(start, stop, dtype=np.uint64)).sum())
        for _, start, stop in _blocks([plan])
    )
    return (
        progress.add_task(f"{plan.brand.code} members", total=plan.size),
        progress.add_task(f"{plan.brand.code} identities", total=identities),
    )


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description:<22}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )


def _print_summary(summary: DemoSummary) -> None:
    brands_text = ", ".join(f"{code} {count:,}" for code, count in summary.per_brand)
    Console().print(
        f"Demo group [bold]{GROUP_CODE}[/]: {summary.members:,} members ({brands_text}), "
        f"{summary.prospect_share:.0%} prospects, {summary.identities:,} identities, "
        f"{summary.shared_people:,} people in both brands, {summary.orders:,} orders, "
        f"{summary.tag_assignments:,} tag assignments, {summary.seconds:.1f} s"
    )

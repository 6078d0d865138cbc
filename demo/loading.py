"""Loading the demo: its members made in blocks of BLOCK, formatted into COPY text in threads and copied
on one or more connections, each block with its identities, ledger rows and tags.

Every block's ids are reserved before the load (demo/build.py), so blocks are formatted ahead and
copied by whichever connection is free and still get the ids a serial load gives them. Also here:
what ``--replace`` clears, and when checking foreign keys row by row can be skipped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import threading
from collections import deque
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import psycopg
import sqlalchemy as sa
from psycopg import sql
from rich.progress import Progress, TaskID
from sqlalchemy.dialects.postgresql import ARRAY

from demo import ledger as demo_ledger
from demo import ledger_rows
from demo import opening as demo_opening
from demo import orders as demo_orders
from demo import products as demo_products
from demo import tags as demo_tags
from demo.people import NONE, Block, Plan, identity_counts, identity_text, member_block, member_text
from store import tables
from store.members.phones import PhoneVault
from store.sql import Query

BLOCK = 100_000  # members generated, formatted and copied at a time
LOADERS = 2  # connections copying blocks at once (a fresh load; a replacement uses one)


class Ledger(StrEnum):
    """How much of the buyers' points ledger the demo writes."""

    NONE = "none"  # profiles only: spend and order counts, no orders, points or growth
    FULL = "full"  # every order, refund and expiry with its postings, entries, lots and draws
    OPENING = "opening"  # the same orders and totals; the balance as one imported posting (demo_opening)


# --- the database ------------------------------------------------------------------------------------------


# Everything a member's rows can be referenced from, children before parents: --replace empties these
# for the demo brands. lot_draws has no brand_id; its rows go with their entries and lots.
_CLEARED = (
    tables.lot_draws,
    tables.order_lines,
    tables.member_tags,
    tables.member_consents,
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
    Query(  # lines have no brand_id: they go with their orders
        sa.delete(tables.order_lines).where(
            tables.order_lines.c.order_id.in_(sa.select(tables.orders.c.id).where(_of_brands(tables.orders)))
        )
    ),
    *(Query(sa.delete(table).where(_of_brands(table))) for table in _CLEARED[2:]),
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
# Member 0 asks the audience index for a full rebuild of the brand (store/audiences/deltas.py).
_queue_rebuild = Query(
    sa.insert(tables.audience_changes).from_select(
        ["brand_id", "member_id"], sa.select(sa.func.unnest(_BRAND_IDS), sa.literal_column("0"))
    )
)
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

Connection = psycopg.Connection[Any]


def existing_members(conn: Connection, brand_ids: list[int]) -> int:
    row = conn.execute(_count_members.sql, {"brand_ids": brand_ids}).fetchone()
    return int(row[0]) if row else 0


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


# --- the blocks --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Chunk:
    """One block, ready to copy."""

    plan: Plan
    members: bytes
    identities: bytes
    ledger: ledger_rows.Copies | None
    tags: demo_tags.Copy | None
    count: int
    prospects: int
    identity_count: int
    shared: int


@dataclass(frozen=True, slots=True)
class LedgerPlan:
    """What posting the demo's orders needs: each brand's rules, each block's reserved ids, the moment."""

    mode: Ledger  # FULL or OPENING
    rules: dict[int, demo_orders.Rules]  # by brand id
    ids: dict[tuple[int, int], ledger_rows.Ids]  # by (brand id, block start)
    as_of: int  # epoch seconds: lots expired by then are expired


Identities = dict[tuple[int, int], int]  # the first identity id reserved for each (brand id, block start)


def _chunk(
    plan: Plan,
    start: int,
    stop: int,
    vault: PhoneVault,
    identity_ids: Identities,
    ledger: LedgerPlan | None,
    tags: _Tags,
) -> _Chunk:
    block = member_block(plan, start, stop)
    identities, identity_count = identity_text(block, identity_ids[plan.brand_id, start])
    buyers = _buyers(block)
    catalog = tags.get(plan.brand_id)
    tag_copy = None if catalog is None else demo_tags.assign(catalog, buyers, block.registered, plan.today, start)
    copies = None
    if ledger is None:
        totals = demo_orders.Totals.without_points(buyers)
    else:
        ids, rules = ledger.ids[plan.brand_id, start], ledger.rules[plan.brand_id]
        post = demo_opening.open_balances if ledger.mode is Ledger.OPENING else demo_ledger.post
        totals, copies = post(buyers, ids, plan.rand, rules, ledger.as_of)
        key, cents = demo_orders.order_amounts(buyers, plan.rand)
        products = demo_products.catalog(plan.brand.code)
        copies = dataclasses.replace(copies, lines=demo_products.line_text(products, ids.order, key, cents, plan.rand))
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


def _buyers(block: Block) -> demo_orders.Buyers:
    return demo_orders.Buyers(
        brand_id=block.plan.brand_id,
        member_id=(block.index + np.uint64(block.plan.first_id)).astype(np.int64),
        index=block.index,
        orders=block.orders,
        spend_cents=block.spend_cents,
        first=block.first_purchase,
        last=block.last_purchase,
        channels=block.channels,
    )


def blocks(plans: list[Plan]) -> Iterator[tuple[Plan, int, int]]:
    for plan in plans:
        for start in range(0, plan.size, BLOCK):
            yield plan, start, min(start + BLOCK, plan.size)


_Tags = dict[int, demo_tags.Catalog]  # by brand id; empty without --tags


def _chunks(
    plans: list[Plan], vault: PhoneVault, identity_ids: Identities, ledger: LedgerPlan | None, tags: _Tags, ahead: int
) -> Generator[_Chunk]:
    """Chunks in order, the next ``ahead`` formatted in threads while the current ones are copied:
    psycopg releases the GIL while it waits for the server, so client and server work in parallel.
    One chunk ahead per loader is enough (the server is the slower side) and bounds the memory."""
    remaining = blocks(plans)
    with ThreadPoolExecutor(max_workers=ahead, thread_name_prefix="demo") as pool:
        waiting = deque(
            pool.submit(_chunk, *block, vault, identity_ids, ledger, tags)
            for block in itertools.islice(remaining, ahead)
        )
        while waiting:
            chunk = waiting.popleft().result()
            following = next(remaining, None)
            if following is not None:
                waiting.append(pool.submit(_chunk, *following, vault, identity_ids, ledger, tags))
            yield chunk


# --- copying them ------------------------------------------------------------------------------------------


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
class Source:
    """Everything the blocks are made from."""

    plans: list[Plan]
    vault: PhoneVault
    identity_ids: Identities
    ledger: LedgerPlan | None
    tags: _Tags

    def chunks(self, ahead: int) -> Generator[_Chunk]:
        return _chunks(self.plans, self.vault, self.identity_ids, self.ledger, self.tags, ahead)


def load(conn: Connection, url: str, source: Source, progress: Progress, *, replace: bool) -> _Totals:
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
    tasks = {plan.brand.code: _brand_tasks(progress, plan, source) for plan in source.plans}
    committing = progress.add_task("commit", total=1, start=False)
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
        progress.start_task(committing)  # leaving the block commits every loader's transaction
    progress.advance(committing)
    return totals


def _copy_blocks(
    loaders: list[Connection], source: Source, progress: Progress, tasks: dict[str, tuple[TaskID, TaskID]]
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
        ledger_rows.copy(conn, chunk.ledger)
    if chunk.tags is not None:
        demo_tags.copy(conn, chunk.tags)


def _brand_tasks(progress: Progress, plan: Plan, source: Source) -> tuple[TaskID, TaskID]:
    identities = sum(
        int(identity_counts(plan.rand, np.arange(start, stop, dtype=np.uint64)).sum())
        for _, start, stop in blocks([plan])
    )
    # A block's orders, points and tags are copied with its members: that bar counts them too.
    with_them = ("orders, points" if source.ledger else "", "tags" if source.tags else "")
    members = " + ".join(("members", *(part for part in with_them if part)))
    return (
        progress.add_task(f"{plan.brand.code} {members}", total=plan.size),
        progress.add_task(f"{plan.brand.code} identities", total=identities),
    )

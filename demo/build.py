"""A realistic demo group, bulk-loaded with COPY: ``omnimember demo --members 1000000``.

Two brands of one group share some of their people (the same phone number in both), every member
has one to four channel identities, about 30% are prospects who never bought anything.

Randomness is counter-based: every value is a pure function of (seed, scope, stream, index), e.g.
the city of person 123 456. Blocks of members are therefore independent of each other, and a person
who is a member of both brands looks the same from either. Only the AES-GCM nonces of the encrypted
phones differ between two runs with the same seed.

Here: the demo group and its brands, the plan (which ids every block gets, reserved up front) and
`build_demo`, which puts it together and reports; demo/loading.py makes the blocks and copies them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import psycopg
from psycopg import sql
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from demo import ledger_rows
from demo import orders as demo_orders
from demo import tags as demo_tags
from demo.loading import Connection, Identities, Ledger, LedgerPlan, Source, blocks, existing_members, load
from demo.people import DAY, DemoBrand, Plan, identity_counts, purchases
from store import tables
from store.brands import brand_by_code, create_brand, groups_by_id, tiers_by_brand
from store.errors import DomainError, ErrorCode
from store.members.phones import PhoneVault
from store.tables import DEFAULT_TIERS

GROUP_CODE = "demo"
GROUP_NAME = "Demo Group 示范集团"


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


_sequence = sql.SQL("pg_get_serial_sequence({}, 'id')").format(sql.Literal(tables.members.name))
_ANALYZE = sql.SQL("ANALYZE {}").format(
    sql.SQL(", ").join(
        sql.Identifier(table.name)
        for table in (
            tables.members,
            tables.member_identities,
            tables.member_tags,
            *ledger_rows.TABLES,
            tables.order_lines,
        )
    )
)


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


# --- ids, reserved per block -------------------------------------------------------------------------------


def _ledger(conn: Connection, plans: list[Plan], mode: Ledger) -> LedgerPlan:
    """Reserves ids for every block's ledger rows (an upper bound: gaps are harmless) and reads the rules."""
    bounds = {
        (plan.brand_id, start): ledger_rows.upper_bounds(
            int(purchases(plan, np.arange(start, stop, dtype=np.uint64))[1].sum()), stop - start
        )
        for plan, start, stop in blocks(plans)
    }
    first: dict[str, int] = {}
    for table, name in zip(ledger_rows.TABLES[:3] + ledger_rows.TABLES[4:], _ID_FIELDS, strict=True):
        first[name] = ledger_rows.reserve(conn, table.name, sum(getattr(b, name) for b in bounds.values()))
    ids = {}
    for key, bound in bounds.items():
        ids[key] = ledger_rows.Ids(**first)
        first = {name: first[name] + getattr(bound, name) for name in _ID_FIELDS}
    rules = {plan.brand_id: demo_orders.rules(conn, plan.brand_id) for plan in plans}
    return LedgerPlan(mode, rules, ids, int(time.time()))


def _identity_ids(conn: Connection, plans: list[Plan]) -> Identities:
    counts = {
        (plan.brand_id, start): int(identity_counts(plan.rand, np.arange(start, stop, dtype=np.uint64)).sum())
        for plan, start, stop in blocks(plans)
    }
    first = ledger_rows.reserve(conn, tables.member_identities.name, sum(counts.values()))
    starts = itertools.accumulate(counts.values(), initial=first)
    return dict(zip(counts, starts, strict=False))


_ID_FIELDS = ("posting", "entry", "lot", "order")


# --- putting it together -----------------------------------------------------------------------------------


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
    (demo/ledger.py); OPENING the same orders and totals with the balance imported as one
    posting (demo/opening.py); NONE only their profiles. With ``tags`` each brand gets ~200
    tags and every member ~15 of them (demo/tags.py). Runs an event loop of its own: call it
    where none is running (a thread).
    """
    if members < 1:
        raise ValueError("members must be at least 1")
    started = time.perf_counter()
    brand_ids = _ensure_brands(url)
    with psycopg.connect(url, autocommit=True) as conn:
        existing = existing_members(conn, brand_ids)
        if existing and not replace:
            raise DemoError(
                f"the demo brands already have {existing:,} members: pass --replace (replace=True) to rebuild them"
            )
        with _progress() as progress:
            with _stage(progress, "reserve ids"):
                plans = _plans(brand_ids, _reserve_member_ids(conn, members), members, seed)
                identity_ids = _identity_ids(conn, plans)
            posting = None
            if ledger is not Ledger.NONE:
                with _stage(progress, "plan orders and points"):
                    posting = _ledger(conn, plans, ledger)
            catalogs = {}
            if tags:
                with _stage(progress, "define tags"):
                    catalogs = {p.brand_id: demo_tags.define(conn, p.brand_id, p.brand.code, seed) for p in plans}
            source = Source(plans, vault, identity_ids, posting, catalogs)
            totals = load(conn, url, source, progress, replace=existing > 0)
            with _stage(progress, "analyze"):
                conn.execute(_ANALYZE)  # fresh statistics, or the first queries plan for empty tables
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


@contextlib.contextmanager
def _stage(progress: Progress, name: str) -> Iterator[None]:
    """A one-step bar for a stage that counts nothing: it shows the stage and its time, then done."""
    task = progress.add_task(name, total=1)
    yield
    progress.advance(task)


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

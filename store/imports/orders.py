"""Importing orders: each row recorded as `recordOrder` records it, with the buyer named by its
identity on the order's channel (`buyerId`).

A row is checked as the API checks one, its buyer found by identity (UNKNOWN_MEMBER when none),
then `store.ledger.orders.purchase` checks what the ledger checks and makes its request: key
``order:<channel>:<id>`` and fingerprint. All of that happens in the worker thread, on a connection
of its own, while the previous chunk merges. An order whose key is already held is a replay, which
changes nothing when it is the same order and is refused as DUPLICATE_REQUEST when it is not (as a
retry with another payload would be). The rest are recorded by `store.imports.order_rounds` with
the ledger's expressions; an order it could not record (its member not live), or whose buyer a
merge moved to another member since the worker looked, goes through `store.ledger.orders.record`
alone, which records it or refuses it with the API's error.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import AsyncConnection
from sqlalchemy.dialects.postgresql import ARRAY

from store.errors import DomainError, ErrorCode
from store.imports import order_rounds
from store.imports.files import Columns, Record
from store.imports.rows import (
    Reject,
    copy_bytes,
    copy_into,
    copy_text,
    create_staging,
    moment,
    rejected,
    required,
    text,
    yuan,
)
from store.imports.staged import Merged, Staged
from store.ledger import orders
from store.ledger.orders import OrderInput, Purchase
from store.members.profiles import member_id_by_identity
from store.members.unification import MAX_EXTERNAL_ID, check_channel, check_external_id
from store.sql import Query
from store.tables import member_identities, points_postings
from store.urls import libpq_url

ACTOR = "import"
MAX_STORE = 64  # characters of a store code, as the API's
COLUMNS = Columns(required=("channel", "external_order_id", "buyer_id", "amount", "paid_at"), optional=("store",))
_TEXTS = sa.bindparam("channels", type_=ARRAY(sa.Text))
_given = (
    sa.func.unnest(_TEXTS, sa.bindparam("buyers", type_=ARRAY(sa.Text)))
    .table_valued("channel", "buyer_id", with_ordinality="n")
    .render_derived(name="given")
)
# Each row's buyer, in row order (the worker's connection).
_buyers = Query(
    sa.select(member_identities.c.member_id)
    .select_from(
        _given.outerjoin(
            member_identities,
            sa.and_(
                member_identities.c.brand_id == sa.bindparam("brand_id"),
                member_identities.c.channel == _given.c.channel,
                member_identities.c.external_id == _given.c.buyer_id,
            ),
        )
    )
    .order_by(_given.c.n)
)
# Keys of the chunk already held by a committed posting, with its fingerprint.
_held = Query(
    sa.select(points_postings.c.idempotency_key, points_postings.c.fingerprint).where(
        points_postings.c.brand_id == sa.bindparam("brand_id"),
        points_postings.c.idempotency_key == sa.any_(sa.bindparam("keys", type_=ARRAY(sa.Text))),
    )
)


@dataclass(frozen=True, slots=True)
class _Order:
    """A row checked, with its buyer (None: unknown) and, for a known buyer, its ledger request."""

    record: Record
    channel: str
    buyer_id: str
    key: str
    member_id: int | None
    refused: DomainError | None  # by the ledger's checks, which the API makes once the buyer is found
    purchase: Purchase | None
    fingerprint: bytes
    items: str  # its row of `order_rounds.ITEMS` after the round, as COPY text


def _duplicate(key: str) -> DomainError:
    return DomainError(
        ErrorCode.DUPLICATE_REQUEST,
        f"idempotency key {key!r} was already used for a different request",
        field="idempotencyKey",
    )


def _unknown_buyer(channel: str, buyer_id: str) -> DomainError:
    return DomainError(ErrorCode.UNKNOWN_MEMBER, f"no member has the {channel} identity {buyer_id!r}", field="buyerId")


@dataclass(frozen=True, slots=True)
class _Checked:
    """A row checked on its own, before its buyer is known."""

    record: Record
    order: OrderInput  # member 0 until the buyer is found
    buyer_id: str
    key: str
    refused: DomainError | None


class OrderImport:
    """Orders rows for one brand: checked in `stage`, recorded in `merge`."""

    kind = "orders"
    columns = COLUMNS
    tables: tuple[str, ...] = ("members", "orders", "points_postings", "points_entries", "points_lots")

    def __init__(self, url: str, brand_id: int) -> None:
        self._url = url
        self._brand_id = brand_id
        self._sequences: dict[str, str] = {}
        self._worker: psycopg.Connection[Any] | None = None  # the worker thread's own

    async def prepare(self, conn: AsyncConnection[Any]) -> None:
        await create_staging(
            conn,
            order_rounds.ITEMS,
            order_rounds.EARNINGS,
            order_rounds.BUYERS,
            order_rounds.PARTS,
            indexes=order_rounds.INDEXES,
        )
        self._sequences = await order_rounds.sequences(conn)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()

    def stage(self, records: list[Record]) -> Staged:
        """Check the rows, find their buyers and make their requests (in the worker thread)."""
        rejects: list[Reject] = []
        checked: list[_Checked] = []
        for record in records:
            try:
                checked.append(self._checked(record))
            except DomainError as error:
                rejects.append(rejected(record.line, record.text, error))
        members = self._buyers(checked)
        items = [self._ordered(row, member_id) for row, member_id in zip(checked, members, strict=True)]
        return Staged(b"", len(items), rejects, Counter(), items)

    def _checked(self, record: Record) -> _Checked:
        if record.problem is not None:
            raise DomainError(ErrorCode.INVALID_INPUT, record.problem)
        channel, external_order_id, buyer_id, amount, paid_at, store = record.values
        order_id = text(required(external_order_id, "externalOrderId"), "externalOrderId", MAX_EXTERNAL_ID)
        buyer = text(required(buyer_id, "buyerId"), "buyerId", MAX_EXTERNAL_ID)
        yuan_paid = yuan(required(amount, "amount"), "amount")
        paid = moment(required(paid_at, "paidAt"), "paidAt")
        store_code = text(store, "store", MAX_STORE)
        code = check_channel(required(channel, "channel"))
        assert order_id is not None
        assert buyer is not None
        assert paid is not None
        order = OrderInput(self._brand_id, 0, code, check_external_id(order_id), yuan_paid, paid, store_code)
        # The ledger's own checks (amount, a payment not in the future) and key, for no member yet.
        try:
            key = orders.purchase(order, ACTOR).request.key
        except DomainError as error:
            return _Checked(record, order, buyer, "", error)
        return _Checked(record, order, buyer, key, None)

    def _buyers(self, checked: Sequence[_Checked]) -> list[int | None]:
        if self._worker is None:
            self._worker = psycopg.connect(libpq_url(self._url), autocommit=True)
        params = {
            "brand_id": self._brand_id,
            "channels": [row.order.channel for row in checked],
            "buyers": [row.buyer_id for row in checked],
        }
        return [row[0] for row in self._worker.execute(_buyers.sql, params).fetchall()]

    def _ordered(self, row: _Checked, member_id: int | None) -> _Order:
        if member_id is None or row.refused is not None:
            return _Order(row.record, row.order.channel, row.buyer_id, row.key, member_id, row.refused, None, b"", "")
        purchase = orders.purchase(_bought_by(row.order, member_id), ACTOR)
        fingerprint = purchase.request.fingerprint()
        items = _items_row(row.record.line, row.buyer_id, purchase, fingerprint)
        return _Order(
            row.record, row.order.channel, row.buyer_id, row.key, member_id, None, purchase, fingerprint, items
        )

    async def merge(self, conn: AsyncConnection[Any], staged: Staged, queue: bool) -> Merged:
        """Record a staged chunk, inside the caller's transaction (`runner.Kind.merge`)."""
        keys = [order.key for order in staged.items if order.purchase is not None]
        rows = await _held.all(conn, brand_id=self._brand_id, keys=keys)
        held = {row["idempotency_key"]: bytes(row["fingerprint"]) for row in rows}
        counts: Counter[str] = Counter()
        rejects: list[Reject] = []
        fresh: dict[int, _Order] = {}
        lines: list[str] = []
        rounds: Counter[int] = Counter()
        for order in staged.items:  # in file order: `held` is the keys as the rows before left them
            error = self._refused(order, held)
            if error is not None:
                rejects.append(rejected(order.record.line, order.record.text, error))
            elif order.key in held:
                counts["unchanged"] += 1
            else:
                assert order.member_id is not None
                held[order.key] = order.fingerprint
                rounds[order.member_id] += 1
                lines.append(f"{rounds[order.member_id]}\t{order.items}")
                fresh[order.record.line] = order
        await copy_into(conn, order_rounds.ITEMS, order_rounds.ITEM_COLUMNS, "".join(lines).encode())
        alone = await order_rounds.record_rounds(conn, self._brand_id, self._sequences)
        counts["recorded"] += len(fresh) - len(alone)
        for line in alone:
            order = fresh[line]
            try:
                await self._record_alone(conn, order)
            except DomainError as error:
                rejects.append(rejected(line, order.record.text, error))
                continue
            counts["recorded"] += 1
        if queue:
            await order_rounds.queue_changes(conn, self._brand_id)
        return Merged(counts, rejects)

    @staticmethod
    def _refused(order: _Order, held: dict[str, bytes]) -> DomainError | None:
        if order.member_id is None:
            return _unknown_buyer(order.channel, order.buyer_id)
        if order.refused is not None:
            return order.refused
        earlier = held.get(order.key)
        return _duplicate(order.key) if earlier is not None and earlier != order.fingerprint else None

    async def _record_alone(self, conn: AsyncConnection[Any], order: _Order) -> None:
        """The single path, with the buyer found again (a merge may have moved it meanwhile)."""
        assert order.purchase is not None
        member_id = await member_id_by_identity(
            conn, brand_id=self._brand_id, channel=order.channel, external_id=order.buyer_id
        )
        if member_id is None:
            raise _unknown_buyer(order.channel, order.buyer_id)
        await orders.record(conn, orders.purchase(_bought_by(order.purchase.order, member_id), ACTOR))


def _bought_by(order: OrderInput, member_id: int) -> OrderInput:
    return OrderInput(
        order.brand_id, member_id, order.channel, order.external_order_id, order.amount, order.paid_at, order.store
    )


def _items_row(line: int, buyer_id: str, purchase: Purchase, fingerprint: bytes) -> str:
    """An order's row of `order_rounds.ITEMS` after its round (which the merge puts in front)."""
    order, request = purchase.order, purchase.request
    amount = str(order.amount)
    fields = [
        str(line),
        str(request.member_id),
        copy_text(buyer_id),
        copy_text(request.key),
        copy_text(request.operation),
        copy_bytes(fingerprint),
        copy_text(request.channel),
        copy_text(request.actor),
        copy_text(order.external_order_id),
        amount,
        amount,
        order.paid_at.isoformat(),
        copy_text(order.store),
        copy_text(orders.cause(order)),
    ]
    return "\t".join(fields) + "\n"

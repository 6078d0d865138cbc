"""An order's lines: what it bought (sku, product category, quantity, amount), for purchase behaviour.

Rules (checked before anything is written, each refusal naming the line: `lines[2].amount`):
- at most MAX_LINES lines; a sku and a category are codes (PRODUCT_CODE: letters, digits, `_ . -`,
  up to 64 characters) as the brand's product catalog spells them;
- quantity 1 to MAX_QUANTITY; amount 0 to the order's amount in yuan with at most 2 decimals (0 is
  a free gift);
- the lines' amounts add up to at most the order's amount: lines need not list everything an
  order paid for (shipping, a deposit), but never more than it.

Lines are written by the order's own statement (a CTE of `store.ledger.orders` and of
`store.ledger.batched_orders`), so an order never exists without the lines it was sent with. They
are part of the order's request: a retry with the same lines replays it, other lines under the
same key are DUPLICATE_REQUEST, and an order sent without lines fingerprints as it always did.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY

from store.errors import DomainError, ErrorCode
from store.tables import PRODUCT_CODE, order_lines

MAX_LINES = 200
MAX_QUANTITY = 1_000_000
CENT = Decimal("0.01")
_CODE = re.compile(PRODUCT_CODE.replace("$", r"\Z"))


@dataclass(frozen=True, slots=True)
class OrderLine:
    sku: str
    category: str
    quantity: int
    amount: Decimal


def check_lines(lines: Sequence[OrderLine], order_amount: Decimal) -> tuple[OrderLine, ...]:
    """The lines as they will be stored (amounts to the cent); INVALID_INPUT naming the line otherwise."""
    if len(lines) > MAX_LINES:
        raise _invalid(f"an order has at most {MAX_LINES} lines, not {len(lines)}", "lines")
    checked = tuple(_line(line, index, order_amount) for index, line in enumerate(lines))
    total = sum((line.amount for line in checked), Decimal(0))
    if total > order_amount:
        raise _invalid(f"the lines add up to {total} yuan, more than the order's {order_amount}", "lines")
    return checked


def _line(line: OrderLine, index: int, order_amount: Decimal) -> OrderLine:
    at = f"lines[{index}]"
    for name, code in (("sku", line.sku), ("category", line.category)):
        if not _CODE.match(code):
            raise _invalid(
                f"{at}.{name} must be 1-64 letters, digits, '_', '.' or '-' (starting with a letter or digit),"
                f" not {code!r}",
                f"{at}.{name}",
            )
    if not 1 <= line.quantity <= MAX_QUANTITY:
        raise _invalid(f"{at}.quantity must be 1-{MAX_QUANTITY}, not {line.quantity}", f"{at}.quantity")
    amount = line.amount
    if not (0 <= amount <= order_amount) or amount != amount.quantize(CENT):
        raise _invalid(
            f"{at}.amount must be 0-{order_amount} yuan (the order's amount) with at most 2 decimals, not {amount}",
            f"{at}.amount",
        )
    return OrderLine(line.sku, line.category, line.quantity, amount.quantize(CENT))


def _invalid(message: str, field: str) -> DomainError:
    return DomainError(ErrorCode.INVALID_INPUT, message, field=field)


def payload(lines: Sequence[OrderLine]) -> dict[str, Any]:
    """What the lines add to the order's request (its fingerprint): nothing when there are none."""
    if not lines:
        return {}
    return {"lines": [[line.sku, line.category, line.quantity, str(line.amount)] for line in lines]}


# The lines of the orders a statement inserts: one array parameter per column, one element per
# line, each naming its order by (brand, channel, external order id) as the order's row has them.
_COLUMNS: dict[str, sa.types.TypeEngine[Any]] = {
    "line_brand_id": sa.BigInteger(),
    "line_channel": sa.Text(),
    "line_order": sa.Text(),
    "line_no": sa.SmallInteger(),
    "line_sku": sa.Text(),
    "line_category": sa.Text(),
    "line_quantity": sa.Integer(),
    "line_amount": sa.Numeric(14, 2),
}


def insert_lines(inserted_orders: Any, name: str) -> Any:
    """A CTE writing the lines of the orders in `inserted_orders` (a CTE returning order rows)."""
    items = (
        sa.func.unnest(*(sa.bindparam(column, type_=ARRAY(kind)) for column, kind in _COLUMNS.items()))
        .table_valued(*_COLUMNS)
        .render_derived(name="line_items")
    )
    o = inserted_orders.c
    chosen = sa.select(
        o.id, items.c.line_no, items.c.line_sku, items.c.line_category, items.c.line_quantity, items.c.line_amount
    ).select_from(
        inserted_orders.join(
            items,
            sa.and_(
                o.brand_id == items.c.line_brand_id,
                o.channel == items.c.line_channel,
                o.external_order_id == items.c.line_order,
            ),
        )
    )
    columns = ["order_id", "line", "sku", "category", "quantity", "amount"]
    return sa.insert(order_lines).from_select(columns, chosen).cte(name)


def line_params(orders: Sequence[tuple[int, str, str, Sequence[OrderLine]]]) -> dict[str, list[Any]]:
    """`insert_lines`' parameters for (brand id, channel, external order id, lines) of each order."""
    params: dict[str, list[Any]] = {column: [] for column in _COLUMNS}
    for brand_id, channel, external_id, lines in orders:
        for number, line in enumerate(lines, start=1):
            for column, value in zip(
                _COLUMNS,
                (brand_id, channel, external_id, number, line.sku, line.category, line.quantity, line.amount),
                strict=True,
            ):
                params[column].append(value)
    return params

"""Purchase behaviour facts for the audience index: read in bulk, turned into day keys.

What each name means (one definition, kept by the row compiler's SQL in store.audiences.facts,
these bulk reads and the reference evaluator's facts alike; the differential tests hold them to it):

    bought:<p>            the member has an order with a line whose category or sku is p (any day;
                          with WITHIN, the last such order's day is in the window)
    first_purchase        the day of the member's first order (earliest paid_at)
    first_channel:<c>     the channel of that order (ties on paid_at: the lower order id)
    orders_<N>d           orders paid on or after today - N (refunded or not, as order_count)
    orders_<N>d:<c>       ... with at least one line of category c
    spend_<N>d            what those orders cost net of refunds: amount - refunded
    spend_<N>d:<c>        the net amount of their lines of category c: each line's amount less the
                          order's refunded share, floor(line x (amount - refunded) / amount) in fen

A refund lowers spend and never a count or a purchase (as `order_count` and `total_spend` do). Days
are the brand's time zone's. Everything is stored as days (tagquery.bitmap_keys: `buy.*`), so each
window is computed against the query's own day, never a stored "as of" day.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias

from tagquery.bitmap_keys import (
    DATE_WIDTH,
    FIRST_PURCHASE_DAY,
    MAX_DAY,
    SPEND_FEN,
    bit_key,
    bought_field,
    category_order_field,
    has_key,
    spend_day_field,
)

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

Ids: TypeAlias = "npt.NDArray[np.int64]"
Keys = Iterator[tuple[str, Ids]]

# Net amounts in fen, as SQL over an order `o` and one of its lines `l` (numeric until the floor: a
# line's fen times the order's net fen does not fit a bigint for the largest orders).
ORDER_NET_FEN = "((o.amount - o.refunded) * 100)::bigint"
# (Most orders have no refund: their lines' fen need no numeric division.)
LINE_NET_FEN = (
    "CASE WHEN o.refunded = 0 THEN (l.amount * 100)::bigint"
    " ELSE floor(l.amount * 100 * (o.amount - o.refunded) / o.amount)::bigint END"
)


def _day(expression: str) -> str:
    return f"(({expression})::date - DATE '1900-01-01')::bigint"


_AGG = "string_agg({}, ''::bytea{})"


def _only(ids: bool) -> str:
    return " AND o.member_id = ANY(:ids)" if ids else ""


def first_channel_sets(ids: bool) -> str:
    """UNION ALL rows (key, ids) of `first_channel:<c>`, for the index's set query."""
    return f"""
UNION ALL SELECT 'first_channel:' || f.channel, {_AGG.format("int8send(f.member_id)", "")} FROM (
    SELECT DISTINCT ON (o.member_id) o.member_id, o.channel FROM orders o
    WHERE o.brand_id = :brand_id{_only(ids)} ORDER BY o.member_id, o.paid_at, o.id
) f GROUP BY f.channel
"""  # noqa: S608 (constant text: no input reaches these strings)


def line_rows(ids: bool) -> str:
    """Every order line once, as rows (category, name, packed): per category (`category` true) and
    per sku, (member, order, day, net fen of the line) of each line of it, in no order.

    One join of orders and lines with the two groupings hashed side by side: reading them per category
    and per sku, each grouped per order and sorted in SQL, took 9.2 s of a 600,000-member brand's
    reads against 3.6 s for this (split_lines does the grouping in numpy)."""
    packed = f"int8send(o.member_id) || int8send(o.id) || int8send({_day('o.paid_at AT TIME ZONE tz.name')})"
    return f"""
SELECT GROUPING(l.sku) = 1 AS category, coalesce(l.category, l.sku) AS name,
       {_AGG.format(f"{packed} || int8send({LINE_NET_FEN})", "")} AS rows
FROM orders o JOIN order_lines l ON l.order_id = o.id, tz
WHERE o.brand_id = :brand_id{_only(ids)}
GROUP BY GROUPING SETS ((l.category), (l.sku))
"""  # noqa: S608


def split_lines(named: Iterable[tuple[bool, str, Ids]]) -> tuple[dict[str, Ids], dict[str, Ids]]:
    """line_rows' rows -> (categories, products) as IndexFacts holds them: per category, (member,
    day, net fen) of each order with a line of it, the order's lines of it summed, in no order; per
    sku, (member, last day bought)."""
    import numpy as np  # lazily: a count needs none (issue 16)

    categories: dict[str, Ids] = {}
    products: dict[str, Ids] = {}
    for category, name, packed in named:
        lines = packed.reshape(-1, 4)  # member, order, day, net
        if category:
            lines = lines[np.argsort(lines[:, 1], kind="stable")]
            starts = np.flatnonzero(np.diff(lines[:, 1], prepend=-1))
            orders = np.column_stack([lines[starts, 0], lines[starts, 2], np.add.reduceat(lines[:, 3], starts)])
            categories[name] = orders.reshape(-1)
        else:
            lines = lines[np.lexsort((-lines[:, 2], lines[:, 0]))]
            first = np.flatnonzero(np.diff(lines[:, 0], prepend=-1))
            products[name] = lines[first][:, [0, 2]].reshape(-1)
    return categories, products


# Keys (tagquery.bitmap_keys), from the arrays store.audiences.index_facts reads.


def purchase_keys(orders: npt.NDArray[np.int64], categories: Mapping[str, Ids], products: Mapping[str, Ids]) -> Keys:
    """Every `buy.*` key. `orders`: (member, k, day, net fen) per order, k = 1 the most recent;
    `categories`: per category (member, day, net fen) rows; `products`: per sku (member, day)."""
    yield from order_keys(orders)
    yield from line_keys(categories, products)


def order_keys(orders: npt.NDArray[np.int64]) -> Keys:
    """The `buy.*` keys of whole orders: the first purchase's day and the spend days."""
    yield from _first_purchase(orders)
    yield from _spend_days(orders[:, 0], orders[:, 1], orders[:, 2], orders[:, 3], None)


def line_keys(categories: Mapping[str, Ids], products: Mapping[str, Ids]) -> Keys:
    """The `buy.*` keys of the order lines: per category its orders' days by rank and its spend
    days, and per category and sku the last day bought."""

    bought: dict[str, Ids] = {name: rows.reshape(-1, 2) for name, rows in products.items()}
    for category, rows in categories.items():
        table = ranked(rows.reshape(-1, 3))  # member, k, day, net
        for nth, rows in by_rank(table, 1):
            yield from sliced_days(category_order_field(category, nth), rows[:, 0], rows[:, 2])
        yield from _spend_days(table[:, 0], table[:, 1], table[:, 2], table[:, 3], category)
        bought[category] = _latest(table[table[:, 1] == 1][:, [0, 2]], bought.get(category))
    for product, table in bought.items():
        yield from sliced_days(bought_field(product), table[:, 0], table[:, 1])


def by_rank(table: npt.NDArray[np.int64], column: int) -> Iterator[tuple[int, npt.NDArray[np.int64]]]:
    """Each value of `table[:, column]` (a rank k) ascending, with its rows in their order: one sort,
    where a mask per rank read the whole table once per k (dozens of ranks, millions of orders)."""
    import numpy as np  # lazily: a count needs none (issue 16)

    if not len(table):
        return
    ranked = table[np.argsort(table[:, column], kind="stable")]
    starts = np.flatnonzero(np.diff(ranked[:, column], prepend=-1))
    for start, end in zip(starts.tolist(), [*starts[1:].tolist(), len(ranked)], strict=True):
        yield int(ranked[start, column]), ranked[start:end]


def _latest(rows: Ids, other: Ids | None) -> Ids:
    """(member, day) rows, with a sku of the same name as the category merged in: each member's
    latest day of either."""
    import numpy as np  # lazily: a count needs none (issue 16)

    if other is None:
        return rows
    both = np.concatenate([rows, other])
    both = both[np.lexsort((-both[:, 1], both[:, 0]))]
    latest: Ids = both[np.flatnonzero(np.diff(both[:, 0], prepend=-1))]
    return latest


def sliced_days(field: str, ids: Ids, days: Ids) -> Keys:
    """`has:<field>` and the bit slices of the days (each member at most once)."""
    import numpy as np  # lazily: a count needs none (issue 16)

    if not ids.size:
        return
    yield has_key(field), ids
    # Every bit of every day unpacked at once, one contiguous row per bit: a shift, a mask and a
    # comparison per bit over the whole field were most of the purchase keys' time (thousands of fields).
    big_endian = np.clip(days, 0, MAX_DAY).astype(">u2").view(np.uint8).reshape(-1, 2)
    planes = np.ascontiguousarray(np.unpackbits(big_endian, axis=1).T).view(np.bool_)  # row 0: bit 15
    for bit in range(DATE_WIDTH):
        chosen = ids[planes[DATE_WIDTH - 1 - bit]]
        if chosen.size:
            yield bit_key(field, bit), chosen


def _first_purchase(orders: npt.NDArray[np.int64]) -> Keys:
    import numpy as np  # lazily: a count needs none (issue 16)

    order = np.lexsort((orders[:, 2], orders[:, 0]))  # by member, then day: each member's first row
    members, days = orders[order, 0], orders[order, 2]
    first = np.flatnonzero(np.diff(members, prepend=-1))
    yield from sliced_days(FIRST_PURCHASE_DAY, members[first], days[first])


def ranked(orders: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """(member, day, net) rows -> (member, k, day, net) by member, most recent first: k = 1 is the
    member's most recent order. Orders of one day may take their ranks in either order: every key
    is of days, and theirs are the same."""
    import numpy as np  # lazily: a count needs none (issue 16)

    orders = orders[np.lexsort((-orders[:, 1], orders[:, 0]))]
    return np.column_stack([orders[:, 0], _rank_by_recency(orders[:, 0], orders[:, 1]), orders[:, 1:]])


def _rank_by_recency(members: Ids, days: Ids) -> Ids:
    """k (1 = most recent) of each row among its member's rows, for rows in member order, most
    recent first (as `ranked` sorts them)."""
    import numpy as np  # lazily: a count needs none (issue 16)

    if not members.size:
        return np.empty(0, dtype=np.int64)
    starts = np.flatnonzero(np.diff(members, prepend=members[0] - 1))
    position = np.arange(members.size)
    k: Ids = position - np.repeat(starts, np.diff(np.append(starts, members.size))) + 1
    return k


def _spend_days(members: Ids, k: Ids, days: Ids, net: Ids, category: str | None) -> Keys:
    """`buy.spend.<f>` (of `category`): per member, the day of the order at which its spend, summed
    from the most recent order back, first reaches f; no key for a member whose spend never does."""
    import numpy as np  # lazily: a count needs none (issue 16)

    if not members.size:
        return
    order = np.lexsort((k, members))
    members, days, net = members[order], days[order], net[order]
    total = np.cumsum(net)
    starts = np.flatnonzero(np.diff(members, prepend=members[0] - 1))
    before = np.repeat(total[starts] - net[starts], np.diff(np.append(starts, members.size)))
    spent = total - before  # each member's spend from its most recent order to this one
    # The steps each row crosses, prev < step <= spent (spent never falls: net >= 0, so a member
    # crosses a step at most once), as (row, step) pairs grouped by step: one pass over the rows, where
    # comparing every row with every step took 15.
    steps = np.array(SPEND_FEN, dtype=np.int64)
    lowest, highest = np.searchsorted(steps, spent - net, side="right"), np.searchsorted(steps, spent, side="right")
    crossed = highest - lowest
    rows = np.repeat(np.arange(spent.size), crossed)
    step = lowest[rows] + np.arange(rows.size) - np.repeat(np.cumsum(crossed) - crossed, crossed)
    by_step = np.argsort(step, kind="stable")  # each step's rows in member order
    rows = rows[by_step]
    bounds = np.searchsorted(step[by_step], np.arange(steps.size + 1))
    for at, fen in enumerate(SPEND_FEN):
        chosen = rows[bounds[at] : bounds[at + 1]]
        yield from sliced_days(spend_day_field(fen, category), members[chosen], days[chosen])


def among_live(table: Mapping[str, Ids], columns: int, live: Any) -> dict[str, Ids]:
    """The rows of each name whose member (first column) `live(members)` keeps."""
    kept = {}
    for name, rows in table.items():
        shaped = rows.reshape(-1, columns)
        chosen = shaped[live(shaped[:, 0])]
        if chosen.size:
            kept[name] = chosen.reshape(-1)
    return kept

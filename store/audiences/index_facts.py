"""The facts the bitmap index is built from, read in bulk as packed int8 arrays.

Each query aggregates server-side into one bytea of big-endian int8s (`string_agg(int8send(..))`,
measured 1.3-2.7x faster than shipping rows) that numpy reads without a Python loop. The same
queries serve a full build (every live member of a brand) and a delta (`:ids`), so the index has
one definition of each fact: the one in store.audiences.facts, which these queries must keep to (the
differential tests hold them to it).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import sqlalchemy as sa
from psycopg import AsyncConnection

from store.audiences import purchases, stage_days
from store.audiences.facts import DEFAULT_TIMEZONE
from store.sql import Query, Row
from tagquery.bitmap_keys import UNIVERSE

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt


Ids: TypeAlias = "npt.NDArray[np.int64]"
NULL = -(2**62)  # a missing date in `values`
VALUE_COLUMNS = ("id", "points", "growth", "order_count", "total_spend", "registered", "last_purchase", "birthday")


def _live(ids: bool) -> str:
    only = " AND id = ANY(:ids)" if ids else ""
    return f"""live AS (
    SELECT id, tier, status, gender, city, points_balance, growth_value, order_count, total_spend,
           registered_at, last_purchase_at, birthday
    FROM members WHERE brand_id = :brand_id AND merged_into IS NULL AND erased_at IS NULL{only}
), tz AS (
    SELECT coalesce((SELECT timezone FROM brand_rules WHERE brand_id = :brand_id), '{DEFAULT_TIMEZONE}') AS name
)"""  # noqa: S608 (constant text: no input reaches these strings)


_AGG = "string_agg(int8send({}), ''::bytea)"


# Rows owned by members (identities, tags, orders) are read by brand alone, without joining the
# live members (measured: the join was half the time of a build); load_index_facts drops the rows
# of members outside the universe (merged away) in numpy.
def _sets(ids: bool) -> str:
    def only(alias: str) -> str:
        return f" AND {alias}.member_id = ANY(:ids)" if ids else ""

    return f"""
SELECT '{UNIVERSE}' AS key, {_AGG.format("id")} AS ids FROM live
UNION ALL SELECT 'tier:' || tier, {_AGG.format("id")} FROM live GROUP BY tier
UNION ALL SELECT 'status:' || status, {_AGG.format("id")} FROM live GROUP BY status
UNION ALL SELECT 'gender:' || gender, {_AGG.format("id")} FROM live GROUP BY gender
UNION ALL SELECT 'city:' || city, {_AGG.format("id")} FROM live WHERE city IS NOT NULL GROUP BY city
UNION ALL SELECT 'channel:' || i.channel, {_AGG.format("i.member_id")}
    FROM member_identities i WHERE i.brand_id = :brand_id{only("i")} GROUP BY i.channel
UNION ALL SELECT 'tag:' || d.code, t.ids FROM (
    SELECT t.tag_id, {_AGG.format("t.member_id")} AS ids FROM member_tags t
    WHERE t.brand_id = :brand_id AND (t.expires_at IS NULL OR t.expires_at > now()){only("t")}
    GROUP BY t.tag_id
) t JOIN tag_definitions d ON d.id = t.tag_id
UNION ALL SELECT 'consent:' || c.channel, {_AGG.format("c.member_id")}
    FROM member_consents c WHERE c.brand_id = :brand_id AND c.granted{only("c")} GROUP BY c.channel
{purchases.first_channel_sets(ids)}"""  # noqa: S608


def _day(expression: str) -> str:
    return f"coalesce(({expression})::date - DATE '1900-01-01', {NULL})::bigint"


_VALUES = f"""
SELECT {
    _AGG.format(
        "id) || int8send(points_balance) || int8send(growth_value) || int8send(order_count::bigint)"
        " || int8send((total_spend * 100)::bigint)"
        f" || int8send({_day('registered_at AT TIME ZONE tz.name')})"
        f" || int8send({_day('last_purchase_at AT TIME ZONE tz.name')})"
        f" || int8send({_day('birthday')}"
    )
}
FROM live, tz
"""  # noqa: S608


# The day of each order and its net amount in fen, in no order (member_facts numbers them: a window
# over the orders sorted by member and time was half of this statement's time).
def _orders(ids: bool) -> str:
    only = " AND o.member_id = ANY(:ids)" if ids else ""
    day = _day("o.paid_at AT TIME ZONE tz.name")
    return f"""
SELECT {_AGG.format(f"o.member_id) || int8send({day}) || int8send({purchases.ORDER_NET_FEN}")}
FROM orders o, tz WHERE o.brand_id = :brand_id{only}
"""  # noqa: S608


def _queries(ids: bool) -> tuple[Query, ...]:
    head = f"WITH {_live(ids)}"
    bodies = (
        _sets(ids),
        _VALUES,
        _orders(ids),
        purchases.line_rows(ids),
        stage_days.entry_rows(ids),
    )
    return tuple(Query(sa.text(f"{head}{body}"), binary=True) for body in bodies)


_ALL = _queries(ids=False)
_SOME = _queries(ids=True)


@dataclasses.dataclass(frozen=True, slots=True)
class IndexFacts:
    sets: dict[str, Ids]
    """Key -> ids of the members in it (u, tier:, status:, gender:, city:, channel:, tag:, consent:)."""
    values: npt.NDArray[np.int64]
    """One row per live member, columns VALUE_COLUMNS; NULL marks a missing date."""
    orders: npt.NDArray[np.int64]
    """One row per order of a live member: member id, k (1 = most recent), day, net amount in fen."""
    categories: dict[str, Ids] = dataclasses.field(default_factory=dict)
    """Per product category: (member, day, net fen) of each order with a line of it, flat."""
    products: dict[str, Ids] = dataclasses.field(default_factory=dict)
    """Per sku: (member, last day bought), flat (a category's last day is in `categories`)."""
    stages: dict[str, Ids] = dataclasses.field(default_factory=dict)
    """Per lifecycle stage: (member, day of its last recorded entry into it), flat."""


async def load_index_facts(
    conn: AsyncConnection[Any], brand_id: int, ids: Sequence[int] | None, beside: AsyncConnection[Any] | None = None
) -> IndexFacts:
    """The facts of every live member of the brand, or of those among `ids`. With `beside`, a second
    connection, the order lines are read there at the same time (a rebuild: its reads are most of
    its time, and the server has two cores). Only for a caller whose transaction has written no fact
    `beside` cannot see (each statement reads what is committed when it starts, as in sequence)."""
    if beside is None:
        facts, lines = await member_facts(conn, brand_id, ids), await line_facts(conn, brand_id, ids)
    else:
        facts, lines = await asyncio.gather(member_facts(conn, brand_id, ids), line_facts(beside, brand_id, ids))
    categories, products = await asyncio.to_thread(live_lines, lines, facts.sets[UNIVERSE])
    return dataclasses.replace(facts, categories=categories, products=products)


Lines: TypeAlias = "tuple[dict[str, Ids], dict[str, Ids]]"
"""(categories, products) as IndexFacts holds them."""


async def member_facts(
    on: AsyncConnection[Any],
    brand_id: int,
    ids: Sequence[int] | None = None,
    universe_known: asyncio.Future[Ids] | None = None,
) -> IndexFacts:
    """Every fact but the order lines (line_facts), of the live members; `sets[UNIVERSE]` sorted.
    `universe_known` gets the live members as soon as they are read, before the other facts. The
    numpy work runs in worker threads: the server's applier shares its event loop with requests,
    and for a large brand it takes seconds."""
    sets_q, values_q, orders_q, _, stages_q = _ALL if ids is None else _SOME
    params = _params(brand_id, ids)
    sets, universe = await asyncio.to_thread(_live_sets, await sets_q.all(on, **params))
    if universe_known is not None:
        universe_known.set_result(universe)
    values_data = await values_q.scalar(on, **params)
    orders_data = await orders_q.scalar(on, **params)
    stage_rows = [(row["name"], row["rows"]) for row in await stages_q.all(on, **params)]

    def rest() -> IndexFacts:
        def live(members: Ids) -> npt.NDArray[np.bool_]:
            return among(members, universe)

        order_days = purchases.ranked(_int8s(orders_data).reshape(-1, 3))
        return IndexFacts(
            sets=sets,
            values=_int8s(values_data).reshape(-1, len(VALUE_COLUMNS)),
            orders=order_days[live(order_days[:, 0])],
            stages=purchases.among_live({name: _int8s(packed) for name, packed in stage_rows}, 2, live),
        )

    return await asyncio.to_thread(rest)


def _live_sets(rows: list[Row]) -> tuple[dict[str, Ids], Ids]:
    """The set query's rows -> (key -> ids of live members, the sorted live members)."""
    import numpy as np  # lazily: a count needs none (issue 16)

    sets = {row["key"]: _int8s(row["ids"]) for row in rows if row["ids"] is not None}
    universe = sets[UNIVERSE] = np.sort(sets.get(UNIVERSE, np.empty(0, dtype=np.int64)))
    for key in [key for key in sets if key.startswith(_OWNED)]:
        sets[key] = sets[key][among(sets[key], universe)]
    return sets, universe


async def line_facts(on: AsyncConnection[Any], brand_id: int, ids: Sequence[int] | None = None) -> Lines:
    """The order lines' facts of every member (live or not: live_lines keeps the live ones), grouped
    in a worker thread (numpy work: seconds for a large brand)."""
    lines_q = (_ALL if ids is None else _SOME)[3]
    rows = await lines_q.all(on, **_params(brand_id, ids))
    return await asyncio.to_thread(_split_lines, [(row["category"], row["name"], row["rows"]) for row in rows])


def live_lines(lines: Lines, universe: Ids) -> Lines:
    """The rows of the members in the sorted `universe`."""

    def live(members: Ids) -> npt.NDArray[np.bool_]:
        return among(members, universe)

    categories, products = lines
    return purchases.among_live(categories, 3, live), purchases.among_live(products, 2, live)


def _params(brand_id: int, ids: Sequence[int] | None) -> dict[str, Any]:
    return {"brand_id": brand_id} if ids is None else {"brand_id": brand_id, "ids": list(ids)}


_OWNED = ("channel:", "tag:", "consent:", "first_channel:")


def among(ids: Ids, universe: Ids) -> npt.NDArray[np.bool_]:
    """Which of `ids` are in the sorted `universe` (live members, recomputed ones)."""
    import numpy as np  # lazily: a count needs none (issue 16)

    at = np.minimum(np.searchsorted(universe, ids), max(universe.size - 1, 0))
    return universe[at] == ids if universe.size else np.zeros(ids.size, dtype=np.bool_)


def _split_lines(lines: list[tuple[bool, str, bytes]]) -> tuple[dict[str, Ids], dict[str, Ids]]:
    return purchases.split_lines((category, name, _int8s(packed)) for category, name, packed in lines)


def _int8s(data: bytes | None) -> Ids:
    import numpy as np  # lazily: a count needs none (issue 16)

    if data is None:
        return np.empty(0, dtype=np.int64)
    return np.frombuffer(data, dtype=">i8").astype(np.int64)

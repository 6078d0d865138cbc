"""RFM: recency, frequency and monetary scores 1-5 and the named cells, as terms of the language.

A brand's thresholds are the quintiles (20th, 40th, 60th, 80th percentiles, `percentile_disc`)
over its live buyers (live members with a last purchase), computed by store.audiences.rfm_store:

    recency    days since the last purchase (the brand's day)   R = 1 + #{bounds b : days <= b}
    frequency  order_count (all orders, as the members column)   F = 1 + #{bounds b : orders > b}
    monetary   total_spend (yuan, refunds lowered)               M = 1 + #{bounds b : spend > b}

so the most recent fifth scores R 5, the top fifth by orders F 5 (ties share a score). A member who
never bought has no scores and is in no cell (the NULL rule: every `rfm_*` term is False for it).
The cell is read off a grid of R against FM = ceil((F + M) / 2) (`GRID`): every buyer is in
exactly one. The scores are never stored: like lifecycle, `rfm_r >= 4` and `rfm:champions` are
expanded (`rfm_terms`) into terms on `days_since_last_purchase`, `order_count` and `total_spend`
that both compilers already know, and the reference evaluator reads the scores `scores` computes.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from datetime import date
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from tagquery.ast import Op
from tagquery.bound import Bound, BoundAnd, BoundNot, BoundOr, FieldBetween, FieldCompare, FieldIn
from tagquery.catalog import FieldType
from tagquery.evaluate import evaluate

SCORES = range(1, 6)
FIELDS = ("rfm_r", "rfm_f", "rfm_m")
DIMENSION = "rfm"

# R (rows, 5 first) against FM (columns 1..5). The one place the cells are defined.
_GRID_ROWS = {
    5: ("new_customers", "potential_loyalist", "potential_loyalist", "champions", "champions"),
    4: ("promising", "potential_loyalist", "potential_loyalist", "loyal", "champions"),
    3: ("about_to_sleep", "about_to_sleep", "need_attention", "loyal", "loyal"),
    2: ("hibernating", "hibernating", "at_risk", "at_risk", "cant_lose_them"),
    1: ("lost", "lost", "at_risk", "at_risk", "cant_lose_them"),
}
GRID: Mapping[tuple[int, int], str] = MappingProxyType(
    {(r, fm): cell for r, row in _GRID_ROWS.items() for fm, cell in enumerate(row, start=1)}
)
CELLS = (
    "champions",
    "loyal",
    "potential_loyalist",
    "new_customers",
    "promising",
    "need_attention",
    "about_to_sleep",
    "at_risk",
    "cant_lose_them",
    "hibernating",
    "lost",
)
assert set(GRID.values()) == set(CELLS)


@dataclasses.dataclass(frozen=True, slots=True)
class RfmThresholds:
    """A brand's quintile bounds, ascending, four each (all zero: computed with no buyer)."""

    recency_days: tuple[int, int, int, int] = (0, 0, 0, 0)
    frequency: tuple[int, int, int, int] = (0, 0, 0, 0)
    monetary: tuple[Decimal, Decimal, Decimal, Decimal] = (Decimal(0),) * 4


NO_THRESHOLDS = RfmThresholds()


def fm_score(f: int, m: int) -> int:
    return (f + m + 1) // 2


def cell_of(r: int, f: int, m: int) -> str:
    return GRID[(r, fm_score(f, m))]


def scores(facts: Mapping[str, Any], today: date, thresholds: RfmThresholds) -> dict[str, Any]:
    """`rfm_r`, `rfm_f`, `rfm_m` and `rfm` (the cell) of a member from its facts (None: never bought)."""
    last: date | None = facts.get("last_purchase")
    if last is None:
        return {"rfm_r": None, "rfm_f": None, "rfm_m": None, DIMENSION: None}
    days = (today - last).days
    r = 1 + sum(days <= b for b in thresholds.recency_days)
    f = 1 + sum(facts["order_count"] > b for b in thresholds.frequency)
    m = 1 + sum(facts["total_spend"] > b for b in thresholds.monetary)
    return {"rfm_r": r, "rfm_f": f, "rfm_m": m, DIMENSION: cell_of(r, f, m)}


_PURCHASED = FieldCompare("last_purchase", FieldType.DATE, Op.GTE, date(1, 1, 1))
_NOTHING = BoundAnd((_PURCHASED, BoundNot(_PURCHASED)))


def _at_least(thresholds: RfmThresholds, field: str, k: int) -> Bound | None:
    """Score of `field` >= k (2..5) for a buyer; None for k = 1 (every buyer)."""
    if k <= 1:
        return None
    match field:
        case "rfm_r":
            return FieldCompare("days_since_last_purchase", FieldType.INTEGER, Op.LTE, thresholds.recency_days[5 - k])
        case "rfm_f":
            return FieldCompare("order_count", FieldType.INTEGER, Op.GT, thresholds.frequency[k - 2])
        case _:
            return FieldCompare("total_spend", FieldType.MONEY, Op.GT, thresholds.monetary[k - 2])


def _runs(chosen: set[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for k in sorted(chosen):
        if runs and runs[-1][1] == k - 1:
            runs[-1] = (runs[-1][0], k)
        else:
            runs.append((k, k))
    return runs


def _scores_in(thresholds: RfmThresholds, field: str, chosen: set[int]) -> Bound:
    """A buyer whose score of `field` is in `chosen` (without the `purchased` test)."""
    parts: list[Bound] = []
    for low, high in _runs(chosen):
        operands = [
            *([] if (at := _at_least(thresholds, field, low)) is None else [at]),
            *([] if high == 5 else [BoundNot(_at_least(thresholds, field, high + 1) or _PURCHASED)]),
        ]
        parts.append(_and(operands))
    return _or(parts)


def _and(operands: list[Bound]) -> Bound:
    return _PURCHASED if not operands else operands[0] if len(operands) == 1 else BoundAnd(tuple(operands))


def _or(operands: list[Bound]) -> Bound:
    return _NOTHING if not operands else operands[0] if len(operands) == 1 else BoundOr(tuple(operands))


def field_term(thresholds: RfmThresholds, node: FieldCompare | FieldIn | FieldBetween) -> Bound:
    """A bound term on `rfm_r`/`rfm_f`/`rfm_m` as terms on the facts it is derived from: the scores
    it accepts (the reference evaluator decides, on each score) turned into ranges of thresholds."""
    chosen = {k for k in SCORES if evaluate(node, {node.field: k}, date.min)}
    if not chosen:
        return _NOTHING
    return BoundAnd((_PURCHASED, _scores_in(thresholds, node.field, chosen)))


@functools.cache
def cell_terms(thresholds: RfmThresholds) -> Mapping[str, Bound]:
    """Each cell as a term: buyers whose (R, F, M) fall in the cell's squares of GRID."""
    terms: dict[str, Bound] = {}
    for cell in CELLS:
        rows: dict[int, frozenset[int]] = {}
        for (r, fm), name in GRID.items():
            if name == cell:
                rows[r] = rows.get(r, frozenset()) | {fm}
        groups: dict[frozenset[int], set[int]] = {}
        for r, fms in rows.items():
            groups.setdefault(fms, set()).add(r)
        parts: list[Bound] = []
        for fms, rs in sorted(groups.items(), key=lambda item: min(item[1])):
            by_f = [
                _and([_scores_in(thresholds, "rfm_f", {f}), _scores_in(thresholds, "rfm_m", ms)])
                for f in SCORES
                if (ms := {m for m in SCORES if fm_score(f, m) in fms})
            ]
            parts.append(_and([_scores_in(thresholds, "rfm_r", rs), _or(by_f)]))
        terms[cell] = BoundAnd((_PURCHASED, _or(parts)))
    return MappingProxyType(terms)


def definition(cell: str) -> str:
    """The cell's squares of GRID in words, e.g. `R 5, FM 4-5; R 4, FM 5`."""

    def span(values: list[int]) -> str:
        return f"{values[0]}" if len(values) == 1 else f"{values[0]}-{values[-1]}"

    rows = {r: [fm for fm in SCORES if GRID[(r, fm)] == cell] for r in reversed(SCORES)}
    return "; ".join(f"R {r}, FM {span(fms)}" for r, fms in rows.items() if fms)

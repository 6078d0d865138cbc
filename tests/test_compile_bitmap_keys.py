"""Which index keys the bitmap compiler reads: NOT under an AND and thresholds read no more than needed.

Every index row holds live members only and a field's slices only members where it is present, so
`a AND NOT b` needs no universe and `x >= c` starts at the lowest 1 bit of c. What the results are
is held by the differential tests (tests/test_audience_differential.py); this pins the savings.
"""

from __future__ import annotations

from datetime import date

import pytest

from tagquery import bind, member_catalog, parse
from tagquery.compile_bitmap import BitmapCompiler, Encoding

CATALOG = member_catalog(
    tags={"a": "a", "b": "b", "c": "c"},
    tiers=("silver", "gold"),
    channels=("tmall", "jd"),
    cities=("北京",),
    statuses=("prospect", "member"),
    genders=("male", "female", "unknown"),
    lifecycles=("introduction", "growth", "mature", "at_risk", "churned"),
)
TODAY = date(2025, 3, 31)


def _keys(text: str) -> list[str]:
    compiler = BitmapCompiler(Encoding({"points": 12}), TODAY)
    compiler.bitmap(bind(parse(text), CATALOG))
    return compiler.pivot.keys


@pytest.mark.parametrize(
    ("text", "keys"),
    [
        ("NOT tag:a", ["u", "tag:a"]),
        ("tag:a AND NOT tag:b", ["tag:a", "tag:b"]),
        ("NOT tag:a AND NOT tag:b", ["u", "tag:a", "tag:b"]),
        ("tag:a OR NOT tag:b", ["tag:a", "u", "tag:b"]),
        ("tag:a AND (tag:b OR NOT tag:c)", ["tag:a", "tag:b", "u", "tag:c"]),
        ("points >= 1000", [f"bit:points:{bit}" for bit in range(3, 12)]),  # 1000 = 0b1111101000
        ("points >= 1", [f"bit:points:{bit}" for bit in range(12)]),
        ("points >= 0", ["u"]),
        ("points = 5", ["u", *(f"bit:points:{bit}" for bit in range(12))]),
    ],
)
def test_keys_read(text: str, keys: list[str]) -> None:
    assert sorted(_keys(text)) == sorted(keys)


def test_a_date_threshold_reads_no_presence_but_equality_does() -> None:
    assert "has:last_purchase" not in _keys("last_purchase WITHIN 30d")
    assert "has:last_purchase" in _keys("last_purchase = 2025-03-01")

"""Which index keys the bitmap compiler reads: NOT under an AND and thresholds read no more than needed.

Every index row holds live members only and a field's slices only members where it is present, so
`a AND NOT b` needs no universe and `x >= c` starts at the lowest 1 bit of c. What the results are
is held by the differential tests (tests/test_audience_differential.py); this pins the savings.
"""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from tagquery import bind, member_catalog, parse
from tagquery.bitmap_keys import BANDS_STATE, BANDS_VERSION, DATE_BAND, EPOCH, day_offset
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


def _keys(text: str, *, banded: bool = False) -> list[str]:
    widths = {"points": 12, BANDS_STATE: BANDS_VERSION} if banded else {"points": 12}
    compiler = BitmapCompiler(Encoding(widths), TODAY)
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


@pytest.mark.parametrize(
    ("text", "keys"),
    [
        ("points >= 1000", ["ge:points:1000"]),
        ("points > 999", ["ge:points:1000"]),
        ("points < 5000", ["u", "ge:points:5000"]),
        ("points BETWEEN 1000 AND 4999", ["ge:points:1000", "ge:points:5000"]),
        ("points >= 1001", [f"bit:points:{bit}" for bit in range(12)]),  # not a boundary: the slices
        ("points BETWEEN 1000 AND 1000", ["ge:points:1000", *(f"bit:points:{bit}" for bit in range(12))]),
    ],
)
def test_band_boundaries_read_one_key_each(text: str, keys: list[str]) -> None:
    assert sorted(_keys(text, banded=True)) == sorted(keys)


def test_an_index_built_without_bands_is_read_through_its_slices() -> None:
    assert not any(key.startswith("ge:") for key in _keys("points >= 1000"))


def test_a_recent_purchase_window_reads_its_block_bands_and_the_low_slices() -> None:
    keys = _keys("last_purchase WITHIN 30d", banded=True)  # on or after 2025-03-01
    start = day_offset(date(2025, 3, 1)) // DATE_BAND * DATE_BAND
    bands = {f"ge:last_purchase:{start}", f"ge:last_purchase:{start + DATE_BAND}"}
    assert bands <= set(keys)
    assert set(keys) - bands <= {f"bit:last_purchase:{bit}" for bit in range(6)}


def test_a_day_that_starts_a_block_is_one_key() -> None:
    start = day_offset(date(2025, 3, 1)) // DATE_BAND * DATE_BAND
    day = EPOCH + timedelta(days=start)
    assert _keys(f"last_purchase >= {day.isoformat()}", banded=True) == [f"ge:last_purchase:{start}"]


def test_days_outside_the_band_span_use_the_slices() -> None:
    assert not any(key.startswith("ge:") for key in _keys("last_purchase >= 2019-05-05", banded=True))

"""Which index keys the bitmap compiler reads: NOT under an AND and thresholds read no more than needed.

Every index row holds live members only and a field's digits only members where it is present, so
`a AND NOT b` needs no universe and `x >= c` starts at the lowest non-zero digit of c. What the
results are is held by the differential tests (tests/test_audience_differential.py); this pins the
savings: a threshold at any value reads at most two keys per digit (one for the lowest).
"""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tagquery import bind, member_catalog, parse
from tagquery.bitmap_keys import DATE_WIDTH, built_layout, day_offset, digit_count, layout_state
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
POINTS_WIDTH = 18  # three digits


def _keys(text: str) -> list[str]:
    compiler = BitmapCompiler(Encoding({"points": POINTS_WIDTH, "total_spend": 24}), TODAY)
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
        # 350 = 5 * 64 + 30: D0(>= 30), then D1(>= 6) | (D1(>= 5) & ..), then D2(>= 1) | ..
        ("points >= 350", ["ge:points:d0:30", "ge:points:d1:6", "ge:points:d1:5", "ge:points:d2:1"]),
        ("points >= 320", ["ge:points:d1:5", "ge:points:d2:1"]),  # 5 * 64: no lowest digit, D1(>= 5) alone
        ("points >= 4096", ["ge:points:d2:1"]),
        ("points >= 4095", ["ge:points:d0:63", "ge:points:d1:63", "ge:points:d2:1"]),  # no D(>= 64)
        ("points >= 1", ["ge:points:d0:1", "ge:points:d1:1", "ge:points:d2:1"]),
        ("points >= 0", ["u"]),
        ("points >= 262144", []),  # past the field's width: nobody, nothing read
        ("points = 5", ["ge:points:d0:5", "ge:points:d0:6", "ge:points:d1:1", "ge:points:d2:1"]),
    ],
)
def test_keys_read(text: str, keys: list[str]) -> None:
    assert sorted(_keys(text)) == sorted(keys)


def test_a_date_threshold_reads_no_presence_but_an_upper_bound_does() -> None:
    assert "has:last_purchase" not in _keys("last_purchase WITHIN 30d")
    assert "has:last_purchase" in _keys("last_purchase < 2025-03-01")


@pytest.mark.parametrize(
    ("text", "keys"),
    [
        ("points >= 1000", ["ge:points:1000"]),
        ("points > 999", ["ge:points:1000"]),
        ("points < 5000", ["u", "ge:points:5000"]),
        ("points BETWEEN 1000 AND 4999", ["ge:points:1000", "ge:points:5000"]),
    ],
)
def test_band_boundaries_read_one_key_each(text: str, keys: list[str]) -> None:
    assert sorted(_keys(text)) == sorted(keys)


@given(st.integers(min_value=1, max_value=(1 << POINTS_WIDTH) - 1))
def test_any_threshold_reads_at_most_two_keys_a_digit(value: int) -> None:
    keys = _keys(f"points >= {value}")
    assert 1 <= len(keys) <= 2 * digit_count(POINTS_WIDTH) - 1
    assert all(key.startswith("ge:points:") for key in keys)


@given(st.integers(min_value=1, max_value=(1 << 24) - 1))
def test_any_money_threshold_reads_at_most_two_keys_a_digit(fen: int) -> None:
    assert len(_keys(f"total_spend >= {fen // 100}.{fen % 100:02d}")) <= 2 * digit_count(24) - 1


@given(st.dates(min_value=date(1900, 1, 2), max_value=date(2079, 6, 5)))
def test_any_day_reads_at_most_two_keys_a_digit(day: date) -> None:
    assert len(_keys(f"last_purchase >= {day.isoformat()}")) <= 2 * digit_count(DATE_WIDTH) - 1


def test_a_recent_purchase_window_reads_the_last_purchase_digits_only() -> None:
    keys = _keys("last_purchase WITHIN 30d")  # on or after 2025-03-01
    assert keys
    assert all(key.startswith("ge:last_purchase:d") for key in keys)


# As a build lays them out (tagquery.bitmap_keys.built_layout): 24-bit money in three 8-bit digits,
# and birthdays from 1950 to 2010 as two 8-bit digits counted from the brand's earliest one.
BUILT = Encoding(
    {
        **layout_state("total_spend", built_layout("total_spend", 0, (1 << 24) - 1)),
        **layout_state(
            "birthday", built_layout("birthday", day_offset(date(1950, 1, 1)), day_offset(date(2010, 12, 31)))
        ),
    }
)


def test_a_build_lays_wide_fields_out_in_fewer_wider_digits() -> None:
    assert (BUILT.layout("total_spend").bits, BUILT.layout("total_spend").digits) == (8, 3)
    birthday = BUILT.layout("birthday")
    assert (birthday.bits, birthday.digits) == (8, 2)
    assert 0 < day_offset(date(1950, 1, 1)) - birthday.base < 256


def _built_keys(text: str) -> list[str]:
    compiler = BitmapCompiler(BUILT, TODAY)
    compiler.bitmap(bind(parse(text), CATALOG))
    return compiler.pivot.keys


@given(st.integers(min_value=1, max_value=(1 << 24) - 1))
def test_any_money_threshold_reads_at_most_five_keys_when_built(fen: int) -> None:
    assert len(_built_keys(f"total_spend >= {fen // 100}.{fen % 100:02d}")) <= 5


@given(st.integers(min_value=1, max_value=150))
def test_any_age_reads_at_most_three_digit_keys_and_the_presence_when_built(years: int) -> None:
    keys = _built_keys(f"age >= {years}")
    assert len([key for key in keys if key.startswith("ge:birthday:d")]) <= 3
    assert set(keys) <= {"has:birthday", *(key for key in keys if key.startswith("ge:birthday:d"))}

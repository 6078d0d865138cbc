"""The bitmap index's vocabulary: which key holds which members, and how values become bits.

One row per (brand, key, chunk); chunk = member id >> 16 and bit (member id & 0xFFFF) is that
member, so every row is exactly 2^16 bits. A key that has no row for a chunk has no member there.

    u                         the universe: the brand's live (not merged-away) members
    tag:<code>                carries the tag, unexpired
    <dimension>:<value>       tier, city, status, gender (one value each), channel (any number)
    consent:<channel>         a granted marketing consent for the channel (or `guardian`), any number
    has:<field>               the field is not NULL (only for fields that can be NULL)
    bit:<field>:<i>           bit i of the field's encoded value (bit-sliced, LSB = 0)
    ge:<field>:<b>            the field's value is >= b, for the band boundaries b in BANDS

Encoded values are non-negative integers: integers as they are (points, growth, order_count),
money in fen (total_spend), dates as days since 1900-01-01 in the brand's time zone (registered,
last_purchase, birthday, and `order.<k>`: the day of the member's k-th most recent order). Dates
take DATE_WIDTH slices; integer fields as many as their largest value needs (kept per brand).
Lifecycle, age, days_since_last_purchase and orders_365d are not stored: they are computed at
query time from the dates (see store.audiences.facts), so they are exact on the day the query runs.

Bands: a threshold over bit slices costs one key and one operation per slice (18 for points
around 100k). The thresholds operators actually use for points (1,000, 5,000 ...) are also kept
range-encoded, one key each, so `points >= 1000` reads one key and `points BETWEEN 1000 AND 4999`
two; `last_purchase` has a band key every DATE_BAND days (see there). An index built before bands
existed, or with other ones, has none that count: its state says which (BANDS_VERSION).
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal

CHUNK_BITS = 16
CHUNK_SIZE = 1 << CHUNK_BITS
EPOCH = date(1900, 1, 1)
DATE_WIDTH = 16  # days since EPOCH: 1900-01-01 .. 2079-06-06
MAX_DAY = (1 << DATE_WIDTH) - 1
UNIVERSE = "u"

# Stored fields and whether they can be NULL (a NULL-able field has a `has:` key).
INTEGER_FIELDS = ("points", "growth", "order_count", "total_spend")
DATE_FIELDS = ("registered", "last_purchase", "birthday")
NULLABLE = frozenset({"last_purchase", "birthday"})


# Band boundaries per integer field, in its encoded unit. Changing them needs a new BANDS_VERSION
# (indexes built with other boundaries fall back to the slices until `omnimember refresh`).
BANDS: dict[str, tuple[int, ...]] = {
    "points": (100, 200, 300, 500, 1000, 2000, 3000, 5000, 10000, 20000, 50000, 100000),
}
# Dates: a band key every DATE_BAND days (absolute days since EPOCH, multiples of it) inside
# DATE_BAND_SPAN. `last_purchase >= d` is then ge(block start) when d starts a block, else
# ge(next block) | (ge(this block) & the low log2(DATE_BAND) slices >= d's offset in the block):
# at most 2 + 6 keys instead of 16 slices. Days outside the span use the slices.
DATE_BAND = 64
DATE_BANDED = ("last_purchase",)
BANDS_VERSION = 2
BANDS_STATE = "bands"  # where an index's state (its widths) records the bands version it holds


def tag_key(code: str) -> str:
    return f"tag:{code}"


def value_key(dimension: str, value: str) -> str:
    return f"{dimension}:{value}"


def date_band_boundaries() -> range:
    """The days (offsets) that have a date band key: multiples of DATE_BAND within the span."""
    first, last = DATE_BAND_SPAN
    return range(-(-first // DATE_BAND) * DATE_BAND, last + 1, DATE_BAND)


def band_key(field: str, boundary: int) -> str:
    return f"ge:{field}:{boundary}"


def has_key(field: str) -> str:
    return f"has:{field}"


def bit_key(field: str, bit: int) -> str:
    return f"bit:{field}:{bit}"


def order_field(k: int) -> str:
    """The (date) field holding the day of the member's k-th most recent order (k >= 1)."""
    return f"order.{k}"


def day_offset(day: date) -> int:
    """Days since EPOCH (negative before it): the domain date comparisons are compiled in."""
    return (day - EPOCH).days


DATE_BAND_SPAN = (day_offset(date(2020, 1, 1)), day_offset(date(2036, 1, 1)))


def fen(amount: Decimal) -> int:
    """Yuan with at most two decimals, as whole fen."""
    return int(amount * 100)


# Families of keys, as bits: a queued change says which families it can touch (the migration 0004
# triggers use these numbers), and a delta rewrites only those keys of the chunks it touches.
FAMILIES = {
    "u": 1,
    "tag": 2,
    "channel": 4,
    "order": 8,
    "tier": 16,
    "city": 32,
    "status": 64,
    "gender": 128,
    "points": 256,
    "growth": 512,
    "order_count": 1024,
    "total_spend": 2048,
    "registered": 4096,
    "last_purchase": 8192,
    "birthday": 16384,
    # After the others: migration 0004's "every family" (32767, the queue's default) predates it.
    # A change that touches the universe (`u`: a new, deleted or merged member) touches every
    # family, so the applier reads `u` as ALL_FAMILIES (store.audiences.deltas).
    "consent": 32768,
}
ALL_FAMILIES = sum(FAMILIES.values())


def family_of(key: str) -> str:
    """The family of a key (`family_sql` is its SQL twin)."""
    head, _, rest = key.partition(":")
    if head in ("has", "bit", "ge"):
        field = rest.partition(":")[0]
        return "order" if field.startswith("order.") else field
    return head


def family_sql(key: str) -> str:
    """`family_of` as an SQL expression over the key column `key` (fixed text)."""
    return (
        f"CASE WHEN {key} LIKE 'has:order.%' OR {key} LIKE 'bit:order.%' THEN 'order'"
        f" WHEN {key} LIKE 'has:%' OR {key} LIKE 'bit:%' OR {key} LIKE 'ge:%' THEN split_part({key}, ':', 2)"
        f" ELSE split_part({key}, ':', 1) END"
    )

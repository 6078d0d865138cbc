"""The bitmap index's vocabulary: which key holds which members, and how values become bits.

One row per (brand, key, chunk); chunk = member id >> 16 and bit (member id & 0xFFFF) is that
member, so every row is exactly 2^16 bits. A key that has no row for a chunk has no member there.

    u                         the universe: the brand's live (not merged-away) members
    tag:<code>                carries the tag, unexpired
    <dimension>:<value>       tier, city, status, gender (one value each), channel (any number)
    consent:<channel>         a granted marketing consent for the channel (or `guardian`), any number
    has:<field>               the field is not NULL (only for fields that can be NULL)
    ge:<field>:d<i>:<j>       digit i of the field's encoded value is >= j (range-encoded digits)
    bit:<field>:<i>           bit i of `order.<k>` (bit-sliced, LSB = 0)
    ge:<field>:<b>            the field's value is >= b, for the band boundaries b in BANDS
    first_channel:<c>         the member's first order was on channel c (purchase family)
    has:buy.* / bit:buy.*     purchase behaviour days, bit-sliced like `order.<k>` (below)
    has:stage.* / bit:stage.* the day of the member's last recorded entry into each lifecycle stage

Encoded values are non-negative integers: integers as they are (points, growth, order_count),
money in fen (total_spend), dates as days since 1900-01-01 in the brand's time zone (registered,
last_purchase, birthday, and `order.<k>`: the day of the member's k-th most recent order). Dates
take DATE_WIDTH bits; integer fields as many as their largest value needs (kept per brand).
Lifecycle, age, days_since_last_purchase and orders_365d are not stored: they are computed at
query time from the dates (see store.audiences.facts), so they are exact on the day the query runs.

Purchase behaviour (issue 15) is stored the same way, as days, bit-sliced with a `has:` key, so
every window is answered against the query's own day:
    buy.first                 the day of the member's first order (first_purchase)
    buy.bought.<p>            the last day the member bought product p (a line whose category or sku is p)
    buy.order.<k>.<c>         the day of the member's k-th most recent order with a line of category c
    buy.spend.<f>             the latest day from which the member's spend (net of refunds, in fen)
                              reaches f: `spend_90d >= X` is `buy.spend.<X> >= today - 90`, exact for
                              every X in SPEND_STEPS on any day
    buy.spend.<f>.<c>         the same over the lines of category c
Spend thresholds are therefore the steps (tagquery.catalog.SPEND_STEPS, which the binder enforces);
an amount between two steps would need a day per amount (a staircase per member), not stored.

Digits: a threshold over bit slices read one key and did one operation per slice (17 for
`points >= 350`), and a COUNT costs per key per chunk. So integer and date fields are stored as
digits from the lowest, each range-encoded: `x >= c` reads at most two keys per digit and one for
the lowest, whatever c is. A field's digits are as wide as its width when the index was built asks
(`digit_bits`: as few digits as 8-bit ones would take, each as narrow as that allows and no
narrower than 6 bits), so 24-bit money has three digits (5 keys at most, not 7). A date is
stored as days since the brand's earliest day of that field when built (its base, a multiple of
the digit's size below it), so a date's digits span the brand's days, not the 180 years since EPOCH:
two digits of up to 8 bits (3 keys, not 5), where a top digit counted from EPOCH would hold the same
members in a hundred rows. A build records each field's width, digit bits and base in the index's
state (`layout_state`); deltas keep them, widening a field by more digits of the same size, and a
day before the base makes the next delta a rebuild (store.audiences.deltas). The round thresholds
operators use for points (1,000, 5,000 ...) also have a band key each, one read. The `order.<k>`
days stay bit-sliced: there are dozens of them per brand and they are read only by `orders_365d`
(and lifecycle), against one day a query. An index built with another encoding has no key the
compiler may read: its state says which (ENCODING_VERSION), and it is rebuilt before any count
reads it (store.audiences.deltas.readiness).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import date
from decimal import Decimal
from typing import TYPE_CHECKING, TypeVar

from tagquery.catalog import FIRST_CHANNEL, SPEND_STEPS

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

Encoded = TypeVar("Encoded", int, "npt.NDArray[np.int64]")

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


# Band boundaries per integer field, in its encoded unit. Changing them (or the digits) needs a new
# ENCODING_VERSION: an index built with another one is rebuilt before it is read.
BANDS: dict[str, tuple[int, ...]] = {
    "points": (100, 200, 300, 500, 1000, 2000, 3000, 5000, 10000, 20000, 50000, 100000),
}
DIGIT_BITS = 6  # the narrowest digits, and every field's where no build chose (a new brand's index)
MAX_DIGIT_BITS = 8
DIGIT_FIELDS = INTEGER_FIELDS + DATE_FIELDS  # range-encoded digits; `order.<k>` stays bit-sliced
# 2: bit slices for every field and date bands; 3: digits; 4: purchase behaviour keys (the keys of
# 3 are unchanged, but an index of 3 holds no `buy.*` or `first_channel:` key and would answer
# every purchase term with nobody: it is rebuilt before it is read, like any older one); 5: digits
# sized to the field and dates from the brand's base (`layout_state`), and the stage entry days.
ENCODING_VERSION = 5
# Where an index's state (its widths) records the encoding it was built with (the name predates digits).
ENCODING_STATE = "bands"


def tag_key(code: str) -> str:
    return f"tag:{code}"


def value_key(dimension: str, value: str) -> str:
    return f"{dimension}:{value}"


def band_key(field: str, boundary: int) -> str:
    return f"ge:{field}:{boundary}"


def has_key(field: str) -> str:
    return f"has:{field}"


def digit_key(field: str, digit: int, at_least: int) -> str:
    """The members whose digit `digit` of `field` is >= `at_least` (1 .. 2^bits - 1)."""
    return f"ge:{field}:d{digit}:{at_least}"


def digit_bits(width: int) -> int:
    """Bits per digit for a field `width` bits wide when its index is built: DIGIT_BITS up to three
    such digits, then as few digits as MAX_DIGIT_BITS ones would take, each as narrow as that allows
    (24 bits: three of 8; 16: two of 8; 20: three of 7). A digit of b bits has up to 2^b - 1 keys."""
    count = -(-width // MAX_DIGIT_BITS)
    return max(DIGIT_BITS, -(-width // max(count, 1)))


def digit_count(width: int, bits: int = DIGIT_BITS) -> int:
    """How many digits of `bits` bits a value of `width` bits has."""
    return max(1, -(-width // bits))


@dataclasses.dataclass(frozen=True, slots=True)
class Layout:
    """How one digit field is stored: `value - base` in digits of `bits` bits, `width` bits wide."""

    width: int
    bits: int = DIGIT_BITS
    base: int = 0

    @property
    def digits(self) -> int:
        return digit_count(self.width, self.bits)

    def digit(self, value: Encoded, digit: int) -> Encoded:
        """Digit `digit` of an encoded value (`value - base`), or of each of an array of them."""
        return value >> (self.bits * digit) & ((1 << self.bits) - 1)


def layout_state(field: str, layout: Layout) -> dict[str, int]:
    """The index state's entries for a field's layout (read back by `stored_layout`)."""
    return {field: layout.width, f"{field}/bits": layout.bits, f"{field}/base": layout.base}


def stored_layout(state: Mapping[str, int], field: str) -> Layout:
    """A field's layout from the index state: where no build recorded one (a brand's first index),
    DIGIT_BITS from 0, dates DATE_WIDTH wide and integers as wide as the deltas widened them."""
    default = DATE_WIDTH if field in DATE_FIELDS else 0
    return Layout(state.get(field, default), state.get(f"{field}/bits", DIGIT_BITS), state.get(f"{field}/base", 0))


def built_layout(field: str, lowest: int, highest: int) -> Layout:
    """The layout a build gives a field whose values run from `lowest` to `highest` (dates get a
    base: `lowest` rounded down to a multiple of the low digit's size)."""
    if field not in DATE_FIELDS:
        width = max(1, highest.bit_length())
        return Layout(width, digit_bits(width))
    bits = digit_bits(max(1, (highest - lowest).bit_length()))
    base = lowest >> bits << bits
    return Layout(max(1, (highest - base).bit_length()), bits, base)


def bit_key(field: str, bit: int) -> str:
    return f"bit:{field}:{bit}"


def order_field(k: int) -> str:
    """The (date) field holding the day of the member's k-th most recent order (k >= 1)."""
    return f"order.{k}"


PURCHASE_PREFIX = "buy."
FIRST_PURCHASE_DAY = "buy.first"


def bought_field(product: str) -> str:
    """The (date) field holding the last day the member bought `product` (a category or a sku)."""
    return f"buy.bought.{product}"


STAGE_PREFIX = "stage."


def entered_field(stage: str) -> str:
    """The (date) field holding the day (brand time zone) of the member's last recorded change of
    lifecycle stage into `stage` (store.audiences.lifecycle records them): `entered:<stage>`."""
    return f"stage.entered.{stage}"


def category_order_field(category: str, k: int) -> str:
    """The day of the member's k-th most recent order with a line of `category` (k >= 1)."""
    return f"buy.order.{k}.{category}"


def spend_day_field(fen: int, category: str | None = None) -> str:
    """The latest day from which the member's net spend (of `category`'s lines) reaches `fen`."""
    return f"buy.spend.{fen}" if category is None else f"buy.spend.{fen}.{category}"


SPEND_FEN = tuple(int(step * 100) for step in SPEND_STEPS)


def day_offset(day: date) -> int:
    """Days since EPOCH (negative before it): the domain date comparisons are compiled in."""
    return (day - EPOCH).days


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
    # Purchase behaviour (`buy.*` days, `first_channel:`): queued by orders, their lines and refunds
    # (migration 0015), and by anything that touches the universe.
    "purchase": 65536,
    # Stage entries (`stage.entered.*` days): queued by recorded changes of stage (migration 0017's
    # trigger on member_stage_changes), and by anything that touches the universe.
    "stage": 131072,
}
ALL_FAMILIES = sum(FAMILIES.values())


def family_of(key: str) -> str:
    """The family of a key (`family_sql` is its SQL twin)."""
    head, _, rest = key.partition(":")
    if head in ("has", "bit", "ge"):
        field = rest.partition(":")[0]
        if field.startswith(PURCHASE_PREFIX):
            return "purchase"
        if field.startswith(STAGE_PREFIX):
            return "stage"
        return "order" if field.startswith("order.") else field
    return "purchase" if head == FIRST_CHANNEL else head


def family_sql(key: str) -> str:
    """`family_of` as an SQL expression over the key column `key` (fixed text)."""
    return (
        f"CASE WHEN {key} LIKE 'has:buy.%' OR {key} LIKE 'bit:buy.%' OR {key} LIKE 'first_channel:%'"
        " THEN 'purchase'"
        f" WHEN {key} LIKE 'has:stage.%' OR {key} LIKE 'bit:stage.%' THEN 'stage'"
        f" WHEN {key} LIKE 'has:order.%' OR {key} LIKE 'bit:order.%' THEN 'order'"
        f" WHEN {key} LIKE 'has:%' OR {key} LIKE 'bit:%' OR {key} LIKE 'ge:%' THEN split_part({key}, ':', 2)"
        f" ELSE split_part({key}, ':', 1) END"
    )

"""The demo brands' product catalogs and the lines of their orders (issue 15: purchase behaviour).

Each brand sells 8 categories of 4 products (a few popular ones sell most). An order has 1 to 3
lines (about 1.6 on average), each a product drawn by popularity with a quantity of 1 to 3; the
lines split the order's amount to the cent, so they add up to exactly what it cost. Everything is
drawn from the order's own random streams, so a seed gives the same lines every time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from demo.ledger_rows import lines, text, yuan
from demo.orders import F64, I64, U64, Randomness

MAX_LINES = 3
_LINE_BITS = np.uint64(2)  # a line's random stream index: the order's << 2 | line number


@dataclass(frozen=True, slots=True)
class Catalog:
    skus: tuple[str, ...]
    categories: tuple[str, ...]  # of each sku
    weights: F64  # popularity of each sku


def _catalog(categories: dict[str, tuple[str, ...]]) -> Catalog:
    skus = [(sku, category) for category, names in categories.items() for sku in names]
    # Zipf-like: the first product of the first category sells most; every product sells some.
    weights: F64 = 1.0 / np.arange(1, len(skus) + 1, dtype=np.float64) ** 0.8
    order = np.random.default_rng(len(skus)).permutation(len(skus))  # spread the best sellers over categories
    return Catalog(tuple(s for s, _ in skus), tuple(c for _, c in skus), weights[order])


CATALOGS = {
    "teahouse": _catalog(
        {
            "oolong": ("OL-TIEGUANYIN-250", "OL-DAHONGPAO-250", "OL-DANCONG-125", "OL-GIFT-500"),
            "green_tea": ("GT-LONGJING-100", "GT-BILUOCHUN-100", "GT-MAOFENG-250", "GT-TEABAG-20"),
            "black_tea": ("BT-DIANHONG-250", "BT-QIMEN-125", "BT-LAPSANG-125", "BT-TEABAG-20"),
            "puer": ("PE-RAW-357", "PE-RIPE-357", "PE-MINI-TUO-50", "PE-AGED-200"),
            "milk_tea": ("MT-CLASSIC-CUP", "MT-BROWN-SUGAR-CUP", "MT-CHEESE-FOAM-CUP", "MT-POWDER-10"),
            "tea_snacks": ("SN-PINEAPPLE-CAKE", "SN-MOONCAKE-4", "SN-TEA-COOKIE", "SN-DRIED-PLUM"),
            "gift_box": ("GB-FESTIVAL", "GB-CORPORATE", "GB-SAMPLER-8", "GB-MOONCAKE-TEA"),
            "teaware": ("TW-GAIWAN", "TW-YIXING-POT", "TW-CUP-SET-6", "TW-TRAVEL-SET"),
        }
    ),
    "orchard": _catalog(
        {
            "imported_fruit": ("IM-CHERRY-1KG", "IM-KIWI-12", "IM-AVOCADO-4", "IM-BLUEBERRY-500"),
            "citrus": ("CI-ORANGE-2KG", "CI-MANDARIN-1KG", "CI-POMELO", "CI-LEMON-6"),
            "berries": ("BE-STRAWBERRY-500", "BE-RASPBERRY-250", "BE-MULBERRY-250", "BE-MIXED-400"),
            "tropical": ("TR-DURIAN", "TR-MANGO-1KG", "TR-LYCHEE-1KG", "TR-PINEAPPLE"),
            "fruit_box": ("FB-FAMILY", "FB-OFFICE", "FB-GIFT-DELUXE", "FB-WEEKLY"),
            "cut_fruit": ("CF-PLATTER-S", "CF-PLATTER-L", "CF-WATERMELON-CUP", "CF-MIXED-CUP"),
            "dried_fruit": ("DF-MANGO-200", "DF-JUJUBE-500", "DF-RAISIN-250", "DF-MIXED-NUTS-500"),
            "juice": ("JU-ORANGE-300", "JU-WATERMELON-300", "JU-COCONUT-330", "JU-GREEN-300"),
        }
    ),
}


def catalog(brand_code: str) -> Catalog:
    return CATALOGS.get(brand_code, CATALOGS["teahouse"])


def line_text(products: Catalog, first_order_id: int, key: U64, cents: I64, rand: Randomness) -> bytes:
    """COPY text of the order_lines rows (order_id, line, sku, category, quantity, amount) for the
    orders whose random stream indexes are `key`, ids from `first_order_id`, costing `cents` each."""
    count = (1 + (rand.uniform("line/count", key) < 0.45) + (rand.uniform("line/third", key) < 0.15)).astype(np.int64)
    order = np.repeat(np.arange(len(key)), count)
    number = np.arange(len(order)) - (np.cumsum(count) - count)[order]  # 0-based within its order
    line_key = (key[order] << _LINE_BITS) | number.astype(np.uint64)
    cumulative = np.cumsum(products.weights) / products.weights.sum()
    sku = np.minimum(np.searchsorted(cumulative, rand.uniform("line/sku", line_key), side="right"), len(cumulative) - 1)
    quantity = 1 + (rand.uniform("line/quantity", line_key) * 3).astype(np.int64)
    amount = _split(cents, order, number, count, rand.uniform("line/amount", line_key))
    columns = [
        text(first_order_id + order),
        text(number + 1),
        text(np.asarray(products.skus)[sku]),
        text(np.asarray(products.categories)[sku]),
        text(quantity),
        text(yuan(amount)),
    ]
    return lines(columns)


def _split(cents: I64, order: I64, number: I64, count: I64, u: F64) -> I64:
    """Each order's cents over its lines by random weights, floored; the last line takes the rest."""
    weights = 0.2 + u
    total = np.bincount(order, weights, minlength=len(cents))
    amount: I64 = np.floor(cents[order] * weights / total[order]).astype(np.int64)
    last = number == count[order] - 1
    short = cents - np.bincount(order, amount, minlength=len(cents)).astype(np.int64)
    amount[last] += short[order[last]]
    return amount

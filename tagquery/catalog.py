"""What a brand's queries may name: tags, dimensions with their values, typed fields.

The caller builds it (from the brand's tag definitions, tiers, the channels and cities it has);
tagquery never reads the database. Names are bare words that are not keywords, and a name is either
a dimension or a field, never both, so every term resolves one way.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from decimal import Decimal
from types import MappingProxyType

from tagquery.ast import is_name


class FieldType(enum.StrEnum):
    INTEGER = "integer"
    MONEY = "money"  # yuan with at most two decimals
    DATE = "date"  # a calendar day in the brand's time zone


MEMBER_FIELDS: Mapping[str, FieldType] = MappingProxyType(
    {
        "points": FieldType.INTEGER,
        "growth": FieldType.INTEGER,
        "orders_365d": FieldType.INTEGER,
        "order_count": FieldType.INTEGER,
        "days_since_last_purchase": FieldType.INTEGER,
        "age": FieldType.INTEGER,
        "total_spend": FieldType.MONEY,
        "registered": FieldType.DATE,
        "last_purchase": FieldType.DATE,
    }
)

# RFM scores 1-5 (None for a member who never bought), in a catalog built with `rfm_cells`.
RFM_FIELDS: Mapping[str, FieldType] = MappingProxyType(
    {"rfm_r": FieldType.INTEGER, "rfm_f": FieldType.INTEGER, "rfm_m": FieldType.INTEGER}
)


# Purchase behaviour (issue 15), in a catalog built with `products`: the day of the first order,
# and spend and order counts over the last N days for these N (orders_365d is one of them), each
# optionally per product category (`spend_90d:snacks`).
WINDOWS = (30, 90, 180, 365)
# Spend in a window is compared with `>=` or `<` against one of these amounts (yuan): the index
# keeps, per amount, the day from which the member's spend reaches it (tagquery.bitmap_keys), which
# answers the comparison exactly on any day, for any window.
SPEND_STEPS: tuple[Decimal, ...] = tuple(
    Decimal(step) for step in (1, 50, 100, 200, 300, 500, 800, 1000, 1500, 2000, 3000, 5000, 10000, 20000, 50000)
)
BOUGHT = "bought"  # dimension: a product category or sku the member bought (dated: WITHIN)
FIRST_CHANNEL = "first_channel"  # dimension: the channel of the member's first order
# Dimension: a lifecycle stage the member has a recorded change into (dated: the day of the last
# such change, so `entered:at_risk WITHIN 30d` is "slid into at risk in the last 30 days").
ENTERED = "entered"
FIRST_PURCHASE = "first_purchase"
_WINDOWED = re.compile(r"(spend|orders)_([0-9]+)d", re.ASCII)


def spend_field(days: int) -> str:
    return f"spend_{days}d"


def orders_field(days: int) -> str:
    return f"orders_{days}d"


def window_of(name: str) -> tuple[str, int] | None:
    """("spend" | "orders", days) for a windowed purchase field's name (any number of days)."""
    match = _WINDOWED.fullmatch(name)
    return None if match is None else (match[1], int(match[2]))


PURCHASE_FIELDS: Mapping[str, FieldType] = MappingProxyType(
    {
        FIRST_PURCHASE: FieldType.DATE,
        **{spend_field(days): FieldType.MONEY for days in WINDOWS},
        **{orders_field(days): FieldType.INTEGER for days in WINDOWS},
    }
)


@dataclasses.dataclass(frozen=True, slots=True)
class DimensionSpec:
    values: frozenset[str]
    multi: bool = False
    """Set-valued: a member has any number of values (channels), not exactly one (tier)."""
    dated: bool = False
    """Each value has a day (the last purchase of a product, the last entry into a stage): a term may
    take a window (WITHIN 90d)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Catalog:
    tags: Mapping[str, str]
    """Tag code -> display name. A display name resolves to its code when no other tag shares it."""
    dimensions: Mapping[str, DimensionSpec]
    fields: Mapping[str, FieldType] = dataclasses.field(default_factory=lambda: MEMBER_FIELDS)
    qualifiers: Mapping[str, frozenset[str]] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    """Fields that take a qualifier (`spend_90d:snacks`) -> the qualifiers they take."""
    steps: Mapping[str, tuple[Decimal, ...]] = dataclasses.field(default_factory=lambda: MappingProxyType({}))
    """Fields compared only with `>=` or `<` against one of these values (spend in a window)."""
    _by_display: Mapping[str, str] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        bad = [name for name in [*self.dimensions, *self.fields] if not is_name(name)]
        if bad:
            raise ValueError(f"not usable as names in a query: {bad}")
        both = set(self.dimensions) & set(self.fields)
        if both:
            raise ValueError(f"both a dimension and a field: {sorted(both)}")
        object.__setattr__(self, "_by_display", _unique_display_names(self.tags))

    def tag_code(self, text: str) -> str | None:
        """The code `text` names, as a code or as an unambiguous display name."""
        return text if text in self.tags else self._by_display.get(text)

    def tag_names(self) -> list[str]:
        """Everything `tag:` accepts, for suggestions."""
        return [*self.tags, *self._by_display]


def _unique_display_names(tags: Mapping[str, str]) -> Mapping[str, str]:
    counts = Counter(tags.values())
    return MappingProxyType({name: code for code, name in tags.items() if counts[name] == 1})


def member_catalog(
    *,
    tags: Mapping[str, str],
    tiers: Iterable[str],
    channels: Iterable[str],
    cities: Iterable[str],
    statuses: Iterable[str],
    genders: Iterable[str],
    lifecycles: Iterable[str],
    consents: Iterable[str] = (),
    rfm_cells: Iterable[str] = (),
    products: Iterable[str] | None = None,
    categories: Iterable[str] = (),
    stage_history: bool = False,
) -> Catalog:
    """The member catalog of design §3: six dimensions (channel set-valued) and MEMBER_FIELDS, and
    `consent` (set-valued: the channels a member has a granted marketing consent for) when
    `consents` names any, and the `rfm` dimension with the RFM_FIELDS when `rfm_cells` names any.
    With `products` (the categories and skus members bought), purchase behaviour: the dated
    dimension `bought`, `first_channel` (the channels), PURCHASE_FIELDS, the windowed ones
    qualified by `categories`, spend compared against SPEND_STEPS. With `stage_history` (the brand's
    changes of stage are recorded: store.audiences.lifecycle), the dated dimension `entered` over
    the `lifecycles`. A new dimension takes no name a valid expression used, so saved
    expressions keep their meaning (GRAMMAR_VERSION is about the syntax, which only grew)."""
    dimensions = {
        "tier": DimensionSpec(frozenset(tiers)),
        "channel": DimensionSpec(frozenset(channels), multi=True),
        "city": DimensionSpec(frozenset(cities)),
        "status": DimensionSpec(frozenset(statuses)),
        "gender": DimensionSpec(frozenset(genders)),
        "lifecycle": DimensionSpec(frozenset(lifecycles)),
    }
    consent_values = frozenset(consents)
    if consent_values:
        dimensions["consent"] = DimensionSpec(consent_values, multi=True)
    cells = frozenset(rfm_cells)
    fields = dict(MEMBER_FIELDS)
    if cells:
        dimensions["rfm"] = DimensionSpec(cells)
        fields.update(RFM_FIELDS)
    qualifiers: dict[str, frozenset[str]] = {}
    steps: dict[str, tuple[Decimal, ...]] = {}
    if products is not None:
        dimensions[BOUGHT] = DimensionSpec(frozenset(products), multi=True, dated=True)
        dimensions[FIRST_CHANNEL] = DimensionSpec(dimensions["channel"].values)
        fields.update(PURCHASE_FIELDS)
        qualifiers = {name: frozenset(categories) for name in PURCHASE_FIELDS if window_of(name)}
        steps = {spend_field(days): SPEND_STEPS for days in WINDOWS}
    if stage_history:
        dimensions[ENTERED] = DimensionSpec(dimensions["lifecycle"].values, multi=True, dated=True)
    return Catalog(
        tags=MappingProxyType(dict(tags)),
        dimensions=MappingProxyType(dimensions),
        fields=MappingProxyType(fields),
        qualifiers=MappingProxyType(qualifiers),
        steps=MappingProxyType(steps),
    )

"""Overlap: how a brand's channels share members (`channelOverlap`) and a group's brands share
persons (`brandOverlap`), answered from the bitmap index (docs/audiences.md#overlap)."""

from __future__ import annotations

from typing import Annotated

import strawberry

from resolvers import overlap
from resolvers.context import Info
from schema.audiences import EXPRESSION_HELP, AudienceFilter
from schema.brand import Brand, Group
from schema.enums import Channel
from schema.expression_errors import or_query_error
from schema.freshness import IndexFreshness

RATE = (
    "`both` / (`countA` + `countB` - `both`): those in both over those in either (Jaccard: 1 when the two hold "
    "the same members); null when neither has any."
)
SHARE_OF_A = "`both` / `countA`: the share of a's members also in b (重合率 as said of a); null when a has none."
SHARE_OF_B = "`both` / `countB`: the share of b's members also in a; null when b has none."


def _ratio(part: int, whole: int) -> float | None:
    return part / whole if whole else None


@strawberry.type(description="One channel's members among those counted.")
class ChannelShare:
    channel: Channel = strawberry.field(description="The channel.")
    count: int = strawberry.field(description="Members with an identity of this channel.")
    exclusive: int = strawberry.field(description="Of those, members with no identity of another channel.")
    share: float | None = strawberry.field(description="`count` / `ChannelOverlap.total`; null when that is 0.")


@strawberry.type(description="Two channels and the members they share.")
class ChannelPair:
    a: Channel = strawberry.field(description="The first channel (channels in their fixed order: TMALL first).")
    b: Channel = strawberry.field(description="The second channel.")
    count_a: int = strawberry.field(description="Members with an identity of channel a.")
    count_b: int = strawberry.field(description="Members with an identity of channel b.")
    both: int = strawberry.field(description="Members with identities of both.")
    rate: float | None = strawberry.field(description=RATE)
    share_of_a: float | None = strawberry.field(description=SHARE_OF_A)
    share_of_b: float | None = strawberry.field(description=SHARE_OF_B)


@strawberry.type(
    description="How a brand's channels overlap (多渠道会员重合率), among its live members or an audience's, "
    "from the bitmap index: as current as `freshness` says."
)
class ChannelOverlap:
    found: strawberry.Private[overlap.ChannelOverlap]
    expression: str | None = strawberry.field(
        description="The audience's canonical expression; null: every live member of the brand."
    )
    total: int = strawberry.field(description="Members counted: the audience's, or the brand's live members.")
    with_channel: int = strawberry.field(description="Of those, members with an identity of at least one channel.")
    multi_channel: int = strawberry.field(description="Of those, members with identities of two channels or more.")
    multi_channel_rate: float | None = strawberry.field(description="`multiChannel` / `total`; null when no member.")
    channels: list[ChannelShare] = strawberry.field(description="Every channel, in their fixed order.")
    pairs: list[ChannelPair] = strawberry.field(description="Every pair of channels once (21 for seven channels).")

    @classmethod
    def of(cls, result: overlap.ChannelOverlap) -> ChannelOverlap:
        found = result.overlap
        return cls(
            found=result,
            expression=result.expression,
            total=found.total,
            with_channel=found.with_channel,
            multi_channel=found.multi_channel,
            multi_channel_rate=_ratio(found.multi_channel, found.total),
            channels=[
                ChannelShare(
                    channel=Channel(p.name), count=p.count, exclusive=p.exclusive, share=_ratio(p.count, found.total)
                )
                for p in found.channels
            ],
            pairs=[
                ChannelPair(
                    a=Channel(p.a),
                    b=Channel(p.b),
                    count_a=p.count_a,
                    count_b=p.count_b,
                    both=p.both,
                    rate=p.rate,
                    share_of_a=p.share_of_a,
                    share_of_b=p.share_of_b,
                )
                for p in found.pairs
            ],
        )

    @strawberry.field(description="How current the brand's bitmap index is: every write before `asOf` is counted.")
    async def freshness(self, info: Info) -> IndexFreshness:
        fresh = await or_query_error(overlap.freshness(info, self.found.brand))
        return IndexFreshness.of(fresh, self.found.brand.brand_id)


@strawberry.type(description="One brand of the group and its live members.")
class BrandShare:
    brand: Brand = strawberry.field(description="The brand (`brand { audienceIndex }`: as of when `count` is).")
    count: int = strawberry.field(description="The brand's live members, from its audience index.")
    exclusive: int = strawberry.field(
        description="Of those, members whose person has no live member in another brand of the group."
    )


@strawberry.type(description="Two brands of a group and the persons they share.")
class BrandPair:
    a: Brand = strawberry.field(description="The first brand (brands in creation order).")
    b: Brand = strawberry.field(description="The second brand.")
    count_a: int = strawberry.field(description="Live members of brand a.")
    count_b: int = strawberry.field(description="Live members of brand b.")
    both: int = strawberry.field(
        description="Persons with a live member in both brands (matched by phone, as `Member.person`)."
    )
    rate: float | None = strawberry.field(description=RATE)
    share_of_a: float | None = strawberry.field(description=SHARE_OF_A)
    share_of_b: float | None = strawberry.field(description=SHARE_OF_B)


@strawberry.type(
    description="How a group's brands share persons (多品牌会员重合): the same person is the same phone within "
    "the group (`Member.person`). Counts come from each brand's audience index, the shared persons from the "
    "person index the same applier keeps: both as of its last pass."
)
class BrandOverlap:
    group: Group = strawberry.field(description="The group.")
    persons: int = strawberry.field(
        description="Distinct persons among the brands' live members (a member without a phone is one of its own)."
    )
    multi_brand: int = strawberry.field(description="Persons with a live member in two brands or more.")
    multi_brand_rate: float | None = strawberry.field(description="`multiBrand` / `persons`; null when no person.")
    brands: list[BrandShare] = strawberry.field(description="Every brand of the group, in creation order.")
    pairs: list[BrandPair] = strawberry.field(description="Every pair of the group's brands once.")

    @classmethod
    def of(cls, result: overlap.BrandOverlap) -> BrandOverlap:
        found = result.overlap
        by_code = {row["code"]: Brand.from_row(row) for row in result.brands}
        return cls(
            group=Group.from_row(result.group),
            persons=found.persons,
            multi_brand=found.multi_brand,
            multi_brand_rate=_ratio(found.multi_brand, found.persons),
            brands=[BrandShare(brand=by_code[p.name], count=p.count, exclusive=p.exclusive) for p in found.brands],
            pairs=[
                BrandPair(
                    a=by_code[p.a],
                    b=by_code[p.b],
                    count_a=p.count_a,
                    count_b=p.count_b,
                    both=p.both,
                    rate=p.rate,
                    share_of_a=p.share_of_a,
                    share_of_b=p.share_of_b,
                )
                for p in found.pairs
            ],
        )


BrandCode = Annotated[str, strawberry.argument(description="Brand code.")]
Expression = Annotated[
    str | None,
    strawberry.argument(
        description=f"Only the audience of this expression (else every live member). {EXPRESSION_HELP}"
    ),
]
Filter = Annotated[
    AudienceFilter | None, strawberry.argument(description="Only the audience of this structured filter.")
]
GroupCode = Annotated[str, strawberry.argument(description="Group code.")]


async def channel_overlap(
    info: Info, brand: str, expression: str | None, filter: AudienceFilter | None
) -> ChannelOverlap:
    """The `channelOverlap` query (wired in schema/query.py)."""
    data = None if filter is None else filter.to_data()
    result = await or_query_error(overlap.channel_overlap(info, brand=brand, expression=expression, filter=data))
    return ChannelOverlap.of(result)


async def brand_overlap(info: Info, group: str) -> BrandOverlap:
    """The `brandOverlap` query (wired in schema/query.py)."""
    return BrandOverlap.of(await or_query_error(overlap.brand_overlap(info, group=group)))

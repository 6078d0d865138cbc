"""Demo tags: ~200 tags per demo brand and their assignments, bulk-loaded with binary COPY.

The skew is the one measured in research/tag-engine-measurements.md §2: each member has an activity
weight w ~ Gamma(4, 1/4) (mean 1, here leaning towards frequent buyers) and carries each independent
tag t with probability min(1, p_t·w), so there are heavy and light members and tags correlate mildly.
p_t: a few tags at 55%…30%, a hundred uniform in 1-18%, the rest log-uniform in 0.01-1%. Three groups
are not random but derived from the member's own record, one tag each: the lifecycle stage (from its
purchases), the RFM segment (buyers only) and the source channel (its first identity). About 15 tags
per member in all.

Randomness: one PCG64 stream per (seed, brand, block), so blocks are independent and a seed rebuilds
the same assignments.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
import sqlalchemy as sa
from psycopg import sql
from sqlalchemy.dialects.postgresql import ARRAY, insert

from demo.orders import Buyers
from store.sql import Query
from store.tables import CHANNELS, member_tags, tag_definitions

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]

SOURCE = b"demo"
_DAY = 86_400
_PG_EPOCH = 946_684_800  # 2000-01-01 UTC in Unix seconds: binary COPY's zero for timestamps
_NONE = np.iinfo(np.int64).min  # demo.py's missing time

# --- the catalog -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DemoTag:
    code: str
    name: str
    category: str
    share: float  # target share of members (derived tags: 0, their share follows from the data)
    ttl_days: int | None = None


def _spread(tags: list[tuple[str, str, str]], shares: F64, ttl: int | None = None) -> list[DemoTag]:
    return [
        DemoTag(code, name, category, float(p), ttl) for (code, name, category), p in zip(tags, shares, strict=True)
    ]


_COMMON = [
    ("app_user", "小程序用户", "channel"),
    ("wechat_follower", "公众号粉丝", "channel"),
    ("push_optin", "接受营销推送", "custom"),
    ("coupon_user", "用券用户", "behavior"),
    ("weekend_shopper", "周末购物", "behavior"),
    ("promo_responsive", "促销响应", "behavior"),
    ("repeat_viewer", "反复浏览", "behavior"),
    ("mobile_verified", "手机号已验证", "custom"),
]
_BEHAVIOR = [
    ("price_sensitive", "价格敏感", "behavior"),
    ("discount_only", "只买折扣", "behavior"),
    ("coupon_hunter", "领券达人", "behavior"),
    ("night_owl", "夜猫子下单", "behavior"),
    ("early_bird", "早间下单", "behavior"),
    ("live_stream_viewer", "直播间观众", "behavior"),
    ("group_buyer", "拼团用户", "behavior"),
    ("gift_buyer", "送礼购买", "behavior"),
    ("high_aov", "高客单价", "behavior"),
    ("low_aov", "低客单价", "behavior"),
    ("bulk_buyer", "囤货型", "behavior"),
    ("cart_abandoner", "加购未支付", "behavior"),
    ("browse_no_buy", "只逛不买", "behavior"),
    ("frequent_returner", "常退货", "behavior"),
    ("review_writer", "爱写评价", "behavior"),
    ("content_sharer", "分享达人", "behavior"),
    ("points_redeemer", "积分兑换过", "behavior"),
    ("member_day_buyer", "会员日购买", "behavior"),
    ("birthday_buyer", "生日月购买", "behavior"),
    ("interactive_content", "爱互动内容", "behavior"),
]
_SURVEY = [
    ("household_single", "独居", "survey"),
    ("household_couple", "两口之家", "survey"),
    ("household_3plus", "三口及以上", "survey"),
    ("has_children", "家有孩子", "survey"),
    ("has_elderly", "家有老人", "survey"),
    ("pet_owner", "养宠物", "survey"),
    ("office_worker", "上班族", "survey"),
    ("student", "学生", "survey"),
    ("health_focused", "注重健康", "survey"),
    ("sugar_free", "偏好无糖", "survey"),
    ("caffeine_sensitive", "咖啡因敏感", "survey"),
    ("consumes_daily", "每天饮用", "survey"),
    ("consumes_weekly", "每周饮用", "survey"),
    ("stores_in_fridge", "冷藏保存", "survey"),
    ("prefers_delivery", "偏好外送", "survey"),
    ("prefers_store", "偏好到店", "survey"),
]
_CHANNEL = [
    ("wecom_friend", "企微好友", "channel"),
    ("community_member", "社群成员", "channel"),
    ("douyin_fan", "抖音粉丝", "channel"),
    ("tmall_fan", "天猫店铺粉丝", "channel"),
    ("jd_plus", "京东PLUS会员", "channel"),
    ("store_regular", "门店常客", "channel"),
    ("mall_app_user", "商城APP用户", "channel"),
    ("sms_reachable", "短信可触达", "channel"),
]
_HABITS = [
    ("pays_wechat", "微信支付", "behavior"),
    ("pays_alipay", "支付宝支付", "behavior"),
    ("uses_installments", "花呗分期", "behavior"),
    ("meituan_buyer", "美团外卖下单", "channel"),
    ("eleme_buyer", "饿了么下单", "channel"),
    ("watched_videos", "看过视频号", "behavior"),
    ("reads_articles", "阅读推文", "behavior"),
    ("mini_game_player", "玩过小游戏", "behavior"),
    ("lucky_bag_buyer", "买过福袋", "behavior"),
    ("preorder_buyer", "预售购买", "behavior"),
    ("cross_border", "跨境购", "behavior"),
    ("self_pickup", "到店自提", "behavior"),
    ("gift_card_holder", "持有礼品卡", "custom"),
    ("free_shipping_only", "只买包邮", "behavior"),
    ("new_arrival_chaser", "追新品", "behavior"),
    ("afternoon_tea_time", "下午茶时段", "behavior"),
]
_PRODUCTS = {
    "teahouse": [
        ("oolong", "乌龙茶"),
        ("puer", "普洱"),
        ("green_tea", "绿茶"),
        ("black_tea", "红茶"),
        ("jasmine", "茉莉花茶"),
        ("matcha", "抹茶"),
        ("milk_tea", "奶茶"),
        ("fruit_tea", "果茶"),
        ("cold_brew", "冷泡茶"),
        ("gift_box", "茶礼盒"),
        ("teaware", "茶具"),
        ("tea_snacks", "茶点"),
        ("mooncake", "月饼"),
        ("white_tea", "白茶"),
        ("herbal_tea", "花草茶"),
        ("tea_bags", "袋泡茶"),
        ("limited_edition", "限定款"),
        ("seasonal_new", "季节新品"),
        ("cheese_foam", "芝士奶盖"),
        ("lemon_tea", "柠檬茶"),
    ],
    "orchard": [
        ("durian", "榴莲"),
        ("cherry", "车厘子"),
        ("mango", "芒果"),
        ("strawberry", "草莓"),
        ("blueberry", "蓝莓"),
        ("kiwi", "猕猴桃"),
        ("citrus", "柑橘"),
        ("grape", "葡萄"),
        ("watermelon", "西瓜"),
        ("apple", "苹果"),
        ("banana", "香蕉"),
        ("lychee", "荔枝"),
        ("fruit_box", "水果礼盒"),
        ("cut_fruit", "鲜切果盘"),
        ("juice", "鲜榨果汁"),
        ("dried_fruit", "果干"),
        ("nuts", "坚果"),
        ("imported", "进口水果"),
        ("organic", "有机水果"),
        ("seasonal_new", "当季新品"),
    ],
}
_CAMPAIGNS = [
    ("double11_2025", "2025双十一"),
    ("d618_2026", "2026年618"),
    ("laba_giftbox", "腊八礼盒抽奖"),
    ("spring_festival_2026", "2026春节活动"),
    ("member_day_0408", "4月8日会员日"),
    ("invite_friend", "邀请好友"),
    ("new_product_trial", "新品试用"),
    ("sampling_2026q1", "2026一季度派样"),
    ("mooncake_preorder", "中秋预售"),
    ("valentine_2026", "2026情人节"),
    ("qixi_2025", "2025七夕"),
    ("womens_day_2026", "2026女神节"),
    ("double12_2025", "2025双十二"),
    ("anniversary_sale", "周年庆"),
    ("livestream_0315", "3·15直播专场"),
    ("lucky_draw_spring", "春季抽奖"),
    ("check_in_7days", "连续签到7天"),
    ("survey_reward", "问卷奖励"),
    ("referral_top", "邀请榜前列"),
    ("ugc_contest", "晒单大赛"),
    ("bundle_trial", "组合装试用"),
    ("points_mall_flash", "积分商城秒杀"),
    ("winback_sms_2026", "2026召回短信"),
    ("new_store_opening", "新店开业"),
    ("cobrand_collab", "联名合作"),
    ("shanghai_popup", "上海快闪店"),
    ("chengdu_tasting", "成都品鉴会"),
    ("hangzhou_workshop", "杭州手作课"),
    ("guangzhou_expo", "广州展会"),
    ("campus_tour", "校园行"),
    ("marathon_supply", "马拉松补给站"),
]
_FLAGS = [
    ("vip_event_2025", "2025年VIP品鉴会", "custom"),
    ("fraud_flag", "风险账号", "custom"),
    ("sms_blacklist", "短信黑名单", "custom"),
    ("kol", "达人/KOL", "custom"),
    ("employee", "内部员工", "custom"),
    ("franchisee", "加盟商", "custom"),
    ("press", "媒体", "custom"),
    ("open_complaint", "投诉处理中", "custom"),
    ("corporate_buyer", "企业采购", "custom"),
    ("高潜客户", "高潜客户", "custom"),
    ("重点关注", "重点关注", "custom"),
    ("private_domain_vip", "私域VIP", "custom"),
    ("svip_paid", "付费会员", "custom"),
    ("wholesale", "批发客户", "custom"),
    ("overseas", "海外用户", "custom"),
    ("beta_tester", "内测用户", "custom"),
    ("crowdfunding_backer", "众筹支持者", "custom"),
    ("blind_box_collector", "盲盒收藏家", "custom"),
    ("limited_drop_winner", "限量抽签中签", "custom"),
    ("charity_donor", "公益捐赠", "custom"),
    ("nps_promoter", "NPS推荐者", "survey"),
    ("nps_detractor", "NPS贬损者", "survey"),
    ("brand_ambassador", "品牌大使", "custom"),
    ("campus_ambassador", "校园大使", "custom"),
]
LIFECYCLE = ("lc_introduction", "lc_growth", "lc_mature", "lc_at_risk", "lc_churned")
_LIFECYCLE_NAMES = ("引入期", "成长期", "成熟期", "预流失", "已流失")
RFM = ("rfm_champion", "rfm_loyal", "rfm_potential", "rfm_need_attention", "rfm_hibernating")
_RFM_NAMES = ("重要价值客户", "忠诚客户", "潜力客户", "需唤醒客户", "沉睡客户")
SOURCES = tuple(f"src_{channel}" for channel in CHANNELS)
_SOURCE_NAMES = ("来源天猫", "来源京东", "来源抖音", "来源微信", "来源企微", "来源门店", "来源商城")
DERIVED = (*LIFECYCLE, *RFM, *SOURCES)


def catalog(brand_code: str, rng_seed: int) -> list[DemoTag]:
    """The brand's 200 demo tags: the independent ones first (common, medium, rare), then the derived."""
    rng = np.random.default_rng([rng_seed, zlib.crc32(brand_code.encode()), 0])
    products = _PRODUCTS.get(brand_code, _PRODUCTS["teahouse"])
    bought = [(f"buys_{code}", f"购买过{name}", "behavior") for code, name in products]
    viewed = [(f"views_{code}", f"浏览过{name}", "behavior") for code, name in products]
    medium = bought + _BEHAVIOR + _SURVEY + _CHANNEL + _HABITS + viewed
    loyal = [(f"repeat_{code}", f"复购{name}3次以上", "behavior") for code, name in products]
    common = _spread(_COMMON, np.linspace(0.55, 0.30, len(_COMMON)))
    medium_tags = _spread(medium, rng.uniform(0.01, 0.16, len(medium)))
    campaigns = [(code, name, "campaign") for code, name in _CAMPAIGNS]
    rare = campaigns + _FLAGS + loyal
    shares = 10 ** rng.uniform(-4, -2, len(rare))
    rare_tags = _spread(campaigns, shares[: len(campaigns)], ttl=180) + _spread(
        _FLAGS + loyal, shares[len(campaigns) :]
    )
    derived = [
        *(DemoTag(code, name, "lifecycle", 0.0) for code, name in zip(LIFECYCLE, _LIFECYCLE_NAMES, strict=True)),
        *(DemoTag(code, name, "rfm", 0.0) for code, name in zip(RFM, _RFM_NAMES, strict=True)),
        *(DemoTag(code, name, "channel", 0.0) for code, name in zip(SOURCES, _SOURCE_NAMES, strict=True)),
    ]
    return [*common, *medium_tags, *rare_tags, *derived]


_define = Query(
    insert(tag_definitions)
    .from_select(
        ["brand_id", "code", "name", "category", "ttl_days"],
        sa.select(
            sa.cast(sa.bindparam("brand_id"), sa.BigInteger),
            sa.func.unnest(sa.bindparam("codes", type_=ARRAY(sa.Text))),
            sa.func.unnest(sa.bindparam("names", type_=ARRAY(sa.Text))),
            sa.func.unnest(sa.bindparam("categories", type_=ARRAY(sa.Text))),
            sa.func.unnest(sa.bindparam("ttls", type_=ARRAY(sa.Integer))),
        ),
    )
    .on_conflict_do_update(
        index_elements=[tag_definitions.c.brand_id, tag_definitions.c.code],
        set_={name: sa.text(f"excluded.{name}") for name in ("name", "category", "ttl_days")},
    )
    .returning(tag_definitions.c.id, tag_definitions.c.code, tag_definitions.c.ttl_days)
)


@dataclass(frozen=True, slots=True)
class Catalog:
    """One brand's demo tags with their ids, in catalog order."""

    brand_id: int
    tags: list[DemoTag]
    ids: I64
    ttl_days: list[int | None]
    seed: int
    brand_code: str

    @property
    def independent(self) -> int:
        return len(self.tags) - len(DERIVED)


def define(conn: psycopg.Connection[Any], brand_id: int, brand_code: str, seed: int) -> Catalog:
    """Define the brand's demo tags, or bring them up to date; other tags of the brand stay as they are."""
    tags = catalog(brand_code, seed)
    rows = conn.execute(
        _define.sql,
        {
            "brand_id": brand_id,
            "codes": [t.code for t in tags],
            "names": [t.name for t in tags],
            "categories": [t.category for t in tags],
            "ttls": [t.ttl_days for t in tags],
        },
    ).fetchall()
    by_code = {code: (tag_id, ttl) for tag_id, code, ttl in rows}
    ids = np.array([by_code[t.code][0] for t in tags], dtype=np.int64)
    return Catalog(brand_id, tags, ids, [by_code[t.code][1] for t in tags], seed, brand_code)


# --- assignments -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Copy:
    """Binary COPY data for one block: assignments without and with an expiry."""

    lasting: bytes
    expiring: bytes
    count: int


def _activity(rng: np.random.Generator, orders: I64) -> F64:
    """Gamma(4, 1/4) leaning towards frequent buyers, mean ~1 over the block."""
    lean = 1.0 + 0.3 * np.log1p(orders)
    weight: F64 = rng.gamma(4.0, 0.25, len(orders)) * lean / lean.mean()
    return weight


def _lifecycle(buyers: Buyers, today: int) -> I64:
    """0 introduction (no purchase), 1 growth, 2 mature, 3 at risk (4+ orders, none in 120 days), 4 churned."""
    idle = (today - buyers.last) / _DAY
    stage = np.where(buyers.orders >= 3, 2, 1)
    stage = np.where((buyers.orders >= 4) & (idle > 120), 3, stage)
    stage = np.where(idle > 365, 4, stage)
    found: I64 = np.where(buyers.first == _NONE, 0, stage).astype(np.int64)
    return found


def _rfm(buyers: Buyers, today: int) -> I64:
    """Segment by recency and frequency; -1 for prospects."""
    idle = (today - buyers.last) / _DAY
    recent, frequent = idle <= 60, buyers.orders >= 4
    segment = np.select([recent & frequent, frequent, recent, idle <= 180], [0, 1, 2, 3], 4)
    found: I64 = np.where(buyers.first == _NONE, -1, segment).astype(np.int64)
    return found


def _carried(catalog: Catalog, buyers: Buyers, today: int, rng: np.random.Generator) -> Bools:
    """(members, tags): who carries what, in catalog order."""
    n, independent = len(buyers.member_id), catalog.independent
    shares = np.array([t.share for t in catalog.tags[:independent]], dtype=np.float32)
    weight = _activity(rng, buyers.orders).astype(np.float32)
    carried = np.zeros((n, len(catalog.tags)), dtype=np.bool_)
    carried[:, :independent] = rng.random((n, independent), dtype=np.float32) < shares[None, :] * weight[:, None]
    rows = np.arange(n)
    carried[rows, independent + _lifecycle(buyers, today)] = True
    rfm = _rfm(buyers, today)
    buyer = rfm >= 0
    carried[rows[buyer], independent + len(LIFECYCLE) + rfm[buyer]] = True
    carried[rows, independent + len(LIFECYCLE) + len(RFM) + buyers.channels[:, 0]] = True
    return carried


def assign(catalog: Catalog, buyers: Buyers, registered: I64, today: int, block_start: int) -> Copy:
    """One block's assignments: assigned some time after registration; TTL tags within their TTL."""
    rng = np.random.default_rng([catalog.seed, zlib.crc32(catalog.brand_code.encode()), 1, block_start])
    member, tag = np.nonzero(_carried(catalog, buyers, today, rng))
    ttl = np.array([0 if days is None else days for days in catalog.ttl_days], dtype=np.int64)[tag]
    since = registered[member]
    # A TTL tag was given within the last 90% of its TTL, so it has not expired yet.
    since = np.where(ttl > 0, np.maximum(since, today - (ttl * _DAY * 9) // 10), since)
    assigned = since + (rng.random(len(member)) * (today - since)).astype(np.int64)
    member_ids, tag_ids = buyers.member_id[member], catalog.ids[tag]
    expiring = ttl > 0
    lasting = ~expiring
    return Copy(
        lasting=_binary(member_ids[lasting], tag_ids[lasting], catalog.brand_id, assigned[lasting], None),
        expiring=_binary(
            member_ids[expiring],
            tag_ids[expiring],
            catalog.brand_id,
            assigned[expiring],
            assigned[expiring] + ttl[expiring] * _DAY,
        ),
        count=len(member),
    )


_HEADER = b"PGCOPY\n\xff\r\n\x00" + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
_TRAILER = (-1).to_bytes(2, "big", signed=True)


def _binary(member_ids: I64, tag_ids: I64, brand_id: int, assigned: I64, expires: I64 | None) -> bytes:
    """Rows of COPY member_tags (member_id, tag_id, brand_id, source, assigned_at[, expires_at]) in
    PostgreSQL's binary format: fixed-width rows, so a numpy record array writes them all at once."""
    if not len(member_ids):
        return b""
    fields: list[tuple[str, str]] = [("columns", ">i2")]
    for name, kind in (("member", ">i8"), ("tag", ">i8"), ("brand", ">i8"), ("source", "S4"), ("assigned", ">i8")):
        fields += [(f"{name}_length", ">i4"), (name, kind)]
    if expires is not None:
        fields += [("expires_length", ">i4"), ("expires", ">i8")]
    rows = np.empty(len(member_ids), dtype=np.dtype(fields))
    rows["columns"] = 6 if expires is not None else 5
    for name, value in (
        ("member", member_ids),
        ("tag", tag_ids),
        ("brand", brand_id),
        ("assigned", _pg_micros(assigned)),
    ):
        rows[f"{name}_length"] = 8
        rows[name] = value
    rows["source_length"], rows["source"] = len(SOURCE), SOURCE
    if expires is not None:
        rows["expires_length"], rows["expires"] = 8, _pg_micros(expires)
    return _HEADER + rows.tobytes() + _TRAILER


def _pg_micros(seconds: I64) -> I64:
    micros: I64 = (seconds - _PG_EPOCH) * 1_000_000
    return micros


_COLUMNS = ("member_id", "tag_id", "brand_id", "source", "assigned_at")
_COPY_LASTING = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
    sql.Identifier(member_tags.name), sql.SQL(", ").join(map(sql.Identifier, _COLUMNS))
)
_COPY_EXPIRING = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
    sql.Identifier(member_tags.name), sql.SQL(", ").join(map(sql.Identifier, (*_COLUMNS, "expires_at")))
)


def copy(conn: psycopg.Connection[Any], data: Copy) -> None:
    for statement, payload in ((_COPY_LASTING, data.lasting), (_COPY_EXPIRING, data.expiring)):
        if payload:
            with conn.cursor() as cur, cur.copy(statement) as out:
                out.write(payload)

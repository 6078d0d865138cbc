"""The demo's people, as numbers and as COPY text: who they are, where they shop, what they bought.

`demo.build` plans the group and loads it; everything here is a pure function of the plan, the seed
and a member's index, so blocks of members are generated independently of each other.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from demo.orders import Totals
from store.members.phones import PhoneVault, mask
from store.tables import CHANNELS, DEFAULT_TIERS, GENDERS

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]
Strings = npt.NDArray[np.str_]

_GOLDEN = 0x9E3779B97F4A7C15  # odd, so index * _GOLDEN is a bijection on 64-bit integers
DAY = 86_400
_HISTORY_DAYS = 3 * 365  # registrations reach back three years, purchases two
_NULL = "\\N"  # COPY text format's NULL
NONE = np.iinfo(np.int64).min  # a missing date or time in the int64 columns below (numpy's NaT)


@dataclass(frozen=True, slots=True)
class DemoBrand:
    code: str
    name: str
    share: float  # of the group's members
    basket: float  # typical order value in yuan
    card_prefix: str  # of the POS membership card numbers


# --- what people look like -------------------------------------------------------------------------------

_SURNAMES = (
    "王李张刘陈杨黄赵吴周徐孙马朱胡郭何林高罗郑梁谢宋唐许韩冯邓曹彭曾肖田董袁潘于蒋蔡余杜叶程苏魏吕丁任沈姚卢"
    "姜崔钟谭陆汪范金石廖贾夏韦付方白邹孟熊秦邱江尹薛闫段雷侯龙史陶黎贺顾毛郝龚邵万钱严覃武戴莫孔向汤"
)
_MALE_GIVEN = "伟强磊军洋勇杰涛明超辉刚平鹏浩宇轩博文俊峰斌凯鑫晨阳飞建国华志龙鸿毅航哲睿然泽宁远"
_FEMALE_GIVEN = "丽芳娜敏静秀婷雪琳颖倩玲欣怡佳雨晨梦萱悦涵妍琪璐瑶婉慧洁蕾薇露茜菲嘉思诗彤曦楠月"
_GIVEN_BY_GENDER = (_MALE_GIVEN, _FEMALE_GIVEN, _MALE_GIVEN + _FEMALE_GIVEN)  # aligned with GENDERS
_GENDER_WEIGHTS = (0.36, 0.56, 0.08)  # tea and fruit buyers lean female


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# Zipf-like: listed by size, weighted by rank.
_CITIES = _words(
    "上海 北京 广州 深圳 成都 杭州 重庆 武汉 西安 苏州 南京 天津 长沙 郑州 东莞 青岛 沈阳 宁波 昆明 合肥 "
    "佛山 福州 厦门 无锡 济南 大连 哈尔滨 长春 石家庄 南宁 贵阳 南昌 太原 温州 泉州 金华 常州 珠海 惠州 嘉兴 "
    "南通 中山 台州 烟台 兰州 绍兴 海口 扬州 潍坊 乌鲁木齐 徐州 呼和浩特 洛阳 保定 临沂 银川 西宁 拉萨 桂林 三亚 "
    "镇江 湖州 芜湖 赣州 唐山 廊坊 江门 襄阳 宜昌 绵阳 泰州 盐城 淄博 汕头 揭阳 湛江 漳州 柳州"
)
# Mainland mobile prefixes of the three carriers; 40 of them keep the number space under 2**32.
_MOBILE_PREFIXES = _words(
    "134 135 136 137 138 139 147 150 151 152 157 158 159 172 178 182 183 187 188 198 "
    "130 131 132 155 156 166 175 176 185 186 133 153 173 177 180 181 189 191 193 199"
)
_PHONE_SHARE = 0.85
_SHARED_SHARE = 0.20  # of the second brand's members who are also members of the first
_BIRTHDAY_SHARE = 0.88
_PROSPECT_SHARE = 0.30
_TIER_WEIGHTS = (0.70, 0.20, 0.08, 0.02)  # of buyers, aligned with DEFAULT_TIERS
_EXTRA_ORDERS = (1.2, 4.0, 10.0, 24.0)  # mean orders beyond the first, per tier
_BASKET_BY_TIER = (1.0, 1.25, 1.5, 1.9)
_IDENTITY_COUNT_WEIGHTS = (0.40, 0.30, 0.20, 0.10)  # 1, 2, 3 or 4 channels
_CHANNEL_WEIGHTS = {"tmall": 0.20, "jd": 0.10, "douyin": 0.10, "wechat": 0.28, "wecom": 0.08, "pos": 0.18, "mall": 0.06}
_TOKEN_ALPHABET = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", dtype=np.uint8)


def _zipf(n: int, offset: float) -> F64:
    """Weights 1/(rank + offset): a few values dominate, a long tail stays visible."""
    return 1.0 / (np.arange(n, dtype=np.float64) + offset)


def _ages() -> F64:
    """Weights of ages 18-70: a mode in the late twenties and a long tail (a gamma shape)."""
    years = np.arange(18, 71, dtype=np.float64) - 17.0
    weights: F64 = years * np.exp(-years / 9.0)
    return weights


# --- counter-based randomness ------------------------------------------------------------------------------


def _mix(x: U64) -> U64:
    """splitmix64's finaliser: a bijection on 64-bit integers that scatters neighbouring inputs."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class _Random:
    """Random values as pure functions of (seed, scope, stream, index)."""

    def __init__(self, seed: int, scope: str) -> None:
        self._prefix = f"{seed}/{scope}/"

    def key(self, stream: str) -> int:
        digest = hashlib.blake2b((self._prefix + stream).encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little")

    def bits(self, stream: str, index: U64) -> U64:
        """Distinct indexes give distinct values (every step is a bijection)."""
        return _mix(index * np.uint64(_GOLDEN) + np.uint64(self.key(stream)))

    def uniform(self, stream: str, index: U64) -> F64:
        """In [0, 1)."""
        top: F64 = (self.bits(stream, index) >> np.uint64(11)).astype(np.float64)
        return top * 2.0**-53

    def pick(self, stream: str, index: U64, weights: Sequence[float] | F64) -> I64:
        """Indexes into ``weights``, drawn in proportion to them."""
        cumulative = np.cumsum(np.asarray(weights, dtype=np.float64))
        cumulative /= cumulative[-1]
        cumulative[-1] = 1.0  # uniform() < 1, so the last bucket catches rounding
        picked: I64 = np.searchsorted(cumulative, self.uniform(stream, index), side="right").astype(np.int64)
        return picked

    def permute(self, stream: str, index: U64, domain: int) -> U64:
        """A keyed permutation of [0, domain) applied to ``index``: unique, random-looking values.

        A four-round Feistel network over the smallest even bit width that holds the domain, with
        cycle walking: values outside the domain go round again until they land inside.
        """
        bits = max(1, ((domain - 1).bit_length() + 1) // 2)
        half, low = np.uint64(bits), np.uint64((1 << bits) - 1)
        keys = [np.uint64(self.key(f"{stream}/round{r}")) for r in range(4)]

        def rounds(value: U64) -> U64:
            left, right = value >> half, value & low
            for key in keys:
                left, right = right, left ^ (_mix(right ^ key) & low)
            return (left << half) | right

        out = rounds(index)
        outside = out >= domain
        while outside.any():
            out[outside] = rounds(out[outside])
            outside = out >= domain
        return out


def _truncated_exponential(u: F64, scale: float, cap: float) -> F64:
    """Inverse CDF of an exponential with mean ``scale`` cut at ``cap``: most values are small."""
    values: F64 = -scale * np.log1p(-u * (1.0 - np.exp(-cap / scale)))
    return values


def _geometric(u: F64, mean: F64) -> I64:
    """Inverse CDF of a geometric distribution on 0, 1, 2… with the given mean."""
    stay = mean / (mean + 1.0)
    return np.floor(np.log1p(-u) / np.log(stay)).astype(np.int64)


# --- one block of members, as numbers ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """One brand's share of the group."""

    brand: DemoBrand
    brand_id: int
    first_id: int  # of the reserved member ids
    size: int
    shares_with: int  # members of the first brand this one may share people with (0 for the first)
    seed: int
    today: int  # epoch seconds of today's midnight (UTC): the end of all histories

    @property
    def rand(self) -> _Random:
        return _Random(self.seed, self.brand.code)

    @property
    def people(self) -> _Random:
        return _Random(self.seed, "people")


@dataclass(frozen=True, slots=True)
class Block:
    """Members ``start``..``start + len(index)`` of one brand, every column a numpy array."""

    plan: Plan
    index: U64  # position in the brand, 0-based
    shared: Bools
    has_phone: Bools
    phone: I64  # 11-digit number where has_phone
    gender: I64  # index into GENDERS
    name: Strings
    birthday: I64  # days since 1970-01-01 (negative before), or NONE
    city: I64  # index into _CITIES
    tier: I64  # index into DEFAULT_TIERS
    orders: I64
    spend_cents: I64
    registered: I64  # epoch seconds
    first_purchase: I64  # epoch seconds, or NONE for prospects
    last_purchase: I64
    channels: I64  # (members, 4): indexes into CHANNELS, -1 past the member's identity count
    bound: I64  # (members, 4): epoch seconds

    def __len__(self) -> int:
        return len(self.index)


def member_block(plan: Plan, start: int, stop: int) -> Block:
    index = np.arange(start, stop, dtype=np.uint64)
    person, shared = _people_of(plan, index)
    people = plan.people
    has_phone = people.uniform("has-phone", person) < _PHONE_SHARE
    gender = people.pick("gender", person, _GENDER_WEIGHTS)
    tier, orders, spend, registered, first, last = purchases(plan, index)
    channels, bound = _channels(plan.rand, index, registered, plan.today)
    return Block(
        plan=plan,
        index=index,
        shared=shared,
        has_phone=has_phone,
        phone=_phone_numbers(people, person),
        gender=gender,
        name=_names(people, person, gender),
        birthday=_birthdays(people, person, plan.today),
        city=people.pick("city", person, _zipf(len(_CITIES), 1.5)),
        tier=tier,
        orders=orders,
        spend_cents=spend,
        registered=registered,
        first_purchase=first,
        last_purchase=last,
        channels=channels,
        bound=bound,
    )


def _people_of(plan: Plan, index: U64) -> tuple[U64, Bools]:
    """Which person each member is: the first brand's members are people 0…; about 20% of the second
    brand's members are people of the first brand (with a phone, or nothing would link them)."""
    if plan.shares_with == 0:
        return index, np.zeros(len(index), dtype=np.bool_)
    # An injective map into the first brand's members (this brand is the smaller one).
    partner = plan.rand.permute("partner", index, plan.shares_with)
    partner_has_phone = plan.people.uniform("has-phone", partner) < _PHONE_SHARE
    shared = (plan.rand.uniform("shared", index) < _SHARED_SHARE / _PHONE_SHARE) & partner_has_phone
    own = index + np.uint64(plan.shares_with)  # people after the first brand's, never shared
    return np.where(shared, partner, own), shared


def _phone_numbers(people: _Random, person: U64) -> I64:
    """Distinct people get distinct numbers, so phones are unique within each brand."""
    slot = people.permute("phone", person, len(_MOBILE_PREFIXES) * 10**8).astype(np.int64)
    prefixes = np.array([int(p) for p in _MOBILE_PREFIXES], dtype=np.int64)
    numbers: I64 = prefixes[slot // 10**8] * 10**8 + slot % 10**8
    return numbers


def _names(people: _Random, person: U64, gender: I64) -> Strings:
    surnames = np.array(list(_SURNAMES))[people.pick("surname", person, _zipf(len(_SURNAMES), 3.0))]
    first, second = (_given_char(people.uniform(f"given{i}", person), gender) for i in (1, 2))
    one_char = people.uniform("short-name", person) < 0.2
    names: Strings = np.strings.add(surnames, np.where(one_char, first, np.strings.add(first, second)))
    return names


def _given_char(u: F64, gender: I64) -> Strings:
    out = np.empty(len(u), dtype="<U1")
    for code, pool in enumerate(_GIVEN_BY_GENDER):
        chosen = gender == code
        out[chosen] = np.array(list(pool))[(u[chosen] * len(pool)).astype(np.int64)]
    return out


def _birthdays(people: _Random, person: U64, today: int) -> I64:
    age = 18 + people.pick("age", person, _ages())
    days_since_birthday = (people.uniform("birthday", person) * 365).astype(np.int64)
    birthday = today // DAY - (age * 365.25).astype(np.int64) - days_since_birthday
    known = people.uniform("has-birthday", person) < _BIRTHDAY_SHARE
    dates: I64 = np.where(known, birthday, NONE)
    return dates


def purchases(plan: Plan, index: U64) -> tuple[I64, I64, I64, I64, I64, I64]:
    """Tier, order count, spend in cents, registration, first and last purchase (NONE: none)."""
    rand = plan.rand
    prospect = rand.uniform("prospect", index) < _PROSPECT_SHARE
    tier = np.where(prospect, 0, rand.pick("tier", index, _TIER_WEIGHTS))
    extra_orders = np.asarray(_EXTRA_ORDERS)[tier]
    orders = np.where(prospect, 0, 1 + _geometric(rand.uniform("orders", index), extra_orders))
    # Log-normal basket sizes (Box-Muller for the normal); bigger baskets in higher tiers.
    radius = np.sqrt(-2.0 * np.log1p(-rand.uniform("basket-r", index)))
    normal = radius * np.cos(2.0 * np.pi * rand.uniform("basket-theta", index))
    basket = plan.brand.basket * np.asarray(_BASKET_BY_TIER)[tier] * np.exp(0.45 * normal - 0.1)
    spend = np.rint(orders * basket * 100).astype(np.int64)

    # Days before today: the last purchase is recent for most, the first goes back with the orders.
    last_age = _truncated_exponential(rand.uniform("last", index), 200.0, 2 * 365.0)
    room = _HISTORY_DAYS - 1 - last_age
    span = np.where(orders > 1, rand.uniform("span", index) ** 0.7 * np.minimum(orders * 75.0, room), 0.0)
    first_age = last_age + span
    # Most register at or just before their first purchase; prospects registered any time, recent ones more.
    lead = np.where(rand.uniform("same-day", index) < 0.45, 0.05, 45.0)
    gap = _truncated_exponential(rand.uniform("gap", index), 1.0, 30.0) * lead
    prospect_age = _truncated_exponential(rand.uniform("registered", index), 250.0, _HISTORY_DAYS)
    registered_age = np.where(prospect, prospect_age, np.minimum(first_age + gap, _HISTORY_DAYS))

    def seconds(age_days: F64) -> I64:
        stamp: I64 = plan.today - np.ceil(age_days * DAY).astype(np.int64)
        return stamp

    first = np.where(prospect, NONE, seconds(first_age))
    last = np.where(prospect, NONE, seconds(last_age))
    return tier, orders, spend, seconds(registered_age), first, last


def identity_counts(rand: _Random, index: U64) -> I64:
    counts: I64 = 1 + rand.pick("identities", index, _IDENTITY_COUNT_WEIGHTS)
    return counts


def _channels(rand: _Random, index: U64, registered: I64, today: int) -> tuple[I64, I64]:
    """Up to four distinct channels per member, weighted, and when each was bound.

    Weighted sampling without replacement in one shot: the channels with the smallest
    Exp(1)/weight keys win (the exponential-keys trick).
    """
    weights = np.array([_CHANNEL_WEIGHTS[c] for c in CHANNELS])
    keys = np.stack([-np.log1p(-rand.uniform(f"channel/{c}", index)) for c in CHANNELS], axis=1) / weights
    ranked = np.argsort(keys, axis=1)[:, :4].astype(np.int64)
    count = identity_counts(rand, index)
    slots = np.arange(4)
    channels = np.where(slots < count[:, None], ranked, -1)
    # The first channel is where the member registered; the others came later.
    later = np.stack([rand.uniform(f"bound/{s}", index) for s in range(4)], axis=1)
    bound = registered[:, None] + (later * (today - registered)[:, None]).astype(np.int64)
    bound[:, 0] = registered
    return channels, bound


# --- COPY text ---------------------------------------------------------------------------------------------


def _timestamps(seconds: I64) -> list[str]:
    text = np.datetime_as_string(seconds.astype("datetime64[s]"), unit="s", timezone="UTC")
    out: list[str] = np.where(seconds != NONE, text, _NULL).tolist()
    return out


def member_text(block: Block, vault: PhoneVault, totals: Totals) -> bytes:
    plan = block.plan
    n = len(block)
    phones = _phone_columns(block, vault)
    birthdays = np.datetime_as_string(block.birthday.astype("datetime64[D]"), unit="D")
    columns: list[Sequence[str]] = [
        (block.index + np.uint64(plan.first_id)).astype(str).tolist(),
        [str(plan.brand_id)] * n,
        np.asarray(DEFAULT_TIERS)[block.tier].tolist(),
        block.name.tolist(),
        np.asarray(GENDERS)[block.gender].tolist(),
        np.where(block.birthday != NONE, birthdays, _NULL).tolist(),
        np.asarray(_CITIES)[block.city].tolist(),
        _timestamps(block.registered),
        _timestamps(block.first_purchase),
        _timestamps(block.last_purchase),
        block.orders.astype(str).tolist(),
        (totals.spend_cents / 100).astype(str).tolist(),  # exact: x/100 prints as the shortest decimal
        totals.points_balance.astype(str).tolist(),
        totals.growth_value.astype(str).tolist(),
        totals.points_earned.astype(str).tolist(),
        *phones,
    ]
    return _lines(columns)


def _phone_columns(block: Block, vault: PhoneVault) -> tuple[list[str], list[str], list[str]]:
    """phone_hash, phone_encrypted, phone_masked (bytea in COPY text format: an escaped \\x)."""
    hashes = np.full(len(block), _NULL, dtype=object)
    encrypted = hashes.copy()
    masked = hashes.copy()
    numbers: list[str] = block.phone[block.has_phone].astype(str).tolist()
    hashes[block.has_phone] = ["\\\\x" + vault.hash(number).hex() for number in numbers]
    encrypted[block.has_phone] = ["\\\\x" + vault.encrypt(number).hex() for number in numbers]
    masked[block.has_phone] = [mask(number) for number in numbers]
    return hashes.tolist(), encrypted.tolist(), masked.tolist()


def identity_text(block: Block, first_id: int) -> tuple[bytes, int]:
    """Rows ordered by (channel, external id) within the block, the order of the unique index on them:
    its inserts then sweep the index instead of hitting random pages (a fifth faster). Ids from
    ``first_id``, in that order."""
    plan = block.plan
    parts: list[tuple[str, I64, I64, Strings]] = []
    for channel in sorted(CHANNELS):  # the index's order (C collation; any other is merely slower)
        row, slot = np.nonzero(block.channels == CHANNELS.index(channel))
        external = _external_ids(plan, channel, block.index[row])
        order = np.argsort(external, kind="stable")
        parts.append((channel, row[order], slot[order], external[order]))
    row = np.concatenate([part[1] for part in parts])
    columns: list[Sequence[str]] = [
        np.arange(first_id, first_id + len(row)).astype(str).tolist(),
        [str(plan.brand_id)] * len(row),
        (block.index[row] + np.uint64(plan.first_id)).astype(str).tolist(),
        [channel for channel, rows, _, _ in parts for _ in range(len(rows))],
        np.concatenate([part[3] for part in parts]).tolist(),
        _timestamps(block.bound[row, np.concatenate([part[2] for part in parts])]),
    ]
    return _lines(columns), len(row)


def _lines(columns: Sequence[Sequence[str]]) -> bytes:
    return ("\n".join(map("\t".join, zip(*columns, strict=True))) + "\n").encode()


def _external_ids(plan: Plan, channel: str, index: U64) -> Strings:
    """Ids shaped like each channel's, unique per (brand, channel) by construction."""
    rand = plan.rand
    stream = f"external/{channel}"
    if channel == "tmall":  # numeric buyer ids
        return _digits(rand.permute(stream, index, 9 * 10**10) + np.uint64(10**10))
    if channel == "jd":
        return _digits(rand.permute(stream, index, 9 * 10**9) + np.uint64(10**9))
    if channel == "pos":  # membership card numbers
        return np.strings.add(plan.brand.card_prefix, _digits(rand.permute(stream, index, 10**12), 12))
    if channel == "mall":
        return np.strings.add("M", _digits(rand.permute(stream, index, 10**10), 10))
    if channel == "wechat":  # openid: "o", the official account's prefix, then per-user characters
        return _tokens(rand, stream, index, "o" + _app_prefix(rand, channel, 5), 22)
    if channel == "wecom":  # external_userid
        return _tokens(rand, stream, index, "wm", 30)
    return _tokens(rand, stream, index, "_000", 32)  # douyin open_id


def _digits(values: U64, width: int = 0) -> Strings:
    text: Strings = values.astype(str)
    return np.strings.zfill(text, width) if width else text


def _app_prefix(rand: _Random, channel: str, length: int) -> str:
    codes = rand.bits(f"app/{channel}", np.arange(length, dtype=np.uint64)) & 63
    return bytes(_TOKEN_ALPHABET[codes.astype(np.int64)]).decode()


def _tokens(rand: _Random, stream: str, index: U64, prefix: str, length: int) -> Strings:
    """``prefix`` + ``length`` base64url characters. The first 11 characters spell all 64 bits of a
    bijection of the index, so tokens of distinct indexes differ."""
    words = [rand.bits(f"{stream}/{w}", index) for w in range(length // 11 + 1)]
    chars = np.empty((len(index), len(prefix) + length), dtype=np.uint8)
    chars[:, : len(prefix)] = np.frombuffer(prefix.encode(), dtype=np.uint8)
    for position in range(length):
        word, shift = divmod(position, 11)
        sextet = (words[word] >> np.uint64(6 * shift)) & np.uint64(63)
        chars[:, len(prefix) + position] = _TOKEN_ALPHABET[sextet.astype(np.int64)]
    tokens: Strings = chars.view(f"S{chars.shape[1]}").ravel().astype(str)
    return tokens

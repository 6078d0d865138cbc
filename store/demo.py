"""A realistic demo group, bulk-loaded with COPY: ``omnimember demo --members 1000000``.

Two brands of one group share some of their people (the same phone number in both), every member
has one to four channel identities, about 30% are prospects who never bought anything.

Randomness is counter-based: every value is a pure function of (seed, scope, stream, index), e.g.
the city of person 123 456. Blocks of members are therefore independent of each other, and a person
who is a member of both brands looks the same from either. Only the AES-GCM nonces of the encrypted
phones differ between two runs with the same seed.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
import sqlalchemy as sa
from psycopg import sql
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from sqlalchemy.dialects.postgresql import ARRAY

from store import demo_ledger, demo_tags, tables
from store.brands import brand_by_code, create_brand, groups_by_id, tiers_by_brand
from store.errors import DomainError, ErrorCode
from store.phones import PhoneVault, mask
from store.sql import Query
from store.tables import CHANNELS, DEFAULT_TIERS, GENDERS

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]
Bools = npt.NDArray[np.bool_]
Strings = npt.NDArray[np.str_]

GROUP_CODE = "demo"
GROUP_NAME = "Demo Group 示范集团"
BLOCK = 100_000  # members generated, formatted and copied at a time

_GOLDEN = 0x9E3779B97F4A7C15  # odd, so index * _GOLDEN is a bijection on 64-bit integers
_DAY = 86_400
_HISTORY_DAYS = 3 * 365  # registrations reach back three years, purchases two
_NULL = "\\N"  # COPY text format's NULL
_NONE = np.iinfo(np.int64).min  # a missing date or time in the int64 columns below (numpy's NaT)


@dataclass(frozen=True, slots=True)
class DemoBrand:
    code: str
    name: str
    share: float  # of the group's members
    basket: float  # typical order value in yuan
    card_prefix: str  # of the POS membership card numbers


DEMO_BRANDS = (
    DemoBrand("teahouse", "山茶 Teahouse", 0.6, 168.0, "8860"),
    DemoBrand("orchard", "果园 Orchard", 0.4, 72.0, "6688"),
)


class DemoError(Exception):
    """The demo cannot be built as asked (e.g. it exists and replacing it was not asked for)."""


@dataclass(frozen=True, slots=True)
class DemoSummary:
    members: int
    prospects: int
    identities: int
    shared_people: int  # members of the second brand with the phone of a member of the first
    orders: int
    seconds: float
    per_brand: tuple[tuple[str, int], ...]
    tag_assignments: int = 0

    @property
    def prospect_share(self) -> float:
        return self.prospects / self.members if self.members else 0.0


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
class _Plan:
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
class _Block:
    """Members ``start``..``start + len(index)`` of one brand, every column a numpy array."""

    plan: _Plan
    index: U64  # position in the brand, 0-based
    shared: Bools
    has_phone: Bools
    phone: I64  # 11-digit number where has_phone
    gender: I64  # index into GENDERS
    name: Strings
    birthday: I64  # days since 1970-01-01 (negative before), or _NONE
    city: I64  # index into _CITIES
    tier: I64  # index into DEFAULT_TIERS
    orders: I64
    spend_cents: I64
    registered: I64  # epoch seconds
    first_purchase: I64  # epoch seconds, or _NONE for prospects
    last_purchase: I64
    channels: I64  # (members, 4): indexes into CHANNELS, -1 past the member's identity count
    bound: I64  # (members, 4): epoch seconds

    def __len__(self) -> int:
        return len(self.index)


def _block(plan: _Plan, start: int, stop: int) -> _Block:
    index = np.arange(start, stop, dtype=np.uint64)
    person, shared = _people_of(plan, index)
    people = plan.people
    has_phone = people.uniform("has-phone", person) < _PHONE_SHARE
    gender = people.pick("gender", person, _GENDER_WEIGHTS)
    tier, orders, spend, registered, first, last = _purchases(plan, index)
    channels, bound = _channels(plan.rand, index, registered, plan.today)
    return _Block(
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


def _people_of(plan: _Plan, index: U64) -> tuple[U64, Bools]:
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
    birthday = today // _DAY - (age * 365.25).astype(np.int64) - days_since_birthday
    known = people.uniform("has-birthday", person) < _BIRTHDAY_SHARE
    dates: I64 = np.where(known, birthday, _NONE)
    return dates


def _purchases(plan: _Plan, index: U64) -> tuple[I64, I64, I64, I64, I64, I64]:
    """Tier, order count, spend in cents, registration, first and last purchase (_NONE: none)."""
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
        stamp: I64 = plan.today - np.ceil(age_days * _DAY).astype(np.int64)
        return stamp

    first = np.where(prospect, _NONE, seconds(first_age))
    last = np.where(prospect, _NONE, seconds(last_age))
    return tier, orders, spend, seconds(registered_age), first, last


def _identity_counts(rand: _Random, index: U64) -> I64:
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
    count = _identity_counts(rand, index)
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
    out: list[str] = np.where(seconds != _NONE, text, _NULL).tolist()
    return out


def _member_text(block: _Block, vault: PhoneVault, totals: demo_ledger.Totals) -> bytes:
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
        np.where(block.birthday != _NONE, birthdays, _NULL).tolist(),
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


def _phone_columns(block: _Block, vault: PhoneVault) -> tuple[list[str], list[str], list[str]]:
    """phone_hash, phone_encrypted, phone_masked (bytea in COPY text format: an escaped \\x)."""
    hashes = np.full(len(block), _NULL, dtype=object)
    encrypted = hashes.copy()
    masked = hashes.copy()
    numbers: list[str] = block.phone[block.has_phone].astype(str).tolist()
    hashes[block.has_phone] = ["\\\\x" + vault.hash(number).hex() for number in numbers]
    encrypted[block.has_phone] = ["\\\\x" + vault.encrypt(number).hex() for number in numbers]
    masked[block.has_phone] = [mask(number) for number in numbers]
    return hashes.tolist(), encrypted.tolist(), masked.tolist()


def _identity_text(block: _Block) -> tuple[bytes, int]:
    """Rows ordered by (channel, external id) within the block, the order of the unique index on them:
    its inserts then sweep the index instead of hitting random pages (a fifth faster)."""
    plan = block.plan
    parts: list[tuple[str, I64, I64, Strings]] = []
    for channel in sorted(CHANNELS):  # the index's order (C collation; any other is merely slower)
        row, slot = np.nonzero(block.channels == CHANNELS.index(channel))
        external = _external_ids(plan, channel, block.index[row])
        order = np.argsort(external, kind="stable")
        parts.append((channel, row[order], slot[order], external[order]))
    row = np.concatenate([part[1] for part in parts])
    columns: list[Sequence[str]] = [
        [str(plan.brand_id)] * len(row),
        (block.index[row] + np.uint64(plan.first_id)).astype(str).tolist(),
        [channel for channel, rows, _, _ in parts for _ in range(len(rows))],
        np.concatenate([part[3] for part in parts]).tolist(),
        _timestamps(block.bound[row, np.concatenate([part[2] for part in parts])]),
    ]
    return _lines(columns), len(row)


def _lines(columns: Sequence[Sequence[str]]) -> bytes:
    return ("\n".join(map("\t".join, zip(*columns, strict=True))) + "\n").encode()


def _external_ids(plan: _Plan, channel: str, index: U64) -> Strings:
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


# --- the database ------------------------------------------------------------------------------------------


# Everything a member's rows can be referenced from, children before parents: --replace empties these
# for the demo brands. lot_draws has no brand_id; its rows go with their entries and lots.
_CLEARED = (
    tables.lot_draws,
    tables.member_tags,
    tables.orders,
    tables.points_lots,
    tables.points_entries,
    tables.points_postings,
    tables.tier_changes,
    tables.member_merges,
    tables.member_identities,
    tables.members,
)
_BRAND_IDS = sa.bindparam("brand_ids", type_=ARRAY(sa.BigInteger))


def _of_brands(table: sa.Table) -> sa.ColumnElement[bool]:
    return table.c.brand_id == sa.any_(_BRAND_IDS)


_count_members = Query(sa.select(sa.func.count()).select_from(tables.members).where(_of_brands(tables.members)))
# Two deletes, not one with OR: each IN is then a hashed semi-join, not a subquery scan per row.
_deletes = [
    Query(
        sa.delete(tables.lot_draws).where(
            tables.lot_draws.c.entry_id.in_(
                sa.select(tables.points_entries.c.id).where(_of_brands(tables.points_entries))
            )
        )
    ),
    Query(
        sa.delete(tables.lot_draws).where(
            tables.lot_draws.c.lot_id.in_(sa.select(tables.points_lots.c.id).where(_of_brands(tables.points_lots)))
        )
    ),
    *(Query(sa.delete(table).where(_of_brands(table))) for table in _CLEARED[1:]),
]
_referencing_tables = (
    "SELECT DISTINCT conrelid::regclass::text FROM pg_constraint"
    " WHERE contype = 'f' AND confrelid = ANY(%(tables)s::text[]::regclass[])"
)
# The audience index's queue triggers (migration 0004) are safe to skip: the load asks for a full
# rebuild of the demo brands instead (`_queue_rebuild`), which is what 1M queued members lead to anyway.
_user_triggers = (
    "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal AND tgrelid = ANY(%(tables)s::text[]::regclass[])"
    " AND tgname NOT LIKE 'audience\\_%%'"
)
# Member 0 asks the audience index for a full rebuild of the brand (store/bitmap_deltas.py).
_queue_rebuild = Query(
    sa.insert(tables.audience_changes).from_select(
        ["brand_id", "member_id"], sa.select(sa.func.unnest(_BRAND_IDS), sa.literal_column("0"))
    )
)
_sequence = sql.SQL("pg_get_serial_sequence({}, 'id')").format(sql.Literal(tables.members.name))
_COPY_MEMBERS = sql.SQL("COPY {} ({}) FROM STDIN").format(
    sql.Identifier(tables.members.name),
    sql.SQL(", ").join(
        map(
            sql.Identifier,
            (
                "id",
                "brand_id",
                "tier",
                "display_name",
                "gender",
                "birthday",
                "city",
                "registered_at",
                "first_purchase_at",
                "last_purchase_at",
                "order_count",
                "total_spend",
                "points_balance",
                "growth_value",
                "points_earned",
                "phone_hash",
                "phone_encrypted",
                "phone_masked",
            ),
        )
    ),
)
# Identity ids come from the column default.
_COPY_IDENTITIES = sql.SQL("COPY {} ({}) FROM STDIN").format(
    sql.Identifier(tables.member_identities.name),
    sql.SQL(", ").join(map(sql.Identifier, ("brand_id", "member_id", "channel", "external_id", "bound_at"))),
)
_ANALYZE = sql.SQL("ANALYZE {}").format(
    sql.SQL(", ").join(
        sql.Identifier(table.name)
        for table in (tables.members, tables.member_identities, tables.member_tags, *demo_ledger.TABLES)
    )
)

Connection = psycopg.Connection[Any]


def _ensure_brands(url: str) -> list[int]:
    """The demo brands' ids, creating the group, brands and tiers where missing."""

    async def ensure() -> list[int]:
        async with await psycopg.AsyncConnection.connect(url) as conn:
            ids = []
            for brand in DEMO_BRANDS:
                async with conn.transaction():
                    ids.append(await _demo_brand(conn, brand))
            return ids

    return asyncio.run(ensure())


async def _demo_brand(conn: psycopg.AsyncConnection[Any], brand: DemoBrand) -> int:
    try:
        row = await brand_by_code(conn, brand.code)
    except DomainError as error:
        if error.code != ErrorCode.UNKNOWN_BRAND:
            raise
        row = await create_brand(conn, code=brand.code, name=brand.name, group_code=GROUP_CODE, group_name=GROUP_NAME)
    [group] = await groups_by_id(conn, [row["group_id"]])
    if group["code"] != GROUP_CODE:
        raise DemoError(
            f"brand {brand.code!r} belongs to group {group['code']!r}, not to the demo group {GROUP_CODE!r}"
        )
    tiers = [tier["code"] for tier in await tiers_by_brand(conn, [row["id"]])]
    if tiers != list(DEFAULT_TIERS):
        raise DemoError(f"brand {brand.code!r} has the tiers {tiers}; the demo needs {list(DEFAULT_TIERS)}")
    return int(row["id"])


def _existing_members(conn: Connection, brand_ids: list[int]) -> int:
    row = conn.execute(_count_members.sql, {"brand_ids": brand_ids}).fetchone()
    return int(row[0]) if row else 0


def _reserve_member_ids(conn: Connection, count: int) -> int:
    """The first of ``count`` consecutive ids taken from the members identity sequence.

    The table lock keeps out concurrent inserts (they draw ids from the same sequence) while the
    block is claimed; it is released at once, not held through the load.
    """
    with conn.transaction():
        conn.execute(sql.SQL("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE").format(sql.Identifier(tables.members.name)))
        row = conn.execute(sql.SQL("SELECT nextval({})").format(_sequence)).fetchone()
        assert row is not None
        first = int(row[0])
        conn.execute(sql.SQL("SELECT setval({}, %s)").format(_sequence), (first + count - 1,))
    return first


def _skip_row_triggers(conn: Connection) -> bool:
    """Turn off row triggers, foreign key checks included, for the rest of the transaction where that
    is safe and allowed; False where not (the load is then about three times slower).

    Checking every row's foreign keys costs twice as much as the rest of the load, and the rows are
    consistent by construction: the brands and tiers were just read, identities follow their
    members. Safe: no user triggers on the tables the demo writes or clears, and no foreign key into
    them from a table it does not clear (its rows would be left dangling). Allowed: superusers, or
    roles granted SET on session_replication_role. ``pg_restore --disable-triggers`` does the same.
    """
    names = [table.name for table in _CLEARED]
    referencing = {row[0] for row in conn.execute(_referencing_tables, {"tables": names})}
    triggers = conn.execute(_user_triggers, {"tables": names}).fetchone()
    if not referencing <= set(names) or (triggers and triggers[0]):
        return False
    try:
        with conn.transaction():  # a savepoint: a refusal leaves the load's transaction usable
            conn.execute("SET LOCAL session_replication_role = replica")
    except psycopg.errors.InsufficientPrivilege:
        return False
    return True


def _delete_members(conn: Connection, brand_ids: list[int]) -> None:
    for query in _deletes:
        conn.execute(query.sql, {"brand_ids": brand_ids})


def _copy(conn: Connection, statement: sql.Composed, data: bytes) -> None:
    with conn.cursor() as cur, cur.copy(statement) as copy:
        copy.write(data)


# --- putting it together -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Chunk:
    """One block, ready to copy."""

    plan: _Plan
    members: bytes
    identities: bytes
    ledger: demo_ledger.Copies | None
    tags: demo_tags.Copy | None
    count: int
    prospects: int
    identity_count: int
    shared: int


@dataclass(frozen=True, slots=True)
class _Ledger:
    """What posting the demo's orders needs: each brand's rules, each block's reserved ids, the moment."""

    rules: dict[int, demo_ledger.Rules]  # by brand id
    ids: dict[tuple[int, int], demo_ledger.Ids]  # by (brand id, block start)
    as_of: int  # epoch seconds: lots expired by then are expired


def _chunk(plan: _Plan, start: int, stop: int, vault: PhoneVault, ledger: _Ledger | None, tags: _Tags) -> _Chunk:
    block = _block(plan, start, stop)
    identities, identity_count = _identity_text(block)
    buyers = _buyers(block)
    catalog = tags.get(plan.brand_id)
    tag_copy = None if catalog is None else demo_tags.assign(catalog, buyers, block.registered, plan.today, start)
    copies = None
    if ledger is None:
        totals = demo_ledger.Totals.without_points(buyers)
    else:
        ids, rules = ledger.ids[plan.brand_id, start], ledger.rules[plan.brand_id]
        totals, copies = demo_ledger.post(buyers, ids, plan.rand, rules, ledger.as_of)
    return _Chunk(
        plan=plan,
        members=_member_text(block, vault, totals),
        identities=identities,
        ledger=copies,
        tags=tag_copy,
        count=len(block),
        prospects=int((block.first_purchase == _NONE).sum()),
        identity_count=identity_count,
        shared=int(block.shared.sum()),
    )


def _buyers(block: _Block) -> demo_ledger.Buyers:
    return demo_ledger.Buyers(
        brand_id=block.plan.brand_id,
        member_id=(block.index + np.uint64(block.plan.first_id)).astype(np.int64),
        index=block.index,
        orders=block.orders,
        spend_cents=block.spend_cents,
        first=block.first_purchase,
        last=block.last_purchase,
        channels=block.channels,
    )


def _ledger(conn: Connection, plans: list[_Plan]) -> _Ledger:
    """Reserves ids for every block's ledger rows (an upper bound: gaps are harmless) and reads the rules."""
    bounds = {
        (plan.brand_id, start): demo_ledger.upper_bounds(
            int(_purchases(plan, np.arange(start, stop, dtype=np.uint64))[1].sum()), stop - start
        )
        for plan, start, stop in _blocks(plans)
    }
    first: dict[str, int] = {}
    for table, name in zip(demo_ledger.TABLES[:3] + demo_ledger.TABLES[4:], _ID_FIELDS, strict=True):
        first[name] = demo_ledger.reserve(conn, table.name, sum(getattr(b, name) for b in bounds.values()))
    ids = {}
    for key, bound in bounds.items():
        ids[key] = demo_ledger.Ids(**first)
        first = {name: first[name] + getattr(bound, name) for name in _ID_FIELDS}
    rules = {plan.brand_id: demo_ledger.rules(conn, plan.brand_id) for plan in plans}
    return _Ledger(rules, ids, int(time.time()))


_ID_FIELDS = ("posting", "entry", "lot", "order")


def _blocks(plans: list[_Plan]) -> Iterator[tuple[_Plan, int, int]]:
    for plan in plans:
        for start in range(0, plan.size, BLOCK):
            yield plan, start, min(start + BLOCK, plan.size)


_Tags = dict[int, demo_tags.Catalog]  # by brand id; empty without --tags


def _chunks(plans: list[_Plan], vault: PhoneVault, ledger: _Ledger | None, tags: _Tags) -> Iterator[_Chunk]:
    """Chunks in order, the next one formatted in a thread while the current one is copied: psycopg
    releases the GIL while it waits for the server, so client and server work in parallel. One chunk
    ahead is enough (the server is the slower side) and bounds the memory."""
    blocks = _blocks(plans)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="demo") as pool:
        ahead = deque(pool.submit(_chunk, *block, vault, ledger, tags) for block in itertools.islice(blocks, 1))
        while ahead:
            chunk = ahead.popleft().result()
            following = next(blocks, None)
            if following is not None:
                ahead.append(pool.submit(_chunk, *following, vault, ledger, tags))
            yield chunk


def _plans(brand_ids: list[int], first_id: int, total: int, seed: int) -> list[_Plan]:
    """The first brand's members take the first ids; the second brand shares people with the first."""
    first, second = DEMO_BRANDS
    first_size = round(total * first.share)
    today = int(datetime.now(UTC).timestamp()) // _DAY * _DAY
    return [
        _Plan(first, brand_ids[0], first_id, first_size, shares_with=0, seed=seed, today=today),
        _Plan(second, brand_ids[1], first_id + first_size, total - first_size, first_size, seed, today),
    ]


def build_demo(
    url: str,
    vault: PhoneVault,
    *,
    members: int,
    seed: int,
    replace: bool = False,
    points: bool = False,
    tags: bool = False,
) -> DemoSummary:
    """Build the demo group (code ``demo``) with ``members`` members across its two brands.

    Raises DemoError when the demo brands already have members and ``replace`` is false; with
    ``replace`` their members and everything hanging off them are deleted in the transaction that
    loads the new ones. With ``points`` (the default) buyers get their orders, refunds, points and
    expired lots (store/demo_ledger.py); without, only their profiles. With ``tags`` each brand gets
    ~200 tags and every member ~15 of them (store/demo_tags.py). Runs an event loop of its
    own: call it where none is running (a thread).
    """
    if members < 1:
        raise ValueError("members must be at least 1")
    started = time.perf_counter()
    brand_ids = _ensure_brands(url)
    with psycopg.connect(url, autocommit=True) as conn:
        existing = _existing_members(conn, brand_ids)
        if existing and not replace:
            raise DemoError(
                f"the demo brands already have {existing:,} members: pass --replace (replace=True) to rebuild them"
            )
        plans = _plans(brand_ids, _reserve_member_ids(conn, members), members, seed)
        ledger = _ledger(conn, plans) if points else None
        catalogs = {p.brand_id: demo_tags.define(conn, p.brand_id, p.brand.code, seed) for p in plans if tags}
        with _progress() as progress:
            totals = _load(conn, plans, vault, ledger, catalogs, progress, replace=existing > 0)
            analyzing = progress.add_task("analyze", total=1)
            conn.execute(_ANALYZE)  # fresh statistics, or the first queries plan for empty tables
            progress.advance(analyzing)
    summary = DemoSummary(
        members=totals.count,
        prospects=totals.prospects,
        identities=totals.identity_count,
        shared_people=totals.shared,
        orders=totals.orders,
        seconds=time.perf_counter() - started,
        per_brand=tuple((plan.brand.code, plan.size) for plan in plans),
        tag_assignments=totals.tags,
    )
    _print_summary(summary)
    return summary


@dataclass(slots=True)
class _Totals:
    count: int = 0
    prospects: int = 0
    identity_count: int = 0
    shared: int = 0
    orders: int = 0
    tags: int = 0

    def add(self, chunk: _Chunk) -> None:
        self.orders += chunk.ledger.order_count if chunk.ledger else 0
        self.tags += chunk.tags.count if chunk.tags else 0
        self.count += chunk.count
        self.prospects += chunk.prospects
        self.identity_count += chunk.identity_count
        self.shared += chunk.shared


def _load(
    conn: Connection,
    plans: list[_Plan],
    vault: PhoneVault,
    ledger: _Ledger | None,
    tags: _Tags,
    progress: Progress,
    *,
    replace: bool,
) -> _Totals:
    """Delete (with ``replace``) and copy in one transaction: readers see the old demo or the new one."""
    deleting = progress.add_task("delete the old demo", total=1) if replace else None
    tasks = {plan.brand.code: _brand_tasks(progress, plan) for plan in plans}
    totals = _Totals()
    with conn.transaction():
        skipped = _skip_row_triggers(conn)
        if not skipped:
            progress.console.print("Checking foreign keys row by row (skipping them needs a superuser): slower")
        if deleting is not None:
            _delete_members(conn, [plan.brand_id for plan in plans])
            progress.advance(deleting)
        for chunk in _chunks(plans, vault, ledger, tags):
            member_task, identity_task = tasks[chunk.plan.brand.code]
            _copy(conn, _COPY_MEMBERS, chunk.members)
            progress.advance(member_task, chunk.count)
            _copy(conn, _COPY_IDENTITIES, chunk.identities)
            progress.advance(identity_task, chunk.identity_count)
            if chunk.ledger is not None:
                demo_ledger.copy(conn, chunk.ledger)
            if chunk.tags is not None:
                demo_tags.copy(conn, chunk.tags)
            totals.add(chunk)
        if skipped:  # the audience index's queue triggers did not see the load
            conn.execute(_queue_rebuild.sql, {"brand_ids": [plan.brand_id for plan in plans]})
    return totals


def _brand_tasks(progress: Progress, plan: _Plan) -> tuple[TaskID, TaskID]:
    identities = sum(
        int(_identity_counts(plan.rand, np.arange(start, stop, dtype=np.uint64)).sum())
        for _, start, stop in _blocks([plan])
    )
    return (
        progress.add_task(f"{plan.brand.code} members", total=plan.size),
        progress.add_task(f"{plan.brand.code} identities", total=identities),
    )


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description:<22}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )


def _print_summary(summary: DemoSummary) -> None:
    brands_text = ", ".join(f"{code} {count:,}" for code, count in summary.per_brand)
    Console().print(
        f"Demo group [bold]{GROUP_CODE}[/]: {summary.members:,} members ({brands_text}), "
        f"{summary.prospect_share:.0%} prospects, {summary.identities:,} identities, "
        f"{summary.shared_people:,} people in both brands, {summary.orders:,} orders, "
        f"{summary.tag_assignments:,} tag assignments, {summary.seconds:.1f} s"
    )

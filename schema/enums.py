"""Enumerations shared by several types; values are the codes stored in the database."""

from __future__ import annotations

from enum import Enum

import strawberry


@strawberry.enum(description="A sales or service channel that gives members an identity of its own.")
class Channel(Enum):
    TMALL = "tmall"
    JD = "jd"
    DOUYIN = "douyin"
    WECHAT = "wechat"
    WECOM = "wecom"
    POS = "pos"
    MALL = "mall"


@strawberry.enum(description="PROSPECT until the first purchase on any channel, MEMBER after.")
class MemberStatus(Enum):
    PROSPECT = "prospect"
    MEMBER = "member"


@strawberry.enum(description="Whether a brand's audience index can answer.")
class AudienceIndexState(Enum):
    READY = "READY"
    BUILDING = "BUILDING"


@strawberry.enum(description="Gender as the member stated it.")
class Gender(Enum):
    MALE = "male"
    FEMALE = "female"
    UNKNOWN = "unknown"


@strawberry.enum(description="How an identity was resolved to its member.")
class BindingOutcome(Enum):
    EXISTING = "existing"
    PHONE_MATCH = "phone_match"
    ATTACHED = "attached"
    CREATED = "created"

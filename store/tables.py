"""The system of record: SQLAlchemy Core tables.

Constraints live here and in the migrations, so the database refuses what the code must never
write (an identity bound to a member of another brand, an unknown channel, a negative balance).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import BYTEA, JSONB

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

CHANNELS = ("tmall", "jd", "douyin", "wechat", "wecom", "pos", "mall")
GENDERS = ("male", "female", "unknown")
DEFAULT_TIERS = ("silver", "gold", "platinum", "diamond")

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


def _in(column: str, values: tuple[str, ...]) -> str:
    quoted = ", ".join(f"'{value}'" for value in values)
    return f"{column} IN ({quoted})"


def _now() -> sa.TextClause:
    return sa.text("now()")


groups = sa.Table(
    "groups",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("code", sa.Text, nullable=False, unique=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.CheckConstraint("code ~ '^[a-z][a-z0-9_]{1,31}$'", name="code_format"),
)

brands = sa.Table(
    "brands",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("group_id", sa.BigInteger, sa.ForeignKey("groups.id"), nullable=False),
    sa.Column("code", sa.Text, nullable=False, unique=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    sa.CheckConstraint("code ~ '^[a-z][a-z0-9_]{1,31}$'", name="code_format"),
    sa.Index("ix_brands_group_id", "group_id"),
)

brand_tiers = sa.Table(
    "brand_tiers",
    metadata,
    sa.Column("brand_id", sa.BigInteger, sa.ForeignKey("brands.id"), primary_key=True),
    sa.Column("code", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("rank", sa.SmallInteger, nullable=False),
    sa.UniqueConstraint("brand_id", "rank"),
    sa.CheckConstraint("code ~ '^[a-z][a-z0-9_]{0,31}$'", name="code_format"),
    sa.CheckConstraint("rank >= 0", name="rank_non_negative"),
)

members = sa.Table(
    "members",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("brand_id", sa.BigInteger, sa.ForeignKey("brands.id"), nullable=False),
    # Derived, never written: a prospect becomes a member with the first purchase anywhere.
    sa.Column(
        "status",
        sa.Text,
        sa.Computed("CASE WHEN first_purchase_at IS NULL THEN 'prospect' ELSE 'member' END", persisted=True),
        nullable=False,
    ),
    sa.Column("tier", sa.Text, nullable=False),
    sa.Column("points_balance", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("growth_value", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("display_name", sa.Text),
    sa.Column("gender", sa.Text, nullable=False, server_default="unknown"),
    sa.Column("birthday", sa.Date),
    sa.Column("city", sa.Text),
    sa.Column(
        "registered_at",
        sa.DateTime(timezone=True),
        nullable=False,
        server_default=_now(),
    ),
    sa.Column("first_purchase_at", sa.DateTime(timezone=True)),
    sa.Column("last_purchase_at", sa.DateTime(timezone=True)),
    sa.Column("order_count", sa.Integer, nullable=False, server_default="0"),
    sa.Column("total_spend", sa.Numeric(14, 2), nullable=False, server_default="0"),
    sa.Column("phone_hash", BYTEA),
    sa.Column("phone_encrypted", BYTEA),
    sa.Column("phone_masked", sa.Text),
    sa.Column("merged_into", sa.BigInteger),
    sa.Column("merged_at", sa.DateTime(timezone=True)),
    sa.UniqueConstraint("id", "brand_id"),
    sa.ForeignKeyConstraint(["brand_id", "tier"], ["brand_tiers.brand_id", "brand_tiers.code"]),
    # A member merges only into a member of its own brand.
    sa.ForeignKeyConstraint(["merged_into", "brand_id"], ["members.id", "members.brand_id"]),
    sa.CheckConstraint(_in("gender", GENDERS), name="gender_known"),
    sa.CheckConstraint("points_balance >= 0", name="points_non_negative"),
    sa.CheckConstraint("growth_value >= 0", name="growth_non_negative"),
    sa.CheckConstraint("merged_into IS NULL OR merged_into <> id", name="not_merged_into_self"),
    sa.CheckConstraint("(merged_into IS NULL) = (merged_at IS NULL)", name="merge_time_set"),
    sa.CheckConstraint(
        "(phone_hash IS NULL) = (phone_encrypted IS NULL) AND (phone_hash IS NULL) = (phone_masked IS NULL)",
        name="phone_forms_together",
    ),
    sa.Index("ix_members_brand_id_id", "brand_id", "id"),
    # One live member per phone and brand; merged-away members keep their number for unmerge.
    sa.Index(
        "uq_members_brand_id_phone_hash",
        "brand_id",
        "phone_hash",
        unique=True,
        postgresql_where=sa.text("merged_into IS NULL AND phone_hash IS NOT NULL"),
    ),
    sa.Index(
        "ix_members_merged_into",
        "merged_into",
        postgresql_where=sa.text("merged_into IS NOT NULL"),
    ),
    # A phone of a merged-away member still finds its survivor.
    sa.Index(
        "ix_members_merged_phone",
        "brand_id",
        "phone_hash",
        postgresql_where=sa.text("merged_into IS NOT NULL AND phone_hash IS NOT NULL"),
    ),
)

member_identities = sa.Table(
    "member_identities",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("brand_id", sa.BigInteger, nullable=False),
    sa.Column("member_id", sa.BigInteger, nullable=False),
    sa.Column("channel", sa.Text, nullable=False),
    sa.Column("external_id", sa.Text, nullable=False),
    sa.Column("bound_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    sa.UniqueConstraint("brand_id", "channel", "external_id"),
    sa.ForeignKeyConstraint(["member_id", "brand_id"], ["members.id", "members.brand_id"]),
    sa.CheckConstraint(_in("channel", CHANNELS), name="channel_known"),
    sa.CheckConstraint("length(external_id) BETWEEN 1 AND 128", name="external_id_length"),
    sa.Index("ix_member_identities_member_id", "member_id"),
)

member_merges = sa.Table(
    "member_merges",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("brand_id", sa.BigInteger, nullable=False),
    sa.Column("survivor_id", sa.BigInteger, nullable=False),
    sa.Column("merged_id", sa.BigInteger, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("merged_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    sa.Column("unmerged_at", sa.DateTime(timezone=True)),
    # Exactly what moved and what the survivor looked like before: enough to undo the merge.
    sa.Column("moved", JSONB, nullable=False),
    sa.ForeignKeyConstraint(["survivor_id", "brand_id"], ["members.id", "members.brand_id"]),
    sa.ForeignKeyConstraint(["merged_id", "brand_id"], ["members.id", "members.brand_id"]),
    sa.CheckConstraint("survivor_id <> merged_id", name="distinct_members"),
    sa.CheckConstraint("length(reason) BETWEEN 1 AND 500", name="reason_length"),
    sa.Index("ix_member_merges_survivor_id", "survivor_id"),
    sa.Index("ix_member_merges_merged_id", "merged_id"),
)

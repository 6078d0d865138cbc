"""The system of record: SQLAlchemy Core tables.

Constraints live here and in the migrations, so the database refuses what the code must never
write (an identity bound to a member of another brand, an unknown channel, a negative balance).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import BIT, BYTEA, JSONB

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
    # Qualifying growth (or points, per brand_rules.tier_basis) earned in the last 365 days.
    sa.Column("threshold", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("points_multiplier", sa.Numeric(4, 2), nullable=False, server_default="1"),
    sa.UniqueConstraint("brand_id", "rank"),
    sa.CheckConstraint("code ~ '^[a-z][a-z0-9_]{0,31}$'", name="code_format"),
    sa.CheckConstraint("rank >= 0", name="rank_non_negative"),
    sa.CheckConstraint("threshold >= 0", name="threshold_non_negative"),
    sa.CheckConstraint("points_multiplier >= 1", name="multiplier_at_least_one"),
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
    sa.Column("points_earned", sa.BigInteger, nullable=False, server_default="0"),
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
    # Set by store.members.erasure: the personal columns are empty, the ledger stays (pseudonymous).
    sa.Column("erased_at", sa.DateTime(timezone=True)),
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
    sa.CheckConstraint(
        "erased_at IS NULL OR (display_name IS NULL AND birthday IS NULL AND city IS NULL"
        " AND phone_hash IS NULL AND phone_encrypted IS NULL AND phone_masked IS NULL)",
        name="erased_holds_no_personal_data",
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
    # Erased members of a brand, which snapshot exports leave out.
    sa.Index("ix_members_erased", "brand_id", "id", postgresql_where=sa.text("erased_at IS NOT NULL")),
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

# --- Points, orders and tiers (issue 4) ---------------------------------------------------------

ENTRY_KINDS = ("earn", "redeem", "expire", "reverse", "adjust", "transfer")
OPERATIONS = ("earn", "redeem", "cancel_redemption", "adjust", "order", "refund", "expire", "merge", "unmerge")
TIER_BASES = ("growth", "points")

brand_rules = sa.Table(
    "brand_rules",
    metadata,
    sa.Column("brand_id", sa.BigInteger, sa.ForeignKey("brands.id"), primary_key=True),
    # Calendar questions (birthday month, end of year) are answered in the brand's time zone.
    sa.Column("timezone", sa.Text, nullable=False, server_default="Asia/Shanghai"),
    sa.Column("points_per_yuan", sa.Numeric(8, 2), nullable=False, server_default="1"),
    sa.Column("growth_per_yuan", sa.Numeric(8, 2), nullable=False, server_default="10"),
    sa.Column("birthday_multiplier", sa.Numeric(4, 2), nullable=False, server_default="2"),
    # Earned points expire at the end of the year `expiry_years` after the year they were earned.
    sa.Column("expiry_years", sa.SmallInteger, nullable=False, server_default="2"),
    sa.Column("tier_basis", sa.Text, nullable=False, server_default="growth"),
    sa.CheckConstraint("points_per_yuan >= 0 AND growth_per_yuan >= 0", name="rates_non_negative"),
    sa.CheckConstraint("birthday_multiplier >= 1", name="birthday_multiplier_at_least_one"),
    sa.CheckConstraint("expiry_years BETWEEN 0 AND 10", name="expiry_years_range"),
    sa.CheckConstraint(_in("tier_basis", TIER_BASES), name="tier_basis_known"),
)

points_postings = sa.Table(
    "points_postings",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("brand_id", sa.BigInteger, nullable=False),
    sa.Column("member_id", sa.BigInteger, nullable=False),
    sa.Column("idempotency_key", sa.Text, nullable=False),
    sa.Column("operation", sa.Text, nullable=False),
    # SHA-256 of the request's canonical payload: a reused key with another payload is refused.
    sa.Column("fingerprint", BYTEA, nullable=False),
    sa.Column("channel", sa.Text),
    sa.Column("reason", sa.Text),
    sa.Column("actor", sa.Text, nullable=False),
    sa.Column("reverses_posting_id", sa.BigInteger, sa.ForeignKey("points_postings.id"), unique=True),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    sa.UniqueConstraint("brand_id", "idempotency_key"),
    sa.ForeignKeyConstraint(["member_id", "brand_id"], ["members.id", "members.brand_id"]),
    sa.CheckConstraint(_in("operation", OPERATIONS), name="operation_known"),
    sa.CheckConstraint(f"channel IS NULL OR {_in('channel', CHANNELS)}", name="channel_known"),
    sa.CheckConstraint("length(idempotency_key) BETWEEN 1 AND 200", name="key_length"),
    sa.Index("ix_points_postings_member_id", "member_id"),
)

points_entries = sa.Table(
    "points_entries",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("posting_id", sa.BigInteger, sa.ForeignKey("points_postings.id"), nullable=False),
    sa.Column("brand_id", sa.BigInteger, nullable=False),
    sa.Column("member_id", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.Text, nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("balance_after", sa.BigInteger, nullable=False),
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    sa.ForeignKeyConstraint(["member_id", "brand_id"], ["members.id", "members.brand_id"]),
    sa.CheckConstraint(_in("kind", ENTRY_KINDS), name="kind_known"),
    sa.CheckConstraint("amount <> 0", name="amount_non_zero"),
    sa.CheckConstraint("balance_after >= 0", name="balance_non_negative"),
    sa.Index("ix_points_entries_member_id_id", "member_id", "id"),
    sa.Index("ix_points_entries_posting_id", "posting_id"),
)

points_lots = sa.Table(
    "points_lots",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("brand_id", sa.BigInteger, nullable=False),
    sa.Column("member_id", sa.BigInteger, nullable=False),
    sa.Column("entry_id", sa.BigInteger, sa.ForeignKey("points_entries.id"), nullable=False),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.Column("remaining", sa.BigInteger, nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(["member_id", "brand_id"], ["members.id", "members.brand_id"]),
    sa.CheckConstraint("amount > 0", name="amount_positive"),
    sa.CheckConstraint("remaining BETWEEN 0 AND amount", name="remaining_within_amount"),
    sa.Index(
        "ix_points_lots_member_id_expires_at",
        "member_id",
        "expires_at",
        "id",
        postgresql_where=sa.text("remaining > 0"),
    ),
    sa.Index("ix_points_lots_expires_at", "expires_at", postgresql_where=sa.text("remaining > 0")),
)

lot_draws = sa.Table(
    "lot_draws",
    metadata,
    sa.Column("entry_id", sa.BigInteger, sa.ForeignKey("points_entries.id"), primary_key=True),
    sa.Column("lot_id", sa.BigInteger, sa.ForeignKey("points_lots.id"), primary_key=True),
    sa.Column("amount", sa.BigInteger, nullable=False),
    sa.CheckConstraint("amount > 0", name="amount_positive"),
    sa.Index("ix_lot_draws_lot_id", "lot_id"),
)

orders = sa.Table(
    "orders",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("brand_id", sa.BigInteger, nullable=False),
    sa.Column("member_id", sa.BigInteger, nullable=False),
    sa.Column("channel", sa.Text, nullable=False),
    sa.Column("external_order_id", sa.Text, nullable=False),
    sa.Column("amount", sa.Numeric(14, 2), nullable=False),
    sa.Column("refunded", sa.Numeric(14, 2), nullable=False, server_default="0"),
    sa.Column("paid_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("store", sa.Text),
    sa.Column("posting_id", sa.BigInteger, sa.ForeignKey("points_postings.id"), nullable=False),
    sa.Column("points_earned", sa.BigInteger, nullable=False),
    sa.Column("growth_earned", sa.BigInteger, nullable=False),
    sa.Column("points_reversed", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("growth_reversed", sa.BigInteger, nullable=False, server_default="0"),
    # Points a refund should have taken back but the member had already spent (see ledger policy).
    sa.Column("points_unrecovered", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    sa.UniqueConstraint("brand_id", "channel", "external_order_id"),
    sa.ForeignKeyConstraint(["member_id", "brand_id"], ["members.id", "members.brand_id"]),
    sa.CheckConstraint(_in("channel", CHANNELS), name="channel_known"),
    sa.CheckConstraint("amount > 0", name="amount_positive"),
    sa.CheckConstraint("refunded BETWEEN 0 AND amount", name="refunded_within_amount"),
    sa.CheckConstraint(
        "points_reversed + points_unrecovered <= points_earned AND growth_reversed <= growth_earned",
        name="reversals_within_earnings",
    ),
    sa.Index("ix_orders_member_id_paid_at", "member_id", "paid_at"),
)

# Order lines (issue 15): what an order bought, for purchase behaviour in audiences. A product's
# sku and category are codes that index keys and expressions carry as they are (no ':').
PRODUCT_CODE = "^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
order_lines = sa.Table(
    "order_lines",
    metadata,
    sa.Column("order_id", sa.BigInteger, sa.ForeignKey("orders.id"), primary_key=True),
    sa.Column("line", sa.SmallInteger, primary_key=True),  # 1, 2, ... in the order given
    sa.Column("sku", sa.Text, nullable=False),
    sa.Column("category", sa.Text, nullable=False),
    sa.Column("quantity", sa.Integer, nullable=False),
    sa.Column("amount", sa.Numeric(14, 2), nullable=False),
    sa.CheckConstraint("line >= 1", name="line_positive"),
    sa.CheckConstraint(f"sku ~ '{PRODUCT_CODE}'", name="sku_format"),
    sa.CheckConstraint(f"category ~ '{PRODUCT_CODE}'", name="category_format"),
    sa.CheckConstraint("quantity >= 1", name="quantity_positive"),
    sa.CheckConstraint("amount >= 0", name="amount_not_negative"),
)

tier_changes = sa.Table(
    "tier_changes",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("brand_id", sa.BigInteger, nullable=False),
    sa.Column("member_id", sa.BigInteger, nullable=False),
    sa.Column("from_tier", sa.Text, nullable=False),
    sa.Column("to_tier", sa.Text, nullable=False),
    sa.Column("cause", sa.Text, nullable=False),
    sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    sa.ForeignKeyConstraint(["member_id", "brand_id"], ["members.id", "members.brand_id"]),
    sa.Index("ix_tier_changes_member_id", "member_id"),
)

# --- Tags and the audience engine (issue 3) ------------------------------------------------------

TAG_CATEGORIES = ("behavior", "survey", "channel", "lifecycle", "rfm", "campaign", "custom")

tag_definitions = sa.Table(
    "tag_definitions",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("brand_id", sa.BigInteger, sa.ForeignKey("brands.id"), nullable=False),
    # A word of the tag language (letters of any script, digits, "_", "-", "."): `tag:618_buyer`;
    # the database only refuses what could never be one (the language checks the rest).
    sa.Column("code", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("category", sa.Text, nullable=False),
    # Assignments expire this long after they are made unless the assignment says otherwise.
    sa.Column("ttl_days", sa.Integer),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    sa.UniqueConstraint("brand_id", "code"),
    sa.UniqueConstraint("id", "brand_id"),
    sa.CheckConstraint(_in("category", TAG_CATEGORIES), name="category_known"),
    sa.CheckConstraint("length(code) BETWEEN 1 AND 64 AND code !~ '[[:space:]:(),]'", name="code_format"),
    sa.CheckConstraint("length(name) BETWEEN 1 AND 100", name="name_length"),
    sa.CheckConstraint("ttl_days IS NULL OR ttl_days > 0", name="ttl_positive"),
)

# The system of record for assignments: one row per (member, tag). ~70 bytes a row, so ~11 GB at
# 10M members x 15.6 tags; audiences never scan it (the bitmap index answers them), only the
# reference row compiler, per-member reads and the index rebuild do.
member_tags = sa.Table(
    "member_tags",
    metadata,
    sa.Column("member_id", sa.BigInteger, primary_key=True),
    sa.Column("tag_id", sa.BigInteger, primary_key=True),
    sa.Column("brand_id", sa.BigInteger, nullable=False),
    # manual, rule, import, demo, ... : where the assignment came from.
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    sa.Column("expires_at", sa.DateTime(timezone=True)),
    sa.ForeignKeyConstraint(["member_id", "brand_id"], ["members.id", "members.brand_id"]),
    sa.ForeignKeyConstraint(["tag_id", "brand_id"], ["tag_definitions.id", "tag_definitions.brand_id"]),
    sa.CheckConstraint("length(source) BETWEEN 1 AND 64", name="source_length"),
    sa.Index("ix_member_tags_expires_at", "expires_at", postgresql_where=sa.text("expires_at IS NOT NULL")),
    # Live-member counts per tag (the catalog's memberCount) from the index alone; most keys are
    # (tag, NULL), so btree deduplication keeps it near 6 bytes an assignment.
    sa.Index("ix_member_tags_tag_id_expires_at", "tag_id", "expires_at"),
)

# Rule tags (issue 15; store.tags.rules keeps the rules, store.audiences.rule_tags computes them). A
# tag with a rule is assigned by the engine only, as ordinary member_tags rows (source "rule"), so
# `tag:<code>`, the index, counts and exports need no special case. Every version of a rule is kept.
tag_rules = sa.Table(
    "tag_rules",
    metadata,
    sa.Column("tag_id", sa.BigInteger, primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("brand_id", sa.BigInteger, nullable=False),
    # Canonical text (tagquery.to_text), tags named by code: what the engine binds and runs.
    sa.Column("rule", sa.Text, nullable=False),
    sa.Column("grammar_version", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    sa.Column("created_by", sa.Text, nullable=False),  # the API key's name
    sa.ForeignKeyConstraint(["tag_id", "brand_id"], ["tag_definitions.id", "tag_definitions.brand_id"]),
    sa.CheckConstraint("version >= 1", name="version_positive"),
    sa.CheckConstraint("length(rule) BETWEEN 1 AND 4000", name="rule_length"),
)

# One row per rule tag: its current version and how current its assignments are. `day`,
# `lifecycle_version` and `rfm_computed_at` are what the last full evaluation read (time-relative
# terms, lifecycle and RFM terms move with them); `computed_at` is the last evaluation of any kind.
rule_tag_state = sa.Table(
    "rule_tag_state",
    metadata,
    sa.Column("tag_id", sa.BigInteger, primary_key=True),
    sa.Column("brand_id", sa.BigInteger, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("day", sa.Date),
    sa.Column("lifecycle_version", sa.Integer),
    sa.Column("rfm_computed_at", sa.DateTime(timezone=True)),
    sa.Column("computed_at", sa.DateTime(timezone=True)),
    sa.ForeignKeyConstraint(["tag_id", "brand_id"], ["tag_definitions.id", "tag_definitions.brand_id"]),
    sa.ForeignKeyConstraint(["tag_id", "version"], ["tag_rules.tag_id", "tag_rules.version"]),
    sa.Index("ix_rule_tag_state_brand_id", "brand_id"),
)

# An assignment a rule made: the rule's version and when it was computed (NULL for other sources).
member_tags.append_column(sa.Column("rule_version", sa.Integer))
member_tags.append_column(sa.Column("computed_at", sa.DateTime(timezone=True)))

# The audience bitmap index (design §4): derived from the tables above, rebuilt by `omnimember
# refresh`, kept current by batched deltas. Key scheme and encodings: tagquery.bitmap_keys.
audience_bitmaps = sa.Table(
    "audience_bitmaps",
    metadata,
    sa.Column("brand_id", sa.BigInteger, primary_key=True),
    # Byte-wise ("C") order: keys are compared, never shown, and a prefix scans as one range.
    sa.Column("key", sa.Text(collation="C"), primary_key=True),
    # member id >> 16; bit (member id & 0xFFFF) of `bits` is that member. lz4 (set in 0004).
    sa.Column("chunk", sa.Integer, primary_key=True),
    sa.Column("bits", BIT(varying=True), nullable=False),
    sa.CheckConstraint("length(bits) = 65536", name="chunk_length"),
    # A delta reads the keys of the chunks it touches (queries read the primary key's order).
    sa.Index("ix_audience_bitmaps_brand_id_chunk", "brand_id", "chunk", "key"),
)

# Members whose facts changed since the index last caught up, written by statement-level triggers
# (migration 0004) so no writer can forget it. No key and no index: the applier drains it whole.
# member_id 0 asks for a full rebuild of the brand (a time zone or tag code changed).
audience_changes = sa.Table(
    "audience_changes",
    metadata,
    sa.Column("brand_id", sa.BigInteger, nullable=False),
    sa.Column("member_id", sa.BigInteger, nullable=False),
    # The key families the change can touch (tagquery.bitmap_keys.FAMILIES); by default all.
    sa.Column("families", sa.Integer, nullable=False, server_default="32767"),
    sa.Column("queued_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    # Every reader asks by brand (the applier's drain, readiness, freshness, /readyz's rebuild requests):
    # without it each asked by scanning the whole queue, once per brand (migration 0013).
    sa.Index("ix_audience_changes_brand_id_member_id", "brand_id", "member_id"),
)

audience_index_state = sa.Table(
    "audience_index_state",
    metadata,
    sa.Column("brand_id", sa.BigInteger, sa.ForeignKey("brands.id"), primary_key=True),
    sa.Column("built_at", sa.DateTime(timezone=True)),
    # Every write committed and every tag expired before this instant is in the index.
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    # Slices per bit-sliced integer field ({"points": 17, ...}); only ever grows between rebuilds.
    sa.Column("widths", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
)

# Saved audiences (design §2): the canonical text of the expression with the grammar version it was
# written in, never compiled SQL, so a later engine (or index encoding) runs it unchanged.
saved_audiences = sa.Table(
    "saved_audiences",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("brand_id", sa.BigInteger, sa.ForeignKey("brands.id"), nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("expression", sa.Text, nullable=False),
    sa.Column("grammar_version", sa.Integer, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    sa.UniqueConstraint("id", "brand_id"),
    sa.CheckConstraint("length(name) BETWEEN 1 AND 200", name="name_length"),
    sa.Index("ix_saved_audiences_brand_id", "brand_id"),
)

# A frozen result of a saved audience: its members as bitmap chunk records (chunk int4, bit count
# int4, 2^16 bits; what store.audiences.engine.decode_chunks reads), one bytea per snapshot rather than a
# row per member: ~8 KB per 65,536 ids before TOAST compression, which shrinks sparse chunks.
audience_snapshots = sa.Table(
    "audience_snapshots",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("audience_id", sa.BigInteger, nullable=False),
    sa.Column("brand_id", sa.BigInteger, nullable=False),
    sa.Column("taken_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    # The brand's day the expression was evaluated for (relative windows such as WITHIN 30d).
    sa.Column("as_of_day", sa.Date, nullable=False),
    sa.Column("member_count", sa.BigInteger, nullable=False),
    sa.Column("members", BYTEA, nullable=False),
    sa.ForeignKeyConstraint(["audience_id", "brand_id"], ["saved_audiences.id", "saved_audiences.brand_id"]),
    sa.CheckConstraint("member_count >= 0", name="member_count_positive"),
    sa.Index("ix_audience_snapshots_audience_id_id", "audience_id", "id"),
)

# Lifecycle (issue 15; store.audiences.lifecycle). A brand's stage thresholds, one row per version,
# never overwritten (none: the defaults, version 0).
LIFECYCLE_STAGES = ("introduction", "growth", "mature", "at_risk", "churned")
STAGE_CAUSES = ("write", "time", "rules", "rebuild")

lifecycle_rules = sa.Table(
    "lifecycle_rules",
    metadata,
    sa.Column("brand_id", sa.BigInteger, sa.ForeignKey("brands.id"), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("params", JSONB, nullable=False),  # {"mature_orders": 4, "at_risk_days": 120, "churned_days": 365}
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    sa.Column("created_by", sa.Text, nullable=False),  # the API key's name
    sa.CheckConstraint("version >= 1", name="version_positive"),
)

# Each live member's current stage, as bitmaps like the index's (one row per stage and chunk, bit
# member id & 0xFFFF), so that a change of stage is a difference of bitmaps. lz4 (set in 0011).
lifecycle_stages = sa.Table(
    "lifecycle_stages",
    metadata,
    sa.Column("brand_id", sa.BigInteger, primary_key=True),
    sa.Column("stage", sa.Text, primary_key=True),
    sa.Column("chunk", sa.Integer, primary_key=True),
    sa.Column("bits", BIT(varying=True), nullable=False),
    sa.CheckConstraint(_in("stage", LIFECYCLE_STAGES), name="stage_known"),
    sa.CheckConstraint("length(bits) = 65536", name="chunk_length"),
)

# As of which brand day and rules version the stages are, and which build of the index they follow.
lifecycle_state = sa.Table(
    "lifecycle_state",
    metadata,
    sa.Column("brand_id", sa.BigInteger, sa.ForeignKey("brands.id"), primary_key=True),
    sa.Column("day", sa.Date, nullable=False),
    sa.Column("rules_version", sa.Integer, nullable=False),
    sa.Column("index_built_at", sa.DateTime(timezone=True)),  # audience_index_state.built_at when last compared
    sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
)

# Every change of a member's stage: NULL `from_stage` is a member that became live (registered,
# unmerged), NULL `to_stage` one that stopped being live (merged away, erased). Ids only, no
# personal data; no foreign key, so history outlives a deleted member as the audit log does.
member_stage_changes = sa.Table(
    "member_stage_changes",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("brand_id", sa.BigInteger, nullable=False),
    sa.Column("member_id", sa.BigInteger, nullable=False),
    sa.Column("from_stage", sa.Text),
    sa.Column("to_stage", sa.Text),
    sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("rules_version", sa.Integer, nullable=False),
    sa.Column("cause", sa.Text, nullable=False),
    sa.CheckConstraint(f"from_stage IS NULL OR {_in('from_stage', LIFECYCLE_STAGES)}", name="from_stage_known"),
    sa.CheckConstraint(f"to_stage IS NULL OR {_in('to_stage', LIFECYCLE_STAGES)}", name="to_stage_known"),
    sa.CheckConstraint("from_stage IS DISTINCT FROM to_stage", name="a_change"),
    sa.CheckConstraint(_in("cause", STAGE_CAUSES), name="cause_known"),
    sa.Index("ix_member_stage_changes_member_id_changed_at", "member_id", "changed_at"),
    # lifecycleTransitions: a brand's changes into (or out of) a stage within a time range.
    sa.Index("ix_member_stage_changes_brand_id_to_stage_changed_at", "brand_id", "to_stage", "changed_at"),
    sa.Index("ix_member_stage_changes_brand_id_from_stage_changed_at", "brand_id", "from_stage", "changed_at"),
    sa.Index("ix_member_stage_changes_brand_id_changed_at", "brand_id", "changed_at"),
)

# RFM (issue 15; store.audiences.rfm): a brand's quintile bounds over its live buyers, recomputed by
# the server's daily pass and `omnimember refresh`; one row per brand, replaced each time.
rfm_thresholds = sa.Table(
    "rfm_thresholds",
    metadata,
    sa.Column("brand_id", sa.BigInteger, sa.ForeignKey("brands.id"), primary_key=True),
    sa.Column("day", sa.Date, nullable=False),  # the brand day recency was measured on
    sa.Column("buyers", sa.Integer, nullable=False),
    sa.Column("recency_days", sa.ARRAY(sa.Integer), nullable=False),
    sa.Column("frequency", sa.ARRAY(sa.Integer), nullable=False),
    sa.Column("monetary", sa.ARRAY(sa.Numeric(14, 2)), nullable=False),  # yuan, as total_spend
    sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    sa.CheckConstraint(
        "cardinality(recency_days) = 4 AND cardinality(frequency) = 4 AND cardinality(monetary) = 4",
        name="four_bounds",
    ),
)

# API keys (store.access.keys): only a hash of the secret is kept; the token is shown once. A key's
# scope is its brands and its groups' brands, or everything when `all_brands`.
api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    # The token's public part (`om_<prefix>_<secret>`): names the key in lists and logs.
    sa.Column("prefix", sa.Text, nullable=False, unique=True),
    sa.Column("secret_hash", BYTEA, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("grants", sa.ARRAY(sa.Text), nullable=False, server_default="{}"),
    sa.Column("brand_ids", sa.ARRAY(sa.BigInteger), nullable=False, server_default="{}"),
    sa.Column("group_ids", sa.ARRAY(sa.BigInteger), nullable=False, server_default="{}"),
    sa.Column("all_brands", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    sa.Column("expires_at", sa.DateTime(timezone=True)),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
    # Held to trusted documents: runs only registered ones (api.persisted, persisted_documents below).
    sa.Column("trusted_documents", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.CheckConstraint(_in("role", ("admin", "frontend", "campaign", "partner", "support")), name="role_known"),
    sa.CheckConstraint("length(name) BETWEEN 1 AND 200", name="name_length"),
)

# Documents registered by `omnimember documents register` (store.access.documents): one operation
# each, with the fragments it uses, in canonical print; found by the SHA-256 of that text, which the
# database checks. Keys held to trusted documents run only these (docs/persisted-documents.md).
OPERATION_TYPES = ("query", "mutation", "subscription")
persisted_documents = sa.Table(
    "persisted_documents",
    metadata,
    sa.Column("sha256", sa.Text, primary_key=True),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("operation_type", sa.Text, nullable=False),
    sa.Column("operation_name", sa.Text),
    sa.Column("source", sa.Text, nullable=False),  # the file it came from, or the name given
    sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    sa.CheckConstraint("sha256 = encode(sha256(convert_to(body, 'UTF8')), 'hex')", name="sha256_of_body"),
    sa.CheckConstraint(_in("operation_type", OPERATION_TYPES), name="operation_type_known"),
    sa.CheckConstraint("length(source) BETWEEN 1 AND 500", name="source_length"),
)

# Who did what (store.access.audit): every mutation and every read of personal data in clear.
# Append-only: a trigger refuses UPDATE, DELETE and TRUNCATE. It holds ids and a summary of the
# change, never personal data itself, so erasing a member leaves nothing of them here.
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.text("clock_timestamp()")),
    sa.Column("key_id", sa.BigInteger),
    sa.Column("key_name", sa.Text, nullable=False),
    sa.Column("role", sa.Text, nullable=False),
    sa.Column("operation", sa.Text, nullable=False),
    sa.Column("brand_id", sa.BigInteger),
    sa.Column("target_ids", sa.ARRAY(sa.Text), nullable=False, server_default="{}"),
    sa.Column("summary", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("request_id", sa.Text, nullable=False),
    sa.Index("ix_audit_log_brand_id_id", "brand_id", "id"),
)

# Marketing consent (PIPL), per member and touch channel: the latest decision per channel, a
# withdrawal being `granted = false` (kept, with its time and source). `guardian` is not a channel:
# a row for it records a guardian's consent for a minor (docs/audiences.md#consent-and-reach).
# Rows stay with their member: a merge neither moves nor combines them.
TOUCH_CHANNELS = ("sms", "ai_call", "wecom", "mini_program", "email")
GUARDIAN = "guardian"
CONSENT_CHANNELS = (*TOUCH_CHANNELS, GUARDIAN)

member_consents = sa.Table(
    "member_consents",
    metadata,
    sa.Column("member_id", sa.BigInteger, primary_key=True),
    sa.Column("channel", sa.Text, primary_key=True),
    sa.Column("brand_id", sa.BigInteger, nullable=False),
    sa.Column("granted", sa.Boolean, nullable=False),
    # When the member (or guardian) decided, as the source says; recorded_at is when we learnt it.
    sa.Column("given_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    sa.ForeignKeyConstraint(["member_id", "brand_id"], ["members.id", "members.brand_id"]),
    sa.CheckConstraint(_in("channel", CONSENT_CHANNELS), name="channel_known"),
    sa.CheckConstraint("length(source) BETWEEN 1 AND 200", name="source_length"),
    # The index build reads a brand's granted consents per channel.
    sa.Index("ix_member_consents_brand_id_channel", "brand_id", "channel"),
)

# Bulk imports (store.imports): how far each file got, so that an interrupted import resumes after
# its last committed chunk. One row per brand, kind and file (by its SHA-256); rows are kept as a
# record of what was loaded.
IMPORT_KINDS = ("members", "orders", "tags")

import_checkpoints = sa.Table(
    "import_checkpoints",
    metadata,
    sa.Column("brand_id", sa.BigInteger, sa.ForeignKey("brands.id"), primary_key=True),
    sa.Column("kind", sa.Text, primary_key=True),
    sa.Column("file_sha256", BYTEA, primary_key=True),
    sa.Column("file_name", sa.Text, nullable=False),
    # The line on which the last record of the last committed chunk starts: a resume reads on from
    # the record after it.
    sa.Column("line", sa.BigInteger, nullable=False, server_default="0"),
    # Rows by outcome so far ({"created": ..., "rejected": ...}).
    sa.Column("counts", JSONB, nullable=False, server_default=sa.text("'{}'::jsonb")),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, server_default=_now()),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.CheckConstraint(_in("kind", IMPORT_KINDS), name="kind_known"),
    sa.CheckConstraint("line >= 0", name="line_non_negative"),
)

# The person index (store.audiences.persons): every phone hash of a group as a dense person id,
# each live member with a phone as its person (what the bitmaps were built from, so that a change
# knows which person it replaces), and each brand's persons as bitmaps of 65,536 person ids a chunk,
# bit (person id & 0xFFFF) of chunk person id >> 16. lz4 (set in 0016).
group_persons = sa.Table(
    "group_persons",
    metadata,
    sa.Column("group_id", sa.BigInteger, sa.ForeignKey("groups.id"), primary_key=True),
    sa.Column("phone_hash", BYTEA, primary_key=True),
    sa.Column("person_id", sa.BigInteger, nullable=False),
    sa.CheckConstraint("person_id >= 0", name="person_id_natural"),
    sa.UniqueConstraint("group_id", "person_id"),
)

# No foreign keys: rows follow members through the applier, which may run after a member is gone.
brand_persons = sa.Table(
    "brand_persons",
    metadata,
    sa.Column("member_id", sa.BigInteger, primary_key=True),
    sa.Column("brand_id", sa.BigInteger, nullable=False),
    sa.Column("person_id", sa.BigInteger, nullable=False),
    sa.Index("ix_brand_persons_brand_id_person_id", "brand_id", "person_id"),
)

person_bitmaps = sa.Table(
    "person_bitmaps",
    metadata,
    sa.Column("brand_id", sa.BigInteger, primary_key=True),
    sa.Column("chunk", sa.Integer, primary_key=True),
    sa.Column("bits", BIT(varying=True), nullable=False),
    sa.CheckConstraint("length(bits) = 65536", name="chunk_length"),
)

person_index_state = sa.Table(
    "person_index_state",
    metadata,
    sa.Column("brand_id", sa.BigInteger, sa.ForeignKey("brands.id"), primary_key=True),
    sa.Column("built_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False),
)

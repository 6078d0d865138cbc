"""brands, members, identities and merges

Revision ID: 0001
Revises:
Create Date: 2026-11-24 12:30:51.724488
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('groups',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('code', sa.Text(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.CheckConstraint("code ~ '^[a-z][a-z0-9_]{1,31}$'", name=op.f('ck_groups_code_format')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_groups')),
    sa.UniqueConstraint('code', name=op.f('uq_groups_code'))
    )
    op.create_table('brands',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('group_id', sa.BigInteger(), nullable=False),
    sa.Column('code', sa.Text(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("code ~ '^[a-z][a-z0-9_]{1,31}$'", name=op.f('ck_brands_code_format')),
    sa.ForeignKeyConstraint(['group_id'], ['groups.id'], name=op.f('fk_brands_group_id_groups')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_brands')),
    sa.UniqueConstraint('code', name=op.f('uq_brands_code'))
    )
    op.create_index('ix_brands_group_id', 'brands', ['group_id'], unique=False)
    op.create_table('brand_tiers',
    sa.Column('brand_id', sa.BigInteger(), nullable=False),
    sa.Column('code', sa.Text(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('rank', sa.SmallInteger(), nullable=False),
    sa.CheckConstraint("code ~ '^[a-z][a-z0-9_]{0,31}$'", name=op.f('ck_brand_tiers_code_format')),
    sa.CheckConstraint('rank >= 0', name=op.f('ck_brand_tiers_rank_non_negative')),
    sa.ForeignKeyConstraint(['brand_id'], ['brands.id'], name=op.f('fk_brand_tiers_brand_id_brands')),
    sa.PrimaryKeyConstraint('brand_id', 'code', name=op.f('pk_brand_tiers')),
    sa.UniqueConstraint('brand_id', 'rank', name=op.f('uq_brand_tiers_brand_id_rank'))
    )
    op.create_table('members',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('brand_id', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.Text(), sa.Computed("CASE WHEN first_purchase_at IS NULL THEN 'prospect' ELSE 'member' END", persisted=True), nullable=False),
    sa.Column('tier', sa.Text(), nullable=False),
    sa.Column('points_balance', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('growth_value', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('display_name', sa.Text(), nullable=True),
    sa.Column('gender', sa.Text(), server_default='unknown', nullable=False),
    sa.Column('birthday', sa.Date(), nullable=True),
    sa.Column('city', sa.Text(), nullable=True),
    sa.Column('registered_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('first_purchase_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_purchase_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('order_count', sa.Integer(), server_default='0', nullable=False),
    sa.Column('total_spend', sa.Numeric(precision=14, scale=2), server_default='0', nullable=False),
    sa.Column('phone_hash', postgresql.BYTEA(), nullable=True),
    sa.Column('phone_encrypted', postgresql.BYTEA(), nullable=True),
    sa.Column('phone_masked', sa.Text(), nullable=True),
    sa.Column('merged_into', sa.BigInteger(), nullable=True),
    sa.Column('merged_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("gender IN ('male', 'female', 'unknown')", name=op.f('ck_members_gender_known')),
    sa.CheckConstraint('(merged_into IS NULL) = (merged_at IS NULL)', name=op.f('ck_members_merge_time_set')),
    sa.CheckConstraint('(phone_hash IS NULL) = (phone_encrypted IS NULL) AND (phone_hash IS NULL) = (phone_masked IS NULL)', name=op.f('ck_members_phone_forms_together')),
    sa.CheckConstraint('growth_value >= 0', name=op.f('ck_members_growth_non_negative')),
    sa.CheckConstraint('merged_into IS NULL OR merged_into <> id', name=op.f('ck_members_not_merged_into_self')),
    sa.CheckConstraint('points_balance >= 0', name=op.f('ck_members_points_non_negative')),
    sa.ForeignKeyConstraint(['brand_id', 'tier'], ['brand_tiers.brand_id', 'brand_tiers.code'], name=op.f('fk_members_brand_id_tier_brand_tiers')),
    sa.ForeignKeyConstraint(['brand_id'], ['brands.id'], name=op.f('fk_members_brand_id_brands')),
    sa.ForeignKeyConstraint(['merged_into', 'brand_id'], ['members.id', 'members.brand_id'], name=op.f('fk_members_merged_into_brand_id_members')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_members')),
    sa.UniqueConstraint('id', 'brand_id', name=op.f('uq_members_id_brand_id'))
    )
    op.create_index('ix_members_brand_id_id', 'members', ['brand_id', 'id'], unique=False)
    op.create_index('ix_members_merged_into', 'members', ['merged_into'], unique=False, postgresql_where=sa.text('merged_into IS NOT NULL'))
    op.create_index('ix_members_merged_phone', 'members', ['brand_id', 'phone_hash'], unique=False, postgresql_where=sa.text('merged_into IS NOT NULL AND phone_hash IS NOT NULL'))
    op.create_index('uq_members_brand_id_phone_hash', 'members', ['brand_id', 'phone_hash'], unique=True, postgresql_where=sa.text('merged_into IS NULL AND phone_hash IS NOT NULL'))
    op.create_table('member_identities',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('brand_id', sa.BigInteger(), nullable=False),
    sa.Column('member_id', sa.BigInteger(), nullable=False),
    sa.Column('channel', sa.Text(), nullable=False),
    sa.Column('external_id', sa.Text(), nullable=False),
    sa.Column('bound_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("channel IN ('tmall', 'jd', 'douyin', 'wechat', 'wecom', 'pos', 'mall')", name=op.f('ck_member_identities_channel_known')),
    sa.CheckConstraint('length(external_id) BETWEEN 1 AND 128', name=op.f('ck_member_identities_external_id_length')),
    sa.ForeignKeyConstraint(['member_id', 'brand_id'], ['members.id', 'members.brand_id'], name=op.f('fk_member_identities_member_id_brand_id_members')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_member_identities')),
    sa.UniqueConstraint('brand_id', 'channel', 'external_id', name=op.f('uq_member_identities_brand_id_channel_external_id'))
    )
    op.create_index('ix_member_identities_member_id', 'member_identities', ['member_id'], unique=False)
    op.create_table('member_merges',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('brand_id', sa.BigInteger(), nullable=False),
    sa.Column('survivor_id', sa.BigInteger(), nullable=False),
    sa.Column('merged_id', sa.BigInteger(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('merged_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('unmerged_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('moved', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
    sa.CheckConstraint('length(reason) BETWEEN 1 AND 500', name=op.f('ck_member_merges_reason_length')),
    sa.CheckConstraint('survivor_id <> merged_id', name=op.f('ck_member_merges_distinct_members')),
    sa.ForeignKeyConstraint(['merged_id', 'brand_id'], ['members.id', 'members.brand_id'], name=op.f('fk_member_merges_merged_id_brand_id_members')),
    sa.ForeignKeyConstraint(['survivor_id', 'brand_id'], ['members.id', 'members.brand_id'], name=op.f('fk_member_merges_survivor_id_brand_id_members')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_member_merges'))
    )
    op.create_index('ix_member_merges_merged_id', 'member_merges', ['merged_id'], unique=False)
    op.create_index('ix_member_merges_survivor_id', 'member_merges', ['survivor_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_member_merges_survivor_id', table_name='member_merges')
    op.drop_index('ix_member_merges_merged_id', table_name='member_merges')
    op.drop_table('member_merges')
    op.drop_index('ix_member_identities_member_id', table_name='member_identities')
    op.drop_table('member_identities')
    op.drop_index('uq_members_brand_id_phone_hash', table_name='members', postgresql_where=sa.text('merged_into IS NULL AND phone_hash IS NOT NULL'))
    op.drop_index('ix_members_merged_into', table_name='members', postgresql_where=sa.text('merged_into IS NOT NULL'))
    op.drop_index('ix_members_merged_phone', table_name='members')
    op.drop_index('ix_members_brand_id_id', table_name='members')
    op.drop_table('members')
    op.drop_table('brand_tiers')
    op.drop_index('ix_brands_group_id', table_name='brands')
    op.drop_table('brands')
    op.drop_table('groups')

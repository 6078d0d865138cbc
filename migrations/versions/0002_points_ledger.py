"""points ledger, orders, tiers

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24 12:52:14.991875
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('brand_rules',
    sa.Column('brand_id', sa.BigInteger(), nullable=False),
    sa.Column('timezone', sa.Text(), server_default='Asia/Shanghai', nullable=False),
    sa.Column('points_per_yuan', sa.Numeric(precision=8, scale=2), server_default='1', nullable=False),
    sa.Column('growth_per_yuan', sa.Numeric(precision=8, scale=2), server_default='10', nullable=False),
    sa.Column('birthday_multiplier', sa.Numeric(precision=4, scale=2), server_default='2', nullable=False),
    sa.Column('expiry_years', sa.SmallInteger(), server_default='2', nullable=False),
    sa.Column('tier_basis', sa.Text(), server_default='growth', nullable=False),
    sa.CheckConstraint("tier_basis IN ('growth', 'points')", name=op.f('ck_brand_rules_tier_basis_known')),
    sa.CheckConstraint('birthday_multiplier >= 1', name=op.f('ck_brand_rules_birthday_multiplier_at_least_one')),
    sa.CheckConstraint('expiry_years BETWEEN 0 AND 10', name=op.f('ck_brand_rules_expiry_years_range')),
    sa.CheckConstraint('points_per_yuan >= 0 AND growth_per_yuan >= 0', name=op.f('ck_brand_rules_rates_non_negative')),
    sa.ForeignKeyConstraint(['brand_id'], ['brands.id'], name=op.f('fk_brand_rules_brand_id_brands')),
    sa.PrimaryKeyConstraint('brand_id', name=op.f('pk_brand_rules'))
    )
    op.create_table('points_postings',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('brand_id', sa.BigInteger(), nullable=False),
    sa.Column('member_id', sa.BigInteger(), nullable=False),
    sa.Column('idempotency_key', sa.Text(), nullable=False),
    sa.Column('operation', sa.Text(), nullable=False),
    sa.Column('fingerprint', postgresql.BYTEA(), nullable=False),
    sa.Column('channel', sa.Text(), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('actor', sa.Text(), nullable=False),
    sa.Column('reverses_posting_id', sa.BigInteger(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("channel IS NULL OR channel IN ('tmall', 'jd', 'douyin', 'wechat', 'wecom', 'pos', 'mall')", name=op.f('ck_points_postings_channel_known')),
    sa.CheckConstraint("operation IN ('earn', 'redeem', 'cancel_redemption', 'adjust', 'order', 'refund', 'expire', 'merge', 'unmerge')", name=op.f('ck_points_postings_operation_known')),
    sa.CheckConstraint('length(idempotency_key) BETWEEN 1 AND 200', name=op.f('ck_points_postings_key_length')),
    sa.ForeignKeyConstraint(['member_id', 'brand_id'], ['members.id', 'members.brand_id'], name=op.f('fk_points_postings_member_id_brand_id_members')),
    sa.ForeignKeyConstraint(['reverses_posting_id'], ['points_postings.id'], name=op.f('fk_points_postings_reverses_posting_id_points_postings')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_points_postings')),
    sa.UniqueConstraint('brand_id', 'idempotency_key', name=op.f('uq_points_postings_brand_id_idempotency_key')),
    sa.UniqueConstraint('reverses_posting_id', name=op.f('uq_points_postings_reverses_posting_id'))
    )
    op.create_index('ix_points_postings_member_id', 'points_postings', ['member_id'], unique=False)
    op.create_table('tier_changes',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('brand_id', sa.BigInteger(), nullable=False),
    sa.Column('member_id', sa.BigInteger(), nullable=False),
    sa.Column('from_tier', sa.Text(), nullable=False),
    sa.Column('to_tier', sa.Text(), nullable=False),
    sa.Column('cause', sa.Text(), nullable=False),
    sa.Column('changed_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.ForeignKeyConstraint(['member_id', 'brand_id'], ['members.id', 'members.brand_id'], name=op.f('fk_tier_changes_member_id_brand_id_members')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tier_changes'))
    )
    op.create_index('ix_tier_changes_member_id', 'tier_changes', ['member_id'], unique=False)
    op.create_table('orders',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('brand_id', sa.BigInteger(), nullable=False),
    sa.Column('member_id', sa.BigInteger(), nullable=False),
    sa.Column('channel', sa.Text(), nullable=False),
    sa.Column('external_order_id', sa.Text(), nullable=False),
    sa.Column('amount', sa.Numeric(precision=14, scale=2), nullable=False),
    sa.Column('refunded', sa.Numeric(precision=14, scale=2), server_default='0', nullable=False),
    sa.Column('paid_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('store', sa.Text(), nullable=True),
    sa.Column('posting_id', sa.BigInteger(), nullable=False),
    sa.Column('points_earned', sa.BigInteger(), nullable=False),
    sa.Column('growth_earned', sa.BigInteger(), nullable=False),
    sa.Column('points_reversed', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('growth_reversed', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('points_unrecovered', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("channel IN ('tmall', 'jd', 'douyin', 'wechat', 'wecom', 'pos', 'mall')", name=op.f('ck_orders_channel_known')),
    sa.CheckConstraint('amount > 0', name=op.f('ck_orders_amount_positive')),
    sa.CheckConstraint('points_reversed + points_unrecovered <= points_earned AND growth_reversed <= growth_earned', name=op.f('ck_orders_reversals_within_earnings')),
    sa.CheckConstraint('refunded BETWEEN 0 AND amount', name=op.f('ck_orders_refunded_within_amount')),
    sa.ForeignKeyConstraint(['member_id', 'brand_id'], ['members.id', 'members.brand_id'], name=op.f('fk_orders_member_id_brand_id_members')),
    sa.ForeignKeyConstraint(['posting_id'], ['points_postings.id'], name=op.f('fk_orders_posting_id_points_postings')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_orders')),
    sa.UniqueConstraint('brand_id', 'channel', 'external_order_id', name=op.f('uq_orders_brand_id_channel_external_order_id'))
    )
    op.create_index('ix_orders_member_id_paid_at', 'orders', ['member_id', 'paid_at'], unique=False)
    op.create_table('points_entries',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('posting_id', sa.BigInteger(), nullable=False),
    sa.Column('brand_id', sa.BigInteger(), nullable=False),
    sa.Column('member_id', sa.BigInteger(), nullable=False),
    sa.Column('kind', sa.Text(), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('balance_after', sa.BigInteger(), nullable=False),
    sa.Column('note', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("kind IN ('earn', 'redeem', 'expire', 'reverse', 'adjust', 'transfer')", name=op.f('ck_points_entries_kind_known')),
    sa.CheckConstraint('amount <> 0', name=op.f('ck_points_entries_amount_non_zero')),
    sa.CheckConstraint('balance_after >= 0', name=op.f('ck_points_entries_balance_non_negative')),
    sa.ForeignKeyConstraint(['member_id', 'brand_id'], ['members.id', 'members.brand_id'], name=op.f('fk_points_entries_member_id_brand_id_members')),
    sa.ForeignKeyConstraint(['posting_id'], ['points_postings.id'], name=op.f('fk_points_entries_posting_id_points_postings')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_points_entries'))
    )
    op.create_index('ix_points_entries_member_id_id', 'points_entries', ['member_id', 'id'], unique=False)
    op.create_index('ix_points_entries_posting_id', 'points_entries', ['posting_id'], unique=False)
    op.create_table('points_lots',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('brand_id', sa.BigInteger(), nullable=False),
    sa.Column('member_id', sa.BigInteger(), nullable=False),
    sa.Column('entry_id', sa.BigInteger(), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('remaining', sa.BigInteger(), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('amount > 0', name=op.f('ck_points_lots_amount_positive')),
    sa.CheckConstraint('remaining BETWEEN 0 AND amount', name=op.f('ck_points_lots_remaining_within_amount')),
    sa.ForeignKeyConstraint(['entry_id'], ['points_entries.id'], name=op.f('fk_points_lots_entry_id_points_entries')),
    sa.ForeignKeyConstraint(['member_id', 'brand_id'], ['members.id', 'members.brand_id'], name=op.f('fk_points_lots_member_id_brand_id_members')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_points_lots'))
    )
    op.create_index('ix_points_lots_expires_at', 'points_lots', ['expires_at'], unique=False, postgresql_where=sa.text('remaining > 0'))
    op.create_index('ix_points_lots_member_id_expires_at', 'points_lots', ['member_id', 'expires_at', 'id'], unique=False, postgresql_where=sa.text('remaining > 0'))
    op.create_table('lot_draws',
    sa.Column('entry_id', sa.BigInteger(), nullable=False),
    sa.Column('lot_id', sa.BigInteger(), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.CheckConstraint('amount > 0', name=op.f('ck_lot_draws_amount_positive')),
    sa.ForeignKeyConstraint(['entry_id'], ['points_entries.id'], name=op.f('fk_lot_draws_entry_id_points_entries')),
    sa.ForeignKeyConstraint(['lot_id'], ['points_lots.id'], name=op.f('fk_lot_draws_lot_id_points_lots')),
    sa.PrimaryKeyConstraint('entry_id', 'lot_id', name=op.f('pk_lot_draws'))
    )
    op.create_index('ix_lot_draws_lot_id', 'lot_draws', ['lot_id'], unique=False)
    op.add_column('brand_tiers', sa.Column('threshold', sa.BigInteger(), server_default='0', nullable=False))
    op.add_column('brand_tiers', sa.Column('points_multiplier', sa.Numeric(precision=4, scale=2), server_default='1', nullable=False))
    op.add_column('members', sa.Column('points_earned', sa.BigInteger(), server_default='0', nullable=False))
    # Existing brands get the default rules and tier thresholds 0 / 3000 / 6000 / ...
    op.execute('INSERT INTO brand_rules (brand_id) SELECT id FROM brands')
    op.execute('UPDATE brand_tiers SET threshold = rank * 3000')


def downgrade() -> None:
    op.drop_column('members', 'points_earned')
    op.drop_column('brand_tiers', 'points_multiplier')
    op.drop_column('brand_tiers', 'threshold')
    op.drop_index('ix_lot_draws_lot_id', table_name='lot_draws')
    op.drop_table('lot_draws')
    op.drop_index('ix_points_lots_member_id_expires_at', table_name='points_lots', postgresql_where=sa.text('remaining > 0'))
    op.drop_index('ix_points_lots_expires_at', table_name='points_lots', postgresql_where=sa.text('remaining > 0'))
    op.drop_table('points_lots')
    op.drop_index('ix_points_entries_posting_id', table_name='points_entries')
    op.drop_index('ix_points_entries_member_id_id', table_name='points_entries')
    op.drop_table('points_entries')
    op.drop_index('ix_orders_member_id_paid_at', table_name='orders')
    op.drop_table('orders')
    op.drop_index('ix_tier_changes_member_id', table_name='tier_changes')
    op.drop_table('tier_changes')
    op.drop_index('ix_points_postings_member_id', table_name='points_postings')
    op.drop_table('points_postings')
    op.drop_table('brand_rules')

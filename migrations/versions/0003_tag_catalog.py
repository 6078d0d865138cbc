"""tag catalog

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 15:20:24.151241
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('tag_definitions',
    sa.Column('id', sa.BigInteger(), sa.Identity(always=False), nullable=False),
    sa.Column('brand_id', sa.BigInteger(), nullable=False),
    sa.Column('code', sa.Text(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('category', sa.Text(), nullable=False),
    sa.Column('ttl_days', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("category IN ('behavior', 'survey', 'channel', 'lifecycle', 'rfm', 'campaign', 'custom')", name=op.f('ck_tag_definitions_category_known')),
    sa.CheckConstraint("length(code) BETWEEN 1 AND 64 AND code !~ '[[:space:]:(),]'", name=op.f('ck_tag_definitions_code_format')),
    sa.CheckConstraint('length(name) BETWEEN 1 AND 100', name=op.f('ck_tag_definitions_name_length')),
    sa.CheckConstraint('ttl_days IS NULL OR ttl_days > 0', name=op.f('ck_tag_definitions_ttl_positive')),
    sa.ForeignKeyConstraint(['brand_id'], ['brands.id'], name=op.f('fk_tag_definitions_brand_id_brands')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tag_definitions')),
    sa.UniqueConstraint('brand_id', 'code', name=op.f('uq_tag_definitions_brand_id_code')),
    sa.UniqueConstraint('id', 'brand_id', name=op.f('uq_tag_definitions_id_brand_id'))
    )
    op.create_table('member_tags',
    sa.Column('member_id', sa.BigInteger(), nullable=False),
    sa.Column('tag_id', sa.BigInteger(), nullable=False),
    sa.Column('brand_id', sa.BigInteger(), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('assigned_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint('length(source) BETWEEN 1 AND 64', name=op.f('ck_member_tags_source_length')),
    sa.ForeignKeyConstraint(['member_id', 'brand_id'], ['members.id', 'members.brand_id'], name=op.f('fk_member_tags_member_id_brand_id_members')),
    sa.ForeignKeyConstraint(['tag_id', 'brand_id'], ['tag_definitions.id', 'tag_definitions.brand_id'], name=op.f('fk_member_tags_tag_id_brand_id_tag_definitions')),
    sa.PrimaryKeyConstraint('member_id', 'tag_id', name=op.f('pk_member_tags'))
    )
    op.create_index('ix_member_tags_expires_at', 'member_tags', ['expires_at'], unique=False, postgresql_where=sa.text('expires_at IS NOT NULL'))
    op.create_index('ix_member_tags_tag_id_expires_at', 'member_tags', ['tag_id', 'expires_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_member_tags_tag_id_expires_at', table_name='member_tags')
    op.drop_index('ix_member_tags_expires_at', table_name='member_tags', postgresql_where=sa.text('expires_at IS NOT NULL'))
    op.drop_table('member_tags')
    op.drop_table('tag_definitions')

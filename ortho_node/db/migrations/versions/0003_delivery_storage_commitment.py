"""storage commitment of deliveries

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06 02:05:00
"""
from __future__ import annotations

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('commitment_uid', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('committed_at', sa.DateTime(), nullable=True))
        batch_op.create_index(batch_op.f('ix_deliveries_commitment_uid'), ['commitment_uid'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_deliveries_commitment_uid'))
        batch_op.drop_column('committed_at')
        batch_op.drop_column('commitment_uid')

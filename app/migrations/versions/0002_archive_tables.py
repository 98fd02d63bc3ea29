"""archive tables

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 23:28:24.620544

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0002'
down_revision: Union[str, Sequence[str], None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('deliveries_archive',
    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('reference', sa.String(length=64), nullable=False),
    sa.Column('recipient_name', sa.String(length=100), nullable=False),
    sa.Column('phone', sa.String(length=32), nullable=False),
    sa.Column('address', sa.String(length=500), nullable=False),
    sa.Column('carrier', sa.String(length=32), nullable=False),
    sa.Column('tracking_number', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('carrier_state', sa.Integer(), nullable=True),
    sa.Column('deadline', sa.Date(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_polled_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('next_poll_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('poll_count', sa.Integer(), nullable=False),
    sa.Column('poll_failures', sa.Integer(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('archived_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_deliveries_archive'))
    )
    with op.batch_alter_table('deliveries_archive', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_deliveries_archive_delivered_at'), ['delivered_at'], unique=False)

    op.create_table('tracking_events_archive',
    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('delivery_id', sa.Integer(), nullable=False),
    sa.Column('occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('location', sa.String(length=200), nullable=True),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('carrier_status', sa.String(length=40), nullable=True),
    sa.Column('fingerprint', sa.String(length=40), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tracking_events_archive'))
    )
    with op.batch_alter_table('tracking_events_archive', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tracking_events_archive_delivery_id'), ['delivery_id'], unique=False)



def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('tracking_events_archive', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tracking_events_archive_delivery_id'))

    op.drop_table('tracking_events_archive')
    with op.batch_alter_table('deliveries_archive', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_deliveries_archive_delivered_at'))

    op.drop_table('deliveries_archive')

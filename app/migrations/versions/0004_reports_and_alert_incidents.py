"""reports and alert incidents; indexes for the reports' period scans

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 04:20:12.693189

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0004'
down_revision: Union[str, Sequence[str], None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('alert_incidents',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('severity', sa.String(length=20), nullable=False),
    sa.Column('summary', sa.Text(), nullable=False),
    sa.Column('opened_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('closed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('notified_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('recovery_notified_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alert_incidents'))
    )
    with op.batch_alter_table('alert_incidents', schema=None) as batch_op:
        batch_op.create_index('ix_alert_incidents_key_open', ['key', 'closed_at'], unique=False)

    op.create_table('reports',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=10), nullable=False),
    sa.Column('period_start', sa.Date(), nullable=False),
    sa.Column('period_end', sa.Date(), nullable=False),
    sa.Column('generated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.Column('html_path', sa.String(length=300), nullable=True),
    sa.Column('csv_path', sa.String(length=300), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_reports')),
    sa.UniqueConstraint('kind', 'period_start', name=op.f('uq_reports_kind_period_start'))
    )


    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.create_index('ix_deliveries_created_at', ['created_at'], unique=False,
                              postgresql_include=['carrier'])
        batch_op.create_index('ix_deliveries_delivered_at', ['delivered_at'], unique=False,
                              postgresql_include=['created_at', 'carrier'])
    with op.batch_alter_table('delivery_files', schema=None) as batch_op:
        batch_op.create_index('ix_delivery_files_kind_created_at', ['kind', 'created_at'], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('delivery_files', schema=None) as batch_op:
        batch_op.drop_index('ix_delivery_files_kind_created_at')
    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_index('ix_deliveries_delivered_at')
        batch_op.drop_index('ix_deliveries_created_at')
    op.drop_table('reports')
    with op.batch_alter_table('alert_incidents', schema=None) as batch_op:
        batch_op.drop_index('ix_alert_incidents_key_open')

    op.drop_table('alert_incidents')

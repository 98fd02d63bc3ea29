"""delivery files and evidence

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 03:24:59.079765

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0003'
down_revision: Union[str, Sequence[str], None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('delivery_files',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('delivery_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('path', sa.String(length=200), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('content_type', sa.String(length=50), nullable=False),
    sa.Column('page_count', sa.Integer(), nullable=True),
    sa.Column('original_name', sa.String(length=255), nullable=True),
    sa.Column('receipt_number', sa.String(length=40), nullable=True),
    sa.Column('source_sha256', sa.String(length=64), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_delivery_files')),
    sa.UniqueConstraint('delivery_id', 'kind', 'sha256', name=op.f('uq_delivery_files_delivery_id_kind_sha256')),
    sa.UniqueConstraint('receipt_number', name=op.f('uq_delivery_files_receipt_number'))
    )
    with op.batch_alter_table('delivery_files', schema=None) as batch_op:
        batch_op.create_index('ix_delivery_files_delivery_kind', ['delivery_id', 'kind'], unique=False)
        batch_op.create_index(batch_op.f('ix_delivery_files_sha256'), ['sha256'], unique=False)

    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.add_column(sa.Column('evidence_status', sa.String(length=20), nullable=False, server_default='none'))
        batch_op.add_column(sa.Column('evidence_error', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('evidence_requested_at', sa.DateTime(timezone=True), nullable=True))

    with op.batch_alter_table('deliveries_archive', schema=None) as batch_op:
        batch_op.add_column(sa.Column('evidence_status', sa.String(length=20), nullable=False, server_default='none'))
        batch_op.add_column(sa.Column('evidence_error', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('evidence_requested_at', sa.DateTime(timezone=True), nullable=True))



def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('deliveries_archive', schema=None) as batch_op:
        batch_op.drop_column('evidence_requested_at')
        batch_op.drop_column('evidence_error')
        batch_op.drop_column('evidence_status')

    with op.batch_alter_table('deliveries', schema=None) as batch_op:
        batch_op.drop_column('evidence_requested_at')
        batch_op.drop_column('evidence_error')
        batch_op.drop_column('evidence_status')

    with op.batch_alter_table('delivery_files', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_delivery_files_sha256'))
        batch_op.drop_index('ix_delivery_files_delivery_kind')

    op.drop_table('delivery_files')

"""deliveries: case cause, case number, documents served and remarks, for the receipt form (送达回证)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 18:30:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0007'
down_revision: Union[str, Sequence[str], None] = '0006'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

TABLES = ('deliveries', 'deliveries_archive')


def upgrade() -> None:
    """Upgrade schema."""
    for table in TABLES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('case_cause', sa.String(length=200), nullable=True))
            batch_op.add_column(sa.Column('case_number', sa.String(length=100), nullable=True))
            batch_op.add_column(sa.Column('documents', sa.String(length=500), nullable=True))
            batch_op.add_column(sa.Column('remarks', sa.String(length=500), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    for table in reversed(TABLES):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column('remarks')
            batch_op.drop_column('documents')
            batch_op.drop_column('case_number')
            batch_op.drop_column('case_cause')

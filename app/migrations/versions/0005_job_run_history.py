"""job runs as a schedule's history: due, sent and lateness; one row per due run

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 07:00:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0005'
down_revision: Union[str, Sequence[str], None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('job_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('due_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('lateness_seconds', sa.Float(), nullable=True))
        batch_op.alter_column('started_at', existing_type=sa.DateTime(timezone=True), nullable=True)
        batch_op.create_index('uq_job_runs_name_due_at', ['name', 'due_at'], unique=True)


def downgrade() -> None:
    """Downgrade schema."""
    op.execute("DELETE FROM job_runs WHERE started_at IS NULL")
    with op.batch_alter_table('job_runs', schema=None) as batch_op:
        batch_op.drop_index('uq_job_runs_name_due_at')
        batch_op.alter_column('started_at', existing_type=sa.DateTime(timezone=True), nullable=False)
        batch_op.drop_column('lateness_seconds')
        batch_op.drop_column('sent_at')
        batch_op.drop_column('due_at')

"""job runs: (name, due_at) indexed, no longer unique; the job's compare-and-set keeps one record per due run

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 11:30:00

A due time may recur after the host's clock went back; the run is then sent again.
"""
from typing import Sequence, Union

from alembic import op


# revision identifiers, used by Alembic.
revision: str = '0006'
down_revision: Union[str, Sequence[str], None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('job_runs', schema=None) as batch_op:
        batch_op.drop_index('uq_job_runs_name_due_at')
        batch_op.create_index('ix_job_runs_name_due_at', ['name', 'due_at'], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    op.execute("DELETE FROM job_runs WHERE id NOT IN (SELECT min(id) FROM job_runs GROUP BY name, due_at)"
               " AND due_at IS NOT NULL")
    with op.batch_alter_table('job_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_job_runs_name_due_at')
        batch_op.create_index('uq_job_runs_name_due_at', ['name', 'due_at'], unique=True)

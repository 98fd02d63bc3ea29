"""Data housekeeping: retention, archiving, database backups and optimisation."""

from datetime import timedelta

from app.core.config import get_settings
from app.core.database import SessionFactory
from app.models.base import utcnow
from app.services import backups, optimize
from app.services.archive import archive_delivered
from app.services.retention import remove_expired_deliveries, remove_old_job_runs
from app.tasks.celery_app import app
from app.tasks.policies import DEFAULT_POLICY


@app.task(**DEFAULT_POLICY)
def cleanup_expired_tasks() -> dict:
    """Remove failed deliveries past FAILED_RETENTION_DAYS and job runs past JOB_RUN_RETENTION_DAYS."""
    settings = get_settings()
    now = utcnow()
    return {
        "deliveries_removed": remove_expired_deliveries(SessionFactory, now - timedelta(days=settings.failed_retention_days)),
        "job_runs_removed": remove_old_job_runs(SessionFactory, now - timedelta(days=settings.job_run_retention_days)),
    }


@app.task(**DEFAULT_POLICY)
def archive_old_data() -> dict:
    """Move deliveries delivered more than ARCHIVE_AFTER_DAYS ago to the archive tables, batch by batch."""
    cutoff = utcnow() - timedelta(days=get_settings().archive_after_days)
    return archive_delivered(SessionFactory, cutoff)


# A backup or VACUUM of a large database outlasts the default limits. Still well under
# VISIBILITY_TIMEOUT - RETRY_BACKOFF_MAX, so Redis never hands a running one to a second worker.
MAINTENANCE_SOFT_TIME_LIMIT = 1800
MAINTENANCE_TIME_LIMIT = 1900


@app.task(**DEFAULT_POLICY, soft_time_limit=MAINTENANCE_SOFT_TIME_LIMIT, time_limit=MAINTENANCE_TIME_LIMIT)
def backup_database() -> dict:
    """Write a verified backup of the database to BACKUPS_DIR and rotate the older ones."""
    return backups.backup_database(get_settings())


@app.task(**DEFAULT_POLICY, soft_time_limit=MAINTENANCE_SOFT_TIME_LIMIT, time_limit=MAINTENANCE_TIME_LIMIT)
def optimize_database() -> dict:
    """VACUUM (ANALYZE) the app's tables (PostgreSQL) or PRAGMA optimize + ANALYZE (SQLite); sizes before and after."""
    return optimize.optimize_database(get_settings())

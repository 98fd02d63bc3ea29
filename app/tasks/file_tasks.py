"""File housekeeping: temp files, result keys, logs, and the disk they live on."""

import logging

from app.core.config import get_settings
from app.services.disk import check_disk_space as measure_disk_space, worst
from app.services.files import cleanup_temp_files as sweep_temp_files
from app.services.logs import rotate_logs
from app.services.results import expire_orphaned_results
from app.tasks.celery_app import app
from app.tasks.policies import DEFAULT_POLICY

log = logging.getLogger(__name__)


@app.task(**DEFAULT_POLICY)
def check_disk_space() -> dict:
    """Usage of the data and log volumes against DISK_WARN_PERCENT / DISK_CRITICAL_PERCENT."""
    settings = get_settings()
    volumes = measure_disk_space(
        [settings.var_path, settings.logs_path, settings.temp_path, settings.backups_path],
        settings.disk_warn_percent,
        settings.disk_critical_percent,
    )
    status = worst(v.status for v in volumes)
    if status != "ok":
        log.warning("disk space %s: %s", status, ", ".join(f"{v.paths[0]} {v.percent}%" for v in volumes))
    return {"status": status, "volumes": [v.as_dict() for v in volumes]}


@app.task(**DEFAULT_POLICY)
def cleanup_temp_files() -> dict:
    """Delete temp files older than TEMP_FILE_TTL_HOURS; never leaves the temp root."""
    settings = get_settings()
    return sweep_temp_files(settings.temp_path, settings.temp_file_ttl_hours * 3600).as_dict()


@app.task(**DEFAULT_POLICY)
def cleanup_expired_results() -> dict:
    """Run the result backend's cleanup, then give an expiry to result keys left without one."""
    app.backend.cleanup()
    return expire_orphaned_results(app.backend.client, int(app.conf.result_expires))


@app.task(**DEFAULT_POLICY)
def cleanup_logs() -> dict:
    """Rotate logs by rename, compress rotated files, delete those past LOG_RETENTION_DAYS."""
    settings = get_settings()
    return rotate_logs(settings.logs_path, settings.log_retention_days).as_dict()

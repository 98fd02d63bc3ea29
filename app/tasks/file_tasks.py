"""File housekeeping (temp files, result keys, logs, the disk they live on) and delivery documents."""

import logging
from pathlib import Path

from app.core.config import get_settings
from app.core.database import SessionFactory
from app.services.alerts import alert_disk
from app.services.disk import check_disk_space as measure_disk_space, worst
from app.services.disk_watch import data_volume_paths
from app.services.files import cleanup_temp_files as sweep_temp_files
from app.services.logs import rotate_logs
from app.services.results import expire_orphaned_results
from app.tasks.celery_app import app
from app.tasks.policies import DEFAULT_POLICY

log = logging.getLogger(__name__)


@app.task(**DEFAULT_POLICY)
def check_disk_space() -> dict:
    """Usage of the data and log volumes (the embedded broker's and the SQLite file's included) against
    DISK_WARN/CRITICAL_PERCENT; one past them is an incident. A volume past critical is also reported,
    without the broker, by the disk watch of every worker and beat (app/tasks/watchdog.py)."""
    settings = get_settings()
    volumes = measure_disk_space(
        data_volume_paths(settings),
        settings.disk_warn_percent,
        settings.disk_critical_percent,
    )
    alert_disk(SessionFactory, volumes, settings.alert_webhook_url)
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


@app.task(**DEFAULT_POLICY)
def register_document(delivery_id: int, path: str, original_name: str | None = None) -> dict:
    """Store a PDF or image from DOCUMENT_INBOX for a delivery under the files root, once per content;
    reject anything else, and any path outside the inbox."""
    from app.services import documents  # pypdf and PIL: loaded here, not at every start

    settings = get_settings()
    return documents.register_document(SessionFactory, settings.files_path, delivery_id, Path(path), original_name,
                                       inbox=settings.document_inbox_path)


@app.task(**DEFAULT_POLICY)
def cleanup_unreferenced_files() -> dict:
    """Delete stored files that no delivery file row references, once older than an hour."""
    from app.services import documents

    return documents.remove_unreferenced_files(SessionFactory, get_settings().files_path).as_dict()

"""Monitoring tasks of the tracking family (the seed routes the health check here)."""

from sqlalchemy import text

from app.core.broker import redis_client
from app.core.config import get_settings
from app.core.database import engine
from app.services.health import HealthThresholds, check_system_health
from app.tasks.celery_app import app
from app.tasks.policies import CRITICAL_POLICY


def _ping_database() -> None:
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def _ping_broker() -> None:
    redis_client(get_settings().broker_url, socket_timeout=5, socket_connect_timeout=5).ping()


@app.task(**CRITICAL_POLICY)
def system_health_check() -> dict:
    """Database, broker, disk, memory and load; the structured report is the result."""
    settings = get_settings()
    report = check_system_health(
        ping_database=_ping_database,
        ping_broker=_ping_broker,
        data_paths=[settings.var_path, settings.logs_path],
        thresholds=HealthThresholds(
            disk_warn_percent=settings.disk_warn_percent,
            disk_critical_percent=settings.disk_critical_percent,
            memory_warn_percent=settings.memory_warn_percent,
            load_warn_per_cpu=settings.load_warn_per_cpu,
        ),
    )
    return report.as_dict()

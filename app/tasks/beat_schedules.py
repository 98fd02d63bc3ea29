"""The schedule table: every code-defined periodic job, as data.

Each entry: the task's dotted name, a crontab in Asia/Shanghai time, and options the database
scheduler keeps: `queue`, and `expire_seconds` of about one period so a backlog after downtime
never replays stale runs. An optional `policy` (app/scheduling/job_policy.py) says what beat does
when a run falls due; left out, it is the safe default: overlap "skip" (never start a run while
the previous one is still queued or running), missed "run_once" (after downtime, one catch-up
run however many were missed), grace 300 s, no jitter. Add a job here, implement its task,
restart beat.
"""

from celery.schedules import crontab

from app.tasks.queues import Queue

MINUTE = 60
HOUR = 60 * MINUTE
DAY = 24 * HOUR

BEAT_SCHEDULE = {
    # 任务监控类 (monitoring)
    "system-health-check": {
        "task": "app.tasks.tracking_tasks.system_health_check",
        "schedule": crontab(minute="*/5"),
        "options": {"queue": Queue.HIGH_PRIORITY, "expire_seconds": 5 * MINUTE},
    },
    # A new delivery gets its first poll within minutes instead of waiting for the next sweep.
    "check-pending-tasks": {
        "task": "app.tasks.tracking_tasks.check_pending_tasks",
        "schedule": crontab(minute="*/5"),
        "options": {"queue": Queue.HIGH_PRIORITY, "expire_seconds": 5 * MINUTE},
    },
    # Polls only deliveries whose own poll interval has passed; the cadence bounds the lag.
    "update-tracking-status": {
        "task": "app.tasks.tracking_tasks.update_tracking_status",
        "schedule": crontab(minute="*/10"),
        "options": {"queue": Queue.TRACKING, "expire_seconds": 10 * MINUTE},
    },
    "check-timeout-tasks": {
        "task": "app.tasks.tracking_tasks.check_timeout_tasks",
        "schedule": crontab(minute="*/30"),
        "options": {"queue": Queue.TRACKING, "expire_seconds": 30 * MINUTE},
    },
    # 文件清理类 (file cleanup)
    "cleanup-temp-files": {
        "task": "app.tasks.file_tasks.cleanup_temp_files",
        "schedule": crontab(minute=10),
        "options": {"queue": Queue.LOW_PRIORITY, "expire_seconds": HOUR},
    },
    "cleanup-expired-results": {
        "task": "app.tasks.file_tasks.cleanup_expired_results",
        "schedule": crontab(minute=40, hour="*/2"),
        "options": {"queue": Queue.LOW_PRIORITY, "expire_seconds": 2 * HOUR},
    },
    # High priority although it is housekeeping: a full disk stops everything else.
    "check-disk-space": {
        "task": "app.tasks.file_tasks.check_disk_space",
        "schedule": crontab(minute=20),
        "options": {"queue": Queue.HIGH_PRIORITY, "expire_seconds": HOUR},
    },
    # 每日任务 (daily, 02:00-04:30): the report, the backup, the optimiser, then the cleanups.
    # Heavy jobs start up to 5 minutes late at random (jitter). A missed optimiser run is
    # skipped rather than run in the working day; a missed report or backup still runs once.
    "generate-daily-report": {
        "task": "app.tasks.report_tasks.generate_daily_report",
        "schedule": crontab(minute=0, hour=2),
        "options": {"queue": Queue.LOW_PRIORITY, "expire_seconds": DAY},
        "policy": {"jitter": 5 * MINUTE},
    },
    "backup-database": {
        "task": "app.tasks.maintenance_tasks.backup_database",
        "schedule": crontab(minute=30, hour=2),
        "options": {"queue": Queue.LOW_PRIORITY, "expire_seconds": DAY},
        "policy": {"jitter": 5 * MINUTE},
    },
    "optimize-database": {
        "task": "app.tasks.maintenance_tasks.optimize_database",
        "schedule": crontab(minute=0, hour=3),
        "options": {"queue": Queue.LOW_PRIORITY, "expire_seconds": DAY},
        "policy": {"missed": "skip", "grace": HOUR, "jitter": 5 * MINUTE},
    },
    "cleanup-expired-tasks": {
        "task": "app.tasks.maintenance_tasks.cleanup_expired_tasks",
        "schedule": crontab(minute=0, hour=4),
        "options": {"queue": Queue.LOW_PRIORITY, "expire_seconds": DAY},
    },
    # After cleanup-expired-tasks, which removes the rows whose files this deletes.
    "cleanup-unreferenced-files": {
        "task": "app.tasks.file_tasks.cleanup_unreferenced_files",
        "schedule": crontab(minute=15, hour=4),
        "options": {"queue": Queue.LOW_PRIORITY, "expire_seconds": DAY},
    },
    # 每周任务 (weekly): Sunday night, the quietest hour of the week.
    "cleanup-logs": {
        "task": "app.tasks.file_tasks.cleanup_logs",
        "schedule": crontab(minute=30, hour=3, day_of_week="sun"),
        "options": {"queue": Queue.LOW_PRIORITY, "expire_seconds": DAY},
    },
    "generate-weekly-report": {
        "task": "app.tasks.report_tasks.generate_weekly_report",
        "schedule": crontab(minute=0, hour=6, day_of_week="mon"),
        "options": {"queue": Queue.LOW_PRIORITY, "expire_seconds": DAY},
        "policy": {"jitter": 5 * MINUTE},
    },
    # 每月任务 (monthly): the 1st, after cleanup-expired-tasks has run.
    "archive-old-data": {
        "task": "app.tasks.maintenance_tasks.archive_old_data",
        "schedule": crontab(minute=30, hour=4, day_of_month=1),
        "options": {"queue": Queue.LOW_PRIORITY, "expire_seconds": DAY},
        "policy": {"missed": "skip", "grace": 2 * HOUR, "jitter": 5 * MINUTE},
    },
    "generate-monthly-report": {
        "task": "app.tasks.report_tasks.generate_monthly_report",
        "schedule": crontab(minute=0, hour=6, day_of_month=1),
        "options": {"queue": Queue.LOW_PRIORITY, "expire_seconds": DAY},
        "policy": {"jitter": 5 * MINUTE},
    },
}

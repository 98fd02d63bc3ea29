"""Configuration invariants: the Celery settings equal the seed's, and the schedule table is sound."""

from datetime import timedelta

import pytest
from celery.schedules import crontab
from django_celery_beat.schedulers import DatabaseScheduler
from kombu.utils import symbol_by_name

from app.scheduling.sync import KEPT_OPTION_KEYS, validate_entry
from app.tasks.base import AppTask
from app.tasks.beat_schedules import BEAT_SCHEDULE
from app.tasks.celery_app import HARD_TIME_LIMIT, VISIBILITY_TIMEOUT, app
from app.tasks.policies import RETRY_BACKOFF_MAX, RETRY_POLICIES, TRANSIENT_ERRORS
from app.tasks.queues import Queue

app.loader.import_default_modules()

SEED_QUEUES = {"high_priority", "tracking", "receipt", "screenshot", "low_priority"}
# Task names are a wire contract: beat rows and in-flight messages carry them.
REGISTERED_TASKS = [
    "app.tasks.file_tasks.check_disk_space",
    "app.tasks.file_tasks.cleanup_expired_results",
    "app.tasks.file_tasks.cleanup_logs",
    "app.tasks.file_tasks.cleanup_temp_files",
    "app.tasks.file_tasks.cleanup_unreferenced_files",
    "app.tasks.file_tasks.register_document",
    "app.tasks.maintenance_tasks.archive_old_data",
    "app.tasks.maintenance_tasks.backup_database",
    "app.tasks.maintenance_tasks.cleanup_expired_tasks",
    "app.tasks.maintenance_tasks.optimize_database",
    "app.tasks.receipt_tasks.generate_receipt",
    "app.tasks.report_tasks.generate_daily_report",
    "app.tasks.report_tasks.generate_monthly_report",
    "app.tasks.report_tasks.generate_weekly_report",
    "app.tasks.screenshot_tasks.capture_tracking_screenshot",
    "app.tasks.tracking_tasks.check_pending_tasks",
    "app.tasks.tracking_tasks.check_timeout_tasks",
    "app.tasks.tracking_tasks.poll_tracking_chunk",
    "app.tasks.tracking_tasks.system_health_check",
    "app.tasks.tracking_tasks.update_tracking_status",
]
# Jobs allowed an interval schedule instead of crontab (intervals re-anchor at every deploy).
INTERVAL_ALLOW_LIST: set[str] = set()


def route(task_name: str) -> str:
    return app.amqp.router.route({}, task_name)["queue"].name


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("timezone", "Asia/Shanghai"),
        ("enable_utc", False),
        ("task_soft_time_limit", 300),
        ("task_time_limit", 600),
        ("worker_prefetch_multiplier", 1),
        ("task_acks_late", True),
        ("result_expires", 3600),
    ],
)
def test_setting_equals_the_seed(setting, value):
    assert app.conf[setting] == value


def test_scheduler_is_the_seeds_database_scheduler():
    scheduler = symbol_by_name(app.conf.beat_scheduler)
    assert issubclass(scheduler, DatabaseScheduler)


def test_only_json_crosses_the_broker():
    assert app.conf.task_serializer == app.conf.result_serializer == app.conf.event_serializer == "json"
    assert list(app.conf.accept_content) == ["json"]
    assert list(app.conf.result_accept_content) == ["json"]


def test_task_events_are_on_for_flower():
    assert app.conf.worker_send_task_events is True


def test_the_five_queues_are_declared():
    assert {q.value for q in Queue} == SEED_QUEUES
    assert set(app.amqp.queues) == SEED_QUEUES
    assert app.conf.task_default_queue in SEED_QUEUES
    assert app.conf.task_create_missing_queues is False


@pytest.mark.parametrize(
    ("task_name", "queue"),
    [
        ("app.tasks.tracking_tasks.check_pending_tasks", "high_priority"),
        ("app.tasks.tracking_tasks.system_health_check", "high_priority"),
        ("app.tasks.tracking_tasks.update_tracking_status", "tracking"),
        ("app.tasks.file_tasks.cleanup_temp_files", "low_priority"),
        ("app.tasks.file_tasks.cleanup_expired_results", "low_priority"),
        ("app.tasks.file_tasks.cleanup_logs", "low_priority"),
        ("app.tasks.file_tasks.cleanup_anything_new", "low_priority"),
        ("app.tasks.file_tasks.check_disk_space", "high_priority"),
        ("app.tasks.receipt_tasks.generate_receipt", "receipt"),
        ("app.tasks.screenshot_tasks.capture_tracking_page", "screenshot"),
        ("app.tasks.maintenance_tasks.archive_old_data", "low_priority"),
    ],
)
def test_routes_follow_the_seed(task_name, queue):
    assert route(task_name) == queue


def test_registered_task_names_are_pinned():
    assert sorted(name for name in app.tasks if name.startswith("app.")) == REGISTERED_TASKS


@pytest.mark.parametrize("name", sorted(BEAT_SCHEDULE))
def test_schedule_entry_is_sound(name):
    entry = BEAT_SCHEDULE[name]
    validate_entry(name, entry)
    assert entry["task"] in app.tasks, "every scheduled task is registered"
    options = entry["options"]
    assert set(options) <= KEPT_OPTION_KEYS, "no option the database scheduler drops"
    assert options["queue"] in SEED_QUEUES
    assert options["queue"] == route(entry["task"]), "the schedule's queue agrees with the route table"
    assert options.get("expire_seconds"), "every entry expires so a backlog never replays stale runs"
    if name not in INTERVAL_ALLOW_LIST:
        assert isinstance(entry["schedule"], crontab)


def test_schedule_names_are_kebab_case():
    assert all(name == name.lower() and "_" not in name and " " not in name for name in BEAT_SCHEDULE)


def test_seed_jobs_of_this_stage_are_scheduled():
    assert {"system-health-check", "check-disk-space", "cleanup-temp-files", "cleanup-expired-results",
            "cleanup-logs", "check-pending-tasks", "update-tracking-status", "check-timeout-tasks", "cleanup-expired-tasks",
            "archive-old-data"} <= set(BEAT_SCHEDULE)


@pytest.mark.parametrize(("policy", "retries", "base"), [("default", 3, 60), ("critical", 5, 30)])
def test_retry_policies_follow_the_seed(policy, retries, base):
    options = RETRY_POLICIES[policy]
    assert options["autoretry_for"] == TRANSIENT_ERRORS  # not the seed's (Exception,): tests/test_retry_policy.py
    assert options["retry_kwargs"] == {"max_retries": retries}
    # The seed's countdown is the backoff base (Celery ignores countdown when backoff is on).
    assert options["retry_backoff"] == base
    assert options["retry_jitter"] is True


def test_tasks_carry_their_policy():
    health = app.tasks["app.tasks.tracking_tasks.system_health_check"]
    cleanup = app.tasks["app.tasks.file_tasks.cleanup_temp_files"]
    assert health.retry_kwargs == {"max_retries": 5} and health.retry_backoff == 30
    assert cleanup.retry_kwargs == {"max_retries": 3} and cleanup.retry_backoff == 60


def test_visibility_timeout_outlasts_the_longest_backoff_plus_the_hard_limit():
    transport_options = app.conf.broker_transport_options
    assert transport_options["visibility_timeout"] == VISIBILITY_TIMEOUT
    assert VISIBILITY_TIMEOUT > RETRY_BACKOFF_MAX + HARD_TIME_LIMIT
    for policy in RETRY_POLICIES.values():
        assert policy["retry_backoff_max"] <= RETRY_BACKOFF_MAX


def test_worker_lost_tasks_are_requeued_with_a_delivery_cap():
    assert app.conf.task_reject_on_worker_lost is True
    assert all(isinstance(app.tasks[name], AppTask) for name in REGISTERED_TASKS)


def test_expiry_is_about_one_period():
    for name, entry in BEAT_SCHEDULE.items():
        schedule = entry["schedule"]
        period = _period(schedule)
        assert entry["options"]["expire_seconds"] <= period.total_seconds(), name


def _period(schedule: crontab) -> timedelta:
    """The shortest gap between two consecutive runs of a crontab, over a week of runs."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    moment = datetime(2026, 1, 5, 0, 0, tzinfo=ZoneInfo("Asia/Shanghai"))
    schedule.nowfun = lambda: moment
    runs = []
    for _ in range(10):
        moment = moment + schedule.remaining_estimate(moment) + timedelta(seconds=1)
        runs.append(moment)
    return min((b - a for a, b in zip(runs, runs[1:])), default=timedelta(days=7))


LOADED_WHERE_USED = ("alembic", "reportlab", "pypdf", "PIL")


def test_starting_the_app_with_its_tasks_leaves_the_heavy_libraries_to_the_tasks_that_need_them():
    """Every beat, worker and CLI start imports the app and its task modules; receipts, documents and
    migrations are rare, so their libraries (0.7 s of CPU in all) must not load with it."""
    import subprocess
    import sys

    probe = ("import sys; from app.tasks.celery_app import app; app.loader.import_default_modules(); "
             f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(LOADED_WHERE_USED)!r}))")
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert loaded.stdout.strip().splitlines()[-1] == "[]"

"""The schedule table synced into django-celery-beat's tables, on a real (SQLite) database."""

import sqlite3
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from celery.schedules import crontab
from django.db import connection, transaction
from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask, PeriodicTasks

from app.core.locks import SCHEDULE_SYNC, transaction_lock

from app.scheduling.scheduler import ScheduleTableScheduler
from app.scheduling.models import CodeDefinedJob
from app.scheduling.sync import ScheduleEntryError, reset_schedule, sync_schedule_table


def entry(task="app.tasks.file_tasks.cleanup_temp_files", minute="10", queue="low_priority", **options):
    return {"task": task, "schedule": crontab(minute=minute), "options": {"queue": queue, "expire_seconds": 3600, **options}}


@pytest.fixture
def clean_schedule(django_db):
    PeriodicTask.objects.all().delete()
    CrontabSchedule.objects.all().delete()
    CodeDefinedJob.objects.all().delete()


def test_sync_creates_enabled_jobs_in_shanghai_time(clean_schedule):
    report = sync_schedule_table({"cleanup-temp-files": entry()})
    task = PeriodicTask.objects.get(name="cleanup-temp-files")
    assert report.created == ["cleanup-temp-files"]
    assert task.enabled and task.task == "app.tasks.file_tasks.cleanup_temp_files"
    assert task.queue == "low_priority" and task.expire_seconds == 3600
    assert task.crontab.minute == "10" and task.crontab.hour == "*"
    assert task.crontab.timezone == ZoneInfo("Asia/Shanghai")


def test_entry_removed_from_the_table_is_disabled_not_deleted(clean_schedule):
    sync_schedule_table({"a-job": entry(), "b-job": entry(minute="20")})
    before = PeriodicTasks.last_change()
    report = sync_schedule_table({"a-job": entry()})
    assert report.disabled == ["b-job"]
    assert not PeriodicTask.objects.get(name="b-job").enabled
    assert PeriodicTask.objects.get(name="a-job").enabled
    assert PeriodicTasks.last_change() != before, "a running beat is told the schedule changed"


def test_admin_created_job_survives_the_sync(clean_schedule):
    sync_schedule_table({"a-job": entry()})
    cron = CrontabSchedule.objects.create(minute="0", hour="5", timezone=ZoneInfo("Asia/Shanghai"))
    PeriodicTask.objects.create(name="made-in-admin", task="app.tasks.file_tasks.cleanup_logs", crontab=cron)
    sync_schedule_table({"a-job": entry()})
    assert PeriodicTask.objects.get(name="made-in-admin").enabled


def test_admin_edit_stands_until_the_file_entry_changes(clean_schedule):
    sync_schedule_table({"a-job": entry(minute="10")})
    edited = PeriodicTask.objects.get(name="a-job")
    edited.crontab = CrontabSchedule.objects.create(minute="45", timezone=ZoneInfo("Asia/Shanghai"))
    edited.save()

    assert sync_schedule_table({"a-job": entry(minute="10")}).unchanged == ["a-job"]
    assert PeriodicTask.objects.get(name="a-job").crontab.minute == "45"

    report = sync_schedule_table({"a-job": entry(minute="15")})
    assert report.updated == ["a-job"] and report.replaced_overrides == {"a-job": ["schedule"]}
    assert PeriodicTask.objects.get(name="a-job").crontab.minute == "15"
    assert CodeDefinedJob.objects.get(name="a-job").replaced_fields == ["schedule"], "list shows what was replaced"


def test_a_file_change_without_an_admin_edit_replaces_nothing(clean_schedule):
    sync_schedule_table({"a-job": entry(minute="10")})
    report = sync_schedule_table({"a-job": entry(minute="15", queue="high_priority")})
    assert report.updated == ["a-job"] and report.replaced_overrides == {}


def test_an_admin_edit_the_file_later_agrees_with_is_not_reported_replaced(clean_schedule):
    sync_schedule_table({"a-job": entry(queue="low_priority")})
    PeriodicTask.objects.filter(name="a-job").update(queue="high_priority")
    report = sync_schedule_table({"a-job": entry(queue="high_priority")})
    assert report.updated == ["a-job"] and report.replaced_overrides == {}


def test_re_added_entry_is_enabled_again(clean_schedule):
    sync_schedule_table({"a-job": entry()})
    sync_schedule_table({})
    sync_schedule_table({"a-job": entry()})
    assert PeriodicTask.objects.get(name="a-job").enabled


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (entry(expires=60), "would be dropped"),
        ({"task": "x", "schedule": crontab()}, "must name a queue"),
        ({"task": "x", "schedule": "every minute", "options": {"queue": "low_priority"}}, "unsupported schedule"),
        ({"task": "x", "schedule": crontab(), "options": {"queue": "q"}, "relative": True}, "unknown keys"),
    ],
)
def test_invalid_entry_is_named_and_nothing_changes(clean_schedule, bad, message):
    sync_schedule_table({"good-job": entry()})
    with pytest.raises(ScheduleEntryError, match=f"bad-job: .*{message}"):
        sync_schedule_table({"good-job": entry(minute="30"), "bad-job": bad})
    assert PeriodicTask.objects.get(name="good-job").crontab.minute == "10"


def test_beat_start_syncs_the_table_before_the_first_tick(clean_schedule, celery_app):
    sync_schedule_table({"old-job": entry(), "kept-job": entry(minute="20")})
    scheduler = ScheduleTableScheduler(app=celery_app, table={"kept-job": entry(minute="20")})
    assert "old-job" not in scheduler.schedule
    assert "kept-job" in scheduler.schedule
    assert not PeriodicTask.objects.get(name="old-job").enabled


def test_duplicate_schedule_rows_left_from_before_do_not_stop_the_sync(clean_schedule):
    """Concurrent syncs before the lock left duplicates behind; the oldest row is used."""
    IntervalSchedule.objects.all().delete()
    shanghai = ZoneInfo("Asia/Shanghai")
    first, _ = (CrontabSchedule.objects.create(minute="10", timezone=shanghai) for _ in range(2))
    every_minute, _ = (IntervalSchedule.objects.create(every=60, period=IntervalSchedule.SECONDS) for _ in range(2))
    interval_entry = {"task": "app.tasks.file_tasks.cleanup_logs", "schedule": timedelta(minutes=1),
                      "options": {"queue": "low_priority"}}
    report = sync_schedule_table({"a-job": entry(minute="10"), "b-job": interval_entry})
    assert report.created == ["a-job", "b-job"]
    assert PeriodicTask.objects.get(name="a-job").crontab == first
    assert PeriodicTask.objects.get(name="b-job").interval == every_minute
    deleted, report = reset_schedule({"a-job": entry(minute="10")})
    assert deleted == 2 and PeriodicTask.objects.get(name="a-job").crontab == first


def test_on_sqlite_a_sync_holds_the_write_lock_from_its_first_statement(django_db):
    """Django begins IMMEDIATE: a concurrent sync (any writer) waits for the commit, so it reads
    the rows this one created instead of creating them again."""
    other = sqlite3.connect(connection.settings_dict["NAME"], timeout=0, isolation_level=None)
    try:
        with transaction.atomic():
            transaction_lock(SCHEDULE_SYNC)
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
    finally:
        other.close()


def test_the_sync_lock_is_refused_outside_a_transaction(django_db):
    with pytest.raises(RuntimeError, match="outside transaction.atomic"):
        transaction_lock(SCHEDULE_SYNC)


def test_a_code_defined_jobs_policy_is_saved_and_an_admin_edit_of_it_stands_until_the_file_changes(clean_schedule):
    from app.scheduling.models import SchedulePolicy

    def saved() -> tuple[str, float]:
        policy = SchedulePolicy.objects.get(task__name="a-job")
        return policy.overlap, policy.jitter

    sync_schedule_table({"a-job": entry(), "b-job": {**entry(minute="20"), "policy": {"jitter": 60}}})
    assert saved() == ("skip", 0), "no policy in the file: the code default, shown in the admin"
    assert SchedulePolicy.objects.get(task__name="b-job").jitter == 60
    SchedulePolicy.objects.filter(task__name="a-job").update(overlap="allow")  # edited in the admin
    sync_schedule_table({"a-job": entry()})
    assert saved() == ("allow", 0)
    sync_schedule_table({"a-job": {**entry(), "policy": {"jitter": 30}}})
    assert saved() == ("skip", 30), "the file's changed policy wins"

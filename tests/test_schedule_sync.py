"""The schedule table synced into django-celery-beat's tables, on a real (SQLite) database."""

from zoneinfo import ZoneInfo

import pytest
from celery.schedules import crontab
from django_celery_beat.models import CrontabSchedule, PeriodicTask, PeriodicTasks

from app.scheduling.scheduler import ScheduleTableScheduler
from app.scheduling.models import CodeDefinedJob
from app.scheduling.sync import ScheduleEntryError, sync_schedule_table


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

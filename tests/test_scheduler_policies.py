"""The scheduler in this process on the embedded broker and SQLite: missed runs after downtime,
jitter, and the lease checked before every send."""

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from celery.schedules import crontab
from django_celery_beat.models import PeriodicTask

from app.scheduling.leader import LEASE_KEY
from app.scheduling.scheduler import ScheduleTableScheduler
from tests.support.inprocess_beat import history, published, tick_until_idle

SHANGHAI = ZoneInfo("Asia/Shanghai")
QUEUE = "low_priority"
TASK = "app.tasks.file_tasks.cleanup_temp_files"
SENT = {"sent", "running", "success"}


def entry(minute, **policy):
    return {"task": TASK, "schedule": crontab(minute=minute), "options": {"queue": QUEUE, "expire_seconds": 3600},
            "policy": policy}


def half_an_hour_ago_minute() -> int:
    """A crontab minute whose latest slot is 25 to 35 minutes ago: far beyond a 60 s grace."""
    return (datetime.now(SHANGHAI).minute + 30) % 60


def scheduler_after_downtime(celery_app, table: dict, down_for=timedelta(hours=3)) -> ScheduleTableScheduler:
    scheduler = ScheduleTableScheduler(app=celery_app, table=table)
    PeriodicTask.objects.filter(name__in=table).update(last_run_at=datetime.now(SHANGHAI) - down_for)
    return scheduler


def test_after_downtime_run_once_catches_up_once_and_skip_records_the_miss(celery_app, beat_broker, clean_history):
    minute = half_an_hour_ago_minute()
    table = {"catch-up": entry(minute, missed="run_once", grace=60),
             "no-catch-up": entry(minute, missed="skip", grace=60)}
    scheduler = scheduler_after_downtime(celery_app, table)

    tick_until_idle(scheduler)
    tick_until_idle(scheduler)

    runs = history()
    [catch_up], [missed] = runs["catch-up"], runs["no-catch-up"]
    assert catch_up.outcome in SENT and catch_up.task_id and catch_up.lateness_seconds > 60
    assert catch_up.due_at.astimezone(SHANGHAI).minute == minute and catch_up.due_at.second == 0
    assert missed.outcome == "skipped_missed" and missed.task_id is None and missed.due_at == catch_up.due_at

    scheduler.close()
    restarted = ScheduleTableScheduler(app=celery_app, table=table)
    tick_until_idle(restarted)
    restarted.close()
    assert sum(map(len, history(table).values())) == 2, "a restart neither replays nor skips again"


def test_a_run_within_grace_is_sent_under_either_policy(celery_app, beat_broker, clean_history):
    minute = half_an_hour_ago_minute()
    table = {"lenient": entry(minute, missed="skip", grace=3600)}
    scheduler = scheduler_after_downtime(celery_app, table)
    tick_until_idle(scheduler)
    scheduler.close()
    [run] = history()["lenient"]
    assert run.outcome in SENT


def test_jitter_delays_the_run_by_at_most_its_bound(celery_app, beat_broker, clean_history):
    table = {"heavy": entry(half_an_hour_ago_minute(), jitter=600)}
    scheduler = scheduler_after_downtime(celery_app, table)
    with published() as messages:
        tick_until_idle(scheduler)
    scheduler.close()
    [run] = history()["heavy"]
    eta = datetime.fromisoformat(messages[run.task_id]["eta"])
    assert run.sent_at - timedelta(seconds=1) <= eta <= run.sent_at + timedelta(seconds=601)


def test_only_the_lease_holder_sends_and_it_checks_before_every_send(celery_app, beat_broker, clean_history):
    table = {"due-now": entry(half_an_hour_ago_minute(), overlap="allow")}
    leader = scheduler_after_downtime(celery_app, table)
    standby = ScheduleTableScheduler(app=celery_app, table=table)
    beat_broker.set(LEASE_KEY, "another-host:1:ab", px=60_000)

    tick_until_idle(leader)
    tick_until_idle(standby)
    assert history(table) == {}, "nobody records, so nobody sends, while another beat holds the lease"

    beat_broker.delete(LEASE_KEY)
    assert leader.leadership.renew()
    due = leader.schedule["due-now"]
    beat_broker.set(LEASE_KEY, "another-host:1:ab", px=60_000)  # lost between the tick's check and the send
    leader.apply_entry(due, producer=leader.producer)
    assert history(table) == {}

    beat_broker.delete(LEASE_KEY)
    tick_until_idle(leader)
    assert [run.outcome in SENT for run in history()["due-now"]] == [True]
    tick_until_idle(standby)
    assert len(history()["due-now"]) == 1, "the standby never sends what the leader did"
    leader.close()
    standby.close()
